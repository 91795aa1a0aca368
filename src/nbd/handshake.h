// The fixed newstyle handshake: option haggling up to NBD_OPT_GO / NBD_OPT_EXPORT_NAME.
// It runs over a Stream so that the fuzzer and unit tests can drive it from memory.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/limits.h"
#include "base/result.h"
#include "device/block_device.h"

namespace imgstream::nbd {

// A byte stream: the client's socket, or memory in tests.
class Stream {
 public:
  virtual ~Stream() = default;
  // Reads exactly buf.size() bytes; an early end of stream is an error (ECONNRESET).
  virtual Result<void> read_exact(std::span<std::byte> buf) = 0;
  virtual Result<void> write_all(std::span<const std::byte> buf) = 0;
};

struct Export {
  std::string name;  // "" is the default export
  std::string description;
  BlockDevice* device = nullptr;
  bool read_only = false;
};

// What the client and the server agreed on, for the transmission phase.
struct Negotiated {
  const Export* exp = nullptr;
  bool structured_replies = false;
  uint16_t transmission_flags = 0;
  // The selected metadata contexts: wire id i is device->meta_contexts()[contexts[i]].
  std::vector<size_t> contexts;
};

// Bounds on what a client may make us hold during the handshake.
inline constexpr uint32_t kOptionBytesMax = limits::kNbdOptionBytesMax;
inline constexpr uint32_t kOptionsPerConnectionMax = limits::kNbdOptionsPerConnectionMax;
inline constexpr uint32_t kMetaQueriesMax = limits::kNbdMetaQueriesMax;
inline constexpr uint32_t kStringBytesMax = limits::kNbdStringBytesMax;

// Runs the server side of the handshake. Returns the negotiation on success, nullopt when
// the client ended it cleanly (NBD_OPT_ABORT), an error when the client broke the
// protocol or the connection failed (the caller closes the connection).
Result<std::optional<Negotiated>> negotiate(Stream& s, std::span<const Export> exports);

// The transmission flags of an export, given whether structured replies were negotiated.
uint16_t transmission_flags(const Export& e, bool structured_replies);

}  // namespace imgstream::nbd
