#include "migrate/nbd_target.h"

#include <gtest/gtest.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <random>
#include <thread>

#include "migrate/testing.h"

namespace imgstream::migrate {
namespace {

// A peer that accepts the connection (the kernel does, from the listen backlog) and never
// says a word: without a timeout, the handshake would wait forever.
TEST(NbdTarget, SilentServerTimesOut) {
  char tmpl[] = "/tmp/imgstream-target-test-XXXXXX";
  ASSERT_NE(::mkdtemp(tmpl), nullptr);
  const std::string dir = tmpl, path = dir + "/silent.sock";
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  ASSERT_EQ(::listen(fd, 4), 0);
  const auto t0 = std::chrono::steady_clock::now();
  auto t = NbdTarget::open("nbd+unix:///?socket=" + path, 2, std::chrono::milliseconds(300));
  const auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_FALSE(t);
  EXPECT_EQ(t.error().code, ETIMEDOUT) << t.error().message;
  EXPECT_NE(t.error().message.find("no NBD handshake within 300 ms"), std::string::npos)
      << t.error().message;
  EXPECT_LT(took, std::chrono::seconds(10));
  ::close(fd);
  std::filesystem::remove_all(dir);
}

// Many small writes in flight at once, of several sizes, reusing buffers: every byte
// lands where it was sent.
TEST(NbdTarget, PipelinedWritesLandWhereSent) {
  constexpr uint64_t kSize = 16u << 20;
  testing::MemoryTarget target(kSize);
  {
    auto t = NbdTarget::open(target.uri(), 1);
    ASSERT_TRUE(t) << t.error().message;
    std::vector<std::byte> want(kSize);
    std::mt19937_64 rng(3);
    NbdTarget::Pipeline pipe(**t, 0);
    for (uint64_t off = 0; off < kSize;) {
      const uint64_t len = std::min<uint64_t>(kSize - off, 4096 * (1 + rng() % 300));
      auto buf = pipe.buffer(len);
      ASSERT_TRUE(buf) << buf.error().message;
      for (auto& b : *buf) b = std::byte(rng());
      std::memcpy(want.data() + off, buf->data(), len);
      ASSERT_TRUE(pipe.write(off));
      off += len;
    }
    ASSERT_TRUE(pipe.finish());
    EXPECT_TRUE(target.contents() == want);
  }
}

TEST(NbdTarget, NothingListeningFailsAtOnce) {
  auto t = NbdTarget::open("nbd+unix:///?socket=/nonexistent/imgstream.sock", 1);
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().message.find("connect"), std::string::npos) << t.error().message;
}

}  // namespace
}  // namespace imgstream::migrate
