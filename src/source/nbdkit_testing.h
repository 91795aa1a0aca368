// Test helpers for the sources: real nbdkit servers as child processes (on a unix socket
// in a temporary directory), image files with known contents, and a bounded wait for
// read_async completions. Header-only, for src/source/*_test.cc.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "base/result.h"

extern char** environ;

namespace imgstream::source::testing {

using namespace std::chrono_literals;

// How long a test waits for anything at most: far above what any step needs, so that a
// hang fails the test instead of blocking the suite.
inline constexpr std::chrono::seconds kWaitMax{20};

// Bytes that differ at every offset (so a read at the wrong offset shows), reproducible.
inline std::vector<std::byte> pattern_bytes(size_t n, uint64_t seed) {
  std::vector<std::byte> v(n);
  uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
  for (size_t i = 0; i < n; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(v.data() + i, &x, std::min<size_t>(8, n - i));
  }
  return v;
}

inline void write_file(const std::string& path, std::span<const std::byte> data) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
}

// A sparse file of `size` bytes with data only in the given [offset, offset + length)s.
inline void write_sparse_file(const std::string& path, uint64_t size,
                              const std::vector<std::pair<uint64_t, uint64_t>>& data) {
  int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) std::abort();
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) std::abort();
  for (auto [off, len] : data) {
    auto bytes = pattern_bytes(len, off);
    if (::pwrite(fd, bytes.data(), len, static_cast<off_t>(off)) != static_cast<ssize_t>(len))
      std::abort();
  }
  ::fsync(fd);  // so that SEEK_DATA sees the extents
  ::close(fd);
}

inline std::string make_temp_dir() {
  std::string tmpl = (std::filesystem::temp_directory_path() / "imgstream-source-XXXXXX").string();
  if (!::mkdtemp(tmpl.data())) std::abort();
  return tmpl;
}

// An nbdkit process serving on a unix socket. Killed (by its pid) when the object goes.
class Nbdkit {
 public:
  Nbdkit() = default;
  Nbdkit(const Nbdkit&) = delete;
  Nbdkit& operator=(const Nbdkit&) = delete;
  ~Nbdkit() { kill(); }

  // Runs `nbdkit -f -r --exit-with-parent -U socket -P pidfile ARGS...` and waits until it
  // accepts connections (nbdkit writes the pidfile only then). A socket file left by a
  // killed server is removed first.
  Result<void> start(const std::string& socket, const std::vector<std::string>& args) {
    kill();
    std::string pidfile = socket + ".pid";
    ::unlink(socket.c_str());
    ::unlink(pidfile.c_str());
    std::vector<std::string> argv_s = {"nbdkit", "-f",   "-r", "--exit-with-parent",
                                       "-U",     socket, "-P", pidfile};
    argv_s.insert(argv_s.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_s) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid;
    int err = ::posix_spawnp(&pid, "nbdkit", nullptr, nullptr, argv.data(), environ);
    if (err != 0) return Error::from_errno(err, "spawn nbdkit");
    pid_ = pid;
    auto deadline = std::chrono::steady_clock::now() + kWaitMax;
    while (std::chrono::steady_clock::now() < deadline) {
      struct stat st;
      if (::stat(pidfile.c_str(), &st) == 0 && st.st_size > 0) return ok();
      int status;
      if (::waitpid(pid_, &status, WNOHANG) == pid_) {
        pid_ = -1;
        return Error::io("nbdkit exited before it was ready");
      }
      std::this_thread::sleep_for(5ms);
    }
    kill();
    return Error{ETIMEDOUT, "nbdkit not ready in time"};
  }

  // SIGKILL, as a crash would: no clean disconnect, the socket file stays.
  void kill() {
    if (pid_ <= 0) return;
    ::kill(pid_, SIGKILL);
    auto deadline = std::chrono::steady_clock::now() + kWaitMax;
    int status;
    while (::waitpid(pid_, &status, WNOHANG) == 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(1ms);
    pid_ = -1;
  }

  bool running() const { return pid_ > 0; }

 private:
  pid_t pid_ = -1;
};

// Collects the results of many read_async calls; wait() is bounded.
// Lock contract: the callbacks run on the sources' threads, any number at once; mu_
// guards results_, expected_ and done_, and cv_ wakes wait() on the test's thread.
// result() reads without the lock, so only after wait() returned true.
class Completions {
 public:
  // A done() callback for the i-th read.
  std::function<void(Result<void>)> callback(size_t i) {
    {
      std::lock_guard lock(mu_);
      if (results_.size() <= i) results_.resize(i + 1, Result<void>(Error{-1, "pending"}));
      ++expected_;
    }
    return [this, i](Result<void> r) {
      std::lock_guard lock(mu_);
      results_[i] = std::move(r);
      ++done_;
      cv_.notify_all();
    };
  }
  // True when all callbacks ran within `max`.
  bool wait(std::chrono::milliseconds max = kWaitMax) {
    std::unique_lock lock(mu_);
    return cv_.wait_for(lock, max, [&] { return done_ == expected_; });
  }
  size_t done() {
    std::lock_guard lock(mu_);
    return done_;
  }
  // Call after wait() returned true.
  const Result<void>& result(size_t i) { return results_[i]; }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Result<void>> results_;
  size_t expected_ = 0;
  size_t done_ = 0;
};

// Waits (bounded) until pred() holds; returns whether it did.
template <typename Pred>
bool eventually(Pred pred, std::chrono::milliseconds max = kWaitMax) {
  auto deadline = std::chrono::steady_clock::now() + max;
  while (!pred()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
  return true;
}

}  // namespace imgstream::source::testing
