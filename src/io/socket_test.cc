#include "io/socket.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <string>

namespace imgstream {
namespace {

class UnixListenTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/imgstream-socket-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    for (const char* n : {"/s", "/f"}) ::unlink((dir_ + n).c_str());
    ::rmdir(dir_.c_str());
  }
  Address at(const char* name) const {
    Address a;
    a.kind = Address::Kind::Unix;
    a.path = dir_ + name;
    return a;
  }
  static bool exists(const std::string& p) {
    struct stat st {};
    return ::lstat(p.c_str(), &st) == 0;
  }
  std::string dir_;
};

TEST_F(UnixListenTest, RefusesAFileThatIsNotASocketAndLeavesIt) {
  Address a = at("/f");
  std::ofstream(a.path) << "precious";
  auto l = listen_on(a);
  ASSERT_FALSE(l);
  EXPECT_EQ(l.error().code, EEXIST);
  EXPECT_NE(l.error().message.find("exists and is not a socket; not replacing it"),
            std::string::npos)
      << l.error().message;
  std::ifstream in(a.path);
  std::string content;
  in >> content;
  EXPECT_EQ(content, "precious");
}

TEST_F(UnixListenTest, RefusesALiveSocketAndTheOtherServerKeepsIt) {
  Address a = at("/s");
  auto first = listen_on(a);
  ASSERT_TRUE(first) << first.error().message;
  auto second = listen_on(a);
  ASSERT_FALSE(second);
  EXPECT_EQ(second.error().code, EADDRINUSE);
  EXPECT_NE(second.error().message.find("in use: another server answers there"), std::string::npos)
      << second.error().message;
  // The failed attempt went without removing the first server's socket.
  EXPECT_TRUE(connect_to(a));
}

TEST_F(UnixListenTest, ReplacesAStaleSocket) {
  Address a = at("/s");
  {
    auto dead = listen_on(a);
    ASSERT_TRUE(dead);
    ::close(dead->release());  // a server that died without removing its socket file
  }
  ASSERT_TRUE(exists(a.path));
  auto l = listen_on(a);
  ASSERT_TRUE(l) << l.error().message;
  EXPECT_TRUE(connect_to(a));
}

TEST_F(UnixListenTest, RemovesOnlyTheSocketItBound) {
  Address a = at("/s");
  {
    auto l = listen_on(a);
    ASSERT_TRUE(l);
  }
  EXPECT_FALSE(exists(a.path)) << "its own socket file is removed";
  {
    auto l = listen_on(a);
    ASSERT_TRUE(l);
    // Someone replaced the socket file meanwhile: that file is not ours to remove.
    ASSERT_EQ(::unlink(a.path.c_str()), 0);
    std::ofstream(a.path) << "new";
  }
  EXPECT_TRUE(exists(a.path));
}

TEST_F(UnixListenTest, MovedListenerRemovesItsFileOnce) {
  Address a = at("/s");
  auto l = listen_on(a);
  ASSERT_TRUE(l);
  Listener moved = std::move(*l);
  EXPECT_EQ(moved.bound_path(), a.path);
  EXPECT_TRUE(exists(a.path));
  moved = Listener();
  EXPECT_FALSE(exists(a.path));
}

}  // namespace
}  // namespace imgstream
