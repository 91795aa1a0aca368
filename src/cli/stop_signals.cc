#include "cli/stop_signals.h"

#include <poll.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

#include "base/log.h"
#include "base/stop.h"

namespace imgstream::cli {

namespace {

std::atomic<bool> g_graceful{false};

sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  return set;
}

[[noreturn]] void exit_now(int signo) {
  remove_temp_files_now();
  ::_exit(128 + signo);
}

}  // namespace

void set_graceful_stop() {
  g_graceful = true;
}

StopSignals::StopSignals() {
  const sigset_t set = stop_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  sigfd_.reset(::signalfd(-1, &set, SFD_CLOEXEC));
  done_.reset(::eventfd(0, EFD_CLOEXEC));
  // Without a signalfd the signals stay blocked: unblock them again, so that a stop
  // signal at least ends the process (the default action) instead of being ignored.
  if (!sigfd_.valid() || !done_.valid()) {
    pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
    return;
  }
  thread_ = std::thread([this] { wait_loop(); });
}

StopSignals::~StopSignals() {
  if (!thread_.joinable()) return;
  const uint64_t one = 1;
  (void)!::write(done_.get(), &one, sizeof one);
  thread_.join();
}

void StopSignals::wait_loop() {
  pollfd fds[2] = {{sigfd_.get(), POLLIN, 0}, {done_.get(), POLLIN, 0}};
  for (;;) {
    if (::poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      return;
    }
    if (fds[1].revents) return;
    signalfd_siginfo si{};
    if (::read(sigfd_.get(), &si, sizeof si) != sizeof si) continue;
    const int signo = static_cast<int>(si.ssi_signo);
    if (!g_graceful || stop_requested()) exit_now(signo);  // quick command, or insisting
    LOG_INFO("signal {}: stopping", signo);
    request_process_stop();
  }
}

}  // namespace imgstream::cli
