// imgstream track show FILE: which regions a tracking file names as changed
// (docs/track-format.md), read without changing the file: the regions of the extents in
// its activity log count as changed, as a recovery would count them. Works while its
// server runs (then: its last durable state).
#include <cstdio>
#include <nlohmann/json.hpp>

#include "base/limits.h"
#include "base/log.h"
#include "base/units.h"
#include "cli/cli.h"
#include "io/control.h"
#include "migrate/dirty_tracker.h"

namespace imgstream::cli {

namespace {

inline constexpr size_t kShowRunsMax = limits::kTrackShowRunsMax;

int run_show(const std::string& path, bool json) {
  // Read only: a server may have the file open, and `show` must not recover it under it.
  auto snap = migrate::DirtyTracker::read_snapshot(*Env::posix(), path);
  if (!snap) {
    print_error("track show " + path + ": " + snap.error().message);
    return kExitFailure;
  }
  const migrate::TrackHeader& h = snap->header;
  const auto runs = snap->dirty_runs();
  const uint64_t dirty = snap->dirty_count();
  if (snap->in_use)
    LOG_WARN(
        "{} is in use by a running server: showing its last durable state (the {} extents "
        "of its activity log count as changed)",
        path, snap->al_extents);
  if (json) {
    nlohmann::json j{{"image_size", h.image_size},
                     {"region_size", h.region_size},
                     {"regions", h.regions()},
                     {"dirty_regions", dirty},
                     {"dirty_bytes", dirty * h.region_size},
                     {"runs", runs},
                     {"in_use", snap->in_use},
                     {"log_extents", snap->al_extents}};
    std::printf("%s\n", dump_json(j).c_str());
    return kExitOk;
  }
  std::printf("%s: %llu of %llu regions of %s changed (%s)\n", path.c_str(),
              static_cast<unsigned long long>(dirty), static_cast<unsigned long long>(h.regions()),
              format_size(h.region_size).c_str(), format_size(dirty * h.region_size).c_str());
  for (size_t i = 0; i < runs.size() && i < kShowRunsMax; ++i)
    std::printf("  %llu +%llu\n", static_cast<unsigned long long>(runs[i].first),
                static_cast<unsigned long long>(runs[i].second));
  if (runs.size() > kShowRunsMax) std::printf("  ...\n");
  return kExitOk;
}

}  // namespace

Runner add_track(CLI::App& app) {
  struct Args {
    std::string path;
    bool json = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd = app.add_subcommand(
      "track", "Tracking files (serve --track): which regions of a disk changed.");
  cmd->require_subcommand(1);
  CLI::App* show = cmd->add_subcommand(
      "show",
      "List the regions a tracking file names as changed, without changing the file\n"
      "(the extents in its activity log count as changed, as a restarting server would\n"
      "count them). Works while its server runs: then its last durable state.");
  show->add_option("FILE", a->path, "Tracking file")->required();
  show->add_flag("--json", a->json, "One JSON object; runs as [first region, count]");
  return [a] { return run_show(a->path, a->json); };
}

}  // namespace imgstream::cli
