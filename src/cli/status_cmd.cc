// imgstream status DIR: where a stream stands, read from the running streamer or, when
// none runs, from the store itself. imgstream ctl DIR: pause, resume, rate.
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <thread>

#include "base/env.h"
#include "base/units.h"
#include "cli/cli.h"
#include "stream/streamer.h"

namespace imgstream::cli {

namespace {

Result<nlohmann::json> current_status(const std::string& dir) {
  // A live reply has a state (its "error" field, if any, is the stream's failure reason).
  auto live = stream::control_request(dir, "status");
  if (live && live->contains("state")) return live;
  return stream::stored_status(*Env::posix(), dir);
}

uint64_t u64(const nlohmann::json& j, const char* k) { return j.value(k, uint64_t{0}); }

std::string human_line(const nlohmann::json& j, double rate_bps) {
  const uint64_t total = u64(j, "regions_total"), present = u64(j, "regions_present");
  const double pct = total ? 100.0 * double(present) / double(total) : 100.0;
  std::string line = fmt::format("{:>9} {:5.1f}%  {}/{} regions  demand {}  background {}",
                                 j.value("state", "?"), pct, present, total,
                                 format_size(u64(j, "bytes_fetched_demand")),
                                 format_size(u64(j, "bytes_fetched_background")));
  if (u64(j, "bytes_prefetched") > 0)
    line += fmt::format("  prefetch {} ({:.0f}% read)", format_size(u64(j, "bytes_prefetched")),
                        100.0 * j.value("prefetch_precision", 0.0));
  if (rate_bps > 0) {
    const double left = double(total - present) * double(u64(j, "region_size"));
    line += fmt::format("  {:.1f} MB/s  ETA {:.0f} s", rate_bps / 1e6, left / rate_bps);
  }
  if (j.contains("error")) line += "  error: " + j["error"].get<std::string>();
  return line;
}

// Reads: how many were served locally, and what the others cost in waiting.
std::string reads_line(const nlohmann::json& j) {
  const uint64_t total = u64(j, "reads_total"), waited = u64(j, "reads_waited");
  std::string line = fmt::format("reads: {} total, {:.1f}% local, {} waited on the source",
                                 total, 100.0 * j.value("hit_ratio", 1.0), waited);
  if (waited > 0) {
    const double s = j.value("wait_seconds", 0.0);
    line += fmt::format(" ({:.3f} s in all, {:.1f} ms each)", s, 1e3 * s / double(waited));
  }
  if (u64(j, "bytes_prefetched") > 0)
    line += fmt::format("; prefetched {}, {:.1f}% of it read since",
                        format_size(u64(j, "bytes_prefetched")),
                        100.0 * j.value("prefetch_precision", 0.0));
  return line;
}

int run_status(const std::string& dir, bool json, bool watch, double interval_s) {
  auto j = current_status(dir);
  if (!j) {
    print_error("status " + dir + ": " + j.error().message);
    return kExitFailure;
  }
  if (!watch) {
    if (json) {
      std::printf("%s\n", j->dump().c_str());
    } else {
      std::printf("%s\n%s\nsource: %s\nstore: %s (%s)\n", human_line(*j, 0).c_str(),
                  reads_line(*j).c_str(), j->value("source", "").c_str(), dir.c_str(),
                  j->value("daemon_running", false) ? "streamer running" : "no streamer running");
    }
    return kExitOk;
  }
  // --watch: a live line until the stream ends (detached or error) or Ctrl-C.
  const bool tty = ::isatty(STDOUT_FILENO);
  auto fetched = [](const nlohmann::json& s) {
    return u64(s, "bytes_fetched_demand") + u64(s, "bytes_fetched_background") +
           u64(s, "bytes_prefetched");
  };
  auto last = std::chrono::steady_clock::now();
  uint64_t last_bytes = fetched(*j);
  for (;;) {
    std::this_thread::sleep_for(std::chrono::duration<double>(interval_s));
    auto now_j = current_status(dir);
    if (!now_j) {
      print_error("status " + dir + ": " + now_j.error().message);
      return kExitFailure;
    }
    const auto now = std::chrono::steady_clock::now();
    const double dt = std::chrono::duration<double>(now - last).count();
    const uint64_t bytes = fetched(*now_j);
    const double rate = dt > 0 ? double(bytes - std::min(bytes, last_bytes)) / dt : 0;
    last = now;
    last_bytes = bytes;
    std::string line = json ? now_j->dump() : human_line(*now_j, rate);
    std::printf(tty && !json ? "\r%s\033[K" : "%s\n", line.c_str());
    std::fflush(stdout);
    const std::string state = now_j->value("state", "");
    if (state == "detached" || state == "complete" || state == "error" ||
        !now_j->value("daemon_running", false)) {
      if (tty && !json) std::printf("\n");
      return state == "error" ? kExitFailure : kExitOk;
    }
  }
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
      "status", "Show how far a stream is: state, regions present, bytes fetched on demand,\n"
                "in the background and by a profile's prefetch; reads served locally (hit\n"
                "ratio), reads that waited on the source and for how long, and the share of\n"
                "prefetched bytes read since (precision). Works whether or not the streamer\n"
                "runs (then as of the last commit).");
  cmd->add_option("DIR", a->dir, "Store directory")->required();
  cmd->add_flag("--json", a->json, "One JSON object (with --watch: one per line)");
  cmd->add_flag("--watch", a->watch,
                "A live progress line (percent, MB/s, ETA, demand vs background) until the "
                "stream is detached or fails");
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
    const std::string command = a->action == "rate" ? "rate " + a->rate : a->action;
    auto r = stream::control_request(a->dir, command);
    if (!r) {
      print_error("ctl " + a->dir + ": no streamer running on this store (" + r.error().message + ")");
      return kExitFailure;
    }
    if (r->contains("error")) {
      print_error("ctl " + a->dir + ": " + (*r)["error"].get<std::string>());
      return kExitFailure;
    }
    return kExitOk;
  };
}

}  // namespace imgstream::cli
