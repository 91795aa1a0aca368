#include "base/result.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace imgstream {

void check_failed(const char* expr, const char* file, int line, const char* msg) {
  std::fprintf(stderr, "imgstream: assertion failed: %s at %s:%d%s%s\n", expr, file, line,
               msg ? ": " : "", msg ? msg : "");
  std::fflush(stderr);
  std::abort();
}

std::string errno_text(int err) {
  char buf[256];
  // The GNU strerror_r: returns the message, written to buf or a static string.
  return ::strerror_r(err, buf, sizeof buf);
}

Error Error::from_errno(int err, std::string_view what) {
  std::string m(what);
  m += ": ";
  m += errno_text(err);
  return Error{err, std::move(m)};
}

Error Error::context(std::string_view what) && {
  std::string m(what);
  m += ": ";
  m += message;
  message = std::move(m);
  return std::move(*this);
}

}  // namespace imgstream
