// FaultEnv: wraps an Env (typically a MemEnv) and injects faults, so tests can prove that
// every error path is taken and that a crash at any point leaves recoverable state.
//
// Two mechanisms:
//
// 1. Rules. A FaultRule matches calls by operation and by path, counts the calls it
//    matches, and fires on a window of them: it fails the call with an errno, or (for
//    reads and writes) makes it short. Examples:
//      "the 3rd write to a path containing 'x' fails with EIO":
//        env.add_rule({.ops = FaultOp::Write, .path = "x", .from_call = 3});
//      "every sync fails from the 5th on":
//        env.add_rule({.ops = FaultOp::Sync, .from_call = 5, .times = FaultRule::kForever});
//      "reads move at most 3 bytes per call":
//        env.add_rule({.ops = FaultOp::Read, .times = FaultRule::kForever,
//                      .action = FaultAction::Short, .short_bytes = 3});
//    Every rule whose ops and path match a call counts it; the first rule (in the order
//    added) that fires decides what happens. A failed call does not reach the base Env.
//
// 2. Crash points. Every mutating call (write, sync, truncate, punch_hole, zero_range,
//    rename, remove, mkdir, sync_dir, and open with CreateOrOpen) is an I/O point,
//    numbered from 1. set_crash_at(k) makes the k-th I/O point the moment the machine
//    loses power: that call and every call after it (reads too) fail with EIO without
//    reaching the base Env. The test then calls MemEnv::drop_unsynced(), restart(), and
//    recovers. To try every point, run the workload once without a crash to learn
//    io_points(), then once per k in 1..io_points()+1 on a fresh MemEnv; the last k is
//    power lost just after the workload returned, the only one that catches a durable
//    rename of unsynced data (env_test.cc, CrashAt.FindsAMissingSync).
//
// Files opened through a FaultEnv report fd() == -1, so that no caller can bypass the
// faults with a system call on the descriptor.
//
// Thread safety: all methods may be called from any thread; rule counting is atomic per
// call, so "the n-th call" is well defined under concurrency (which call it is, is not).
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "base/env.h"

namespace imgstream {

// The operations a rule can match.
enum class FaultOp : uint32_t {
  Open = 1u << 0,
  Read = 1u << 1,  // read_at and read_at_nowait
  Write = 1u << 2,
  Sync = 1u << 3,
  Size = 1u << 4,
  Truncate = 1u << 5,
  PunchHole = 1u << 6,
  ZeroRange = 1u << 7,
  Seek = 1u << 8,  // seek_data and seek_hole
  Exists = 1u << 9,
  Rename = 1u << 10,
  Remove = 1u << 11,
  Mkdir = 1u << 12,
  SyncDir = 1u << 13,
  ListDir = 1u << 14,  // keep last: FaultOps::all() is every bit up to it
};

// A set of FaultOps: FaultOp::Write | FaultOp::Sync.
class FaultOps {
 public:
  constexpr FaultOps(FaultOp op) : bits_(static_cast<uint32_t>(op)) {}  // NOLINT: implicit
  static constexpr FaultOps all() {
    return FaultOps((static_cast<uint32_t>(FaultOp::ListDir) << 1) - 1);
  }
  constexpr bool contains(FaultOp op) const { return (bits_ & static_cast<uint32_t>(op)) != 0; }
  constexpr bool subset_of(FaultOps o) const { return (bits_ & ~o.bits_) == 0; }
  friend constexpr FaultOps operator|(FaultOps a, FaultOps b) {
    return FaultOps(a.bits_ | b.bits_);
  }

 private:
  constexpr explicit FaultOps(uint32_t bits) : bits_(bits) {}
  uint32_t bits_;
};

constexpr FaultOps operator|(FaultOp a, FaultOp b) {
  return FaultOps(a) | FaultOps(b);
}

enum class PathMatch {
  Substring,  // the rule's path occurs in the call's path
  Exact,      // the call's path is exactly the rule's path (as passed, not normalised)
};

enum class FaultAction {
  Fail,   // the call returns Error{error}
  Short,  // a read or write moves at most short_bytes bytes (the rest is not done)
};

struct FaultRule {
  static constexpr uint64_t kForever = std::numeric_limits<uint64_t>::max();

  FaultOps ops = FaultOps::all();
  // Matched against the path a File was opened as, or the path given to an Env call
  // (rename matches on either of its paths). Empty matches every call.
  std::string path;
  PathMatch match = PathMatch::Substring;
  // Fires on the matching calls number from_call .. from_call + times - 1 (1-based).
  uint64_t from_call = 1;
  uint64_t times = 1;
  FaultAction action = FaultAction::Fail;
  int error = EIO;         // for Fail
  size_t short_bytes = 1;  // for Short; at least 1. Only Read and Write may be short.
};

class FaultEnv final : public Env {
 public:
  // `base` must outlive this FaultEnv and every File opened through it.
  explicit FaultEnv(Env& base);
  ~FaultEnv() override;
  FaultEnv(const FaultEnv&) = delete;
  FaultEnv& operator=(const FaultEnv&) = delete;

  using RuleId = size_t;
  RuleId add_rule(FaultRule rule);
  // Removes every rule (their ids become invalid).
  void clear_rules();
  // How many times the rule has fired (injected its fault).
  uint64_t fired(RuleId id) const;

  // Mutating calls seen since construction or the last restart(), the crashing one
  // included.
  uint64_t io_points() const;
  // The k-th I/O point (1-based, counted from the last restart) crashes; 0: never.
  void set_crash_at(uint64_t k);
  bool crashed() const;
  // A new "process" after a crash: no crash pending, the I/O point count back to 0, and
  // every File opened before fails with EIO from now on. Rules and their counts stay.
  void restart();

  Result<std::unique_ptr<File>> open(const std::string& path, OpenMode mode) override;
  Result<bool> exists(const std::string& path) override;
  Result<void> rename(const std::string& from, const std::string& to) override;
  Result<void> remove(const std::string& path) override;
  Result<void> mkdir(const std::string& path) override;
  Result<void> sync_dir(const std::string& path) override;
  Result<std::vector<std::string>> list_dir(const std::string& path) override;

 private:
  struct State;
  class FaultFile;

  Env& base_;
  // Shared with the Files, which may outlive the FaultEnv.
  std::shared_ptr<State> state_;
};

}  // namespace imgstream
