#include "base/output_check.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

namespace imgstream {
namespace {

constexpr OutputKind kPack{"pack", "IMGPACK1"};
constexpr OutputKind kRaw{"raw image", ""};

class OutputCheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/imgstream-output-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string file(const std::string& name, const std::string& content) {
    const std::string p = dir_ + "/" + name;
    std::ofstream(p) << content;
    return p;
  }
  std::string dir_;
};

TEST_F(OutputCheckTest, ANewFileInAWritableDirectoryIsFine) {
  EXPECT_TRUE(check_output(dir_ + "/new.pack", {}, kPack, Overwrite::SameKind));
}

TEST_F(OutputCheckTest, TheInputItselfIsRefusedEvenWithForce) {
  const std::string img = file("golden.img", "data");
  for (Overwrite o : {Overwrite::SameKind, Overwrite::Force}) {
    auto r = check_output(img, {img}, kPack, o);
    ASSERT_FALSE(r);
    EXPECT_EQ(r.error().code, EEXIST);
    EXPECT_NE(r.error().message.find("is the input " + img), std::string::npos)
        << r.error().message;
  }
}

TEST_F(OutputCheckTest, ALinkToAnInputOrAHardLinkIsTheSameFile) {
  const std::string img = file("golden.img", "data");
  const std::string sym = dir_ + "/sym.pack", hard = dir_ + "/hard.pack";
  ASSERT_EQ(::symlink(img.c_str(), sym.c_str()), 0);
  ASSERT_EQ(::link(img.c_str(), hard.c_str()), 0);
  EXPECT_FALSE(check_output(sym, {img}, kPack, Overwrite::Force));
  EXPECT_FALSE(check_output(hard, {img}, kPack, Overwrite::Force));
  EXPECT_TRUE(same_file(sym, hard));
}

TEST_F(OutputCheckTest, AnInputNamedOutputTmpIsRefused) {
  const std::string img = file("x.pack.tmp", "data");
  auto r = check_output(dir_ + "/x.pack", {img}, kPack, Overwrite::Force);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find(".tmp is the input"), std::string::npos) << r.error().message;
}

TEST_F(OutputCheckTest, AFileOfAnotherKindNeedsForce) {
  const std::string out = file("notes.pack", "my notes");
  auto r = check_output(out, {}, kPack, Overwrite::SameKind);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("is not a pack (no IMGPACK1 magic)"), std::string::npos)
      << r.error().message;
  EXPECT_NE(r.error().message.find("--force"), std::string::npos);
  EXPECT_TRUE(check_output(out, {}, kPack, Overwrite::Force));
}

TEST_F(OutputCheckTest, AFileOfTheSameKindOrAnEmptyOneIsReplaced) {
  EXPECT_TRUE(check_output(file("old.pack", "IMGPACK1 and more"), {}, kPack, Overwrite::SameKind));
  EXPECT_TRUE(check_output(file("empty.pack", ""), {}, kPack, Overwrite::SameKind));
  EXPECT_FALSE(check_output(file("short.pack", "IMG"), {}, kPack, Overwrite::SameKind));
}

TEST_F(OutputCheckTest, AKindWithoutMagicRefusesAnyNonEmptyFileWithoutForce) {
  const std::string out = file("disk.img", "x");
  EXPECT_FALSE(check_output(out, {}, kRaw, Overwrite::SameKind));
  EXPECT_TRUE(check_output(out, {}, kRaw, Overwrite::Force));
}

TEST_F(OutputCheckTest, DirectoriesAreRefused) {
  auto r = check_output(dir_, {}, kPack, Overwrite::Force);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EISDIR);
  auto m = check_output(dir_ + "/missing/x.pack", {}, kPack, Overwrite::Force);
  ASSERT_FALSE(m);
  EXPECT_EQ(m.error().code, ENOENT);
  EXPECT_NE(m.error().message.find("does not exist"), std::string::npos) << m.error().message;
  const std::string f = file("plain", "x");
  EXPECT_FALSE(check_output(f + "/x.pack", {}, kPack, Overwrite::Force));
}

TEST_F(OutputCheckTest, NonRegularFilesAreRefused) {
  const std::string fifo = dir_ + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_FALSE(check_output(fifo, {}, kRaw, Overwrite::Force));
}

TEST_F(OutputCheckTest, AnUnwritableDirectoryIsRefused) {
  if (::geteuid() == 0) GTEST_SKIP() << "root writes everywhere";
  const std::string ro = dir_ + "/ro";
  ASSERT_EQ(::mkdir(ro.c_str(), 0555), 0);
  auto r = check_output(ro + "/x.pack", {}, kPack, Overwrite::Force);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EACCES);
}

}  // namespace
}  // namespace imgstream
