// ForwardingDevice: a BlockDevice decorator that passes every call to the device under
// it. A layer (DESIGN.md, "Layers") derives from it and overrides only the calls it
// changes, so that a method added to BlockDevice is forwarded by every layer at once.
#pragma once

#include "device/block_device.h"

namespace imgstream {

class ForwardingDevice : public BlockDevice {
 public:
  explicit ForwardingDevice(BlockDevice& inner) : inner_(inner) {}

  uint64_t size() const override { return inner_.size(); }
  DeviceCaps caps() const override { return inner_.caps(); }
  Result<void> read(uint64_t offset, std::span<std::byte> buf) override {
    return inner_.read(offset, buf);
  }
  Result<void> read_nowait(uint64_t offset, std::span<std::byte> buf) override {
    return inner_.read_nowait(offset, buf);
  }
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
  Result<void> cache(uint64_t offset, uint64_t length) override { return inner_.cache(offset, length); }
  bool is_local(uint64_t offset, uint64_t length) const override {
    return inner_.is_local(offset, length);
  }
  std::vector<std::string> meta_contexts() const override { return inner_.meta_contexts(); }
  Result<void> block_status(size_t context, uint64_t offset, uint64_t length,
                            std::vector<Extent>& out) override {
    return inner_.block_status(context, offset, length, out);
  }

 protected:
  BlockDevice& inner_;
};

}  // namespace imgstream
