// imgstream profile merge TRACE... -o PROFILE: builds a boot profile from read traces.
// imgstream profile show PROFILE: what a profile holds and how stable the boots were.
#include <fmt/format.h>

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "base/env.h"
#include "base/limits.h"
#include "base/output_check.h"
#include "base/units.h"
#include "cli/cli.h"
#include "profile/profile.h"

namespace imgstream::cli {

namespace {

constexpr size_t kShowRunsMax = limits::kProfileShowRunsMax;

// A directory is a store: its first boot is recorded in DIR/boot.trace.
std::string trace_path(const std::string& arg) {
  std::error_code ec;
  return std::filesystem::is_directory(arg, ec) ? arg + "/boot.trace" : arg;
}

int run_merge(const std::vector<std::string>& args, const std::string& out, double min_frequency,
              const std::string& region_size, bool force) {
  profile::MergeOptions o{.min_frequency = min_frequency};
  if (!region_size.empty()) {
    const uint64_t rs = parse_size(region_size).value();  // checked by size_validator()
    if (rs < profile::kProfileRegionSizeMin || rs > profile::kProfileRegionSizeMax ||
        (rs & (rs - 1)) != 0) {
      print_error("--region-size must be a power of two from 4K to 1G");
      return kExitUsage;
    }
    o.region_size = uint32_t(rs);
  }
  std::vector<std::string> paths;
  for (const std::string& a : args) paths.push_back(trace_path(a));
  // Before any work: the output is none of the traces, and a profile if it exists.
  if (auto r = check_output(out, paths, profile::kProfileOutput,
                            force ? Overwrite::Force : Overwrite::SameKind);
      !r) {
    print_error("profile merge: " + r.error().message);
    return kExitUsage;
  }
  std::vector<profile::Trace> traces;
  for (const std::string& path : paths) {
    auto t = profile::read_trace(*Env::posix(), path);
    if (!t) {
      print_error("profile merge: " + t.error().message);
      return kExitFailure;
    }
    traces.push_back(std::move(*t));
  }
  auto p = profile::merge(traces, o);
  if (!p) {
    // Errors name traces by position ("trace 2"): add the list of files.
    std::string which;
    for (size_t i = 0; i < paths.size(); ++i)
      which += fmt::format("{}{} = {}", i ? ", " : "", i + 1, paths[i]);
    print_error("profile merge: " + p.error().message + " (traces: " + which + ")");
    return kExitFailure;
  }
  auto w = profile::write_profile(*Env::posix(), out, *p);
  if (!w) {
    print_error("profile merge: " + w.error().message);
    return kExitFailure;
  }
  std::fprintf(stderr, "%s: %zu regions (%s) in %zu runs from %u traces\n", out.c_str(),
               p->regions.size(), format_size(p->boot_set_bytes()).c_str(), p->runs.size(),
               p->traces);
  return kExitOk;
}

struct Stability {
  double in_every_trace = 0;  // fraction of kept regions read by every trace
  double mean_frequency = 0;
};

Stability stability(const profile::Profile& p) {
  Stability s;
  if (p.regions.empty()) return s;
  size_t every = 0;
  double sum = 0;
  for (const auto& r : p.regions) {
    every += r.frequency >= 1.0;
    sum += r.frequency;
  }
  s.in_every_trace = double(every) / double(p.regions.size());
  s.mean_frequency = sum / double(p.regions.size());
  return s;
}

void show_json(const profile::Profile& p) {
  const Stability s = stability(p);
  nlohmann::json runs = nlohmann::json::array();
  for (const auto& r : p.runs)
    runs.push_back({{"first_region", r.first_region}, {"count", r.count}});
  nlohmann::json j = {{"image_size", p.image_size},
                      {"region_size", p.region_size},
                      {"traces", p.traces},
                      {"regions", p.regions.size()},
                      {"boot_set_bytes", p.boot_set_bytes()},
                      {"runs", runs},
                      {"in_every_trace", s.in_every_trace},
                      {"mean_frequency", s.mean_frequency}};
  std::printf("%s\n", j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace).c_str());
}

void show_human(const profile::Profile& p) {
  const Stability s = stability(p);
  const uint64_t boot = p.boot_set_bytes();
  std::printf("traces merged: %u\nregion size: %s\nimage size: %s\n", p.traces,
              format_size(p.region_size).c_str(), format_size(p.image_size).c_str());
  std::printf("boot set: %s (%llu bytes, %.2f%% of the image) in %zu regions\n",
              format_size(boot).c_str(), static_cast<unsigned long long>(boot),
              100.0 * double(boot) / double(p.image_size), p.regions.size());
  std::printf("stability: %.1f%% of kept regions read in every trace, mean frequency %.3f\n",
              100.0 * s.in_every_trace, s.mean_frequency);
  std::printf("runs: %zu (in fetch order: first region + count)\n", p.runs.size());
  for (size_t i = 0; i < p.runs.size() && i < kShowRunsMax; ++i)
    std::printf("  %llu +%llu\n", static_cast<unsigned long long>(p.runs[i].first_region),
                static_cast<unsigned long long>(p.runs[i].count));
  if (p.runs.size() > kShowRunsMax) std::printf("  ...\n");
}

int run_show(const std::string& path, bool json) {
  auto p = profile::read_profile(*Env::posix(), path);
  if (!p) {
    print_error("profile show: " + p.error().message);
    return kExitFailure;
  }
  if (json)
    show_json(*p);
  else
    show_human(*p);
  return kExitOk;
}

}  // namespace

Runner add_profile(CLI::App& app) {
  struct Args {
    std::vector<std::string> traces;
    std::string out, region_size, show_path;
    double min_frequency = 0.25;
    bool json = false;
    bool force = false;
  };
  auto a = std::make_shared<Args>();
  CLI::App* cmd =
      app.add_subcommand("profile",
                         "Boot profiles: which regions a machine reads while it boots, and when,\n"
                         "merged from read traces (--trace); a stream fetches them first.");
  cmd->require_subcommand(1);
  CLI::App* merge = cmd->add_subcommand(
      "merge",
      "Merge read traces into a boot profile. A TRACE that is a directory means\n"
      "DIR/boot.trace (a store records its first boot there).");
  merge->add_option("TRACE", a->traces, "Trace files or store directories")->required();
  merge->add_option("-o,--output", a->out, "Profile file to write")->required();
  merge
      ->add_option("--min-frequency", a->min_frequency,
                   "Keep regions read by at least this fraction of the traces")
      ->check(CLI::Range(0.0, 1.0))
      ->capture_default_str();
  merge
      ->add_option("--region-size", a->region_size,
                   "Region size of the profile (default: the traces', or 1M for serve traces)")
      ->check(size_validator());
  merge->add_flag("--force", a->force,
                  "Replace an existing output file that is not a profile (never a trace)");
  CLI::App* show = cmd->add_subcommand("show", "Show what a boot profile holds.");
  show->add_option("PROFILE", a->show_path, "Profile file")->required();
  show->add_flag("--json", a->json, "One JSON object");
  return [a, merge, show]() -> int {
    if (merge->parsed())
      return run_merge(a->traces, a->out, a->min_frequency, a->region_size, a->force);
    if (show->parsed()) return run_show(a->show_path, a->json);
    return kExitUsage;
  };
}

}  // namespace imgstream::cli
