// Encoders of transmission-phase replies. Each writes into a caller's buffer that has room
// for kReplyHeaderBytesMax and returns the bytes written.
#pragma once

#include <cstddef>
#include <cstdint>

#include "nbd/protocol.h"
#include "nbd/request.h"

namespace imgstream::nbd {

// The largest header any reply needs before its data (structured OFFSET_DATA: 20 + 8).
inline constexpr size_t kReplyHeaderBytesMax = kChunkHeaderBytes + 8;
// A structured error chunk without a message: header + u32 error + u16 length.
inline constexpr size_t kErrorChunkBytes = kChunkHeaderBytes + 6;

inline size_t encode_simple_reply(std::byte* p, uint64_t cookie, uint32_t error) {
  put_u32(p, kSimpleReplyMagic);
  put_u32(p + 4, error);
  put_u64(p + 8, cookie);
  return kSimpleReplyBytes;
}

inline size_t encode_chunk_header(std::byte* p, uint16_t flags, uint16_t type, uint64_t cookie,
                                  uint32_t length) {
  put_u32(p, kStructuredReplyMagic);
  put_u16(p + 4, flags);
  put_u16(p + 6, type);
  put_u64(p + 8, cookie);
  put_u32(p + 16, length);
  return kChunkHeaderBytes;
}

// The header that precedes `length` bytes of read data.
inline size_t read_header_bytes(bool structured) {
  return structured ? kChunkHeaderBytes + 8 : kSimpleReplyBytes;
}
inline size_t encode_read_header(std::byte* p, const Request& r, bool structured) {
  if (!structured) return encode_simple_reply(p, r.cookie, 0);
  encode_chunk_header(p, kReplyFlagDone, kChunkOffsetData, r.cookie, r.length + 8);
  put_u64(p + kChunkHeaderBytes, r.offset);
  return kChunkHeaderBytes + 8;
}

// An error answer to any request: a structured error chunk for reads when structured
// replies were negotiated (they must not get simple replies), a simple reply otherwise.
inline size_t encode_error_reply(std::byte* p, const Request& r, uint32_t error,
                                 bool structured) {
  if (!structured || (r.type != kCmdRead && r.type != kCmdBlockStatus))
    return encode_simple_reply(p, r.cookie, error);
  encode_chunk_header(p, kReplyFlagDone, kChunkError, r.cookie, 6);
  put_u32(p + kChunkHeaderBytes, error);
  put_u16(p + kChunkHeaderBytes + 4, 0);
  return kErrorChunkBytes;
}

}  // namespace imgstream::nbd
