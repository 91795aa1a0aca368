// Encoding and decoding of the tracking file (docs/track-format.md): the header, the
// dirty bitmap and the activity-log slots. Decoders take untrusted bytes and never read
// out of bounds.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "base/limits.h"
#include "base/result.h"

namespace imgstream::migrate {

inline constexpr size_t kTrackHeaderBytes = 4096;
inline constexpr size_t kAlSlotBytes = 4096;
inline constexpr uint32_t kAlSlots = 8;
inline constexpr size_t kAlExtentsMax = (kAlSlotBytes - 28) / 8;  // 508 per transaction
inline constexpr uint32_t kTrackRegionBytesMin = limits::kTrackRegionBytesMin;
inline constexpr uint32_t kTrackRegionBytesMax = limits::kTrackRegionBytesMax;
inline constexpr uint64_t kTrackRegionsMax = limits::kTrackRegionsMax;

struct TrackHeader {
  uint64_t image_size = 0;
  uint32_t region_size = 0;     // one dirty bit per region
  uint32_t extent_regions = 0;  // regions per activity-log extent
  uint32_t al_extents = 0;      // extents the activity log holds at most

  uint64_t regions() const { return (image_size + region_size - 1) / region_size; }
  uint64_t extents() const { return (regions() + extent_regions - 1) / extent_regions; }
  uint64_t bitmap_bytes() const { return (regions() + 7) / 8; }
  uint64_t bitmap_offset() const { return kTrackHeaderBytes; }
  uint64_t al_offset() const { return kTrackHeaderBytes + (bitmap_bytes() + 4095) / 4096 * 4096; }
  uint64_t file_bytes() const { return al_offset() + uint64_t(kAlSlots) * kAlSlotBytes; }
};

// One activity-log transaction: the whole set of active extents after it.
struct AlTransaction {
  uint64_t seq = 0;  // >= 1; the newest valid slot wins
  std::vector<uint64_t> extents;
};

Result<void> validate(const TrackHeader& h);
std::vector<std::byte> encode_track_header(const TrackHeader& h);
Result<TrackHeader> decode_track_header(std::span<const std::byte> b);
std::vector<std::byte> encode_al(const TrackHeader& h, const AlTransaction& t);
Result<AlTransaction> decode_al(const TrackHeader& h, std::span<const std::byte> b);

}  // namespace imgstream::migrate
