// RateMeter: the rate at which a count grows (bytes fetched, bytes copied), smoothed so
// that a display of it is steady when the count moves in steps (a batch of 8 MiB lands
// at once, then nothing for two seconds).
//
// Until `window` has passed since the first sample the rate is the plain average since
// then; after that, an exponentially weighted moving average with time constant
// `window`, weighted by the time between samples (so samples need not be regular).
// Not thread-safe: callers that sample and read from different threads hold a lock.
#pragma once

#include <chrono>
#include <cmath>
#include <cstdint>
#include <optional>

namespace imgstream {

inline constexpr std::chrono::milliseconds kRateWindowDefault{5'000};

class RateMeter {
 public:
  using Clock = std::chrono::steady_clock;

  explicit RateMeter(std::chrono::milliseconds window = kRateWindowDefault)
      : window_s_(std::chrono::duration<double>(window).count()) {}

  // The count is `total` at `now`. A count that went down starts the meter again.
  void sample(uint64_t total, Clock::time_point now = Clock::now()) {
    if (!started_ || total < last_total_) {
      started_ = true;
      first_ = last_ = now;
      first_total_ = last_total_ = total;
      rate_ = 0;
      return;
    }
    const double dt = std::chrono::duration<double>(now - last_).count();
    if (dt < kSampleSecondsMin) return;  // too close to tell: the next sample counts it
    const double since_first = std::chrono::duration<double>(now - first_).count();
    if (since_first < window_s_) {
      rate_ = double(total - first_total_) / since_first;
    } else {
      const double instant = double(total - last_total_) / dt;
      rate_ += (1 - std::exp(-dt / window_s_)) * (instant - rate_);
    }
    last_ = now;
    last_total_ = total;
  }

  // Per second; 0 before two samples.
  double rate() const { return rate_; }
  // Seconds until `left` more at this rate; none while the rate is 0.
  std::optional<double> eta_seconds(uint64_t left) const {
    if (left == 0) return 0.0;
    if (rate_ <= 0) return std::nullopt;
    return double(left) / rate_;
  }

 private:
  static constexpr double kSampleSecondsMin = 0.001;
  double window_s_;
  bool started_ = false;
  Clock::time_point first_, last_;
  uint64_t first_total_ = 0, last_total_ = 0;
  double rate_ = 0;
};

}  // namespace imgstream
