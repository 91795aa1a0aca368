// Test helpers for src/migrate: a migration target in the test's own process.
#pragma once

#include <stdlib.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "nbd/server.h"
#include "nbd/testing.h"

namespace imgstream::migrate::testing {

// An NBD server exporting a MemoryDevice of `size` bytes on a unix socket in a fresh
// temporary directory; stopped and removed when it goes.
class MemoryTarget {
 public:
  explicit MemoryTarget(uint64_t size) : mem_(size) {
    char tmpl[] = "/tmp/imgstream-target-test-XXXXXX";
    EXPECT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    nbd::ServerOptions o;
    Address a;
    a.kind = Address::Kind::Unix;
    a.path = dir_ + "/nbd.sock";
    o.listen.push_back(a);
    o.exports.push_back(nbd::Export{"", "target", &mem_, false});
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
  std::string dir_;
  std::unique_ptr<nbd::Server> server_;
  std::thread thread_;
};

}  // namespace imgstream::migrate::testing
