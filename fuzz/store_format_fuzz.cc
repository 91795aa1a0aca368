// Fuzzes the decoders of the store's `meta` file (docs/store-format.md): a damaged disk
// hands them arbitrary bytes. Invariants: no crash or out-of-bounds read; whatever
// decodes is self-consistent and encodes back to bytes that decode to the same thing.
//
// Input: the whole input is the meta file. The first 4096 bytes (zero padded) are the
// header. When it decodes and the input is as long as its geometry needs
// (check_meta_size, the reader's own bound), both slots are decoded where the reader
// reads them (an input of at least 12 KiB: run with -max_len=16384 to reach it);
// otherwise the rest is a slot for that header (when its slots are at most 1 MiB) or for
// a small fixed one (so slot decoding is reached either way). Also: a header the size check accepts
// never claims more slot bytes than the input has, and a slot that decodes has a generation that
// can be followed by another commit.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <vector>

#include "fuzz_check.h"
#include "store/store_format.h"

namespace {

using namespace imgstream::store;

StoreHeader fallback_header() {
  StoreHeader h;
  h.image_size = 1000 * 4096 + 123;  // a short last region, bits past it in the last byte
  h.region_size = 4096;
  return h;
}

void check_slot(const StoreHeader& h, std::span<const std::byte> bytes) {
  auto s = decode_slot(h, bytes);
  if (!s) return;
  FUZZ_CHECK(s->bitmap.size() == h.bitmap_bytes());
  FUZZ_CHECK(s->count_present() <= h.regions());
  FUZZ_CHECK(s->generation > 0 && s->generation <= kSlotGenerationMax);
  auto again = decode_slot(h, encode_slot(h, *s));
  FUZZ_CHECK(again && again->bitmap == s->bitmap && again->generation == s->generation &&
             again->state == s->state && again->error_message == s->error_message);
  // The commit after it (LocalStore::commit refuses one past the bound) encodes.
  if (s->generation < kSlotGenerationMax) {
    Slot next = *s;
    ++next.generation;
    FUZZ_CHECK(decode_slot(h, encode_slot(h, next)).has_value());
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::byte> hb(kHeaderBytes);
  std::memcpy(hb.data(), data, std::min(size, kHeaderBytes));
  StoreHeader h = fallback_header();
  if (auto d = decode_header(hb)) {
    FUZZ_CHECK(validate_header(*d).has_value());
    auto again = decode_header(encode_header(*d));
    FUZZ_CHECK(again && again->image_size == d->image_size &&
               again->region_size == d->region_size && again->source_uri == d->source_uri &&
               again->device_path == d->device_path && again->fingerprint == d->fingerprint);
    if (check_meta_size(*d, size)) {
      // What the reader would allocate for the two slots fits in the file.
      FUZZ_CHECK(d->slot_offset(2) <= size);
      for (int i = 0; i < 2; ++i) {
        const auto slot = std::span(reinterpret_cast<const std::byte*>(data), size)
                              .subspan(d->slot_offset(i), d->slot_bytes());
        check_slot(*d, slot);
      }
      return 0;
    }
    // A file too short for its geometry (what the reader refuses): its slot still gets
    // decoded on its own, when small enough to keep runs fast.
    if (d->slot_bytes() <= (1u << 20)) h = *d;
  }
  std::vector<std::byte> sb(size > kHeaderBytes ? size - kHeaderBytes : 0);
  if (!sb.empty()) std::memcpy(sb.data(), data + kHeaderBytes, sb.size());
  check_slot(h, sb);
  return 0;
}
