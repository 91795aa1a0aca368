#include <atomic>

#include "blob/blob.h"

namespace imgstream::blob {

bool is_http_url(const std::string& s) {
  return s.starts_with("http://") || s.starts_with("https://");
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
  auto f = TRY_CTX(env.open(path, OpenMode::ReadOnly), path);
  const uint64_t size = TRY_CTX(f->size(), path);
  return std::unique_ptr<BlobReader>(new FileBlob(std::move(f), path, size));
}

Result<std::unique_ptr<BlobReader>> open_blob(Env& env, const std::string& path_or_url,
                                              const BlobOptions& o) {
  if (is_http_url(path_or_url)) return open_http_blob(path_or_url, o);
  return open_file_blob(env, path_or_url);
}

}  // namespace imgstream::blob
