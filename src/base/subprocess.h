// Runs another program (e2fsck, e2image) and collects what it printed: posix_spawnp,
// its stdout and stderr on one pipe, no shell. The child gets the parent's environment
// and no stop signals blocked; a stop request (Ctrl-C) kills it and returns ECANCELED
// within a poll interval.
//
// Thread safety: run_program may be called from any thread; it shares nothing.
#pragma once

#include <chrono>
#include <string>
#include <vector>

#include "base/limits.h"
#include "base/result.h"

namespace imgstream {

// What a program printed is kept up to this many bytes (the rest is read and dropped).
inline constexpr size_t kProgramOutputMax = limits::kProgramOutputMax;

struct ProgramResult {
  int exit_code = -1;  // -1 when killed by a signal
  int signal = 0;
  std::string output;  // stdout and stderr, interleaved, at most kProgramOutputMax
};

// ENOENT when the program is not installed (naming it); ETIMEDOUT after `timeout`.
Result<ProgramResult> run_program(const std::vector<std::string>& argv,
                                  std::chrono::milliseconds timeout);

}  // namespace imgstream
