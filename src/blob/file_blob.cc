#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>

#include "base/unique_fd.h"
#include "blob/blob.h"

namespace imgstream::blob {

bool is_http_url(const std::string& s) {
  return s.starts_with("http://") || s.starts_with("https://");
}

std::string url_scheme(const std::string& s) {
  const size_t end = s.find("://");
  if (end == std::string::npos || end == 0 || !std::isalpha(static_cast<unsigned char>(s[0])))
    return {};
  for (size_t i = 0; i < end; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (!std::isalnum(c) && c != '+' && c != '-' && c != '.') return {};
  }
  return s.substr(0, end);
}

namespace {

const char* kind_text(mode_t m) {
  if (S_ISDIR(m)) return "a directory";
  if (S_ISFIFO(m)) return "a FIFO";
  if (S_ISSOCK(m)) return "a socket";
  if (S_ISCHR(m)) return "a character device";
  if (S_ISBLK(m)) return "a block device";
  return "not a regular file";
}

}  // namespace

Result<std::unique_ptr<File>> open_input(Env& env, const std::string& path, InputKind kind) {
  // Only the real file system has FIFOs and devices (the in-memory twins have neither).
  if (&env != Env::posix()) return env.open(path, OpenMode::ReadOnly);
  UniqueFd probe(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
  if (!probe.valid()) return Error::from_errno(errno, "open " + path);
  struct stat st {};
  if (::fstat(probe.get(), &st) != 0) return Error::from_errno(errno, "stat " + path);
  const bool wanted =
      S_ISREG(st.st_mode) || (kind == InputKind::RegularOrBlockDevice && S_ISBLK(st.st_mode));
  if (!wanted)
    return Error::invalid(path + " is " + kind_text(st.st_mode) + ", not a regular file" +
                          (kind == InputKind::RegularOrBlockDevice ? " or block device" : ""));
  auto f = TRY(env.open(path, OpenMode::ReadOnly));
  struct stat again {};
  if (f->fd() >= 0 &&
      (::fstat(f->fd(), &again) != 0 || again.st_dev != st.st_dev || again.st_ino != st.st_ino))
    return Error::invalid(path + " was replaced while it was opened");
  return f;
}

namespace {

class FileBlob final : public BlobReader {
 public:
  FileBlob(std::unique_ptr<File> f, std::string path, uint64_t size)
      : file_(std::move(f)), path_(std::move(path)), size_(size) {}
  const std::string& uri() const override { return path_; }
  uint64_t size() const override { return size_; }
  Result<void> read(uint64_t offset, std::span<std::byte> buf) override {
    if (offset > size_ || buf.size() > size_ - offset)
      return Error::invalid(path_ + ": read of " + std::to_string(buf.size()) + " bytes at " +
                            std::to_string(offset) + " is past its end (" +
                            std::to_string(size_) + " bytes)");
    requests_.fetch_add(1, std::memory_order_relaxed);
    bytes_.fetch_add(buf.size(), std::memory_order_relaxed);
    return read_exact_at(*file_, offset, buf);
  }
  BlobStats stats() const override {
    return BlobStats{.requests = requests_.load(), .bytes_received = bytes_.load()};
  }

 private:
  std::unique_ptr<File> file_;
  const std::string path_;
  const uint64_t size_;
  std::atomic<uint64_t> requests_{0}, bytes_{0};
};

}  // namespace

Result<std::unique_ptr<BlobReader>> open_file_blob(Env& env, const std::string& path) {
  auto f = TRY(open_input(env, path, InputKind::RegularFile));
  const uint64_t size = TRY_CTX(f->size(), path);
  return std::unique_ptr<BlobReader>(new FileBlob(std::move(f), path, size));
}

Result<std::unique_ptr<BlobReader>> open_blob(Env& env, const std::string& path_or_url,
                                              const BlobOptions& o) {
  if (is_http_url(path_or_url)) return open_http_blob(path_or_url, o);
  if (const std::string scheme = url_scheme(path_or_url); !scheme.empty())
    return Error::invalid(path_or_url + ": unsupported scheme '" + scheme +
                          "' (expected http://, https:// or a local path)");
  return open_file_blob(env, path_or_url);
}

}  // namespace imgstream::blob
