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
