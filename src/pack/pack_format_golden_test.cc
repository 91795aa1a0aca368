// Golden files of the pack format (docs/*-format.md; see base/golden_testing.h).

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "base/env_memory.h"
#include "base/golden_testing.h"
#include "base/sha256.h"
#include "pack/pack_format.h"
#include "pack/pack_reader.h"

namespace imgstream {
namespace {

using namespace golden_testing;

// --- pack (docs/pack-format.md) ---

void expect_same(const pack::PackHeader& a, const pack::PackHeader& b) {
  EXPECT_EQ(a.flags, b.flags);
  EXPECT_EQ(a.image_size, b.image_size);
  EXPECT_EQ(a.chunk_size, b.chunk_size);
  EXPECT_EQ(a.level, b.level);
  EXPECT_EQ(a.index_offset, b.index_offset);
  EXPECT_EQ(a.index_length, b.index_length);
  EXPECT_EQ(a.boot_begin, b.boot_begin);
  EXPECT_EQ(a.boot_end, b.boot_end);
  EXPECT_EQ(a.boot_chunks, b.boot_chunks);
  EXPECT_EQ(a.identity, b.identity);
  EXPECT_EQ(a.index_hash, b.index_hash);
  EXPECT_EQ(a.base_identity, b.base_identity);
  EXPECT_EQ(a.base_hint, b.base_hint);
}

void check_pack_header(const std::string& name, const pack::PackHeader& h) {
  SCOPED_TRACE(name);
  const Bytes file = golden(name, pack::encode_header(h));
  EXPECT_EQ(pack::encode_header(h), file);
  auto d = pack::decode_header(file);
  ASSERT_TRUE(d) << d.error().message;
  expect_same(*d, h);
  EXPECT_EQ(pack::encode_header(*d), file);
}

// A delta pack of 5 chunks of 4 KiB, the last one short: one of each kind.
TEST(FormatGolden, PackWithIndex) {
  using pack::ChunkKind;
  const std::vector<pack::IndexEntry> entries = {
      {.hash = {}, .offset = 0, .length = 0, .kind = ChunkKind::Zero},
      {.hash = digest(10), .offset = 4096, .length = 100, .kind = ChunkKind::Zstd},
      {.hash = digest(11), .offset = 4196, .length = 4096, .kind = ChunkKind::Raw},
      {.hash = digest(12), .offset = 0, .length = 0, .kind = ChunkKind::Base},
      {.hash = digest(13), .offset = 8292, .length = 100, .kind = ChunkKind::Raw},
  };
  pack::PackHeader h;
  h.flags = pack::kFlagHasBase;
  h.image_size = 4 * 4096 + 100;
  h.chunk_size = 4096;
  h.level = 19;
  h.index_offset = 8392;
  h.boot_end = 4196;
  h.boot_chunks = 1;
  h.identity = pack::identity_of(h.image_size, h.chunk_size, entries);
  h.base_identity = digest(99);
  h.base_hint = "../v1/base.pack";
  // The stored index is zstd's: another zstd may compress the entries to other bytes, so
  // the header is made for the golden index, and the entries are compared decompressed.
  const Bytes index = golden("pack-delta-index.zst", pack::encode_index(entries));
  h.index_length = index.size();
  h.index_hash = sha256(index);
  check_pack_header("pack-delta-header.bin", h);
  EXPECT_EQ(unzstd(pack::encode_index(entries), h.index_raw_bytes()),
            unzstd(index, h.index_raw_bytes()));
  auto ix = pack::decode_index(h, index);
  ASSERT_TRUE(ix) << ix.error().message;
  ASSERT_EQ(ix->size(), entries.size());
  for (size_t i = 0; i < entries.size(); ++i) {
    const pack::IndexEntry e = (*ix)[i];
    EXPECT_EQ(e.hash, entries[i].hash) << i;
    EXPECT_EQ(e.offset, entries[i].offset) << i;
    EXPECT_EQ(e.length, entries[i].length) << i;
    EXPECT_EQ(e.kind, entries[i].kind) << i;
  }
}

TEST(FormatGolden, PackHeader) {
  pack::PackHeader h;  // a pack without a base or a boot set
  h.image_size = 512ull << 20;
  h.level = 3;
  h.index_offset = 300ull << 20;
  h.index_length = 106504;
  h.identity = digest(1);
  h.index_hash = digest(2);
  check_pack_header("pack-header-plain.bin", h);

  h.flags = pack::kFlagHasBase;  // the largest pack: 2^24 chunks of 16 MiB
  h.chunk_size = pack::kChunkBytesMax;
  h.image_size = pack::kChunksMax * pack::kChunkBytesMax;
  h.level = 22;
  h.index_offset = UINT64_MAX / 2;
  h.index_length = ZSTD_compressBound(h.index_raw_bytes());
  h.boot_end = h.index_offset;
  h.boot_chunks = h.chunk_count();
  h.base_identity = digest(3);
  h.base_hint = "https://cdn.example.com/" + text(pack::kBaseHintBytesMax - 24, 'p');
  check_pack_header("pack-header-max.bin", h);
}

// --- files written by the imgstream binary (before the shared codec) ---
//
// One run of each command over a 256 KiB image (16 KiB of data in every third 4 KiB
// block, its SHA-256 below), kept zstd-compressed (they are mostly zeros):
//   imgstream pack img -o v1.pack --chunk-size 16K --level 3
//   imgstream stream img --store st --region-size 4K --no-background --trace t.trace
//     --run 'qemu-io -r -f raw "$uri" -c "read 0 64k" -c "read 128k 8k"'
//   imgstream profile merge t.trace t.trace -o p.profile --region-size 4K
//   imgstream serve img2 --track trk
//     --run 'qemu-io -f raw "$uri" -c "write -P 7 8k 4k" -c "write -P 9 200k 4k"'
// (binary-store-meta.zst is st/meta, binary-track.zst is trk). Each decodes, and what
// decodes encodes to the same bytes.

constexpr char kBinaryImageSha256[] =
    "522966427a120dc9b2d667ab320916d01e2213a92a18d8e765267c44c0eed7f2";

TEST(FormatGolden, BinaryPack) {
  if (write_mode()) GTEST_SKIP() << "written by the binary, not here";
  const Bytes file = binary_file("binary-pack.zst");
  auto h = pack::decode_header(file);
  ASSERT_TRUE(h) << h.error().message;
  EXPECT_EQ(Bytes(file.begin(), file.begin() + 4096), pack::encode_header(*h));
  MemEnv env;
  {
    auto f = env.open("/v1.pack", OpenMode::CreateOrOpen);
    ASSERT_TRUE(f);
    ASSERT_TRUE(write_all_at(**f, 0, file));
  }
  auto p = pack::Pack::open(env, "/v1.pack");
  ASSERT_TRUE(p) << p.error().message;
  Bytes image(256u << 10);
  ASSERT_TRUE((*p)->read(0, image));
  EXPECT_EQ(to_hex(sha256(image)), kBinaryImageSha256);
}

}  // namespace
}  // namespace imgstream
