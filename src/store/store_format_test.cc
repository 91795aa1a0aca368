#include "store/store_format.h"

#include <gtest/gtest.h>

#include "base/crc32c.h"
#include "base/endian.h"

namespace imgstream::store {
namespace {

StoreHeader header() {
  StoreHeader h;
  h.image_size = 100ull << 20;
  h.region_size = 1u << 20;
  h.source_uri = "nbd+unix:///?socket=/tmp/s";
  return h;
}

// Flag bit 1 says how the fingerprint was taken; a store made before it existed (bit
// clear) was fingerprinted by its ends, and is checked that way on resume.
TEST(StoreFormat, FingerprintKindRoundTripsAndOlderStoresReadAsEnds) {
  for (auto kind : {FingerprintKind::Ends, FingerprintKind::Sampled}) {
    StoreHeader h = header();
    h.fingerprint_kind = kind;
    auto back = decode_header(encode_header(h));
    ASSERT_TRUE(back) << back.error().message;
    EXPECT_EQ(back->fingerprint_kind, kind);
  }
  auto bytes = encode_header(header());
  EXPECT_EQ(le::get32(bytes.data() + 28), 2u) << "a new store: Sampled";
  le::put32(bytes.data() + 28, 0);  // as written before 2026-11-30
  le::put32(bytes.data() + 4092, crc32c(std::span(bytes).first(4092)));
  auto old = decode_header(bytes);
  ASSERT_TRUE(old) << old.error().message;
  EXPECT_EQ(old->fingerprint_kind, FingerprintKind::Ends);
  le::put32(bytes.data() + 28, 4);  // unknown flag
  le::put32(bytes.data() + 4092, crc32c(std::span(bytes).first(4092)));
  EXPECT_FALSE(decode_header(bytes));
}

TEST(StoreFormat, SlotRoundTripsEveryCounter) {
  const StoreHeader h = header();
  Slot s;
  s.generation = 7;
  s.state = StoreState::Paused;
  s.error_message = "none";
  s.bitmap.assign(h.bitmap_bytes(), 0);
  s.bitmap[0] = 0x0f;
  s.counters = Counters{.bytes_fetched_demand = 1,
                        .bytes_fetched_background = 2,
                        .bytes_fetched_prefetch = 30,
                        .prefetch_bytes_read = 20,
                        .reads_local = 5,
                        .reads_waited = 6,
                        .wait_ns = 7,
                        .bytes_seeded = 8};
  auto bytes = encode_slot(h, s);
  ASSERT_EQ(bytes.size(), h.slot_bytes());
  auto d = decode_slot(h, bytes);
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_EQ(d->counters, s.counters);
  EXPECT_EQ(d->counters.reads_total(), 11u);
  EXPECT_EQ(d->counters.bytes_fetched(), 33u);
  EXPECT_EQ(d->state, StoreState::Paused);
  EXPECT_EQ(d->bitmap, s.bitmap);
  EXPECT_EQ(d->error_message, "none");
  // The byte table of docs/store-format.md.
  EXPECT_EQ(le::get64(bytes.data() + 320), 30u);
  EXPECT_EQ(le::get64(bytes.data() + 328), 20u);
  EXPECT_EQ(le::get64(bytes.data() + 336), 5u);
  EXPECT_EQ(le::get64(bytes.data() + 344), 6u);
  EXPECT_EQ(le::get64(bytes.data() + 352), 7u);
  EXPECT_EQ(le::get64(bytes.data() + 360), 8u);
  for (size_t i = 368; i < 508; ++i) EXPECT_EQ(bytes[i], std::byte{0}) << i;
}

TEST(StoreFormat, SlotWithMoreReadThanPrefetchedIsRefused) {
  const StoreHeader h = header();
  Slot s;
  s.generation = 1;
  s.bitmap.assign(h.bitmap_bytes(), 0);
  s.counters.bytes_fetched_prefetch = 10;
  s.counters.prefetch_bytes_read = 11;
  auto d = decode_slot(h, encode_slot(h, s));  // encode does not judge; decode does
  ASSERT_FALSE(d);
  EXPECT_NE(d.error().message.find("prefetched"), std::string::npos) << d.error().message;
}

TEST(StoreFormat, DamagedSlotIsRefused) {
  const StoreHeader h = header();
  Slot s;
  s.generation = 3;
  s.bitmap.assign(h.bitmap_bytes(), 0xff);
  s.bitmap.back() = 0x0f;  // 100 regions: 4 bits in the last byte
  auto bytes = encode_slot(h, s);
  ASSERT_TRUE(decode_slot(h, bytes));
  bytes[330] ^= std::byte{1};  // a counter: the header CRC catches it
  EXPECT_FALSE(decode_slot(h, bytes));
  bytes[330] ^= std::byte{1};
  bytes[512] ^= std::byte{1};  // the bitmap: its own CRC
  EXPECT_FALSE(decode_slot(h, bytes));
}

// A generation past the bound is corruption (the next commit would wrap it round to 0),
// refused by the decoder, never an assertion.
TEST(StoreFormat, SlotGenerationPastTheBoundIsRefused) {
  const StoreHeader h = header();
  Slot s;
  s.generation = kSlotGenerationMax;
  s.bitmap.assign(h.bitmap_bytes(), 0);
  EXPECT_TRUE(decode_slot(h, encode_slot(h, s)));
  auto bytes = encode_slot(h, s);
  le::put64(bytes.data() + 8, UINT64_MAX);
  le::put32(bytes.data() + 508, crc32c(std::span(bytes).first(508)));
  auto d = decode_slot(h, bytes);
  ASSERT_FALSE(d);
  EXPECT_NE(d.error().message.find("generation"), std::string::npos) << d.error().message;
}

// The meta file must hold the header and both slots of the geometry its header claims:
// checked before anything is allocated for them.
TEST(StoreFormat, MetaFileShorterThanItsGeometryIsRefused) {
  StoreHeader h = header();
  EXPECT_TRUE(check_meta_size(h, h.slot_offset(2)));
  h.region_size = kRegionBytesMin;
  h.image_size = kRegionsMax * kRegionBytesMin;  // 2^32 regions: 512 MiB slots
  auto r = check_meta_size(h, 12 * 1024);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("meta file is 12288 bytes, its header needs"), std::string::npos)
      << r.error().message;
}

}  // namespace
}  // namespace imgstream::store
