#include "stream/hydrator.h"

#include <algorithm>

#include "base/check.h"
#include "base/log.h"
#include "base/stop.h"

namespace imgstream::stream {

using namespace std::chrono_literals;

Hydrator::Hydrator(StreamingDevice& dev, store::LocalStore& store, source::Source& src,
                   HydratorOptions opt, std::function<void()> on_complete)
    : dev_(dev), store_(store), src_(src), opt_(opt), on_complete_(std::move(on_complete)) {
  opt_.in_flight = std::clamp(opt_.in_flight, 1u, kHydratorInFlightMax);
  opt_.batch_bytes = std::max<uint64_t>(opt_.batch_bytes, store.region_size());
  paused_ = opt_.start_paused;
}

Hydrator::~Hydrator() { stop(); }

void Hydrator::start() {
  IMG_CHECK(!thread_.joinable());
  last_refill_ = std::chrono::steady_clock::now();
  tokens_ = static_cast<double>(opt_.batch_bytes);
  const store::Counters c = store_.counters();
  prefetched_before_ = c.bytes_fetched_prefetch;
  prefetch_read_before_ = c.prefetch_bytes_read;
  pace_.emplace(opt_.pace, PaceClock::now());
  thread_ = std::thread([this] { loop(); });
}

void Hydrator::request_stop() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
}

void Hydrator::stop() {
  request_stop();
  if (thread_.joinable()) thread_.join();
  // Batches in flight hold claims on the device: wait for them to land.
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return in_flight_ == 0; });
}

void Hydrator::pause() {
  std::lock_guard lock(mu_);
  paused_ = true;
  failed_ = false;  // the user's pause holds: no retry by itself
  if (store_.state() == store::StoreState::Streaming) store_.set_state(store::StoreState::Paused);
}

void Hydrator::resume() {
  {
    std::lock_guard lock(mu_);
    paused_ = false;
    failed_ = false;
    retrying_ = false;
    next_backoff_ = kRetryBackoffFirst;
    const auto s = store_.state();
    if (s == store::StoreState::Paused || s == store::StoreState::Error)
      store_.set_state(store::StoreState::Streaming);
  }
  cv_.notify_all();
}

void Hydrator::set_rate(uint64_t bytes_per_second) {
  {
    std::lock_guard lock(mu_);
    opt_.rate_bytes_per_second = bytes_per_second;
  }
  cv_.notify_all();
}

bool Hydrator::paused() const {
  std::lock_guard lock(mu_);
  return paused_;
}

uint64_t Hydrator::rate() const {
  std::lock_guard lock(mu_);
  return opt_.rate_bytes_per_second;
}

std::optional<double> Hydrator::retry_in_seconds() const {
  std::lock_guard lock(mu_);
  if (!paused_ || !failed_ || stopping_) return std::nullopt;
  const auto left = retry_at_ - std::chrono::steady_clock::now();
  return std::max(0.0, std::chrono::duration<double>(left).count());
}

PaceState Hydrator::pace_state() const {
  std::lock_guard lock(mu_);
  return pace_ && !paused_ ? pace_->state() : PaceState::Free;
}

void Hydrator::fail_locked(const Error& e) {
  // A source closed for a stop (SIGINT, Streamer::interrupt) is no failure of the source:
  // the store keeps the state it had, and the next run goes on.
  if (stopping_ || stop_requested()) {
    paused_ = true;
    return;
  }
  paused_ = failed_ = true;
  retrying_ = false;
  retry_at_ = std::chrono::steady_clock::now() + next_backoff_;
  LOG_WARN("hydration paused: {}; trying again in {} s", e.message,
           std::chrono::duration_cast<std::chrono::seconds>(next_backoff_).count());
  next_backoff_ = std::min(2 * next_backoff_, kRetryBackoffMax);
  store_.set_state(store::StoreState::Error, e.message);
}

void Hydrator::retry_if_due_locked() {
  if (!paused_ || !failed_ || std::chrono::steady_clock::now() < retry_at_) return;
  LOG_INFO("hydration: trying the source again");
  paused_ = failed_ = false;
  retrying_ = true;
}

uint64_t Hydrator::batch_regions_locked() const {
  uint64_t bytes = opt_.batch_bytes;
  if (const uint64_t rate = opt_.rate_bytes_per_second; rate > 0)
    bytes = std::min(bytes, std::max<uint64_t>(store_.region_size(), rate / kRateBatchesPerSecond));
  return std::max<uint64_t>(1, bytes / store_.region_size());
}

// Waits until another batch may start. False when stopping.
bool Hydrator::wait_turn(std::unique_lock<std::mutex>& lock) {
  for (;;) {
    if (stopping_) return false;
    retry_if_due_locked();
    // Demand reads waiting on the source: one batch at a time, so their requests are not
    // queued behind ours, but never zero, so hydration always progresses.
    const unsigned limit = dev_.demand_waiting() > 0 ? 1 : opt_.in_flight;
    if (!paused_ && in_flight_ < limit) return true;
    cv_.wait_for(lock, 5ms);
  }
}

void Hydrator::throttle(uint64_t bytes, std::unique_lock<std::mutex>& lock) {
  for (;;) {
    const uint64_t rate = opt_.rate_bytes_per_second;
    if (rate == 0 || stopping_) return;
    const auto now = std::chrono::steady_clock::now();
    const double elapsed = std::chrono::duration<double>(now - last_refill_).count();
    last_refill_ = now;
    // A burst after an idle spell is at most one batch of the rate's size.
    const double cap = static_cast<double>(
        std::max(bytes, std::min(opt_.batch_bytes, rate / kRateBatchesPerSecond)));
    tokens_ = std::min(cap, tokens_ + elapsed * static_cast<double>(rate));
    if (tokens_ >= static_cast<double>(bytes)) {
      tokens_ -= static_cast<double>(bytes);
      return;
    }
    const double wait_s = (static_cast<double>(bytes) - tokens_) / static_cast<double>(rate);
    cv_.wait_for(lock, std::chrono::duration<double>(std::min(wait_s, 0.1)));
  }
}

bool Hydrator::pace_allows_locked() {
  if (opt_.pace.idle_after.count() <= 0) return true;
  const store::Counters c = store_.counters();
  Activity a;
  a.reads = c.reads_local + c.reads_waited;
  a.reads_waited = c.reads_waited;
  a.demand_waiting = dev_.demand_waiting();
  a.boot_set_bytes = c.bytes_fetched_prefetch - prefetched_before_;
  a.boot_set_read_bytes = c.prefetch_bytes_read - prefetch_read_before_;
  const PaceState before = pace_->state();
  const bool allowed = pace_->may_start(PaceClock::now(), a);
  if (pace_->state() != before) {
    static constexpr const char* kNames[] = {
        "goes on (the machine is quiet or waits on the source)",
        "holds back while the machine boots", "holds back while the machine is busy"};
    LOG_DEBUG("hydration {}", kNames[static_cast<int>(pace_->state())]);
  }
  return allowed;
}

Result<std::pair<uint64_t, bool>> Hydrator::classify(uint64_t first, uint64_t count) {
  const uint64_t rs = store_.region_size();
  const uint64_t size = store_.header().image_size;
  auto window_end = [&] {
    uint64_t e = window_start_;
    for (const Extent& x : window_) e += x.length;
    return e;
  };
  const uint64_t start = first * rs;
  if (start < window_start_ || start >= window_end()) {
    window_.clear();
    window_start_ = start;
    TRY(src_.block_status(start, std::min(kHoleWindowBytes, size - start), window_));
  }
  // Is [a, b) entirely zero in the window? (Past the window: unknown, so data.)
  auto zero = [&](uint64_t a, uint64_t b) {
    uint64_t pos = window_start_;
    for (const Extent& x : window_) {
      const uint64_t end = pos + x.length;
      if (end > a && pos < b && !(x.flags & kStateZero)) return false;
      if (end >= b) return true;
      pos = end;
    }
    return false;
  };
  const bool hole = zero(start, start + store_.region_bytes(first));
  uint64_t n = 1;
  while (n < count) {
    const uint64_t a = (first + n) * rs;
    if (zero(a, a + store_.region_bytes(first + n)) != hole) break;
    ++n;
  }
  return std::make_pair(n, hole);
}

void Hydrator::on_batch_done(Result<void> r) {
  {
    std::lock_guard lock(mu_);
    --in_flight_;
    if (!r && !paused_ && !stopping_) {
      fail_locked(r.error());
    } else if (r && retrying_) {  // the source is back
      LOG_INFO("hydration: the source answers again");
      retrying_ = false;
      next_backoff_ = kRetryBackoffFirst;
      if (store_.state() == store::StoreState::Error)
        store_.set_state(paused_ ? store::StoreState::Paused : store::StoreState::Streaming);
    }
  }
  cv_.notify_all();
}

bool Hydrator::next_batch(uint64_t cursor, uint64_t batch_regions, uint64_t& first,
                          uint64_t& count, bool& from_profile) {
  from_profile = false;
  const uint64_t regions = store_.regions();
  // The profile first: skip what is present already, coalesce the rest of the run.
  while (prefetch_run_ < opt_.prefetch.size()) {
    const PrefetchRun& run = opt_.prefetch[prefetch_run_];
    const uint64_t end = std::min(run.first_region + run.count, regions);
    uint64_t r = run.first_region + prefetch_done_;
    while (r < end && store_.present(r)) ++r;
    if (r >= end) {
      ++prefetch_run_;
      prefetch_done_ = 0;
      continue;
    }
    count = 1;
    while (count < batch_regions && r + count < end && !store_.present(r + count)) ++count;
    first = r;
    from_profile = true;
    return true;
  }
  uint64_t r = store_.next_missing(cursor);
  if (r >= regions) r = store_.next_missing(0);
  if (r >= regions) return false;
  count = 1;
  while (count < batch_regions && r + count < regions && !store_.present(r + count)) ++count;
  first = r;
  return true;
}

void Hydrator::loop() {
  uint64_t cursor = 0;
  std::unique_lock lock(mu_);
  auto fail = [&](const Error& e) { fail_locked(e); };  // with mu_ held
  while (wait_turn(lock)) {
    const uint64_t batch_regions = batch_regions_locked();
    if (store_.complete()) {
      cv_.wait(lock, [&] { return in_flight_ == 0; });
      lock.unlock();
      on_complete_();
      return;
    }
    uint64_t r = 0, count = 0;
    bool from_profile = false;
    const bool more = next_batch(cursor, batch_regions, r, count, from_profile);
    if (opt_.prefetch_only && !from_profile) {
      LOG_INFO("prefetch done; no background hydration (fetching on demand only)");
      break;
    }
    if (!more) {
      cv_.wait_for(lock, 5ms);  // all that is missing is claimed by someone: let it land
      continue;
    }
    if (!from_profile && !pace_allows_locked()) {
      cv_.wait_for(lock, kPacePoll);  // the machine is busy: look again soon
      continue;
    }
    lock.unlock();
    auto cls = classify(r, count);
    lock.lock();
    if (!cls) {
      fail(cls.error());
      continue;
    }
    const auto [n, hole] = *cls;
    if (from_profile) {
      prefetch_done_ = r + n - opt_.prefetch[prefetch_run_].first_region;
    } else {
      cursor = r + n;
    }
    if (hole) {
      lock.unlock();
      auto m = dev_.fill_hole(r, n);
      lock.lock();
      if (!m) fail(m.error());
      continue;
    }
    if (!from_profile) throttle(n * store_.region_size(), lock);
    if (stopping_) break;
    if (paused_) continue;  // paused while waiting for tokens: fetch nothing more
    ++in_flight_;
    lock.unlock();
    const auto kind = from_profile ? store::FetchKind::Prefetch : store::FetchKind::Background;
    const uint64_t claimed = dev_.fetch_background(r, n, kind, [this](Result<void> res) {
      on_batch_done(std::move(res));
    });
    lock.lock();
    if (claimed == 0) {
      --in_flight_;  // demand reads have them; look further on
      cv_.wait_for(lock, 1ms);
    }
  }
}

}  // namespace imgstream::stream
