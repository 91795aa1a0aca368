#include "migrate/nbd_target.h"

#include <fmt/format.h>
#include <libnbd.h>
#include <poll.h>
#include <sys/socket.h>

#include <algorithm>
#include <optional>

#include "base/check.h"
#include "base/limits.h"

namespace imgstream::migrate {

namespace {

constexpr uint64_t kZeroPieceBytes = limits::kZeroPieceBytes;
constexpr uint64_t kWritePieceBytes = limits::kWritePieceBytes;

Error nbd_err(const std::string& uri, const std::string& what) {
  const int e = nbd_get_errno();
  return Error{e ? e : EIO, uri + ": " + what + ": " + (nbd_get_error() ? nbd_get_error() : "?")};
}

}  // namespace

namespace {

using Clock = std::chrono::steady_clock;
constexpr int kDialPollMs = 100;

std::string ms_text(std::chrono::milliseconds t) {
  return t.count() % 1000 == 0 ? std::to_string(t.count() / 1000) + " s"
                               : std::to_string(t.count()) + " ms";
}

// One connection being made with libnbd's aio calls, so that a host that does not answer
// fails at a deadline and a server that accepts the connection but says nothing is told
// apart from one that is not there.
struct Dial {
  nbd_handle* h = nullptr;
  std::optional<Clock::time_point> accepted;  // the socket is connected
  std::optional<Error> error;
  bool ready = false;
  bool done() const { return ready || error.has_value(); }
};

bool socket_connected(nbd_handle* h) {
  const int fd = nbd_aio_get_fd(h);
  sockaddr_storage a{};
  socklen_t n = sizeof a;
  return fd >= 0 && ::getpeername(fd, reinterpret_cast<sockaddr*>(&a), &n) == 0;
}

// Whether the dial has finished, one way or the other, at `now`.
bool settle(Dial& d, const std::string& uri, Clock::time_point now, Clock::time_point deadline,
            std::chrono::milliseconds timeout, std::chrono::milliseconds handshake) {
  if (d.done()) return true;
  if (nbd_aio_is_ready(d.h) == 1) return d.ready = true;
  if (nbd_aio_is_connecting(d.h) != 1)
    d.error = nbd_err(uri, "connect");
  else if (!d.accepted && socket_connected(d.h))
    d.accepted = now;
  if (!d.error && d.accepted && now - *d.accepted >= handshake)
    d.error = Error{ETIMEDOUT, uri +
                                   ": the server accepted the connection but sent no NBD "
                                   "greeting within " +
                                   ms_text(handshake) +
                                   ": it may allow fewer clients (qemu-nbd allows 1 by default: "
                                   "-e/--shared)"};
  if (!d.error && !d.accepted && now >= deadline)
    d.error = Error{ETIMEDOUT, uri + ": no NBD handshake within " + ms_text(timeout) +
                                   " (the server did not accept the connection)"};
  return d.done();
}

// Drives the dials (nbd_aio_connect_uri called) until each is ready or has failed.
void drive(std::vector<Dial>& dials, const std::string& uri, Clock::time_point deadline,
           std::chrono::milliseconds timeout, std::chrono::milliseconds handshake) {
  for (;;) {
    std::vector<pollfd> fds;
    std::vector<Dial*> who;
    const auto now = Clock::now();
    for (Dial& d : dials) {
      if (settle(d, uri, now, deadline, timeout, handshake)) continue;
      const unsigned dir = nbd_aio_get_direction(d.h);
      short events = 0;
      if (dir & LIBNBD_AIO_DIRECTION_READ) events |= POLLIN;
      if (dir & LIBNBD_AIO_DIRECTION_WRITE) events |= POLLOUT;
      fds.push_back(pollfd{nbd_aio_get_fd(d.h), events, 0});
      who.push_back(&d);
    }
    if (fds.empty()) return;
    if (::poll(fds.data(), fds.size(), kDialPollMs) < 0 && errno != EINTR) {
      const Error e = Error::from_errno(errno, uri + ": poll");
      for (Dial* d : who) d->error = e;
      return;
    }
    for (size_t i = 0; i < fds.size(); ++i) {
      const short re = fds[i].revents;
      if (!re) continue;
      // A connect in progress is finished (or failed) by notify_write; data by notify_read.
      const bool reading = nbd_aio_get_direction(who[i]->h) & LIBNBD_AIO_DIRECTION_READ;
      const int r = (re & POLLOUT) || !reading ? nbd_aio_notify_write(who[i]->h)
                                               : nbd_aio_notify_read(who[i]->h);
      if (r == -1) who[i]->error = nbd_err(uri, "connect");
    }
  }
}

Result<void> start_dial(Dial& d, const std::string& uri) {
  d.h = nbd_create();
  if (!d.h) return nbd_err(uri, "nbd_create");
  if (nbd_aio_connect_uri(d.h, uri.c_str()) == -1) return nbd_err(uri, "connect");
  return ok();
}

}  // namespace

Result<std::unique_ptr<NbdTarget>> NbdTarget::open(const std::string& uri, unsigned connections,
                                                   std::chrono::milliseconds timeout,
                                                   std::chrono::milliseconds handshake_timeout) {
  std::unique_ptr<NbdTarget> t(new NbdTarget());
  t->uri_ = uri;
  handshake_timeout = std::min(handshake_timeout, timeout);
  // The first connection alone: it says whether the target is there at all.
  std::vector<Dial> first(1);
  auto started = start_dial(first[0], uri);
  if (first[0].h) t->handles_.push_back(first[0].h);
  TRY(started);
  drive(first, uri, Clock::now() + timeout, timeout, handshake_timeout);
  if (first[0].error) return std::move(*first[0].error);
  TRY(t->check_first());
  // The others at once, each given the handshake's time: a target that accepts fewer
  // clients leaves the rest waiting (qemu-nbd) or closes them; we go on with those it took.
  std::vector<Dial> more(std::max(1u, connections) - 1);
  for (Dial& d : more) {
    if (auto r = start_dial(d, uri); !r) d.error = std::move(r).error();
  }
  drive(more, uri, Clock::now() + handshake_timeout, handshake_timeout, handshake_timeout);
  const Error* why = nullptr;
  for (Dial& d : more) {
    if (d.ready) {
      t->handles_.push_back(d.h);
      continue;
    }
    if (!why) why = &*d.error;
    if (d.h) nbd_close(d.h);  // a connection the server never took: nothing to shut down
  }
  if (why) {
    std::string_view reason = why->message;
    if (reason.starts_with(uri + ": ")) reason.remove_prefix(uri.size() + 2);
    t->note_ =
        fmt::format("{} took {} of the {} connections asked for ({}); going on with {}", uri,
                    t->handles_.size(), std::max(1u, connections), reason, t->handles_.size());
  }
  return t;
}

Result<void> NbdTarget::check_first() {
  nbd_handle* h = handles_.front();
  if (nbd_is_read_only(h) == 1) return Error{EROFS, uri_ + ": the target is read-only"};
  const int64_t size = nbd_get_size(h);
  if (size < 0) return nbd_err(uri_, "size");
  size_ = static_cast<uint64_t>(size);
  can_zero_ = nbd_can_zero(h) == 1;
  return ok();
}

NbdTarget::~NbdTarget() {
  for (nbd_handle* h : handles_) {
    nbd_shutdown(h, 0);
    nbd_close(h);
  }
}

Result<void> NbdTarget::write(unsigned conn, uint64_t offset, std::span<const std::byte> data) {
  IMG_CHECK(conn < handles_.size());
  for (uint64_t at = 0; at < data.size(); at += kWritePieceBytes) {
    const uint64_t n = std::min<uint64_t>(kWritePieceBytes, data.size() - at);
    if (nbd_pwrite(handles_[conn], data.data() + at, n, offset + at, 0) == -1)
      return nbd_err(uri_, "write of " + std::to_string(n) + " bytes at " + std::to_string(offset + at));
  }
  return ok();
}

Result<void> NbdTarget::zero(unsigned conn, uint64_t offset, uint64_t length) {
  IMG_CHECK(conn < handles_.size());
  if (!can_zero_) {
    std::vector<std::byte> zeros(std::min<uint64_t>(length, kWritePieceBytes));
    for (uint64_t at = 0; at < length; at += zeros.size())
      TRY(write(conn, offset + at, std::span(zeros).first(std::min<uint64_t>(zeros.size(), length - at))));
    return ok();
  }
  for (uint64_t at = 0; at < length; at += kZeroPieceBytes) {
    const uint64_t n = std::min(kZeroPieceBytes, length - at);
    if (nbd_zero(handles_[conn], n, offset + at, 0) == -1)
      return nbd_err(uri_, "zero of " + std::to_string(n) + " bytes at " + std::to_string(offset + at));
  }
  return ok();
}

namespace {
// A pipeline keeps at most this many writes, and this many bytes, in flight (one larger
// write may go alone). Scattered 4 KiB regions go 32 at a time, which in bench/migrate.sh
// copied the changes at 2x the pace of one at a time, at the link's rate behind nbdkit's
// rate filter; 1 MiB pieces of the full copy still go one at a time: with 8 MiB in
// flight per connection round 0 took 3-4x as long (the target's server then holds
// megabytes per connection in buffers, out of the caches).
constexpr size_t kPipelineDepth = 32;
constexpr int kPollSliceMs = 100;
constexpr uint64_t kPipelineBytes = limits::kPipelineBytes;
}  // namespace

NbdTarget::Pipeline::~Pipeline() { (void)finish(); }

Result<std::span<std::byte>> NbdTarget::Pipeline::buffer(size_t length) {
  IMG_CHECK(length > 0 && length <= kWritePieceBytes);
  while (!inflight_.empty() &&
         (inflight_.size() >= kPipelineDepth || inflight_bytes_ + length > kPipelineBytes))
    TRY(wait_oldest());
  if (!free_.empty()) {
    next_ = std::move(free_.back());
    free_.pop_back();
  }
  // A large buffer is not kept for a small piece: memory stays near kPipelineBytes.
  if (next_.capacity() > 4 * length + 65536) next_ = std::vector<std::byte>();
  next_.resize(length);
  return std::span(next_);
}

Result<void> NbdTarget::Pipeline::write(uint64_t offset) {
  IMG_CHECK(!next_.empty());
  const int64_t cookie = nbd_aio_pwrite(t_.handles_[conn_], next_.data(), next_.size(), offset,
                                        NBD_NULL_COMPLETION, 0);
  if (cookie == -1)
    return nbd_err(t_.uri_, "write of " + std::to_string(next_.size()) + " bytes at " +
                                std::to_string(offset));
  inflight_bytes_ += next_.size();
  inflight_.push_back(InFlight{cookie, std::move(next_), offset});
  next_ = std::vector<std::byte>();
  return ok();
}

Result<void> NbdTarget::Pipeline::wait_oldest() {
  IMG_CHECK(!inflight_.empty());
  nbd_handle* h = t_.handles_[conn_];
  for (;;) {
    const int r = nbd_aio_command_completed(h, inflight_.front().cookie);
    if (r != 0) return pop_oldest(r);
    // Bounded: another thread's synchronous call on this handle (a flush of every
    // connection, in active mode) may take in our reply while we sleep; then nothing more
    // wakes us, so we look again at least every kPollSliceMs.
    if (nbd_poll(h, kPollSliceMs) == -1) {
      dead_ = true;  // nothing more will complete on this handle
      return nbd_err(t_.uri_, "poll");
    }
  }
}

Result<void> NbdTarget::Pipeline::reap() {
  if (inflight_.empty() || dead_) return ok();
  nbd_handle* h = t_.handles_[conn_];
  if (nbd_poll(h, 0) == -1) {
    dead_ = true;
    return nbd_err(t_.uri_, "poll");
  }
  while (!inflight_.empty()) {
    const int r = nbd_aio_command_completed(h, inflight_.front().cookie);
    if (r == 0) break;
    TRY(pop_oldest(r));
  }
  return ok();
}

Result<void> NbdTarget::Pipeline::pop_oldest(int completed) {
  InFlight& w = inflight_.front();
  inflight_bytes_ -= w.buf.size();
  if (completed == -1) {
    Error e = nbd_err(t_.uri_, "write of " + std::to_string(w.buf.size()) + " bytes at " +
                                   std::to_string(w.offset));
    inflight_.pop_front();
    failed_ = true;
    return e;
  }
  free_.push_back(std::move(w.buf));
  inflight_.pop_front();
  if (!failed_) ++completed_;
  return ok();
}

Result<void> NbdTarget::Pipeline::finish() {
  Result<void> first = ok();
  while (!inflight_.empty()) {
    auto r = wait_oldest();
    if (!r && first) first = std::move(r);
    if (dead_) break;
  }
  return first;
}

Result<void> NbdTarget::read(unsigned conn, uint64_t offset, std::span<std::byte> buf) {
  IMG_CHECK(conn < handles_.size());
  for (uint64_t at = 0; at < buf.size(); at += kWritePieceBytes) {
    const uint64_t n = std::min<uint64_t>(kWritePieceBytes, buf.size() - at);
    if (nbd_pread(handles_[conn], buf.data() + at, n, offset + at, 0) == -1)
      return nbd_err(uri_, "read of " + std::to_string(n) + " bytes at " + std::to_string(offset + at));
  }
  return ok();
}

Result<void> NbdTarget::trim(unsigned conn, uint64_t offset, uint64_t length) {
  IMG_CHECK(conn < handles_.size());
  if (nbd_can_trim(handles_[conn]) != 1) return ok();  // a hint
  if (nbd_trim(handles_[conn], length, offset, 0) == -1) return nbd_err(uri_, "trim");
  return ok();
}

Result<void> NbdTarget::flush() {
  for (nbd_handle* h : handles_)
    if (nbd_can_flush(h) == 1 && nbd_flush(h, 0) == -1) return nbd_err(uri_, "flush");
  return ok();
}

}  // namespace imgstream::migrate
