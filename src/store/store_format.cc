#include "store/store_format.h"

#include <bit>
#include <cstring>

#include "base/check.h"
#include "base/crc32c.h"
#include "base/endian.h"

namespace imgstream::store {

namespace {

constexpr char kHeaderMagic[8] = {'I', 'M', 'G', 'S', 'T', 'O', 'R', 'E'};
constexpr char kSlotMagic[8] = {'I', 'M', 'G', 'S', 'L', 'O', 'T', '1'};
constexpr size_t kHeaderCrcAt = kHeaderBytes - 4;
constexpr size_t kSlotCrcAt = kSlotHeaderBytes - 4;

void put_bytes(std::byte* p, const void* src, size_t n) { std::memcpy(p, src, n); }

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
  std::vector<std::byte> b(kHeaderBytes);
  std::byte* p = b.data();
  put_bytes(p, kHeaderMagic, 8);
  le::put32(p + 8, kFormatVersion);
  le::put32(p + 12, kHeaderBytes);
  le::put64(p + 16, h.image_size);
  le::put32(p + 24, h.region_size);
  le::put32(p + 28, (h.external_device ? 1u : 0u) |
                        (h.fingerprint_kind == FingerprintKind::Sampled ? 2u : 0u));
  le::put64(p + 32, h.regions());
  le::put64(p + 40, h.slot_bytes());
  le::put64(p + 48, h.created_unix);
  put_bytes(p + 56, h.fingerprint.data(), 32);
  le::put16(p + 88, static_cast<uint16_t>(h.source_uri.size()));
  le::put16(p + 90, static_cast<uint16_t>(h.device_path.size()));
  put_bytes(p + 92, h.source_uri.data(), h.source_uri.size());
  put_bytes(p + 92 + h.source_uri.size(), h.device_path.data(), h.device_path.size());
  le::put32(p + kHeaderCrcAt, crc32c(std::span(b).first(kHeaderCrcAt)));
  return b;
}

Result<StoreHeader> decode_header(std::span<const std::byte> b) {
  if (b.size() < kHeaderBytes) return Error::invalid("store header is truncated");
  const std::byte* p = b.data();
  if (std::memcmp(p, kHeaderMagic, 8) != 0) return Error::invalid("not an imgstream store (bad magic)");
  if (le::get32(p + kHeaderCrcAt) != crc32c(b.first(kHeaderCrcAt)))
    return Error::invalid("store header checksum mismatch");
  if (le::get32(p + 8) != kFormatVersion)
    return Error::invalid("unsupported store format version " + std::to_string(le::get32(p + 8)));
  if (le::get32(p + 12) != kHeaderBytes) return Error::invalid("bad store header size");
  StoreHeader h;
  h.image_size = le::get64(p + 16);
  h.region_size = le::get32(p + 24);
  const uint32_t flags = le::get32(p + 28);
  if (flags & ~3u) return Error::invalid("unknown store flags");
  h.external_device = flags & 1;
  h.fingerprint_kind = flags & 2 ? FingerprintKind::Sampled : FingerprintKind::Ends;
  h.created_unix = le::get64(p + 48);
  std::memcpy(h.fingerprint.data(), p + 56, 32);
  const size_t u = le::get16(p + 88), d = le::get16(p + 90);
  if (u > kStringBytesMax || d > kStringBytesMax) return Error::invalid("bad string length in store header");
  h.source_uri.assign(reinterpret_cast<const char*>(p + 92), u);
  h.device_path.assign(reinterpret_cast<const char*>(p + 92 + u), d);
  TRY(validate_header(h));
  // Derived fields must agree with what was recorded.
  if (le::get64(p + 32) != h.regions() || le::get64(p + 40) != h.slot_bytes())
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
  std::vector<std::byte> b(h.slot_bytes());
  std::byte* p = b.data();
  put_bytes(p, kSlotMagic, 8);
  le::put64(p + 8, s.generation);
  le::put64(p + 16, s.count_present());
  const Counters& c = s.counters;
  le::put64(p + 24, c.bytes_fetched_demand);
  le::put64(p + 32, c.bytes_fetched_background);
  le::put32(p + 40, static_cast<uint32_t>(s.state));
  auto bitmap = std::as_bytes(std::span(s.bitmap));
  le::put32(p + 44, crc32c(bitmap));
  le::put64(p + 48, s.bitmap.size());
  le::put16(p + 56, static_cast<uint16_t>(s.error_message.size()));
  put_bytes(p + 58, s.error_message.data(), s.error_message.size());
  le::put64(p + 320, c.bytes_fetched_prefetch);
  le::put64(p + 328, c.prefetch_bytes_read);
  le::put64(p + 336, c.reads_local);
  le::put64(p + 344, c.reads_waited);
  le::put64(p + 352, c.wait_ns);
  le::put64(p + 360, c.bytes_seeded);
  le::put64(p + 368, c.reads_failed);
  le::put32(p + kSlotCrcAt, crc32c(std::span(b).first(kSlotCrcAt)));
  put_bytes(p + kSlotHeaderBytes, s.bitmap.data(), s.bitmap.size());
  return b;
}

Result<Slot> decode_slot(const StoreHeader& h, std::span<const std::byte> b) {
  if (b.size() < kSlotHeaderBytes + h.bitmap_bytes()) return Error::invalid("slot is truncated");
  const std::byte* p = b.data();
  if (std::memcmp(p, kSlotMagic, 8) != 0) return Error::invalid("slot has no valid magic");
  if (le::get32(p + kSlotCrcAt) != crc32c(b.first(kSlotCrcAt)))
    return Error::invalid("slot header checksum mismatch");
  if (le::get64(p + 48) != h.bitmap_bytes()) return Error::invalid("slot bitmap size mismatch");
  Slot s;
  s.generation = le::get64(p + 8);
  if (s.generation == 0) return Error::invalid("slot generation is zero");
  if (s.generation > kSlotGenerationMax)
    return Error::invalid("slot generation " + std::to_string(s.generation) +
                          " is past the largest a store reaches");
  Counters& c = s.counters;
  c.bytes_fetched_demand = le::get64(p + 24);
  c.bytes_fetched_background = le::get64(p + 32);
  c.bytes_fetched_prefetch = le::get64(p + 320);
  c.prefetch_bytes_read = le::get64(p + 328);
  c.reads_local = le::get64(p + 336);
  c.reads_waited = le::get64(p + 344);
  c.wait_ns = le::get64(p + 352);
  c.bytes_seeded = le::get64(p + 360);
  c.reads_failed = le::get64(p + 368);
  // Format 1 stores written before these counters existed hold zeros there.
  if (c.prefetch_bytes_read > c.bytes_fetched_prefetch)
    return Error::invalid("slot counts more prefetched bytes read than prefetched");
  if (c.reads_local > UINT64_MAX - c.reads_waited) return Error::invalid("slot read counts overflow");
  const uint32_t state = le::get32(p + 40);
  if (state > static_cast<uint32_t>(StoreState::Error)) return Error::invalid("bad slot state");
  s.state = static_cast<StoreState>(state);
  const size_t m = le::get16(p + 56);
  if (m > kErrorMessageBytesMax) return Error::invalid("bad error message length");
  s.error_message.assign(reinterpret_cast<const char*>(p + 58), m);
  auto bitmap = b.subspan(kSlotHeaderBytes, h.bitmap_bytes());
  if (le::get32(p + 44) != crc32c(bitmap)) return Error::invalid("slot bitmap checksum mismatch");
  s.bitmap.resize(bitmap.size());
  std::memcpy(s.bitmap.data(), bitmap.data(), bitmap.size());
  // Bits past the last region must be clear.
  const uint64_t regions = h.regions();
  if (regions % 8 != 0 && (s.bitmap.back() >> (regions % 8)) != 0)
    return Error::invalid("slot bitmap has bits past the last region");
  if (s.count_present() != le::get64(p + 16)) return Error::invalid("slot present count mismatch");
  return s;
}

}  // namespace imgstream::store
