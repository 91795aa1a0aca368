// Golden files of the tracking file (docs/*-format.md; see base/golden_testing.h).

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "base/golden_testing.h"
#include "migrate/track_format.h"

namespace imgstream {
namespace {

using namespace golden_testing;

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

}  // namespace
}  // namespace imgstream
