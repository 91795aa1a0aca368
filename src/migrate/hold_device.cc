#include "migrate/hold_device.h"

#include "base/check.h"

namespace imgstream::migrate {

bool HoldDevice::held_locked() const {
  return held_ && std::chrono::steady_clock::now() < until_;
}

bool HoldDevice::held() const {
  std::lock_guard lock(mu_);
  return held_locked();
}

void HoldDevice::hold(std::chrono::milliseconds limit) {
  std::unique_lock lock(mu_);
  held_ = true;
  until_ = std::chrono::steady_clock::now() + limit;
  cv_.wait_until(lock, until_, [&] { return active_ == 0; });
}

void HoldDevice::switch_to(BlockDevice& next) {
  std::lock_guard lock(mu_);
  IMG_CHECK(held_ && active_ == 0 && next.size() >= size_);
  inner_ = &next;
}

void HoldDevice::release() {
  {
    std::lock_guard lock(mu_);
    held_ = false;
  }
  cv_.notify_all();
}

void HoldDevice::enter() {
  std::unique_lock lock(mu_);
  while (held_locked()) cv_.wait_until(lock, until_);
  ++active_;
}

bool HoldDevice::try_enter() {
  std::lock_guard lock(mu_);
  if (held_locked()) return false;
  ++active_;
  return true;
}

void HoldDevice::leave() {
  std::lock_guard lock(mu_);
  if (--active_ == 0) cv_.notify_all();
}

// Every request: wait out a hold, count it in flight, run it, count it out.
#define HELD(expr)   \
  enter();           \
  auto r_ = (expr);  \
  leave();           \
  return r_

Result<void> HoldDevice::read(uint64_t offset, std::span<std::byte> buf) {
  HELD(inner_->read(offset, buf));
}
Result<void> HoldDevice::read_nowait(uint64_t offset, std::span<std::byte> buf) {
  if (!try_enter()) return Error::would_block();  // the pool thread will wait
  auto r = inner_->read_nowait(offset, buf);
  leave();
  return r;
}
Result<void> HoldDevice::write(uint64_t offset, std::span<const std::byte> data, Durability d) {
  HELD(inner_->write(offset, data, d));
}
Result<void> HoldDevice::write_nowait(uint64_t offset, std::span<const std::byte> data,
                                      Durability d) {
  if (!try_enter()) return Error::would_block();
  auto r = inner_->write_nowait(offset, data, d);
  leave();
  return r;
}
Result<void> HoldDevice::flush() { HELD(inner_->flush()); }
Result<void> HoldDevice::trim(uint64_t offset, uint64_t length, Durability d) {
  HELD(inner_->trim(offset, length, d));
}
Result<void> HoldDevice::write_zeroes(uint64_t offset, uint64_t length, ZeroFlags z,
                                      Durability d) {
  HELD(inner_->write_zeroes(offset, length, z, d));
}
Result<void> HoldDevice::cache(uint64_t offset, uint64_t length) {
  HELD(inner_->cache(offset, length));
}
Result<void> HoldDevice::block_status(size_t context, uint64_t offset, uint64_t length,
                                      std::vector<Extent>& out) {
  HELD(inner_->block_status(context, offset, length, out));
}

#undef HELD

}  // namespace imgstream::migrate
