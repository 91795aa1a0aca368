#include "base/stop.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <thread>

namespace imgstream {
namespace {

class StopTest : public ::testing::Test {
 protected:
  void SetUp() override { reset_stop_for_testing(); }
  void TearDown() override { reset_stop_for_testing(); }
};

TEST_F(StopTest, CallbacksRunOnceAndFdTurnsReadable) {
  int runs = 0;
  StopCallback cb([&] { ++runs; });
  EXPECT_FALSE(stop_requested());
  request_process_stop();
  request_process_stop();
  EXPECT_TRUE(stop_requested());
  EXPECT_EQ(runs, 1);
  uint64_t v = 0;
  EXPECT_EQ(::read(stop_fd(), &v, sizeof v), static_cast<ssize_t>(sizeof v));
}

TEST_F(StopTest, CallbackMadeAfterTheRequestRunsAtOnce) {
  request_process_stop();
  bool ran = false;
  StopCallback cb([&] { ran = true; });
  EXPECT_TRUE(ran);
}

TEST_F(StopTest, DroppedCallbackDoesNotRun) {
  bool ran = false;
  {
    StopCallback cb([&] { ran = true; });
  }
  request_process_stop();
  EXPECT_FALSE(ran);
}

TEST_F(StopTest, SleepIsCutShortByAStop) {
  const auto t = std::chrono::steady_clock::now();
  std::thread th([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    request_process_stop();
  });
  EXPECT_FALSE(sleep_unless_stopped(std::chrono::seconds(10)));
  th.join();
  EXPECT_LT(std::chrono::steady_clock::now() - t, std::chrono::seconds(5));
  EXPECT_FALSE(sleep_unless_stopped(std::chrono::seconds(10)));  // stays stopped
}

TEST_F(StopTest, SleepRunsItsTimeWithoutAStop) {
  EXPECT_TRUE(sleep_unless_stopped(std::chrono::milliseconds(10)));
}

TEST_F(StopTest, TempFileIsRemovedUnlessKept) {
  char dir[] = "/tmp/imgstream-stop-test-XXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const std::string a = std::string(dir) + "/a.tmp", b = std::string(dir) + "/b.tmp";
  {
    TempFile ta(a), tb(b);
    FILE* f = std::fopen(a.c_str(), "w");
    std::fclose(f);
    f = std::fopen(b.c_str(), "w");
    std::fclose(f);
    tb.keep();
  }
  EXPECT_NE(::access(a.c_str(), F_OK), 0);
  EXPECT_EQ(::access(b.c_str(), F_OK), 0);
  ::unlink(b.c_str());
  ::rmdir(dir);
}

}  // namespace
}  // namespace imgstream
