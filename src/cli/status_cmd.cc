// imgstream status DIR: where a stream stands, read from the running streamer or, when
// none runs, from the store itself. imgstream ctl DIR: pause, resume, rate.
#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <thread>

#include "base/env.h"
#include "base/limits.h"
#include "base/units.h"
#include "cli/cli.h"
#include "cli/progress.h"
#include "control/stream_messages.h"
#include "io/control.h"
#include "stream/streamer.h"

namespace imgstream::cli {

namespace {

// After this many ticks without an answer from a streamer that answered before (busy, or
// stopped by SIGSTOP), --watch gives up.
constexpr unsigned kWatchSilentTicksMax = limits::kWatchSilentTicksMax;

struct Status {
  control::StreamStatus s;
  bool live = false;  // from the running streamer (else read from the store)
};

bool nobody_listens(const Error& e) {
  return e.code == ECONNREFUSED || e.code == ENOENT;
}

// The running streamer's status, or the store's when none runs (or what answers is no
// streamer: its reply is no status). A streamer that exists but does not answer in
// time is an error (EAGAIN / ETIMEDOUT), not "none runs".
Result<Status> current_status(const std::string& dir) {
  auto live = control::request_status(dir);
  if (live) return Status{std::move(*live), true};
  if (!nobody_listens(live.error()) && live.error().code != EBADMSG)
    return Error{ETIMEDOUT, "the streamer does not answer (" + live.error().message + ")"};
  return Status{TRY(stream::stored_status(*Env::posix(), dir)), false};
}

// The progress line, in fields that give way to the terminal's width (the least useful
// first: the region counts, the prefetch, then demand and background).
std::vector<LineField> progress_fields(const control::StreamStatus& s) {
  std::vector<LineField> f;
  f.push_back({fmt::format("{:>9}", s.state), 0});
  f.push_back({fmt::format("{:5.1f}%", s.percent), 0});
  f.push_back({fmt::format("{}/{} regions", s.regions_present, s.regions_total), 6});
  f.push_back({"demand " + format_size(s.bytes_fetched_demand), 4});
  f.push_back({"background " + format_size(s.bytes_fetched_background), 4});
  if (s.bytes_prefetched > 0)
    f.push_back({fmt::format("prefetch {} ({:.0f}% read)", format_size(s.bytes_prefetched),
                             100.0 * s.prefetch_precision.value_or(0.0)),
                 5});
  if (s.rate_bytes_per_s > 0) f.push_back({fmt::format("{:.1f} MB/s", s.rate_bytes_per_s / 1e6), 1});
  if (s.eta_s && *s.eta_s > 0) f.push_back({"ETA " + format_eta(*s.eta_s), 1});
  if (s.error) f.push_back({"error: " + *s.error, 3});
  if (s.retry_in_s) f.push_back({fmt::format("retry in {:.0f} s", std::ceil(*s.retry_in_s)), 2});
  return f;
}

// Reads: how many were served locally, and what the others cost in waiting.
std::string reads_line(const control::StreamStatus& s) {
  std::string line = fmt::format("reads: {} total, {:.1f}% local, {} waited on the source",
                                 s.reads_total, 100.0 * s.hit_ratio.value_or(1.0), s.reads_waited);
  if (s.reads_waited > 0)
    line += fmt::format(" ({:.3f} s in all, {:.1f} ms each)", s.wait_seconds,
                        1e3 * s.wait_seconds / double(s.reads_waited));
  if (s.reads_failed > 0) line += fmt::format(", {} failed", s.reads_failed);
  if (s.bytes_prefetched > 0)
    line += fmt::format("; prefetched {}, {:.1f}% of it read since", format_size(s.bytes_prefetched),
                        100.0 * s.prefetch_precision.value_or(0.0));
  return line;
}

void print_once(const Status& st, bool json) {
  if (json) {
    std::printf("%s\n", dump_json(st.s.to_json()).c_str());
    return;
  }
  std::printf("%s\n%s\nsource: %s\nstore: %s (%s)\n", fit_line(progress_fields(st.s), 0).c_str(),
              reads_line(st.s).c_str(), st.s.source.c_str(), st.s.store.c_str(),
              st.live ? "streamer running" : "no streamer running");
  if (st.s.hint) std::printf("hint: %s\n", st.s.hint->c_str());
}

// --watch: a live line until the stream is detached, or the streamer goes (exit 1).
int watch(const std::string& dir, bool json, double interval_s, Status s) {
  const bool tty = !json && ::isatty(STDOUT_FILENO);
  bool was_live = s.live;
  unsigned silent = 0;
  for (;;) {
    if (silent == 0) {  // a fresh status: redrawn (a terminal) or one more line
      const size_t width = tty ? terminal_columns(STDOUT_FILENO) : 0;
      const std::string line =
          json ? dump_json(s.s.to_json()) : fit_line(progress_fields(s.s), width);
      std::printf(tty ? "\r%s\033[K" : "%s\n", line.c_str());
      std::fflush(stdout);
    }
    const std::string& state = s.s.state;
    if (state == "detached" || state == "complete") {
      if (tty) std::printf("\n");
      return kExitOk;
    }
    if (!s.live) {
      if (tty) std::printf("\n");
      const std::string& stored = s.s.stored_state;
      print_error("status " + dir + ": " +
                  (was_live ? "streamer gone (it stopped or was killed) before the stream was "
                              "complete; state '" +
                                  stored + "' as of its last commit"
                            : "no streamer runs on this store; state '" + stored +
                                  "' as of its last commit"));
      return kExitFailure;
    }
    std::this_thread::sleep_for(std::chrono::duration<double>(interval_s));
    auto next = current_status(dir);
    if (!next && next.error().code == ETIMEDOUT && ++silent < kWatchSilentTicksMax) continue;
    silent = 0;
    if (!next) {
      if (tty) std::printf("\n");
      print_error("status " + dir + ": " + next.error().message);
      return kExitFailure;
    }
    was_live = was_live || next->live;
    s = std::move(*next);
  }
}

int run_status(const std::string& dir, bool json, bool watching, double interval_s) {
  auto s = current_status(dir);
  if (!s) {
    print_error("status " + dir + ": " + s.error().message);
    return kExitFailure;
  }
  if (!watching) {
    print_once(*s, json);
    return kExitOk;
  }
  return watch(dir, json, interval_s, std::move(*s));
}

}  // namespace

Runner add_status(CLI::App& app) {
  struct Args {
    std::string dir;
    bool json = false, watch = false;
    double interval = 1.0;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "status",
      "Show how far a stream is: state, regions present, bytes fetched on demand,\n"
      "in the background and by a profile's prefetch; reads served locally (hit\n"
      "ratio), reads that waited on the source and for how long, and the share of\n"
      "prefetched bytes read since (precision), rate and ETA. Works whether or not the\n"
      "streamer runs (then as of the last commit; --json has the same fields, README.md).");
  cmd->add_option("DIR", a->dir, "Store directory")->required();
  cmd->add_flag("--json", a->json, "One JSON object (with --watch: one per line)");
  cmd->add_flag("--watch", a->watch,
                "A live progress line (percent, MB/s, ETA, demand vs background), fitted to "
                "the terminal, until the stream is detached (exit 0); exit 1 when the "
                "streamer goes before (\"streamer gone\") or none runs");
  cmd->add_option("--interval", a->interval, "Seconds between --watch updates")
      ->check(CLI::Range(0.1, 3600.0))
      ->capture_default_str();
  return [a] { return run_status(a->dir, a->json, a->watch, a->interval); };
}

Runner add_ctl(CLI::App& app) {
  struct Args {
    std::string dir;
    std::string action;
    std::string rate;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "ctl", "Control a running stream: pause or resume background hydration, or limit its "
             "rate (bytes/s with K/M/G suffixes; 0 = no limit).");
  cmd->add_option("DIR", a->dir, "Store directory")->required();
  cmd->add_option("ACTION", a->action, "pause | resume | rate")
      ->required()
      ->check(CLI::IsMember({"pause", "resume", "rate"}));
  cmd->add_option("RATE", a->rate, "With 'rate': the new limit")->check(size_validator());
  return [a]() -> int {
    if (a->action == "rate" && a->rate.empty()) {
      print_error("ctl rate needs a RATE, e.g. 'imgstream ctl DIR rate 50M'");
      return kExitUsage;
    }
    if (a->action != "rate" && !a->rate.empty()) {
      print_error("ctl " + a->action + " takes no argument (got '" + a->rate +
                  "'); a rate is set with 'imgstream ctl DIR rate RATE'");
      return kExitUsage;
    }
    control::StreamRequest request = control::PauseRequest{};
    if (a->action == "resume") request = control::ResumeRequest{};
    if (a->action == "rate") request = control::RateRequest{parse_size(a->rate).value()};
    auto r = control::request(a->dir, request);
    if (!r && (r.error().code == EREMOTEIO || r.error().code == EBADMSG)) {  // it answered
      print_error("ctl " + a->dir + ": " + r.error().message);
      return kExitFailure;
    }
    if (!r) {
      print_error("ctl " + a->dir + ": no streamer running on this store (" + r.error().message + ")");
      return kExitFailure;
    }
    return kExitOk;
  };
}

}  // namespace imgstream::cli
