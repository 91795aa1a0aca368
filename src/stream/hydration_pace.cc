#include "stream/hydration_pace.h"

namespace imgstream::stream {

HydrationPace::HydrationPace(PaceOptions o, PaceClock::time_point start) : opt_(o), start_(start) {}

void HydrationPace::observe(PaceClock::time_point now, const Activity& a) {
  if (!seen_) {  // the counters' totals so far are the baseline, no activity
    seen_ = true;
    reads_ = a.reads;
    reads_waited_ = a.reads_waited;
    return;
  }
  if (a.reads != reads_) {
    reads_ = a.reads;
    last_read_ = now;
    any_read_ = true;
  }
  if (a.reads_waited != reads_waited_) {
    reads_waited_ = a.reads_waited;
    last_wait_ = now;
    any_wait_ = true;
  }
}

bool HydrationPace::booting(PaceClock::time_point now, const Activity& a) const {
  if (a.boot_set_bytes == 0 || now - start_ >= opt_.boot_deadline) return false;
  return static_cast<double>(a.boot_set_read_bytes) <
         kBootSetReadFraction * static_cast<double>(a.boot_set_bytes);
}

bool HydrationPace::may_start(PaceClock::time_point now, const Activity& a) {
  observe(now, a);
  const PaceState before = state_;
  const auto recent = [&](bool any, PaceClock::time_point t) {
    return any && now - t < opt_.idle_after;
  };
  const bool paced = opt_.idle_after.count() > 0;  // --idle-after 0: full speed always
  if (paced && booting(now, a)) {
    state_ = PaceState::Booting;
  } else if (paced && recent(any_read_, last_read_) && !recent(any_wait_, last_wait_) &&
             a.demand_waiting == 0) {
    state_ = PaceState::Busy;
  } else {
    state_ = PaceState::Free;
  }
  if (state_ == PaceState::Free) return true;
  if (state_ == PaceState::Booting) return false;
  // Busy: held for hold_max from the start of the spell, then one batch per interval.
  if (before != PaceState::Busy) {
    busy_since_ = now;
    trickled_ = false;
  }
  if (now - busy_since_ < opt_.hold_max) return false;
  if (trickled_ && now - last_trickle_ < opt_.trickle_interval) return false;
  trickled_ = true;
  last_trickle_ = now;
  return true;
}

}  // namespace imgstream::stream
