// HoldDevice: a BlockDevice decorator that can hold every new request (they wait, they
// do not fail) and wait until those in flight are done: the cutover of a live migration
// copies the last changed regions while nothing changes them.
//
// A hold ends by release(), or by itself after its time limit, so that a migrate that
// dies in the middle of a cutover never leaves the machine's disk stopped.
//
// Lock contract: mu_ guards held_, until_, the in-flight count and inner_; requests wait
// on cv_ while held. hold()/release()/switch_to() may be called from any thread (the
// migration control socket); switch_to() only while held with nothing in flight, so a
// request never sees inner_ change under it.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "device/block_device.h"

namespace imgstream::migrate {

class HoldDevice final : public BlockDevice {
 public:
  explicit HoldDevice(BlockDevice& inner) : inner_(&inner) {}

  // Holds new requests, waits for those in flight, returns. The hold lasts until
  // release() or until `limit` has passed.
  void hold(std::chrono::milliseconds limit);
  void release();
  bool held() const;
  // While held: every request from now on goes to `next` (which must outlive this).
  void switch_to(BlockDevice& next);

  uint64_t size() const override { return size_; }
  // The caps the export was announced with; a target switched to must offer them too.
  DeviceCaps caps() const override { return caps_; }
  Result<void> read(uint64_t offset, std::span<std::byte> buf) override;
  Result<void> read_nowait(uint64_t offset, std::span<std::byte> buf) override;
  Result<void> write(uint64_t offset, std::span<const std::byte> data, Durability d) override;
  Result<void> write_nowait(uint64_t offset, std::span<const std::byte> data,
                            Durability d) override;
  Result<void> flush() override;
  Result<void> trim(uint64_t offset, uint64_t length, Durability d) override;
  Result<void> write_zeroes(uint64_t offset, uint64_t length, ZeroFlags z, Durability d) override;
  Result<void> cache(uint64_t offset, uint64_t length) override;
  std::vector<std::string> meta_contexts() const override { return contexts_; }
  Result<void> block_status(size_t context, uint64_t offset, uint64_t length,
                            std::vector<Extent>& out) override;

 private:
  // Waits while held, then counts the request in flight.
  void enter();
  // As enter, but never waits: false while held.
  bool try_enter();
  void leave();
  bool held_locked() const;

  BlockDevice* inner_;  // changes only while held with nothing in flight
  const uint64_t size_ = inner_->size();
  const DeviceCaps caps_ = inner_->caps();
  const std::vector<std::string> contexts_ = inner_->meta_contexts();
  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool held_ = false;
  std::chrono::steady_clock::time_point until_;
  uint64_t active_ = 0;
};

}  // namespace imgstream::migrate
