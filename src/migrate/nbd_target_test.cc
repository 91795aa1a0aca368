#include "migrate/nbd_target.h"

#include <gtest/gtest.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
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
  EXPECT_NE(t.error().message.find("sent no NBD greeting within 300 ms"), std::string::npos)
      << t.error().message;
  EXPECT_NE(t.error().message.find("-e/--shared"), std::string::npos) << t.error().message;
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

// A server that takes one client at a time, as qemu-nbd does by default: the first
// connection is relayed to a real target, the others wait in the listen backlog.
class OneClientProxy {
 public:
  explicit OneClientProxy(const std::string& upstream_path) : upstream_(upstream_path) {
    char tmpl[] = "/tmp/imgstream-proxy-test-XXXXXX";
    EXPECT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    listen_ = listen_unix(dir_ + "/one.sock");
    thread_ = std::thread([this] { relay(); });
  }
  ~OneClientProxy() {
    stop_ = true;
    thread_.join();
    ::close(listen_);
    std::filesystem::remove_all(dir_);
  }
  std::string uri() const { return "nbd+unix:///?socket=" + dir_ + "/one.sock"; }

 private:
  static int listen_unix(const std::string& path) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, path.c_str(), sizeof a.sun_path - 1);
    EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    EXPECT_EQ(::listen(fd, 8), 0);
    return fd;
  }
  void relay() {
    pollfd lp{listen_, POLLIN, 0};
    while (!stop_ && ::poll(&lp, 1, 50) == 0) {
    }
    if (stop_) return;
    const int c = ::accept(listen_, nullptr, nullptr);
    const int u = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un a{};
    a.sun_family = AF_UNIX;
    std::strncpy(a.sun_path, upstream_.c_str(), sizeof a.sun_path - 1);
    EXPECT_EQ(::connect(u, reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
    char buf[65536];
    while (!stop_) {
      pollfd p[2] = {{c, POLLIN, 0}, {u, POLLIN, 0}};
      if (::poll(p, 2, 50) <= 0) continue;
      for (int i = 0; i < 2; ++i) {
        if (!p[i].revents) continue;
        const ssize_t n = ::read(p[i].fd, buf, sizeof buf);
        if (n <= 0)
          stop_ = true;
        else
          EXPECT_EQ(::write(p[1 - i].fd, buf, size_t(n)), n);
      }
    }
    ::close(c);
    ::close(u);
  }

  std::string upstream_, dir_;
  int listen_ = -1;
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

TEST(NbdTarget, FewerConnectionsThanAskedAreUsedAndNamed) {
  constexpr uint64_t kSize = 1u << 20;
  testing::MemoryTarget target(kSize);
  const std::string sock = target.uri().substr(target.uri().find("socket=") + 7);
  OneClientProxy proxy(sock);
  const auto t0 = std::chrono::steady_clock::now();
  auto t =
      NbdTarget::open(proxy.uri(), 4, std::chrono::seconds(30), std::chrono::milliseconds(400));
  const auto took = std::chrono::steady_clock::now() - t0;
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_EQ((*t)->connections(), 1u);
  EXPECT_NE((*t)->note().find("took 1 of the 4 connections"), std::string::npos) << (*t)->note();
  EXPECT_NE((*t)->note().find("-e/--shared"), std::string::npos) << (*t)->note();
  EXPECT_LT(took, std::chrono::seconds(3));  // the extras together, not one after another
  std::vector<std::byte> b(4096, std::byte{9});
  ASSERT_TRUE((*t)->write(0, 0, b));
  ASSERT_TRUE((*t)->flush());
  EXPECT_EQ(target.contents()[0], std::byte{9});
}

TEST(NbdTarget, AllConnectionsWhenTheTargetTakesThem) {
  testing::MemoryTarget target(1u << 20);
  auto t = NbdTarget::open(target.uri(), 4);
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_EQ((*t)->connections(), 4u);
  EXPECT_EQ((*t)->note(), "");
}

TEST(NbdTarget, NothingListeningFailsAtOnce) {
  auto t = NbdTarget::open("nbd+unix:///?socket=/nonexistent/imgstream.sock", 1);
  ASSERT_FALSE(t);
  EXPECT_NE(t.error().message.find("connect"), std::string::npos) << t.error().message;
}

}  // namespace
}  // namespace imgstream::migrate
