// The process's stop request: what Ctrl-C (SIGINT), SIGTERM and SIGHUP turn into, so that
// every phase of every command can notice it within a second (issue 12: a stream starting
// against a slow source ignored SIGINT for 30 s; pack left its temporaries behind).
//
//   - The CLI blocks the stop signals in every thread and waits for them on one thread of
//     its own (cli/stop_signals.h), which calls request_process_stop().
//   - Long work polls stop_requested() between pieces (pack, unpack, verify, retries with
//     backoff), sleeps with sleep_unless_stopped(), or polls stop_fd() beside its own fds.
//   - Work that blocks somewhere a flag cannot reach (a server's accept loop, a source's
//     connection) registers a StopCallback that unblocks it.
//   - Files being written aside (NAME.tmp) are registered as TempFiles: a second stop
//     signal (the user insisting) exits at once and removes them first.
//
// Thread safety: every function here may be called from any thread. Callbacks run on the
// thread that requested the stop, outside any lock of this module's, once each.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>

namespace imgstream {

// Whether a stop was asked for. Cheap (one relaxed atomic load).
bool stop_requested();
// Asks for the stop: sets the flag, makes stop_fd() readable, runs the registered
// callbacks. Idempotent: later calls do nothing. Not async-signal-safe (callbacks).
void request_process_stop();
// An eventfd that turns readable once a stop was asked for (and stays readable).
int stop_fd();
// Sleeps for `d` or until a stop is asked for; false when the sleep was cut short.
bool sleep_unless_stopped(std::chrono::milliseconds d);
// For tests: forget a stop request (the flag, the fd), so that the next test starts clean.
void reset_stop_for_testing();

// Runs `fn` once when a stop is asked for (at once, on this thread, when it was asked for
// already) unless the object is destroyed first. The destructor waits for a callback
// running on another thread to return, so `fn` may use what the owner owns.
class StopCallback {
 public:
  explicit StopCallback(std::function<void()> fn);
  ~StopCallback();
  StopCallback(const StopCallback&) = delete;
  StopCallback& operator=(const StopCallback&) = delete;

 private:
  uint64_t id_ = 0;
};

// A file written aside before it is renamed into place. Removed by the destructor unless
// keep() was called (it was renamed), and by remove_temp_files_now() on a forced exit.
class TempFile {
 public:
  explicit TempFile(std::string path);
  ~TempFile();
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::string& path() const { return path_; }
  // The file was renamed into place (or is otherwise no longer ours to remove).
  void keep();

 private:
  std::string path_;
  uint64_t id_ = 0;
};

// Removes every registered temporary file now (a forced exit: second stop signal).
void remove_temp_files_now();

}  // namespace imgstream
