#include "base/codec.h"

#include <fmt/format.h>

#include <algorithm>

namespace imgstream {

std::optional<size_t> ByteReader::nonzero_at(size_t at, size_t n) {
  if (!fits(at, n)) return at;
  const auto s = b_.subspan(at, n);
  const auto it = std::find_if(s.begin(), s.end(), [](std::byte c) { return c != std::byte{0}; });
  if (it == s.end()) return std::nullopt;
  return at + size_t(it - s.begin());
}

uint32_t crc32c_without_field(std::span<const std::byte> b, size_t field_at) {
  IMG_CHECK(field_at <= b.size() && b.size() - field_at >= 4);
  constexpr std::byte kZeros[4] = {};
  uint32_t c = crc32c(b.first(field_at));
  c = crc32c(kZeros, c);
  return crc32c(b.subspan(field_at + 4), c);
}

namespace {

Error frame_error(const char* text, uint64_t found) {
  return Error::invalid(fmt::format(fmt::runtime(text), found));
}

}  // namespace

Result<ByteReader> open_frame(std::span<const std::byte> in, const Frame& f) {
  IMG_CHECK(f.bytes >= Frame::kSizeAt + 4 + Frame::kCrcBytes &&
            f.magic.size() <= Frame::kVersionAt);
  if (in.size() < f.bytes) return frame_error(f.text.truncated, in.size());
  ByteReader r(in.first(f.bytes));
  if (r.string_at(0, f.magic.size()) != f.magic) return frame_error(f.text.bad_magic, 0);
  if (r.u32_at(f.crc_at()) != crc32c(in.first(f.crc_at()))) return frame_error(f.text.bad_crc, 0);
  if (f.version != 0) {
    const uint32_t v = r.u32_at(Frame::kVersionAt);
    if (v != f.version) return frame_error(f.text.bad_version, v);
  }
  if (f.size_field) {
    const uint32_t s = r.u32_at(Frame::kSizeAt);
    if (s != f.bytes) return frame_error(f.text.bad_size, s);
  }
  IMG_CHECK(r.ok());
  return r;
}

std::vector<std::byte> new_frame(const Frame& f, size_t total) {
  std::vector<std::byte> b(std::max(total, f.bytes));
  ByteWriter w(b);
  w.string_at(0, f.magic);
  if (f.version != 0) w.u32_at(Frame::kVersionAt, f.version);
  if (f.size_field) w.u32_at(Frame::kSizeAt, static_cast<uint32_t>(f.bytes));
  return b;
}

void seal_frame(std::span<std::byte> block, const Frame& f) {
  IMG_CHECK(block.size() >= f.bytes);
  ByteWriter(block).u32_at(f.crc_at(), crc32c(block.first(f.crc_at())));
  // Both sides of the disk: what is sealed opens.
  IMG_CHECK(open_frame(block, f).has_value());
}

}  // namespace imgstream
