// Golden files of the store format (docs/*-format.md; see base/golden_testing.h).

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "base/golden_testing.h"
#include "store/store_format.h"

namespace imgstream {
namespace {

using namespace golden_testing;

// --- store (docs/store-format.md) ---

void expect_same(const store::StoreHeader& a, const store::StoreHeader& b) {
  EXPECT_EQ(a.image_size, b.image_size);
  EXPECT_EQ(a.region_size, b.region_size);
  EXPECT_EQ(a.external_device, b.external_device);
  EXPECT_EQ(a.created_unix, b.created_unix);
  EXPECT_EQ(a.fingerprint, b.fingerprint);
  EXPECT_EQ(a.fingerprint_kind, b.fingerprint_kind);
  EXPECT_EQ(a.source_uri, b.source_uri);
  EXPECT_EQ(a.device_path, b.device_path);
}

void check_store_header(const std::string& name, const store::StoreHeader& h) {
  SCOPED_TRACE(name);
  const Bytes file = golden(name, store::encode_header(h));
  EXPECT_EQ(store::encode_header(h), file);
  auto d = store::decode_header(file);
  ASSERT_TRUE(d) << d.error().message;
  expect_same(*d, h);
  EXPECT_EQ(store::encode_header(*d), file);
}

store::StoreHeader slot_geometry() {
  store::StoreHeader h;
  h.image_size = 100 * 4096 + 123;  // 101 regions: a short last one, bits past it in the last byte
  h.region_size = 4096;
  h.source_uri = "file:///images/a.img";
  return h;
}

void check_store_slot(const std::string& name, const store::Slot& s) {
  SCOPED_TRACE(name);
  const store::StoreHeader h = slot_geometry();
  const Bytes file = golden(name, store::encode_slot(h, s));
  EXPECT_EQ(store::encode_slot(h, s), file);
  auto d = store::decode_slot(h, file);
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_EQ(d->generation, s.generation);
  EXPECT_EQ(d->counters, s.counters);
  EXPECT_EQ(d->state, s.state);
  EXPECT_EQ(d->error_message, s.error_message);
  EXPECT_EQ(d->bitmap, s.bitmap);
  EXPECT_EQ(store::encode_slot(h, *d), file);
}

TEST(FormatGolden, StoreHeader) {
  store::StoreHeader h;
  h.image_size = 512ull << 20;
  h.region_size = 1u << 20;
  h.created_unix = 1764460800;
  h.fingerprint = digest(1);
  h.source_uri = "nbd+unix:///disk?socket=/run/imgstream/src.sock";
  check_store_header("store-header-typical.bin", h);

  h.image_size = 4096;  // one region, an external device, fingerprinted by its ends
  h.region_size = 4096;
  h.external_device = true;
  h.fingerprint_kind = store::FingerprintKind::Ends;
  h.created_unix = 0;
  h.fingerprint = {};
  h.source_uri = "";
  h.device_path = "/dev/vdb";
  check_store_header("store-header-device-ends.bin", h);

  h.image_size = (1ull << 32) << 30;  // 2^32 regions of 1 GiB: the most there may be
  h.region_size = 1u << 30;
  h.created_unix = UINT64_MAX;
  h.fingerprint = digest(200);
  h.source_uri = text(store::kStringBytesMax, 'a');
  h.device_path = text(store::kStringBytesMax, 'A');
  check_store_header("store-header-max.bin", h);
}

TEST(FormatGolden, StoreSlot) {
  store::Slot s;
  s.generation = 7;
  s.bitmap.assign(slot_geometry().bitmap_bytes(), 0);
  s.bitmap[0] = 0x8d;
  s.bitmap[5] = 0x01;
  s.counters = {.bytes_fetched_demand = 3 << 20,
                .bytes_fetched_background = 9 << 20,
                .bytes_fetched_prefetch = 1 << 20,
                .prefetch_bytes_read = 4096,
                .reads_local = 1234,
                .reads_waited = 56,
                .wait_ns = 789'000'000,
                .bytes_seeded = 8192,
                .reads_failed = 2};
  check_store_slot("store-slot-typical.bin", s);

  s.generation = 1;
  s.counters = {};
  std::fill(s.bitmap.begin(), s.bitmap.end(), 0);
  s.state = store::StoreState::Error;
  s.error_message = text(store::kErrorMessageBytesMax, 'e');
  check_store_slot("store-slot-error.bin", s);

  s.generation = store::kSlotGenerationMax;
  std::fill(s.bitmap.begin(), s.bitmap.end(), 0xff);
  s.bitmap.back() = 0x1f;  // regions 96 to 100
  s.state = store::StoreState::Complete;
  s.error_message = "";
  s.counters = {.bytes_fetched_demand = UINT64_MAX,
                .bytes_fetched_background = UINT64_MAX - 1,
                .bytes_fetched_prefetch = UINT64_MAX - 2,
                .prefetch_bytes_read = UINT64_MAX - 2,
                .reads_local = UINT64_MAX / 2,
                .reads_waited = UINT64_MAX / 2 + 1,
                .wait_ns = UINT64_MAX - 3,
                .bytes_seeded = UINT64_MAX - 4,
                .reads_failed = UINT64_MAX - 5};
  check_store_slot("store-slot-max.bin", s);
}

// --- files written by the imgstream binary (before the shared codec) ---
//
// One run of each command over a 256 KiB image (16 KiB of data in every third 4 KiB
// block, its SHA-256 below), kept zstd-compressed (they are mostly zeros):
//   imgstream pack img -o v1.pack --chunk-size 16K --level 3
//   imgstream stream img --store st --region-size 4K --no-background --trace t.trace
//     --run 'qemu-io -r -f raw "$uri" -c "read 0 64k" -c "read 128k 8k"'
//   imgstream profile merge t.trace t.trace -o p.profile --region-size 4K
//   imgstream serve img2 --track trk
//     --run 'qemu-io -f raw "$uri" -c "write -P 7 8k 4k" -c "write -P 9 200k 4k"'
// (binary-store-meta.zst is st/meta, binary-track.zst is trk). Each decodes, and what
// decodes encodes to the same bytes.

TEST(FormatGolden, BinaryStoreMeta) {
  if (write_mode()) GTEST_SKIP() << "written by the binary, not here";
  const Bytes meta = binary_file("binary-store-meta.zst");
  auto h = store::decode_header(meta);
  ASSERT_TRUE(h) << h.error().message;
  EXPECT_EQ(h->image_size, 256u << 10);
  EXPECT_EQ(h->region_size, 4096u);
  EXPECT_EQ(h->source_uri, "img");
  EXPECT_EQ(h->fingerprint_kind, store::FingerprintKind::Sampled);
  EXPECT_EQ(Bytes(meta.begin(), meta.begin() + 4096), store::encode_header(*h));
  ASSERT_TRUE(store::check_meta_size(*h, meta.size()));
  int valid = 0;
  uint64_t present = 0;
  for (int i = 0; i < 2; ++i) {
    const auto bytes = std::span(meta).subspan(h->slot_offset(i), h->slot_bytes());
    auto s = store::decode_slot(*h, bytes);
    if (!s) continue;
    ++valid;
    EXPECT_EQ(store::encode_slot(*h, *s), Bytes(bytes.begin(), bytes.end()));
    present = std::max(present, s->count_present());
  }
  EXPECT_GE(valid, 1);
  EXPECT_EQ(present, 18u);  // 64 KiB and 8 KiB read, in regions of 4 KiB
}

}  // namespace
}  // namespace imgstream
