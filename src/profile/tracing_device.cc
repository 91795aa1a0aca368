#include "profile/tracing_device.h"

namespace imgstream::profile {

template <typename ReadFn>
Result<void> TracingDevice::traced(uint64_t offset, std::span<std::byte> buf, ReadFn&& fn) {
  // Time and locality as the read arrives, before the inner device acts on it.
  const uint64_t t = trace_.now_ns();
  const bool local = inner_.is_local(offset, buf.size());
  Result<void> r = fn();
  if (r) {
    trace_.record(
        TraceRecord{t, offset, static_cast<uint32_t>(buf.size()), local ? kRecordLocal : 0u});
  }
  return r;
}

Result<void> TracingDevice::read(uint64_t offset, std::span<std::byte> buf) {
  return traced(offset, buf, [&] { return inner_.read(offset, buf); });
}

Result<void> TracingDevice::read_nowait(uint64_t offset, std::span<std::byte> buf) {
  return traced(offset, buf, [&] { return inner_.read_nowait(offset, buf); });
}

}  // namespace imgstream::profile
