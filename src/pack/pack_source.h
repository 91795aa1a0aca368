// PackSource: a Source (what `imgstream stream` streams from) over a pack, local or over
// HTTP. Reads run on a small pool of threads; each is served by whole chunks, adjacent
// ones fetched in one request, each checked against its hash: a corrupt chunk fails the
// read (the streaming device then stores nothing), it is never returned.
//
// PackDevice: a read-only BlockDevice over a pack, for `imgstream serve NAME.pack`, with a
// small cache of decoded chunks so that small reads do not decode a chunk each time.
#pragma once

#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <unordered_map>

#include "base/thread_pool.h"
#include "pack/pack_reader.h"
#include "source/source.h"

namespace imgstream::pack {

inline constexpr unsigned kPackSourceThreads = 4;
inline constexpr size_t kPackDeviceCacheChunks = 64;

// Whether SOURCE names a pack: an http(s) URL, or a path ending in .pack.
bool is_pack_source(const std::string& source);

class PackSource final : public source::Source {
 public:
  explicit PackSource(std::unique_ptr<Pack> pack);
  ~PackSource() override;

  uint64_t size() const override { return pack_->header().image_size; }
  const std::string& uri() const override { return pack_->uri(); }
  void read_async(uint64_t offset, std::span<std::byte> buf, source::ReadDone done) override;
  Result<void> block_status(uint64_t offset, uint64_t length, std::vector<Extent>& out) override;
  std::optional<Digest> identity() const override { return pack_->header().identity; }
  void close() override;

  const Pack& pack() const { return *pack_; }

 private:
  std::unique_ptr<Pack> pack_;
  std::shared_mutex mu_;  // held shared by reads, exclusively by close()
  bool closed_ = false;
  std::unique_ptr<ThreadPool> pool_;
};

class PackDevice final : public BlockDevice {
 public:
  explicit PackDevice(std::unique_ptr<Pack> pack) : pack_(std::move(pack)) {}
  uint64_t size() const override { return pack_->header().image_size; }
  DeviceCaps caps() const override;
  Result<void> read(uint64_t offset, std::span<std::byte> buf) override;
  Result<void> block_status(size_t context, uint64_t offset, uint64_t length,
                            std::vector<Extent>& out) override;

 private:
  using Chunk = std::shared_ptr<const std::vector<std::byte>>;
  Result<Chunk> chunk(uint64_t c);

  std::unique_ptr<Pack> pack_;
  std::mutex mu_;
  std::list<uint64_t> lru_;  // most recent first
  std::unordered_map<uint64_t, std::pair<Chunk, std::list<uint64_t>::iterator>> cache_;
};

}  // namespace imgstream::pack
