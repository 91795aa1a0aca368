#include "nbd/connection.h"

#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <cstring>

#include "base/check.h"
#include "base/log.h"
#include "nbd/reply.h"

namespace imgstream::nbd {

namespace {

// The handshake reads exactly what it needs, so no transmission bytes are consumed early.
class SocketStream final : public Stream {
 public:
  explicit SocketStream(int fd) : fd_(fd) {}
  Result<void> read_exact(std::span<std::byte> buf) override {
    size_t done = 0;
    while (done < buf.size()) {
      ssize_t n = ::recv(fd_, buf.data() + done, buf.size() - done, 0);
      if (n > 0) {
        done += static_cast<size_t>(n);
      } else if (n == 0) {
        return Error{ECONNRESET, "client closed the connection"};
      } else if (errno != EINTR) {
        return Error::from_errno(errno, "recv");
      }
    }
    return ok();
  }
  Result<void> write_all(std::span<const std::byte> buf) override {
    size_t done = 0;
    while (done < buf.size()) {
      ssize_t n = ::send(fd_, buf.data() + done, buf.size() - done, MSG_NOSIGNAL);
      if (n >= 0) {
        done += static_cast<size_t>(n);
      } else if (errno != EINTR) {
        return Error::from_errno(errno, "send");
      }
    }
    return ok();
  }

 private:
  int fd_;
};

void set_recv_timeout(int fd, int seconds) {
  timeval tv{seconds, 0};
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
}

Durability durability(const Request& r) {
  return (r.flags & kCmdFlagFua) ? Durability::Fua : Durability::Buffered;
}

}  // namespace

Connection::Connection(UniqueFd fd, std::span<const Export> exports, ThreadPool& pool)
    : fd_(std::move(fd)), exports_(exports), pool_(pool) {}

Connection::~Connection() {
  std::unique_lock lock(inflight_mu_);
  IMG_CHECK(inflight_ == 0);
}

void Connection::stop_reading() { ::shutdown(fd_.get(), SHUT_RD); }

void Connection::abort() {
  dead_ = true;
  ::shutdown(fd_.get(), SHUT_RDWR);
}

void Connection::run() {
  SocketStream stream(fd_.get());
  // A client that connects and says nothing must not hold a thread forever.
  set_recv_timeout(fd_.get(), kHandshakeTimeoutSeconds);
  auto neg = negotiate(stream, exports_);
  if (!neg) {
    LOG_INFO("handshake failed: {}", neg.error().message);
    ::shutdown(fd_.get(), SHUT_RDWR);  // now, not when the server reaps us (up to 1 s later)
    return;
  }
  if (!neg->has_value()) {  // client aborted
    ::shutdown(fd_.get(), SHUT_RDWR);
    return;
  }
  set_recv_timeout(fd_.get(), 0);
  neg_ = std::move(**neg);
  dev_ = neg_.exp->device;
  const DeviceCaps caps = dev_->caps();
  limits_.size = dev_->size();
  limits_.block_size_min = caps.block_size_min;
  limits_.payload_max = std::min(caps.block_size_max, kPayloadMax);
  limits_.transmission_flags = neg_.transmission_flags;
  limits_.structured_replies = neg_.structured_replies;
  limits_.meta_contexts_selected = !neg_.contexts.empty();

  rbuf_ = std::make_unique_for_overwrite<std::byte[]>(kRecvBufferBytes);
  batch_ = std::make_unique_for_overwrite<std::byte[]>(kBatchBytesMax);
  transmission();
  wait_inflight_below(1, 1);
  ::shutdown(fd_.get(), SHUT_RDWR);
}

// The event loop: receive what the client sent, answer it, repeat until the client
// disconnects (DISC or EOF), breaks the protocol, or the server stops.
bool Connection::transmission() {
  for (;;) {
    if (!recv_more()) return false;
    if (!process_buffer()) return false;
    if (!flush_batch()) return false;
  }
}

// Receives at least one byte more into rbuf_. False on end of stream or error.
bool Connection::recv_more() {
  // Keep room for a whole inline write: move a partial request to the front.
  if (rstart_ > 0 && (rend_ == rstart_ || kRecvBufferBytes - rend_ < kInlinePayloadMax / 2)) {
    std::memmove(rbuf_.get(), rbuf_.get() + rstart_, rend_ - rstart_);
    rend_ -= rstart_;
    rstart_ = 0;
  }
  IMG_CHECK(rend_ < kRecvBufferBytes);
  for (;;) {
    ssize_t n = ::recv(fd_.get(), rbuf_.get() + rend_, kRecvBufferBytes - rend_, 0);
    if (n > 0) {
      rend_ += static_cast<size_t>(n);
      return true;
    }
    if (n == 0) return false;
    if (errno != EINTR) {
      LOG_DEBUG("recv: {}", std::strerror(errno));
      return false;
    }
  }
}

Result<void> Connection::recv_exact(std::span<std::byte> buf) {
  SocketStream s(fd_.get());
  return s.read_exact(buf);
}

// Handles every complete request in rbuf_. False when the connection must end.
bool Connection::process_buffer() {
  for (;;) {
    if (dead_) return false;  // the client is gone: its buffered requests need no work
    const size_t avail = rend_ - rstart_;
    if (avail < kRequestHeaderBytes) return true;
    std::byte* p = rbuf_.get() + rstart_;
    auto req = decode_request(std::span<const std::byte, kRequestHeaderBytes>(p, kRequestHeaderBytes));
    if (!req) {
      LOG_INFO("bad request magic from client: disconnecting");
      flush_batch();
      return false;
    }
    if (has_payload(*req) && req->length > kInlinePayloadMax) {
      if (!flush_batch()) return false;
      if (!handle_large_write(*req)) return false;
      continue;
    }
    const size_t payload = has_payload(*req) ? req->length : 0;
    if (avail < kRequestHeaderBytes + payload) return true;  // wait for the rest
    // Room for this request's reply in the batch? Otherwise send the batch first.
    const size_t reply_max =
        kReplyHeaderBytesMax + (req->type == kCmdRead ? req->length : 0);
    if (batch_requests_ == kBatchRequestsMax ||
        (batch_used_ + reply_max > kBatchBytesMax && batch_used_ > 0)) {
      if (!flush_batch()) return false;
    }
    rstart_ += kRequestHeaderBytes + payload;
    if (!handle(*req, std::span<const std::byte>(p + kRequestHeaderBytes, payload))) return false;
  }
}

// A write whose payload is larger than the receive buffer: read it into its own buffer.
bool Connection::handle_large_write(const Request& r) {
  const uint32_t err = validate_request(r, limits_);
  std::vector<std::byte> payload;
  // The payload is larger than the buffer, so everything buffered belongs to it.
  const size_t have = rend_ - rstart_ - kRequestHeaderBytes;
  IMG_CHECK(have < r.length);
  const std::byte* p = rbuf_.get() + rstart_ + kRequestHeaderBytes;
  if (err == 0) payload.assign(p, p + have);
  rstart_ += kRequestHeaderBytes + have;
  // Oversized or refused payloads are read and dropped in bounded pieces.
  for (size_t left = r.length - have; left > 0;) {
    if (err == 0) {
      const size_t old = payload.size();
      payload.resize(r.length);
      if (!recv_exact(std::span(payload).subspan(old))) return false;
      left = 0;
    } else {
      const size_t n = std::min(left, kRecvBufferBytes);
      if (!recv_exact(std::span(rbuf_.get(), n))) return false;
      left -= n;
    }
  }
  rstart_ = rend_ = 0;
  if (err != 0) {
    batch_reply(r, err);
    return flush_batch();
  }
  dispatch(r, std::move(payload));
  return true;
}

bool Connection::handle(const Request& r, std::span<const std::byte> payload) {
  const uint32_t err = validate_request(r, limits_);
  if (err != 0) {
    batch_reply(r, err);
    return true;
  }
  switch (r.type) {
    case kCmdDisc:
      flush_batch();
      return false;
    case kCmdRead:
      if (inline_read(r)) return true;
      dispatch(r, {});
      return true;
    case kCmdWrite: {
      auto w = dev_->write_nowait(r.offset, payload, durability(r));
      if (w) {
        batch_reply(r, 0);
      } else if (w.error().is_would_block()) {
        dispatch(r, std::vector<std::byte>(payload.begin(), payload.end()));
      } else {
        LOG_DEBUG("write at {}: {}", r.offset, w.error().message);
        batch_reply(r, to_wire_error(w.error().code));
      }
      return true;
    }
    default:
      dispatch(r, {});
      return true;
  }
}

// Tries to answer a read from cached data into the batch. False: take the slow path.
bool Connection::inline_read(const Request& r) {
  const size_t hdr = read_header_bytes(neg_.structured_replies);
  if (batch_used_ + hdr + r.length > kBatchBytesMax) return false;
  std::byte* p = batch_.get() + batch_used_;
  auto rd = dev_->read_nowait(r.offset, std::span<std::byte>(p + hdr, r.length));
  if (!rd) {
    if (rd.error().is_would_block()) return false;
    LOG_DEBUG("read at {}: {}", r.offset, rd.error().message);
    batch_reply(r, to_wire_error(rd.error().code));
    return true;
  }
  encode_read_header(p, r, neg_.structured_replies);
  batch_used_ += hdr + r.length;
  ++batch_requests_;
  return true;
}

void Connection::batch_reply(const Request& r, uint32_t error) {
  IMG_CHECK(batch_used_ + kReplyHeaderBytesMax <= kBatchBytesMax);
  std::byte* p = batch_.get() + batch_used_;
  batch_used_ += error ? encode_error_reply(p, r, error, neg_.structured_replies)
                       : encode_simple_reply(p, r.cookie, 0);
  ++batch_requests_;
}

bool Connection::flush_batch() {
  if (batch_used_ == 0) return !dead_;
  const bool sent = send_all(std::span<const std::byte>(batch_.get(), batch_used_));
  batch_used_ = 0;
  batch_requests_ = 0;
  return sent;
}

bool Connection::send_all(std::span<const std::byte> data) {
  std::lock_guard lock(send_mu_);
  if (dead_) return false;
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::send(fd_.get(), data.data() + done, data.size() - done, MSG_NOSIGNAL);
    if (n >= 0) {
      done += static_cast<size_t>(n);
    } else if (errno != EINTR) {
      LOG_DEBUG("send: {}", std::strerror(errno));
      dead_ = true;
      ::shutdown(fd_.get(), SHUT_RDWR);  // wake the event loop
      return false;
    }
  }
  return true;
}

void Connection::wait_inflight_below(size_t count, size_t bytes) {
  std::unique_lock lock(inflight_mu_);
  inflight_cv_.wait(lock, [&] { return inflight_ < count && inflight_bytes_ < bytes; });
}

void Connection::dispatch(const Request& r, std::vector<std::byte> payload) {
  const size_t bytes = r.type == kCmdRead ? r.length : payload.size();
  // Bound what the pool holds for this client; the wait is backpressure on the client.
  wait_inflight_below(kInflightMax, kInflightBytesMax);
  {
    std::lock_guard lock(inflight_mu_);
    ++inflight_;
    inflight_bytes_ += bytes;
  }
  pool_.post([this, r, bytes, payload = std::move(payload)] {
    execute_blocking(r, payload);
    std::lock_guard lock(inflight_mu_);
    --inflight_;
    inflight_bytes_ -= bytes;
    inflight_cv_.notify_all();
  });
}

// Runs on a pool thread: one request that may wait, answered with its own send.
void Connection::execute_blocking(const Request& r, std::span<const std::byte> payload) {
  const bool structured = neg_.structured_replies;
  std::vector<std::byte> out;
  Result<void> res;
  switch (r.type) {
    case kCmdRead: {
      const size_t hdr = read_header_bytes(structured);
      out.resize(hdr + r.length);
      res = dev_->read(r.offset, std::span(out).subspan(hdr));
      if (res) encode_read_header(out.data(), r, structured);
      break;
    }
    case kCmdWrite: res = dev_->write(r.offset, payload, durability(r)); break;
    case kCmdFlush: res = dev_->flush(); break;
    case kCmdTrim: res = dev_->trim(r.offset, r.length, durability(r)); break;
    case kCmdCache: res = dev_->cache(r.offset, r.length); break;
    case kCmdWriteZeroes: {
      ZeroFlags z;
      z.may_trim = !(r.flags & kCmdFlagNoHole);
      z.fast_only = r.flags & kCmdFlagFastZero;
      res = dev_->write_zeroes(r.offset, r.length, z, durability(r));
      break;
    }
    case kCmdBlockStatus: {
      // One chunk per selected context; the last carries the DONE flag.
      std::vector<Extent> extents;
      for (size_t i = 0; i < neg_.contexts.size() && res; ++i) {
        extents.clear();
        res = dev_->block_status(neg_.contexts[i], r.offset, r.length, extents);
        if (!res) break;
        // Clip to the request (and to one extent with REQ_ONE); merge equal neighbours.
        std::vector<std::pair<uint32_t, uint32_t>> desc;
        uint64_t covered = 0;
        for (const Extent& e : extents) {
          if (covered >= r.length || e.length == 0) break;
          const uint32_t len = static_cast<uint32_t>(std::min<uint64_t>(e.length, r.length - covered));
          if (!desc.empty() && desc.back().second == e.flags && !(r.flags & kCmdFlagReqOne)) {
            desc.back().first += len;
          } else {
            if ((r.flags & kCmdFlagReqOne) && !desc.empty()) break;
            desc.emplace_back(len, e.flags);
          }
          covered += len;
        }
        IMG_CHECK(!desc.empty());
        const size_t len = 4 + 8 * desc.size();
        const size_t at = out.size();
        out.resize(at + kChunkHeaderBytes + len);
        std::byte* p = out.data() + at;
        const bool last = i + 1 == neg_.contexts.size();
        p += encode_chunk_header(p, last ? kReplyFlagDone : 0, kChunkBlockStatus, r.cookie,
                                 static_cast<uint32_t>(len));
        put_u32(p, static_cast<uint32_t>(i));
        p += 4;
        for (auto [l, f] : desc) {
          put_u32(p, l);
          put_u32(p + 4, f);
          p += 8;
        }
      }
      break;
    }
    default: IMG_CHECK_MSG(false, "unvalidated command reached execution");
  }
  if (!res) {
    LOG_DEBUG("command {} at {}: {}", r.type, r.offset, res.error().message);
    // Chunks already built for block status are dropped: the error chunk stands alone.
    out.resize(kReplyHeaderBytesMax);
    out.resize(encode_error_reply(out.data(), r, to_wire_error(res.error().code), structured));
  } else if (r.type != kCmdRead && r.type != kCmdBlockStatus) {
    out.resize(kSimpleReplyBytes);
    encode_simple_reply(out.data(), r.cookie, 0);
  }
  send_all(out);
}

}  // namespace imgstream::nbd
