// imgstream migrate: copy a disk in use (live, with `serve --track --control`) or not in
// use (an image file) to any NBD server (migrate/migrator.h).
#include <unistd.h>

#include <cstdio>
#include <mutex>

#include "base/rate_meter.h"
#include "base/units.h"
#include "cli/cli.h"
#include "cli/progress.h"
#include "io/control.h"
#include "migrate/migrator.h"

namespace imgstream::cli {

namespace {

// Where a migration stands, on stderr: on a terminal one line redrawn in place (round,
// percent, bytes, rate and ETA, fitted to the width), with the events (a round done,
// the cutover) printed above it; otherwise the events and a progress line every
// kLogProgressSeconds.
class MigrateDisplay {
 public:
  static constexpr double kLogProgressSeconds = 5;
  static constexpr double kRedrawSeconds = 0.1;

  MigrateDisplay() : tty_(::isatty(STDERR_FILENO)) {}
  ~MigrateDisplay() { finish(); }

  void finish() {
    std::lock_guard lock(mu_);
    clear();
  }

  void event(const std::string& s) {
    std::lock_guard lock(mu_);
    clear();
    std::fprintf(stderr, "migrate: %s\n", s.c_str());
  }

  void progress(const migrate::MigrateProgress& p) {
    std::lock_guard lock(mu_);
    if (p.round != round_) meter_ = RateMeter();  // a new count
    round_ = p.round;
    const auto now = RateMeter::Clock::now();
    meter_.sample(p.bytes_done, now);
    const double since = std::chrono::duration<double>(now - last_).count();
    if (since < (tty_ ? kRedrawSeconds : kLogProgressSeconds) && p.bytes_done < p.bytes_total)
      return;
    last_ = now;
    std::vector<LineField> f = {{fmt::format("migrate: round {}", p.round), 0}};
    if (p.bytes_total > 0)
      f.push_back(
          {fmt::format("{:5.1f}%", 100.0 * double(p.bytes_done) / double(p.bytes_total)), 0});
    f.push_back({format_size(p.bytes_done) +
                     (p.bytes_total ? " / " + format_size(p.bytes_total) : std::string()),
                 2});
    if (meter_.rate() > 0) f.push_back({fmt::format("{:.1f} MB/s", meter_.rate() / 1e6), 1});
    if (p.bytes_total > 0)
      if (auto eta = meter_.eta_seconds(p.bytes_total - p.bytes_done))
        f.push_back({"ETA " + format_eta(*eta), 1});
    if (tty_) {
      std::fprintf(stderr, "\r%s\033[K", fit_line(f, terminal_columns(STDERR_FILENO)).c_str());
      shown_ = true;
    } else {
      std::fprintf(stderr, "%s\n", fit_line(f, 0).c_str());
    }
  }

 private:
  void clear() {
    if (shown_) std::fprintf(stderr, "\r\033[K");
    shown_ = false;
  }

  const bool tty_;
  std::mutex mu_;
  bool shown_ = false;
  unsigned round_ = 0;
  RateMeter meter_;
  RateMeter::Clock::time_point last_{};
};

struct MigrateArgs {
  std::string image, control, to, converge;
  unsigned rounds = 10, connections = 4;
  unsigned hold_limit_ms = 10'000;
  unsigned connect_timeout_s = 30;
  unsigned stall_limit_s = 60;
  double checkpoint_s = migrate::kCheckpointSecondsDefault;
  bool json = false, active = false;
  std::string finish = "switch";
};

void add_migrate_options(CLI::App& app, MigrateArgs& a) {
  CLI::App* cmd = app.add_subcommand(
      "migrate",
      "Copy a disk to another NBD server (imgstream serve, qemu-nbd, nbdkit ...).\n"
      "Live: `migrate --control PATH --to URI` copies a disk served with\n"
      "`serve --track FILE --control PATH` while the machine keeps using it: the whole disk,\n"
      "then what changed, in rounds, then a short hold of the machine's I/O for the last\n"
      "changes (the pause is reported). Killed at any point, it continues when run again.\n"
      "Offline: `migrate IMAGE --to URI` copies an image not in use (holes are zeroed).");
  cmd->add_option("IMAGE", a.image, "Offline: the image to copy");
  cmd->add_option("--control", a.control, "Live: the control socket of `serve --control`");
  cmd->add_option("--to", a.to, "The target's NBD URI")->required();
  cmd->add_option("--max-rounds", a.rounds, "Rounds of changes before the cutover at most")
      ->check(CLI::Range(0u, 1000u))
      ->capture_default_str();
  cmd->add_option("--converge", a.converge,
                  "Cut over once the changes are at most this many bytes (default: what "
                  "copies in about 100 ms, at least 4M)")
      ->check(size_validator());
  cmd->add_option("--hold-limit", a.hold_limit_ms,
                  "The machine's I/O is never held longer than this (ms): a cutover that "
                  "would take longer fails and can be run again")
      ->check(CLI::Range(100u, 600'000u))
      ->capture_default_str();
  cmd->add_option("--stall-limit", a.stall_limit_s,
                  "Active mode: give up when nothing reached the target for this many seconds "
                  "(the target died or the link is down); run migrate again once it is back")
      ->check(CLI::Range(1u, 3600u))
      ->capture_default_str();
  cmd->add_option("--connect-timeout", a.connect_timeout_s,
                  "Seconds to reach the target and finish the NBD handshake before giving up")
      ->check(CLI::Range(1u, 3600u))
      ->capture_default_str();
  cmd->add_option("--checkpoint", a.checkpoint_s,
                  "Live: during the full copy, make the progress durable (on the target and in "
                  "TRACK.migration, what a migrate run again continues from) every this many "
                  "seconds; each costs a flush on both sides")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  cmd->add_option("--connections", a.connections,
                  "Connections to the target (with --active the server opens at least 2: its "
                  "copier keeps all but one, left to the machine's writes)")
      ->check(CLI::Range(1u, 64u))
      ->capture_default_str();
  cmd->add_option("--finish", a.finish,
                  "After the cutover: 'switch' the served disk to the target (the machine "
                  "goes on there), 'resume' on the source, or keep it 'hold'ing until the "
                  "hold limit passes (to compare source and target at the cutover)")
      ->check(CLI::IsMember({"switch", "resume", "hold"}))
      ->capture_default_str();
  cmd->add_flag("--active", a.active,
                "Live: after the full copy, the server mirrors every write to the target "
                "before acknowledging it and copies the rest itself, so that a machine that "
                "writes faster than the link still converges (its writes slow to the link's pace)");
  cmd->add_flag("--json", a.json, "Print the report as one JSON object");
}

// The options of a command line whose usage was checked.
migrate::MigrateOptions migrate_options(const MigrateArgs& a) {
  migrate::MigrateOptions o;
  o.image = a.image;
  o.control = a.control;
  o.target = a.to;
  o.max_rounds = a.rounds;
  o.checkpoint_seconds = a.checkpoint_s;
  o.active = a.active;
  o.connections = a.connections;
  o.connect_timeout = std::chrono::seconds(a.connect_timeout_s);
  o.stall_limit = std::chrono::seconds(a.stall_limit_s);
  o.hold_limit = std::chrono::milliseconds(a.hold_limit_ms);
  o.finish = a.finish == "resume" ? migrate::MigrateOptions::Finish::Resume
           : a.finish == "hold"   ? migrate::MigrateOptions::Finish::Hold
                                  : migrate::MigrateOptions::Finish::Switch;
  if (!a.converge.empty()) o.converge_bytes = parse_size(a.converge).value();
  return o;
}

void print_report(const MigrateArgs& a, const migrate::MigrateReport& r) {
  if (a.json) {
    std::printf("%s\n", dump_json(r.to_json()).c_str());
    return;
  }
  std::printf("migrated to %s: %zu rounds, %s sent for %s allocated (%.2fx), %.1f s, pause %.1f ms\n",
              a.to.c_str(), r.rounds.size(), format_size(r.bytes_total).c_str(),
              format_size(r.allocated_bytes).c_str(),
              r.allocated_bytes ? double(r.bytes_total) / double(r.allocated_bytes) : 0.0,
              r.seconds, r.pause_ms);
  if (r.active)
    std::printf("active mode: %s mirrored with the machine's writes\n",
                format_size(r.mirrored_bytes).c_str());
}

int run_migrate(const MigrateArgs& a) {
  if (a.image.empty() == a.control.empty()) {
    print_error("migrate needs either IMAGE (offline) or --control PATH (live)");
    return kExitUsage;
  }
  if (a.active && a.control.empty()) {
    print_error("--active needs --control (a live migration)");
    return kExitUsage;
  }
  migrate::MigrateOptions o = migrate_options(a);
  auto display = std::make_shared<MigrateDisplay>();
  o.progress = [display](const std::string& s) { display->event(s); };
  o.on_progress = [display](const migrate::MigrateProgress& p) { display->progress(p); };
  auto r = migrate::migrate(*Env::posix(), o);
  display->finish();  // its line goes before the result or the error is printed
  if (!r) {
    print_error("migrate to " + a.to + ": " + r.error().message);
    return kExitFailure;
  }
  print_report(a, *r);
  return kExitOk;
}

}  // namespace

Runner add_migrate(CLI::App& app) {
  auto a = std::make_shared<MigrateArgs>();
  add_migrate_options(app, *a);
  return [a] { return run_migrate(*a); };
}

}  // namespace imgstream::cli
