#include "pack/pack_source.h"

#include <cstring>

#include "base/check.h"

namespace imgstream::pack {

bool is_pack_source(const std::string& s) {
  return blob::is_http_url(s) || s.ends_with(".pack");
}

PackSource::PackSource(std::unique_ptr<Pack> pack)
    : pack_(std::move(pack)), pool_(std::make_unique<ThreadPool>(kPackSourceThreads)) {
  const PackHeader& h = pack_->header();
  if (h.boot_chunks == 0 || h.boot_end - h.boot_begin > kBootFetchBytesMax) return;
  is_boot_.assign(h.chunk_count(), false);
  for (uint64_t c = 0; c < h.chunk_count(); ++c) {
    const IndexEntry& e = pack_->index()[c];
    if (e.stored() && e.offset >= h.boot_begin && e.offset < h.boot_end) is_boot_[c] = true;
  }
  boot_ = Boot::Idle;
}

uint64_t PackSource::boot_fetches() const {
  std::lock_guard lock(boot_mu_);
  return boot_fetches_;
}

// One request for the whole boot range; each chunk decoded and checked. A chunk that
// fails (or a failed request) is simply not kept: its read goes the ordinary way, which
// reads it again and reports it if it is still bad.
void PackSource::load_boot_set() {
  const PackHeader& h = pack_->header();
  std::vector<std::byte> stored(h.boot_end - h.boot_begin);
  std::unordered_map<uint64_t, std::vector<std::byte>> chunks;
  if (pack_->blob().read(h.boot_begin, stored)) {
    for (uint64_t c = 0; c < is_boot_.size(); ++c) {
      if (!is_boot_[c]) continue;
      const IndexEntry& e = pack_->index()[c];
      std::vector<std::byte> out(h.chunk_bytes(c));
      const Pack::Location loc{pack_.get(), e.offset, e.length, e.kind, e.hash};
      auto piece = std::span<const std::byte>(stored).subspan(e.offset - h.boot_begin, e.length);
      if (Pack::decode(loc, piece, out)) chunks.emplace(c, std::move(out));
    }
  }
  std::lock_guard lock(boot_mu_);
  boot_chunks_ = std::move(chunks);
  ++boot_fetches_;
  boot_ = Boot::Ready;
  boot_cv_.notify_all();
}

Result<void> PackSource::read_chunks(uint64_t first, uint64_t count, std::span<std::byte> out) {
  const PackHeader& h = pack_->header();
  bool wants_boot = false;
  if (!is_boot_.empty())
    for (uint64_t c = first; c < first + count && !wants_boot; ++c) wants_boot = is_boot_[c];
  if (wants_boot) {
    std::unique_lock lock(boot_mu_);
    if (boot_ == Boot::Idle) {
      boot_ = Boot::Loading;
      lock.unlock();
      load_boot_set();
      lock.lock();
    }
    boot_cv_.wait(lock, [&] { return boot_ == Boot::Ready; });
  }
  // Chunks the boot set holds come from memory (once); runs of the others from the pack.
  uint64_t c = first;
  while (c < first + count) {
    auto dst = out.subspan((c - first) * h.chunk_size, h.chunk_bytes(c));
    if (wants_boot) {
      std::unique_lock lock(boot_mu_);
      if (auto it = boot_chunks_.find(c); it != boot_chunks_.end()) {
        std::memcpy(dst.data(), it->second.data(), dst.size());
        boot_chunks_.erase(it);
        ++c;
        continue;
      }
    }
    uint64_t n = 1;
    while (c + n < first + count && !(wants_boot && is_boot_[c + n])) ++n;
    const uint64_t bytes = (n - 1) * h.chunk_size + h.chunk_bytes(c + n - 1);
    TRY(pack_->read_chunks(c, n, out.subspan((c - first) * h.chunk_size, bytes)));
    c += n;
  }
  return ok();
}

Result<void> PackSource::read_range(uint64_t offset, std::span<std::byte> buf) {
  const PackHeader& h = pack_->header();
  const uint64_t cs = h.chunk_size, end = offset + buf.size();
  const uint64_t first = offset / cs, last = (end - 1) / cs;
  if (offset % cs == 0 && (end % cs == 0 || end == h.image_size))
    return read_chunks(first, last - first + 1, buf);
  std::vector<std::byte> tmp((last - first + 1) * cs);
  TRY(read_chunks(first, last - first + 1,
                  std::span(tmp).first((last - first) * cs + h.chunk_bytes(last))));
  std::memcpy(buf.data(), tmp.data() + (offset - first * cs), buf.size());
  return ok();
}

PackSource::~PackSource() { close(); }

void PackSource::read_async(uint64_t offset, std::span<std::byte> buf, source::ReadDone done) {
  std::shared_lock lock(mu_);
  if (closed_) return done(Error{ESHUTDOWN, uri() + ": source closed"});
  if (offset > size() || buf.size() > size() - offset)
    return done(Error::invalid(uri() + ": read past the end of the image"));
  pool_->post([this, offset, buf, done = std::move(done)] {
    Result<void> r = read_range(offset, buf);
    done(std::move(r));
  });
}

Result<void> PackSource::block_status(uint64_t offset, uint64_t length, std::vector<Extent>& out) {
  pack_->block_status(offset, length, out);
  return ok();
}

void PackSource::close() {
  pack_->interrupt();  // reads waiting on a server end now
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
