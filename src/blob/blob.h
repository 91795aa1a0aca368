// BlobReader: byte ranges of one immutable object — a local file, or an object behind an
// HTTP(S) URL (a plain web server, an object store, a CDN). The pack reader reads a
// pack's header, index and chunks through it (docs/pack-format.md), so a pack streams
// from anywhere that can answer a range request.
//
// Faults: a reader retries on its own (reconnects, backoff) and fails a read only when
// it could not be done within its timeout, or the error is permanent (404, a read past
// the end, an object that changed size). The message names the object.
//
// Thread safety: every method may be called from any thread, concurrently; concurrent
// reads go out in parallel (several connections for HTTP).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "base/env.h"
#include "base/result.h"

namespace imgstream::blob {

struct BlobStats {
  uint64_t requests = 0;        // range requests (or reads) made, retries included
  uint64_t bytes_received = 0;  // bytes that came over the wire, discarded ones included
  uint64_t retries = 0;         // requests made again after a failure
};

struct BlobOptions {
  unsigned connections = 4;                        // parallel HTTP connections at most
  std::chrono::milliseconds timeout{30'000};       // a read fails after this long
  std::chrono::milliseconds connect_timeout{5'000};
};

class BlobReader {
 public:
  virtual ~BlobReader() = default;
  // The path or URL, for messages.
  virtual const std::string& uri() const = 0;
  // The object's size, learned when it was opened.
  virtual uint64_t size() const = 0;
  // Reads exactly [offset, offset + buf.size()). A range past the end is EINVAL.
  virtual Result<void> read(uint64_t offset, std::span<std::byte> buf) = 0;
  virtual BlobStats stats() const = 0;
  // The process is stopping: reads in flight fail within a second, and every later one
  // at once, with EINTR "interrupted" (the waits of an HTTP reader between attempts
  // included). Irrevocable. Local files do nothing: their reads do not wait.
  virtual void interrupt() {}
};

// Whether `s` is an http:// or https:// URL (else a local path).
bool is_http_url(const std::string& s);
// The scheme of a string that looks like a URL ("ftp" for "ftp://host/x": letters, digits,
// '+', '-', '.' before "://"), or empty for anything else (a local path).
std::string url_scheme(const std::string& s);

// What a local input may be. Anything else is refused before it is opened for real: a
// FIFO would block open() until a writer comes (or feed whatever that writer sends), a
// character device may do anything at all.
enum class InputKind {
  RegularFile,           // packs, index caches, seeds
  RegularOrBlockDevice,  // disk images
};

// Opens a local input read-only through `env`: on the real file system, first without
// blocking (O_NONBLOCK) to check its kind with fstat, then through `env`, checking that
// it is still the same file. Errors name the path.
Result<std::unique_ptr<File>> open_input(Env& env, const std::string& path, InputKind kind);

// Opens a local file through `env`, or an HTTP(S) URL. Any other URL scheme is refused
// ("unsupported scheme 'ftp'"), not taken for a path.
Result<std::unique_ptr<BlobReader>> open_blob(Env& env, const std::string& path_or_url,
                                              const BlobOptions& o = {});

// A BlobReader over a local regular file (through an Env).
Result<std::unique_ptr<BlobReader>> open_file_blob(Env& env, const std::string& path);

// A BlobReader over HTTP(S) range requests (src/blob/http_blob.cc, libcurl).
Result<std::unique_ptr<BlobReader>> open_http_blob(const std::string& url, const BlobOptions& o);

}  // namespace imgstream::blob
