#include "base/codec.h"

#include <gtest/gtest.h>

#include <array>
#include <limits>

namespace imgstream {
namespace {

std::vector<std::byte> counting(size_t n) {
  std::vector<std::byte> b(n);
  for (size_t i = 0; i < n; ++i) b[i] = std::byte(i + 1);
  return b;
}

TEST(ByteReader, ReadsLittleEndianInOrderAndAtOffsets) {
  const auto b = counting(23);
  ByteReader r(b);
  EXPECT_EQ(r.u8(), 0x01);
  EXPECT_EQ(r.u16(), 0x0302);
  EXPECT_EQ(r.u32(), 0x07060504u);
  EXPECT_EQ(r.u64(), 0x0f0e0d0c0b0a0908u);
  EXPECT_EQ(r.pos(), 15u);
  EXPECT_EQ(r.bytes(2).size(), 2u);
  r.skip(2);
  EXPECT_EQ(r.remaining(), 4u);
  EXPECT_EQ(r.u32(), 0x17161514u);
  EXPECT_EQ(r.remaining(), 0u);
  EXPECT_TRUE(r.ok());
  EXPECT_EQ(r.u16_at(1), 0x0302);
  EXPECT_EQ(r.u64_at(15), 0x1716151413121110u);
  EXPECT_EQ(r.string_at(0, 2), std::string_view("\x01\x02", 2));
  EXPECT_EQ(r.pos(), 23u) << "reads at an offset do not move the cursor";
  EXPECT_TRUE(r.ok());
}

TEST(ByteReader, DoublesAreTheirBitsLittleEndian) {
  std::array<std::byte, 8> b{};
  ByteWriter(b).f64_at(0, -1.5);
  EXPECT_EQ(le::get64(b.data()), std::bit_cast<uint64_t>(-1.5));
  EXPECT_EQ(ByteReader(b).f64(), -1.5);
}

// Every read that would end past the buffer, from every position, yields zero and fails
// the reader for good; none touches memory outside it (ASan and _GLIBCXX_ASSERTIONS in
// the sanitizer build would say).
TEST(ByteReader, EveryReadPastTheEndFailsCleanly) {
  for (size_t n = 0; n <= 9; ++n) {
    const auto b = counting(n);
    for (size_t width : {1, 2, 4, 8}) {
      for (size_t at = 0; at <= n + 1; ++at) {
        ByteReader r(b);
        uint64_t v = 0;
        switch (width) {
          case 1:
            v = r.u8_at(at);
            break;
          case 2:
            v = r.u16_at(at);
            break;
          case 4:
            v = r.u32_at(at);
            break;
          case 8:
            v = r.u64_at(at);
            break;
        }
        const bool fits = at + width <= n;
        EXPECT_EQ(r.ok(), fits) << n << " " << width << " " << at;
        if (!fits) {
          EXPECT_EQ(v, 0u);
        }
        // Sequentially: skip to `at` (a skip past the end fails too), then read.
        ByteReader s(b);
        s.skip(at);
        EXPECT_EQ(s.ok(), at <= n);
        if (at > n) continue;
        switch (width) {
          case 1:
            v = s.u8();
            break;
          case 2:
            v = s.u16();
            break;
          case 4:
            v = s.u32();
            break;
          case 8:
            v = s.u64();
            break;
        }
        EXPECT_EQ(s.ok(), fits) << n << " " << width << " " << at;
        if (!fits) {
          EXPECT_EQ(v, 0u);
        }
      }
    }
  }
}

TEST(ByteReader, FailureIsSticky) {
  const auto b = counting(4);
  ByteReader r(b);
  EXPECT_EQ(r.u64(), 0u);
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.pos(), 0u) << "a failed read does not move the cursor";
  EXPECT_EQ(r.u32(), 0x04030201u) << "later reads that fit still read";
  EXPECT_FALSE(r.ok()) << "but the reader stays failed";
}

TEST(ByteReader, HugeOffsetsAndLengthsDoNotWrap) {
  const auto b = counting(16);
  constexpr size_t kMax = std::numeric_limits<size_t>::max();
  for (size_t at : {kMax, kMax - 1, kMax - 3, kMax - 7, size_t{17}}) {
    ByteReader r(b);
    EXPECT_EQ(r.u64_at(at), 0u);
    EXPECT_EQ(r.u8_at(at), 0u);
    EXPECT_TRUE(r.bytes_at(at, 1).empty());
    EXPECT_FALSE(r.ok());
  }
  ByteReader r(b);
  EXPECT_TRUE(r.bytes_at(8, kMax).empty());
  EXPECT_TRUE(r.bytes_at(kMax, kMax).empty());
  EXPECT_FALSE(r.ok());
}

// A length read from the input that claims more than the buffer holds is refused by the
// reader before the decoder could allocate for it: it gets no bytes, and no copy.
TEST(ByteReader, LengthsBeyondTheBufferAreRefusedBeforeAllocation) {
  std::vector<std::byte> b(12);
  ByteWriter(b).u32_at(0, 0xffffffffu);  // "4 GiB follow"
  ByteReader r(b);
  const uint32_t n = r.u32();
  const auto payload = r.bytes(n);
  EXPECT_TRUE(payload.empty());
  EXPECT_FALSE(r.ok());
  EXPECT_EQ(r.pos(), 4u);
  EXPECT_TRUE(r.string_at(4, n).empty());
  std::array<std::byte, 32> out;
  out.fill(std::byte{0xaa});
  ByteReader(b).copy_at(4, out);  // 8 bytes there, 32 asked: zeros, not a partial copy
  for (std::byte c : out) EXPECT_EQ(c, std::byte{0});
}

TEST(ByteReader, ZeroRuns) {
  auto b = counting(16);
  b[10] = b[11] = b[12] = std::byte{0};
  ByteReader r(b);
  EXPECT_EQ(r.nonzero_at(10, 3), std::nullopt);
  EXPECT_EQ(r.nonzero_at(9, 3), 9u);
  EXPECT_EQ(r.nonzero_at(11, 3), 13u);
  EXPECT_TRUE(r.ok());
  EXPECT_EQ(r.nonzero_at(14, 3), 14u) << "past the end: named by its start";
  EXPECT_FALSE(r.ok());
}

TEST(ByteWriter, WritesWhatTheReaderReads) {
  std::vector<std::byte> b(32);
  ByteWriter w(b);
  w.u8(1);
  w.u16(0x0203);
  w.u32(0x04050607);
  w.u64(0x08090a0b0c0d0e0f);
  w.skip(1);
  w.bytes(std::as_bytes(std::span("xy", 2)));
  w.u16_at(30, 0xbeef);
  EXPECT_EQ(w.pos(), 18u);
  ByteReader r(b);
  EXPECT_EQ(r.u8(), 1);
  EXPECT_EQ(r.u16(), 0x0203);
  EXPECT_EQ(r.u32(), 0x04050607u);
  EXPECT_EQ(r.u64(), 0x08090a0b0c0d0e0fu);
  EXPECT_EQ(r.u8(), 0) << "skip leaves zeros";
  EXPECT_EQ(r.string_at(16, 2), "xy");
  EXPECT_EQ(r.u16_at(30), 0xbeef);
  EXPECT_TRUE(r.ok());
}

// An encoder that writes past the buffer it sized has a bug: the process stops before it
// could write wrong data anywhere.
TEST(ByteWriterDeathTest, WritingPastTheEndStops) {
  std::vector<std::byte> b(8);
  EXPECT_DEATH(ByteWriter(b).u64_at(1, 0), "encoder wrote past its buffer");
  EXPECT_DEATH(ByteWriter(b).u8_at(8, 0), "encoder wrote past its buffer");
  EXPECT_DEATH(
      {
        ByteWriter w(b);
        w.u32(0);
        w.u64(0);
      },
      "encoder wrote past its buffer");
}

TEST(Crc32c, WithoutFieldIsTheCrcWithTheFieldZero) {
  const auto b = counting(40);
  for (size_t at : {0, 12, 36}) {
    auto zeroed = b;
    ByteWriter(zeroed).u32_at(at, 0);
    EXPECT_EQ(crc32c_without_field(b, at), crc32c(zeroed)) << at;
  }
}

constexpr Frame kTestFrame{.magic = "IMGTEST1",
                           .bytes = 64,
                           .version = 3,
                           .size_field = true,
                           .text = {.truncated = "short ({} bytes)",
                                    .bad_magic = "bad magic",
                                    .bad_crc = "bad crc",
                                    .bad_version = "version {}",
                                    .bad_size = "size {}"}};

std::vector<std::byte> sealed(size_t total = 0) {
  auto b = new_frame(kTestFrame, total);
  ByteWriter(b).u64_at(16, 0x1122334455667788);
  seal_frame(b, kTestFrame);
  return b;
}

TEST(Frame, SealedFrameOpensWithItsFields) {
  const auto b = sealed();
  ASSERT_EQ(b.size(), 64u);
  ByteReader raw(b);
  EXPECT_EQ(raw.string_at(0, 8), "IMGTEST1");
  EXPECT_EQ(raw.u32_at(8), 3u);
  EXPECT_EQ(raw.u32_at(12), 64u);
  EXPECT_EQ(raw.u32_at(60), crc32c(std::span(b).first(60)));
  auto r = open_frame(b, kTestFrame);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->size(), 64u);
  EXPECT_EQ(r->u64_at(16), 0x1122334455667788u);
}

TEST(Frame, ReaderCoversTheFrameOnly) {
  const auto b = sealed(100);  // a frame and 36 bytes after it (a slot's bitmap)
  auto r = open_frame(b, kTestFrame);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->size(), 64u);
  EXPECT_EQ(r->u8_at(64), 0);
  EXPECT_FALSE(r->ok());
}

// Any single flipped bit of a frame is caught: by the magic, the CRC, or both.
TEST(Frame, EveryFlippedBitIsDetected) {
  const auto good = sealed();
  for (size_t bit = 0; bit < good.size() * 8; ++bit) {
    auto b = good;
    b[bit / 8] ^= std::byte(1u << (bit % 8));
    auto r = open_frame(b, kTestFrame);
    ASSERT_FALSE(r) << "bit " << bit;
    const std::string& m = r.error().message;
    EXPECT_TRUE(m == "bad magic" || m == "bad crc") << "bit " << bit << ": " << m;
    EXPECT_EQ(r.error().code, EINVAL);
  }
}

TEST(Frame, EachFaultHasItsMessageInOrder) {
  auto b = sealed();
  EXPECT_EQ(open_frame(std::span(b).first(63), kTestFrame).error().message, "short (63 bytes)");
  EXPECT_EQ(open_frame({}, kTestFrame).error().message, "short (0 bytes)");
  // A version or size this reader does not know, with a good CRC: named with its value.
  ByteWriter(b).u32_at(8, 4);
  ByteWriter(b).u32_at(60, crc32c(std::span(b).first(60)));
  EXPECT_EQ(open_frame(b, kTestFrame).error().message, "version 4");
  b = sealed();
  ByteWriter(b).u32_at(12, 4096);
  ByteWriter(b).u32_at(60, crc32c(std::span(b).first(60)));
  EXPECT_EQ(open_frame(b, kTestFrame).error().message, "size 4096");
  // The magic is checked before the CRC, the CRC before the version.
  b = sealed();
  ByteWriter(b).u32_at(8, 4);
  EXPECT_EQ(open_frame(b, kTestFrame).error().message, "bad crc");
  b[0] = std::byte{'X'};
  EXPECT_EQ(open_frame(b, kTestFrame).error().message, "bad magic");
}

TEST(Frame, WithoutVersionOrSizeThoseBytesAreTheFormats) {
  constexpr Frame kBare{
      .magic = "SLOT", .bytes = 32, .text = {.truncated = "t", .bad_magic = "m", .bad_crc = "c"}};
  auto b = new_frame(kBare);
  ByteWriter(b).u32_at(8, 77);
  ByteWriter(b).u32_at(12, 88);
  seal_frame(b, kBare);
  auto r = open_frame(b, kBare);
  ASSERT_TRUE(r) << r.error().message;
  EXPECT_EQ(r->u32_at(8), 77u);
  EXPECT_EQ(r->u32_at(12), 88u);
}

}  // namespace
}  // namespace imgstream
