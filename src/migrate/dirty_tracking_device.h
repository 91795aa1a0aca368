// DirtyTrackingDevice: a BlockDevice decorator that records, in a DirtyTracker, every
// region written, trimmed or zeroed (DESIGN.md, "Layers"). A change is acknowledged
// only after the tracker durably covers it (migrate/dirty_tracker.h): after a crash the
// tracking file still names every region changed since the last copy.
#pragma once

#include "device/forwarding_device.h"
#include "migrate/dirty_tracker.h"

namespace imgstream::migrate {

class DirtyTrackingDevice final : public ForwardingDevice {
 public:
  DirtyTrackingDevice(BlockDevice& inner, DirtyTracker& tracker)
      : ForwardingDevice(inner), t_(tracker) {}

  Result<void> write(uint64_t offset, std::span<const std::byte> data, Durability d) override;
  Result<void> write_nowait(uint64_t offset, std::span<const std::byte> data,
                            Durability d) override;
  Result<void> trim(uint64_t offset, uint64_t length, Durability d) override;
  Result<void> write_zeroes(uint64_t offset, uint64_t length, ZeroFlags z, Durability d) override;

 private:
  DirtyTracker& t_;
};

}  // namespace imgstream::migrate
