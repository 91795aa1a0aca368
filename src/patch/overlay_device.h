// OverlayDevice: a BlockDevice that keeps every write in memory, over a device it only
// reads. A patch is built in one (libext2fs writes into it) so that the image is not
// touched until the whole patch has succeeded and been checked; then its dirty pages are
// what the patch journal applies (patch/patch_journal.h) or what a delta pack re-encodes.
//
// Pages of kOverlayPageBytes, aligned to the device's offset 0; a write that covers part
// of a page reads the rest from below first. Memory is bounded (kOverlayBytesMax): a
// write past it fails with EFBIG and says how large the patch grew.
//
// Lock contract: mu_ guards pages_ and is held across the read from below of a page
// being made (patching is one thread; the lock only keeps the BlockDevice promise).
#pragma once

#include <cstdint>
#include <map>
#include <mutex>
#include <vector>

#include "base/limits.h"
#include "device/block_device.h"

namespace imgstream::patch {

inline constexpr uint64_t kOverlayPageBytes = 4096;
inline constexpr uint64_t kOverlayBytesMax = limits::kOverlayBytesMax;

class OverlayDevice final : public BlockDevice {
 public:
  explicit OverlayDevice(BlockDevice& below) : below_(below) {}

  uint64_t size() const override { return below_.size(); }
  DeviceCaps caps() const override;
  Result<void> read(uint64_t offset, std::span<std::byte> buf) override;
  Result<void> write(uint64_t offset, std::span<const std::byte> data, Durability d) override;
  Result<void> flush() override { return ok(); }

  // A dirty run: consecutive dirty pages merged, in address order. The last page of a
  // device whose size is not a multiple of the page is cut at the end.
  struct Run {
    uint64_t offset = 0;
    std::vector<std::byte> bytes;
  };
  std::vector<Run> dirty_runs() const;
  uint64_t dirty_bytes() const;
  // Pages written whose bytes equal what is below are not dirty: libext2fs rewrites
  // every group descriptor and bitmap it loaded. Drops them; returns the bytes dropped.
  Result<uint64_t> drop_unchanged();

 private:
  uint64_t page_len(uint64_t page) const;

  BlockDevice& below_;
  mutable std::mutex mu_;
  std::map<uint64_t, std::vector<std::byte>> pages_;  // page index -> its bytes
};

}  // namespace imgstream::patch
