// Hydrator: copies every missing region of a StreamingDevice from its source in the
// background, so that the source can be let go.
//
// - Large contiguous batches (batch_bytes), several in flight (in_flight).
// - Source holes (base:allocation zero extents) are not fetched: their regions are made
//   zero locally and marked present.
// - Demand reads come first: while one waits on the source, the hydrator keeps at most
//   one batch in flight (never none, so it never starves either).
// - With a prefetch list, its runs are fetched first, in order, in the same coalesced
//   batches; then ordinary hydration goes on from the start of the image.
// - A token bucket limits the rate of ordinary hydration (not of the prefetch: a boot
//   profile is a few percent of the image, and it is wanted now); pause() / resume() /
//   set_rate() work while it runs.
// - prefetch_only: the prefetch list and nothing more; the store completes on demand.
// - A batch that fails (the source gave up after its I/O timeout) puts the store in the
//   error state with the reason and pauses hydration, visible in status; hydration tries
//   again by itself after a backoff (1 s, doubling to kRetryBackoffMax), so a source that
//   comes back is used again without anyone running `ctl resume`. The state stays
//   `error` until a batch succeeds. resume() tries again at once; pause() stops the
//   retries until resume().
// - Under a rate limit batches are smaller (about a quarter second's worth each), so the
//   rate is kept smoothly rather than in bursts of batch_bytes, and the fetched counters
//   (status, its rate and ETA) move in small steps.
// - Ordinary hydration holds back while the machine is busy being served locally, and
//   while it boots from a prefetched boot set (pace: hydration_pace.h); off unless
//   pace.idle_after is set (`stream --idle-after`, default 2 s).
//
// Lock contract: one thread of its own runs the loop (start() to stop()); batches complete
// on the source's threads (on_batch_done). Every field below mu_ is guarded by mu_; the
// public methods take it and may be called from any thread; on_complete runs on the
// loop's thread without mu_ held (it may call back into status but not stop()).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "base/limits.h"
#include "source/source.h"
#include "store/local_store.h"
#include "stream/hydration_pace.h"
#include "stream/streaming_device.h"

namespace imgstream::stream {

// A run of regions to fetch first, in the order given (a boot profile's prediction).
struct PrefetchRun {
  uint64_t first_region = 0;
  uint64_t count = 0;
};

struct HydratorOptions {
  // Fetched first, in this order, before ordinary hydration (issue 4: boot profiles).
  std::vector<PrefetchRun> prefetch;
  uint64_t batch_bytes = 8u << 20;
  unsigned in_flight = 4;
  uint64_t rate_bytes_per_second = 0;  // 0: unlimited; the prefetch is never limited
  bool start_paused = false;
  // Fetch the prefetch list and stop there (`stream --no-background --profile`).
  bool prefetch_only = false;
  // When ordinary hydration holds back for the machine (hydration_pace.h).
  PaceOptions pace;
};

inline constexpr unsigned kHydratorInFlightMax = limits::kHydratorInFlightMax;
inline constexpr std::chrono::milliseconds kRetryBackoffFirst{1'000};
inline constexpr std::chrono::milliseconds kRetryBackoffMax = limits::kRetryBackoffMax;
inline constexpr unsigned kRateBatchesPerSecond = 4;
inline constexpr uint64_t kHoleWindowBytes = limits::kHoleWindowBytes;
// How often a held hydration looks at the machine's activity again.
inline constexpr std::chrono::milliseconds kPacePoll{20};

class Hydrator {
 public:
  // `on_complete` runs on the hydrator's thread once every region is present.
  Hydrator(StreamingDevice& dev, store::LocalStore& store, source::Source& src,
           HydratorOptions opt, std::function<void()> on_complete);
  ~Hydrator();  // stops and waits for batches in flight

  void start();
  // Asks the loop to end without waiting for it: a batch that fails from now on (its
  // source closed for the stop) is not a hydration error.
  void request_stop();
  void stop();  // request_stop(), then waits for the loop and the batches in flight
  void pause();
  void resume();
  void set_rate(uint64_t bytes_per_second);
  bool paused() const;
  uint64_t rate() const;
  // Seconds until hydration tries again by itself after a failure; none when it is not
  // waiting to (running, paused by the user, or stopping).
  std::optional<double> retry_in_seconds() const;
  // Whether ordinary hydration holds back for the machine now (hydration_pace.h).
  PaceState pace_state() const;

 private:
  void loop();
  bool wait_turn(std::unique_lock<std::mutex>& lock);
  // Splits [first, first+count) at the source's holes; returns the regions in the first
  // piece and whether it is a hole.
  Result<std::pair<uint64_t, bool>> classify(uint64_t first, uint64_t count);
  void throttle(uint64_t bytes, std::unique_lock<std::mutex>& lock);
  // With mu_ held: whether the pace lets an ordinary batch start now.
  bool pace_allows_locked();
  void on_batch_done(Result<void> r);
  // With mu_ held: the source failed; pause and schedule a retry.
  void fail_locked(const Error& e);
  // With mu_ held: the retry is due; go on (the state stays error until a batch succeeds).
  void retry_if_due_locked();
  // Regions per batch now (smaller under a rate limit).
  uint64_t batch_regions_locked() const;
  // The next batch: from the prefetch list while it lasts (from_profile), else at the
  // cursor. False when nothing is missing.
  bool next_batch(uint64_t cursor, uint64_t batch_regions, uint64_t& first, uint64_t& count,
                  bool& from_profile);

  StreamingDevice& dev_;
  store::LocalStore& store_;
  source::Source& src_;
  HydratorOptions opt_;
  std::function<void()> on_complete_;

  mutable std::mutex mu_;
  std::condition_variable cv_;  // under mu_: wakes the loop and waits for in_flight_ == 0
  bool stopping_ = false;
  bool paused_ = false;
  // Paused by a failure, not by the user: retried at retry_at_ (then next_backoff_ doubles).
  bool failed_ = false;
  bool retrying_ = false;  // a retry is under way: a success ends the error state
  std::chrono::steady_clock::time_point retry_at_;
  std::chrono::milliseconds next_backoff_ = kRetryBackoffFirst;
  unsigned in_flight_ = 0;
  // Token bucket.
  double tokens_ = 0;
  std::chrono::steady_clock::time_point last_refill_;
  // Cached source extents: [hole_window_start_, +sum of lengths).
  uint64_t window_start_ = 0;
  std::vector<Extent> window_;
  // Position in opt_.prefetch: run index and regions of that run already handed out.
  size_t prefetch_run_ = 0;
  uint64_t prefetch_done_ = 0;
  // Made by start(); the store's prefetch counters then are the baseline of this run's.
  std::optional<HydrationPace> pace_;
  uint64_t prefetched_before_ = 0, prefetch_read_before_ = 0;

  std::thread thread_;
};

}  // namespace imgstream::stream
