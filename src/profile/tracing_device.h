// TracingDevice: a BlockDevice decorator that records every successful read of the
// device it wraps in a TraceWriter (docs/trace-format.md) and forwards everything else
// untouched. A read_nowait() is recorded only when it succeeds, so a read that falls back
// from read_nowait() to read() is recorded once.
//
// "Served locally" (kRecordLocal) is asked of the device below (BlockDevice::is_local)
// before the read is forwarded: the streaming device fetches missing regions during the
// read, so asking afterwards would always say yes.
//
// Thread safety: as the inner device.
#pragma once

#include "device/forwarding_device.h"
#include "profile/trace.h"

namespace imgstream::profile {

class TracingDevice final : public ForwardingDevice {
 public:
  // `inner` and `trace` must outlive the decorator.
  TracingDevice(BlockDevice& inner, TraceWriter& trace) : ForwardingDevice(inner), trace_(trace) {}

  Result<void> read(uint64_t offset, std::span<std::byte> buf) override;
  Result<void> read_nowait(uint64_t offset, std::span<std::byte> buf) override;

 private:
  template <typename ReadFn>
  Result<void> traced(uint64_t offset, std::span<std::byte> buf, ReadFn&& fn);

  TraceWriter& trace_;
};

}  // namespace imgstream::profile
