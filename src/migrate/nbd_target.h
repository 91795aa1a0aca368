// NbdTarget: where a migration writes — any NBD server (imgstream serve, qemu-nbd,
// nbdkit), through libnbd. One connection per worker thread, synchronous calls on each:
// the migrator's workers write distinct regions in parallel, and flush() flushes every
// connection, so the copy is durable on the target whether or not it offers multi-conn.
#pragma once

#include <chrono>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "base/result.h"

struct nbd_handle;

namespace imgstream::migrate {

inline constexpr std::chrono::milliseconds kConnectTimeoutDefault{30'000};

class NbdTarget {
 public:
  // Every connection made and negotiated within `timeout`, or ETIMEDOUT.
  static Result<std::unique_ptr<NbdTarget>> open(
      const std::string& uri, unsigned connections,
      std::chrono::milliseconds timeout = kConnectTimeoutDefault);
  ~NbdTarget();

  uint64_t size() const { return size_; }
  const std::string& uri() const { return uri_; }
  unsigned connections() const { return static_cast<unsigned>(handles_.size()); }
  // `conn` < connections(): the caller's own connection (one per worker thread).
  Result<void> write(unsigned conn, uint64_t offset, std::span<const std::byte> data);
  // Makes [offset, offset + length) read as zeros (NBD WRITE_ZEROES, or written zeros).
  Result<void> zero(unsigned conn, uint64_t offset, uint64_t length);
  Result<void> flush();
  Result<void> read(unsigned conn, uint64_t offset, std::span<std::byte> buf);
  Result<void> trim(unsigned conn, uint64_t offset, uint64_t length);

 private:
  NbdTarget() = default;
  std::string uri_;
  uint64_t size_ = 0;
  bool can_zero_ = false;
  std::vector<nbd_handle*> handles_;
};

}  // namespace imgstream::migrate
