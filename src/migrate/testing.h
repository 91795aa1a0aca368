// Test helpers for src/migrate: a migration target in the test's own process.
#pragma once

#include <stdlib.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
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

// A device whose writes land after a delay.
class DelayedWrites final : public ForwardingDevice {
 public:
  DelayedWrites(BlockDevice& inner, WriteDelay delay) : ForwardingDevice(inner), delay_(delay) {}
  Result<void> write(uint64_t offset, std::span<const std::byte> d, Durability du) override {
    if (delay_) std::this_thread::sleep_for(delay_(offset, d.size()));
    return inner_.write(offset, d, du);
  }
  Result<void> write_nowait(uint64_t, std::span<const std::byte>, Durability) override {
    return Error::would_block();
  }

 private:
  WriteDelay delay_;
};

// An NBD server exporting a MemoryDevice of `size` bytes on a unix socket in a fresh
// temporary directory; stopped and removed when it goes. Its writes land after `delay`.
class MemoryTarget {
 public:
  explicit MemoryTarget(uint64_t size, WriteDelay delay = {}) : mem_(size), delayed_(mem_, delay) {
    char tmpl[] = "/tmp/imgstream-target-test-XXXXXX";
    EXPECT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    nbd::ServerOptions o;
    Address a;
    a.kind = Address::Kind::Unix;
    a.path = dir_ + "/nbd.sock";
    o.listen.push_back(a);
    o.exports.push_back(nbd::Export{"", "target", &delayed_, false});
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
  std::vector<std::byte> contents() {
    std::vector<std::byte> b(mem_.size());
    EXPECT_TRUE(mem_.read(0, b));
    return b;
  }

 private:
  nbd::testing::MemoryDevice mem_;
  DelayedWrites delayed_;
  std::string dir_;
  std::unique_ptr<nbd::Server> server_;
  std::thread thread_;
};

}  // namespace imgstream::migrate::testing
