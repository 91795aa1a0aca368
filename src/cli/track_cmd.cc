// imgstream track show FILE: which regions a tracking file names as changed
// (docs/track-format.md). Opening it recovers it as a restarting server would.
#include <nlohmann/json.hpp>

#include <cstdio>

#include "base/units.h"
#include "cli/cli.h"
#include "migrate/dirty_tracker.h"

namespace imgstream::cli {

namespace {

inline constexpr size_t kShowRunsMax = 64;

int run_show(const std::string& path, bool json) {
  auto size = [&]() -> Result<uint64_t> {
    auto f = TRY(Env::posix()->open(path, OpenMode::ReadOnly));
    std::vector<std::byte> head(migrate::kTrackHeaderBytes);
    TRY(read_exact_at(*f, 0, head));
    return TRY(migrate::decode_track_header(head)).image_size;
  }();
  if (!size) {
    print_error("track show " + path + ": " + size.error().message);
    return kExitFailure;
  }
  auto t = migrate::DirtyTracker::open(*Env::posix(), path, *size);
  if (!t) {
    print_error("track show: " + t.error().message);
    return kExitFailure;
  }
  const migrate::TrackHeader& h = (*t)->header();
  std::vector<std::pair<uint64_t, uint64_t>> runs;  // first region, count
  for (uint64_t r : (*t)->dirty_regions()) {
    if (!runs.empty() && runs.back().first + runs.back().second == r) ++runs.back().second;
    else runs.emplace_back(r, 1);
  }
  const uint64_t dirty = (*t)->dirty_count();
  if (json) {
    nlohmann::json j{{"image_size", h.image_size}, {"region_size", h.region_size},
                     {"regions", h.regions()},     {"dirty_regions", dirty},
                     {"dirty_bytes", dirty * h.region_size}, {"runs", runs}};
    std::printf("%s\n", j.dump().c_str());
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
      "show", "List the regions a tracking file names as changed (recovering it first, as a\n"
              "restarting server would, if its server stopped without closing it).");
  show->add_option("FILE", a->path, "Tracking file")->required();
  show->add_flag("--json", a->json, "One JSON object; runs as [first region, count]");
  return [a] { return run_show(a->path, a->json); };
}

}  // namespace imgstream::cli
