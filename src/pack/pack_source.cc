#include "pack/pack_source.h"

#include <cstring>

#include "base/check.h"

namespace imgstream::pack {

bool is_pack_source(const std::string& s) {
  return blob::is_http_url(s) || s.ends_with(".pack");
}

PackSource::PackSource(std::unique_ptr<Pack> pack)
    : pack_(std::move(pack)), pool_(std::make_unique<ThreadPool>(kPackSourceThreads)) {}

PackSource::~PackSource() { close(); }

void PackSource::read_async(uint64_t offset, std::span<std::byte> buf, source::ReadDone done) {
  std::shared_lock lock(mu_);
  if (closed_) return done(Error{ESHUTDOWN, uri() + ": source closed"});
  if (offset > size() || buf.size() > size() - offset)
    return done(Error::invalid(uri() + ": read past the end of the image"));
  pool_->post([this, offset, buf, done = std::move(done)] {
    Result<void> r = pack_->read(offset, buf);
    done(std::move(r));
  });
}

Result<void> PackSource::block_status(uint64_t offset, uint64_t length, std::vector<Extent>& out) {
  pack_->block_status(offset, length, out);
  return ok();
}

void PackSource::close() {
  std::unique_ptr<ThreadPool> pool;
  {
    std::unique_lock lock(mu_);
    closed_ = true;
    pool = std::move(pool_);
  }
  pool.reset();  // runs the reads already queued, then joins
}

DeviceCaps PackDevice::caps() const {
  DeviceCaps c;
  c.can_multi_conn = true;  // read-only: every connection sees the same bytes
  return c;
}

Result<PackDevice::Chunk> PackDevice::chunk(uint64_t c) {
  {
    std::lock_guard lock(mu_);
    if (auto it = cache_.find(c); it != cache_.end()) {
      lru_.splice(lru_.begin(), lru_, it->second.second);
      return it->second.first;
    }
  }
  auto data = std::make_shared<std::vector<std::byte>>(pack_->header().chunk_bytes(c));
  TRY(pack_->read_chunks(c, 1, *data));
  std::lock_guard lock(mu_);
  if (!cache_.contains(c)) {
    lru_.push_front(c);
    cache_.emplace(c, std::make_pair(data, lru_.begin()));
    if (cache_.size() > kPackDeviceCacheChunks) {
      cache_.erase(lru_.back());
      lru_.pop_back();
    }
  }
  return Chunk(std::move(data));
}

Result<void> PackDevice::read(uint64_t offset, std::span<std::byte> buf) {
  IMG_CHECK(!buf.empty() && offset + buf.size() <= size());
  const uint64_t cs = pack_->header().chunk_size;
  // Large reads go straight through (coalesced); small ones through the chunk cache.
  if (buf.size() >= 2 * cs) return pack_->read(offset, buf);
  for (uint64_t pos = offset; pos < offset + buf.size();) {
    const uint64_t c = pos / cs;
    Chunk data = TRY(chunk(c));
    const uint64_t in = pos - c * cs;
    const uint64_t n = std::min<uint64_t>(data->size() - in, offset + buf.size() - pos);
    std::memcpy(buf.data() + (pos - offset), data->data() + in, n);
    pos += n;
  }
  return ok();
}

Result<void> PackDevice::block_status(size_t context, uint64_t offset, uint64_t length,
                                      std::vector<Extent>& out) {
  IMG_CHECK(context == 0);
  pack_->block_status(offset, length, out);
  return ok();
}

}  // namespace imgstream::pack
