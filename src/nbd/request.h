// Requests of the transmission phase: decoding the 28-byte header and validating it once,
// at the edge (nbdkit's server/protocol.c does the same), so that devices below may
// assert the contract instead of checking again.
#pragma once

#include <cstdint>
#include <optional>
#include <span>

#include "nbd/protocol.h"

namespace imgstream::nbd {

struct Request {
  uint16_t flags = 0;
  uint16_t type = 0;
  uint64_t cookie = 0;
  uint64_t offset = 0;
  uint32_t length = 0;
};

// What the validator needs to know of the export and of the negotiation.
struct ExportLimits {
  uint64_t size = 0;
  uint32_t block_size_min = 1;
  uint32_t payload_max = 32u << 20;
  uint16_t transmission_flags = 0;  // as sent to the client
  bool structured_replies = false;
  bool meta_contexts_selected = false;
};

// Decodes a request header. nullopt when the magic is wrong: the stream is out of step
// and the only safe answer is a hard disconnect.
std::optional<Request> decode_request(std::span<const std::byte, kRequestHeaderBytes> header);
void encode_request(const Request& r, std::span<std::byte, kRequestHeaderBytes> out);

// True when the client sends `length` payload bytes after the header (NBD_CMD_WRITE),
// whether or not the request is valid: the server must consume them to stay in step.
inline bool has_payload(const Request& r) { return r.type == kCmdWrite; }

// 0 when the request may be executed, otherwise the wire error to answer with.
uint32_t validate_request(const Request& r, const ExportLimits& limits);

}  // namespace imgstream::nbd
