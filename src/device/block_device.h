// BlockDevice: the one layer interface of imgstream (DESIGN.md, "Layers"). The NBD server
// exports any BlockDevice; decorators (tracing, dirty tracking) and the streaming device
// are BlockDevices stacked on BlockDevices, as nbdkit stacks filters on a plugin.
//
// Contract for callers: every request has already been validated at the protocol edge:
// offset + length <= size(), length > 0, alignment per block_size_min, and the operation
// is allowed by caps(). Implementations assert this instead of checking again.
//
// Thread safety: all methods may be called from many threads at once; requests that
// overlap in range are not ordered with each other (the client orders them, as in NBD).
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/result.h"

namespace imgstream {

// Whether a write must be durable before it completes (NBD's FUA flag).
enum class Durability { Buffered, Fua };

// How write_zeroes may do its work (NBD_CMD_FLAG_NO_HOLE / NBD_CMD_FLAG_FAST_ZERO).
struct ZeroFlags {
  bool may_trim = true;   // false: the range must stay allocated (NO_HOLE)
  bool fast_only = false;  // true: fail with ENOTSUP unless faster than writing zeros
};

struct DeviceCaps {
  bool writable = false;
  bool can_flush = false;
  bool can_fua = false;
  bool can_trim = false;
  bool can_zero = false;
  bool can_fast_zero = false;
  bool can_cache = false;
  bool can_multi_conn = false;  // a flush on one connection covers writes of all
  bool rotational = false;
  uint32_t block_size_min = 1;
  uint32_t block_size_preferred = 4096;
  uint32_t block_size_max = 32u << 20;
};

// One run of a block-status answer: `length` bytes with the context's `flags`.
struct Extent {
  uint64_t length = 0;
  uint32_t flags = 0;
};

// Flags of the "base:allocation" context (NBD protocol).
inline constexpr uint32_t kStateHole = 1;
inline constexpr uint32_t kStateZero = 2;

// Index 0 of meta_contexts() is always this.
inline constexpr const char* kBaseAllocation = "base:allocation";

class BlockDevice {
 public:
  virtual ~BlockDevice() = default;

  virtual uint64_t size() const = 0;
  virtual DeviceCaps caps() const = 0;

  // Fills buf with the bytes at offset. May wait (disk, network).
  virtual Result<void> read(uint64_t offset, std::span<std::byte> buf) = 0;
  // As read, but only if it needs no wait; otherwise Error::would_block() and the caller
  // retries with read() on a thread that may block. Lets the server answer hot reads
  // inline on its event loop.
  virtual Result<void> read_nowait(uint64_t offset, std::span<std::byte> buf);

  virtual Result<void> write(uint64_t offset, std::span<const std::byte> data, Durability d);
  // As write, but only if it needs no wait beyond copying into a cache.
  virtual Result<void> write_nowait(uint64_t offset, std::span<const std::byte> data,
                                    Durability d);
  // Makes every write that completed before the call durable.
  virtual Result<void> flush();
  // The range's contents become unspecified (zeros or old data) and may be deallocated.
  virtual Result<void> trim(uint64_t offset, uint64_t length, Durability d);
  virtual Result<void> write_zeroes(uint64_t offset, uint64_t length, ZeroFlags z,
                                    Durability d);
  // A hint that the range will be read soon (NBD_CMD_CACHE); no data is returned.
  virtual Result<void> cache(uint64_t offset, uint64_t length);

  // Whether a read of [offset, offset + length) would be served from local data now,
  // without waiting on a remote source (a streaming device's missing regions). Layers
  // that record reads ask the device below before the read (which may fetch). Same
  // contract as read() for the range. A plain file: always.
  virtual bool is_local(uint64_t offset, uint64_t length) const {
    (void)offset;
    (void)length;
    return true;
  }

  // Names of the metadata contexts the device can answer; [0] is "base:allocation".
  virtual std::vector<std::string> meta_contexts() const { return {kBaseAllocation}; }
  // Appends extents that describe [offset, offset + total) from offset on, for the
  // context with index `context` in meta_contexts(). At least one extent; the sum may be
  // less than length (the client asks again) but never more.
  virtual Result<void> block_status(size_t context, uint64_t offset, uint64_t length,
                                    std::vector<Extent>& out);
};

}  // namespace imgstream
