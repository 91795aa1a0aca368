#include "base/log.h"

#include <unistd.h>

#include <string>

namespace imgstream::log_detail {

std::atomic<int> g_level{static_cast<int>(LogLevel::Warn)};

void emit(LogLevel level, std::string_view text) {
  static constexpr const char* kNames[] = {"debug", "info", "warning", "error", "off"};
  std::string line = "imgstream: ";
  line += kNames[static_cast<int>(level)];
  line += ": ";
  line += text;
  line += '\n';
  // One write(2) per line keeps lines from different threads whole.
  ssize_t unused = ::write(STDERR_FILENO, line.data(), line.size());
  (void)unused;
}

}  // namespace imgstream::log_detail
