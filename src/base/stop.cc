#include "base/stop.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <atomic>
#include <map>
#include <mutex>

#include "base/check.h"

namespace imgstream {

namespace {

struct StopState {
  std::atomic<bool> requested{false};
  int fd = -1;
  // Recursive: a callback may register or drop another StopCallback on its own thread.
  std::recursive_mutex mu;  // guards callbacks and next_id
  std::map<uint64_t, std::function<void()>> callbacks;
  uint64_t next_id = 1;

  std::mutex temp_mu;  // guards temps
  std::map<uint64_t, std::string> temps;
  uint64_t next_temp = 1;

  StopState() {
    fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    IMG_CHECK_MSG(fd >= 0, "eventfd for the stop request");
  }
};

// Never destroyed: threads may still ask for a stop while the process exits.
StopState& state() {
  static StopState* s = new StopState();
  return *s;
}

}  // namespace

bool stop_requested() {
  return state().requested.load(std::memory_order_relaxed);
}

void request_process_stop() {
  StopState& s = state();
  std::lock_guard lock(s.mu);
  if (s.requested.exchange(true)) return;
  const uint64_t one = 1;
  (void)!::write(s.fd, &one, sizeof one);
  for (auto& [id, fn] : s.callbacks) fn();
}

int stop_fd() {
  return state().fd;
}

bool sleep_unless_stopped(std::chrono::milliseconds d) {
  if (stop_requested()) return false;
  pollfd p{stop_fd(), POLLIN, 0};
  const int ms = static_cast<int>(std::min<int64_t>(d.count(), INT32_MAX));
  int n;
  while ((n = ::poll(&p, 1, ms)) < 0 && errno == EINTR) {
  }
  return n == 0 && !stop_requested();
}

void reset_stop_for_testing() {
  StopState& s = state();
  std::lock_guard lock(s.mu);
  uint64_t v;
  (void)!::read(s.fd, &v, sizeof v);
  s.requested = false;
}

StopCallback::StopCallback(std::function<void()> fn) {
  StopState& s = state();
  {
    std::lock_guard lock(s.mu);
    if (!s.requested) {
      id_ = s.next_id++;
      s.callbacks.emplace(id_, std::move(fn));
      return;
    }
  }
  fn();  // asked for already
}

StopCallback::~StopCallback() {
  if (id_ == 0) return;
  StopState& s = state();
  std::lock_guard lock(s.mu);  // waits for callbacks running on another thread
  s.callbacks.erase(id_);
}

TempFile::TempFile(std::string path) : path_(std::move(path)) {
  StopState& s = state();
  std::lock_guard lock(s.temp_mu);
  id_ = s.next_temp++;
  s.temps.emplace(id_, path_);
}

TempFile::~TempFile() {
  if (id_ == 0) return;
  ::unlink(path_.c_str());
  keep();
}

void TempFile::keep() {
  if (id_ == 0) return;
  StopState& s = state();
  std::lock_guard lock(s.temp_mu);
  s.temps.erase(id_);
  id_ = 0;
}

void remove_temp_files_now() {
  StopState& s = state();
  std::lock_guard lock(s.temp_mu);
  for (auto& [id, path] : s.temps) ::unlink(path.c_str());
}

}  // namespace imgstream
