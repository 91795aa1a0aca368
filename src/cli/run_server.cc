#include "cli/run_server.h"

#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "base/log.h"
#include "base/stop.h"
#include "base/unique_fd.h"
#include "cli/cli.h"
#include "cli/stop_signals.h"

extern char** environ;

namespace imgstream::cli {

namespace {

// Our environment with the export's coordinates set, for the command only: setenv() in
// this process would race with the getenv() of threads already running (libnbd, curl).
std::vector<std::string> captive_environment(const Address& a, const std::string& uri,
                                             const std::string& export_name) {
  std::vector<std::pair<std::string, std::string>> set = {{"uri", uri},
                                                          {"exportname", export_name}};
  if (a.kind == Address::Kind::Unix) {
    set.emplace_back("unixsocket", a.path);
  } else {
    set.emplace_back("host", a.host);
    set.emplace_back("port", std::to_string(a.port));
  }
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string_view v(*e);
    const bool replaced = std::any_of(set.begin(), set.end(), [&](const auto& kv) {
      return v.size() > kv.first.size() && v.starts_with(kv.first) && v[kv.first.size()] == '=';
    });
    if (!replaced) env.emplace_back(v);
  }
  for (const auto& [name, value] : set) env.push_back(name + "=" + value);
  return env;
}

// Starts `sh -c cmd` with the export's coordinates in its environment and the default
// signal mask. Returns its pid.
Result<pid_t> spawn_captive(const std::string& cmd, const Address& a, const std::string& uri,
                            const std::string& export_name) {
  const std::vector<std::string> env = captive_environment(a, uri, export_name);
  std::vector<char*> envp;
  for (const std::string& e : env) envp.push_back(const_cast<char*>(e.c_str()));
  envp.push_back(nullptr);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  const char* argv[] = {"sh", "-c", cmd.c_str(), nullptr};
  pid_t pid = 0;
  int rc = ::posix_spawn(&pid, "/bin/sh", nullptr, &attr, const_cast<char**>(argv), envp.data());
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return Error::from_errno(rc, "run command '" + cmd + "'");
  return pid;
}

}  // namespace

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
  set_graceful_stop();
  const Address& first = server.addresses().front();
  const std::string uri = nbd_uri(first, export_name);
  if (run_cmd.empty()) {
    for (const Address& a : server.addresses()) std::printf("%s\n", nbd_uri(a, export_name).c_str());
    std::fflush(stdout);
  }
  const auto stop = [&server, &on_stop] {
    server.request_stop();
    if (on_stop) on_stop();
  };
  // A stop signal (cli/stop_signals.h) stops the server; so does the captive command's end.
  std::once_flag stopped;
  StopCallback on_signal([&] { std::call_once(stopped, stop); });

  int exit_status = kExitOk;
  std::thread captive;
  if (!run_cmd.empty()) {
    auto pid = spawn_captive(run_cmd, first, uri, export_name);
    if (!pid) {
      print_error(pid.error().message);
      return kExitFailure;
    }
    captive = std::thread([&stop, &stopped, &exit_status, p = *pid] {
      int status = 0;
      while (::waitpid(p, &status, 0) < 0 && errno == EINTR) {
      }
      exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      std::call_once(stopped, stop);
    });
  }
  auto r = server.run();
  if (captive.joinable()) captive.join();
  if (!r) {
    print_error(r.error().message);
    return kExitFailure;
  }
  return exit_status;
}

}  // namespace imgstream::cli
