// Fuzzes the tracking file's decoders (docs/track-format.md): the file may be damaged.
// Input: the first 4096 bytes are the header; the rest is one activity-log slot, decoded
// against the header that decoded or, when none did, a small fixed one.
// Invariants: no crash or out-of-bounds read; what decodes validates and re-encodes to a
// form that decodes to the same values; every extent named is inside the image.
#include <cstring>
#include <vector>

#include "fuzz_check.h"
#include "migrate/track_format.h"

using namespace imgstream::migrate;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::byte> hb(kTrackHeaderBytes);
  if (size) std::memcpy(hb.data(), data, std::min(size, kTrackHeaderBytes));  // data may be null
  TrackHeader h{.image_size = 1u << 20, .region_size = 4096, .extent_regions = 4, .al_extents = 100};
  if (auto d = decode_track_header(hb)) {
    FUZZ_CHECK(validate(*d).has_value());
    auto again = decode_track_header(encode_track_header(*d));
    FUZZ_CHECK(again && again->image_size == d->image_size && again->region_size == d->region_size &&
               again->extent_regions == d->extent_regions && again->al_extents == d->al_extents);
    h = *d;
  }
  std::vector<std::byte> slot(kAlSlotBytes);
  if (size > kTrackHeaderBytes)
    std::memcpy(slot.data(), data + kTrackHeaderBytes, std::min(size - kTrackHeaderBytes, kAlSlotBytes));
  if (auto t = decode_al(h, slot)) {
    FUZZ_CHECK(t->seq > 0 && t->extents.size() <= h.al_extents);
    for (uint64_t e : t->extents) FUZZ_CHECK(e < h.extents());
    auto again = decode_al(h, encode_al(h, *t));
    FUZZ_CHECK(again && again->seq == t->seq && again->extents == t->extents);
  }
  return 0;
}
