// NbdSource: a Source on an NBD server (nbd://host:port/export,
// nbd+unix:///export?socket=PATH), through libnbd's asynchronous API.
//
// Threads. Each connection has one I/O thread that owns its libnbd handle outright: it
// connects, issues every command, runs the poll loop (nbd_aio_get_fd / get_direction /
// notify_read / notify_write) and closes the handle. No other thread ever calls libnbd.
// read_async() and block_status() put requests on a queue shared by the connections and
// wake them through an eventfd. libnbd's handle lock would allow callers to issue
// nbd_aio_pread themselves, but one owner per handle avoids three traps: a reconnect
// replaces the handle, and nbd_close must not run while another thread is inside any
// nbd_* call on it; completion callbacks run with the handle lock held, so a done() that
// reads again (which Source allows) would deadlock; and a command issued by another
// thread can change the direction a sleeping poll waits for.
//
// Faults. A connection that errors, disconnects, or leaves a request unanswered for
// request_timeout is closed and opened again with exponential backoff; the requests it
// had on the wire go back to the queue and are issued again. A request the server fails
// (EIO, ...) is retried after a short delay. A request fails only when it has not
// succeeded within io_timeout of its read_async: its done() is called with EIO no earlier
// than io_timeout and, because a request on the wire is never abandoned while libnbd may
// still write into its buffer, no later than io_timeout + request_timeout. Permanent
// errors fail at once without retry: a range past the end (EINVAL), a request the server
// or libnbd rejects as invalid, and a server that comes back with a different size (a
// different image: the source then fails every request; see fatal_error()).
//
// Stops. A stop request of the process (base/stop.h: Ctrl-C, SIGTERM) while open() waits
// for the first handshake ends the source at once, as a fatal error would: open()
// returns EINTR "interrupted" and no connection is tried again. Once open, the source is
// its owner's to stop: close() ends every wait at once (the streamer closes its sources
// on a stop, after it has stopped hydrating; the fingerprint closes the source it reads).
//
// Thread safety: every method may be called from any thread, concurrently.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "base/limits.h"
#include "base/result.h"
#include "source/source.h"

namespace imgstream::source {

// ---- Bounds -------------------------------------------------------------------------

// The largest read sent as one NBD command. Servers that advertise no maximum may drop
// the connection above 32 MiB (nbd_get_block_size(3)); a smaller advertised maximum wins.
inline constexpr uint64_t kNbdRequestBytesMax = limits::kNbdRequestBytesMax;
// The largest range asked of one block-status command (the protocol's lengths are 32-bit;
// a power of two stays aligned to any minimum block size).
inline constexpr uint64_t kNbdBlockStatusBytesMax = limits::kNbdBlockStatusBytesMax;
inline constexpr uint32_t kNbdMaxInFlightMax = limits::kNbdMaxInFlightMax;
inline constexpr unsigned kNbdConnectionsMax = limits::kNbdSourceConnectionsMax;
// Backoff between connection attempts: doubles from min to max, jittered, and goes back
// to min once a request succeeds on the new connection.
inline constexpr std::chrono::milliseconds kNbdReconnectBackoffMin =
    limits::kNbdReconnectBackoffMin;
inline constexpr std::chrono::milliseconds kNbdReconnectBackoffMax =
    limits::kNbdReconnectBackoffMax;
// Delay before a request the server failed is sent again: doubles per attempt.
inline constexpr std::chrono::milliseconds kNbdRetryDelayMin = limits::kNbdRetryDelayMin;
inline constexpr std::chrono::milliseconds kNbdRetryDelayMax = limits::kNbdRetryDelayMax;
static_assert(kNbdRequestBytesMax <= UINT32_MAX, "NBD lengths are 32-bit");
static_assert(kNbdBlockStatusBytesMax <= UINT32_MAX, "NBD lengths are 32-bit");
static_assert(kNbdReconnectBackoffMin <= kNbdReconnectBackoffMax);
static_assert(kNbdRetryDelayMin <= kNbdRetryDelayMax);

struct NbdSourceOptions {
  // A request fails (EIO) when it could not complete within this time; retried meanwhile.
  std::chrono::milliseconds io_timeout{30'000};
  // A command unanswered for this long means a dead connection (also the bound on one
  // connection attempt).
  std::chrono::milliseconds request_timeout{10'000};
  // Commands queued to libnbd at once, per connection; more wait inside NbdSource.
  uint32_t max_in_flight = 64;
  // Connections to open when the server advertises multi-conn (else one).
  unsigned connections = 1;
};

class NbdSource final : public Source {
 public:
  // Connects once (no retry: a wrong URI or a server that is not there fails at once),
  // taking the image's size, the server's maximum request size and whether it answers
  // base:allocation. Further connections (multi-conn) are opened in the background.
  static Result<std::unique_ptr<NbdSource>> open(const std::string& uri,
                                                 const NbdSourceOptions& options = {});
  ~NbdSource() override;  // close()

  uint64_t size() const override { return size_; }
  const std::string& uri() const override { return uri_; }

  // Reads larger than the server's maximum request size are split; done() is called
  // once, on an I/O thread (or at once on the caller's thread for a range past the end,
  // after close(), or after a fatal error).
  void read_async(uint64_t offset, std::span<std::byte> buf, ReadDone done) override;
  // Asks the server (with the same retries as a read); data (flags 0) when the server
  // has no base:allocation. Waits at most io_timeout + request_timeout.
  Result<void> block_status(uint64_t offset, uint64_t length, std::vector<Extent>& out) override;
  // Stops the I/O threads, fails the requests not yet done with ESHUTDOWN, closes the
  // handles. Must not be called from a done() callback.
  void close() override;

  // Counters for status output.
  uint64_t bytes_read() const { return bytes_read_.load(std::memory_order_relaxed); }
  // Connections established again after a loss (not counting the first of each).
  uint64_t reconnects() const { return reconnects_.load(std::memory_order_relaxed); }
  // Commands sent again after a server error, a timeout or a lost connection.
  uint64_t retries() const { return retries_.load(std::memory_order_relaxed); }
  // Connections currently ready to carry commands.
  unsigned connections_ready() const { return ready_.load(std::memory_order_relaxed); }
  // The permanent error that stopped the source (the server now serves another image).
  std::optional<Error> fatal_error() const;

 private:
  struct Request;
  struct Group;
  class Connection;
  friend class Connection;
  using Clock = std::chrono::steady_clock;
  using RequestPtr = std::unique_ptr<Request>;

  NbdSource(std::string uri, const NbdSourceOptions& options);

  // What the first connection learned; later connections are checked against it.
  struct ImageInfo {
    uint64_t size = 0;
    uint64_t request_bytes_max = kNbdRequestBytesMax;
    bool base_allocation = false;
    bool multi_conn = false;
  };
  // Called by a connection after each successful handshake. Returns the fatal error if
  // the server now serves another image; the requests that waits then fail are moved to
  // `failed` for the caller to finish.
  Result<void> on_connected(const ImageInfo& info, std::vector<RequestPtr>& failed);
  void on_first_connect_failed(Error e);
  // The process is stopping while open() waits (StopCallback): connect no more.
  void interrupt();

  // Queueing, shared by callers and I/O threads. The *_locked functions need mu_ held;
  // requests that end are moved to `finished` and completed by the caller after
  // unlocking (done() must never run under mu_).
  void submit(std::vector<RequestPtr> requests);
  void requeue_locked(RequestPtr r, Clock::time_point now, bool& wake,
                      std::vector<RequestPtr>& finished);
  void delay_locked(RequestPtr r, Clock::time_point now, bool& wake,
                    std::vector<RequestPtr>& finished);
  // Moves due delayed requests to the queue and fails expired ones; returns when it next
  // has something to do (Clock::time_point::max() when nothing is waiting).
  Clock::time_point expire_and_release_locked(Clock::time_point now, bool& wake,
                                              std::vector<RequestPtr>& finished);
  void wake_all();
  // Ends a request: success, or the error it carries. Calls the group's done() when its
  // last piece ends. Never with mu_ held.
  void finish(RequestPtr r);
  Error timeout_error(const Request& r) const;

  const std::string uri_;
  const NbdSourceOptions options_;
  uint64_t size_ = 0;
  uint64_t request_bytes_max_ = kNbdRequestBytesMax;
  bool base_allocation_ = false;
  bool multi_conn_ = false;

  std::vector<std::unique_ptr<Connection>> connections_;

  mutable std::mutex mu_;
  std::condition_variable first_connect_cv_;
  std::optional<Result<void>> first_connect_;  // set once the first handshake ends
  bool stopping_ = false;
  std::optional<Error> fatal_;
  // Waiting for a connection with a free slot, oldest first.
  std::deque<RequestPtr> queue_;
  // Failed by the server, waiting until their retry time.
  std::multimap<Clock::time_point, RequestPtr> delayed_;
  // The earliest io deadline among queue_ and delayed_ (a bound: may be earlier).
  Clock::time_point next_expiry_ = Clock::time_point::max();
  // Why the last connection attempt or connection failed, for timeout messages.
  std::string last_connection_error_;

  std::atomic<uint64_t> bytes_read_{0};
  std::atomic<uint64_t> reconnects_{0};
  std::atomic<uint64_t> retries_{0};
  std::atomic<unsigned> ready_{0};

};

}  // namespace imgstream::source
