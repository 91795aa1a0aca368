// Fuzzes the transmission phase's edge: decode_request + validate_request over arbitrary
// request headers and arbitrary export limits, against a model of the protocol's rules
// written independently (with 128-bit arithmetic, so that no range check can wrap).
//
// Input: 20 bytes of ExportLimits (size u64, block_size_min u32, payload_max u32,
// transmission flags u16, structured u8, contexts u8), then 28 bytes of request header;
// short inputs are padded with zeros. The first header byte's low bit, when the input is
// short of a header, plants the right magic so that the interesting path is reached.
#include "fuzz_check.h"
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "nbd/protocol.h"
#include "nbd/reply.h"
#include "nbd/request.h"

namespace {

using namespace imgstream::nbd;

constexpr size_t kLimitsBytes = 20;

// Whether the protocol (as docs/nbd-server.md narrows it) allows the request.
bool model_allows(const Request& r, const ExportLimits& l) {
  const uint16_t tf = l.transmission_flags;
  const bool ro = tf & kFlagReadOnly;
  if (r.type > kCmdBlockStatus) return false;
  uint16_t allowed = (tf & kFlagSendFua) ? kCmdFlagFua : 0;
  if (r.type == kCmdRead && (tf & kFlagSendDf)) allowed |= kCmdFlagDf;
  if (r.type == kCmdWriteZeroes) {
    allowed |= kCmdFlagNoHole;
    if (tf & kFlagSendFastZero) allowed |= kCmdFlagFastZero;
  }
  if (r.type == kCmdBlockStatus) allowed |= kCmdFlagReqOne;
  if ((r.flags & ~allowed) != 0) return false;
  switch (r.type) {
    case kCmdDisc:
      return true;
    case kCmdFlush:
      return (tf & kFlagSendFlush) && r.offset == 0 && r.length == 0;
    case kCmdWrite:
      if (ro) return false;
      break;
    case kCmdTrim:
      if (ro || !(tf & kFlagSendTrim)) return false;
      break;
    case kCmdWriteZeroes:
      if (ro || !(tf & kFlagSendWriteZeroes)) return false;
      break;
    case kCmdCache:
      if (!(tf & kFlagSendCache)) return false;
      break;
    case kCmdBlockStatus:
      if (!l.structured_replies || !l.meta_contexts_selected) return false;
      break;
    default:
      break;
  }
  if ((r.type == kCmdRead || r.type == kCmdWrite) && r.length > l.payload_max) return false;
  if (r.length == 0) return false;
  if (l.block_size_min > 1 && (r.offset % l.block_size_min || r.length % l.block_size_min))
    return false;
  return static_cast<unsigned __int128>(r.offset) + r.length <= l.size;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::byte in[kLimitsBytes + kRequestHeaderBytes] = {};
  std::memcpy(in, data, std::min(size, sizeof in));
  ExportLimits l;
  l.size = get_u64(&in[0]);
  l.block_size_min = get_u32(&in[8]);
  l.payload_max = get_u32(&in[12]);
  l.transmission_flags = get_u16(&in[16]);
  l.structured_replies = uint8_t(in[18]) & 1;
  l.meta_contexts_selected = uint8_t(in[19]) & 1;
  std::byte* h = in + kLimitsBytes;
  if (size < sizeof in && (uint8_t(h[0]) & 1)) put_u32(h, kRequestMagic);

  const auto header = std::span<const std::byte, kRequestHeaderBytes>(h, kRequestHeaderBytes);
  auto req = decode_request(header);
  FUZZ_CHECK(req.has_value() == (get_u32(h) == kRequestMagic));
  if (!req) return 0;

  // Encoding gives back the same bytes.
  std::byte again[kRequestHeaderBytes];
  encode_request(*req, again);
  FUZZ_CHECK(std::memcmp(again, h, kRequestHeaderBytes) == 0);

  const uint32_t err = validate_request(*req, l);
  FUZZ_CHECK((err == 0) == model_allows(*req, l));
  FUZZ_CHECK(err == 0 || err == kEInval || err == kEPerm || err == kENoSpc || err == kEOverflow);
  if (err == 0 && req->type != kCmdDisc && req->type != kCmdFlush) {
    // What devices below rely on (block_device.h).
    FUZZ_CHECK(req->length > 0 && req->offset <= l.size && req->length <= l.size - req->offset);
  }
  // Writes beyond the end are "no space", other ranges beyond it "invalid" (when nothing
  // else is wrong with the request).
  if (err == kENoSpc) FUZZ_CHECK(req->type == kCmdWrite || req->type == kCmdWriteZeroes);
  if (err == kEOverflow) {
    FUZZ_CHECK(req->type == kCmdRead || req->type == kCmdWrite);
    FUZZ_CHECK(req->length > l.payload_max);
  }
  if (err == kEPerm) FUZZ_CHECK(l.transmission_flags & kFlagReadOnly);

  // Every reply fits the buffers the connection gives the encoders (exact-size heap
  // buffers, so that AddressSanitizer sees any overrun).
  for (bool structured : {false, true}) {
    auto buf = std::make_unique<std::byte[]>(kReplyHeaderBytesMax);
    const size_t n = encode_error_reply(buf.get(), *req, err ? err : kEIo, structured);
    FUZZ_CHECK(n <= kReplyHeaderBytesMax);
    const bool chunk = structured && (req->type == kCmdRead || req->type == kCmdBlockStatus);
    FUZZ_CHECK(get_u32(buf.get()) == (chunk ? kStructuredReplyMagic : kSimpleReplyMagic));
    if (req->type == kCmdRead) {
      FUZZ_CHECK(encode_read_header(buf.get(), *req, structured) == read_header_bytes(structured));
    }
  }
  return 0;
}
