// One client connection: the handshake, then the transmission phase.
//
// Threading model (why it is fast on few cores, and why one client never holds up another):
// the connection's own thread is an event loop that never blocks on a send. Each recv()
// takes every request the client has sent so far (a batch); requests that can complete
// without waiting (a read of cached data: BlockDevice::read_nowait, a buffered write:
// write_nowait) are answered inline, their replies laid out back to back in one buffer and
// sent with one send() per batch. At queue depth 32 that is about two system calls per
// request instead of nbdkit's ~4 plus a thread hand-off. Requests that may wait (cold
// reads, flush, trim, zero, block status, FUA writes) go to the shared ThreadPool. A pool
// thread never touches the socket: it hands its reply back to the connection's queue and
// wakes the loop, which sends when the socket takes it (poll for POLLOUT). So a client that
// does not read its replies stalls only its own connection thread's sends, never the
// shared workers that every other client's requests run on.
//
// Bounds, per connection: requests on the pool or waiting to be sent (kInflightMax) and
// their bytes (kConnectionBytesMax: read data and write payloads, counted from dispatch
// until the reply has left); a batch's replies (kBatchBytesMax, kBatchRequestsMax). At a
// bound the loop stops reading requests (the client's sends block: backpressure) until
// replies have been sent. The whole handshake has kHandshakeSeconds.
//
// Lock contract: the connection thread alone owns the socket, the receive buffer, the
// batch, the send queue and the byte accounting. Pool threads touch only done_ and
// running_ (under done_mu_) and write wake_fd_. stop_reading() and abort() may be called
// from any thread: they only shut the socket down and set dead_.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "base/limits.h"
#include "base/thread_pool.h"
#include "base/unique_fd.h"
#include "nbd/handshake.h"
#include "nbd/request.h"

namespace imgstream::nbd {

inline constexpr size_t kRecvBufferBytes = limits::kNbdRecvBufferBytes;
inline constexpr size_t kInlinePayloadMax = kRecvBufferBytes - kRequestHeaderBytes;
inline constexpr size_t kBatchBytesMax = limits::kNbdBatchBytesMax;
inline constexpr size_t kBatchRequestsMax = limits::kNbdBatchRequestsMax;
inline constexpr size_t kInflightMax = limits::kNbdInflightMax;
// Two 32 MiB requests, or 64 1-MiB reads (8x what fio's QD 8 sequential row keeps in flight).
inline constexpr size_t kConnectionBytesMax = limits::kNbdConnectionBytesMax;
// Asked of the kernel for a unix socket's send buffer (server.cc says why).
inline constexpr size_t kSendBufferBytes = limits::kNbdSendBufferBytes;
// The whole handshake, not each recv: qemu-nbd's --handshake-limit default is 10 s too.
inline constexpr int kHandshakeSeconds = 10;
// A client refused because the server is full gets this long to read why.
inline constexpr int kRefusalSeconds = 2;
// Replies gathered into one sendmsg().
inline constexpr size_t kSendIovMax = limits::kNbdSendIovMax;

static_assert(kInlinePayloadMax >= (1u << 20), "1 MiB writes should take the inline path");
static_assert(kBatchBytesMax >= kChunkHeaderBytes + 8 + (1u << 20),
              "a batch must hold at least one 1 MiB read reply");
static_assert(kConnectionBytesMax >= 2 * size_t{kPayloadMax},
              "a connection must be able to have a largest request in flight and one more");

struct ConnectionOptions {
  int handshake_seconds = kHandshakeSeconds;
  // When not empty, the connection only tells the client it cannot be served
  // (NBD_REP_ERR_POLICY with this message to every option) and ends.
  std::string refusal;
};

class Connection {
 public:
  Connection(UniqueFd fd, std::span<const Export> exports, ThreadPool& pool,
             ConnectionOptions options = {});
  ~Connection();

  // Runs the connection to its end. Returns after every request it accepted was answered
  // (or the client is gone) and no pool thread holds it any more.
  void run();
  // From another thread: stop reading requests (server shutdown). In-flight requests
  // are still answered.
  void stop_reading();
  // From another thread: cut the connection (a client that does not read its replies).
  void abort();

 private:
  // What process_buffer() stopped at.
  enum class Step {
    NeedBytes,  // no complete request left: receive more
    BatchFull,  // the batch must be sent before the next request
    AtBound,    // kInflightMax / kConnectionBytesMax reached: wait for replies to leave
    End,        // DISC, a broken request, or the client is gone
  };
  // A reply from the pool, waiting to be sent; `charge` is what dispatch() counted.
  struct Reply {
    std::vector<std::byte> bytes;
    size_t charge = 0;
  };
  enum class Recv { Got, WouldBlock, End };

  void transmission();
  Step process_buffer();
  bool handle(const Request& r, std::span<const std::byte> payload);
  bool handle_large_write(const Request& r);
  bool inline_read(const Request& r);
  void dispatch(const Request& r, std::vector<std::byte> payload);
  std::vector<std::byte> execute_blocking(const Request& r, std::span<const std::byte> payload);
  bool below_bounds() const;
  Recv recv_more(bool block);
  bool recv_exact(std::span<std::byte> buf);
  // Waits for the socket (`events`) or a reply from the pool. False when the socket failed.
  bool wait(short events);
  void take_done();
  bool output_pending() const { return batch_sent_ < batch_used_ || !outq_.empty(); }
  // Sends what the socket takes now. False when the socket failed (dead_ is then set).
  bool send_some();
  void fail_socket();

  // Appends a reply without data to the batch.
  void batch_reply(const Request& r, uint32_t error);

  UniqueFd fd_;
  UniqueFd wake_fd_;  // eventfd: the pool has replies in done_
  std::span<const Export> exports_;
  ThreadPool& pool_;
  const ConnectionOptions options_;
  Negotiated neg_;
  ExportLimits limits_;
  BlockDevice* dev_ = nullptr;

  // Received bytes not yet consumed are rbuf_[rstart_, rend_).
  std::unique_ptr<std::byte[]> rbuf_;
  size_t rstart_ = 0, rend_ = 0;
  // Replies of the current batch, back to back: batch_[0, batch_used_), of which
  // [0, batch_sent_) has been sent. Nothing is added until the whole batch has gone.
  std::unique_ptr<std::byte[]> batch_;
  size_t batch_used_ = 0;
  size_t batch_sent_ = 0;
  size_t batch_requests_ = 0;
  // Replies from the pool in the order they came; the front has sent outq_sent_ bytes.
  std::deque<Reply> outq_;
  size_t outq_sent_ = 0;
  // Dispatched requests whose replies have not left yet, and what they are charged.
  size_t outstanding_ = 0;
  size_t outstanding_bytes_ = 0;

  std::atomic<bool> dead_{false};  // the socket failed or was cut: stop everything

  std::mutex done_mu_;
  std::condition_variable done_cv_;  // run() waits on it, at its end, for running_ == 0
  std::vector<Reply> done_;  // guarded by done_mu_
  size_t running_ = 0;       // pool tasks that hold `this`; guarded by done_mu_
};

}  // namespace imgstream::nbd
