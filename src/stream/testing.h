// Test helpers for the streaming layer: a Source over memory.
#pragma once

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <mutex>
#include <thread>
#include <vector>

#include "source/source.h"

namespace imgstream::stream::testing {

// A Source over memory that completes reads on its own thread, counts them, and can be
// told to fail.
// Lock contract: read_async() may be called from any thread; each read completes on a
// thread of its own (detached), or on the caller's with inline_. log_mu_ guards offsets_
// and the in-flight byte counts; the counters and the knobs the test sets while reads run
// (fail_, delay_us_) are atomics; inline_ is set before the first read. image_ is const.
class MemSource final : public source::Source {
 public:
  explicit MemSource(std::vector<std::byte> image) : image_(std::move(image)) {}
  ~MemSource() override { close(); }
  uint64_t size() const override { return image_.size(); }
  const std::string& uri() const override { return uri_; }
  void read_async(uint64_t offset, std::span<std::byte> buf, source::ReadDone done) override {
    reads_++;
    bytes_ += buf.size();
    {
      std::lock_guard lock(log_mu_);
      offsets_.push_back(offset);
      in_flight_bytes_ += buf.size();
      in_flight_bytes_max_ = std::max(in_flight_bytes_max_, in_flight_bytes_);
    }
    auto work = [this, offset, buf, done = std::move(done)] {
      if (delay_us_) ::usleep(delay_us_);
      {
        // Before done: done gives the buffer's budget back, and a new read may follow.
        std::lock_guard lock(log_mu_);
        in_flight_bytes_ -= buf.size();
      }
      if (fail_) return done(Error::io("injected source failure"));
      std::copy_n(image_.begin() + static_cast<ptrdiff_t>(offset), buf.size(), buf.begin());
      done(ok());
    };
    if (inline_) {
      work();
    } else {
      std::thread(std::move(work)).detach();
    }
  }
  Result<void> block_status(uint64_t offset, uint64_t length, std::vector<Extent>& out) override {
    // Zero runs of 64 KiB granularity are reported as holes.
    constexpr uint64_t g = 64 * 1024;
    for (uint64_t pos = offset; pos < offset + length;) {
      const uint64_t n = std::min(g - pos % g, offset + length - pos);
      bool zero = std::all_of(image_.begin() + static_cast<ptrdiff_t>(pos),
                              image_.begin() + static_cast<ptrdiff_t>(pos + n),
                              [](std::byte b) { return b == std::byte{0}; });
      out.push_back(Extent{n, zero ? kStateHole | kStateZero : 0u});
      pos += n;
    }
    return ok();
  }
  std::atomic<int> reads_{0};
  std::atomic<uint64_t> bytes_{0};
  std::atomic<bool> fail_{false};
  std::atomic<int> delay_us_{0};
  bool inline_ = false;  // complete reads on the caller's thread (deterministic order)
  std::mutex log_mu_;
  std::vector<uint64_t> offsets_;  // every read's offset, in the order asked
  uint64_t in_flight_bytes_ = 0;   // asked and not answered (under log_mu_)
  uint64_t in_flight_bytes_max_ = 0;
  uint64_t in_flight_max() {
    std::lock_guard lock(log_mu_);
    return in_flight_bytes_max_;
  }

 private:
  std::vector<std::byte> image_;
  std::string uri_ = "mem://image";
};


}  // namespace imgstream::stream::testing
