// Test helpers for src/migrate: a migration target in the test's own process.
#pragma once

#include <stdlib.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "device/forwarding_device.h"
#include "nbd/server.h"
#include "nbd/testing.h"

namespace imgstream::migrate::testing {

// How long a write of `length` bytes at `offset` waits before it lands at the target.
using WriteDelay = std::function<std::chrono::microseconds(uint64_t offset, size_t length)>;

// 0 to 2 ms by offset: at a server with several worker threads a write sent later often
// lands first, as at a real target.
inline std::chrono::microseconds jitter(uint64_t offset, size_t) {
  return std::chrono::microseconds((offset >> 9) % 3 * 1000);
}

// The target's disk: writes land after a delay; flush() makes what landed durable;
// crash() loses what was not, and every request fails from then on (a dead host).
// Lock contract: the server's worker threads call every method at once. mu_ guards
// durable_ and orders flush() against crash(); dead_ is an atomic every request reads
// (set under mu_); reads and writes go to the MemoryDevice, which locks itself.
class TargetDisk final : public ForwardingDevice {
 public:
  TargetDisk(nbd::testing::MemoryDevice& mem, WriteDelay delay)
      : ForwardingDevice(mem), delay_(delay), durable_(mem.size()) {}
  Result<void> read(uint64_t offset, std::span<std::byte> buf) override {
    TRY(alive());
    return inner_.read(offset, buf);
  }
  Result<void> write(uint64_t offset, std::span<const std::byte> d, Durability du) override {
    if (delay_) std::this_thread::sleep_for(delay_(offset, d.size()));
    TRY(alive());
    return inner_.write(offset, d, du);
  }
  Result<void> write_nowait(uint64_t, std::span<const std::byte>, Durability) override {
    return Error::would_block();
  }
  Result<void> write_zeroes(uint64_t offset, uint64_t length, ZeroFlags z, Durability d) override {
    TRY(alive());
    return inner_.write_zeroes(offset, length, z, d);
  }
  Result<void> trim(uint64_t offset, uint64_t length, Durability d) override {
    TRY(alive());
    return inner_.trim(offset, length, d);
  }
  Result<void> flush() override {
    std::lock_guard l(mu_);
    TRY(alive());
    return inner_.read(0, durable_);  // (writes landing meanwhile may count as flushed)
  }
  void crash() {
    std::lock_guard l(mu_);
    dead_ = true;
    EXPECT_TRUE(inner_.write(0, durable_, Durability::Buffered));
  }

 private:
  Result<void> alive() const { return dead_ ? Error::io("the target crashed") : ok(); }

  WriteDelay delay_;
  std::mutex mu_;
  std::atomic<bool> dead_{false};
  std::vector<std::byte> durable_;  // as of the last flush
};

// An NBD server exporting a MemoryDevice of `size` bytes on a unix socket in a fresh
// temporary directory; stopped and removed when it goes. Its writes land after `delay`;
// crash() loses what it did not flush (TargetDisk).
// Threads: thread_ runs the server until the destructor (on the test's thread) stops and
// joins it; the test's thread calls the rest.
class MemoryTarget {
 public:
  explicit MemoryTarget(uint64_t size, WriteDelay delay = {}) : mem_(size), disk_(mem_, delay) {
    char tmpl[] = "/tmp/imgstream-target-test-XXXXXX";
    EXPECT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    nbd::ServerOptions o;
    Address a;
    a.kind = Address::Kind::Unix;
    a.path = dir_ + "/nbd.sock";
    o.listen.push_back(a);
    o.exports.push_back(nbd::Export{"", "target", &disk_, false});
    o.worker_threads = 4;
    auto s = nbd::Server::create(std::move(o));
    EXPECT_TRUE(s) << s.error().message;
    server_ = std::move(*s);
    thread_ = std::thread([this] { (void)server_->run(); });
  }
  ~MemoryTarget() {
    server_->request_stop();
    thread_.join();
    std::filesystem::remove_all(dir_);
  }
  MemoryTarget(const MemoryTarget&) = delete;
  MemoryTarget& operator=(const MemoryTarget&) = delete;

  std::string uri() const { return "nbd+unix:///?socket=" + dir_ + "/nbd.sock"; }
  void crash() { disk_.crash(); }
  std::vector<std::byte> contents() {
    std::vector<std::byte> b(mem_.size());
    EXPECT_TRUE(mem_.read(0, b));
    return b;
  }

 private:
  nbd::testing::MemoryDevice mem_;
  TargetDisk disk_;
  std::string dir_;
  std::unique_ptr<nbd::Server> server_;
  std::thread thread_;
};

}  // namespace imgstream::migrate::testing
