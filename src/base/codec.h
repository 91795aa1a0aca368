// The one codec of every framed format imgstream writes (docs/framing.md): the store's
// meta file, the tracking file, packs, read traces and boot profiles.
//
// - ByteReader reads little-endian fields from untrusted bytes. A read past the end never
//   touches memory outside the span: it yields zeros and marks the reader failed (sticky),
//   so a decoder reads its fields and checks ok() once. No exceptions, no allocation.
// - ByteWriter writes little-endian fields into a buffer the encoder sized. Writing past
//   its end is a bug in the encoder, not bad input: it stops the process (IMG_CHECK).
// - Frame describes a fixed-size block framed as "magic, version, size, ..., CRC-32C":
//   open_frame() checks it on the way in, new_frame()/seal_frame() make it on the way out.
//
// Everything is inline or a plain call: trace and profile decoding read millions of
// records through it.
#pragma once

#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string_view>
#include <vector>

#include "base/check.h"
#include "base/crc32c.h"
#include "base/endian.h"
#include "base/result.h"

namespace imgstream {

class ByteReader {
 public:
  explicit ByteReader(std::span<const std::byte> bytes) : b_(bytes) {}

  size_t size() const { return b_.size(); }
  size_t pos() const { return pos_; }
  size_t remaining() const { return b_.size() - pos_; }
  // False once any read went past the end; stays false.
  bool ok() const { return !failed_; }
  std::span<const std::byte> all() const { return b_; }

  // Sequential reads, from pos() on.
  uint8_t u8() {
    return take<uint8_t>(1, [](const std::byte* p) { return uint8_t(*p); });
  }
  uint16_t u16() { return take<uint16_t>(2, le::get16); }
  uint32_t u32() { return take<uint32_t>(4, le::get32); }
  uint64_t u64() { return take<uint64_t>(8, le::get64); }
  double f64() { return std::bit_cast<double>(u64()); }  // IEEE 754 binary64, its bits LE
  // A view of the next n bytes (empty when fewer remain): a length read from the input
  // is checked against the buffer here, before anything is allocated for it.
  std::span<const std::byte> bytes(size_t n) {
    auto s = bytes_at(pos_, n);
    pos_ = failed_ ? pos_ : pos_ + n;
    return s;
  }
  void skip(size_t n) { (void)bytes(n); }

  // Reads at an offset from the start; pos() does not move.
  uint8_t u8_at(size_t at) { return fits(at, 1) ? uint8_t(b_[at]) : 0; }
  uint16_t u16_at(size_t at) { return fits(at, 2) ? le::get16(b_.data() + at) : 0; }
  uint32_t u32_at(size_t at) { return fits(at, 4) ? le::get32(b_.data() + at) : 0; }
  uint64_t u64_at(size_t at) { return fits(at, 8) ? le::get64(b_.data() + at) : 0; }
  double f64_at(size_t at) { return std::bit_cast<double>(u64_at(at)); }
  std::span<const std::byte> bytes_at(size_t at, size_t n) {
    return fits(at, n) ? b_.subspan(at, n) : std::span<const std::byte>{};
  }
  // Copies exactly out.size() bytes from `at` (zeros when they are not all there).
  void copy_at(size_t at, std::span<std::byte> out) {
    auto s = bytes_at(at, out.size());
    if (s.empty())
      std::memset(out.data(), 0, out.size());
    else
      std::memcpy(out.data(), s.data(), s.size());
  }
  std::string_view string_at(size_t at, size_t n) {
    auto s = bytes_at(at, n);
    return {reinterpret_cast<const char*>(s.data()), s.size()};
  }
  // The offset of the first byte in [at, at + n) that is not zero, if any. A range past
  // the end fails the reader and names its start.
  std::optional<size_t> nonzero_at(size_t at, size_t n);

 private:
  bool fits(size_t at, size_t n) {
    if (at <= b_.size() && n <= b_.size() - at) [[likely]]
      return true;
    failed_ = true;
    return false;
  }
  template <typename T, typename Get>
  T take(size_t n, Get get) {
    if (!fits(pos_, n)) return 0;
    const T v = get(b_.data() + pos_);
    pos_ += n;
    return v;
  }

  std::span<const std::byte> b_;
  size_t pos_ = 0;
  bool failed_ = false;
};

class ByteWriter {
 public:
  explicit ByteWriter(std::span<std::byte> bytes) : b_(bytes) {}

  size_t pos() const { return pos_; }
  size_t size() const { return b_.size(); }

  // Sequential writes, from pos() on.
  void u8(uint8_t v) { u8_at(advance(1), v); }
  void u16(uint16_t v) { u16_at(advance(2), v); }
  void u32(uint32_t v) { u32_at(advance(4), v); }
  void u64(uint64_t v) { u64_at(advance(8), v); }
  void f64(double v) { u64(std::bit_cast<uint64_t>(v)); }
  void bytes(std::span<const std::byte> v) { bytes_at(advance(v.size()), v); }
  void skip(size_t n) { pos_ = room(pos_, n) + n; }  // leaves what is there (zeros)

  // Writes at an offset from the start; pos() does not move.
  void u8_at(size_t at, uint8_t v) { b_[room(at, 1)] = std::byte(v); }
  void u16_at(size_t at, uint16_t v) { le::put16(b_.data() + room(at, 2), v); }
  void u32_at(size_t at, uint32_t v) { le::put32(b_.data() + room(at, 4), v); }
  void u64_at(size_t at, uint64_t v) { le::put64(b_.data() + room(at, 8), v); }
  void f64_at(size_t at, double v) { u64_at(at, std::bit_cast<uint64_t>(v)); }
  void bytes_at(size_t at, std::span<const std::byte> v) {
    if (!v.empty()) std::memcpy(b_.data() + room(at, v.size()), v.data(), v.size());
  }
  void string_at(size_t at, std::string_view s) { bytes_at(at, std::as_bytes(std::span(s))); }

 private:
  // Where a sequential write of n bytes goes; the write itself checks the room.
  size_t advance(size_t n) {
    const size_t at = pos_;
    pos_ += n;
    return at;
  }
  // The encoder sized the buffer for what it writes: anything else is its bug.
  size_t room(size_t at, size_t n) const {
    IMG_CHECK_MSG(at <= b_.size() && n <= b_.size() - at, "encoder wrote past its buffer");
    return at;
  }

  std::span<std::byte> b_;
  size_t pos_ = 0;
};

// CRC-32C of `b` with the 4 bytes at `field_at` taken as zero: the checksum of a record
// that holds its own CRC inside what it covers (a trace's record block).
uint32_t crc32c_without_field(std::span<const std::byte> b, size_t field_at);

// A fixed-size framed block (docs/framing.md):
//
//   0            magic (at most 8 bytes)
//   8            version, u32       when `version` is not 0
//   12           size, u32 = bytes  when `size_field`
//   bytes - 4    CRC-32C of bytes [0, bytes - 4)
//
// The messages are the format's own (users and tests know them). In `truncated` "{}" is
// replaced by the input's length, in `bad_version` by the version found, in `bad_size`
// by the size found.
struct FrameText {
  const char* truncated;
  const char* bad_magic;
  const char* bad_crc;
  const char* bad_version = "";
  const char* bad_size = "";
};

struct Frame {
  std::string_view magic;
  size_t bytes = 0;
  uint32_t version = 0;     // 0: the block has no version field
  bool size_field = false;  // the u32 at 12 holds `bytes`
  FrameText text;

  static constexpr size_t kVersionAt = 8;
  static constexpr size_t kSizeAt = 12;
  static constexpr size_t kCrcBytes = 4;
  size_t crc_at() const { return bytes - kCrcBytes; }
};

// Checks, in this order, that `in` holds at least f.bytes bytes, the magic, the CRC, the
// version and the size field; returns a reader of the frame's f.bytes bytes (the caller
// reads what follows them from `in`). The error is EINVAL with f's message.
Result<ByteReader> open_frame(std::span<const std::byte> in, const Frame& f);

// A zeroed buffer of `total` bytes (at least f.bytes) with the frame's magic, version and
// size written; fill its fields, then seal_frame().
std::vector<std::byte> new_frame(const Frame& f, size_t total = 0);
// Writes the CRC of the frame at the start of `block`.
void seal_frame(std::span<std::byte> block, const Frame& f);

}  // namespace imgstream
