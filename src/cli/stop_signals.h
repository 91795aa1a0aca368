// The stop signals (SIGINT, SIGTERM, SIGHUP) of the whole process, turned into
// base/stop.h's stop request on one thread of their own.
//
// Every command starts with a StopSignals (main() makes it before anything else, so that
// every thread started later inherits the blocked mask). What a signal does depends on
// the command:
//   - Immediate (the default): the process exits at once with 128 + signal, removing
//     its registered temporary files first: right for commands that finish quickly and
//     hold nothing a user could lose.
//   - Graceful: the first signal asks for a stop (request_process_stop) and the command
//     winds down within a second; a second signal exits at once as above.
// A command that polls stop_requested() or registers StopCallbacks calls
// set_graceful_stop() before its work starts.
#pragma once

#include <thread>

#include "base/unique_fd.h"

namespace imgstream::cli {

// Lock contract: no lock. The waiter thread (thread_) owns sigfd_ and reads done_; the
// thread that made the StopSignals (main's) writes done_ and joins it on destruction.
// set_graceful_stop() may be called from any thread (an atomic flag the waiter reads).
class StopSignals {
 public:
  StopSignals();   // blocks the signals in the calling thread and starts the waiter
  ~StopSignals();  // stops the waiter
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  void wait_loop();
  UniqueFd sigfd_;
  UniqueFd done_;  // eventfd: the process is leaving
  std::thread thread_;
};

// The running command stops gracefully on the first signal (see above).
void set_graceful_stop();

}  // namespace imgstream::cli
