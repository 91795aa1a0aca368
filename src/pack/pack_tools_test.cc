// unpack and pack diff (pack/pack_tools.h): the image comes back byte for byte with its
// holes, the output checks refuse before any work, a failure leaves no OUTPUT.tmp, and
// the diff counts what a store must fetch.
#include "pack/pack_tools.h"

#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "pack/pack_writer.h"

namespace imgstream::pack {
namespace {

constexpr uint32_t kChunk = 64 * 1024;

class PackToolsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/imgstream-pack-tools-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Chunks of random bytes, text, zeros; a short last chunk. `seed` changes the random ones.
  std::string image(const std::string& name, size_t chunks, uint32_t seed) {
    std::vector<char> v(chunks * kChunk + 1000);
    std::mt19937 rng(seed);
    for (size_t i = 0; i < v.size(); ++i) {
      const size_t c = i / kChunk;
      v[i] = c % 3 == 0 ? char(rng()) : c % 3 == 1 ? "imgstream "[i % 10] : '\0';
    }
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary).write(v.data(), std::streamsize(v.size()));
    return path;
  }
  std::unique_ptr<Pack> pack(const std::string& img, const std::string& name) {
    PackWriteOptions o;
    o.image = img;
    o.output = dir_ + "/" + name;
    o.chunk_size = kChunk;
    EXPECT_TRUE(write_pack(*Env::posix(), o));
    auto p = Pack::open(*Env::posix(), o.output);
    EXPECT_TRUE(p);
    return std::move(*p);
  }
  static std::string contents(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  }

  std::string dir_;
};

TEST_F(PackToolsTest, UnpackGivesTheImageBackWithHoles) {
  const std::string img = image("a.img", 9, 1);
  auto p = pack(img, "a.pack");
  UnpackOptions o;
  o.output = dir_ + "/out.img";
  o.threads = 2;
  uint64_t last = 0;
  o.progress = [&](uint64_t done, uint64_t total) {
    EXPECT_LE(done, total);
    last = done;
  };
  ASSERT_TRUE(check_unpack_output(*p, o));
  auto r = unpack(*Env::posix(), *p, o);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(*r, p->header().image_size);
  EXPECT_EQ(last, *r);
  EXPECT_EQ(contents(o.output), contents(img));
  struct stat st {};
  ASSERT_EQ(::stat(o.output.c_str(), &st), 0);
  EXPECT_LT(uint64_t(st.st_blocks) * 512, *r);  // the zero chunks are holes
  EXPECT_FALSE(std::filesystem::exists(o.output + ".tmp"));
}

TEST_F(PackToolsTest, OutputChecksRefuseBeforeAnyWork) {
  const std::string img = image("a.img", 3, 1);
  auto p = pack(img, "a.pack");
  UnpackOptions o;
  o.output = dir_ + "/a.pack";  // the pack itself, even with force
  o.overwrite = Overwrite::Force;
  EXPECT_FALSE(check_unpack_output(*p, o));
  o.output = img;  // an existing file: a raw image has no magic to tell it by
  o.overwrite = Overwrite::SameKind;
  EXPECT_FALSE(check_unpack_output(*p, o));
  o.overwrite = Overwrite::Force;
  EXPECT_TRUE(check_unpack_output(*p, o));
  o.output = dir_;  // a directory
  EXPECT_FALSE(check_unpack_output(*p, o));
  EXPECT_EQ(chain_files(*p), std::vector<std::string>{dir_ + "/a.pack"});
}

TEST_F(PackToolsTest, AFailedUnpackLeavesNoTemporaryFile) {
  const std::string img = image("a.img", 3, 1);
  auto p = pack(img, "a.pack");
  UnpackOptions o;
  o.output = dir_ + "/missing/out.img";
  EXPECT_FALSE(unpack(*Env::posix(), *p, o));
  EXPECT_FALSE(std::filesystem::exists(o.output + ".tmp"));
  EXPECT_FALSE(std::filesystem::exists(o.output));
}

TEST_F(PackToolsTest, DiffCountsTheChunksToFetch) {
  auto a = pack(image("a.img", 9, 1), "a.pack");
  auto b = pack(image("b.img", 9, 2), "b.pack");  // other random chunks, same text chunks
  const PackDiff same = diff_packs(*a, *a);
  EXPECT_TRUE(same.same_image);
  EXPECT_EQ(same.new_chunks, 0u);
  EXPECT_EQ(same.shared_chunks, same.distinct_chunks);
  const PackDiff d = diff_packs(*a, *b);
  EXPECT_FALSE(d.same_image);
  // Chunks 0, 3, 6, 9 are random (9 is the short last one); 1, 4, 7 the same text.
  EXPECT_EQ(d.new_chunks, 4u);
  // The text chunks start at other places of the text: three distinct ones, in both.
  EXPECT_EQ(d.shared_chunks, 3u);
  EXPECT_EQ(d.distinct_chunks, 7u);
  EXPECT_EQ(d.new_bytes_image, 3u * kChunk + 1000);
  EXPECT_GT(d.new_bytes_stored, 0u);
  EXPECT_EQ(d.to_json().size(), 6u);
}

}  // namespace
}  // namespace imgstream::pack
