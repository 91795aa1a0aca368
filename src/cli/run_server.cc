#include "cli/run_server.h"

#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <thread>

#include "base/log.h"
#include "base/unique_fd.h"
#include "cli/cli.h"

extern char** environ;

namespace imgstream::cli {

namespace {

sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  return set;
}

// Starts `sh -c cmd` with the export's coordinates in its environment and the default
// signal mask. Returns its pid.
Result<pid_t> spawn_captive(const std::string& cmd, const Address& a, const std::string& uri,
                            const std::string& export_name) {
  ::setenv("uri", uri.c_str(), 1);
  ::setenv("exportname", export_name.c_str(), 1);
  if (a.kind == Address::Kind::Unix) {
    ::setenv("unixsocket", a.path.c_str(), 1);
  } else {
    ::setenv("host", a.host.c_str(), 1);
    ::setenv("port", std::to_string(a.port).c_str(), 1);
  }
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  const char* argv[] = {"sh", "-c", cmd.c_str(), nullptr};
  pid_t pid = 0;
  int rc = ::posix_spawn(&pid, "/bin/sh", nullptr, &attr, const_cast<char**>(argv), environ);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return Error::from_errno(rc, "run command '" + cmd + "'");
  return pid;
}

}  // namespace

void block_stop_signals() {
  sigset_t set = stop_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
}

Result<Address> private_socket() {
  char dir[] = "/tmp/imgstream-XXXXXX";
  if (!::mkdtemp(dir)) return Error::from_errno(errno, "mkdtemp");
  Address a;
  a.kind = Address::Kind::Unix;
  a.path = std::string(dir) + "/nbd.sock";
  return a;
}

void remove_private_socket(const Address& a) {
  ::unlink(a.path.c_str());
  ::rmdir(a.path.substr(0, a.path.rfind('/')).c_str());
}

int run_server(nbd::Server& server, const std::string& export_name, const std::string& run_cmd,
               const std::function<void()>& on_stop) {
  const Address& first = server.addresses().front();
  const std::string uri = nbd_uri(first, export_name);
  if (run_cmd.empty()) {
    for (const Address& a : server.addresses()) std::printf("%s\n", nbd_uri(a, export_name).c_str());
    std::fflush(stdout);
  }

  // Signals are blocked in every thread; this one waits for them (a signalfd) and asks for
  // a stop, or for `done` at the end of this function, so that it never outlives the
  // server (a signal during the command's own shutdown finds the thread gone, and the
  // signal pending, harmless: it stays blocked).
  const sigset_t set = stop_signals();
  UniqueFd sigfd(::signalfd(-1, &set, SFD_CLOEXEC));
  UniqueFd done(::eventfd(0, EFD_CLOEXEC));
  if (!sigfd.valid() || !done.valid()) {
    print_error(Error::from_errno(errno, "signalfd").message);
    return kExitFailure;
  }
  const auto stop = [&server, &on_stop] {
    server.request_stop();
    if (on_stop) on_stop();
  };
  std::thread signal_thread([&] {
    pollfd fds[2] = {{sigfd.get(), POLLIN, 0}, {done.get(), POLLIN, 0}};
    while (::poll(fds, 2, -1) < 0 && errno == EINTR) {
    }
    signalfd_siginfo si{};
    if (fds[0].revents & POLLIN && ::read(sigfd.get(), &si, sizeof si) == sizeof si) {
      LOG_INFO("signal {}: stopping", si.ssi_signo);
      stop();
    }
  });
  const auto join_signal_thread = [&] {
    const uint64_t one = 1;
    (void)!::write(done.get(), &one, sizeof one);
    signal_thread.join();
  };

  int exit_status = kExitOk;
  std::thread captive;
  if (!run_cmd.empty()) {
    auto pid = spawn_captive(run_cmd, first, uri, export_name);
    if (!pid) {
      join_signal_thread();
      print_error(pid.error().message);
      return kExitFailure;
    }
    captive = std::thread([&stop, &exit_status, p = *pid] {
      int status = 0;
      while (::waitpid(p, &status, 0) < 0 && errno == EINTR) {
      }
      exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      stop();
    });
  }
  auto r = server.run();
  if (captive.joinable()) captive.join();
  join_signal_thread();
  if (!r) {
    print_error(r.error().message);
    return kExitFailure;
  }
  return exit_status;
}

}  // namespace imgstream::cli
