#include "migrate/dirty_tracker.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <set>

#include "base/env_fault.h"
#include "base/env_memory.h"
#include "migrate/dirty_tracking_device.h"
#include "nbd/testing.h"

namespace imgstream::migrate {
namespace {

constexpr uint32_t kRegion = 4096;
constexpr uint64_t kSize = 256 * kRegion;  // 1 MiB: 64 extents of 4 regions
const std::string kPath = "/track";

TrackOptions small() {
  TrackOptions o;
  o.region_size = kRegion;
  o.extent_bytes = 4 * kRegion;
  o.al_extents = 3;  // tiny: evictions all the time
  return o;
}

TEST(TrackFormat, HeaderAndAlRoundTripAndRejectDamage) {
  TrackHeader h{.image_size = kSize, .region_size = kRegion, .extent_regions = 4, .al_extents = 3};
  auto b = encode_track_header(h);
  auto d = decode_track_header(b);
  ASSERT_TRUE(d);
  EXPECT_EQ(d->al_offset(), h.al_offset());
  b[13] ^= std::byte{1};
  EXPECT_FALSE(decode_track_header(b));
  auto s = encode_al(h, AlTransaction{7, {1, 5, 63}});
  auto t = decode_al(h, s);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->seq, 7u);
  EXPECT_EQ(t->extents, (std::vector<uint64_t>{1, 5, 63}));
  s[30] ^= std::byte{1};
  EXPECT_FALSE(decode_al(h, s));
}

TEST(DirtyTracker, TracksWritesAcrossEvictionsAndReopen) {
  MemEnv env;
  {
    auto t = DirtyTracker::open(env, kPath, kSize, small());
    ASSERT_TRUE(t) << t.error().message;
    nbd::testing::MemoryDevice mem(kSize);
    DirtyTrackingDevice dev(mem, **t);
    std::vector<std::byte> data(100, std::byte{1});
    for (uint64_t r : {0, 5, 9, 17, 33, 34, 100, 255}) ASSERT_TRUE(dev.write(r * kRegion + 10, data, Durability::Buffered));
    ASSERT_TRUE(dev.write_zeroes(40 * kRegion, 2 * kRegion, ZeroFlags{}, Durability::Buffered));
    ASSERT_TRUE(dev.trim(60 * kRegion, kRegion, Durability::Buffered));
    const std::vector<uint64_t> want = {0, 5, 9, 17, 33, 34, 40, 41, 60, 100, 255};
    EXPECT_EQ((*t)->dirty_regions(), want);
    (*t)->clear(std::vector<uint64_t>{5, 9});
    EXPECT_EQ((*t)->dirty_count(), want.size() - 2);
    ASSERT_TRUE((*t)->close());
  }
  auto t = DirtyTracker::open(env, kPath, kSize, small());
  ASSERT_TRUE(t);
  EXPECT_EQ((*t)->dirty_regions(), (std::vector<uint64_t>{0, 17, 33, 34, 40, 41, 60, 100, 255}));
  // Another image size is refused.
  t->reset();
  auto u = DirtyTracker::open(env, kPath, 2 * kSize, small());
  ASSERT_FALSE(u);
  EXPECT_NE(u.error().message.find("is for an image of"), std::string::npos);
}

// Power loss at every I/O point of a random workload: after the crash, every region of a
// write that was acknowledged (begin_write returned and the write ran) is dirty.
uint64_t run_power_loss(uint64_t crash_at, std::set<uint64_t>& acked) {
  MemEnv mem;
  FaultEnv env(mem);
  acked.clear();
  {
    auto t = DirtyTracker::open(env, kPath, kSize, small());
    if (!t) return 0;
    // A clean start that is durable, then the crash point counts from here.
    env.set_crash_at(crash_at);
    nbd::testing::MemoryDevice dev_mem(kSize);
    DirtyTrackingDevice dev(dev_mem, **t);
    std::mt19937 rng(42);
    std::vector<std::byte> data(3 * kRegion, std::byte{7});
    for (int i = 0; i < 60; ++i) {
      const uint64_t r = rng() % 254, n = 1 + rng() % 2;
      if (!dev.write(r * kRegion + 1, std::span(data).first(n * kRegion - 2), Durability::Buffered)) break;
      for (uint64_t k = r; k < r + n; ++k) acked.insert(k);
      if (i == 30) (void)(*t)->flush();
    }
  }
  const uint64_t points = env.io_points();
  mem.drop_unsynced();
  env.restart();
  auto t = DirtyTracker::open(env, kPath, kSize, small());
  EXPECT_TRUE(t) << "k=" << crash_at << ": " << (t ? "" : t.error().message);
  if (!t) return points;
  for (uint64_t r : acked) EXPECT_TRUE((*t)->dirty(r)) << "k=" << crash_at << ": region " << r << " lost";
  return points;
}

TEST(DirtyTracker, PowerLossAtEveryIoPointLosesNoAcknowledgedWrite) {
  std::set<uint64_t> acked;
  const uint64_t points = run_power_loss(0, acked);
  ASSERT_GT(points, 40u);
  ASSERT_GT(acked.size(), 50u);
  for (uint64_t k = 1; k <= points + 1; ++k) {
    run_power_loss(k, acked);
    if (::testing::Test::HasFailure()) break;
  }
}

// Regions cleared for copies the target has not flushed stay named in the file until
// a flush sealed after the clear confirms them; a failed target makes them dirty again.
TEST(DirtyTracker, UnflushedRegionsStayNamedUntilTheTargetFlushed) {
  MemEnv env;
  auto t = DirtyTracker::open(env, kPath, kSize, small());
  ASSERT_TRUE(t);
  (*t)->mark({3, 4, 70, 200});
  (*t)->clear_unflushed(std::vector<uint64_t>{3, 4});
  const unsigned sealed = (*t)->seal();  // a target flush begins: it covers 3 and 4
  (*t)->clear_unflushed(std::vector<uint64_t>{70});
  EXPECT_EQ((*t)->dirty_regions(), std::vector<uint64_t>{200});
  EXPECT_EQ((*t)->unflushed_count(), 3u);
  (*t)->confirm_flushed(sealed);
  EXPECT_EQ((*t)->unflushed_count(), 1u);  // 70: cleared after the seal
  (*t)->restore_unflushed();                // the target failed before the next flush
  EXPECT_EQ((*t)->dirty_regions(), (std::vector<uint64_t>{70, 200}));
  EXPECT_EQ((*t)->unflushed_count(), 0u);

  // The file: 70 unflushed, 5 confirmed.
  (*t)->clear_unflushed(std::vector<uint64_t>{70});
  (*t)->mark({5});
  (*t)->clear_unflushed(std::vector<uint64_t>{5});
  (*t)->confirm_flushed((*t)->seal());
  EXPECT_EQ((*t)->unflushed_count(), 0u) << "70 was sealed with 5";
  (*t)->clear_unflushed(std::vector<uint64_t>{70});
  ASSERT_TRUE((*t)->flush());
  t->reset();  // as a crash of the server leaves it
  auto again = DirtyTracker::open(env, kPath, kSize, small());
  ASSERT_TRUE(again);
  EXPECT_EQ((*again)->dirty_regions(), (std::vector<uint64_t>{70, 200}));
}

TEST(DirtyTracker, TakenRegionsStayNamedUntilConfirmed) {
  MemEnv env;
  auto t = DirtyTracker::open(env, kPath, kSize, small());
  ASSERT_TRUE(t);
  nbd::testing::MemoryDevice mem(kSize);
  DirtyTrackingDevice dev(mem, **t);
  std::vector<std::byte> data(10, std::byte{1});
  for (uint64_t r : {3, 70, 71, 200}) ASSERT_TRUE(dev.write(r * kRegion, data, Durability::Buffered));
  EXPECT_EQ((*t)->take(0, 3), (std::vector<uint64_t>{3, 70, 71}));
  EXPECT_EQ((*t)->dirty_regions(), std::vector<uint64_t>{200});
  EXPECT_EQ((*t)->pending_count(), 3u);
  // A write to a taken region during the copy makes it dirty again.
  ASSERT_TRUE(dev.write(70 * kRegion, data, Durability::Buffered));
  ASSERT_TRUE((*t)->flush());
  {
    // What the file says now (as a crash would leave it): pending regions included.
    t->reset();
    auto again = DirtyTracker::open(env, kPath, kSize, small());
    ASSERT_TRUE(again);
    // (Whole extents of the activity log come back too: more, never less.)
    for (uint64_t r : {3, 70, 71, 200}) EXPECT_TRUE((*again)->dirty(r)) << r;
    const uint64_t n = (*again)->dirty_count();
    EXPECT_EQ((*again)->take(0, 100).size(), n);
    (*again)->release();  // the copier died: back to dirty
    EXPECT_EQ((*again)->dirty_count(), n);
    EXPECT_EQ((*again)->take(0, 100).size(), n);
    (*again)->confirm();
    EXPECT_EQ((*again)->dirty_count(), 0u);
    ASSERT_TRUE((*again)->close());
  }
  auto last = DirtyTracker::open(env, kPath, kSize, small());
  ASSERT_TRUE(last);
  EXPECT_EQ((*last)->dirty_count(), 0u);
}

// A segment of a full copy takes the changes inside it only: [from, end), across words.
TEST(DirtyTracker, TakeStopsAtTheEndOfTheRange) {
  MemEnv env;
  auto t = DirtyTracker::open(env, kPath, kSize, small());
  ASSERT_TRUE(t);
  nbd::testing::MemoryDevice mem(kSize);
  DirtyTrackingDevice dev(mem, **t);
  std::vector<std::byte> data(10, std::byte{1});
  for (uint64_t r : {1, 63, 64, 65, 127, 128, 130, 255})
    ASSERT_TRUE(dev.write(r * kRegion, data, Durability::Buffered));
  EXPECT_EQ((*t)->take(63, 100, 128), (std::vector<uint64_t>{63, 64, 65, 127}));
  EXPECT_EQ((*t)->take(0, 100, 64), std::vector<uint64_t>{1});
  EXPECT_EQ((*t)->take(129, 100, 131), std::vector<uint64_t>{130});
  EXPECT_EQ((*t)->dirty_regions(), (std::vector<uint64_t>{128, 255}));
  (*t)->confirm();
  (*t)->mark({5, 200});
  EXPECT_EQ((*t)->dirty_regions(), (std::vector<uint64_t>{5, 128, 200, 255}));
}

TEST(DirtyTracker, WritesToHotExtentsNeedNoSync) {
  MemEnv env;
  FaultEnv fenv(env);
  auto t = DirtyTracker::open(fenv, kPath, kSize, small());
  ASSERT_TRUE(t);
  nbd::testing::MemoryDevice mem(kSize);
  DirtyTrackingDevice dev(mem, **t);
  std::vector<std::byte> data(512, std::byte{3});
  ASSERT_TRUE(dev.write(0, data, Durability::Buffered));  // extent 0 enters the AL: I/O
  const uint64_t before = fenv.io_points();
  for (int i = 0; i < 100; ++i) ASSERT_TRUE(dev.write((i % 4) * kRegion, data, Durability::Buffered));
  EXPECT_EQ(fenv.io_points(), before) << "writes inside an active extent cost no tracking I/O";
  EXPECT_TRUE((*t)->try_begin_write(kRegion, 10));
  (*t)->end_write(kRegion, 10, false);
  EXPECT_FALSE((*t)->try_begin_write(100 * kRegion, 10));
}

// track show reads a file a server has open without changing a byte of it: the bitmap
// and the log's extents (counted as changed, as a recovery would) are what it names.
TEST(DirtyTracker, SnapshotReadsAFileInUseWithoutChangingIt) {
  char tmpl[] = "/tmp/imgstream-track-test-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl, path = dir + "/t.track";
  Env& env = *Env::posix();
  auto file_bytes = [&] {
    auto f = env.open(path, OpenMode::ReadOnly);
    EXPECT_TRUE(f);
    std::vector<std::byte> b(*(*f)->size());
    EXPECT_TRUE(read_exact_at(**f, 0, b));
    return b;
  };
  {
    auto t = DirtyTracker::open(env, path, kSize, small());
    ASSERT_TRUE(t) << t.error().message;
    nbd::testing::MemoryDevice disk(kSize);
    DirtyTrackingDevice d(disk, **t);
    std::vector<std::byte> b(kRegion, std::byte{1});
    ASSERT_TRUE(d.write(5 * kRegion, b, Durability::Buffered));  // extent 1, in the log
    ASSERT_TRUE((*t)->flush());                                  // region 5 in the bitmap
    const auto before = file_bytes();
    auto snap = DirtyTracker::read_snapshot(env, path);
    ASSERT_TRUE(snap) << snap.error().message;
    EXPECT_TRUE(snap->in_use);
    EXPECT_EQ(snap->al_extents, 1u);
    // Region 5, and the other regions of its extent (4 to 7) as a recovery counts them.
    EXPECT_EQ(snap->dirty_count(), 4u);
    EXPECT_EQ(snap->dirty_runs(), (std::vector<std::pair<uint64_t, uint64_t>>{{4, 4}}));
    EXPECT_EQ(file_bytes(), before);
    ASSERT_TRUE((*t)->close());
  }
  auto snap = DirtyTracker::read_snapshot(env, path);
  ASSERT_TRUE(snap);
  EXPECT_FALSE(snap->in_use);
  EXPECT_EQ(snap->al_extents, 0u);
  EXPECT_EQ(snap->dirty_runs(), (std::vector<std::pair<uint64_t, uint64_t>>{{5, 1}}));
  // A file no server ever ran on: no lock file is made for it.
  ASSERT_TRUE(env.rename(path, dir + "/copy.track"));
  ASSERT_TRUE(DirtyTracker::read_snapshot(env, dir + "/copy.track"));
  EXPECT_FALSE(*env.exists(dir + "/copy.track.lock"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace imgstream::migrate
