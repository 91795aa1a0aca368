// Tests that judge imgstream with the real tools (mke2fs, sfdisk, debugfs, blkid) run them
// through a shell. Not bounded as base/subprocess.h is: a test reads whole files back.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

namespace imgstream::testing {

// Runs CMD with its output discarded; its exit status as std::system gives it.
inline int sh(const std::string& cmd) {
  // The tests that call it run on one thread.
  return std::system((cmd + " >/dev/null 2>&1").c_str());  // NOLINT(concurrency-mt-unsafe)
}

// What CMD printed on stdout.
inline std::string sh_out(const std::string& cmd) {
  std::string out;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (!p) return out;
  char buf[4096];
  size_t n = 0;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  ::pclose(p);
  return out;
}

}  // namespace imgstream::testing
