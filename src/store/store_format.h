// Encoding and decoding of the store's `meta` file: the header and the two bitmap slots.
// docs/store-format.md is the byte-by-byte description; keep the two in step. Decoders
// take untrusted bytes (a damaged disk) and never read out of bounds.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/limits.h"
#include "base/result.h"

namespace imgstream::store {

inline constexpr uint32_t kFormatVersion = 1;
inline constexpr size_t kHeaderBytes = 4096;
inline constexpr size_t kSlotHeaderBytes = 512;
inline constexpr size_t kStringBytesMax = limits::kStoreStringBytesMax;
inline constexpr size_t kErrorMessageBytesMax = limits::kStoreErrorMessageBytesMax;
inline constexpr uint32_t kRegionBytesMin = limits::kStoreRegionBytesMin;
inline constexpr uint32_t kRegionBytesMax = limits::kStoreRegionBytesMax;
inline constexpr uint64_t kRegionsMax = limits::kStoreRegionsMax;
// The largest generation a slot may hold. Far beyond any store's life (2^62 commits, a
// thousand a second, take 146 million years); a slot claiming more is corrupt, so that
// the generation after the newest never wraps round to 0.
inline constexpr uint64_t kSlotGenerationMax = limits::kSlotGenerationMax;
static_assert(92 + 2 * kStringBytesMax <= kHeaderBytes - 4, "strings fit the header");

enum class StoreState : uint32_t { Streaming = 0, Paused = 1, Complete = 2, Detached = 3, Error = 4 };
const char* state_name(StoreState s);

using Fingerprint = std::array<std::byte, 32>;
// How the fingerprint of a source without an identity was taken (docs/store-format.md):
// Ends, its first and last 64 KiB (stores made before 2026-11-30); Sampled, those plus the
// start of every partition and 64 blocks spread over the image.
enum class FingerprintKind : uint8_t { Ends = 0, Sampled = 1 };

struct StoreHeader {
  uint64_t image_size = 0;
  uint32_t region_size = 0;
  bool external_device = false;
  uint64_t created_unix = 0;
  Fingerprint fingerprint{};
  FingerprintKind fingerprint_kind = FingerprintKind::Sampled;
  std::string source_uri;
  std::string device_path;

  uint64_t regions() const { return (image_size + region_size - 1) / region_size; }
  uint64_t bitmap_bytes() const { return (regions() + 7) / 8; }
  uint64_t slot_bytes() const { return (kSlotHeaderBytes + bitmap_bytes() + 4095) / 4096 * 4096; }
  uint64_t slot_offset(int slot) const { return kHeaderBytes + uint64_t(slot) * slot_bytes(); }
};

// What a store has done, kept across restarts (`imgstream status`). Reads are counted at
// the device (one NBD read = one read); prefetch precision is counted per region: a
// prefetched region counts as read once any read touches it.
struct Counters {
  uint64_t bytes_fetched_demand = 0;      // for reads and partial writes of missing regions
  uint64_t bytes_fetched_background = 0;  // by ordinary hydration
  uint64_t bytes_fetched_prefetch = 0;    // by a boot profile's prefetch
  uint64_t prefetch_bytes_read = 0;       // bytes of prefetched regions read since
  uint64_t reads_local = 0;               // reads served without waiting on the source
  uint64_t reads_waited = 0;              // reads that waited on the source
  uint64_t wait_ns = 0;                   // total time those reads waited
  uint64_t bytes_seeded = 0;              // copied from a local seed instead of fetched
  uint64_t reads_failed = 0;              // reads answered with an error (the source failed)

  uint64_t reads_total() const { return reads_local + reads_waited; }
  uint64_t bytes_fetched() const {
    return bytes_fetched_demand + bytes_fetched_background + bytes_fetched_prefetch;
  }
  bool operator==(const Counters&) const = default;
};

struct Slot {
  uint64_t generation = 0;
  Counters counters;
  StoreState state = StoreState::Streaming;
  std::string error_message;
  std::vector<uint8_t> bitmap;  // bitmap_bytes() long

  uint64_t count_present() const;
};

// Checks the header's fields (sizes, region size a power of two, string lengths).
Result<void> validate_header(const StoreHeader& h);
std::vector<std::byte> encode_header(const StoreHeader& h);
Result<StoreHeader> decode_header(std::span<const std::byte> bytes);

// A slot is encoded to exactly slot_bytes() bytes.
std::vector<std::byte> encode_slot(const StoreHeader& h, const Slot& s);
// Refuses a generation of 0 or above kSlotGenerationMax.
Result<Slot> decode_slot(const StoreHeader& h, std::span<const std::byte> bytes);

// Checks that a meta file of `file_bytes` bytes holds the header and both slots of the
// geometry `h` claims, before anything is allocated for them.
Result<void> check_meta_size(const StoreHeader& h, uint64_t file_bytes);

}  // namespace imgstream::store
