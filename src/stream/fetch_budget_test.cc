#include "stream/fetch_budget.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <thread>

namespace imgstream::stream {
namespace {

TEST(FetchBudget, BackgroundLeavesTheReserveToDemand) {
  FetchBudget b(100, 30);
  auto bg = b.acquire(70, FetchPriority::Background);  // all background may hold
  auto d = b.acquire(30, FetchPriority::Demand);       // the reserve: no wait
  EXPECT_EQ(b.used(), 100u);
  auto part = bg.take(20);
  EXPECT_EQ(bg.bytes(), 50u);
  part.reset();
  EXPECT_EQ(b.used(), 80u);
  bg.reset();
  d.reset();
  EXPECT_EQ(b.used(), 0u);
  EXPECT_EQ(b.used_max(), 100u);
}

// A background taker waits while a demand taker waits, even when it would fit itself.
TEST(FetchBudget, DemandWaitersComeFirst) {
  FetchBudget b(100, 30);
  auto full = b.acquire(100, FetchPriority::Demand);
  std::atomic<bool> demand_got{false}, background_got{false}, let_go{false};
  uint64_t used_when_background_got = 0;
  std::thread d([&] {
    auto g = b.acquire(60, FetchPriority::Demand);
    demand_got = true;
    while (!let_go) ::usleep(1000);  // holds its 60 until the end
  });
  ::usleep(20'000);  // the demand taker waits first
  std::thread bg([&] {
    auto g = b.acquire(10, FetchPriority::Background);
    used_when_background_got = b.used();
    background_got = true;
  });
  ::usleep(20'000);
  auto part = full.take(50);  // 50 free: background's 10 would fit, demand's 60 not
  part.reset();
  ::usleep(20'000);
  EXPECT_FALSE(background_got.load()) << "background went ahead of a waiting demand";
  EXPECT_FALSE(demand_got.load());
  full.reset();
  bg.join();
  EXPECT_EQ(used_when_background_got, 70u) << "demand's 60 were granted first";
  let_go = true;
  d.join();
  EXPECT_EQ(b.used(), 0u);
}

}  // namespace
}  // namespace imgstream::stream
