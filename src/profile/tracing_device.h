// TracingDevice: a BlockDevice decorator that records every successful read of the
// device it wraps in a TraceWriter (docs/trace-format.md) and forwards everything else
// untouched. A read_nowait() is recorded only when it succeeds, so a read that falls back
// from read_nowait() to read() is recorded once.
//
// "Served locally" (kRecordLocal) is asked of `is_local` before the read is forwarded:
// the streaming device fetches missing regions during the read, so asking afterwards
// would always say yes. Without is_local every read is local (a plain file).
//
// Thread safety: as the inner device; is_local must be callable from many threads.
#pragma once

#include <functional>

#include "device/forwarding_device.h"
#include "profile/trace.h"

namespace imgstream::profile {

class TracingDevice final : public ForwardingDevice {
 public:
  using IsLocal = std::function<bool(uint64_t offset, uint64_t length)>;

  // `inner` and `trace` must outlive the decorator.
  TracingDevice(BlockDevice& inner, TraceWriter& trace, IsLocal is_local = {})
      : ForwardingDevice(inner), trace_(trace), is_local_(std::move(is_local)) {}

  Result<void> read(uint64_t offset, std::span<std::byte> buf) override;
  Result<void> read_nowait(uint64_t offset, std::span<std::byte> buf) override;

 private:
  template <typename ReadFn>
  Result<void> traced(uint64_t offset, std::span<std::byte> buf, ReadFn&& fn);

  TraceWriter& trace_;
  const IsLocal is_local_;
};

}  // namespace imgstream::profile
