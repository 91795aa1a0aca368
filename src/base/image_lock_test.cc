#include "base/image_lock.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "base/env_memory.h"

namespace imgstream {
namespace {

class ImageLockTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/imgstream-lock-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    image_ = dir_ + "/disk.img";
    std::ofstream(image_) << std::string(4096, 'x');
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  // Each open is a file description of its own: its locks meet the others' as another
  // process's would.
  std::unique_ptr<File> open_image(OpenMode m = OpenMode::ReadWrite) {
    auto f = Env::posix()->open(image_, m);
    EXPECT_TRUE(f) << f.error().message;
    return std::move(*f);
  }
  std::string dir_, image_;
};

TEST_F(ImageLockTest, TwoWritersDoNotMeet) {
  auto a = open_image(), b = open_image();
  ASSERT_TRUE(lock_image(*a, ImageUse::Write));
  auto r = lock_image(*b, ImageUse::Write);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EBUSY);
  EXPECT_NE(r.error().message.find(image_ + " is in use: locked by"), std::string::npos)
      << r.error().message;
  EXPECT_NE(r.error().message.find("which writes to it"), std::string::npos) << r.error().message;
  a.reset();  // the locks go with the file description
  EXPECT_TRUE(lock_image(*b, ImageUse::Write));
}

TEST_F(ImageLockTest, ReadersShareAndAWriterMayJoinThem) {
  auto r1 = open_image(OpenMode::ReadOnly), r2 = open_image(OpenMode::ReadOnly), w = open_image();
  EXPECT_TRUE(lock_image(*r1, ImageUse::Read));
  EXPECT_TRUE(lock_image(*r2, ImageUse::Read));
  EXPECT_TRUE(lock_image(*w, ImageUse::Write));
  auto r3 = open_image(OpenMode::ReadOnly);
  EXPECT_TRUE(lock_image(*r3, ImageUse::Read));
}

TEST_F(ImageLockTest, AStableReaderAndAWriterExcludeEachOther) {
  auto s = open_image(OpenMode::ReadOnly), w = open_image();
  ASSERT_TRUE(lock_image(*s, ImageUse::ReadStable));
  auto r = lock_image(*w, ImageUse::Write);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("which shares no writing to it"), std::string::npos)
      << r.error().message;
  s.reset();
  ASSERT_TRUE(lock_image(*w, ImageUse::Write));
  auto s2 = open_image(OpenMode::ReadOnly);
  auto r2 = lock_image(*s2, ImageUse::ReadStable);
  ASSERT_FALSE(r2);
  EXPECT_NE(r2.error().message.find("which writes to it"), std::string::npos) << r2.error().message;
}

TEST_F(ImageLockTest, ARefusedLockLeavesNothingBehind) {
  auto w = open_image(), s = open_image(OpenMode::ReadOnly);
  ASSERT_TRUE(lock_image(*w, ImageUse::Write));
  ASSERT_FALSE(lock_image(*s, ImageUse::ReadStable));
  w.reset();
  // Had the refused one kept its bytes, this writer would meet them.
  auto w2 = open_image();
  EXPECT_TRUE(lock_image(*w2, ImageUse::Write));
}

TEST_F(ImageLockTest, TheHolderIsNamedByItsPid) {
  int ready[2], done[2];
  ASSERT_EQ(::pipe(ready), 0);
  ASSERT_EQ(::pipe(done), 0);
  const pid_t child = ::fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    auto f = Env::posix()->open(image_, OpenMode::ReadWrite);
    const char ok = f && lock_image(**f, ImageUse::Write) ? 'y' : 'n';
    (void)!::write(ready[1], &ok, 1);
    char c;
    (void)!::read(done[0], &c, 1);
    ::_exit(0);
  }
  char c = 0;
  ASSERT_EQ(::read(ready[0], &c, 1), 1);
  ASSERT_EQ(c, 'y');
  auto f = open_image();
  auto r = lock_image(*f, ImageUse::Write);
  (void)!::write(done[1], "x", 1);
  int status = 0;
  ::waitpid(child, &status, 0);
  for (int fd : {ready[0], ready[1], done[0], done[1]}) ::close(fd);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("locked by process " + std::to_string(child)),
            std::string::npos)
      << r.error().message;
}

TEST_F(ImageLockTest, FilesWithoutADescriptorAreNotLocked) {
  MemEnv env;
  auto f = env.open("/disk.img", OpenMode::CreateOrOpen);
  ASSERT_TRUE(f);
  EXPECT_TRUE(lock_image(**f, ImageUse::Write));
  EXPECT_TRUE(lock_image(**f, ImageUse::Write));
}

}  // namespace
}  // namespace imgstream
