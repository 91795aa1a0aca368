// HydrationPace: whether ordinary background hydration may start a batch now, or must
// hold back because the machine is busy (issue 13, point 7).
//
// Why. With a boot profile the machine finds everything it reads in the store, yet
// hydration at full speed slowed a Debian boot under qemu TCG by 10-25%: on a machine of
// two cores the copy (the streamer's copies and store writes, the kernel's writeback, and
// on a shared host the source's side) takes CPU from the machine, as it would take the
// link from it on a real network. Such a boot gains nothing from hydration while it runs;
// hydration can wait until the machine is quiet and then go at full speed. dm-clone does
// the same: it pauses background hydration while user I/O is in flight.
//
// The rule, sampled before each ordinary batch (never for the prefetch, which is what the
// boot needs):
//
//   state        | when                                              | batches
//   -------------+---------------------------------------------------+----------------------
//   booting      | a boot set was prefetched in this run, less than   | none
//                | kBootSetReadFraction of it has been read, and      |
//                | boot_deadline has not passed since start           |
//   busy (local) | a client read in the last idle_after, none of them | none, for hold_max;
//                | waited on the source, none waits now               | then one a trickle
//   free         | otherwise (quiet, or the machine waits on the      | as many as allowed
//                | source: hydration ahead of it saves it waits)      |
//
// A machine that reads what it does not have yet is not held back (that is the case of
// bench/stream.sh row 4's random reader, whom hydration running ahead helps); the demand
// path keeps hydration to one batch in flight meanwhile (Hydrator::wait_turn). A machine
// busy for longer than hold_max still gets one batch every trickle_interval, so hydration
// never starves; the boot's own hold ends at boot_deadline at the latest.
//
// Pure: time and activity come in as arguments, so that tests drive it with a fake clock.
// Not thread-safe: the hydrator's loop owns it (under the hydrator's mutex).
#pragma once

#include <chrono>
#include <cstdint>

#include "base/limits.h"

namespace imgstream::stream {

using PaceClock = std::chrono::steady_clock;

// The boot counts as done once this share of the bytes prefetched in this run was read.
inline constexpr double kBootSetReadFraction = 0.9;
inline constexpr std::chrono::milliseconds kIdleAfterDefault{2'000};
inline constexpr std::chrono::milliseconds kBusyHoldMax = limits::kBusyHoldMax;
inline constexpr std::chrono::milliseconds kTrickleInterval{1'000};
// A boot profile's boot is held for at most this multiple of its recorded duration (the
// last first-read time) plus idle_after; without a recorded duration, for kBusyHoldMax.
inline constexpr unsigned kBootDeadlineFactor = 2;

struct PaceOptions {
  // A machine that read nothing for this long is quiet. 0: never hold back.
  std::chrono::milliseconds idle_after{0};
  std::chrono::milliseconds hold_max = kBusyHoldMax;
  std::chrono::milliseconds trickle_interval = kTrickleInterval;
  // From start, the longest a boot set's boot holds hydration back.
  std::chrono::milliseconds boot_deadline = kBusyHoldMax;
};

// What the machine has done, as monotonic counters sampled now.
struct Activity {
  uint64_t reads = 0;                // client reads served, local or not
  uint64_t reads_waited = 0;         // of those, reads that waited on the source
  uint64_t demand_waiting = 0;       // requests waiting on the source right now
  uint64_t boot_set_bytes = 0;       // bytes prefetched in this run (0: no boot set)
  uint64_t boot_set_read_bytes = 0;  // of those, bytes the machine has read since
};

enum class PaceState { Free, Booting, Busy };

class HydrationPace {
 public:
  HydrationPace(PaceOptions o, PaceClock::time_point start);

  // Takes in the activity at `now` (times must not go back) and tells whether an ordinary
  // batch may start now. A true answer while held is the trickle's: it counts as started.
  bool may_start(PaceClock::time_point now, const Activity& a);
  // The state of the last may_start.
  PaceState state() const { return state_; }

 private:
  void observe(PaceClock::time_point now, const Activity& a);
  bool booting(PaceClock::time_point now, const Activity& a) const;

  const PaceOptions opt_;
  const PaceClock::time_point start_;
  bool seen_ = false;  // a first sample was taken
  uint64_t reads_ = 0, reads_waited_ = 0;
  // Times of the last read and of the last read that waited; none yet when unset.
  PaceClock::time_point last_read_{}, last_wait_{};
  bool any_read_ = false, any_wait_ = false;
  PaceState state_ = PaceState::Free;
  PaceClock::time_point busy_since_{};  // start of the current busy spell
  PaceClock::time_point last_trickle_{};
  bool trickled_ = false;
};

}  // namespace imgstream::stream
