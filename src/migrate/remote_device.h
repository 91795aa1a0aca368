// RemoteDevice: a BlockDevice on an NBD server (an NbdTarget): after a live migration's
// cutover the served disk switches to it, so the machine goes on, on the target, without
// reconnecting. Each request takes one of the target's connections (a small pool).
//
// Lock contract: mu_ guards free_ (the idle connections); a request waits on cv_ for one
// and holds it, not the mutex, for its I/O. Any thread.
#pragma once

#include <condition_variable>
#include <memory>
#include <mutex>
#include <vector>

#include "device/block_device.h"
#include "migrate/nbd_target.h"

namespace imgstream::migrate {

class RemoteDevice final : public BlockDevice {
 public:
  RemoteDevice(std::unique_ptr<NbdTarget> target, uint64_t size);
  uint64_t size() const override { return size_; }
  DeviceCaps caps() const override;
  Result<void> read(uint64_t offset, std::span<std::byte> buf) override;
  Result<void> write(uint64_t offset, std::span<const std::byte> data, Durability d) override;
  Result<void> flush() override { return t_->flush(); }
  Result<void> trim(uint64_t offset, uint64_t length, Durability d) override;
  Result<void> write_zeroes(uint64_t offset, uint64_t length, ZeroFlags z, Durability d) override;

  // One connection of the pool held by one thread for a while (a pipelined copy), so the
  // requests above wait for the others.
  class Lease {
   public:
    explicit Lease(RemoteDevice& d) : d_(d), conn_(d.take()) {}
    ~Lease() { d_.give(conn_); }
    Lease(const Lease&) = delete;
    Lease& operator=(const Lease&) = delete;
    NbdTarget& target() { return *d_.t_; }
    unsigned conn() const { return conn_; }

   private:
    RemoteDevice& d_;
    const unsigned conn_;
  };

 private:
  unsigned take();
  void give(unsigned c);

  std::unique_ptr<NbdTarget> t_;
  const uint64_t size_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<unsigned> free_;
};

}  // namespace imgstream::migrate
