// Source: where a streamed image comes from (DESIGN.md, "Layers"): an NBD server
// (NbdSource, on libnbd), a local file (FileSource), later an HTTP pack. A Source is
// read-only.
//
// Faults: a Source retries and reconnects on its own. A request fails only when it could
// not be completed within the source's I/O timeout (or the error is permanent, e.g. a
// read past the end); the error message then names the source and the reason.
//
// Thread safety: every method may be called from any thread, concurrently.
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "base/result.h"
#include "device/block_device.h"

namespace imgstream::source {

// Called exactly once per read_async, from a thread of the source's choosing (usually
// its I/O thread): keep it short and never call back into the source from it... except
// read_async, which is allowed.
using ReadDone = std::function<void(Result<void>)>;

class Source {
 public:
  virtual ~Source() = default;

  virtual uint64_t size() const = 0;
  // The URI or path, for messages and the store header.
  virtual const std::string& uri() const = 0;

  // Starts reading [offset, offset + buf.size()) into buf; buf must stay valid until done
  // is called. Many reads may be in flight.
  virtual void read_async(uint64_t offset, std::span<std::byte> buf, ReadDone done) = 0;
  // Synchronous read on top of read_async.
  Result<void> read(uint64_t offset, std::span<std::byte> buf);
  // Reads every piece, all in flight at once (one round trip, not one each); the first
  // error, if any.
  struct Piece {
    uint64_t offset;
    std::span<std::byte> buf;
  };
  Result<void> read_all(std::span<const Piece> pieces);

  // Appends base:allocation extents (kStateHole / kStateZero) describing [offset, ...) up
  // to at most length bytes, at least one extent. Sources that cannot tell report data.
  virtual Result<void> block_status(uint64_t offset, uint64_t length, std::vector<Extent>& out);

  // The image's identity when the source knows it (a pack's index digest): the store
  // keeps it as the source's fingerprint. Empty: the streamer computes one from the bytes.
  virtual std::optional<std::array<std::byte, 32>> identity() const { return std::nullopt; }

  // Lets go of the remote side (closes connections). Later calls fail with ESHUTDOWN.
  virtual void close() {}
};

}  // namespace imgstream::source
