#include "stream/streaming_device.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>

#include "base/check.h"
#include "base/limits.h"
#include "base/log.h"
#include "device/file_device.h"

namespace imgstream::stream {

using store::FetchKind;

// One piece's buffer and the budget bytes it stands for. Members are destroyed in
// reverse order: the buffer is freed before its bytes go back to the budget.
struct StreamingDevice::Piece {
  FetchBudget::Grant grant;
  std::unique_ptr<std::byte[]> buf;
  uint64_t offset = 0, bytes = 0;  // where in the image
};

struct StreamingDevice::Claim {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  // A run of one piece publishes the piece here once its bytes have landed, until the run
  // is released: a reader that waits on the claim copies from it rather than wait for the
  // store write.
  std::shared_ptr<const Piece> landed;
};

namespace {

// Bounded retries of a request whose regions keep being claimed or keep failing to land.
constexpr int kClaimRoundsMax = limits::kClaimRoundsMax;

}  // namespace

StreamingDevice::StreamingDevice(store::LocalStore& store, source::Source* source,
                                 bool track_prefetch, FetchLimits limits)
    : store_(store),
      region_size_(store.region_size()),
      limits_(limits),
      budget_(limits.budget_bytes, limits.demand_reserve_bytes),
      source_(source),
      writer_(store.data()) {
  IMG_CHECK(source != nullptr || store.complete());
  IMG_CHECK(limits.piece_bytes > 0 && limits.demand_reserve_bytes >= limits.piece_bytes &&
            limits.budget_bytes >= limits.demand_reserve_bytes + limits.piece_bytes);
  for (std::atomic<uint64_t>& s : streams_) s.store(kNoStream, std::memory_order_relaxed);
  if (track_prefetch) {
    const size_t words = (store.regions() + 63) / 64;
    prefetched_ = std::make_unique<std::atomic<uint64_t>[]>(words);
    for (size_t w = 0; w < words; ++w) prefetched_[w].store(0, std::memory_order_relaxed);
  }
}

StreamingDevice::~StreamingDevice() {
  {
    std::lock_guard lock(cache_mu_);
    cache_stopping_ = true;
    cache_ranges_.clear();
  }
  cache_cv_.notify_all();
  if (cacher_.joinable()) cacher_.join();
  {
    std::unique_lock lock(cache_mu_);
    cache_cv_.wait(lock, [&] { return cache_in_flight_ == 0; });
  }
  // Reads return before their store writes, and read-aheads are nobody's to wait for:
  // their runs may still be in flight. Each ends by releasing its claim.
  std::unique_lock lock(mu_);
  claims_empty_cv_.wait(lock, [&] { return claims_.empty(); });
}

DeviceCaps StreamingDevice::caps() const {
  DeviceCaps c;
  c.writable = c.can_flush = c.can_fua = c.can_trim = c.can_zero = c.can_fast_zero = true;
  c.can_cache = true;
  c.can_multi_conn = true;  // one store behind every connection; a flush commits it all
  return c;
}

source::Source* StreamingDevice::current_source() const {
  std::lock_guard lock(mu_);
  return source_;
}

void StreamingDevice::detach_source() {
  std::unique_lock lock(mu_);
  IMG_CHECK(store_.complete());
  // A fetch that made the last regions present may not have released its claim yet (it
  // marks them present first): wait for it. No new claim can come, nothing is missing.
  claims_empty_cv_.wait(lock, [&] { return claims_.empty(); });
  source_ = nullptr;
}

uint64_t StreamingDevice::demand_waiting() const {
  std::lock_guard lock(mu_);
  return demand_waiting_;
}

bool StreamingDevice::all_present(uint64_t first, uint64_t last) const {
  for (uint64_t r = first; r <= last; ++r)
    if (!store_.present(r)) return false;
  return true;
}

bool StreamingDevice::is_local(uint64_t offset, uint64_t length) const {
  IMG_CHECK(length > 0 && offset + length <= size());
  return all_present(offset / region_size_, (offset + length - 1) / region_size_);
}

// --- claims -------------------------------------------------------------------------

StreamingDevice::ClaimSet StreamingDevice::claim(uint64_t first, uint64_t last) {
  const uint64_t run_max = std::max<uint64_t>(1, limits_.piece_bytes / region_size_);
  ClaimSet set;
  std::lock_guard lock(mu_);
  for (uint64_t r = first; r <= last; ++r) {
    if (store_.present(r)) {
      if (!set.present.empty() && set.present.back().first + set.present.back().count == r)
        ++set.present.back().count;
      else
        set.present.push_back(Span{r, 1, nullptr});
      continue;
    }
    if (auto it = claims_.find(r); it != claims_.end()) {
      Span* o = set.others.empty() ? nullptr : &set.others.back();
      if (o && o->claim == it->second && o->first + o->count == r) ++o->count;
      else set.others.push_back(Span{r, 1, it->second});
      continue;
    }
    Run* run = set.mine.empty() ? nullptr : &set.mine.back();
    if (!run || run->first + run->count != r || run->count == run_max) {
      set.mine.push_back(Run{r, 0, std::make_shared<Claim>()});
      run = &set.mine.back();
    }
    ++run->count;
    claims_.emplace(r, run->claim);
  }
  return set;
}

void StreamingDevice::release(const Run& run, const Result<void>& r) {
  if (!r) LOG_DEBUG("regions {}+{}: {}", run.first, run.count, r.error().message);
  {
    std::lock_guard lock(mu_);
    for (uint64_t i = run.first; i < run.first + run.count; ++i) {
      auto it = claims_.find(i);
      IMG_CHECK(it != claims_.end() && it->second == run.claim);
      claims_.erase(it);
    }
    if (claims_.empty()) claims_empty_cv_.notify_all();
  }
  std::lock_guard lock(run.claim->m);
  run.claim->landed.reset();  // in the store now: readers read it there
  run.claim->done = true;
  run.claim->cv.notify_all();
}

void StreamingDevice::release_all(const std::vector<Run>& runs, const Result<void>& r) {
  for (const Run& run : runs) release(run, r);
}

void StreamingDevice::wait_for(const std::vector<Span>& others) {
  for (const Span& o : others) {
    std::unique_lock lock(o.claim->m);
    o.claim->cv.wait(lock, [&] { return o.claim->done; });
  }
}

Result<std::vector<StreamingDevice::Run>> StreamingDevice::claim_exclusive(uint64_t first,
                                                                            uint64_t last) {
  for (int round = 0; round < kClaimRoundsMax; ++round) {
    ClaimSet set = claim(first, last);
    if (set.others.empty()) return std::move(set.mine);
    release_all(set.mine, ok());
    wait_for(set.others);
  }
  return Error::io("regions stay claimed by other requests");
}

// --- fetching -----------------------------------------------------------------------

// One run being fetched: its pieces land in any order; the last one finishes the run.
// A piece first lands (its bytes came from the source: copied to the target, published
// on the claim) and is then done (written to the store, or failed).
struct StreamingDevice::RunFetch {
  Run run;
  FetchKind kind;
  std::function<void(Result<void>)> done;
  ReadTarget target;  // empty buf: nobody reads along
  bool one_piece = false;
  std::mutex m;
  size_t left = 1;      // pieces not done, +1 while fetch_run is still starting them
  size_t unlanded = 1;  // pieces not landed, +1 likewise
  Result<void> result;
  Result<void> land_result;
};

namespace {

// Copies the part of `from` (image bytes at from_offset) that falls in `to` (at to_offset).
void copy_overlap(uint64_t from_offset, std::span<const std::byte> from, uint64_t to_offset,
                  std::span<std::byte> to) {
  const uint64_t a = std::max(from_offset, to_offset);
  const uint64_t b = std::min(from_offset + from.size(), to_offset + to.size());
  if (a >= b) return;
  std::memcpy(to.data() + (a - to_offset), from.data() + (a - from_offset), b - a);
}

}  // namespace

void StreamingDevice::fetch_run(const Run& run, FetchKind kind, FetchBudget::Grant& prepaid,
                                std::function<void(Result<void>)> done,
                                const ReadTarget* target) {
  source::Source* src = current_source();
  if (!src) {
    Result<void> r = Error{ESHUTDOWN, "source detached while regions are missing"};
    if (target) target->served(r);
    release(run, r);
    done(r);
    return;
  }
  auto f = std::make_shared<RunFetch>();
  f->run = run;
  f->kind = kind;
  f->done = std::move(done);
  if (target) f->target = *target;
  const uint64_t offset = run.first * region_size_;
  const uint64_t end = std::min((run.first + run.count) * region_size_, size());
  f->one_piece = end - offset <= limits_.piece_bytes;
  for (uint64_t pos = offset; pos < end;) {
    const uint64_t n = std::min(limits_.piece_bytes, end - pos);
    FetchBudget::Grant g = prepaid.bytes() >= n ? prepaid.take(n)
                                                : budget_.acquire(n, FetchPriority::Demand);
    {
      std::lock_guard lock(f->m);
      if (!f->result || !f->land_result) break;  // an earlier piece failed: the run stays missing
      ++f->left;
      ++f->unlanded;
    }
    start_piece(*src, f, pos, std::move(g));
    pos += n;
  }
  piece_landed(f, ok());  // the starter's shares
  piece_done(f, ok());
}

void StreamingDevice::start_piece(source::Source& src, const std::shared_ptr<RunFetch>& f,
                                  uint64_t offset, FetchBudget::Grant grant) {
  const uint64_t n = grant.bytes();
  auto p = std::make_shared<Piece>();
  p->grant = std::move(grant);
  // No zero fill: the source writes every byte, or the piece is dropped.
  p->buf = std::make_unique_for_overwrite<std::byte[]>(n);
  p->offset = offset;
  p->bytes = n;
  const std::span<std::byte> buf(p->buf.get(), n);
  // On the source's I/O thread: only copies and hand-offs here, the store write goes to
  // the writer thread (store_writer.h says why).
  src.read_async(offset, buf, [this, f, p](Result<void> r) mutable {
    if (!r) {
      piece_landed(f, r);
      p.reset();
      piece_done(f, std::move(r));
      return;
    }
    store_.add_fetched(f->kind, p->bytes);
    if (!f->target.buf.empty())
      copy_overlap(p->offset, {p->buf.get(), p->bytes}, f->target.offset, f->target.buf);
    if (f->one_piece) {
      std::lock_guard lock(f->run.claim->m);
      f->run.claim->landed = p;
      f->run.claim->cv.notify_all();
    }
    // Submitted before the reader is told (piece_landed): a flush it sends next finds
    // the write queued, and waits for it (flush()).
    const uint64_t at = p->offset;  // read out before p moves (argument order)
    const std::span<const std::byte> bytes(p->buf.get(), p->bytes);
    // p moves: once the write is done the device may go (a read-ahead nobody waits for),
    // and nothing here may hold its budget then. piece_landed touches only f.
    writer_.submit(at, bytes, [this, f, p = std::move(p)](Result<void> w) mutable {
      p.reset();  // the buffer and its budget go now, before the run's end (a big region)
      piece_done(f, std::move(w));
    });
    piece_landed(f, ok());
  });
}

void StreamingDevice::piece_landed(const std::shared_ptr<RunFetch>& f, const Result<void>& r) {
  std::unique_lock lock(f->m);
  if (!r && f->land_result) f->land_result = r;
  if (--f->unlanded > 0) return;
  Result<void> result = f->land_result;
  lock.unlock();
  if (f->target.served) f->target.served(result);
}

void StreamingDevice::piece_done(const std::shared_ptr<RunFetch>& f, Result<void> r) {
  std::unique_lock lock(f->m);
  if (!r && f->result) f->result = std::move(r);
  if (--f->left > 0) return;
  Result<void> result = std::move(f->result);
  lock.unlock();
  const Run& run = f->run;
  if (result) {
    if (f->kind == FetchKind::Prefetch && prefetched_) {
      // Before the regions are present, so that any read that finds them present
      // finds them here too (and counts as a read of prefetched bytes).
      for (uint64_t i = run.first; i < run.first + run.count; ++i)
        prefetched_[i / 64].fetch_or(1ULL << (i % 64), std::memory_order_acq_rel);
    }
    store_.mark_present(run.first, run.count);  // after the data, never before
  }
  release(run, result);
  f->done(std::move(result));
}

Result<void> StreamingDevice::read_cold(uint64_t offset, std::span<std::byte> buf,
                                        uint64_t from, int round) {
  if (round >= kClaimRoundsMax) return Error::io("regions could not be made present");
  const uint64_t end = offset + buf.size();
  const uint64_t first = offset / region_size_, last = (end - 1) / region_size_;
  IMG_CHECK(from >= first && from <= last);
  ClaimSet set = claim(from, last);
  if (from > first) set.present.insert(set.present.begin(), Span{first, from - first, nullptr});
  // The bytes of [first, first + count) that the read wants, as a part of buf.
  auto part = [&](uint64_t f, uint64_t count) {
    const uint64_t a = std::max(offset, f * region_size_);
    const uint64_t b = std::min(end, (f + count) * region_size_);
    return std::pair{a, buf.subspan(a - offset, b - a)};
  };
  // Our runs: fetched, each piece copied into buf as it lands.
  struct Pending {
    std::mutex m;
    std::condition_variable cv;
    size_t left = 0;
    Result<void> result;
  };
  auto pending = std::make_shared<Pending>();
  pending->left = set.mine.size();
  const ReadTarget target{offset, buf, [pending](Result<void> r) {
                            std::lock_guard lock(pending->m);
                            if (!r && pending->result) pending->result = std::move(r);
                            if (--pending->left == 0) pending->cv.notify_all();
                          }};
  for (const Run& run : set.mine) {
    FetchBudget::Grant none;
    fetch_run(run, FetchKind::Demand, none, [](Result<void>) {}, &target);
  }
  // Meanwhile: present regions from the store, then what other requests fetch.
  Result<void> result = ok();
  for (const Span& sp : set.present) {
    auto [at, into] = part(sp.first, sp.count);
    result = read_exact_at(store_.data(), at, into);
    if (!result) break;
  }
  for (size_t i = 0; result && i < set.others.size(); ++i) {
    const Span& o = set.others[i];
    std::shared_ptr<const Piece> landed;
    {
      std::unique_lock lock(o.claim->m);
      o.claim->cv.wait(lock, [&] { return o.claim->done || o.claim->landed; });
      if (!o.claim->done) landed = o.claim->landed;
    }
    auto [at, into] = part(o.first, o.count);
    if (landed) copy_overlap(landed->offset, {landed->buf.get(), landed->bytes}, at, into);
    else if (all_present(o.first, o.first + o.count - 1))
      result = read_exact_at(store_.data(), at, into);
    else  // its fetch failed, or was a write's: look again
      result = read_cold(at, into, o.first, round + 1);
  }
  // Always: the callbacks write into buf until then.
  std::unique_lock lock(pending->m);
  pending->cv.wait(lock, [&] { return pending->left == 0; });
  if (result && !pending->result) result = pending->result;
  return result;
}

void StreamingDevice::read_ahead(uint64_t offset, uint64_t length) {
  if (limits_.readahead_bytes == 0 || store_.complete()) return;
  const uint64_t end = offset + length;
  bool sequential = false;
  for (std::atomic<uint64_t>& s : streams_) {
    uint64_t expected = offset;
    if (s.compare_exchange_strong(expected, end, std::memory_order_relaxed)) {
      sequential = true;
      break;
    }
  }
  if (!sequential) {
    streams_[stream_next_.fetch_add(1, std::memory_order_relaxed) % kReadStreamsMax].store(
        end, std::memory_order_relaxed);
    return;
  }
  // Look ahead once per region the reader enters, not at every read.
  const uint64_t cur = (end - 1) / region_size_;
  if (offset / region_size_ == cur && offset % region_size_ != 0) return;
  const uint64_t window = std::max<uint64_t>(1, limits_.readahead_bytes / region_size_);
  const uint64_t hi = std::min(store_.regions(), cur + 1 + window);
  uint64_t m = cur + 1;
  while (m < hi && store_.present(m)) ++m;
  if (m >= hi) return;
  const uint64_t window_end = std::min(hi * region_size_, size());
  const uint64_t bytes = std::min(limits_.piece_bytes, window_end - m * region_size_);
  FetchBudget::Grant grant = budget_.try_acquire(bytes, FetchPriority::Background);
  if (grant.bytes() == 0) return;  // the budget is busy: demand or hydration has it
  const uint64_t regions = std::max<uint64_t>(1, bytes / region_size_);
  ClaimSet set = claim(m, std::min(hi, m + regions) - 1);
  // Counted as demand: a reader will want these bytes next.
  for (const Run& run : set.mine) fetch_run(run, FetchKind::Demand, grant, [](Result<void>) {});
}

uint64_t StreamingDevice::fetch_background(uint64_t first, uint64_t count, FetchKind kind,
                                           std::function<void(Result<void>)> done) {
  IMG_CHECK(kind != FetchKind::Demand);
  return fetch_windows(first, count, kind, std::move(done));
}

uint64_t StreamingDevice::fetch_windows(uint64_t first, uint64_t count, FetchKind kind,
                                        std::function<void(Result<void>)> done) {
  struct Pending {
    std::mutex m;
    size_t left = 1;  // runs not landed, +1 while windows are still being started
    Result<void> result;
    std::function<void(Result<void>)> done;
  };
  auto pending = std::make_shared<Pending>();
  pending->done = std::move(done);
  auto run_done = [pending](Result<void> r) {
    std::unique_lock lock(pending->m);
    if (!r && pending->result) pending->result = std::move(r);
    if (--pending->left > 0) return;
    Result<void> result = std::move(pending->result);
    lock.unlock();
    pending->done(std::move(result));
  };
  const uint64_t window = std::max<uint64_t>(1, limits_.piece_bytes / region_size_);
  const uint64_t end = std::min(first + count, store_.regions());
  uint64_t claimed = 0;
  for (uint64_t w = first; w < end; w += window) {
    const uint64_t last = std::min(w + window, end) - 1;
    if (all_present(w, last)) continue;  // no need to wait for budget
    // The bytes first, then the claims: waiting for budget with claims held would make
    // demand reads of those regions wait behind the budget (and behind other demand).
    const uint64_t bytes = std::min(std::min((last + 1) * region_size_, size()) - w * region_size_,
                                    limits_.piece_bytes);
    FetchBudget::Grant grant = budget_.acquire(bytes, FetchPriority::Background);
    ClaimSet set = claim(w, last);
    for (const Run& run : set.mine) {
      claimed += run.count;
      {
        std::lock_guard lock(pending->m);
        ++pending->left;
      }
      fetch_run(run, kind, grant, run_done);
    }
    // What the window did not claim (present, or claimed by others) goes back here.
  }
  if (claimed == 0) {
    std::lock_guard lock(pending->m);
    IMG_CHECK(pending->left == 1);
    return 0;  // done is not called
  }
  run_done(ok());  // the starter's share
  return claimed;
}

Result<uint64_t> StreamingDevice::fill_hole(uint64_t first, uint64_t count) {
  ClaimSet set = claim(first, first + count - 1);
  uint64_t marked = 0;
  for (const Run& run : set.mine) {
    const uint64_t offset = run.first * region_size_;
    const uint64_t bytes = std::min(run.count * region_size_, size() - offset);
    // A crash may have left half a fetch in the data file: make it zero for real.
    auto r = zero_file_range(store_.data(), offset, bytes, true);
    if (r) {
      store_.mark_present(run.first, run.count);
      marked += run.count;
    }
    release(run, r);
    if (!r) {
      for (const Run& rest : set.mine)
        if (rest.first > run.first) release(rest, ok());
      return std::move(r).error();
    }
  }
  return marked;
}

// --- reads --------------------------------------------------------------------------

void StreamingDevice::count_read(uint64_t first, uint64_t last, bool waited, uint64_t wait_ns) {
  if (waited) store_.add_read_waited(wait_ns);
  else store_.add_read_local();
  if (!prefetched_) return;
  for (uint64_t r = first; r <= last; ++r) {
    const uint64_t bit = 1ULL << (r % 64);
    std::atomic<uint64_t>& w = prefetched_[r / 64];
    // Mostly clear: a load first keeps the common case free of atomic writes.
    if ((w.load(std::memory_order_acquire) & bit) &&
        (w.fetch_and(~bit, std::memory_order_acq_rel) & bit))
      store_.add_prefetch_read(store_.region_bytes(r));
  }
}

Result<void> StreamingDevice::read_nowait(uint64_t offset, std::span<std::byte> buf) {
  IMG_CHECK(!buf.empty() && offset + buf.size() <= size());
  const uint64_t first = offset / region_size_, last = (offset + buf.size() - 1) / region_size_;
  if (!all_present(first, last)) return Error::would_block();
  TRY(store_.data().read_at_nowait(offset, buf));
  count_read(first, last, false, 0);  // only once served: a would-block read comes again
  read_ahead(offset, buf.size());
  return ok();
}

Result<void> StreamingDevice::read(uint64_t offset, std::span<std::byte> buf) {
  IMG_CHECK(!buf.empty() && offset + buf.size() <= size());
  const uint64_t first = offset / region_size_, last = (offset + buf.size() - 1) / region_size_;
  read_ahead(offset, buf.size());
  uint64_t from = first;
  while (from <= last && store_.present(from)) ++from;
  if (from > last) {
    TRY(read_exact_at(store_.data(), offset, buf));
    count_read(first, last, false, 0);
    return ok();
  }
  const auto t0 = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(mu_);
    ++demand_waiting_;
  }
  Result<void> r = read_cold(offset, buf, from, 0);
  {
    std::lock_guard lock(mu_);
    --demand_waiting_;
  }
  if (!r) {
    store_.add_read_failed();  // counted in status: reads_failed
    return r;
  }
  const auto wait_ns = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                                 std::chrono::steady_clock::now() - t0)
                                                 .count());
  count_read(first, last, true, wait_ns);
  return ok();
}

Result<void> StreamingDevice::cache(uint64_t offset, uint64_t length) {
  IMG_CHECK(length > 0 && offset + length <= size());
  const uint64_t first = offset / region_size_, last = (offset + length - 1) / region_size_;
  if (all_present(first, last)) return ok();
  std::lock_guard lock(cache_mu_);
  if (cache_stopping_) return ok();
  // Advisory: a client that keeps more CACHEs waiting than this loses the newest ones
  // rather than growing a queue without end.
  if (cache_ranges_.size() >= kCacheRangesMax) {
    LOG_DEBUG("cache {}+{}: {} ranges wait already; dropped", offset, length, kCacheRangesMax);
    return ok();
  }
  cache_ranges_.push_back(CacheRange{first, last + 1});
  if (!cacher_.joinable()) cacher_ = std::thread([this] { cache_loop(); });
  cache_cv_.notify_all();
  return ok();
}

// The cache thread: one window of the oldest range at a time, at background priority
// (fetch_windows waits for the budget), a few windows in flight, one while demand waits.
void StreamingDevice::cache_loop() {
  using namespace std::chrono_literals;
  const uint64_t window = std::max<uint64_t>(1, limits_.piece_bytes / region_size_);
  std::unique_lock lock(cache_mu_);
  for (;;) {
    if (cache_stopping_) return;
    if (cache_ranges_.empty()) {
      cache_cv_.wait(lock);
      continue;
    }
    const unsigned limit = demand_waiting() > 0 ? 1 : kCacheWindowsInFlightMax;
    if (cache_in_flight_ >= limit) {
      cache_cv_.wait_for(lock, 5ms);  // demand_waiting has no signal: look again soon
      continue;
    }
    CacheRange& r = cache_ranges_.front();
    const uint64_t w = r.next, n = std::min(window, r.end - r.next);
    r.next += n;
    if (r.next == r.end) cache_ranges_.pop_front();
    ++cache_in_flight_;
    lock.unlock();
    auto landed = [this](Result<void>) {
      std::lock_guard l(cache_mu_);  // notified under the lock: the destructor waits on it
      --cache_in_flight_;
      cache_cv_.notify_all();
    };
    // Counted as demand (a client asked), fetched at background priority.
    const uint64_t claimed = fetch_windows(w, n, FetchKind::Demand, landed);
    lock.lock();
    if (claimed == 0) --cache_in_flight_;
  }
}

// --- writes -------------------------------------------------------------------------

Result<void> StreamingDevice::write_region_merged(uint64_t region, uint64_t offset,
                                                  uint64_t length,
                                                  std::span<const std::byte> data) {
  source::Source* src = current_source();
  if (!src) return Error{ESHUTDOWN, "source detached while regions are missing"};
  const uint64_t start = region * region_size_, end = start + store_.region_bytes(region);
  IMG_CHECK(offset >= start && offset + length <= end);
  IMG_CHECK(data.empty() || data.size() == length);
  for (uint64_t pos = start; pos < end;) {
    const uint64_t n = std::min(limits_.piece_bytes, end - pos);
    // Demand priority: a client waits, and this write holds the region's claim.
    FetchBudget::Grant grant = budget_.acquire(n, FetchPriority::Demand);
    auto buf = std::make_unique_for_overwrite<std::byte[]>(n);
    const std::span<std::byte> piece(buf.get(), n);
    TRY(src->read(pos, piece));
    store_.add_fetched(FetchKind::Demand, n);
    // The part of the client's bytes that falls in this piece.
    const uint64_t a = std::max(offset, pos), b = std::min(offset + length, pos + n);
    if (a < b) {
      std::byte* to = piece.data() + (a - pos);
      if (data.empty()) std::fill(to, to + (b - a), std::byte{0});
      else std::copy_n(data.begin() + static_cast<ptrdiff_t>(a - offset), b - a, to);
    }
    TRY(write_all_at(store_.data(), pos, piece));
    pos += n;
  }
  return ok();
}

bool StreamingDevice::needs_merge(const std::vector<Run>& mine, uint64_t offset,
                                   uint64_t length) const {
  const uint64_t end = offset + length;
  for (uint64_t reg : {offset / region_size_, (end - 1) / region_size_}) {
    const uint64_t rs = reg * region_size_, re = rs + store_.region_bytes(reg);
    const bool partial = offset > rs || end < re;
    for (const Run& run : mine)
      if (partial && reg >= run.first && reg < run.first + run.count) return true;
  }
  return false;
}

// The first and the last region of a write may be covered only in part; when they are
// missing (claimed by this write), their other bytes come from the source.
Result<void> StreamingDevice::merge_partial_edges(const std::vector<Run>& mine, uint64_t offset,
                                                  uint64_t length,
                                                  std::span<const std::byte> data) {
  const uint64_t end = offset + length;
  const uint64_t first = offset / region_size_, last = (end - 1) / region_size_;
  for (uint64_t reg : {first, last}) {
    const uint64_t rs = reg * region_size_, re = rs + store_.region_bytes(reg);
    const bool claimed = std::any_of(mine.begin(), mine.end(), [&](const Run& run) {
      return reg >= run.first && reg < run.first + run.count;
    });
    if (claimed && (offset > rs || end < re)) {
      const uint64_t a = std::max(offset, rs), b = std::min(end, re);
      TRY(write_region_merged(reg, a, b - a,
                              data.empty() ? data : data.subspan(a - offset, b - a)));
    }
    if (first == last) break;
  }
  return ok();
}

Result<void> StreamingDevice::write_nowait(uint64_t offset, std::span<const std::byte> data,
                                           Durability d) {
  IMG_CHECK(!data.empty() && offset + data.size() <= size());
  // Inline only when nothing must be fetched or committed.
  if (d == Durability::Fua ||
      !all_present(offset / region_size_, (offset + data.size() - 1) / region_size_))
    return Error::would_block();
  return write_all_at(store_.data(), offset, data);
}

Result<void> StreamingDevice::write(uint64_t offset, std::span<const std::byte> data,
                                    Durability d) {
  IMG_CHECK(!data.empty() && offset + data.size() <= size());
  const uint64_t end = offset + data.size();
  const uint64_t first = offset / region_size_, last = (end - 1) / region_size_;
  return with_claims(first, last, d, [&](const std::vector<Run>& mine) -> Result<void> {
    TRY(merge_partial_edges(mine, offset, data.size(), data));
    return write_all_at(store_.data(), offset, data);
  });
}

Result<void> StreamingDevice::with_claims(
    uint64_t first, uint64_t last, Durability d,
    const std::function<Result<void>(const std::vector<Run>&)>& work) {
  std::vector<Run> mine = TRY(claim_exclusive(first, last));
  Result<void> r = work(mine);
  if (r)
    for (const Run& run : mine) store_.mark_present(run.first, run.count);
  release_all(mine, r);
  TRY(r);
  if (d == Durability::Fua) TRY(store_.commit());
  return ok();
}

Result<void> StreamingDevice::write_zeroes(uint64_t offset, uint64_t length, ZeroFlags z,
                                           Durability d) {
  IMG_CHECK(length > 0 && offset + length <= size());
  const uint64_t end = offset + length;
  const uint64_t first = offset / region_size_, last = (end - 1) / region_size_;
  return with_claims(first, last, d, [&](const std::vector<Run>& mine) -> Result<void> {
    if (z.fast_only && needs_merge(mine, offset, length))
      return Error{ENOTSUP, "zeroing part of a region not yet local is not fast"};
    TRY(merge_partial_edges(mine, offset, length, {}));
    return zero_file_range(store_.data(), offset, length, z.may_trim);
  });
}

Result<void> StreamingDevice::trim(uint64_t offset, uint64_t length, Durability d) {
  IMG_CHECK(length > 0 && offset + length <= size());
  // Only whole regions are worth anything: a trimmed missing region needs no fetch, ever.
  const uint64_t first = (offset + region_size_ - 1) / region_size_;
  const uint64_t end = offset + length;
  const uint64_t last_end = end == size() ? store_.regions() : end / region_size_;
  if (first >= last_end) return ok();
  const uint64_t a = first * region_size_, b = std::min(last_end * region_size_, size());
  // Trim is a hint, but a region marked present must read back as something defined.
  return with_claims(first, last_end - 1, d, [&](const std::vector<Run>&) {
    return zero_file_range(store_.data(), a, b - a, true);
  });
}

// Fetched regions whose store write is queued are made present first, so that a read
// followed by a flush commits what the read fetched (as before the writer thread).
Result<void> StreamingDevice::flush() {
  writer_.drain();
  return store_.commit();
}

// --- block status -------------------------------------------------------------------

std::vector<std::string> StreamingDevice::meta_contexts() const {
  return {kBaseAllocation, kPresentContext};
}

Result<void> StreamingDevice::status_allocation(uint64_t offset, uint64_t length,
                                                std::vector<Extent>& out) {
  // Present regions: the local file's holes; missing regions: the source's.
  const uint64_t end = offset + length;
  uint64_t pos = offset;
  while (pos < end && out.size() < limits::kStatusAllocationExtentsMax) {
    const uint64_t r = pos / region_size_;
    const bool here = store_.present(r);
    uint64_t run_end = pos;
    for (uint64_t q = r; q * region_size_ < end && store_.present(q) == here; ++q)
      run_end = std::min(end, (q + 1) * region_size_);
    if (here) {
      TRY(file_extents(store_.data(), pos, run_end - pos, out, limits::kStatusLocalRunExtentsMax));
    } else if (source::Source* src = current_source()) {
      TRY(src->block_status(pos, run_end - pos, out));
    } else {
      out.push_back(Extent{run_end - pos, 0});
    }
    pos = offset;
    for (const Extent& e : out) pos += e.length;
  }
  return ok();
}

Result<void> StreamingDevice::block_status(size_t context, uint64_t offset, uint64_t length,
                                           std::vector<Extent>& out) {
  IMG_CHECK(length > 0 && offset + length <= size() && context < 2);
  // Both contexts tell what is local: a region whose read has returned is, once its
  // queued store write is done (a client that reads, then asks, sees it present).
  writer_.drain();
  if (context == 0) return status_allocation(offset, length, out);
  const uint64_t end = offset + length;
  for (uint64_t pos = offset; pos < end && out.size() < limits::kStatusPresentExtentsMax;) {
    const bool here = store_.present(pos / region_size_);
    uint64_t next = std::min(end, (pos / region_size_ + 1) * region_size_);
    while (next < end && store_.present(next / region_size_) == here)
      next = std::min(end, next + region_size_);
    out.push_back(Extent{next - pos, here ? kStatePresent : 0});
    pos = next;
  }
  return ok();
}

}  // namespace imgstream::stream
