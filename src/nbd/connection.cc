#include "nbd/connection.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "base/check.h"
#include "base/log.h"
#include "nbd/reply.h"

namespace imgstream::nbd {

namespace {

using Clock = std::chrono::steady_clock;

// The handshake, never blocking in the socket calls (MSG_DONTWAIT, then poll): reads
// exactly what it needs, so no transmission bytes are consumed early, and all of it must
// end by one deadline (a client sending a byte a second must not hold a slot for minutes).
class SocketStream final : public Stream {
 public:
  SocketStream(int fd, int seconds)
      : fd_(fd), seconds_(seconds), deadline_(Clock::now() + std::chrono::seconds(seconds)) {}
  Result<void> read_exact(std::span<std::byte> buf) override {
    size_t done = 0;
    while (done < buf.size()) {
      ssize_t n = ::recv(fd_, buf.data() + done, buf.size() - done, MSG_DONTWAIT);
      if (n > 0) {
        done += static_cast<size_t>(n);
      } else if (n == 0) {
        return Error{ECONNRESET, "client closed the connection"};
      } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        TRY(wait(POLLIN));
      } else if (errno != EINTR) {
        return Error::from_errno(errno, "recv");
      }
    }
    return ok();
  }
  Result<void> write_all(std::span<const std::byte> buf) override {
    size_t done = 0;
    while (done < buf.size()) {
      ssize_t n = ::send(fd_, buf.data() + done, buf.size() - done, MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n >= 0) {
        done += static_cast<size_t>(n);
      } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        TRY(wait(POLLOUT));
      } else if (errno != EINTR) {
        return Error::from_errno(errno, "send");
      }
    }
    return ok();
  }

 private:
  Result<void> wait(short events) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - Clock::now());
    if (left.count() <= 0)
      return Error{ETIMEDOUT, fmt::format("the handshake did not finish within {} s", seconds_)};
    pollfd p{fd_, events, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) < 0 && errno != EINTR)
      return Error::from_errno(errno, "poll");
    return ok();
  }

  int fd_;
  int seconds_;
  Clock::time_point deadline_;
};

Durability durability(const Request& r) {
  return (r.flags & kCmdFlagFua) ? Durability::Fua : Durability::Buffered;
}

// What a refused client is told, whatever it asks, until it gives up (bounded: a client
// that keeps asking is cut off after kOptionsPerConnectionMax options or the deadline).
void tell_refusal(Stream& s, const std::string& why) {
  std::array<std::byte, 18> greeting;
  put_u64(&greeting[0], kNbdMagic);
  put_u64(&greeting[8], kIHaveOpt);
  put_u16(&greeting[16], kFlagFixedNewstyle | kFlagNoZeroes);
  if (!s.write_all(greeting)) return;
  std::array<std::byte, 4> cf;
  if (!s.read_exact(cf)) return;
  std::vector<std::byte> data;
  for (uint32_t n = 0; n < kOptionsPerConnectionMax; ++n) {
    std::array<std::byte, 16> h;
    if (!s.read_exact(h) || get_u64(&h[0]) != kIHaveOpt) return;
    const uint32_t opt = get_u32(&h[8]);
    const uint32_t len = get_u32(&h[12]);
    if (len > kOptionBytesMax) return;
    data.resize(len);
    if (!s.read_exact(data)) return;
    // EXPORT_NAME has no error reply: closing is all the protocol allows.
    if (opt == kOptExportName) return;
    const uint32_t type = opt == kOptAbort ? kRepAck : kRepErrPolicy;
    std::vector<std::byte> reply(20);
    put_u64(&reply[0], kOptReplyMagic);
    put_u32(&reply[8], opt);
    put_u32(&reply[12], type);
    const std::string_view msg = opt == kOptAbort ? std::string_view{} : std::string_view{why};
    put_u32(&reply[16], static_cast<uint32_t>(msg.size()));
    const auto* p = reinterpret_cast<const std::byte*>(msg.data());
    reply.insert(reply.end(), p, p + msg.size());
    if (!s.write_all(reply) || opt == kOptAbort) return;
  }
}

}  // namespace

Connection::Connection(UniqueFd fd, std::span<const Export> exports, ThreadPool& pool,
                       ConnectionOptions options)
    : fd_(std::move(fd)), exports_(exports), pool_(pool), options_(std::move(options)) {}

Connection::~Connection() {
  std::unique_lock lock(done_mu_);
  IMG_CHECK(running_ == 0);
}

void Connection::stop_reading() { ::shutdown(fd_.get(), SHUT_RD); }

void Connection::abort() {
  dead_ = true;
  ::shutdown(fd_.get(), SHUT_RDWR);
}

void Connection::fail_socket() {
  dead_ = true;
  ::shutdown(fd_.get(), SHUT_RDWR);
}

// The socket stays blocking: every call that must not wait says MSG_DONTWAIT, so that the
// loop can still block in recv() alone when there is nothing else to wait for.
void Connection::run() {
  if (!options_.refusal.empty()) {
    SocketStream stream(fd_.get(), kRefusalSeconds);
    tell_refusal(stream, options_.refusal);
    ::shutdown(fd_.get(), SHUT_RDWR);
    return;
  }
  SocketStream stream(fd_.get(), options_.handshake_seconds);
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
  wake_fd_.reset(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wake_fd_.valid()) {
    LOG_WARN("eventfd: {}: disconnecting a client", errno_text(errno));
    ::shutdown(fd_.get(), SHUT_RDWR);
    return;
  }
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
  // Pool tasks hold `this` until they have handed their reply back.
  std::unique_lock lock(done_mu_);
  done_cv_.wait(lock, [&] { return running_ == 0; });
  lock.unlock();
  ::shutdown(fd_.get(), SHUT_RDWR);
}

// The event loop: receive what the client sent, answer it, send what the socket takes,
// repeat until the client disconnects (DISC or EOF), breaks the protocol, or the server
// stops; then until every accepted request has been answered or the socket fails.
void Connection::transmission() {
  bool reading = true;
  for (;;) {
    if (dead_) return;
    take_done();
    if (!send_some()) return;
    Step step = Step::NeedBytes;
    if (reading) {
      if (batch_used_ == 0) {
        step = process_buffer();
        if (step == Step::End) reading = false;
        if (!send_some()) return;
        if (step == Step::BatchFull && batch_used_ == 0) continue;  // sent: go on at once
      } else {
        step = Step::BatchFull;
      }
    }
    // process_buffer() may have waited inside (a large write's payload) and consumed the
    // pool's wake-up: take what it woke for now, or the poll below would wait for it.
    take_done();
    if (!send_some()) return;
    // What stopped process_buffer() may be gone by now (the batch sent, replies sent
    // below the bounds): then go on at once, for nothing else would wake the poll.
    if (reading && step == Step::BatchFull && batch_used_ == 0) continue;
    if (reading && step == Step::AtBound && below_bounds()) continue;
    if (!reading && !output_pending() && outstanding_ == 0) return;
    const bool want_in = reading && step == Step::NeedBytes;
    if (want_in && !output_pending() && outstanding_ == 0) {
      // Nothing to send and nothing on the pool: only the client can wake us, so wait in
      // recv() itself (one system call per batch, as on the inline path before polling).
      if (recv_more(true) == Recv::End) reading = false;
      continue;
    }
    short events = 0;
    if (want_in) events |= POLLIN;
    if (output_pending()) events |= POLLOUT;
    pollfd fds[2] = {{fd_.get(), events, 0}, {wake_fd_.get(), POLLIN, 0}};
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      LOG_WARN("poll: {}", errno_text(errno));
      fail_socket();
      return;
    }
    if (fds[1].revents & POLLIN) {
      uint64_t n;
      ssize_t unused = ::read(wake_fd_.get(), &n, sizeof n);
      (void)unused;
    }
    const short rev = fds[0].revents;
    if (rev & (POLLERR | POLLNVAL)) {
      fail_socket();
      return;
    }
    if (want_in && (rev & (POLLIN | POLLHUP))) {
      if (recv_more(false) == Recv::End) reading = false;
    } else if ((rev & POLLHUP) && !want_in) {
      // The client hung up while we could not read: nothing more will come. Replies
      // still owed are tried (and fail) by send_some().
      reading = false;
    }
  }
}

// Receives more into rbuf_; waits for it only when `block`.
Connection::Recv Connection::recv_more(bool block) {
  // Keep room for a whole inline write: move a partial request to the front.
  if (rstart_ > 0 && (rend_ == rstart_ || kRecvBufferBytes - rend_ < kInlinePayloadMax / 2)) {
    std::memmove(rbuf_.get(), rbuf_.get() + rstart_, rend_ - rstart_);
    rend_ -= rstart_;
    rstart_ = 0;
  }
  IMG_CHECK(rend_ < kRecvBufferBytes);
  for (;;) {
    ssize_t n = ::recv(fd_.get(), rbuf_.get() + rend_, kRecvBufferBytes - rend_,
                       block ? 0 : MSG_DONTWAIT);
    if (n > 0) {
      rend_ += static_cast<size_t>(n);
      return Recv::Got;
    }
    if (n == 0) return Recv::End;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Recv::WouldBlock;
    if (errno != EINTR) {
      LOG_DEBUG("recv: {}", errno_text(errno));
      return Recv::End;
    }
  }
}

// Receives exactly buf.size() bytes (a large write's payload), sending replies that are
// ready meanwhile so that a client that reads while it writes is never held up.
bool Connection::recv_exact(std::span<std::byte> buf) {
  size_t done = 0;
  while (done < buf.size()) {
    if (dead_) return false;
    ssize_t n = ::recv(fd_.get(), buf.data() + done, buf.size() - done, MSG_DONTWAIT);
    if (n > 0) {
      done += static_cast<size_t>(n);
    } else if (n == 0) {
      return false;
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!wait(POLLIN)) return false;
    } else if (errno != EINTR) {
      LOG_DEBUG("recv: {}", errno_text(errno));
      return false;
    }
  }
  return true;
}

bool Connection::wait(short events) {
  take_done();
  if (!send_some()) return false;
  if (output_pending()) events |= POLLOUT;
  pollfd fds[2] = {{fd_.get(), events, 0}, {wake_fd_.get(), POLLIN, 0}};
  if (::poll(fds, 2, -1) < 0 && errno != EINTR) {
    fail_socket();
    return false;
  }
  if (fds[1].revents & POLLIN) {
    uint64_t n;
    ssize_t unused = ::read(wake_fd_.get(), &n, sizeof n);
    (void)unused;
    take_done();  // the wake-up is consumed: so are the replies it was for
  }
  if (fds[0].revents & (POLLERR | POLLNVAL)) {
    fail_socket();
    return false;
  }
  return true;
}

void Connection::take_done() {
  std::vector<Reply> got;
  {
    std::lock_guard lock(done_mu_);
    if (done_.empty()) return;
    got.swap(done_);
  }
  for (Reply& r : got) outq_.push_back(std::move(r));
}

// Sends the batch and the pool's replies, gathered into one sendmsg(), as far as the
// socket takes them without waiting. A reply that has begun to go out goes on first:
// bytes of another reply must never land in the middle of it (the batch may be refilled
// while a pool reply is half sent).
bool Connection::send_some() {
  while (output_pending()) {
    if (dead_) return false;
    const bool queue_first = outq_sent_ > 0;
    IMG_CHECK(!(queue_first && batch_sent_ > 0));  // one reply at a time is half sent
    iovec iov[kSendIovMax];
    size_t n_iov = 0;
    auto add_queue = [&](size_t from, size_t count) {
      for (size_t i = from; i < outq_.size() && i < from + count && n_iov < kSendIovMax; ++i) {
        const size_t skip = i == 0 ? outq_sent_ : 0;
        iov[n_iov++] = {outq_[i].bytes.data() + skip, outq_[i].bytes.size() - skip};
      }
    };
    if (queue_first) add_queue(0, 1);
    if (batch_sent_ < batch_used_)
      iov[n_iov++] = {batch_.get() + batch_sent_, batch_used_ - batch_sent_};
    add_queue(queue_first ? 1 : 0, kSendIovMax);
    msghdr m{};
    m.msg_iov = iov;
    m.msg_iovlen = n_iov;
    ssize_t n = ::sendmsg(fd_.get(), &m, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return true;
      LOG_DEBUG("send: {}", errno_text(errno));
      fail_socket();
      return false;
    }
    // Account for what left, in the order it was laid out.
    size_t left = static_cast<size_t>(n);
    auto take_queue_front = [&] {
      IMG_CHECK(!outq_.empty());
      Reply& front = outq_.front();
      const size_t take = std::min(left, front.bytes.size() - outq_sent_);
      outq_sent_ += take;
      left -= take;
      if (outq_sent_ < front.bytes.size()) return false;
      IMG_CHECK(outstanding_ > 0 && outstanding_bytes_ >= front.charge);
      --outstanding_;
      outstanding_bytes_ -= front.charge;
      outq_.pop_front();
      outq_sent_ = 0;
      return true;
    };
    if (queue_first && !take_queue_front()) continue;
    if (batch_sent_ < batch_used_) {
      const size_t take = std::min(left, batch_used_ - batch_sent_);
      batch_sent_ += take;
      left -= take;
      if (batch_sent_ < batch_used_) continue;
      batch_used_ = batch_sent_ = batch_requests_ = 0;
    }
    while (left > 0) take_queue_front();
  }
  return true;
}

bool Connection::below_bounds() const {
  return outstanding_ < kInflightMax && outstanding_bytes_ < kConnectionBytesMax;
}

// Handles complete requests in rbuf_ until one of the Steps stops it.
Connection::Step Connection::process_buffer() {
  for (;;) {
    if (dead_) return Step::End;  // the client is gone: its buffered requests need no work
    const size_t avail = rend_ - rstart_;
    if (avail < kRequestHeaderBytes) return Step::NeedBytes;
    std::byte* p = rbuf_.get() + rstart_;
    auto req = decode_request(std::span<const std::byte, kRequestHeaderBytes>(p, kRequestHeaderBytes));
    if (!req) {
      LOG_INFO("bad request magic from client: disconnecting");
      return Step::End;  // the batch so far is still sent
    }
    if (!below_bounds()) return Step::AtBound;
    if (has_payload(*req) && req->length > kInlinePayloadMax) {
      if (batch_used_ > 0) return Step::BatchFull;
      if (!handle_large_write(*req)) return Step::End;
      continue;
    }
    const size_t payload = has_payload(*req) ? req->length : 0;
    if (avail < kRequestHeaderBytes + payload) return Step::NeedBytes;  // wait for the rest
    // Room for this request's reply in the batch? Otherwise send the batch first.
    const size_t reply_max =
        kReplyHeaderBytesMax + (req->type == kCmdRead ? req->length : 0);
    if (batch_requests_ == kBatchRequestsMax ||
        (batch_used_ + reply_max > kBatchBytesMax && batch_used_ > 0)) {
      return Step::BatchFull;
    }
    rstart_ += kRequestHeaderBytes + payload;
    if (!handle(*req, std::span<const std::byte>(p + kRequestHeaderBytes, payload)))
      return Step::End;
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
    return true;
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

void Connection::dispatch(const Request& r, std::vector<std::byte> payload) {
  // Counted until the reply has left (send_some): a client that does not read its
  // replies stops being read once this reaches kConnectionBytesMax.
  const size_t charge =
      kReplyHeaderBytesMax + (r.type == kCmdRead ? size_t{r.length} : payload.size());
  ++outstanding_;
  outstanding_bytes_ += charge;
  {
    std::lock_guard lock(done_mu_);
    ++running_;
  }
  pool_.post([this, r, charge, payload = std::move(payload)] {
    Reply reply{execute_blocking(r, payload), charge};
    std::lock_guard lock(done_mu_);
    const bool wake = done_.empty();  // otherwise the loop has been woken already
    done_.push_back(std::move(reply));
    if (wake) {
      uint64_t one = 1;
      ssize_t unused = ::write(wake_fd_.get(), &one, sizeof one);
      (void)unused;
    }
    if (--running_ == 0) done_cv_.notify_all();
  });
}

namespace {

// A block status reply's descriptors (length, flags): the extents clipped to the request
// (and to one extent with REQ_ONE), equal neighbours merged.
std::vector<std::pair<uint32_t, uint32_t>> clip_extents(const std::vector<Extent>& extents,
                                                        const Request& r) {
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
  return desc;
}

// Appends one block status chunk (context `id`) to `out`; the last carries DONE.
void append_block_status(std::vector<std::byte>& out, const Request& r, uint32_t id, bool last,
                         const std::vector<std::pair<uint32_t, uint32_t>>& desc) {
  const size_t len = 4 + 8 * desc.size();
  const size_t at = out.size();
  out.resize(at + kChunkHeaderBytes + len);
  std::byte* p = out.data() + at;
  p += encode_chunk_header(p, last ? kReplyFlagDone : 0, kChunkBlockStatus, r.cookie,
                           static_cast<uint32_t>(len));
  put_u32(p, id);
  p += 4;
  for (auto [l, f] : desc) {
    put_u32(p, l);
    put_u32(p + 4, f);
    p += 8;
  }
}

}  // namespace

// Runs on a pool thread: one request that may wait. Returns its reply, to be sent by the
// connection's thread.
std::vector<std::byte> Connection::execute_blocking(const Request& r,
                                                    std::span<const std::byte> payload) {
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
        append_block_status(out, r, static_cast<uint32_t>(i), i + 1 == neg_.contexts.size(),
                            clip_extents(extents, r));
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
  return out;
}

}  // namespace imgstream::nbd
