#include "stream/streaming_device.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <random>
#include <thread>

#include "base/env_fault.h"
#include "base/env_memory.h"
#include "stream/hydrator.h"
#include "stream/testing.h"

namespace imgstream::stream {
namespace {

using testing::MemSource;

std::vector<std::byte> make_image(size_t size, uint32_t seed) {
  std::vector<std::byte> v(size);
  std::mt19937 rng(seed);
  for (auto& b : v) b = std::byte(rng() & 0xff);
  // A zero stretch in the middle, for hole handling.
  std::fill(v.begin() + static_cast<ptrdiff_t>(size / 2),
            v.begin() + static_cast<ptrdiff_t>(size / 2 + size / 8), std::byte{0});
  return v;
}

class StreamingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/imgstream-stream-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    image_ = make_image(kSize, 7);
    src_ = std::make_unique<MemSource>(image_);
  }
  void TearDown() override {
    dev_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }
  // No read-ahead unless a test asks: most tests count the source's reads exactly.
  static FetchLimits no_readahead() {
    FetchLimits l;
    l.readahead_bytes = 0;
    return l;
  }
  void open(uint32_t region = kRegion, bool track_prefetch = false,
            FetchLimits limits = no_readahead()) {
    store::StoreOptions o;
    o.dir = dir_ + "/store";
    o.image_size = image_.size();
    o.region_size = region;
    o.source_uri = src_->uri();
    auto s = store::LocalStore::open_or_create(*Env::posix(), o);
    ASSERT_TRUE(s) << s.error().message;
    store_ = std::move(*s);
    dev_ = std::make_unique<StreamingDevice>(*store_, src_.get(), track_prefetch, limits);
  }
  void reopen() {
    dev_.reset();
    store_.reset();
    open();
  }
  std::vector<std::byte> read(uint64_t off, size_t len) {
    std::vector<std::byte> b(len);
    auto r = dev_->read(off, b);
    EXPECT_TRUE(r) << r.error().message;
    return b;
  }
  std::vector<std::byte> slice(uint64_t off, size_t len) {
    return {image_.begin() + static_cast<ptrdiff_t>(off),
            image_.begin() + static_cast<ptrdiff_t>(off + len)};
  }

  static constexpr size_t kSize = 8u << 20;
  static constexpr uint32_t kRegion = 64 * 1024;
  std::string dir_;
  std::vector<std::byte> image_;
  std::unique_ptr<MemSource> src_;
  std::unique_ptr<store::LocalStore> store_;
  std::unique_ptr<StreamingDevice> dev_;
};

TEST_F(StreamingTest, ReadsEqualTheImageAndStayLocal) {
  open();
  EXPECT_EQ(read(0, 4096), slice(0, 4096));
  EXPECT_EQ(read(100000, 300000), slice(100000, 300000));  // unaligned, several regions
  EXPECT_EQ(read(kSize - 10, 10), slice(kSize - 10, 10));
  const int reads = src_->reads_;
  EXPECT_EQ(read(0, 4096), slice(0, 4096));
  EXPECT_EQ(read(100000, 300000), slice(100000, 300000));
  EXPECT_EQ(src_->reads_, reads) << "present regions must be read locally";
  // Adjacent missing regions are coalesced into one source request.
  const int before = src_->reads_;
  read(4u << 20, 8 * kRegion);
  EXPECT_EQ(src_->reads_, before + 1);
}

TEST_F(StreamingTest, ConcurrentReadersShareOneFetch) {
  open();
  src_->delay_us_ = 20000;
  std::vector<std::thread> t;
  for (int i = 0; i < 8; ++i) t.emplace_back([&] { EXPECT_EQ(read(kRegion, 100), slice(kRegion, 100)); });
  for (auto& th : t) th.join();
  EXPECT_EQ(src_->reads_, 1);
}

TEST_F(StreamingTest, PartialWriteMergesWholeWriteDoesNotFetch) {
  open();
  std::vector<std::byte> data(100, std::byte{0xab});
  ASSERT_TRUE(dev_->write(kRegion + 10, data, Durability::Buffered));
  EXPECT_EQ(src_->reads_, 1);  // fetch and merge
  auto got = read(kRegion, kRegion);
  auto want = slice(kRegion, kRegion);
  std::copy(data.begin(), data.end(), want.begin() + 10);
  EXPECT_EQ(got, want);
  // A whole-region write needs no fetch.
  std::vector<std::byte> whole(2 * kRegion, std::byte{0xcd});
  ASSERT_TRUE(dev_->write(4 * kRegion, whole, Durability::Fua));
  EXPECT_EQ(src_->reads_, 1);
  EXPECT_EQ(read(4 * kRegion, 2 * kRegion), whole);
}

TEST_F(StreamingTest, TrimAndZeroOfWholeRegionsNeedNoFetch) {
  open();
  ASSERT_TRUE(dev_->write_zeroes(2 * kRegion, 3 * kRegion, ZeroFlags{}, Durability::Buffered));
  ASSERT_TRUE(dev_->trim(10 * kRegion, 2 * kRegion, Durability::Buffered));
  EXPECT_EQ(src_->reads_, 0);
  EXPECT_EQ(read(2 * kRegion, 3 * kRegion), std::vector<std::byte>(3 * kRegion));
  // Zeroing part of a missing region fetches the rest; FAST_ZERO refuses it.
  ZeroFlags fast;
  fast.fast_only = true;
  auto r = dev_->write_zeroes(20 * kRegion + 5, 100, fast, Durability::Buffered);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOTSUP);
  ASSERT_TRUE(dev_->write_zeroes(20 * kRegion + 5, 100, ZeroFlags{}, Durability::Buffered));
  auto want = slice(20 * kRegion, kRegion);
  std::fill(want.begin() + 5, want.begin() + 105, std::byte{0});
  EXPECT_EQ(read(20 * kRegion, kRegion), want);
}

TEST_F(StreamingTest, FlushedStateSurvivesReopen) {
  open();
  read(0, 3 * kRegion);
  std::vector<std::byte> data(kRegion, std::byte{0x5a});
  ASSERT_TRUE(dev_->write(7 * kRegion, data, Durability::Buffered));
  ASSERT_TRUE(dev_->flush());
  reopen();
  EXPECT_TRUE(store_->present(0) && store_->present(2) && store_->present(7));
  EXPECT_FALSE(store_->present(3));
  const int reads = src_->reads_;
  EXPECT_EQ(read(7 * kRegion, kRegion), data);
  EXPECT_EQ(read(0, 3 * kRegion), slice(0, 3 * kRegion));
  EXPECT_EQ(src_->reads_, reads);
}

TEST_F(StreamingTest, RefusesAStoreOfAnotherImage) {
  open();
  dev_.reset();
  store_.reset();
  store::StoreOptions o;
  o.dir = dir_ + "/store";
  o.image_size = image_.size() * 2;
  o.region_size = kRegion;
  auto s = store::LocalStore::open_or_create(*Env::posix(), o);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("another image"), std::string::npos) << s.error().message;
  o.image_size = image_.size();
  o.fingerprint[0] = std::byte{1};
  s = store::LocalStore::open_or_create(*Env::posix(), o);
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("fingerprint"), std::string::npos);
}

TEST_F(StreamingTest, HydrationCompletesSkipsHolesAndKeepsClientWrites) {
  open();
  std::vector<std::byte> data(3 * kRegion + 17, std::byte{0x77});
  ASSERT_TRUE(dev_->write(30 * kRegion + 3, data, Durability::Buffered));
  std::atomic<bool> complete{false};
  HydratorOptions ho;
  ho.batch_bytes = 4 * kRegion;
  Hydrator h(*dev_, *store_, *src_, ho, [&] { complete = true; });
  h.start();
  // Client writes while hydration runs must never be overwritten by it.
  std::vector<std::byte> later(kRegion, std::byte{0x99});
  ASSERT_TRUE(dev_->write(100 * kRegion, later, Durability::Buffered));
  for (int i = 0; i < 2000 && !complete; ++i) ::usleep(5000);
  ASSERT_TRUE(complete);
  h.stop();
  EXPECT_TRUE(store_->complete());
  auto want = image_;
  std::copy(data.begin(), data.end(), want.begin() + 30 * kRegion + 3);
  std::copy(later.begin(), later.end(), want.begin() + 100 * kRegion);
  EXPECT_EQ(read(0, kSize), want);
  // The zero eighth of the image was not fetched.
  EXPECT_LE(src_->bytes_.load(), kSize - kSize / 8 + 2 * kRegion);
  EXPECT_GT(store_->fetched(store::FetchKind::Background), 0u);
}

TEST_F(StreamingTest, PrefetchRunsComeFirstInTheirOrder) {
  open();
  std::atomic<bool> complete{false};
  HydratorOptions ho;
  ho.batch_bytes = 4 * kRegion;
  ho.in_flight = 1;
  ho.prefetch = {{50, 6}, {10, 3}, {120, 1}};
  Hydrator h(*dev_, *store_, *src_, ho, [&] { complete = true; });
  h.start();
  for (int i = 0; i < 2000 && !complete; ++i) ::usleep(5000);
  ASSERT_TRUE(complete);
  h.stop();
  std::vector<uint64_t> got;
  {
    std::lock_guard lock(src_->log_mu_);
    got.assign(src_->offsets_.begin(), src_->offsets_.begin() + 4);
  }
  // The 6-region run in two batches of at most 4, then the next runs, in profile order.
  const std::vector<uint64_t> want = {50 * kRegion, 54 * kRegion, 10 * kRegion, 120 * kRegion};
  EXPECT_EQ(got, want);
  EXPECT_EQ(read(0, kSize), image_);
}

TEST_F(StreamingTest, StatisticsCountHitsWaitsAndPrefetchPrecision) {
  open(kRegion, /*track_prefetch=*/true);
  HydratorOptions ho;
  ho.prefetch = {{10, 4}};
  ho.prefetch_only = true;
  ho.rate_bytes_per_second = 1;  // ordinary hydration would crawl; the prefetch must not
  Hydrator h(*dev_, *store_, *src_, ho, [] {});
  h.start();
  for (int i = 0; i < 2000 && store_->regions_present() < 4; ++i) ::usleep(1000);
  h.stop();
  ASSERT_EQ(store_->regions_present(), 4u) << "the prefetch and nothing else";
  EXPECT_EQ(store_->fetched(store::FetchKind::Prefetch), 4 * kRegion);
  EXPECT_EQ(store_->fetched(store::FetchKind::Background), 0u);

  src_->delay_us_ = 2000;
  read(10 * kRegion, 100);                 // local, reads prefetched region 10
  read(11 * kRegion + 5, kRegion);         // local, regions 11 and 12
  read(10 * kRegion + 200, 100);           // local, region 10 again: counted once
  read(30 * kRegion, 100);                 // waits on the source
  std::vector<std::byte> b(100);
  ASSERT_TRUE(dev_->read_nowait(12 * kRegion, b));  // the inline path counts too
  EXPECT_FALSE(dev_->read_nowait(40 * kRegion, b)); // would block: not counted
  store::Counters c = store_->counters();
  EXPECT_EQ(c.reads_local, 4u);
  EXPECT_EQ(c.reads_waited, 1u);
  EXPECT_GE(c.wait_ns, 2'000'000u);
  EXPECT_EQ(c.bytes_fetched_prefetch, 4 * kRegion);
  EXPECT_EQ(c.prefetch_bytes_read, 3 * kRegion);  // region 13 was never read
  EXPECT_EQ(c.bytes_fetched_demand, kRegion);

  // Counters alone are committed only when asked, and then survive a restart.
  ASSERT_TRUE(store_->commit(/*with_counters=*/true));
  reopen();
  EXPECT_EQ(store_->counters(), c);
}

TEST_F(StreamingTest, SourceFailureIsAnErrorNotAHang) {
  open();
  src_->fail_ = true;
  std::vector<std::byte> b(4096);
  auto r = dev_->read(0, b);
  ASSERT_FALSE(r);
  EXPECT_FALSE(store_->present(0));
  EXPECT_EQ(store_->counters().reads_failed, 1u);
  src_->fail_ = false;
  EXPECT_EQ(read(0, 4096), slice(0, 4096));
  // Failed reads are a counter of the store (status: reads_failed), kept across restarts.
  ASSERT_TRUE(store_->commit(/*with_counters=*/true));
  reopen();
  EXPECT_EQ(store_->counters().reads_failed, 1u);
}

// A source that comes back after a failure: hydration tries again by itself (with
// backoff) and completes, without a resume; the store is in state error meanwhile.
TEST_F(StreamingTest, HydrationRetriesBySelfWhenTheSourceComesBack) {
  open();
  src_->fail_ = true;
  std::atomic<bool> complete{false};
  HydratorOptions ho;
  ho.batch_bytes = 16 * kRegion;
  Hydrator h(*dev_, *store_, *src_, ho, [&] { complete = true; });
  h.start();
  for (int i = 0; i < 400 && store_->state() != store::StoreState::Error; ++i) ::usleep(5000);
  ASSERT_EQ(store_->state(), store::StoreState::Error);
  EXPECT_FALSE(store_->error_message().empty());
  auto retry = h.retry_in_seconds();
  ASSERT_TRUE(retry);
  EXPECT_LE(*retry, 1.0);
  EXPECT_TRUE(h.paused());
  src_->fail_ = false;
  for (int i = 0; i < 1000 && !complete; ++i) ::usleep(5000);  // the first retry is after 1 s
  ASSERT_TRUE(complete) << "hydration did not try the source again by itself";
  h.stop();
  EXPECT_EQ(read(0, kSize), image_);
}

// A pause by the user stops the retries until resume().
TEST_F(StreamingTest, APauseStopsTheRetries) {
  open();
  src_->fail_ = true;
  HydratorOptions ho;
  Hydrator h(*dev_, *store_, *src_, ho, [] {});
  h.start();
  for (int i = 0; i < 400 && store_->state() != store::StoreState::Error; ++i) ::usleep(5000);
  ASSERT_EQ(store_->state(), store::StoreState::Error);
  h.pause();
  EXPECT_FALSE(h.retry_in_seconds());
  src_->fail_ = false;
  // A read that had begun before the pause may still be counted: let it settle first.
  ::usleep(200'000);
  const int reads = src_->reads_;
  ::usleep(1'500'000);
  EXPECT_EQ(src_->reads_, reads);
  h.resume();
  for (int i = 0; i < 1000 && !store_->complete(); ++i) ::usleep(5000);
  EXPECT_TRUE(store_->complete());
  h.stop();
}

// Under a rate limit a batch is about a quarter second's worth, so that the rate (and
// the counters status reads) move smoothly, not in steps of batch_bytes.
TEST_F(StreamingTest, RateLimitedBatchesAreSmall) {
  open();
  HydratorOptions ho;
  ho.batch_bytes = 64 * kRegion;
  ho.rate_bytes_per_second = 16 * kRegion;  // 4 regions per quarter second
  ho.in_flight = 1;
  Hydrator h(*dev_, *store_, *src_, ho, [] {});
  h.start();
  for (int i = 0; i < 400 && src_->reads_ < 3; ++i) ::usleep(5000);
  h.stop();
  ASSERT_GE(src_->reads_, 3);
  EXPECT_LE(src_->bytes_.load(), uint64_t(src_->reads_) * 4 * kRegion);
}

TEST_F(StreamingTest, BlockStatusShowsPresenceAndSourceHoles) {
  open();
  read(0, 2 * kRegion);
  std::vector<Extent> ex;
  ASSERT_TRUE(dev_->block_status(1, 0, 4 * kRegion, ex));
  ASSERT_EQ(ex.size(), 2u);
  EXPECT_EQ(ex[0].length, 2 * kRegion);
  EXPECT_EQ(ex[0].flags, kStatePresent);
  EXPECT_EQ(ex[1].flags, 0u);
  ex.clear();
  ASSERT_TRUE(dev_->block_status(0, kSize / 2, kRegion, ex));
  ASSERT_FALSE(ex.empty());
  EXPECT_EQ(ex[0].flags & kStateZero, kStateZero);
}

// Bounds small enough that the 8 MiB image is 32 pieces and 8 budgets: a piece of 256 KiB,
// a budget of 1 MiB of which background fetches may hold 512 KiB (2 pieces).
constexpr FetchLimits kSmall{256 * 1024, 1u << 20, 512 * 1024, 0};
constexpr uint64_t kSmallBackgroundMax = kSmall.budget_bytes - kSmall.demand_reserve_bytes;

bool wait_until(const std::function<bool()>& cond, std::chrono::milliseconds limit) {
  const auto deadline = std::chrono::steady_clock::now() + limit;
  while (!cond()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    ::usleep(2000);
  }
  return true;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// Issue 12: one CACHE of the whole image allocated a buffer for all of it before the
// first read came back. Now it never holds more than background's share of the budget.
TEST_F(StreamingTest, CacheOfTheWholeImageStaysWithinTheBudget) {
  open(kRegion, false, kSmall);
  src_->delay_us_ = 5000;
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_TRUE(dev_->cache(0, kSize));
  EXPECT_LT(seconds_since(t0), 0.1) << "CACHE is answered at once, not when fetched";
  ASSERT_TRUE(wait_until([&] { return store_->complete(); }, std::chrono::seconds(20)));
  EXPECT_LE(src_->in_flight_max(), kSmallBackgroundMax);
  EXPECT_GE(src_->in_flight_max(), kSmall.piece_bytes);
  EXPECT_LE(dev_->budget().used_max(), kSmallBackgroundMax);
  EXPECT_EQ(src_->bytes_.load(), kSize) << "every byte fetched once";
  EXPECT_EQ(store_->fetched(store::FetchKind::Demand), kSize) << "a client asked for it";
  EXPECT_EQ(read(0, kSize), image_);
}

// A CACHE (a flood of them, even) runs at background priority and yields: a demand read
// gets its pieces at once from the reserve, and one larger than the free budget (four
// pieces, while the CACHE holds two) still completes, piece by piece.
TEST_F(StreamingTest, DemandReadsCompleteWhileABigCacheRuns) {
  open(kRegion, false, kSmall);
  src_->delay_us_ = 100'000;  // the CACHE alone takes 32 pieces / 2 x 0.1 s = 1.6 s
  for (size_t i = 0; i < 2 * kCacheRangesMax; ++i) ASSERT_TRUE(dev_->cache(0, kSize));
  ASSERT_TRUE(wait_until([&] { return dev_->budget().used() > 0; }, std::chrono::seconds(5)));
  auto t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(read(kSize - 3 * kRegion, 2 * kRegion), slice(kSize - 3 * kRegion, 2 * kRegion));
  const double small = seconds_since(t0);
  t0 = std::chrono::steady_clock::now();
  EXPECT_EQ(read(kSize / 2 + 8 * kRegion, 1u << 20), slice(kSize / 2 + 8 * kRegion, 1u << 20));
  const double large = seconds_since(t0);
  EXPECT_FALSE(store_->complete()) << "the reads waited for the whole CACHE";
  EXPECT_LT(small, 0.8);
  EXPECT_LT(large, 1.2);
  EXPECT_LE(src_->in_flight_max(), kSmall.budget_bytes);
  EXPECT_LE(dev_->budget().used_max(), kSmall.budget_bytes);
  // TearDown destroys the device with the CACHE under way: it waits for what is in flight.
}

// The hydrator's in_flight x batch_bytes (8 MiB here) fits in the budget: it waits for
// bytes rather than allocating them.
TEST_F(StreamingTest, HydrationStaysWithinTheBudget) {
  open(kRegion, false, kSmall);
  src_->delay_us_ = 2000;
  std::atomic<bool> complete{false};
  HydratorOptions ho;
  ho.batch_bytes = 1u << 20;
  ho.in_flight = 8;
  Hydrator h(*dev_, *store_, *src_, ho, [&] { complete = true; });
  h.start();
  ASSERT_TRUE(wait_until([&] { return complete.load(); }, std::chrono::seconds(20)));
  h.stop();
  EXPECT_LE(src_->in_flight_max(), kSmallBackgroundMax);
  EXPECT_LE(dev_->budget().used_max(), kSmallBackgroundMax);
  EXPECT_EQ(read(0, kSize), image_);
}

// A region larger than a piece is fetched, and merged with a partial write or zero, in
// pieces: never one buffer of the whole region.
TEST_F(StreamingTest, RegionsLargerThanAPieceAreFetchedInPieces) {
  constexpr uint32_t kBig = 1u << 20;
  open(kBig, false, kSmall);
  EXPECT_EQ(read(3 * kBig + 5, 100), slice(3 * kBig + 5, 100));
  EXPECT_EQ(src_->reads_, 4);
  std::vector<std::byte> data(100, std::byte{0xab});
  ASSERT_TRUE(dev_->write(5 * kBig + 300'000, data, Durability::Buffered));
  ASSERT_TRUE(dev_->write_zeroes(6 * kBig + 1, kBig - 2, ZeroFlags{}, Durability::Buffered));
  EXPECT_EQ(src_->reads_, 12);
  EXPECT_LE(src_->in_flight_max(), kSmall.piece_bytes * 4);
  EXPECT_LE(dev_->budget().used_max(), kSmall.budget_bytes);
  auto want = slice(5 * kBig, 2 * kBig);
  std::copy(data.begin(), data.end(), want.begin() + 300'000);
  std::fill(want.begin() + kBig + 1, want.end() - 1, std::byte{0});
  EXPECT_EQ(read(5 * kBig, 2 * kBig), want);
  // A CACHE of big regions too.
  src_->delay_us_ = 2000;
  ASSERT_TRUE(dev_->cache(0, kSize));
  ASSERT_TRUE(wait_until([&] { return store_->complete(); }, std::chrono::seconds(20)));
  EXPECT_LE(dev_->budget().used_max(), kSmall.budget_bytes);
  EXPECT_EQ(read(0, 5 * kBig), slice(0, 5 * kBig));
}

}  // namespace
// The waiting reader is answered from the fetched bytes: even a store that cannot be
// written serves a correct read (the region stays missing and is fetched again).
TEST_F(StreamingTest, AReadIsAnsweredFromTheFetchNotFromTheStore) {
  MemEnv mem;
  FaultEnv env(mem);
  store::StoreOptions o;
  o.dir = "/store";
  o.image_size = image_.size();
  o.region_size = kRegion;
  o.source_uri = src_->uri();
  auto st = store::LocalStore::open_or_create(env, o);
  ASSERT_TRUE(st) << st.error().message;
  env.add_rule({.ops = FaultOp::Write, .path = "data", .times = FaultRule::kForever});
  StreamingDevice dev(**st, src_.get(), false, no_readahead());
  std::vector<std::byte> b(3 * kRegion);
  ASSERT_TRUE(dev.read(kRegion + 7, b));
  EXPECT_EQ(b, slice(kRegion + 7, b.size()));
  ASSERT_TRUE(dev.flush());
  EXPECT_FALSE((*st)->present(1) || (*st)->present(2) || (*st)->present(3));
  const int reads = src_->reads_;
  ASSERT_TRUE(dev.read(kRegion + 7, b));
  EXPECT_EQ(b, slice(kRegion + 7, b.size()));
  EXPECT_GT(src_->reads_, reads);
}

// A sequential reader is read ahead: entering a region starts the fetch of the next
// kReadaheadBytes; a random reader is not.
TEST_F(StreamingTest, ASequentialReaderIsReadAhead) {
  FetchLimits l;
  l.readahead_bytes = 4 * kRegion;
  open(kRegion, false, l);
  for (uint64_t off = 0; off < 2 * kRegion; off += 16 * 1024)
    EXPECT_EQ(read(off, 16 * 1024), slice(off, 16 * 1024));
  // A read-ahead lands when it lands: nobody waits for it.
  for (int i = 0; i < 2000 && store_->regions_present() < 6; ++i) {
    ASSERT_TRUE(dev_->flush());
    ::usleep(1000);
  }
  // Entering region 1 read 2..5 ahead; nobody entered region 2.
  for (uint64_t r = 0; r <= 5; ++r) EXPECT_TRUE(store_->present(r)) << r;
  EXPECT_FALSE(store_->present(6) || store_->present(7));
  EXPECT_EQ(store_->fetched(store::FetchKind::Demand), 6 * kRegion) << "each region once";

  // Random reads: every one where no stream ended.
  const uint64_t present = store_->regions_present();
  for (uint64_t r : {40u, 20u, 60u, 30u}) read(r * kRegion + 100, 1000);
  ASSERT_TRUE(dev_->flush());
  EXPECT_EQ(store_->regions_present(), present + 4);
}

}  // namespace imgstream::stream
