#include "base/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/stop.h"
#include "base/unique_fd.h"

extern char** environ;

namespace imgstream {

namespace {

constexpr int kPollMs = 100;

Result<pid_t> spawn(const std::vector<std::string>& argv, int out_fd) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
  posix_spawn_file_actions_adddup2(&fa, out_fd, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none;
  sigemptyset(&none);
  posix_spawnattr_setsigmask(&attr, &none);  // the CLI blocks its stop signals
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK);
  pid_t pid = -1;
  const int rc = ::posix_spawnp(&pid, args[0], &fa, &attr, args.data(), environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&fa);
  if (rc == ENOENT) return Error{ENOENT, argv[0] + " is not installed (not found in PATH)"};
  if (rc != 0) return Error::from_errno(rc, "cannot run " + argv[0]);
  return pid;
}

ProgramResult reap(pid_t pid, std::string output) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  ProgramResult r;
  r.output = std::move(output);
  if (WIFEXITED(status)) r.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) r.signal = WTERMSIG(status);
  return r;
}

}  // namespace

Result<ProgramResult> run_program(const std::vector<std::string>& argv,
                                  std::chrono::milliseconds timeout) {
  if (argv.empty()) return Error{EINVAL, "no program to run"};
  int p[2];
  if (::pipe2(p, O_CLOEXEC) != 0) return Error::from_errno(errno, "pipe");
  UniqueFd rd(p[0]), wr(p[1]);
  const pid_t pid = TRY(spawn(argv, wr.get()));
  wr.reset();
  std::string out;
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  char buf[4096];
  for (;;) {
    pollfd fds[2] = {{rd.get(), POLLIN, 0}, {stop_fd(), POLLIN, 0}};
    const int n = ::poll(fds, 2, kPollMs);
    const bool late = std::chrono::steady_clock::now() > deadline;
    if (stop_requested() || late) {
      ::kill(pid, SIGKILL);
      reap(pid, {});
      if (late) return Error{ETIMEDOUT, argv[0] + " did not finish in time"};
      return Error{ECANCELED, "stopped while " + argv[0] + " ran"};
    }
    if (n <= 0) continue;
    const ssize_t got = ::read(rd.get(), buf, sizeof buf);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) break;  // the child closed its end: it exited (or closed stdout)
    if (out.size() < kProgramOutputMax)
      out.append(buf, std::min<size_t>(size_t(got), kProgramOutputMax - out.size()));
  }
  return reap(pid, std::move(out));
}

}  // namespace imgstream
