// Traces and boot profiles begin with the same 64-byte framed header (docs/framing.md,
// docs/trace-format.md, docs/profile-format.md): magic, version, size 64, the format's
// fields from 16 to 39, zeros from 40, CRC-32C at 60. Callers prefix its messages with
// "trace NAME: " or "profile NAME: ".
#pragma once

#include <optional>
#include <string_view>

#include "base/codec.h"

namespace imgstream::profile {

inline constexpr size_t kFileHeaderBytes = 64;
inline constexpr size_t kFileHeaderReservedAt = 40;

constexpr Frame file_header_frame(std::string_view magic, uint32_t version, const char* bad_magic) {
  return Frame{.magic = magic,
               .bytes = kFileHeaderBytes,
               .version = version,
               .size_field = true,
               .text = {.truncated = "shorter than its header ({} bytes)",
                        .bad_magic = bad_magic,
                        .bad_crc = "header CRC mismatch at byte 0",
                        .bad_version = "unsupported version {}",
                        .bad_size = "bad header size at byte 12"}};
}

// The first reserved byte of an opened header that is not zero, if any.
inline std::optional<size_t> file_header_nonzero_reserved(ByteReader& header) {
  const size_t crc_at = kFileHeaderBytes - Frame::kCrcBytes;
  return header.nonzero_at(kFileHeaderReservedAt, crc_at - kFileHeaderReservedAt);
}

}  // namespace imgstream::profile
