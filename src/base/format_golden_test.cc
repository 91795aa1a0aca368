// Golden files of every framed format (docs/*-format.md): bytes written by the encoders
// as they were before the formats shared one codec (base/codec.h), kept in
// tests/fixtures/formats/. Each must decode to the values it was written from, and those
// values must encode to the very same bytes: old files still read, new files are the same.
//
// IMGSTREAM_WRITE_GOLDEN=1 ./unit_tests --gtest_filter='FormatGolden.*' writes the files
// anew instead. Only do that for a new variant, with the encoders of a released version:
// rewriting a file to match a changed encoder defeats the test.
#include <gtest/gtest.h>
#include <zstd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "base/env_memory.h"
#include "base/sha256.h"
#include "migrate/track_format.h"
#include "pack/pack_format.h"
#include "pack/pack_reader.h"
#include "profile/profile.h"
#include "profile/trace.h"
#include "store/store_format.h"

namespace imgstream {
namespace {

using Bytes = std::vector<std::byte>;

std::string fixture_path(const std::string& name) {
  return std::string(IMGSTREAM_SOURCE_DIR) + "/tests/fixtures/formats/" + name;
}

bool write_mode() {
  const char* w = std::getenv("IMGSTREAM_WRITE_GOLDEN");
  return w != nullptr && std::string(w) == "1";
}

// The golden file `name`. In write mode it is first written from `encoded`.
Bytes golden(const std::string& name, const Bytes& encoded) {
  const std::string path = fixture_path(name);
  if (write_mode()) {
    std::FILE* f = std::fopen(path.c_str(), "wb");
    EXPECT_NE(f, nullptr) << path;
    if (f == nullptr) return {};
    EXPECT_EQ(std::fwrite(encoded.data(), 1, encoded.size(), f), encoded.size());
    std::fclose(f);
  }
  Bytes b;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  EXPECT_NE(f, nullptr) << "missing golden file " << path;
  if (f == nullptr) return b;
  std::byte buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof buf, f)) > 0;) b.insert(b.end(), buf, buf + n);
  std::fclose(f);
  return b;
}

// Arbitrary but fixed bytes: a digest or a string that is not all zeros.
Digest digest(uint8_t seed) {
  Digest d;
  for (size_t i = 0; i < d.size(); ++i) d[i] = std::byte(uint8_t(seed + 37 * i));
  return d;
}

std::string text(size_t n, char first) {
  std::string s(n, ' ');
  for (size_t i = 0; i < n; ++i) s[i] = char(first + i % 26);
  return s;
}

Bytes cat(std::initializer_list<Bytes> parts) {
  Bytes b;
  for (const Bytes& p : parts) b.insert(b.end(), p.begin(), p.end());
  return b;
}

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

// --- tracking file (docs/track-format.md) ---

void check_track_header(const std::string& name, const migrate::TrackHeader& h) {
  SCOPED_TRACE(name);
  const Bytes file = golden(name, migrate::encode_track_header(h));
  EXPECT_EQ(migrate::encode_track_header(h), file);
  auto d = migrate::decode_track_header(file);
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_EQ(d->image_size, h.image_size);
  EXPECT_EQ(d->region_size, h.region_size);
  EXPECT_EQ(d->extent_regions, h.extent_regions);
  EXPECT_EQ(d->al_extents, h.al_extents);
  EXPECT_EQ(migrate::encode_track_header(*d), file);
}

void check_al(const std::string& name, const migrate::TrackHeader& h,
              const migrate::AlTransaction& t) {
  SCOPED_TRACE(name);
  const Bytes file = golden(name, migrate::encode_al(h, t));
  EXPECT_EQ(migrate::encode_al(h, t), file);
  auto d = migrate::decode_al(h, file);
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_EQ(d->seq, t.seq);
  EXPECT_EQ(d->extents, t.extents);
  EXPECT_EQ(migrate::encode_al(h, *d), file);
}

TEST(FormatGolden, TrackFile) {
  const migrate::TrackHeader typical{
      .image_size = 10ull << 30, .region_size = 64 << 10, .extent_regions = 64, .al_extents = 61};
  check_track_header("track-header-typical.bin", typical);
  const migrate::TrackHeader max{.image_size = (1ull << 32) * (64 << 20) - 1,
                                 .region_size = 64u << 20,
                                 .extent_regions = 1u << 20,
                                 .al_extents = migrate::kAlExtentsMax};
  check_track_header("track-header-max.bin", max);

  check_al("track-al-empty.bin", typical, {.seq = 1, .extents = {}});
  check_al("track-al-typical.bin", typical, {.seq = 42, .extents = {0, 7, 2559, 3, 100}});
  migrate::AlTransaction full{.seq = UINT64_MAX};
  for (uint64_t i = 0; i < migrate::kAlExtentsMax; ++i)
    full.extents.push_back(max.extents() - 1 - i * 7);
  check_al("track-al-full.bin", max, full);
}

// --- pack (docs/pack-format.md) ---

void expect_same(const pack::PackHeader& a, const pack::PackHeader& b) {
  EXPECT_EQ(a.flags, b.flags);
  EXPECT_EQ(a.image_size, b.image_size);
  EXPECT_EQ(a.chunk_size, b.chunk_size);
  EXPECT_EQ(a.level, b.level);
  EXPECT_EQ(a.index_offset, b.index_offset);
  EXPECT_EQ(a.index_length, b.index_length);
  EXPECT_EQ(a.boot_begin, b.boot_begin);
  EXPECT_EQ(a.boot_end, b.boot_end);
  EXPECT_EQ(a.boot_chunks, b.boot_chunks);
  EXPECT_EQ(a.identity, b.identity);
  EXPECT_EQ(a.index_hash, b.index_hash);
  EXPECT_EQ(a.base_identity, b.base_identity);
  EXPECT_EQ(a.base_hint, b.base_hint);
}

void check_pack_header(const std::string& name, const pack::PackHeader& h) {
  SCOPED_TRACE(name);
  const Bytes file = golden(name, pack::encode_header(h));
  EXPECT_EQ(pack::encode_header(h), file);
  auto d = pack::decode_header(file);
  ASSERT_TRUE(d) << d.error().message;
  expect_same(*d, h);
  EXPECT_EQ(pack::encode_header(*d), file);
}

Bytes unzstd(const Bytes& z, size_t raw_bytes) {
  Bytes raw(raw_bytes);
  const size_t n = ZSTD_decompress(raw.data(), raw.size(), z.data(), z.size());
  EXPECT_FALSE(ZSTD_isError(n));
  EXPECT_EQ(n, raw_bytes);
  return raw;
}

// A delta pack of 5 chunks of 4 KiB, the last one short: one of each kind.
TEST(FormatGolden, PackWithIndex) {
  using pack::ChunkKind;
  const std::vector<pack::IndexEntry> entries = {
      {.hash = {}, .offset = 0, .length = 0, .kind = ChunkKind::Zero},
      {.hash = digest(10), .offset = 4096, .length = 100, .kind = ChunkKind::Zstd},
      {.hash = digest(11), .offset = 4196, .length = 4096, .kind = ChunkKind::Raw},
      {.hash = digest(12), .offset = 0, .length = 0, .kind = ChunkKind::Base},
      {.hash = digest(13), .offset = 8292, .length = 100, .kind = ChunkKind::Raw},
  };
  pack::PackHeader h;
  h.flags = pack::kFlagHasBase;
  h.image_size = 4 * 4096 + 100;
  h.chunk_size = 4096;
  h.level = 19;
  h.index_offset = 8392;
  h.boot_end = 4196;
  h.boot_chunks = 1;
  h.identity = pack::identity_of(h.image_size, h.chunk_size, entries);
  h.base_identity = digest(99);
  h.base_hint = "../v1/base.pack";
  // The stored index is zstd's: another zstd may compress the entries to other bytes, so
  // the header is made for the golden index, and the entries are compared decompressed.
  const Bytes index = golden("pack-delta-index.zst", pack::encode_index(entries));
  h.index_length = index.size();
  h.index_hash = sha256(index);
  check_pack_header("pack-delta-header.bin", h);
  EXPECT_EQ(unzstd(pack::encode_index(entries), h.index_raw_bytes()),
            unzstd(index, h.index_raw_bytes()));
  auto ix = pack::decode_index(h, index);
  ASSERT_TRUE(ix) << ix.error().message;
  ASSERT_EQ(ix->size(), entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    const pack::IndexEntry e = (*ix)[i];
    EXPECT_EQ(e.hash, entries[i].hash) << i;
    EXPECT_EQ(e.offset, entries[i].offset) << i;
    EXPECT_EQ(e.length, entries[i].length) << i;
    EXPECT_EQ(e.kind, entries[i].kind) << i;
  }
}

TEST(FormatGolden, PackHeader) {
  pack::PackHeader h;  // a pack without a base or a boot set
  h.image_size = 512ull << 20;
  h.level = 3;
  h.index_offset = 300ull << 20;
  h.index_length = 106504;
  h.identity = digest(1);
  h.index_hash = digest(2);
  check_pack_header("pack-header-plain.bin", h);

  h.flags = pack::kFlagHasBase;  // the largest pack: 2^24 chunks of 16 MiB
  h.chunk_size = pack::kChunkBytesMax;
  h.image_size = pack::kChunksMax * pack::kChunkBytesMax;
  h.level = 22;
  h.index_offset = UINT64_MAX / 2;
  h.index_length = ZSTD_compressBound(h.index_raw_bytes());
  h.boot_end = h.index_offset;
  h.boot_chunks = h.chunk_count();
  h.base_identity = digest(3);
  h.base_hint = "https://cdn.example.com/" + text(pack::kBaseHintBytesMax - 24, 'p');
  check_pack_header("pack-header-max.bin", h);
}

// --- trace (docs/trace-format.md) ---

void check_trace(const std::string& name, const profile::TraceHeader& h,
                 const std::vector<std::vector<profile::TraceRecord>>& blocks) {
  SCOPED_TRACE(name);
  Bytes encoded = profile::encode_trace_header(h);
  std::vector<profile::TraceRecord> all;
  for (const auto& b : blocks) {
    encoded = cat({encoded, profile::encode_trace_block(b)});
    all.insert(all.end(), b.begin(), b.end());
  }
  const Bytes file = golden(name, encoded);
  EXPECT_EQ(encoded, file);
  auto d = profile::parse_trace(file, name);
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_FALSE(d->torn_tail);
  EXPECT_EQ(d->header.image_size, h.image_size);
  EXPECT_EQ(d->header.region_size, h.region_size);
  EXPECT_EQ(d->header.flags, h.flags);
  EXPECT_EQ(d->header.start_time_ns, h.start_time_ns);
  EXPECT_EQ(d->records, all);
  // Re-encoded from what was decoded, in the blocks the file has.
  Bytes again = profile::encode_trace_header(d->header);
  size_t at = 0;
  for (const auto& b : blocks) {
    again = cat({again, profile::encode_trace_block(std::span(d->records).subspan(at, b.size()))});
    at += b.size();
  }
  EXPECT_EQ(again, file);
}

TEST(FormatGolden, Trace) {
  using profile::TraceRecord;
  const profile::TraceHeader serve{.image_size = 1ull << 30, .start_time_ns = 1764460800123456789};
  check_trace("trace-empty.bin", serve, {});
  const profile::TraceHeader stream{.image_size = 1ull << 30,
                                    .region_size = 1u << 20,
                                    .flags = profile::kTraceFlagStreaming,
                                    .start_time_ns = 1764460800000000000};
  check_trace("trace-typical.bin", stream,
              {{{1000, 0, 4096, profile::kRecordLocal}, {25'000, 1 << 20, 65536, 0}},
               {{30'000, 512, 512, 0}},
               {{31'000, 8 << 20, 131072, profile::kRecordLocal},
                {31'500, 9 << 20, 4096, 0},
                {40'000, 3 << 20, 4096, profile::kRecordLocal}}});
  const profile::TraceHeader max{.image_size = UINT64_MAX,
                                 .region_size = 1u << 30,
                                 .flags = profile::kTraceFlagStreaming,
                                 .start_time_ns = UINT64_MAX};
  std::vector<TraceRecord> many;
  for (uint64_t i = 0; i < 100; ++i)
    many.push_back({UINT64_MAX - i, UINT64_MAX - UINT32_MAX - i, UINT32_MAX, uint32_t(i & 1)});
  check_trace("trace-max.bin", max, {many, {{0, 0, 1, 0}}});
}

// A trace whose writer died inside its last block: the blocks before it still read.
TEST(FormatGolden, TraceTornTail) {
  if (write_mode()) return;  // trace-typical.bin is being written
  const Bytes whole = golden("trace-typical.bin", {});
  const size_t last_block = 16 + 3 * 24;
  ASSERT_GT(whole.size(), last_block);
  const Bytes torn(whole.begin(), whole.end() - 10);
  auto d = profile::parse_trace(torn, "torn");
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_TRUE(d->torn_tail);
  EXPECT_EQ(d->records.size(), 3u);
  auto full = profile::parse_trace(whole, "whole");
  ASSERT_TRUE(full);
  EXPECT_TRUE(std::equal(d->records.begin(), d->records.end(), full->records.begin()));
}

// --- profile (docs/profile-format.md) ---

void check_profile(const std::string& name, profile::Profile p) {
  SCOPED_TRACE(name);
  p.runs = profile::make_runs(p.regions);
  const Bytes file = golden(name, profile::encode_profile(p));
  EXPECT_EQ(profile::encode_profile(p), file);
  auto d = profile::parse_profile(file, name);
  ASSERT_TRUE(d) << d.error().message;
  EXPECT_EQ(*d, p);
  EXPECT_EQ(profile::encode_profile(*d), file);
}

TEST(FormatGolden, Profile) {
  profile::Profile p{.image_size = 1ull << 30, .region_size = 1u << 20, .traces = 1};
  check_profile("profile-empty.bin", p);

  p.traces = 4;
  p.regions = {{0, 1.0, 0.5, 0},
               {1, 0.75, 0.5, 1.5},
               {2, 0.25, 2.25, 2},
               {700, 0.5, 12.125, 3},
               {5, 1.0, 100.0, 4.25}};
  check_profile("profile-typical.bin", p);

  p.image_size = UINT64_MAX;
  p.region_size = 4096;
  p.traces = uint32_t(profile::kProfileTracesMax);
  p.regions.clear();
  for (uint64_t i = 0; i < 64; ++i)
    p.regions.push_back({(UINT64_MAX / 4096) - i, double(65536 - i) / 65536.0,
                         1e12 + double(i) * 0.25, double(i) * 1e9});
  check_profile("profile-max.bin", p);
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

constexpr char kBinaryImageSha256[] =
    "522966427a120dc9b2d667ab320916d01e2213a92a18d8e765267c44c0eed7f2";

Bytes binary_file(const std::string& name) {
  const Bytes z = golden(name, {});
  const unsigned long long n = ZSTD_getFrameContentSize(z.data(), z.size());
  EXPECT_LT(n, 1u << 20) << name;
  if (n >= (1u << 20)) return {};
  return unzstd(z, n);
}

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

TEST(FormatGolden, BinaryTrackFile) {
  if (write_mode()) GTEST_SKIP() << "written by the binary, not here";
  const Bytes file = binary_file("binary-track.zst");
  auto h = migrate::decode_track_header(file);
  ASSERT_TRUE(h) << h.error().message;
  EXPECT_EQ(h->image_size, 256u << 10);
  ASSERT_EQ(file.size(), h->file_bytes());
  EXPECT_EQ(Bytes(file.begin(), file.begin() + 4096), migrate::encode_track_header(*h));
  // A clean stop: the bitmap holds the two regions written (8 KiB and 200 KiB in 4 KiB).
  EXPECT_EQ(file[h->bitmap_offset()], std::byte{0x04});
  EXPECT_EQ(file[h->bitmap_offset() + 6], std::byte{0x04});
  int valid = 0;
  for (uint32_t i = 0; i < migrate::kAlSlots; ++i) {
    const auto bytes =
        std::span(file).subspan(h->al_offset() + i * migrate::kAlSlotBytes, migrate::kAlSlotBytes);
    auto t = migrate::decode_al(*h, bytes);
    if (!t) continue;
    ++valid;
    EXPECT_EQ(migrate::encode_al(*h, *t), Bytes(bytes.begin(), bytes.end()));
  }
  EXPECT_GE(valid, 1);
}

TEST(FormatGolden, BinaryPack) {
  if (write_mode()) GTEST_SKIP() << "written by the binary, not here";
  const Bytes file = binary_file("binary-pack.zst");
  auto h = pack::decode_header(file);
  ASSERT_TRUE(h) << h.error().message;
  EXPECT_EQ(Bytes(file.begin(), file.begin() + 4096), pack::encode_header(*h));
  MemEnv env;
  {
    auto f = env.open("/v1.pack", OpenMode::CreateOrOpen);
    ASSERT_TRUE(f);
    ASSERT_TRUE(write_all_at(**f, 0, file));
  }
  auto p = pack::Pack::open(env, "/v1.pack");
  ASSERT_TRUE(p) << p.error().message;
  Bytes image(256u << 10);
  ASSERT_TRUE((*p)->read(0, image));
  EXPECT_EQ(to_hex(sha256(image)), kBinaryImageSha256);
}

TEST(FormatGolden, BinaryTraceAndProfile) {
  if (write_mode()) GTEST_SKIP() << "written by the binary, not here";
  const Bytes trace = binary_file("binary-trace.zst");
  auto t = profile::parse_trace(trace, "t.trace");
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_FALSE(t->torn_tail);
  ASSERT_EQ(t->records.size(), 2u);
  EXPECT_EQ(t->records[0].offset, 0u);
  EXPECT_EQ(t->records[0].length, 64u << 10);
  EXPECT_EQ(t->records[1].offset, 128u << 10);
  // Re-encoded in the blocks the file has (their record counts at 4 in each block).
  Bytes again = profile::encode_trace_header(t->header);
  for (size_t at = 64, used = 0; at < trace.size();) {
    const uint32_t n = uint32_t(trace[at + 4]) | uint32_t(trace[at + 5]) << 8;
    again = cat({again, profile::encode_trace_block(std::span(t->records).subspan(used, n))});
    used += n;
    at += 16 + 24 * size_t{n};
  }
  EXPECT_EQ(again, trace);

  const Bytes file = binary_file("binary-profile.zst");
  auto p = profile::parse_profile(file, "p.profile");
  ASSERT_TRUE(p) << p.error().message;
  EXPECT_EQ(p->traces, 2u);
  EXPECT_EQ(p->regions.size(), 18u);
  EXPECT_EQ(p->runs.size(), 2u);
  EXPECT_EQ(profile::encode_profile(*p), file);
}

}  // namespace
}  // namespace imgstream
