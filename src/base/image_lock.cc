#include "base/image_lock.h"

#include <dirent.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "base/limits.h"
#include "base/log.h"

namespace imgstream {

namespace {

// QEMU's permission bits (include/block/block-common.h: BLK_PERM_*) and lock bytes.
constexpr int kPermRead = 0;  // consistent read
constexpr int kPermWrite = 1;
constexpr int kPermWriteUnchanged = 2;
constexpr int kPermResize = 3;
constexpr off_t kUseBase = 100;
constexpr off_t kUnsharedBase = 200;
// Bounds the search for a holder: open descriptors looked at in /proc.
constexpr size_t kHolderScanFdsMax = limits::kHolderScanFdsMax;

struct Perms {
  std::vector<int> used, unshared;
};

Perms perms_of(ImageUse use) {
  switch (use) {
    case ImageUse::Read: return {{kPermRead}, {kPermResize}};
    case ImageUse::ReadStable: return {{kPermRead}, {kPermWrite, kPermResize}};
    case ImageUse::Write: return {{kPermRead, kPermWrite}, {kPermWrite, kPermResize}};
    case ImageUse::Exclusive:
      return {{kPermRead, kPermWrite}, {kPermRead, kPermWrite, kPermWriteUnchanged, kPermResize}};
  }
  return {};
}

std::string what_holder_does(off_t byte) {
  switch (byte) {
    case kUseBase + kPermRead: return "reads it";
    case kUseBase + kPermWrite: return "writes to it";
    case kUseBase + kPermResize: return "may resize it";
    case kUnsharedBase + kPermRead: return "shares no reading of it";
    case kUnsharedBase + kPermWrite: return "shares no writing to it";
    default: return fmt::format("holds its lock byte {}", byte);
  }
}

flock byte_lock(short type, off_t byte) {
  flock fl{};
  fl.l_type = type;
  fl.l_whence = SEEK_SET;
  fl.l_start = byte;
  fl.l_len = 1;
  return fl;
}

// One lock of /proc/locks or of a "lock:" line of /proc/PID/fdinfo/N:
//   "1: OFDLCK ADVISORY  READ -1 fe:00:10953387 100 101"
struct LockLine {
  long pid = -1;
  unsigned major = 0, minor = 0;
  unsigned long long ino = 0;
  off_t start = 0, end = 0;  // end: inclusive; "EOF" is the largest offset
};

std::optional<LockLine> parse_lock_line(const std::string& line) {
  std::istringstream in(line);
  std::string tok, kind, mode, rw, pid, id, start, end;
  in >> tok;
  if (tok == "lock:") in >> tok;  // fdinfo's prefix, then the index "1:"
  in >> kind;
  if (kind == "->") return std::nullopt;  // a waiter, not a holder
  if (!(in >> mode >> rw >> pid >> id >> start >> end)) return std::nullopt;
  LockLine l;
  if (std::sscanf(id.c_str(), "%x:%x:%llu", &l.major, &l.minor, &l.ino) != 3) return std::nullopt;
  l.pid = std::strtol(pid.c_str(), nullptr, 10);
  l.start = std::strtoll(start.c_str(), nullptr, 10);
  l.end = end == "EOF" ? INT64_MAX : std::strtoll(end.c_str(), nullptr, 10);
  return l;
}

bool covers(const LockLine& l, const struct stat& st, off_t byte) {
  return l.major == major(st.st_dev) && l.minor == minor(st.st_dev) &&
         l.ino == static_cast<unsigned long long>(st.st_ino) && l.start <= byte && byte <= l.end;
}

// /proc/locks names the holder's pid where the kernel records it (not for OFD locks on
// every kernel: -1 there).
long holder_from_proc_locks(const struct stat& st, off_t byte) {
  std::ifstream in("/proc/locks");
  for (std::string line; std::getline(in, line);) {
    auto l = parse_lock_line(line);
    if (l && l->pid > 0 && l->pid != ::getpid() && covers(*l, st, byte)) return l->pid;
  }
  return -1;
}

// Whether descriptor `fd` of process `pid` holds a lock covering `byte` of the image.
bool fd_holds(const std::string& pid, const std::string& fd, const struct stat& st, off_t byte) {
  struct stat target {};
  const std::string link = "/proc/" + pid + "/fd/" + fd;
  if (::stat(link.c_str(), &target) != 0 || target.st_dev != st.st_dev ||
      target.st_ino != st.st_ino)
    return false;
  std::ifstream info("/proc/" + pid + "/fdinfo/" + fd);
  for (std::string line; std::getline(info, line);) {
    if (!line.starts_with("lock:")) continue;
    auto l = parse_lock_line(line);
    if (l && covers(*l, st, byte)) return true;
  }
  return false;
}

// Otherwise: the process with a descriptor of the image whose fdinfo lists the lock.
long holder_from_fdinfo(const struct stat& st, off_t byte) {
  DIR* proc = ::opendir("/proc");
  if (!proc) return -1;
  const std::string self = std::to_string(::getpid());
  size_t seen = 0;
  long found = -1;
  // NOLINTNEXTLINE(concurrency-mt-unsafe): only calls on the same DIR* race
  while (dirent* p = ::readdir(proc)) {
    const std::string pid = p->d_name;
    if (pid.empty() || pid.find_first_not_of("0123456789") != std::string::npos || pid == self)
      continue;
    DIR* fds = ::opendir(("/proc/" + pid + "/fd").c_str());
    if (!fds) continue;  // gone, or not ours to look at

    // NOLINTNEXTLINE(concurrency-mt-unsafe): only calls on the same DIR* race
    while (dirent* f = ::readdir(fds)) {
      if (f->d_name[0] == '.' || ++seen > kHolderScanFdsMax) continue;
      if (fd_holds(pid, f->d_name, st, byte)) {
        found = std::strtol(pid.c_str(), nullptr, 10);
        break;
      }
    }
    ::closedir(fds);
    if (found > 0 || seen > kHolderScanFdsMax) break;
  }
  ::closedir(proc);
  return found;
}

std::string holder_of(int fd, off_t byte) {
  struct stat st {};
  if (::fstat(fd, &st) != 0) return "another process";
  long pid = holder_from_proc_locks(st, byte);
  if (pid <= 0) pid = holder_from_fdinfo(st, byte);
  if (pid <= 0) return "another process";
  std::string name;
  std::ifstream(fmt::format("/proc/{}/comm", pid)) >> name;
  return name.empty() ? fmt::format("process {}", pid) : fmt::format("process {} ({})", pid, name);
}

// Errors of fcntl that mean "this file system has no OFD locks": go on without them.
bool locks_unsupported(int err) {
  return err == EINVAL || err == ENOLCK || err == EOPNOTSUPP || err == ENOSYS;
}

}  // namespace

namespace {

// Takes the bytes of our own use; the first conflict found is returned as an error.
Result<void> take_bytes(File& f, const std::vector<off_t>& bytes) {
  for (off_t byte : bytes) {
    flock fl = byte_lock(F_RDLCK, byte);
    if (::fcntl(f.fd(), F_OFD_SETLK, &fl) == 0) continue;
    const int err = errno;
    if (locks_unsupported(err)) {
      LOG_WARN("{}: no OFD locks on this file system ({}): not locked against other users",
               f.path(), errno_text(err));
      return Error{ENOTSUP, "no OFD locks"};
    }
    if (err != EAGAIN && err != EACCES) return Error::from_errno(err, "lock " + f.path());
    // Only an exclusive lock conflicts with ours: not QEMU's, but someone's all the same.
    return Error{EBUSY, f.path() + " is in use: locked by " + holder_of(f.fd(), byte)};
  }
  return ok();
}

// Someone uses what we do not share, or does not share what we use.
Result<void> test_conflicts(File& f, const Perms& p) {
  std::vector<off_t> test;
  for (int perm : p.unshared) test.push_back(kUseBase + perm);
  for (int perm : p.used) test.push_back(kUnsharedBase + perm);
  for (off_t byte : test) {
    flock fl = byte_lock(F_WRLCK, byte);
    if (::fcntl(f.fd(), F_OFD_GETLK, &fl) != 0) {
      if (locks_unsupported(errno)) return ok();
      return Error::from_errno(errno, "test lock " + f.path());
    }
    if (fl.l_type == F_UNLCK) continue;
    return Error{EBUSY, f.path() + " is in use: locked by " + holder_of(f.fd(), byte) +
                            ", which " + what_holder_does(byte)};
  }
  return ok();
}

}  // namespace

Result<void> lock_image(File& f, ImageUse use) {
  if (f.fd() < 0) return ok();
  const Perms p = perms_of(use);
  std::vector<off_t> take;
  for (int perm : p.used) take.push_back(kUseBase + perm);
  for (int perm : p.unshared) take.push_back(kUnsharedBase + perm);
  Result<void> r = take_bytes(f, take);
  if (!r && r.error().code == ENOTSUP) return ok();
  if (r) r = test_conflicts(f, p);
  if (!r) {
    // Refused: what was taken goes again, so that the file may stay open unlocked.
    for (off_t byte : take) {
      flock fl = byte_lock(F_UNLCK, byte);
      (void)::fcntl(f.fd(), F_OFD_SETLK, &fl);
    }
  }
  return r;
}

}  // namespace imgstream
