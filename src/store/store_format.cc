#include "store/store_format.h"

#include <bit>
#include <cstring>

#include "base/check.h"
#include "base/codec.h"
#include "base/crc32c.h"

namespace imgstream::store {

namespace {

// docs/store-format.md; the framing is docs/framing.md's.
constexpr Frame kHeaderFrame{.magic = "IMGSTORE",
                             .bytes = kHeaderBytes,
                             .version = kFormatVersion,
                             .size_field = true,
                             .text = {.truncated = "store header is truncated",
                                      .bad_magic = "not an imgstream store (bad magic)",
                                      .bad_crc = "store header checksum mismatch",
                                      .bad_version = "unsupported store format version {}",
                                      .bad_size = "bad store header size"}};
// The slot's 512-byte header is the frame; the bitmap after it has a CRC of its own.
constexpr Frame kSlotFrame{.magic = "IMGSLOT1",
                           .bytes = kSlotHeaderBytes,
                           .text = {.truncated = "slot is truncated",
                                    .bad_magic = "slot has no valid magic",
                                    .bad_crc = "slot header checksum mismatch"}};
constexpr size_t kStringsAt = 92;
static_assert(58 + kErrorMessageBytesMax <= kSlotHeaderBytes - Frame::kCrcBytes,
              "message fits the slot");

}  // namespace

const char* state_name(StoreState s) {
  switch (s) {
    case StoreState::Streaming: return "streaming";
    case StoreState::Paused: return "paused";
    case StoreState::Complete: return "complete";
    case StoreState::Detached: return "detached";
    case StoreState::Error: return "error";
  }
  return "unknown";
}

uint64_t Slot::count_present() const {
  uint64_t n = 0;
  for (uint8_t b : bitmap) n += static_cast<uint64_t>(std::popcount(b));
  return n;
}

Result<void> validate_header(const StoreHeader& h) {
  if (h.image_size == 0) return Error::invalid("image size is zero");
  if (h.region_size < kRegionBytesMin || h.region_size > kRegionBytesMax ||
      !std::has_single_bit(h.region_size))
    return Error::invalid("region size must be a power of two from 4K to 1G");
  if (h.regions() > kRegionsMax) return Error::invalid("too many regions: use a larger region size");
  if (h.source_uri.size() > kStringBytesMax) return Error::invalid("source URI too long");
  if (h.device_path.size() > kStringBytesMax) return Error::invalid("device path too long");
  if (h.external_device != !h.device_path.empty())
    return Error::invalid("device flag and device path disagree");
  return ok();
}

std::vector<std::byte> encode_header(const StoreHeader& h) {
  IMG_CHECK(validate_header(h).has_value());
  std::vector<std::byte> b = new_frame(kHeaderFrame);
  ByteWriter w(b);
  w.u64_at(16, h.image_size);
  w.u32_at(24, h.region_size);
  w.u32_at(28, (h.external_device ? 1u : 0u) |
                   (h.fingerprint_kind == FingerprintKind::Sampled ? 2u : 0u));
  w.u64_at(32, h.regions());
  w.u64_at(40, h.slot_bytes());
  w.u64_at(48, h.created_unix);
  w.bytes_at(56, h.fingerprint);
  w.u16_at(88, static_cast<uint16_t>(h.source_uri.size()));
  w.u16_at(90, static_cast<uint16_t>(h.device_path.size()));
  w.string_at(kStringsAt, h.source_uri);
  w.string_at(kStringsAt + h.source_uri.size(), h.device_path);
  seal_frame(b, kHeaderFrame);
  return b;
}

Result<StoreHeader> decode_header(std::span<const std::byte> b) {
  ByteReader r = TRY(open_frame(b, kHeaderFrame));
  StoreHeader h;
  h.image_size = r.u64_at(16);
  h.region_size = r.u32_at(24);
  const uint32_t flags = r.u32_at(28);
  if (flags & ~3u) return Error::invalid("unknown store flags");
  h.external_device = flags & 1;
  h.fingerprint_kind = flags & 2 ? FingerprintKind::Sampled : FingerprintKind::Ends;
  h.created_unix = r.u64_at(48);
  r.copy_at(56, h.fingerprint);
  const size_t u = r.u16_at(88), d = r.u16_at(90);
  if (u > kStringBytesMax || d > kStringBytesMax) return Error::invalid("bad string length in store header");
  h.source_uri = r.string_at(kStringsAt, u);
  h.device_path = r.string_at(kStringsAt + u, d);
  IMG_CHECK(r.ok());  // the frame holds the largest strings (static_assert in the header)
  TRY(validate_header(h));
  // Derived fields must agree with what was recorded.
  if (r.u64_at(32) != h.regions() || r.u64_at(40) != h.slot_bytes())
    return Error::invalid("store header geometry is inconsistent");
  return h;
}

Result<void> check_meta_size(const StoreHeader& h, uint64_t file_bytes) {
  const uint64_t needed = h.slot_offset(2);
  if (file_bytes < needed)
    return Error::invalid("meta file is " + std::to_string(file_bytes) +
                          " bytes, its header needs " + std::to_string(needed));
  return ok();
}

std::vector<std::byte> encode_slot(const StoreHeader& h, const Slot& s) {
  IMG_CHECK(s.bitmap.size() == h.bitmap_bytes());
  IMG_CHECK(s.error_message.size() <= kErrorMessageBytesMax);
  IMG_CHECK(s.generation > 0 && s.generation <= kSlotGenerationMax);
  std::vector<std::byte> b = new_frame(kSlotFrame, h.slot_bytes());
  ByteWriter w(b);
  w.u64_at(8, s.generation);
  w.u64_at(16, s.count_present());
  const Counters& c = s.counters;
  w.u64_at(24, c.bytes_fetched_demand);
  w.u64_at(32, c.bytes_fetched_background);
  w.u32_at(40, static_cast<uint32_t>(s.state));
  const auto bitmap = std::as_bytes(std::span(s.bitmap));
  w.u32_at(44, crc32c(bitmap));
  w.u64_at(48, s.bitmap.size());
  w.u16_at(56, static_cast<uint16_t>(s.error_message.size()));
  w.string_at(58, s.error_message);
  w.u64_at(320, c.bytes_fetched_prefetch);
  w.u64_at(328, c.prefetch_bytes_read);
  w.u64_at(336, c.reads_local);
  w.u64_at(344, c.reads_waited);
  w.u64_at(352, c.wait_ns);
  w.u64_at(360, c.bytes_seeded);
  w.u64_at(368, c.reads_failed);
  w.bytes_at(kSlotHeaderBytes, bitmap);
  seal_frame(b, kSlotFrame);
  return b;
}

Result<Slot> decode_slot(const StoreHeader& h, std::span<const std::byte> b) {
  if (b.size() < kSlotHeaderBytes + h.bitmap_bytes()) return Error::invalid("slot is truncated");
  ByteReader r = TRY(open_frame(b, kSlotFrame));
  if (r.u64_at(48) != h.bitmap_bytes()) return Error::invalid("slot bitmap size mismatch");
  Slot s;
  s.generation = r.u64_at(8);
  if (s.generation == 0) return Error::invalid("slot generation is zero");
  if (s.generation > kSlotGenerationMax)
    return Error::invalid("slot generation " + std::to_string(s.generation) +
                          " is past the largest a store reaches");
  Counters& c = s.counters;
  c.bytes_fetched_demand = r.u64_at(24);
  c.bytes_fetched_background = r.u64_at(32);
  c.bytes_fetched_prefetch = r.u64_at(320);
  c.prefetch_bytes_read = r.u64_at(328);
  c.reads_local = r.u64_at(336);
  c.reads_waited = r.u64_at(344);
  c.wait_ns = r.u64_at(352);
  c.bytes_seeded = r.u64_at(360);
  c.reads_failed = r.u64_at(368);
  // Format 1 stores written before these counters existed hold zeros there.
  if (c.prefetch_bytes_read > c.bytes_fetched_prefetch)
    return Error::invalid("slot counts more prefetched bytes read than prefetched");
  if (c.reads_local > UINT64_MAX - c.reads_waited) return Error::invalid("slot read counts overflow");
  const uint32_t state = r.u32_at(40);
  if (state > static_cast<uint32_t>(StoreState::Error)) return Error::invalid("bad slot state");
  s.state = static_cast<StoreState>(state);
  const size_t m = r.u16_at(56);
  if (m > kErrorMessageBytesMax) return Error::invalid("bad error message length");
  s.error_message = r.string_at(58, m);
  IMG_CHECK(r.ok());  // 58 + kErrorMessageBytesMax < kSlotHeaderBytes
  const auto bitmap = b.subspan(kSlotHeaderBytes, h.bitmap_bytes());
  if (r.u32_at(44) != crc32c(bitmap)) return Error::invalid("slot bitmap checksum mismatch");
  s.bitmap.resize(bitmap.size());
  std::memcpy(s.bitmap.data(), bitmap.data(), bitmap.size());
  // Bits past the last region must be clear.
  const uint64_t regions = h.regions();
  if (regions % 8 != 0 && (s.bitmap.back() >> (regions % 8)) != 0)
    return Error::invalid("slot bitmap has bits past the last region");
  if (s.count_present() != r.u64_at(16)) return Error::invalid("slot present count mismatch");
  return s;
}

}  // namespace imgstream::store
