// A progress line on stderr for long work (pack, unpack, verify): percent, bytes, MB/s,
// at most ten updates a second, only when stderr is a terminal (logs stay clean).
#pragma once

#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "base/units.h"

namespace imgstream::cli {

class Progress {
 public:
  Progress(std::string what, bool quiet = false)
      : what_(std::move(what)), on_(!quiet && ::isatty(STDERR_FILENO)) {}
  ~Progress() { finish(); }

  void update(uint64_t done, uint64_t total) {
    if (!on_) return;
    const auto now = std::chrono::steady_clock::now();
    if (done < total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    const double s = std::chrono::duration<double>(now - start_).count();
    std::fprintf(stderr, "\r%s %5.1f%%  %s / %s  %.1f MB/s\033[K", what_.c_str(),
                 total ? 100.0 * double(done) / double(total) : 100.0, format_size(done).c_str(),
                 format_size(total).c_str(), s > 0 ? double(done) / s / 1e6 : 0.0);
    shown_ = true;
  }
  void finish() {
    if (shown_) std::fprintf(stderr, "\n");
    shown_ = false;
  }
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::string what_;
  bool on_;
  bool shown_ = false;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace imgstream::cli
