// Power loss at every I/O point (leveldb's fault_injection_test, for the store): a
// deterministic workload of reads, writes, zeroes and flushes runs on a MemEnv behind a
// FaultEnv that "loses power" at I/O point k; the unsynced state is dropped, the store is
// reopened, and then:
//   - every region the store says is present holds data the region really had at some
//     point (never garbage, never zeros that were not written: no stale serving), and
//   - every write the client saw flushed is there.
#include <gtest/gtest.h>

#include <cstddef>
#include <map>

#include "base/env_fault.h"
#include "base/env_memory.h"
#include "stream/streaming_device.h"
#include "stream/testing.h"

namespace imgstream::stream {
namespace {

constexpr uint32_t kRegion = 16 * 1024;
constexpr uint64_t kRegions = 24;
constexpr uint64_t kSize = kRegion * kRegions;
const std::string kDir = "/store";

using Bytes = std::vector<std::byte>;

Bytes image() {
  Bytes v(kSize);
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::byte((i * 7 + i / 4096) & 0xff);
  return v;
}

// What each region held, state after state, as the workload ran; and the first state
// index each region must be at or past, because a successful flush covered it.
struct History {
  std::vector<std::vector<Bytes>> states;
  std::vector<size_t> flushed;

  explicit History(const Bytes& img) : states(kRegions), flushed(kRegions, 0) {
    for (uint64_t r = 0; r < kRegions; ++r) {
      const auto at = std::ptrdiff_t(r * kRegion);
      states[r].push_back(Bytes(img.begin() + at, img.begin() + at + std::ptrdiff_t(kRegion)));
    }
  }
  // Applies bytes at offset (within the image) to the model.
  void apply(uint64_t offset, const Bytes& data) {
    for (uint64_t r = offset / kRegion; r <= (offset + data.size() - 1) / kRegion; ++r) {
      Bytes next = states[r].back();
      const uint64_t rs = r * kRegion;
      for (uint64_t i = std::max(offset, rs); i < std::min(offset + data.size(), rs + kRegion); ++i)
        next[i - rs] = data[i - offset];
      states[r].push_back(std::move(next));
    }
  }
  void flush_ok() {
    for (uint64_t r = 0; r < kRegions; ++r) flushed[r] = states[r].size() - 1;
  }
  // The index of `content` among region r's states at or after `from`, or -1.
  int find(uint64_t r, const Bytes& content, size_t from) const {
    for (size_t i = states[r].size(); i-- > from;)
      if (states[r][i] == content) return static_cast<int>(i);
    return -1;
  }
};

Result<std::unique_ptr<store::LocalStore>> open_store(Env& env) {
  store::StoreOptions o;
  o.dir = kDir;
  o.image_size = kSize;
  o.region_size = kRegion;
  o.source_uri = "mem://image";
  return store::LocalStore::open_or_create(env, o);
}

// The workload. Stops at the first failure (the "machine" lost power). Every operation
// is recorded in `h` before it is attempted: a write that failed may or may not be there.
void workload(StreamingDevice& dev, History& h) {
  auto write = [&](uint64_t off, size_t len, uint8_t v, Durability d) {
    Bytes data(len, std::byte{v});
    h.apply(off, data);
    if (!dev.write(off, data, d)) return false;
    if (d == Durability::Fua) h.flush_ok();  // FUA commits everything before it too
    return true;
  };
  auto flush = [&] {
    if (!dev.flush()) return false;
    h.flush_ok();
    return true;
  };
  auto read = [&](uint64_t off, size_t len) {
    Bytes b(len);
    return dev.read(off, b).has_value();
  };
  auto zero = [&](uint64_t off, size_t len) {
    h.apply(off, Bytes(len));
    return dev.write_zeroes(off, len, ZeroFlags{}, Durability::Buffered).has_value();
  };
  const bool done = read(0, 3 * kRegion) && write(5 * kRegion, kRegion, 0x11, Durability::Buffered) &&
                    write(6 * kRegion + 100, 300, 0x22, Durability::Buffered) && flush() &&
                    read(10 * kRegion + 5, 2 * kRegion) &&
                    write(7 * kRegion, 2 * kRegion + 10, 0x33, Durability::Fua) &&
                    zero(12 * kRegion, 2 * kRegion) && write(5 * kRegion + 1, 10, 0x44, Durability::Buffered) &&
                    flush() && write(15 * kRegion + 7, kRegion, 0x55, Durability::Buffered) &&
                    read(20 * kRegion, 4 * kRegion) && write(1 * kRegion, 50, 0x66, Durability::Buffered) &&
                    flush() && write(2 * kRegion, kRegion, 0x77, Durability::Buffered);
  (void)done;
}

// Returns the number of I/O points the workload has (run without a crash).
uint64_t run_once(uint64_t crash_at) {
  const Bytes img = image();
  MemEnv mem;
  FaultEnv env(mem);
  testing::MemSource src(img);
  src.inline_ = true;
  History h(img);
  {
    auto s = open_store(env);
    if (!s) {
      EXPECT_NE(crash_at, 0u) << s.error().message;
      return 0;
    }
    env.set_crash_at(crash_at);
    StreamingDevice dev(**s, &src);
    workload(dev, h);
  }
  const uint64_t points = env.io_points();
  // Power is lost: what was not synced is gone. A new process opens the store.
  mem.drop_unsynced();
  env.restart();
  auto s = open_store(env);
  if (!s) {
    // The crash came before the store existed durably: nothing was acknowledged.
    for (uint64_t r = 0; r < kRegions; ++r) EXPECT_EQ(h.flushed[r], 0u) << "k=" << crash_at;
    return points;
  }
  auto& st = **s;
  for (uint64_t r = 0; r < kRegions; ++r) {
    if (!st.present(r)) continue;
    Bytes local(kRegion);
    EXPECT_TRUE(read_exact_at(st.data(), r * kRegion, local));
    EXPECT_GE(h.find(r, local, 0), 0) << "k=" << crash_at << ": region " << r
                                      << " is marked present but holds data it never had";
  }
  StreamingDevice dev(st, &src);
  for (uint64_t r = 0; r < kRegions; ++r) {
    Bytes got(kRegion);
    if (!dev.read(r * kRegion, got)) {
      ADD_FAILURE() << "k=" << crash_at << ": read of region " << r << " failed";
      continue;
    }
    EXPECT_GE(h.find(r, got, h.flushed[r]), 0)
        << "k=" << crash_at << ": region " << r << " lost a flushed write";
  }
  return points;
}

TEST(PowerLoss, EveryIoPoint) {
  const uint64_t points = run_once(0);
  ASSERT_GT(points, 20u);
  for (uint64_t k = 1; k <= points + 1; ++k) {
    run_once(k);
    if (::testing::Test::HasFailure()) break;  // the first failing point says it all
  }
}

}  // namespace
}  // namespace imgstream::stream
