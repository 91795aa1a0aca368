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

#include "device/block_device.h"
#include "profile/trace.h"

namespace imgstream::profile {

class TracingDevice final : public BlockDevice {
 public:
  using IsLocal = std::function<bool(uint64_t offset, uint64_t length)>;

  // `inner` and `trace` must outlive the decorator.
  TracingDevice(BlockDevice& inner, TraceWriter& trace, IsLocal is_local = {})
      : inner_(inner), trace_(trace), is_local_(std::move(is_local)) {}

  uint64_t size() const override { return inner_.size(); }
  DeviceCaps caps() const override { return inner_.caps(); }
  Result<void> read(uint64_t offset, std::span<std::byte> buf) override;
  Result<void> read_nowait(uint64_t offset, std::span<std::byte> buf) override;
  Result<void> write(uint64_t offset, std::span<const std::byte> data, Durability d) override {
    return inner_.write(offset, data, d);
  }
  Result<void> write_nowait(uint64_t offset, std::span<const std::byte> data,
                            Durability d) override {
    return inner_.write_nowait(offset, data, d);
  }
  Result<void> flush() override { return inner_.flush(); }
  Result<void> trim(uint64_t offset, uint64_t length, Durability d) override {
    return inner_.trim(offset, length, d);
  }
  Result<void> write_zeroes(uint64_t offset, uint64_t length, ZeroFlags z, Durability d) override {
    return inner_.write_zeroes(offset, length, z, d);
  }
  Result<void> cache(uint64_t offset, uint64_t length) override {
    return inner_.cache(offset, length);
  }
  std::vector<std::string> meta_contexts() const override { return inner_.meta_contexts(); }
  Result<void> block_status(size_t context, uint64_t offset, uint64_t length,
                            std::vector<Extent>& out) override {
    return inner_.block_status(context, offset, length, out);
  }

 private:
  template <typename ReadFn>
  Result<void> traced(uint64_t offset, std::span<std::byte> buf, ReadFn&& fn);

  BlockDevice& inner_;
  TraceWriter& trace_;
  const IsLocal is_local_;
};

}  // namespace imgstream::profile
