// DirtyTrackingDevice: a BlockDevice decorator that records, in a DirtyTracker, every
// region written, trimmed or zeroed (DESIGN.md, "Layers"). A change is acknowledged
// only after the tracker durably covers it (migrate/dirty_tracker.h): after a crash the
// tracking file still names every region changed since the last copy.
#pragma once

#include "device/block_device.h"
#include "migrate/dirty_tracker.h"

namespace imgstream::migrate {

class DirtyTrackingDevice final : public BlockDevice {
 public:
  DirtyTrackingDevice(BlockDevice& inner, DirtyTracker& tracker) : inner_(inner), t_(tracker) {}

  uint64_t size() const override { return inner_.size(); }
  DeviceCaps caps() const override { return inner_.caps(); }
  Result<void> read(uint64_t offset, std::span<std::byte> buf) override {
    return inner_.read(offset, buf);
  }
  Result<void> read_nowait(uint64_t offset, std::span<std::byte> buf) override {
    return inner_.read_nowait(offset, buf);
  }
  Result<void> write(uint64_t offset, std::span<const std::byte> data, Durability d) override;
  Result<void> write_nowait(uint64_t offset, std::span<const std::byte> data,
                            Durability d) override;
  Result<void> flush() override { return inner_.flush(); }
  Result<void> trim(uint64_t offset, uint64_t length, Durability d) override;
  Result<void> write_zeroes(uint64_t offset, uint64_t length, ZeroFlags z, Durability d) override;
  Result<void> cache(uint64_t offset, uint64_t length) override { return inner_.cache(offset, length); }
  std::vector<std::string> meta_contexts() const override { return inner_.meta_contexts(); }
  Result<void> block_status(size_t context, uint64_t offset, uint64_t length,
                            std::vector<Extent>& out) override {
    return inner_.block_status(context, offset, length, out);
  }

 private:
  BlockDevice& inner_;
  DirtyTracker& t_;
};

}  // namespace imgstream::migrate
