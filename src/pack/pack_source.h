// PackSource: a Source (what `imgstream stream` streams from) over a pack, local or over
// HTTP. Reads run on a small pool of threads; each is served by whole chunks, adjacent
// ones fetched in one request, each checked against its hash: a corrupt chunk fails the
// read (the streaming device then stores nothing), it is never returned.
//
// PackDevice: a read-only BlockDevice over a pack, for `imgstream serve NAME.pack`, with a
// small cache of decoded chunks so that small reads do not decode a chunk each time.
//
// Lock contract. PackSource: read_async() may be called from any thread; reads run on
// pool_'s threads holding mu_ shared, close() takes it exclusively (so no read is in the
// pack while it closes); boot_mu_ guards the boot set state, waited on with boot_cv_
// while one read loads it, and is never held across a fetch. PackDevice: mu_ guards the
// chunk cache only (never held across a fetch or a decode).
#pragma once

#include <condition_variable>
#include <list>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <unordered_map>

#include "base/limits.h"
#include "base/stop.h"
#include "base/thread_pool.h"
#include "pack/pack_reader.h"
#include "source/source.h"

namespace imgstream::pack {

inline constexpr unsigned kPackSourceThreads = 4;
inline constexpr size_t kPackDeviceCacheChunks = 64;

// Whether SOURCE names a pack: an http(s) URL, or a path ending in .pack.
bool is_pack_source(const std::string& source);

// The boot set is fetched in one request when it is at most this large.
inline constexpr uint64_t kBootFetchBytesMax = limits::kBootFetchBytesMax;

// The boot set: a pack packed with a profile stores its boot chunks as one range. The
// first read that needs any of them fetches the whole range in one request (a machine
// that boots needs all of it, soon); the chunks wait in memory, decoded and checked,
// until they are read once, then go. Reads of other chunks are not held up by it.
class PackSource final : public source::Source {
 public:
  explicit PackSource(std::unique_ptr<Pack> pack);
  ~PackSource() override;

  uint64_t size() const override { return pack_->header().image_size; }
  const std::string& uri() const override { return pack_->uri(); }
  void read_async(uint64_t offset, std::span<std::byte> buf, source::ReadDone done) override;
  Result<void> block_status(uint64_t offset, uint64_t length, std::vector<Extent>& out) override;
  std::optional<Digest> identity() const override { return pack_->header().identity; }
  // Reads in flight fail within a second (Pack::interrupt), later ones at once.
  void close() override;

  const Pack& pack() const { return *pack_; }
  // Requests made for the boot set (0 or 1), for tests and status.
  uint64_t boot_fetches() const;

 private:
  Result<void> read_range(uint64_t offset, std::span<std::byte> buf);
  // Reads chunks [first, first + count) into out, from the boot set where it holds them.
  Result<void> read_chunks(uint64_t first, uint64_t count, std::span<std::byte> out);
  void load_boot_set();

  std::unique_ptr<Pack> pack_;
  // Boot set state, under boot_mu_.
  enum class Boot { None, Idle, Loading, Ready };
  mutable std::mutex boot_mu_;
  std::condition_variable boot_cv_;
  Boot boot_ = Boot::None;
  std::vector<bool> is_boot_;  // per chunk
  std::unordered_map<uint64_t, std::vector<std::byte>> boot_chunks_;
  uint64_t boot_fetches_ = 0;
  std::shared_mutex mu_;  // held shared by reads, exclusively by close()
  bool closed_ = false;
  std::unique_ptr<ThreadPool> pool_;
};

// A stop request of the process (`serve` stopping) interrupts the pack: reads waiting on
// a slow server fail within a second instead of holding the stop up.
class PackDevice final : public BlockDevice {
 public:
  explicit PackDevice(std::unique_ptr<Pack> pack)
      : pack_(std::move(pack)), on_stop_([p = pack_.get()] { p->interrupt(); }) {}
  uint64_t size() const override { return pack_->header().image_size; }
  DeviceCaps caps() const override;
  Result<void> read(uint64_t offset, std::span<std::byte> buf) override;
  Result<void> block_status(size_t context, uint64_t offset, uint64_t length,
                            std::vector<Extent>& out) override;

 private:
  using Chunk = std::shared_ptr<const std::vector<std::byte>>;
  Result<Chunk> chunk(uint64_t c);

  std::unique_ptr<Pack> pack_;
  StopCallback on_stop_;  // after pack_: destroyed before it
  std::mutex mu_;
  std::list<uint64_t> lru_;  // most recent first
  std::unordered_map<uint64_t, std::pair<Chunk, std::list<uint64_t>::iterator>> cache_;
};

}  // namespace imgstream::pack
