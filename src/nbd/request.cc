#include "nbd/request.h"

#include <cerrno>

namespace imgstream::nbd {

std::optional<Request> decode_request(std::span<const std::byte, kRequestHeaderBytes> h) {
  if (get_u32(&h[0]) != kRequestMagic) return std::nullopt;
  Request r;
  r.flags = get_u16(&h[4]);
  r.type = get_u16(&h[6]);
  r.cookie = get_u64(&h[8]);
  r.offset = get_u64(&h[16]);
  r.length = get_u32(&h[24]);
  return r;
}

void encode_request(const Request& r, std::span<std::byte, kRequestHeaderBytes> h) {
  put_u32(&h[0], kRequestMagic);
  put_u16(&h[4], r.flags);
  put_u16(&h[6], r.type);
  put_u64(&h[8], r.cookie);
  put_u64(&h[16], r.offset);
  put_u32(&h[24], r.length);
}

uint32_t to_wire_error(int err) {
  switch (err) {
    case 0: return 0;
    case EPERM: case EROFS: return kEPerm;
    case ENOMEM: return kENoMem;
    case EINVAL: return kEInval;
    case ENOSPC: case EDQUOT: case EFBIG: return kENoSpc;
    case EOVERFLOW: return kEOverflow;
    case ENOTSUP: return kENotSup;
    case ESHUTDOWN: return kEShutdown;
    default: return kEIo;
  }
}

namespace {

// The command flags each command accepts (besides FUA, accepted on all when negotiated).
uint16_t allowed_flags(uint16_t type, uint16_t tflags) {
  uint16_t f = (tflags & kFlagSendFua) ? kCmdFlagFua : 0;
  switch (type) {
    case kCmdRead: return f | ((tflags & kFlagSendDf) ? kCmdFlagDf : 0);
    case kCmdWriteZeroes:
      return f | kCmdFlagNoHole | ((tflags & kFlagSendFastZero) ? kCmdFlagFastZero : 0);
    case kCmdBlockStatus: return f | kCmdFlagReqOne;
    default: return f;
  }
}

}  // namespace

uint32_t validate_request(const Request& r, const ExportLimits& lim) {
  const uint16_t tf = lim.transmission_flags;
  const bool read_only = tf & kFlagReadOnly;
  if (r.type > kCmdBlockStatus) return kEInval;
  if (r.flags & ~allowed_flags(r.type, tf)) return kEInval;

  // Commands without a range.
  if (r.type == kCmdDisc) return 0;
  if (r.type == kCmdFlush) {
    if (!(tf & kFlagSendFlush)) return kEInval;
    return (r.offset == 0 && r.length == 0) ? 0 : kEInval;
  }

  // Whether the command is one this export advertised.
  switch (r.type) {
    case kCmdWrite: if (read_only) return kEPerm; break;
    case kCmdTrim:
      if (read_only) return kEPerm;
      if (!(tf & kFlagSendTrim)) return kEInval;
      break;
    case kCmdWriteZeroes:
      if (read_only) return kEPerm;
      if (!(tf & kFlagSendWriteZeroes)) return kEInval;
      break;
    case kCmdCache: if (!(tf & kFlagSendCache)) return kEInval; break;
    case kCmdBlockStatus:
      if (!lim.structured_replies || !lim.meta_contexts_selected) return kEInval;
      break;
    default: break;
  }

  // Payload bound: only READ and WRITE move data; the others may name larger ranges.
  // The protocol reserves EOVERFLOW for a READ the client asked not to fragment (DF);
  // every other oversized request is plain EINVAL (doc/proto.md, "Error values").
  if ((r.type == kCmdRead || r.type == kCmdWrite) && r.length > lim.payload_max)
    return (r.type == kCmdRead && (r.flags & kCmdFlagDf)) ? kEOverflow : kEInval;
  if (r.length == 0) return kEInval;
  const uint64_t min = lim.block_size_min;
  if (min > 1 && ((r.offset % min) != 0 || (r.length % min) != 0)) return kEInval;
  // offset + length cannot overflow 64 bits unchecked: offset may be anything.
  const bool in_range = r.offset <= lim.size && r.length <= lim.size - r.offset;
  if (!in_range) return (r.type == kCmdWrite || r.type == kCmdWriteZeroes) ? kENoSpc : kEInval;
  return 0;
}

}  // namespace imgstream::nbd
