#include "migrate/mirror_device.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstddef>
#include <filesystem>
#include <random>
#include <thread>

#include "base/env_memory.h"
#include "migrate/dirty_tracking_device.h"
#include "migrate/testing.h"
#include "nbd/testing.h"

namespace imgstream::migrate {
namespace {

constexpr uint64_t kSize = 8u << 20;
using Bytes = std::vector<std::byte>;

// A target: an in-process NBD server exporting a MemoryDevice on a unix socket, whose
// writes land after a delay (a copy sent before a mirrored write may land after it).
struct Target : testing::MemoryTarget {
  explicit Target(testing::WriteDelay delay = testing::jitter) : MemoryTarget(kSize, delay) {}
};

// Reads take a while: the copier's read of a region and a machine's write to it overlap
// often, which is the race the per-region locks exist for.
class SlowReads final : public BlockDevice {
 public:
  explicit SlowReads(BlockDevice& inner) : inner_(inner) {}
  uint64_t size() const override { return inner_.size(); }
  DeviceCaps caps() const override { return inner_.caps(); }
  Result<void> read(uint64_t offset, std::span<std::byte> buf) override {
    TRY(inner_.read(offset, buf));
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
    return ok();
  }
  Result<void> write(uint64_t offset, std::span<const std::byte> d, Durability du) override {
    return inner_.write(offset, d, du);
  }
  Result<void> write_zeroes(uint64_t offset, uint64_t length, ZeroFlags z, Durability d) override {
    return inner_.write_zeroes(offset, length, z, d);
  }

 private:
  BlockDevice& inner_;
};

Bytes read_all(BlockDevice& d) {
  Bytes b(d.size());
  EXPECT_TRUE(d.read(0, b));
  return b;
}

// Writes from many threads while the copier copies what changed before the activation:
// after drain() the target holds exactly the source, whatever the interleaving; the
// per-region locks, kept until the target acknowledged the copy, are what make that hold
// (an older copy never lands after a newer write).
TEST(MirrorDevice, TargetEqualsSourceAfterDrainUnderConcurrentWrites) {
  MemEnv env;
  auto t = DirtyTracker::open(env, "/track", kSize);
  ASSERT_TRUE(t);
  nbd::testing::MemoryDevice src(kSize);
  SlowReads slow(src);
  DirtyTrackingDevice tracked(slow, **t);
  MirrorDevice mirror(tracked, **t);
  Target target;

  // Every write lands in the first 2 MiB, which is all changed before the activation, so
  // the copier and the writers meet there all the time.
  constexpr uint64_t kHot = 2u << 20;
  std::mt19937_64 rng(7);
  const auto random_write = [&](std::mt19937_64& r) {
    const uint64_t len = 512 + r() % (16 << 10);
    const uint64_t off = r() % (kHot - len);
    Bytes data(len);
    for (auto& b : data) b = std::byte(r());
    return std::pair(off, data);
  };
  // Changes before the activation: the tracker names them, the copier must copy them.
  // Every other region: many small runs, several in flight on each copier connection.
  for (uint64_t off = 0; off < kHot; off += 8 << 10) {
    Bytes data(4 << 10);
    for (auto& b : data) b = std::byte(rng());
    ASSERT_TRUE(mirror.write(off, data, Durability::Buffered));
  }
  ASSERT_GT((*t)->dirty_count(), 0u);
  auto nt = NbdTarget::open(target.uri(), 4);
  ASSERT_TRUE(nt) << nt.error().message;
  ASSERT_TRUE(mirror.activate(std::move(*nt)));
  EXPECT_TRUE(mirror.active());
  EXPECT_FALSE(mirror.write_nowait(0, Bytes(512), Durability::Buffered)) << "never inline";

  std::vector<std::thread> writers;
  for (int w = 0; w < 4; ++w)
    writers.emplace_back([&, w] {
      std::mt19937_64 r(100 + w);
      for (int i = 0; i < 300; ++i) {
        auto [off, data] = random_write(r);
        if (i % 17 == 0)
          ASSERT_TRUE(mirror.write_zeroes(off, data.size(), ZeroFlags{}, Durability::Buffered));
        else
          ASSERT_TRUE(mirror.write(off, data, Durability::Buffered));
      }
    });
  for (auto& th : writers) th.join();
  auto drained = mirror.drain(std::chrono::seconds(30));
  ASSERT_TRUE(drained) << drained.error().message;
  EXPECT_EQ((*t)->dirty_count(), 0u);
  const auto st = mirror.stats();
  EXPECT_GT(st.mirrored_bytes, 0u);
  EXPECT_GT(st.copied_bytes, 0u);
  EXPECT_EQ(st.mirror_failures, 0u);
  EXPECT_TRUE(read_all(src) == target.contents()) << "the target differs from the source";
  mirror.deactivate();
  EXPECT_FALSE(mirror.active());
  // Passive again: writes are tracked, not mirrored.
  ASSERT_TRUE(mirror.write(0, Bytes(4096, std::byte{9}), Durability::Buffered));
  EXPECT_TRUE((*t)->dirty(0));
  EXPECT_EQ(mirror.stats().mirrored_bytes, st.mirrored_bytes);
}

// A disk in memory, tracked, under a MirrorDevice: what the tests below build.
struct MirroredDisk {
  MirroredDisk() : t(open_tracker(env)), tracked(src, *t), mirror(tracked, *t) {}
  static std::unique_ptr<DirtyTracker> open_tracker(Env& env) {
    auto t = DirtyTracker::open(env, "/track", kSize);
    EXPECT_TRUE(t);
    return std::move(*t);
  }
  MemEnv env;
  nbd::testing::MemoryDevice src{kSize};
  std::unique_ptr<DirtyTracker> t;
  DirtyTrackingDevice tracked;
  MirrorDevice mirror;
};

// The copier's copy of a region is slow to land; a machine's write to the region comes
// meanwhile. It must reach the target after the copy (it waits for the region's lock,
// kept until the target acknowledged the copy), or the copy's older bytes would win.
TEST(MirrorDevice, AWriteWaitsForTheCopyInFlightOfItsRegion) {
  MirroredDisk d;
  auto& mirror = d.mirror;
  const uint64_t rs = d.t->header().region_size;
  std::atomic<int> copies{0};
  Target target([&](uint64_t offset, size_t length) {
    if (offset == 0 && length == rs && copies++ == 0) return std::chrono::microseconds(300'000);
    return std::chrono::microseconds(0);
  });
  ASSERT_TRUE(mirror.write(0, Bytes(rs, std::byte{1}), Durability::Buffered));  // to copy
  auto nt = NbdTarget::open(target.uri(), 2);
  ASSERT_TRUE(nt) << nt.error().message;
  ASSERT_TRUE(mirror.activate(std::move(*nt)));
  // The copy is on its way (or, on a slow machine, not yet sent: then this write comes
  // first and the copy that follows carries it; the test passes either way).
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(mirror.write(0, Bytes(512, std::byte{2}), Durability::Buffered));
  auto drained = mirror.drain(std::chrono::seconds(10));
  ASSERT_TRUE(drained) << drained.error().message;
  EXPECT_TRUE(read_all(d.src) == target.contents()) << "an older copy landed after a newer write";
}

// The target crashes in the middle of active mirroring and loses what it had not
// flushed. Every region where it then differs from the source must be named changed,
// in memory (for the copy that follows) and in the tracking file (should the server
// crash too), though the target had acknowledged those writes and copies.
TEST(MirrorDevice, ATargetCrashLosesNothingTheTrackerForgets) {
  MirroredDisk d;
  auto& mirror = d.mirror;
  auto& t = d.t;
  Target target(testing::WriteDelay{});
  std::mt19937_64 rng(11);
  const auto write_some = [&](int n) {
    for (int i = 0; i < n; ++i) {
      const uint64_t len = 4096 * (1 + rng() % 8), off = rng() % (kSize - len) / 512 * 512;
      Bytes data(len);
      for (auto& b : data) b = std::byte(rng());
      ASSERT_TRUE(mirror.write(off, data, Durability::Buffered));
    }
  };
  write_some(200);  // changed before the activation: the copier copies them
  auto nt = NbdTarget::open(target.uri(), 3);
  ASSERT_TRUE(nt) << nt.error().message;
  ASSERT_TRUE(mirror.activate(std::move(*nt)));
  ASSERT_TRUE(mirror.drain(std::chrono::seconds(10)));  // all copied, flushed
  write_some(200);  // mirrored, acknowledged, not flushed
  EXPECT_GT(t->unflushed_count(), 0u);
  target.crash();
  write_some(20);  // mirroring fails now: left changed
  mirror.deactivate();
  EXPECT_EQ(t->unflushed_count(), 0u);

  const Bytes want = read_all(d.src), got = target.contents();
  const uint64_t rs = t->header().region_size;
  size_t lost = 0;
  for (uint64_t r = 0; r < kSize / rs; ++r) {
    const auto at = std::ptrdiff_t(r * rs), len = std::ptrdiff_t(rs);
    if (std::equal(want.begin() + at, want.begin() + at + len, got.begin() + at)) continue;
    ++lost;
    EXPECT_TRUE(t->dirty(r)) << "region " << r << " differs on the target but is not named";
  }
  EXPECT_GT(lost, 0u) << "the crash lost nothing: the test tests nothing";
  // The file names them too: reopened after a flush, as after a crash of the server.
  ASSERT_TRUE(t->flush());
  std::vector<uint64_t> named = t->dirty_regions();
  t.reset();  // (the disk's layers above are passive and not used again)
  auto again = DirtyTracker::open(d.env, "/track", kSize);
  ASSERT_TRUE(again);
  for (uint64_t r : named) EXPECT_TRUE((*again)->dirty(r)) << "region " << r;
}

// What activate() says to a target of kSize bytes on `connections`, for a disk of
// `disk_size`; the disk stays passive.
std::string refusal(uint64_t disk_size, unsigned connections) {
  MemEnv env;
  auto t = DirtyTracker::open(env, "/track", disk_size);
  EXPECT_TRUE(t);
  nbd::testing::MemoryDevice src(disk_size);
  MirrorDevice mirror(src, **t);
  Target target;
  auto nt = NbdTarget::open(target.uri(), connections);
  EXPECT_TRUE(nt) << nt.error().message;
  auto r = mirror.activate(std::move(*nt));
  EXPECT_FALSE(mirror.active());
  EXPECT_FALSE(mirror.drain(std::chrono::milliseconds(10)));
  return r ? "" : r.error().message;
}

TEST(MirrorDevice, RefusesATargetSmallerThanTheDiskAndASingleConnection) {
  EXPECT_NE(refusal(2 * kSize, 2).find("bytes, the disk has"), std::string::npos);
  // One connection would deadlock: the copier's worker keeps it while waiting for a
  // region that a mirrored write has locked, and the write needs it to finish.
  EXPECT_NE(refusal(kSize, 1).find("at least 2 connections"), std::string::npos);
}

}  // namespace
}  // namespace imgstream::migrate
