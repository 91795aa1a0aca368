#include "device/block_device.h"

#include <cstring>
#include <vector>

namespace imgstream {

Result<void> BlockDevice::read_nowait(uint64_t, std::span<std::byte>) {
  return Error::would_block();
}

Result<void> BlockDevice::write(uint64_t, std::span<const std::byte>, Durability) {
  return Error{EPERM, "device is read-only"};
}

Result<void> BlockDevice::write_nowait(uint64_t, std::span<const std::byte>, Durability) {
  return Error::would_block();
}

Result<void> BlockDevice::flush() { return ok(); }

Result<void> BlockDevice::trim(uint64_t, uint64_t, Durability) { return ok(); }

Result<void> BlockDevice::write_zeroes(uint64_t offset, uint64_t length, ZeroFlags z,
                                       Durability d) {
  if (z.fast_only) return Error{ENOTSUP, "no fast zero"};
  // Generic fallback: write zeros in bounded pieces.
  static constexpr uint64_t kChunk = 1u << 20;
  std::vector<std::byte> zeros(std::min<uint64_t>(kChunk, length));
  for (uint64_t done = 0; done < length;) {
    uint64_t n = std::min<uint64_t>(zeros.size(), length - done);
    TRY(write(offset + done, std::span<const std::byte>(zeros.data(), n), Durability::Buffered));
    done += n;
  }
  if (d == Durability::Fua) TRY(flush());
  return ok();
}

Result<void> BlockDevice::cache(uint64_t, uint64_t) { return ok(); }

Result<void> BlockDevice::block_status(size_t, uint64_t, uint64_t length,
                                       std::vector<Extent>& out) {
  out.push_back(Extent{length, 0});
  return ok();
}

}  // namespace imgstream
