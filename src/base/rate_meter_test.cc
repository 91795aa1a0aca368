#include "base/rate_meter.h"

#include <gtest/gtest.h>

namespace imgstream {
namespace {

using namespace std::chrono_literals;

// 8 MiB every 2 s (a rate limit of 4 MiB/s and 8 MiB batches), sampled every second: the
// plain difference of two samples says 8 MiB/s, then 0, then 8 ... The meter stays
// within 15% of 4 MiB/s once it has settled (two windows).
TEST(RateMeter, StepsAreSmoothed) {
  RateMeter m(5s);
  const auto t0 = RateMeter::Clock::now();
  uint64_t total = 0;
  constexpr double kWant = 4.0 * (1 << 20);
  for (int s = 0; s <= 30; ++s) {
    if (s > 0 && s % 2 == 0) total += 8u << 20;
    m.sample(total, t0 + std::chrono::seconds(s));
    if (s >= 10) {
      EXPECT_NEAR(m.rate(), kWant, 0.15 * kWant) << "at " << s << " s";
    }
  }
  ASSERT_TRUE(m.eta_seconds(40u << 20));
  EXPECT_NEAR(*m.eta_seconds(40u << 20), 10.0, 2.0);
}

TEST(RateMeter, StartsAsAPlainAverageAndRestartsWhenTheCountGoesDown) {
  RateMeter m(5s);
  const auto t0 = RateMeter::Clock::now();
  EXPECT_EQ(m.rate(), 0);
  EXPECT_FALSE(m.eta_seconds(1));
  EXPECT_EQ(m.eta_seconds(0), 0.0);
  m.sample(0, t0);
  m.sample(1000, t0 + 1s);
  EXPECT_DOUBLE_EQ(m.rate(), 1000);
  m.sample(3000, t0 + 2s);
  EXPECT_DOUBLE_EQ(m.rate(), 1500);
  m.sample(10, t0 + 3s);  // a new count
  EXPECT_EQ(m.rate(), 0);
  m.sample(510, t0 + 4s);
  EXPECT_DOUBLE_EQ(m.rate(), 500);
}

}  // namespace
}  // namespace imgstream
