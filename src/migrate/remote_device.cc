#include "migrate/remote_device.h"

namespace imgstream::migrate {

RemoteDevice::RemoteDevice(std::unique_ptr<NbdTarget> target, uint64_t size)
    : t_(std::move(target)), size_(size) {
  for (unsigned c = 0; c < t_->connections(); ++c) free_.push_back(c);
}

DeviceCaps RemoteDevice::caps() const {
  DeviceCaps c;
  c.writable = c.can_flush = c.can_fua = c.can_trim = c.can_zero = true;
  c.can_multi_conn = true;  // flush() flushes every connection
  return c;
}

unsigned RemoteDevice::take() {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return !free_.empty(); });
  const unsigned c = free_.back();
  free_.pop_back();
  return c;
}

void RemoteDevice::give(unsigned c) {
  {
    std::lock_guard lock(mu_);
    free_.push_back(c);
  }
  cv_.notify_one();
}

#define ON_CONNECTION(expr)  \
  const unsigned c = take(); \
  auto r = (expr);           \
  give(c);

Result<void> RemoteDevice::read(uint64_t offset, std::span<std::byte> buf) {
  ON_CONNECTION(t_->read(c, offset, buf));
  return r;
}

Result<void> RemoteDevice::write(uint64_t offset, std::span<const std::byte> data, Durability d) {
  ON_CONNECTION(t_->write(c, offset, data));
  TRY(r);
  return d == Durability::Fua ? t_->flush() : ok();
}

Result<void> RemoteDevice::trim(uint64_t offset, uint64_t length, Durability d) {
  ON_CONNECTION(t_->trim(c, offset, length));
  TRY(r);
  return d == Durability::Fua ? t_->flush() : ok();
}

Result<void> RemoteDevice::write_zeroes(uint64_t offset, uint64_t length, ZeroFlags, Durability d) {
  ON_CONNECTION(t_->zero(c, offset, length));
  TRY(r);
  return d == Durability::Fua ? t_->flush() : ok();
}

#undef ON_CONNECTION

}  // namespace imgstream::migrate
