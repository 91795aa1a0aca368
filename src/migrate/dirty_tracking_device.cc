#include "migrate/dirty_tracking_device.h"

namespace imgstream::migrate {

// Every change: the tracker covers it first (durably), then it is made, then its bits
// are set — also when it failed part-way, since part of it may have landed.
Result<void> DirtyTrackingDevice::write(uint64_t offset, std::span<const std::byte> data,
                                        Durability d) {
  TRY(t_.begin_write(offset, data.size()));
  Result<void> r = inner_.write(offset, data, d);
  t_.end_write(offset, data.size(), true);
  return r;
}

Result<void> DirtyTrackingDevice::write_nowait(uint64_t offset, std::span<const std::byte> data,
                                               Durability d) {
  if (!t_.try_begin_write(offset, data.size())) return Error::would_block();
  Result<void> r = inner_.write_nowait(offset, data, d);
  // A declined fast path changed nothing; write() will come.
  t_.end_write(offset, data.size(), r || !r.error().is_would_block());
  return r;
}

Result<void> DirtyTrackingDevice::trim(uint64_t offset, uint64_t length, Durability d) {
  TRY(t_.begin_write(offset, length));
  Result<void> r = inner_.trim(offset, length, d);
  t_.end_write(offset, length, true);
  return r;
}

Result<void> DirtyTrackingDevice::write_zeroes(uint64_t offset, uint64_t length, ZeroFlags z,
                                               Durability d) {
  TRY(t_.begin_write(offset, length));
  Result<void> r = inner_.write_zeroes(offset, length, z, d);
  t_.end_write(offset, length, true);
  return r;
}

}  // namespace imgstream::migrate
