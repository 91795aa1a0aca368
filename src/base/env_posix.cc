// The real Env: POSIX calls, errno turned into Error at once.
#include <dirent.h>
#include <sys/file.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <cstdio>

#include "base/env.h"
#include "base/unique_fd.h"

namespace imgstream {

Result<size_t> File::read_at_nowait(uint64_t, std::span<std::byte>) {
  return Error::would_block();
}

Result<std::unique_ptr<FileLock>> Env::lock(const std::string&) {
  return std::make_unique<FileLock>();
}

Result<void> make_dirs(Env& env, const std::string& dir) {
  for (size_t at = dir.find('/', 1);; at = dir.find('/', at + 1)) {
    const std::string prefix = dir.substr(0, at);
    if (!prefix.empty() && !TRY(env.exists(prefix))) {
      TRY(env.mkdir(prefix));
      // Durable, so that a store made under it survives power loss with its parents.
      TRY(env.sync_dir(parent_dir(prefix)));
    }
    if (at == std::string::npos) return ok();
  }
}

std::string parent_dir(const std::string& path) {
  std::string d = path;
  while (d.size() > 1 && d.back() == '/') d.pop_back();
  const size_t slash = d.rfind('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : d.substr(0, slash);
}

Result<void> read_exact_at(File& f, uint64_t offset, std::span<std::byte> buf) {
  size_t done = 0;
  while (done < buf.size()) {
    size_t n = TRY(f.read_at(offset + done, buf.subspan(done)));
    if (n == 0) return Error::io("read " + f.path() + ": unexpected end of file");
    done += n;
  }
  return ok();
}

Result<void> write_all_at(File& f, uint64_t offset, std::span<const std::byte> buf) {
  size_t done = 0;
  while (done < buf.size()) {
    size_t n = TRY(f.write_at(offset + done, buf.subspan(done)));
    if (n == 0) return Error::io("write " + f.path() + ": no progress");
    done += n;
  }
  return ok();
}

namespace {

class PosixFile final : public File {
 public:
  PosixFile(UniqueFd fd, std::string path, bool is_block)
      : fd_(std::move(fd)), path_(std::move(path)), is_block_(is_block) {}

  Result<size_t> read_at(uint64_t offset, std::span<std::byte> buf) override {
    for (;;) {
      ssize_t n = ::pread(fd_.get(), buf.data(), buf.size(), static_cast<off_t>(offset));
      if (n >= 0) return static_cast<size_t>(n);
      if (errno != EINTR) return Error::from_errno(errno, "read " + path_);
    }
  }

  Result<size_t> read_at_nowait(uint64_t offset, std::span<std::byte> buf) override {
    if (nowait_unsupported_) return Error::would_block();
    iovec iov{buf.data(), buf.size()};
    for (;;) {
      ssize_t n = ::preadv2(fd_.get(), &iov, 1, static_cast<off_t>(offset), RWF_NOWAIT);
      if (n >= 0) {
        // A short read with RWF_NOWAIT may mean "only part is cached", not end of file:
        // let the caller take the blocking path, which tells the two apart.
        if (static_cast<size_t>(n) < buf.size()) return Error::would_block();
        return static_cast<size_t>(n);
      }
      if (errno == EINTR) continue;
      if (errno == EOPNOTSUPP || errno == EINVAL) nowait_unsupported_ = true;
      return Error::would_block();
    }
  }

  Result<size_t> write_at(uint64_t offset, std::span<const std::byte> buf) override {
    for (;;) {
      ssize_t n = ::pwrite(fd_.get(), buf.data(), buf.size(), static_cast<off_t>(offset));
      if (n >= 0) return static_cast<size_t>(n);
      if (errno != EINTR) return Error::from_errno(errno, "write " + path_);
    }
  }

  Result<void> sync() override {
    if (::fdatasync(fd_.get()) != 0) return Error::from_errno(errno, "fdatasync " + path_);
    return ok();
  }

  Result<uint64_t> size() override {
    if (is_block_) {
      uint64_t bytes = 0;
      if (::ioctl(fd_.get(), BLKGETSIZE64, &bytes) != 0)
        return Error::from_errno(errno, "BLKGETSIZE64 " + path_);
      return bytes;
    }
    struct stat st {};
    if (::fstat(fd_.get(), &st) != 0) return Error::from_errno(errno, "stat " + path_);
    return static_cast<uint64_t>(st.st_size);
  }

  Result<void> truncate(uint64_t size) override {
    if (::ftruncate(fd_.get(), static_cast<off_t>(size)) != 0)
      return Error::from_errno(errno, "truncate " + path_);
    return ok();
  }

  Result<void> punch_hole(uint64_t offset, uint64_t len) override {
    // A block device's discard need not read back as zeros, so it is no hole punch.
    if (is_block_) return Error{ENOTSUP, "punch hole on block device " + path_};
    return fallocate_mode(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len, "punch");
  }

  Result<void> zero_range(uint64_t offset, uint64_t len) override {
    if (is_block_) {
      uint64_t range[2] = {offset, len};
      if (::ioctl(fd_.get(), BLKZEROOUT, range) != 0)
        return Error::from_errno(errno, "zero-out " + path_);
      return ok();
    }
    return fallocate_mode(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, len, "zero");
  }

  Result<uint64_t> seek_data(uint64_t offset) override { return seek(offset, SEEK_DATA); }
  Result<uint64_t> seek_hole(uint64_t offset) override { return seek(offset, SEEK_HOLE); }

  int fd() const override { return fd_.get(); }
  const std::string& path() const override { return path_; }

 private:
  Result<void> fallocate_mode(int mode, uint64_t offset, uint64_t len, const char* what) {
    for (;;) {
      if (::fallocate(fd_.get(), mode, static_cast<off_t>(offset), static_cast<off_t>(len)) == 0)
        return ok();
      if (errno == EINTR) continue;
      int err = errno == EOPNOTSUPP ? ENOTSUP : errno;
      return Error::from_errno(err, std::string(what) + " " + path_);
    }
  }

  Result<uint64_t> seek(uint64_t offset, int whence) {
    uint64_t end = TRY(size());
    if (offset >= end) return end;
    if (is_block_) return whence == SEEK_DATA ? offset : end;
    off_t r = ::lseek(fd_.get(), static_cast<off_t>(offset), whence);
    if (r >= 0) return static_cast<uint64_t>(r);
    // ENXIO: no data after offset. EINVAL: the file system has no hole support.
    if (errno == ENXIO) return end;
    if (errno == EINVAL) return whence == SEEK_DATA ? offset : end;
    return Error::from_errno(errno, "lseek " + path_);
  }

  UniqueFd fd_;
  std::string path_;
  bool is_block_;
  bool nowait_unsupported_ = false;
};

class PosixLock final : public FileLock {
 public:
  explicit PosixLock(UniqueFd fd) : fd_(std::move(fd)) {}

 private:
  UniqueFd fd_;  // flock is released when the descriptor closes
};

class PosixEnv final : public Env {
 public:
  Result<std::unique_ptr<FileLock>> lock(const std::string& path) override {
    UniqueFd fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644));
    if (!fd.valid()) return Error::from_errno(errno, "open " + path);
    if (::flock(fd.get(), LOCK_EX | LOCK_NB) != 0) return Error::from_errno(errno, "lock " + path);
    return std::unique_ptr<FileLock>(new PosixLock(std::move(fd)));
  }

  Result<std::unique_ptr<File>> open(const std::string& path, OpenMode mode) override {
    int flags = O_CLOEXEC;
    switch (mode) {
      case OpenMode::ReadOnly: flags |= O_RDONLY; break;
      case OpenMode::ReadWrite: flags |= O_RDWR; break;
      case OpenMode::CreateOrOpen: flags |= O_RDWR | O_CREAT; break;
    }
    UniqueFd fd(::open(path.c_str(), flags, 0644));
    if (!fd.valid()) return Error::from_errno(errno, "open " + path);
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0) return Error::from_errno(errno, "stat " + path);
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
      return Error::invalid(path + ": not a regular file or block device");
    return std::unique_ptr<File>(new PosixFile(std::move(fd), path, S_ISBLK(st.st_mode)));
  }

  Result<bool> exists(const std::string& path) override {
    struct stat st {};
    if (::stat(path.c_str(), &st) == 0) return true;
    if (errno == ENOENT) return false;
    return Error::from_errno(errno, "stat " + path);
  }

  Result<void> rename(const std::string& from, const std::string& to) override {
    if (::rename(from.c_str(), to.c_str()) != 0)
      return Error::from_errno(errno, "rename " + from + " to " + to);
    return ok();
  }

  Result<void> remove(const std::string& path) override {
    if (::unlink(path.c_str()) != 0) return Error::from_errno(errno, "remove " + path);
    return ok();
  }

  Result<void> mkdir(const std::string& path) override {
    if (::mkdir(path.c_str(), 0755) == 0) return ok();
    const int err = errno;
    struct stat st {};
    if (err == EEXIST && ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return ok();
    return Error::from_errno(err, "mkdir " + path);
  }

  Result<void> sync_dir(const std::string& path) override {
    UniqueFd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (!fd.valid()) return Error::from_errno(errno, "open directory " + path);
    if (::fsync(fd.get()) != 0) return Error::from_errno(errno, "fsync directory " + path);
    return ok();
  }

  Result<std::vector<std::string>> list_dir(const std::string& path) override {
    DIR* d = ::opendir(path.c_str());
    if (!d) return Error::from_errno(errno, "open directory " + path);
    std::vector<std::string> names;
    // NOLINTNEXTLINE(concurrency-mt-unsafe): only calls on the same DIR* race
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") names.push_back(std::move(n));
    }
    ::closedir(d);
    return names;
  }
};

}  // namespace

Env* Env::posix() {
  static PosixEnv env;
  return &env;
}

}  // namespace imgstream
