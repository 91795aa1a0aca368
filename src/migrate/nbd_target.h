// NbdTarget: where a migration writes — any NBD server (imgstream serve, qemu-nbd,
// nbdkit), through libnbd. One connection per worker thread, synchronous calls on each:
// the migrator's workers write distinct regions in parallel, and flush() flushes every
// connection, so the copy is durable on the target whether or not it offers multi-conn.
#pragma once

#include <chrono>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "base/result.h"

struct nbd_handle;

namespace imgstream::migrate {

inline constexpr std::chrono::milliseconds kConnectTimeoutDefault{30'000};
// Once a connection is accepted, the server's greeting and the rest of the handshake take
// a few round trips: a server that says nothing for this long is not going to (qemu-nbd
// leaves a client beyond its -e/--shared limit, default 1, waiting in its listen backlog).
inline constexpr std::chrono::milliseconds kHandshakeTimeoutDefault{5'000};

class NbdTarget {
 public:
  // The first connection is made within `timeout` and its handshake done within
  // `handshake_timeout` of the server accepting it, or ETIMEDOUT naming the likely cause.
  // Then up to `connections` - 1 more, at once, each within `handshake_timeout`: a target
  // that takes fewer is used with those it took, and note() says so.
  static Result<std::unique_ptr<NbdTarget>> open(
      const std::string& uri, unsigned connections,
      std::chrono::milliseconds timeout = kConnectTimeoutDefault,
      std::chrono::milliseconds handshake_timeout = kHandshakeTimeoutDefault);
  ~NbdTarget();

  uint64_t size() const { return size_; }
  const std::string& uri() const { return uri_; }
  unsigned connections() const { return static_cast<unsigned>(handles_.size()); }
  // Empty, or why the target has fewer connections than were asked for (for stderr).
  const std::string& note() const { return note_; }
  // `conn` < connections(): the caller's own connection (one per worker thread).
  Result<void> write(unsigned conn, uint64_t offset, std::span<const std::byte> data);
  // Makes [offset, offset + length) read as zeros (NBD WRITE_ZEROES, or written zeros).
  Result<void> zero(unsigned conn, uint64_t offset, uint64_t length);
  Result<void> flush();
  Result<void> read(unsigned conn, uint64_t offset, std::span<std::byte> buf);
  Result<void> trim(unsigned conn, uint64_t offset, uint64_t length);

  // Writes on one connection with several in flight (libnbd's aio), so that a copy of
  // many small pieces does not pay one round trip per piece. One thread per pipeline.
  //   auto buf = TRY(p.buffer(n)); fill buf; TRY(p.write(offset, n)); ... TRY(p.finish());
  class Pipeline {
   public:
    Pipeline(NbdTarget& t, unsigned conn) : t_(t), conn_(conn) {}
    ~Pipeline();  // waits for what is in flight (errors are finish()'s to report)
    Pipeline(const Pipeline&) = delete;
    Pipeline& operator=(const Pipeline&) = delete;
    // A buffer of `length` bytes (at most 32 MiB) for the next write; waits while the
    // pipeline is full.
    Result<std::span<std::byte>> buffer(size_t length);
    // Sends the buffer buffer() returned last to [offset, offset + its length).
    Result<void> write(uint64_t offset);
    // Takes in the replies that have arrived, without waiting (completed() moves on).
    Result<void> reap();
    // Waits for every write in flight; the first error, if any.
    Result<void> finish();
    // Writes the target has acknowledged, in the order they were sent: the caller's n-th
    // write() is done once completed() >= n. A failed write does not count (nor, since
    // they are not waited for in order after it, do those after it: see finish()).
    uint64_t completed() const { return completed_; }

   private:
    struct InFlight {
      int64_t cookie;
      std::vector<std::byte> buf;
      uint64_t offset;
    };
    Result<void> wait_oldest();
    Result<void> pop_oldest(int completed);  // nbd_aio_command_completed's answer

    NbdTarget& t_;
    const unsigned conn_;
    std::deque<InFlight> inflight_;
    uint64_t inflight_bytes_ = 0;
    std::vector<std::vector<std::byte>> free_;
    std::vector<std::byte> next_;  // filled by the caller between buffer() and write()
    bool dead_ = false;            // the handle failed: what is in flight will not complete
    bool failed_ = false;          // a write failed: completed() stops counting
    uint64_t completed_ = 0;
  };

 private:
  NbdTarget() = default;
  Result<void> check_first();
  std::string uri_;
  std::string note_;
  uint64_t size_ = 0;
  bool can_zero_ = false;
  std::vector<nbd_handle*> handles_;
};

}  // namespace imgstream::migrate
