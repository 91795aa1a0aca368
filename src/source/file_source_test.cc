#include "source/file_source.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <random>

#include "source/nbdkit_testing.h"

namespace imgstream::source {
namespace {

using testing::Completions;

constexpr uint64_t kImageBytes = (3u << 20) + 4321;
constexpr uint64_t kSparseBytes = 8u << 20;

class FileSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::make_temp_dir();
    image_ = testing::pattern_bytes(kImageBytes, 3);
    testing::write_file(dir_ + "/image", image_);
    testing::write_sparse_file(dir_ + "/sparse", kSparseBytes, {{1u << 20, 1u << 20}});
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<FileSource> open(const std::string& name) {
    auto r = FileSource::open(*Env::posix(), dir_ + "/" + name);
    EXPECT_TRUE(r) << r.error().message;
    return r ? std::move(r).value() : nullptr;
  }

  std::string dir_;
  std::vector<std::byte> image_;
};

TEST_F(FileSourceTest, ConcurrentReadsMatchTheFile) {
  auto src = open("image");
  ASSERT_TRUE(src);
  EXPECT_EQ(src->size(), kImageBytes);
  EXPECT_EQ(src->uri(), dir_ + "/image");

  std::mt19937_64 rng(5);
  std::vector<std::pair<uint64_t, std::vector<std::byte>>> bufs(200);
  for (auto& [off, buf] : bufs) {
    uint64_t len = 1 + rng() % (128 << 10);
    off = rng() % (kImageBytes - len + 1);
    buf.resize(len);
  }
  Completions done;
  for (size_t i = 0; i < bufs.size(); ++i)
    src->read_async(bufs[i].first, bufs[i].second, done.callback(i));
  ASSERT_TRUE(done.wait());
  for (size_t i = 0; i < bufs.size(); ++i) {
    ASSERT_TRUE(done.result(i)) << done.result(i).error().message;
    auto want = std::span<const std::byte>(image_).subspan(bufs[i].first, bufs[i].second.size());
    ASSERT_TRUE(std::ranges::equal(bufs[i].second, want));
  }
}

TEST_F(FileSourceTest, ReadPastTheEndFails) {
  auto src = open("image");
  ASSERT_TRUE(src);
  std::vector<std::byte> buf(100);
  auto r = src->read(kImageBytes - 50, buf);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL);
  EXPECT_TRUE(src->read(kImageBytes - 100, buf));
}

TEST_F(FileSourceTest, OpenMissingFileFails) {
  auto r = FileSource::open(*Env::posix(), dir_ + "/missing");
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ENOENT);
}

TEST_F(FileSourceTest, BlockStatusFollowsHoles) {
  auto src = open("sparse");
  ASSERT_TRUE(src);
  std::vector<Extent> out;
  ASSERT_TRUE(src->block_status(0, kSparseBytes, out));
  uint64_t sum = 0;
  for (auto& e : out) sum += e.length;
  EXPECT_EQ(sum, kSparseBytes);
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].length, 1u << 20);
  EXPECT_EQ(out[0].flags, kStateHole | kStateZero);
  EXPECT_EQ(out[1].length, 1u << 20);
  EXPECT_EQ(out[1].flags, 0u);
  EXPECT_EQ(out[2].flags, kStateHole | kStateZero);

  // Clipped to the range asked.
  out.clear();
  ASSERT_TRUE(src->block_status(512u << 10, 1u << 20, out));
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0].length, 512u << 10);
  EXPECT_EQ(out[1].length, 512u << 10);
  EXPECT_EQ(out[1].flags, 0u);

  out.clear();
  EXPECT_FALSE(src->block_status(kSparseBytes, 1, out));
}

TEST_F(FileSourceTest, CloseWaitsForQueuedReadsThenRefuses) {
  auto src = open("image");
  ASSERT_TRUE(src);
  std::vector<std::vector<std::byte>> bufs(16, std::vector<std::byte>(64 << 10));
  Completions done;
  for (size_t i = 0; i < bufs.size(); ++i)
    src->read_async(i * (64 << 10), bufs[i], done.callback(i));
  src->close();
  // Every queued read ran to completion inside close().
  ASSERT_EQ(done.done(), bufs.size());
  for (size_t i = 0; i < bufs.size(); ++i) EXPECT_TRUE(done.result(i));
  std::vector<std::byte> buf(10);
  auto r = src->read(0, buf);
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, ESHUTDOWN);
  std::vector<Extent> out;
  EXPECT_EQ(src->block_status(0, 10, out).error().code, ESHUTDOWN);
}

}  // namespace
}  // namespace imgstream::source
