#include "base/output_check.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "base/env.h"
#include "base/unique_fd.h"

namespace imgstream {

namespace {

// Suffix of the file written aside before the rename (pack, unpack, profile merge).
constexpr std::string_view kTempSuffix = ".tmp";

Result<void> check_directory(const std::string& output) {
  const std::string dir = parent_dir(output);
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0) {
    if (errno == ENOENT || errno == ENOTDIR)
      return Error{ENOENT, "output " + output + ": directory " + dir + " does not exist"};
    return Error::from_errno(errno, "output " + output + ": directory " + dir);
  }
  if (!S_ISDIR(st.st_mode))
    return Error{ENOTDIR, "output " + output + ": " + dir + " is not a directory"};
  if (::access(dir.c_str(), W_OK | X_OK) != 0)
    return Error{EACCES, "output " + output + ": directory " + dir + " is not writable"};
  return ok();
}

Result<void> check_not_an_input(const std::string& output, const struct stat& out,
                                const std::vector<std::string>& inputs, std::string_view what) {
  for (const std::string& in : inputs) {
    struct stat st {};
    if (in.empty() || ::stat(in.c_str(), &st) != 0) continue;
    if (st.st_dev == out.st_dev && st.st_ino == out.st_ino)
      return Error{EEXIST, "output " + output + std::string(what) + " is the input " + in +
                               " (the same file); not overwriting it"};
  }
  return ok();
}

// Whether the first bytes of `path` are `magic`.
Result<bool> has_magic(const std::string& path, std::string_view magic) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY));
  if (!fd.valid()) return Error::from_errno(errno, "open " + path);
  std::string head(magic.size(), '\0');
  size_t got = 0;
  while (got < head.size()) {
    const ssize_t n = ::pread(fd.get(), head.data() + got, head.size() - got, off_t(got));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Error::from_errno(errno, "read " + path);
    if (n == 0) break;
    got += size_t(n);
  }
  return got == head.size() && head == magic;
}

}  // namespace

bool same_file(const std::string& a, const std::string& b) {
  struct stat sa {
  }, sb{};
  return ::stat(a.c_str(), &sa) == 0 && ::stat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

Result<void> check_output(const std::string& output, const std::vector<std::string>& inputs,
                          const OutputKind& kind, Overwrite overwrite) {
  if (output.empty()) return Error::invalid("no output file named");
  struct stat st {};
  const bool exists = ::stat(output.c_str(), &st) == 0;
  if (!exists && errno != ENOENT && errno != ENOTDIR)
    return Error::from_errno(errno, "stat " + output);
  if (exists && S_ISDIR(st.st_mode))
    return Error{EISDIR, "output " + output + " is a directory; name the " +
                             std::string(kind.name) + " file to write in it"};
  TRY(check_directory(output));
  const std::string tmp = output + std::string(kTempSuffix);
  struct stat tst {};
  if (::stat(tmp.c_str(), &tst) == 0) TRY(check_not_an_input(output, tst, inputs, ".tmp"));
  if (!exists) return ok();
  TRY(check_not_an_input(output, st, inputs, ""));
  if (!S_ISREG(st.st_mode))
    return Error::invalid("output " + output +
                          " exists and is not a regular file; not overwriting it");
  if (st.st_size == 0 || overwrite == Overwrite::Force) return ok();
  const std::string force = "; not overwriting it (--force replaces it)";
  if (kind.magic.empty())
    return Error{EEXIST, "output " + output + " exists and is not empty" + force};
  if (TRY(has_magic(output, kind.magic))) return ok();
  return Error{EEXIST, "output " + output + " exists and is not a " + std::string(kind.name) +
                           " (no " + std::string(kind.magic) + " magic)" + force};
}

}  // namespace imgstream
