#include "source/file_source.h"

#include <fmt/format.h>

#include <algorithm>
#include <mutex>

#include "blob/blob.h"

namespace imgstream::source {

Result<std::unique_ptr<FileSource>> FileSource::open(Env& env, const std::string& path) {
  // A FIFO or a character device would hang or mislead the fingerprint: images only.
  auto file = TRY_CTX(blob::open_input(env, path, blob::InputKind::RegularOrBlockDevice),
                      "file source " + path);
  uint64_t size = TRY_CTX(file->size(), "file source " + path);
  return std::unique_ptr<FileSource>(new FileSource(std::move(file), path, size));
}

FileSource::FileSource(std::unique_ptr<File> file, std::string path, uint64_t size)
    : path_(std::move(path)),
      size_(size),
      pool_(std::make_unique<ThreadPool>(kFileSourceThreads)),
      file_(std::move(file)) {}

FileSource::~FileSource() {
  close();
}

Error FileSource::range_error(uint64_t offset, uint64_t length) const {
  return Error::invalid(fmt::format("file source {}: range {}+{} is past the end ({} bytes)", path_,
                                    offset, length, size_));
}

void FileSource::read_async(uint64_t offset, std::span<std::byte> buf, ReadDone done) {
  if (offset > size_ || buf.size() > size_ - offset) return done(range_error(offset, buf.size()));
  std::shared_lock lock(mu_);
  if (closed_) {
    lock.unlock();
    return done(Error{ESHUTDOWN, "file source " + path_ + ": closed"});
  }
  pool_->post([file = file_, offset, buf, done = std::move(done), this] {
    auto r = read_exact_at(*file, offset, buf);
    if (!r)
      r = std::move(r).error().context(fmt::format("file source {}: read at {}", path_, offset));
    done(std::move(r));
  });
}

Result<void> FileSource::block_status(uint64_t offset, uint64_t length, std::vector<Extent>& out) {
  if (length == 0 || offset >= size_ || length > size_ - offset) return range_error(offset, length);
  std::shared_lock lock(mu_);
  if (closed_) return Error{ESHUTDOWN, "file source " + path_ + ": closed"};
  const uint64_t end = offset + length;
  const std::string what = fmt::format("file source {}: block status at {}", path_, offset);
  for (size_t n = 0; offset < end && n < kFileSourceExtentsMax; ++n) {
    uint64_t data = TRY_CTX(file_->seek_data(offset), what);
    if (data > offset) {
      uint64_t hole_end = std::min(data, end);
      out.push_back(Extent{hole_end - offset, kStateHole | kStateZero});
      offset = hole_end;
      continue;
    }
    uint64_t hole = TRY_CTX(file_->seek_hole(offset), what);
    // A file that changed size since open() may answer outside our range: clip to it, and
    // call the rest data, the answer that is never wrong.
    uint64_t data_end = hole > offset ? std::min(hole, end) : end;
    out.push_back(Extent{data_end - offset, 0});
    offset = data_end;
  }
  return ok();
}

void FileSource::close() {
  std::unique_ptr<ThreadPool> pool;
  {
    std::unique_lock lock(mu_);
    if (closed_) return;
    closed_ = true;
    pool = std::move(pool_);
  }
  // Outside the lock: the queued reads finish first, and their done() may call read_async,
  // which takes the lock (and now fails with ESHUTDOWN).
  pool.reset();
  std::unique_lock lock(mu_);
  file_.reset();
}

}  // namespace imgstream::source
