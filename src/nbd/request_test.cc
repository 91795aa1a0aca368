#include "nbd/request.h"

#include <gtest/gtest.h>

#include <array>

#include "nbd/reply.h"

namespace imgstream::nbd {
namespace {

ExportLimits writable(uint64_t size) {
  ExportLimits l;
  l.size = size;
  l.transmission_flags = kFlagHasFlags | kFlagSendFlush | kFlagSendFua | kFlagSendTrim |
                         kFlagSendWriteZeroes | kFlagSendFastZero | kFlagSendCache |
                         kFlagSendDf;
  l.structured_replies = true;
  l.meta_contexts_selected = true;
  return l;
}

Request req(uint16_t type, uint64_t off, uint32_t len, uint16_t flags = 0) {
  Request r;
  r.type = type;
  r.offset = off;
  r.length = len;
  r.flags = flags;
  r.cookie = 42;
  return r;
}

TEST(Request, EncodeDecodeRoundTrip) {
  Request r = req(kCmdWrite, 0x0102030405060708ULL, 0x0a0b0c0d, kCmdFlagFua);
  std::array<std::byte, kRequestHeaderBytes> buf;
  encode_request(r, buf);
  EXPECT_EQ(get_u32(buf.data()), kRequestMagic);
  auto d = decode_request(buf);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(d->type, kCmdWrite);
  EXPECT_EQ(d->flags, kCmdFlagFua);
  EXPECT_EQ(d->cookie, 42u);
  EXPECT_EQ(d->offset, 0x0102030405060708ULL);
  EXPECT_EQ(d->length, 0x0a0b0c0du);
}

TEST(Request, BadMagicIsRejected) {
  std::array<std::byte, kRequestHeaderBytes> buf{};
  encode_request(req(kCmdRead, 0, 512), buf);
  buf[0] = std::byte{0x12};
  EXPECT_FALSE(decode_request(buf).has_value());
}

TEST(Validate, InRangeRequestsPass) {
  auto l = writable(1 << 20);
  EXPECT_EQ(validate_request(req(kCmdRead, 0, 4096), l), 0u);
  EXPECT_EQ(validate_request(req(kCmdRead, (1 << 20) - 1, 1), l), 0u);
  EXPECT_EQ(validate_request(req(kCmdWrite, 4096, 4096, kCmdFlagFua), l), 0u);
  EXPECT_EQ(validate_request(req(kCmdFlush, 0, 0), l), 0u);
  EXPECT_EQ(validate_request(req(kCmdWriteZeroes, 0, 1 << 20, kCmdFlagNoHole | kCmdFlagFastZero), l), 0u);
  EXPECT_EQ(validate_request(req(kCmdBlockStatus, 0, 1 << 20, kCmdFlagReqOne), l), 0u);
  EXPECT_EQ(validate_request(req(kCmdDisc, 0, 0), l), 0u);
}

TEST(Validate, OutOfRange) {
  auto l = writable(1 << 20);
  EXPECT_EQ(validate_request(req(kCmdRead, 1 << 20, 1), l), kEInval);
  EXPECT_EQ(validate_request(req(kCmdRead, (1 << 20) - 1, 2), l), kEInval);
  EXPECT_EQ(validate_request(req(kCmdTrim, 0, (1 << 20) + 1), l), kEInval);
  EXPECT_EQ(validate_request(req(kCmdCache, ~0ULL, 1), l), kEInval);
  // Writes past the end are "no space", as the protocol asks.
  EXPECT_EQ(validate_request(req(kCmdWrite, 1 << 20, 512), l), kENoSpc);
  EXPECT_EQ(validate_request(req(kCmdWriteZeroes, ~0ULL - 10, 512), l), kENoSpc);
}

TEST(Validate, OffsetPlusLengthOverflowDoesNotWrap) {
  auto l = writable(~0ULL);
  EXPECT_EQ(validate_request(req(kCmdRead, ~0ULL - 100, 4096), l), kEInval);
}

TEST(Validate, Alignment) {
  auto l = writable(1 << 20);
  l.block_size_min = 512;
  EXPECT_EQ(validate_request(req(kCmdRead, 512, 1024), l), 0u);
  EXPECT_EQ(validate_request(req(kCmdRead, 1, 512), l), kEInval);
  EXPECT_EQ(validate_request(req(kCmdWrite, 0, 100), l), kEInval);
}

TEST(Validate, PayloadLimit) {
  auto l = writable(1ULL << 40);
  EXPECT_EQ(validate_request(req(kCmdRead, 0, 32u << 20), l), 0u);
  // EINVAL, as the protocol says; EOVERFLOW only for a READ with DF.
  EXPECT_EQ(validate_request(req(kCmdRead, 0, (32u << 20) + 1), l), kEInval);
  EXPECT_EQ(validate_request(req(kCmdWrite, 0, (32u << 20) + 1), l), kEInval);
  EXPECT_EQ(validate_request(req(kCmdRead, 0, (32u << 20) + 1, kCmdFlagDf), l), kEOverflow);
  // Commands without payload may name larger ranges.
  EXPECT_EQ(validate_request(req(kCmdTrim, 0, 1u << 31), l), 0u);
}

TEST(Validate, ReadOnlyExport) {
  auto l = writable(1 << 20);
  l.transmission_flags = kFlagHasFlags | kFlagReadOnly | kFlagSendFlush;
  EXPECT_EQ(validate_request(req(kCmdWrite, 0, 512), l), kEPerm);
  EXPECT_EQ(validate_request(req(kCmdTrim, 0, 512), l), kEPerm);
  EXPECT_EQ(validate_request(req(kCmdWriteZeroes, 0, 512), l), kEPerm);
  EXPECT_EQ(validate_request(req(kCmdRead, 0, 512), l), 0u);
}

TEST(Validate, UnknownCommandAndFlags) {
  auto l = writable(1 << 20);
  EXPECT_EQ(validate_request(req(9, 0, 512), l), kEInval);
  EXPECT_EQ(validate_request(req(kCmdRead, 0, 512, kCmdFlagNoHole), l), kEInval);
  EXPECT_EQ(validate_request(req(kCmdWrite, 0, 512, kCmdFlagDf), l), kEInval);
  EXPECT_EQ(validate_request(req(kCmdRead, 0, 512, 1 << 12), l), kEInval);
  EXPECT_EQ(validate_request(req(kCmdFlush, 0, 512), l), kEInval);
  EXPECT_EQ(validate_request(req(kCmdRead, 0, 0), l), kEInval);
}

TEST(Validate, FlagsNeedNegotiation) {
  auto l = writable(1 << 20);
  l.transmission_flags &= static_cast<uint16_t>(~(kFlagSendFua | kFlagSendDf | kFlagSendFastZero));
  EXPECT_EQ(validate_request(req(kCmdWrite, 0, 512, kCmdFlagFua), l), kEInval);
  EXPECT_EQ(validate_request(req(kCmdRead, 0, 512, kCmdFlagDf), l), kEInval);
  EXPECT_EQ(validate_request(req(kCmdWriteZeroes, 0, 512, kCmdFlagFastZero), l), kEInval);
  l.meta_contexts_selected = false;
  EXPECT_EQ(validate_request(req(kCmdBlockStatus, 0, 512), l), kEInval);
}

TEST(Reply, StructuredReadErrorIsAChunk) {
  std::array<std::byte, kReplyHeaderBytesMax> buf{};
  Request r = req(kCmdRead, 0, 512);
  EXPECT_EQ(encode_error_reply(buf.data(), r, kEIo, true), kErrorChunkBytes);
  EXPECT_EQ(get_u32(buf.data()), kStructuredReplyMagic);
  EXPECT_EQ(get_u16(buf.data() + 6), kChunkError);
  EXPECT_EQ(get_u32(buf.data() + kChunkHeaderBytes), kEIo);
  // Other commands get simple replies.
  r.type = kCmdWrite;
  EXPECT_EQ(encode_error_reply(buf.data(), r, kEPerm, true), kSimpleReplyBytes);
  EXPECT_EQ(get_u32(buf.data()), kSimpleReplyMagic);
  EXPECT_EQ(get_u32(buf.data() + 4), kEPerm);
}

TEST(WireError, MapsErrnoToProtocolSet) {
  EXPECT_EQ(to_wire_error(EDQUOT), kENoSpc);
  EXPECT_EQ(to_wire_error(EROFS), kEPerm);
  EXPECT_EQ(to_wire_error(ETIMEDOUT), kEIo);
  EXPECT_EQ(to_wire_error(ENOTSUP), kENotSup);
}

}  // namespace
}  // namespace imgstream::nbd
