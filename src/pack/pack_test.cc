#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>

#include "base/endian.h"
#include "pack/pack_reader.h"
#include "pack/pack_source.h"
#include "pack/pack_writer.h"

namespace imgstream::pack {
namespace {

constexpr uint32_t kChunk = 64 * 1024;

class PackTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/imgstream-pack-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Random, compressible, zero and duplicate chunks, and a short last chunk.
  std::vector<std::byte> make_image(size_t chunks, uint32_t seed) {
    std::vector<std::byte> v(chunks * kChunk + 1000);
    std::mt19937 rng(seed);
    for (size_t c = 0; c * kChunk < v.size(); ++c) {
      const size_t n = std::min<size_t>(kChunk, v.size() - c * kChunk);
      std::byte* p = v.data() + c * kChunk;
      switch (c % 4) {
        case 0: for (size_t i = 0; i < n; ++i) p[i] = std::byte(rng()); break;
        case 1: for (size_t i = 0; i < n; ++i) p[i] = std::byte("imgstream "[i % 10]); break;
        case 2: break;  // zeros
        case 3: if (c >= 4) std::memcpy(p, p - 3 * kChunk, n); break;  // same as chunk c-3
      }
    }
    return v;
  }
  std::string write_file(const std::string& name, const std::vector<std::byte>& b) {
    const std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(b.data()),
                                                static_cast<std::streamsize>(b.size()));
    return path;
  }
  std::vector<std::byte> read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    std::vector<char> c((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<std::byte> b(c.size());
    std::memcpy(b.data(), c.data(), c.size());
    return b;
  }
  Result<PackWriteReport> pack(const std::string& image, const std::string& out,
                               std::vector<std::pair<uint64_t, uint64_t>> boot = {},
                               const std::string& base = {}) {
    PackWriteOptions o;
    o.image = image;
    o.output = out;
    o.chunk_size = kChunk;
    o.threads = 3;
    o.boot_ranges = std::move(boot);
    o.base = base;
    return write_pack(*Env::posix(), o);
  }
  std::vector<std::byte> read_all(const Pack& p) {
    std::vector<std::byte> b(p.header().image_size);
    auto r = p.read(0, b);
    EXPECT_TRUE(r) << r.error().message;
    return b;
  }

  std::string dir_;
};

TEST_F(PackTest, RoundTripsZeroAndDuplicateChunks) {
  const auto image = make_image(40, 1);
  const std::string img = write_file("a.img", image);
  auto rep = pack(img, dir_ + "/a.pack");
  ASSERT_TRUE(rep) << rep.error().message;
  EXPECT_EQ(rep->chunks, 41u);
  EXPECT_EQ(rep->zero_chunks, 11u);  // every 4th from 2, and chunk 3 (a copy of nothing)
  EXPECT_GE(rep->duplicate_chunks, 9u);
  EXPECT_LT(rep->file_bytes, image.size() / 2);
  auto p = Pack::open(*Env::posix(), dir_ + "/a.pack");
  ASSERT_TRUE(p) << p.error().message;
  EXPECT_EQ(read_all(**p), image);
  // Unaligned reads across chunk edges.
  std::vector<std::byte> b(3 * kChunk + 7);
  ASSERT_TRUE((*p)->read(kChunk - 3, b));
  EXPECT_EQ(0, std::memcmp(b.data(), image.data() + kChunk - 3, b.size()));
  auto bad = (*p)->verify(nullptr);
  ASSERT_TRUE(bad);
  EXPECT_TRUE(bad->empty());
  // Zero chunks are holes in block status.
  std::vector<Extent> ex;
  (*p)->block_status(0, 3 * kChunk, ex);  // random, text, zero
  ASSERT_EQ(ex.size(), 2u);
  EXPECT_EQ(ex[0].length, 2 * kChunk);
  EXPECT_EQ(ex[0].flags, 0u);
  EXPECT_EQ(ex[1].length, kChunk);
  EXPECT_EQ(ex[1].flags, kStateHole | kStateZero);
}

TEST_F(PackTest, IdentityDependsOnTheImageNotTheLayout) {
  const std::string img = write_file("a.img", make_image(20, 2));
  ASSERT_TRUE(pack(img, dir_ + "/plain.pack"));
  ASSERT_TRUE(pack(img, dir_ + "/boot.pack", {{10 * kChunk, 2 * kChunk}, {0, kChunk}}));
  auto a = Pack::open(*Env::posix(), dir_ + "/plain.pack");
  auto b = Pack::open(*Env::posix(), dir_ + "/boot.pack");
  ASSERT_TRUE(a && b);
  EXPECT_EQ((*a)->header().identity, (*b)->header().identity);
  EXPECT_EQ(read_all(**a), read_all(**b));
}

TEST_F(PackTest, BootSetIsOneRangeInProfileOrder) {
  // Chunks 0 (random), 9 (text), 12 (random), 16 (random): in the order 12, 16, 0, 9.
  const std::string img = write_file("a.img", make_image(20, 3));
  auto rep = pack(img, dir_ + "/a.pack", {{12 * kChunk, 1}, {16 * kChunk, 100}, {0, kChunk}, {9 * kChunk, kChunk}});
  ASSERT_TRUE(rep) << rep.error().message;
  auto p = Pack::open(*Env::posix(), dir_ + "/a.pack");
  ASSERT_TRUE(p);
  const PackHeader& h = (*p)->header();
  EXPECT_EQ(h.boot_chunks, 4u);
  EXPECT_EQ(h.boot_begin, kPackHeaderBytes);
  const auto& ix = (*p)->index();
  EXPECT_EQ(ix[12].offset, kPackHeaderBytes);
  EXPECT_EQ(ix[16].offset, ix[12].offset + ix[12].length);
  EXPECT_EQ(ix[0].offset, ix[16].offset + ix[16].length);
  EXPECT_EQ(ix[9].offset, ix[0].offset + ix[0].length);
  EXPECT_EQ(h.boot_end, ix[9].offset + ix[9].length);
  // Every other chunk lies after the boot range, unless it is a copy of a boot chunk
  // (stored once, inside it).
  for (uint64_t c = 0; c < ix.size(); ++c) {
    if (!ix[c].stored() || ix[c].offset >= h.boot_end) continue;
    const bool copy = ix[c].hash == ix[12].hash || ix[c].hash == ix[16].hash ||
                      ix[c].hash == ix[0].hash || ix[c].hash == ix[9].hash;
    EXPECT_TRUE(copy) << c;
  }
}

TEST_F(PackTest, DeltaPackWritesOnlyNewChunksAndResolvesItsBase) {
  auto v1 = make_image(30, 4);
  auto v2 = v1;
  std::memset(v2.data() + 5 * kChunk + 100, 0x5a, 2 * kChunk);  // chunks 5, 6, 7 change
  const std::string i1 = write_file("v1.img", v1), i2 = write_file("v2.img", v2);
  ASSERT_TRUE(pack(i1, dir_ + "/v1.pack"));
  auto rep = pack(i2, dir_ + "/v2.pack", {}, dir_ + "/v1.pack");
  ASSERT_TRUE(rep) << rep.error().message;
  EXPECT_EQ(rep->stored_chunks, 3u);
  auto p = Pack::open(*Env::posix(), dir_ + "/v2.pack");
  ASSERT_TRUE(p) << p.error().message;
  ASSERT_NE((*p)->base(), nullptr);
  EXPECT_EQ(read_all(**p), v2);
  // A base that is not the one recorded is refused by identity.
  ASSERT_TRUE(pack(i2, dir_ + "/other.pack"));
  PackOpenOptions o;
  o.base = dir_ + "/other.pack";
  auto q = Pack::open(*Env::posix(), dir_ + "/v2.pack", o);
  ASSERT_FALSE(q);
  EXPECT_NE(q.error().message.find("not its base"), std::string::npos) << q.error().message;
  // A missing base is named.
  std::filesystem::remove(dir_ + "/v1.pack");
  q = Pack::open(*Env::posix(), dir_ + "/v2.pack");
  ASSERT_FALSE(q);
  EXPECT_NE(q.error().message.find("v1.pack"), std::string::npos) << q.error().message;
}

TEST_F(PackTest, CorruptChunkIsNamedAndNeverReturned) {
  const auto image = make_image(12, 5);
  ASSERT_TRUE(pack(write_file("a.img", image), dir_ + "/a.pack"));
  auto bytes = read_file(dir_ + "/a.pack");
  auto p0 = Pack::open(*Env::posix(), dir_ + "/a.pack");
  ASSERT_TRUE(p0);
  const IndexEntry e = (*p0)->index()[5];  // text chunk: zstd
  ASSERT_TRUE(e.stored());
  bytes[e.offset + e.length / 2] ^= std::byte{0x40};
  write_file("bad.pack", bytes);
  auto p = Pack::open(*Env::posix(), dir_ + "/bad.pack");
  ASSERT_TRUE(p) << "header and index are intact";
  auto bad = (*p)->verify(nullptr);
  ASSERT_TRUE(bad);
  // The text chunks 1, 5 and 9 are one stored chunk: all three are bad.
  EXPECT_EQ(*bad, (std::vector<uint64_t>{1, 5, 9}));
  std::vector<std::byte> b(image.size());
  auto r = (*p)->read(0, b);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("chunk 1 "), std::string::npos) << r.error().message;
  std::vector<std::byte> chunk4(kChunk);
  EXPECT_TRUE((*p)->read(4 * kChunk, chunk4)) << "other chunks still read";
}

TEST_F(PackTest, DamagedHeaderOrIndexIsRefused) {
  ASSERT_TRUE(pack(write_file("a.img", make_image(8, 6)), dir_ + "/a.pack"));
  const auto bytes = read_file(dir_ + "/a.pack");
  const auto h = decode_header(bytes);
  ASSERT_TRUE(h);
  struct Case {
    uint64_t at;
    const char* want;
  } cases[] = {{20, "checksum"}, {h->index_offset + 40, "hash"}, {bytes.size() - 1, "hash"}};
  for (const Case& c : cases) {
    auto b = bytes;
    b[c.at] ^= std::byte{1};
    write_file("bad.pack", b);
    auto p = Pack::open(*Env::posix(), dir_ + "/bad.pack");
    ASSERT_FALSE(p) << c.at;
    EXPECT_NE(p.error().message.find(c.want), std::string::npos) << p.error().message;
  }
  auto b = bytes;
  b.resize(b.size() - 10);
  write_file("short.pack", b);
  auto p = Pack::open(*Env::posix(), dir_ + "/short.pack");
  ASSERT_FALSE(p);
  EXPECT_NE(p.error().message.find("truncated"), std::string::npos) << p.error().message;
}

// The stored index is one zstd frame holding exactly one entry per chunk; anything else,
// even with a matching hash (a writer's bug, a hostile server), is refused by name.
TEST(PackFormat, StoredIndexIsOneFrameOfOneEntryPerChunk) {
  PackHeader h;
  h.image_size = 64 * 4096;
  h.chunk_size = 4096;
  h.index_offset = kPackHeaderBytes;
  std::vector<IndexEntry> entries(h.chunk_count());  // all zero chunks
  const auto with = [&](std::vector<std::byte> stored) {
    h.index_length = stored.size();
    h.index_hash = sha256(stored);
    h.identity = identity_of(h.image_size, h.chunk_size, entries);
    return decode_index(h, stored);
  };
  const std::vector<std::byte> good = encode_index(entries);
  EXPECT_LT(good.size(), h.index_raw_bytes() / 20) << "zero entries compress to almost nothing";
  auto ok = with(good);
  ASSERT_TRUE(ok) << ok.error().message;
  EXPECT_EQ(ok->size(), entries.size());

  auto trailing = good;
  trailing.push_back(std::byte{0});
  auto r = with(trailing);
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("one zstd frame"), std::string::npos) << r.error().message;

  const std::vector<IndexEntry> fewer(entries.size() - 1);
  r = with(encode_index(fewer));
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("one entry per chunk"), std::string::npos) << r.error().message;

  r = with(std::vector<std::byte>(100, std::byte{0x5a}));
  ASSERT_FALSE(r);

  // A header claiming more chunks than the bound is refused before any index is read.
  h.image_size = (kChunksMax + 1) * h.chunk_size;
  h.index_length = good.size();
  EXPECT_FALSE(decode_header(encode_header(h)));
}

TEST_F(PackTest, BootSetIsFetchedInOneRequest) {
  const auto image = make_image(40, 8);
  ASSERT_TRUE(pack(write_file("a.img", image), dir_ + "/a.pack",
                   {{20 * kChunk, 4 * kChunk}, {0, 2 * kChunk}, {33 * kChunk, kChunk}}));
  auto p = Pack::open(*Env::posix(), dir_ + "/a.pack");
  ASSERT_TRUE(p);
  const blob::BlobReader& blob = (*p)->blob();
  PackSource src(std::move(*p));
  const uint64_t opened = blob.stats().requests;  // header and index
  std::vector<std::byte> b(kChunk);
  // The machine asks for one boot chunk: the whole boot set comes in one request.
  ASSERT_TRUE(src.read(21 * kChunk, b));
  EXPECT_EQ(0, std::memcmp(b.data(), image.data() + 21 * kChunk, kChunk));
  EXPECT_EQ(blob.stats().requests, opened + 1);
  for (uint64_t c : {20, 22, 23, 0, 1, 33}) {
    ASSERT_TRUE(src.read(c * kChunk, b));
    EXPECT_EQ(0, std::memcmp(b.data(), image.data() + c * kChunk, kChunk)) << c;
  }
  EXPECT_EQ(blob.stats().requests, opened + 1) << "every boot chunk came with the first";
  EXPECT_EQ(src.boot_fetches(), 1u);
  // A boot chunk read a second time, and other chunks, are read from the pack.
  std::vector<std::byte> all(image.size());
  ASSERT_TRUE(src.read(0, all));
  EXPECT_EQ(all, image);
  EXPECT_GT(blob.stats().requests, opened + 1);
}

TEST_F(PackTest, IndexIsFetchedOnceAndKept) {
  const auto image = make_image(10, 9);
  ASSERT_TRUE(pack(write_file("a.img", image), dir_ + "/a.pack"));
  PackOpenOptions o;
  o.index_cache = dir_ + "/kept.index";
  auto p = Pack::open(*Env::posix(), dir_ + "/a.pack", o);
  ASSERT_TRUE(p);
  EXPECT_FALSE((*p)->index_from_cache());
  EXPECT_EQ((*p)->blob().stats().requests, 2u);  // header, index
  auto q = Pack::open(*Env::posix(), dir_ + "/a.pack", o);
  ASSERT_TRUE(q);
  EXPECT_TRUE((*q)->index_from_cache());
  EXPECT_EQ((*q)->blob().stats().requests, 1u);  // the header only
  EXPECT_EQ(read_all(**q), image);
  // Another pack at the same place: the kept index is not its own and is not used.
  ASSERT_TRUE(pack(write_file("b.img", make_image(10, 10)), dir_ + "/a.pack"));
  auto r = Pack::open(*Env::posix(), dir_ + "/a.pack", o);
  ASSERT_TRUE(r);
  EXPECT_FALSE((*r)->index_from_cache());
}

TEST_F(PackTest, PackSourceAndDeviceReadTheImage) {
  const auto image = make_image(16, 7);
  ASSERT_TRUE(pack(write_file("a.img", image), dir_ + "/a.pack"));
  auto p = Pack::open(*Env::posix(), dir_ + "/a.pack");
  ASSERT_TRUE(p);
  PackSource src(std::move(*p));
  EXPECT_TRUE(src.identity().has_value());
  std::vector<std::byte> b(100000);
  ASSERT_TRUE(src.read(12345, b));
  EXPECT_EQ(0, std::memcmp(b.data(), image.data() + 12345, b.size()));
  auto q = Pack::open(*Env::posix(), dir_ + "/a.pack");
  ASSERT_TRUE(q);
  PackDevice dev(std::move(*q));
  EXPECT_FALSE(dev.caps().writable);
  std::mt19937 rng(9);
  for (int i = 0; i < 200; ++i) {
    const uint64_t len = 1 + rng() % 9000, off = rng() % (image.size() - len);
    std::vector<std::byte> got(len);
    ASSERT_TRUE(dev.read(off, got));
    ASSERT_EQ(0, std::memcmp(got.data(), image.data() + off, len)) << off << "+" << len;
  }
}

}  // namespace
}  // namespace imgstream::pack
