// Fuzzes the decoders of the store's `meta` file (docs/store-format.md): a damaged disk
// hands them arbitrary bytes. Invariants: no crash or out-of-bounds read; whatever
// decodes is self-consistent and encodes back to bytes that decode to the same thing.
//
// Input: the first 4096 bytes (zero padded) are the header; the rest is a slot for the
// header that decoded, or, when it did not, for a small fixed header (so slot decoding is
// reached either way).
#include "fuzz_check.h"
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "store/store_format.h"

namespace {

using namespace imgstream::store;

StoreHeader fallback_header() {
  StoreHeader h;
  h.image_size = 1000 * 4096 + 123;  // a short last region, bits past it in the last byte
  h.region_size = 4096;
  return h;
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
    // Keep slot decoding cheap: a header of huge geometry falls back.
    if (d->slot_bytes() <= (1u << 20)) h = *d;
  }
  std::vector<std::byte> sb(size > kHeaderBytes ? size - kHeaderBytes : 0);
  if (!sb.empty()) std::memcpy(sb.data(), data + kHeaderBytes, sb.size());
  if (auto s = decode_slot(h, sb)) {
    FUZZ_CHECK(s->bitmap.size() == h.bitmap_bytes());
    FUZZ_CHECK(s->count_present() <= h.regions());
    FUZZ_CHECK(s->generation > 0);
    auto again = decode_slot(h, encode_slot(h, *s));
    FUZZ_CHECK(again && again->bitmap == s->bitmap && again->generation == s->generation &&
               again->state == s->state && again->error_message == s->error_message);
  }
  return 0;
}
