#include "profile/profile.h"

#include <gtest/gtest.h>

#include <bit>

#include "base/crc32c.h"
#include "base/endian.h"
#include "base/env_memory.h"

namespace imgstream::profile {
namespace {

constexpr uint32_t kRs = 64 * 1024;
constexpr uint64_t kImage = 100 * uint64_t{kRs} + 1000;  // 101 regions, the last short
constexpr uint64_t kMs = 1'000'000;

Trace make(std::vector<TraceRecord> rs, uint32_t region_size = kRs, uint64_t image = kImage) {
  Trace t;
  t.header.image_size = image;
  t.header.region_size = region_size;
  t.records = std::move(rs);
  return t;
}

TraceRecord read(uint64_t ms, uint64_t region, uint32_t length = 4096, uint64_t within = 0) {
  return TraceRecord{ms * kMs, region * kRs + within, length, 0};
}

std::vector<uint64_t> ids(const Profile& p) {
  std::vector<uint64_t> v;
  for (const auto& r : p.regions) v.push_back(r.region);
  return v;
}

TEST(ProfileMerge, FrequencyCutOrderAndRuns) {
  // Region 7 in all four traces, 8 in three, 9 in two, 3 in one, 50 in all.
  std::vector<Trace> ts = {
      make({read(10, 7), read(20, 8), read(30, 9), read(40, 50)}),
      make({read(12, 7), read(22, 8), read(32, 9), read(42, 50)}),
      make({read(14, 7), read(24, 8), read(44, 50), read(1, 3)}),  // out of time order
      make({read(16, 7), read(46, 50)}),
  };
  auto p = merge(ts, MergeOptions{.min_frequency = 0.5});
  ASSERT_TRUE(p) << p.error().message;
  EXPECT_EQ(p->traces, 4u);
  EXPECT_EQ(p->region_size, kRs);
  EXPECT_EQ(p->image_size, kImage);
  EXPECT_EQ(ids(*p), (std::vector<uint64_t>{7, 8, 9, 50}));
  EXPECT_DOUBLE_EQ(p->regions[0].frequency, 1.0);
  EXPECT_DOUBLE_EQ(p->regions[0].mean_first_read_ms, 13.0);
  EXPECT_DOUBLE_EQ(p->regions[0].mean_rank, 0.25);  // rank 1 in trace 3 (region 3 first)
  EXPECT_DOUBLE_EQ(p->regions[1].frequency, 0.75);
  EXPECT_DOUBLE_EQ(p->regions[2].frequency, 0.5);
  EXPECT_DOUBLE_EQ(p->regions[2].mean_first_read_ms, 31.0);
  EXPECT_EQ(p->runs, (std::vector<ProfileRun>{{7, 3}, {50, 1}}));
  EXPECT_EQ(p->boot_set_bytes(), 4u * kRs);

  // 0.5 < 0.75: region 9 (read by half) goes; region 3 (a quarter) stays out.
  p = merge(ts, MergeOptions{.min_frequency = 0.75});
  ASSERT_TRUE(p);
  EXPECT_EQ(ids(*p), (std::vector<uint64_t>{7, 8, 50}));
  // 0 keeps every region read at all; region 3 comes first (1 ms).
  p = merge(ts, MergeOptions{.min_frequency = 0});
  ASSERT_TRUE(p);
  EXPECT_EQ(ids(*p), (std::vector<uint64_t>{3, 7, 8, 9, 50}));
  EXPECT_DOUBLE_EQ(p->regions[0].frequency, 0.25);
}

TEST(ProfileMerge, RunsFollowFetchOrderNotDiskOrder) {
  // Read 5 then 4 then 6: 5 alone, then 4 (not 5 + 1), then... 6 is not 4 + 1 either.
  auto p = merge(std::vector<Trace>{make({read(1, 5), read(2, 4), read(3, 6), read(4, 7)})}, {});
  ASSERT_TRUE(p);
  EXPECT_EQ(p->runs, (std::vector<ProfileRun>{{5, 1}, {4, 1}, {6, 2}}));
}

TEST(ProfileMerge, ReadSpanningRegionsTouchesEach) {
  // 3 * kRs bytes starting inside region 10 cover 10, 11, 12 and 13.
  auto p = merge(std::vector<Trace>{make({read(5, 10, 3 * kRs, 100)})}, {});
  ASSERT_TRUE(p);
  EXPECT_EQ(ids(*p), (std::vector<uint64_t>{10, 11, 12, 13}));
  EXPECT_EQ(p->runs, (std::vector<ProfileRun>{{10, 4}}));
  // Same time: ordered by region; ranks in region order.
  EXPECT_DOUBLE_EQ(p->regions[3].mean_rank, 3.0);
  // The last region of the image is short.
  p = merge(std::vector<Trace>{make({read(1, 100, 1000)})}, {});
  ASSERT_TRUE(p);
  EXPECT_EQ(p->boot_set_bytes(), 1000u);
}

TEST(ProfileMerge, ServeTracesUseOneMiB) {
  const uint64_t image = uint64_t{8} << 20;
  auto p = merge(std::vector<Trace>{make({TraceRecord{0, (3u << 20) - 1, 2, 0}}, 0, image)}, {});
  ASSERT_TRUE(p) << p.error().message;
  EXPECT_EQ(p->region_size, kProfileDefaultRegionSize);
  EXPECT_EQ(ids(*p), (std::vector<uint64_t>{2, 3}));
  // An explicit region size wins.
  p = merge(std::vector<Trace>{make({TraceRecord{0, (3u << 20) - 1, 2, 0}}, 0, image)},
            MergeOptions{.region_size = 4096});
  ASSERT_TRUE(p);
  EXPECT_EQ(p->region_size, 4096u);
  EXPECT_EQ(ids(*p), (std::vector<uint64_t>{767, 768}));
  // A serve trace merges with a stream trace at the stream's region size.
  p = merge(std::vector<Trace>{make({read(1, 1)}, 0), make({read(1, 1)})}, {});
  ASSERT_TRUE(p);
  EXPECT_EQ(p->region_size, kRs);
}

TEST(ProfileMerge, BadInputs) {
  EXPECT_FALSE(merge(std::span<const Trace>(), {}));
  auto r = merge(std::vector<Trace>{make({}), make({}, kRs, kImage + 1)}, {});
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("trace 2"), std::string::npos) << r.error().message;
  EXPECT_FALSE(merge(std::vector<Trace>{make({}), make({}, 2 * kRs)}, {}));
  EXPECT_FALSE(merge(std::vector<Trace>{make({})}, MergeOptions{.min_frequency = 1.5}));
  EXPECT_FALSE(merge(std::vector<Trace>{make({})}, MergeOptions{.region_size = 5000}));
  EXPECT_FALSE(merge(std::vector<Trace>{make({TraceRecord{0, kImage - 10, 11, 0}})}, {}));
  EXPECT_FALSE(merge(std::vector<Trace>{make({}, kRs, 0)}, {}));
  // No reads at all is a valid, empty profile.
  auto e = merge(std::vector<Trace>{make({})}, {});
  ASSERT_TRUE(e);
  EXPECT_TRUE(e->regions.empty());
  EXPECT_EQ(e->boot_set_bytes(), 0u);
}

Profile sample() {
  std::vector<Trace> ts = {make({read(10, 7), read(20, 8), read(30, 40, 2 * kRs)}),
                           make({read(11, 7), read(25, 9), read(3, 100, 10)}),
                           make({read(12, 7), read(21, 8)})};
  return merge(ts, MergeOptions{.min_frequency = 0}).value();
}

TEST(ProfileFormat, RoundTrip) {
  const Profile p = sample();
  const auto b = encode_profile(p);
  EXPECT_EQ(b.size(), kProfileHeaderBytes + p.regions.size() * kProfileRecordBytes + 4);
  auto q = parse_profile(b, "x");
  ASSERT_TRUE(q) << q.error().message;
  EXPECT_EQ(*q, p);
  EXPECT_EQ(encode_profile(*q), b);

  MemEnv env;
  ASSERT_TRUE(env.mkdir("/d"));
  ASSERT_TRUE(write_profile(env, "/d/boot.profile", p));
  EXPECT_FALSE(env.exists("/d/boot.profile.tmp").value());
  auto r = read_profile(env, "/d/boot.profile");
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(*r, p);
  auto missing = read_profile(env, "/d/none");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("/d/none"), std::string::npos);
}

void expect_error(std::span<const std::byte> b, const std::string& part) {
  auto r = parse_profile(b, "boot.profile");
  ASSERT_FALSE(r) << "expected: " << part;
  EXPECT_NE(r.error().message.find("boot.profile"), std::string::npos) << r.error().message;
  EXPECT_NE(r.error().message.find(part), std::string::npos) << r.error().message;
}

TEST(ProfileFormat, CorruptAndTruncated) {
  const auto good = encode_profile(sample());
  for (size_t n : {size_t{0}, size_t{10}, kProfileHeaderBytes - 1})
    expect_error(std::span(good).first(n), "shorter than its header");
  for (size_t n : {kProfileHeaderBytes, good.size() - 1})
    expect_error(std::span(good).first(n), "truncated");
  auto b = good;
  b.push_back(std::byte{0});
  expect_error(b, "trailing bytes");
  b = good;
  b[0] = std::byte{'X'};
  expect_error(b, "bad magic");
  b = good;
  b[20] ^= std::byte{1};
  expect_error(b, "header CRC");
  b = good;
  b[kProfileHeaderBytes + 3] ^= std::byte{1};
  expect_error(b, "records CRC");
  b = good;
  b[b.size() - 1] ^= std::byte{1};
  expect_error(b, "records CRC");

  // Well-formed CRCs around bad contents.
  auto recrc = [](std::vector<std::byte>& v) {
    le::put32(v.data() + 60, crc32c(std::span(v).first(60)));
    const size_t n = v.size() - kProfileHeaderBytes - 4;
    le::put32(v.data() + v.size() - 4, crc32c(std::span(v).subspan(kProfileHeaderBytes, n)));
  };
  b = good;
  le::put64(b.data() + kProfileHeaderBytes, 101);  // the image has regions 0..100
  recrc(b);
  expect_error(b, "region outside the image");
  b = good;
  le::put32(b.data() + kProfileHeaderBytes + 8, 4);  // more than 3 traces
  recrc(b);
  expect_error(b, "bad trace count");
  b = good;
  le::put64(b.data() + kProfileHeaderBytes + 16, std::bit_cast<uint64_t>(1e9));
  recrc(b);
  expect_error(b, "out of order");
  b = good;
  le::put32(b.data() + 24, 3000);
  recrc(b);
  expect_error(b, "bad region size");
  b = good;
  le::put64(b.data() + 32, 102);
  recrc(b);
  expect_error(b, "more regions than the image has");
}

}  // namespace
}  // namespace imgstream::profile
