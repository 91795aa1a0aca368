#include "base/env_fault.h"

#include <algorithm>
#include <limits>
#include <mutex>
#include <optional>

namespace imgstream {

namespace {

const char* op_name(FaultOp op) {
  switch (op) {
    case FaultOp::Open:
      return "open";
    case FaultOp::Read:
      return "read";
    case FaultOp::Write:
      return "write";
    case FaultOp::Sync:
      return "fdatasync";
    case FaultOp::Size:
      return "stat";
    case FaultOp::Truncate:
      return "truncate";
    case FaultOp::PunchHole:
      return "punch";
    case FaultOp::ZeroRange:
      return "zero";
    case FaultOp::Seek:
      return "lseek";
    case FaultOp::Exists:
      return "stat";
    case FaultOp::Rename:
      return "rename";
    case FaultOp::Remove:
      return "remove";
    case FaultOp::Mkdir:
      return "mkdir";
    case FaultOp::SyncDir:
      return "fsync directory";
    case FaultOp::ListDir:
      return "open directory";
  }
  return "?";
}

// The I/O points of crash simulation. Open is one only with OpenMode::CreateOrOpen.
constexpr bool is_mutating(FaultOp op) {
  return (FaultOp::Write | FaultOp::Sync | FaultOp::Truncate | FaultOp::PunchHole |
          FaultOp::ZeroRange | FaultOp::Rename | FaultOp::Remove | FaultOp::Mkdir |
          FaultOp::SyncDir)
      .contains(op);
}

bool path_matches(const FaultRule& r, const std::string& path) {
  if (r.path.empty()) return true;
  if (r.match == PathMatch::Exact) return path == r.path;
  return path.find(r.path) != std::string::npos;
}

// For calls that are not reads or writes: no limit on the bytes moved.
constexpr size_t kNoLimit = std::numeric_limits<size_t>::max();

const std::string kNoPath;

}  // namespace

struct FaultEnv::State {
  struct Rule {
    FaultRule rule;
    uint64_t matched = 0;  // calls whose op and path matched
    uint64_t fired = 0;
  };

  // The call about to be made. `path2` is rename's target; empty otherwise.
  struct Call {
    FaultOp op;
    bool mutating;
    const std::string& path;
    const std::string& path2;
  };

  mutable std::mutex mu;
  std::vector<Rule> rules;
  uint64_t io_points = 0;
  uint64_t crash_at = 0;  // 0: never
  bool crashed = false;
  // Bumped by restart(): Files of an older epoch belong to a dead process.
  uint64_t epoch = 0;

  // Decides a call: an error, or the most bytes it may move. `file_epoch` is the epoch
  // of the File making the call; none for Env calls.
  Result<size_t> admit(const Call& c, std::optional<uint64_t> file_epoch = std::nullopt) {
    // Built only on failure: most calls pass.
    auto what = [&c] {
      std::string w = std::string(op_name(c.op)) + " " + c.path;
      if (!c.path2.empty()) w += " to " + c.path2;
      return w;
    };
    std::lock_guard lock(mu);
    if (file_epoch && *file_epoch != epoch)
      return Error::io(what() + ": file was opened before a restart");
    if (crashed) return Error::io(what() + ": simulated power loss");
    if (c.mutating) {
      ++io_points;
      if (crash_at != 0 && io_points >= crash_at) {
        crashed = true;
        return Error::io(what() + ": simulated power loss at I/O point " +
                         std::to_string(io_points));
      }
    }
    Rule* firing = nullptr;
    for (Rule& r : rules) {
      if (!r.rule.ops.contains(c.op)) continue;
      if (!path_matches(r.rule, c.path) && (c.path2.empty() || !path_matches(r.rule, c.path2)))
        continue;
      ++r.matched;
      // Written so that from_call + times cannot overflow with kForever.
      bool in_window = r.matched >= r.rule.from_call && r.matched - r.rule.from_call < r.rule.times;
      if (in_window && firing == nullptr) firing = &r;
    }
    if (firing == nullptr) return kNoLimit;
    ++firing->fired;
    if (firing->rule.action == FaultAction::Short) return firing->rule.short_bytes;
    return Error::from_errno(firing->rule.error, what() + " (injected)");
  }

  Result<size_t> admit_env(FaultOp op, const std::string& path,
                           const std::string& path2 = kNoPath) {
    return admit({op, is_mutating(op), path, path2});
  }

  uint64_t current_epoch() const {
    std::lock_guard lock(mu);
    return epoch;
  }
};

class FaultEnv::FaultFile final : public File {
 public:
  FaultFile(std::shared_ptr<State> state, std::unique_ptr<File> inner, std::string path,
            uint64_t epoch)
      : state_(std::move(state)), inner_(std::move(inner)), path_(std::move(path)), epoch_(epoch) {}

  Result<size_t> read_at(uint64_t offset, std::span<std::byte> buf) override {
    size_t limit = TRY(admit(FaultOp::Read));
    return inner_->read_at(offset, buf.first(std::min(limit, buf.size())));
  }

  Result<size_t> read_at_nowait(uint64_t offset, std::span<std::byte> buf) override {
    size_t limit = TRY(admit(FaultOp::Read));
    // A short nowait read would look like the end of the file: decline instead, and the
    // caller's blocking read_at gets the short read.
    if (limit < buf.size()) return Error::would_block();
    return inner_->read_at_nowait(offset, buf);
  }

  Result<size_t> write_at(uint64_t offset, std::span<const std::byte> buf) override {
    size_t limit = TRY(admit(FaultOp::Write));
    return inner_->write_at(offset, buf.first(std::min(limit, buf.size())));
  }

  Result<void> sync() override {
    TRY(admit(FaultOp::Sync));
    return inner_->sync();
  }

  Result<uint64_t> size() override {
    TRY(admit(FaultOp::Size));
    return inner_->size();
  }

  Result<void> truncate(uint64_t size) override {
    TRY(admit(FaultOp::Truncate));
    return inner_->truncate(size);
  }

  Result<void> punch_hole(uint64_t offset, uint64_t len) override {
    TRY(admit(FaultOp::PunchHole));
    return inner_->punch_hole(offset, len);
  }

  Result<void> zero_range(uint64_t offset, uint64_t len) override {
    TRY(admit(FaultOp::ZeroRange));
    return inner_->zero_range(offset, len);
  }

  Result<uint64_t> seek_data(uint64_t offset) override {
    TRY(admit(FaultOp::Seek));
    return inner_->seek_data(offset);
  }

  Result<uint64_t> seek_hole(uint64_t offset) override {
    TRY(admit(FaultOp::Seek));
    return inner_->seek_hole(offset);
  }

  // fd() stays -1 (the default): a caller with the descriptor would bypass the faults.
  const std::string& path() const override { return path_; }

 private:
  Result<size_t> admit(FaultOp op) {
    return state_->admit({op, is_mutating(op), path_, kNoPath}, epoch_);
  }

  const std::shared_ptr<State> state_;
  const std::unique_ptr<File> inner_;
  const std::string path_;
  const uint64_t epoch_;
};

FaultEnv::FaultEnv(Env& base) : base_(base), state_(std::make_shared<State>()) {}
FaultEnv::~FaultEnv() = default;

FaultEnv::RuleId FaultEnv::add_rule(FaultRule rule) {
  IMG_CHECK(rule.from_call >= 1);
  IMG_CHECK_MSG(rule.action != FaultAction::Short ||
                    (rule.ops.subset_of(FaultOp::Read | FaultOp::Write) && rule.short_bytes >= 1),
                "only reads and writes can be short, by at least one byte");
  std::lock_guard lock(state_->mu);
  state_->rules.push_back({std::move(rule)});
  return state_->rules.size() - 1;
}

void FaultEnv::clear_rules() {
  std::lock_guard lock(state_->mu);
  state_->rules.clear();
}

uint64_t FaultEnv::fired(RuleId id) const {
  std::lock_guard lock(state_->mu);
  IMG_CHECK(id < state_->rules.size());
  return state_->rules[id].fired;
}

uint64_t FaultEnv::io_points() const {
  std::lock_guard lock(state_->mu);
  return state_->io_points;
}

void FaultEnv::set_crash_at(uint64_t k) {
  std::lock_guard lock(state_->mu);
  state_->crash_at = k;
}

bool FaultEnv::crashed() const {
  std::lock_guard lock(state_->mu);
  return state_->crashed;
}

void FaultEnv::restart() {
  std::lock_guard lock(state_->mu);
  state_->crashed = false;
  state_->crash_at = 0;
  state_->io_points = 0;
  ++state_->epoch;
}

Result<std::unique_ptr<File>> FaultEnv::open(const std::string& path, OpenMode mode) {
  TRY(state_->admit({FaultOp::Open, mode == OpenMode::CreateOrOpen, path, kNoPath}));
  auto inner = TRY(base_.open(path, mode));
  uint64_t epoch = state_->current_epoch();
  return std::unique_ptr<File>(new FaultFile(state_, std::move(inner), path, epoch));
}

Result<bool> FaultEnv::exists(const std::string& path) {
  TRY(state_->admit_env(FaultOp::Exists, path));
  return base_.exists(path);
}

Result<void> FaultEnv::rename(const std::string& from, const std::string& to) {
  TRY(state_->admit_env(FaultOp::Rename, from, to));
  return base_.rename(from, to);
}

Result<void> FaultEnv::remove(const std::string& path) {
  TRY(state_->admit_env(FaultOp::Remove, path));
  return base_.remove(path);
}

Result<void> FaultEnv::mkdir(const std::string& path) {
  TRY(state_->admit_env(FaultOp::Mkdir, path));
  return base_.mkdir(path);
}

Result<void> FaultEnv::sync_dir(const std::string& path) {
  TRY(state_->admit_env(FaultOp::SyncDir, path));
  return base_.sync_dir(path);
}

Result<std::vector<std::string>> FaultEnv::list_dir(const std::string& path) {
  TRY(state_->admit_env(FaultOp::ListDir, path));
  return base_.list_dir(path);
}

}  // namespace imgstream
