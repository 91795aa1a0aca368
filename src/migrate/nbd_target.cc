#include "migrate/nbd_target.h"

#include <libnbd.h>

#include <algorithm>

#include "base/check.h"

namespace imgstream::migrate {

namespace {

constexpr uint64_t kZeroPieceBytes = 1u << 30;   // one WRITE_ZEROES asks for at most this
constexpr uint64_t kWritePieceBytes = 32u << 20;  // and one WRITE (servers' usual limit)

Error nbd_err(const std::string& uri, const std::string& what) {
  const int e = nbd_get_errno();
  return Error{e ? e : EIO, uri + ": " + what + ": " + (nbd_get_error() ? nbd_get_error() : "?")};
}

}  // namespace

Result<std::unique_ptr<NbdTarget>> NbdTarget::open(const std::string& uri, unsigned connections,
                                                   std::chrono::milliseconds timeout) {
  std::unique_ptr<NbdTarget> t(new NbdTarget());
  t->uri_ = uri;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (unsigned i = 0; i < std::max(1u, connections); ++i) {
    nbd_handle* h = nbd_create();
    if (!h) return nbd_err(uri, "nbd_create");
    t->handles_.push_back(h);
    // Connected and negotiated by polling, so that a host that does not answer (or a
    // server that accepts and says nothing) fails in `timeout`, not in TCP's minutes.
    if (nbd_aio_connect_uri(h, uri.c_str()) == -1) return nbd_err(uri, "connect");
    while (nbd_aio_is_connecting(h) == 1) {
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0)
        return Error{ETIMEDOUT, uri + ": no NBD handshake within " +
                                    std::to_string(timeout.count()) + " ms"};
      if (nbd_poll(h, static_cast<int>(std::min<int64_t>(left.count(), 1000))) == -1)
        return nbd_err(uri, "connect");
    }
    if (nbd_aio_is_ready(h) != 1) return nbd_err(uri, "connect");
    if (nbd_is_read_only(h) == 1) return Error{EROFS, uri + ": the target is read-only"};
    const int64_t size = nbd_get_size(h);
    if (size < 0) return nbd_err(uri, "size");
    t->size_ = static_cast<uint64_t>(size);
    t->can_zero_ = nbd_can_zero(h) == 1;
  }
  return t;
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
constexpr uint64_t kPipelineBytes = 1u << 20;
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
