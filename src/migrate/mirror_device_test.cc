#include "migrate/mirror_device.h"

#include <gtest/gtest.h>
#include <stdlib.h>

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

// A target: an in-process NBD server exporting a MemoryDevice on a unix socket.
struct Target : testing::MemoryTarget {
  Target() : MemoryTarget(kSize) {}
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
// per-region locks are what make that hold (an older copy never lands after a newer write).
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
  for (uint64_t off = 0; off < kHot; off += 64 << 10) {
    Bytes data(64 << 10);
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

TEST(MirrorDevice, RefusesATargetSmallerThanTheDisk) {
  MemEnv env;
  auto t = DirtyTracker::open(env, "/track", 2 * kSize);
  ASSERT_TRUE(t);
  nbd::testing::MemoryDevice src(2 * kSize);
  MirrorDevice mirror(src, **t);
  Target target;
  auto nt = NbdTarget::open(target.uri(), 1);
  ASSERT_TRUE(nt) << nt.error().message;
  auto r = mirror.activate(std::move(*nt));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("bytes, the disk has"), std::string::npos) << r.error().message;
  EXPECT_FALSE(mirror.active());
  EXPECT_FALSE(mirror.drain(std::chrono::milliseconds(10)));
}

}  // namespace
}  // namespace imgstream::migrate
