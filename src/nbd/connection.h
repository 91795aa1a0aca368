// One client connection: the handshake, then the transmission phase.
//
// Threading model (why it is fast on few cores): the connection's own thread is an event
// loop. Each recv() takes every request the client has sent so far (a batch); requests
// that can complete without waiting (a read of cached data: BlockDevice::read_nowait, a
// buffered write: write_nowait) are answered inline, their replies laid out back to back
// in one buffer and sent with one send() per batch. At queue depth 32 that is about two
// system calls per request instead of nbdkit's ~4 plus a thread hand-off. Requests that
// may wait (cold reads, flush, trim, zero, block status, FUA writes) go to the shared
// ThreadPool and send their own replies; replies may be out of order, as NBD allows.
// Sends are serialised by a mutex so replies never interleave on the wire.
//
// Bounds: requests in flight on the pool (kInflightMax) and their bytes
// (kInflightBytesMax) per connection; a batch's replies (kBatchBytesMax, kBatchRequestsMax).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "base/thread_pool.h"
#include "base/unique_fd.h"
#include "nbd/handshake.h"
#include "nbd/request.h"

namespace imgstream::nbd {

inline constexpr size_t kRecvBufferBytes = 2u << 20;
inline constexpr size_t kInlinePayloadMax = kRecvBufferBytes - kRequestHeaderBytes;
inline constexpr size_t kBatchBytesMax = 4u << 20;
inline constexpr size_t kBatchRequestsMax = 512;
inline constexpr size_t kInflightMax = 256;
inline constexpr size_t kInflightBytesMax = 256u << 20;
inline constexpr int kHandshakeTimeoutSeconds = 30;

static_assert(kInlinePayloadMax >= (1u << 20), "1 MiB writes should take the inline path");
static_assert(kBatchBytesMax >= kChunkHeaderBytes + 8 + (1u << 20),
              "a batch must hold at least one 1 MiB read reply");

class Connection {
 public:
  Connection(UniqueFd fd, std::span<const Export> exports, ThreadPool& pool);
  ~Connection();

  // Runs the connection to its end. Returns after every request it accepted was answered.
  void run();
  // From another thread: stop reading requests (server shutdown). In-flight requests
  // are still answered.
  void stop_reading();
  // From another thread: cut the connection (a client that does not read its replies).
  void abort();

 private:
  bool transmission();
  bool process_buffer();
  bool handle(const Request& r, std::span<const std::byte> payload);
  bool handle_large_write(const Request& r);
  bool inline_read(const Request& r);
  void dispatch(const Request& r, std::vector<std::byte> payload);
  void execute_blocking(const Request& r, std::span<const std::byte> payload);
  bool flush_batch();
  bool recv_more();
  Result<void> recv_exact(std::span<std::byte> buf);

  // Appends a reply without data to the batch.
  void batch_reply(const Request& r, uint32_t error);
  bool send_all(std::span<const std::byte> data);
  void wait_inflight_below(size_t count, size_t bytes);

  UniqueFd fd_;
  std::span<const Export> exports_;
  ThreadPool& pool_;
  Negotiated neg_;
  ExportLimits limits_;
  BlockDevice* dev_ = nullptr;

  // Received bytes not yet consumed are rbuf_[rstart_, rend_).
  std::unique_ptr<std::byte[]> rbuf_;
  size_t rstart_ = 0, rend_ = 0;
  // Replies of the current batch, back to back: batch_[0, batch_used_).
  std::unique_ptr<std::byte[]> batch_;
  size_t batch_used_ = 0;
  size_t batch_requests_ = 0;

  std::mutex send_mu_;
  std::atomic<bool> dead_{false};  // the socket failed: stop everything

  std::mutex inflight_mu_;
  std::condition_variable inflight_cv_;
  size_t inflight_ = 0;
  size_t inflight_bytes_ = 0;
};

}  // namespace imgstream::nbd
