#include "migrate/track_format.h"

#include <bit>

#include "base/check.h"
#include "base/codec.h"

namespace imgstream::migrate {

namespace {

// docs/track-format.md; the framing is docs/framing.md's.
constexpr uint32_t kVersion = 1;  // named in bad_version below
constexpr Frame kHeaderFrame{.magic = "IMGTRAK1",
                             .bytes = kTrackHeaderBytes,
                             .version = kVersion,
                             .text = {.truncated = "tracking file header is truncated",
                                      .bad_magic = "not a tracking file (bad magic)",
                                      .bad_crc = "tracking file header checksum mismatch",
                                      .bad_version = "tracking file version is not 1"}};
constexpr Frame kAlFrame{.magic = "IMGTAL01",
                         .bytes = kAlSlotBytes,
                         .text = {.truncated = "activity-log slot is truncated",
                                  .bad_magic = "activity-log slot is empty",
                                  .bad_crc = "activity-log slot checksum mismatch"}};
constexpr size_t kAlExtentsAt = 24;
static_assert(kAlExtentsAt + 8 * kAlExtentsMax <= kAlSlotBytes - Frame::kCrcBytes);

}  // namespace

Result<void> validate(const TrackHeader& h) {
  if (h.image_size == 0) return Error::invalid("tracking: image size is zero");
  if (h.region_size < kTrackRegionBytesMin || h.region_size > kTrackRegionBytesMax ||
      !std::has_single_bit(h.region_size))
    return Error::invalid("tracking: region size must be a power of two from 4K to 64M");
  if (h.regions() > kTrackRegionsMax) return Error::invalid("tracking: too many regions");
  if (h.extent_regions == 0 || h.extent_regions > (1u << 20))
    return Error::invalid("tracking: bad extent size");
  if (h.al_extents == 0 || h.al_extents > kAlExtentsMax)
    return Error::invalid("tracking: activity log must hold 1 to 508 extents");
  return ok();
}

std::vector<std::byte> encode_track_header(const TrackHeader& h) {
  IMG_CHECK(validate(h).has_value());
  std::vector<std::byte> b = new_frame(kHeaderFrame);
  ByteWriter w(b);
  w.u32_at(12, h.region_size);
  w.u64_at(16, h.image_size);
  w.u32_at(24, h.extent_regions);
  w.u32_at(28, h.al_extents);
  w.u64_at(32, h.regions());
  w.u64_at(40, h.al_offset());
  seal_frame(b, kHeaderFrame);
  return b;
}

Result<TrackHeader> decode_track_header(std::span<const std::byte> b) {
  ByteReader r = TRY(open_frame(b, kHeaderFrame));
  TrackHeader h;
  h.region_size = r.u32_at(12);
  h.image_size = r.u64_at(16);
  h.extent_regions = r.u32_at(24);
  h.al_extents = r.u32_at(28);
  TRY(validate(h));
  if (r.u64_at(32) != h.regions() || r.u64_at(40) != h.al_offset())
    return Error::invalid("tracking file geometry is inconsistent");
  return h;
}

std::vector<std::byte> encode_al(const TrackHeader& h, const AlTransaction& t) {
  IMG_CHECK(t.seq > 0 && t.extents.size() <= h.al_extents);
  std::vector<std::byte> b = new_frame(kAlFrame);
  ByteWriter w(b);
  w.u64_at(8, t.seq);
  w.u32_at(16, static_cast<uint32_t>(t.extents.size()));
  w.skip(kAlExtentsAt);
  for (uint64_t e : t.extents) {
    IMG_CHECK(e < h.extents());
    w.u64(e);
  }
  seal_frame(b, kAlFrame);
  return b;
}

Result<AlTransaction> decode_al(const TrackHeader& h, std::span<const std::byte> b) {
  ByteReader r = TRY(open_frame(b, kAlFrame));
  AlTransaction t;
  t.seq = r.u64_at(8);
  const uint32_t n = r.u32_at(16);
  if (t.seq == 0 || n > h.al_extents) return Error::invalid("activity-log slot is malformed");
  r.skip(kAlExtentsAt);
  for (uint32_t i = 0; i < n; ++i) {
    const uint64_t e = r.u64();
    if (e >= h.extents()) return Error::invalid("activity-log extent out of range");
    t.extents.push_back(e);
  }
  // A header that validated holds at most kAlExtentsMax, which fit the slot.
  if (!r.ok()) return Error::invalid("activity-log slot is malformed");
  return t;
}

}  // namespace imgstream::migrate
