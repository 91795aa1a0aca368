#include "migrate/track_format.h"

#include <bit>
#include <cstring>

#include "base/check.h"
#include "base/crc32c.h"
#include "base/endian.h"

namespace imgstream::migrate {

namespace {

constexpr char kHeaderMagic[8] = {'I', 'M', 'G', 'T', 'R', 'A', 'K', '1'};
constexpr char kAlMagic[8] = {'I', 'M', 'G', 'T', 'A', 'L', '0', '1'};
constexpr uint32_t kVersion = 1;

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
  std::vector<std::byte> b(kTrackHeaderBytes);
  std::byte* p = b.data();
  std::memcpy(p, kHeaderMagic, 8);
  le::put32(p + 8, kVersion);
  le::put32(p + 12, h.region_size);
  le::put64(p + 16, h.image_size);
  le::put32(p + 24, h.extent_regions);
  le::put32(p + 28, h.al_extents);
  le::put64(p + 32, h.regions());
  le::put64(p + 40, h.al_offset());
  le::put32(p + kTrackHeaderBytes - 4, crc32c(std::span(b).first(kTrackHeaderBytes - 4)));
  return b;
}

Result<TrackHeader> decode_track_header(std::span<const std::byte> b) {
  if (b.size() < kTrackHeaderBytes) return Error::invalid("tracking file header is truncated");
  const std::byte* p = b.data();
  if (std::memcmp(p, kHeaderMagic, 8) != 0) return Error::invalid("not a tracking file (bad magic)");
  if (le::get32(p + kTrackHeaderBytes - 4) != crc32c(b.first(kTrackHeaderBytes - 4)))
    return Error::invalid("tracking file header checksum mismatch");
  if (le::get32(p + 8) != kVersion) return Error::invalid("tracking file version is not 1");
  TrackHeader h;
  h.region_size = le::get32(p + 12);
  h.image_size = le::get64(p + 16);
  h.extent_regions = le::get32(p + 24);
  h.al_extents = le::get32(p + 28);
  TRY(validate(h));
  if (le::get64(p + 32) != h.regions() || le::get64(p + 40) != h.al_offset())
    return Error::invalid("tracking file geometry is inconsistent");
  return h;
}

std::vector<std::byte> encode_al(const TrackHeader& h, const AlTransaction& t) {
  IMG_CHECK(t.seq > 0 && t.extents.size() <= h.al_extents);
  std::vector<std::byte> b(kAlSlotBytes);
  std::byte* p = b.data();
  std::memcpy(p, kAlMagic, 8);
  le::put64(p + 8, t.seq);
  le::put32(p + 16, static_cast<uint32_t>(t.extents.size()));
  for (size_t i = 0; i < t.extents.size(); ++i) {
    IMG_CHECK(t.extents[i] < h.extents());
    le::put64(p + 24 + 8 * i, t.extents[i]);
  }
  le::put32(p + kAlSlotBytes - 4, crc32c(std::span(b).first(kAlSlotBytes - 4)));
  return b;
}

Result<AlTransaction> decode_al(const TrackHeader& h, std::span<const std::byte> b) {
  if (b.size() < kAlSlotBytes) return Error::invalid("activity-log slot is truncated");
  const std::byte* p = b.data();
  if (std::memcmp(p, kAlMagic, 8) != 0) return Error::invalid("activity-log slot is empty");
  if (le::get32(p + kAlSlotBytes - 4) != crc32c(b.first(kAlSlotBytes - 4)))
    return Error::invalid("activity-log slot checksum mismatch");
  AlTransaction t;
  t.seq = le::get64(p + 8);
  const uint32_t n = le::get32(p + 16);
  if (t.seq == 0 || n > h.al_extents) return Error::invalid("activity-log slot is malformed");
  for (uint32_t i = 0; i < n; ++i) {
    const uint64_t e = le::get64(p + 24 + 8 * i);
    if (e >= h.extents()) return Error::invalid("activity-log extent out of range");
    t.extents.push_back(e);
  }
  return t;
}

}  // namespace imgstream::migrate
