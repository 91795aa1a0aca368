#include "stream/hydration_pace.h"

#include <gtest/gtest.h>

namespace imgstream::stream {
namespace {

using namespace std::chrono_literals;

// A fake clock: the pace is given times, never reads one.
struct PaceTest : ::testing::Test {
  PaceClock::time_point t0 = PaceClock::time_point{} + 1000s;
  PaceClock::time_point now = t0;
  Activity a;

  static PaceOptions options() {
    PaceOptions o;
    o.idle_after = 2s;
    o.hold_max = 60s;
    o.trickle_interval = 1s;
    o.boot_deadline = 80s;
    return o;
  }
  // Advances the clock by `dt`, the machine having read `reads` times meanwhile.
  bool step(HydrationPace& p, std::chrono::milliseconds dt, uint64_t reads = 0,
            uint64_t waited = 0) {
    now += dt;
    a.reads += reads;
    a.reads_waited += waited;
    return p.may_start(now, a);
  }
};

TEST_F(PaceTest, OffNeverHolds) {
  PaceOptions o = options();
  o.idle_after = 0ms;
  HydrationPace p(o, t0);
  a.boot_set_bytes = 100;
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(step(p, 100ms, 10));
  EXPECT_EQ(p.state(), PaceState::Free);
}

TEST_F(PaceTest, QuietMachineGoesAtFullSpeed) {
  HydrationPace p(options(), t0);
  a.reads = 5000;  // reads of an earlier run are no activity now
  for (int i = 0; i < 50; ++i) EXPECT_TRUE(step(p, 100ms));
  EXPECT_EQ(p.state(), PaceState::Free);
}

TEST_F(PaceTest, LocalReadsHoldUntilQuietFor) {
  HydrationPace p(options(), t0);
  EXPECT_TRUE(step(p, 0ms));
  for (int i = 0; i < 30; ++i) EXPECT_FALSE(step(p, 100ms, 3)) << i;
  EXPECT_EQ(p.state(), PaceState::Busy);
  // The last read was just now: held for idle_after (2 s) more, then free.
  for (int i = 0; i < 19; ++i) EXPECT_FALSE(step(p, 100ms)) << i;
  EXPECT_TRUE(step(p, 100ms));
  EXPECT_EQ(p.state(), PaceState::Free);
}

// A reader that waits on the source is helped by hydration running ahead of it
// (bench/stream.sh row 4): not held.
TEST_F(PaceTest, ReadsThatWaitOnTheSourceDoNotHold) {
  HydrationPace p(options(), t0);
  EXPECT_TRUE(step(p, 0ms));
  for (int i = 0; i < 30; ++i) EXPECT_TRUE(step(p, 100ms, 50, i % 10 == 0 ? 1 : 0)) << i;
  // No wait for idle_after: the reads are all local now, and hold.
  for (int i = 0; i < 10; ++i) step(p, 100ms, 50);
  EXPECT_FALSE(step(p, 100ms, 50));
  EXPECT_EQ(p.state(), PaceState::Busy);
  // A request waiting right now frees it at once.
  a.demand_waiting = 1;
  EXPECT_TRUE(step(p, 1ms, 1));
}

TEST_F(PaceTest, BusyForLongTricklesOneBatchPerInterval) {
  HydrationPace p(options(), t0);
  EXPECT_TRUE(step(p, 0ms));
  int started = 0;
  for (int i = 0; i < 600; ++i) started += step(p, 100ms, 1);  // 60 s busy
  EXPECT_EQ(started, 0);
  for (int i = 0; i < 100; ++i) started += step(p, 100ms, 1);  // 10 s more
  EXPECT_EQ(started, 10);
  EXPECT_EQ(p.state(), PaceState::Busy);
}

// With a boot set, the boot holds even through a spell without reads (a kernel starting
// up reads nothing for seconds), until most of the boot set was read.
TEST_F(PaceTest, BootHoldsUntilTheBootSetIsRead) {
  HydrationPace p(options(), t0);
  a.boot_set_bytes = 1000;
  EXPECT_FALSE(step(p, 0ms));
  EXPECT_EQ(p.state(), PaceState::Booting);
  a.boot_set_read_bytes = 100;
  EXPECT_FALSE(step(p, 1s, 200));
  for (int i = 0; i < 12; ++i) EXPECT_FALSE(step(p, 1s)) << i;  // no reads for 12 s
  EXPECT_EQ(p.state(), PaceState::Booting);
  a.boot_set_read_bytes = 899;
  EXPECT_FALSE(step(p, 1s, 500));
  // 90% read: the boot is done; the machine still reads, so busy, until quiet.
  a.boot_set_read_bytes = 900;
  EXPECT_FALSE(step(p, 100ms, 10));
  EXPECT_EQ(p.state(), PaceState::Busy);
  EXPECT_FALSE(step(p, 1900ms));
  EXPECT_TRUE(step(p, 100ms));
  EXPECT_EQ(p.state(), PaceState::Free);
}

TEST_F(PaceTest, BootHoldEndsAtTheDeadline) {
  HydrationPace p(options(), t0);
  a.boot_set_bytes = 1000;
  for (int i = 0; i < 79; ++i) EXPECT_FALSE(step(p, 1s)) << i;  // a machine that never boots
  EXPECT_TRUE(step(p, 1s));
  EXPECT_EQ(p.state(), PaceState::Free);
}

// A boot that went on reading past the deadline is held as any busy machine, with its
// own hold_max from then on.
TEST_F(PaceTest, BusyAfterTheBootDeadlineIsHeldAsBusy) {
  HydrationPace p(options(), t0);
  a.boot_set_bytes = 1000;
  for (int i = 0; i < 80; ++i) EXPECT_FALSE(step(p, 1s, 1)) << i;
  EXPECT_EQ(p.state(), PaceState::Busy);
  for (int i = 0; i < 59; ++i) EXPECT_FALSE(step(p, 1s, 1)) << i;
  EXPECT_TRUE(step(p, 1s, 1));  // the trickle
  EXPECT_FALSE(step(p, 500ms, 1));
}

}  // namespace
}  // namespace imgstream::stream
