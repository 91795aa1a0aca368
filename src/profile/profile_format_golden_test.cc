// Golden files of the trace and profile formats (docs/*-format.md; see base/golden_testing.h).

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "base/golden_testing.h"
#include "profile/profile.h"
#include "profile/trace.h"

namespace imgstream {
namespace {

using namespace golden_testing;

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
