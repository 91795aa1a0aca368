// Boot profiles (docs/profile-format.md): which regions of an image a machine reads while
// it boots, and in which order, merged from several read traces (trace.h). A streamer
// fetches a profile's regions first, in its order, so the next boot finds them local.
//
// merge() is pure; read_profile()/write_profile() go through an Env. Nothing here keeps
// state: every function may be called from any thread.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "base/env.h"
#include "base/limits.h"
#include "base/result.h"
#include "profile/trace.h"

namespace imgstream::profile {

inline constexpr char kProfileMagic[8] = {'I', 'M', 'G', 'P', 'R', 'O', 'F', 'L'};
// What `profile merge -o` writes, for check_output: an existing profile may be replaced.
inline constexpr OutputKind kProfileOutput{"profile",
                                           std::string_view(kProfileMagic, sizeof kProfileMagic)};
inline constexpr uint32_t kProfileVersion = 1;
inline constexpr size_t kProfileHeaderBytes = 64;
inline constexpr size_t kProfileRecordBytes = 32;
inline constexpr size_t kProfileTrailerBytes = 4;
// A profile keeps at most this many regions (16M: a 64 GiB boot set at the smallest,
// 4 KiB, regions); the file is then 512 MiB.
inline constexpr uint64_t kProfileRegionsMax = limits::kProfileRegionsMax;
inline constexpr uint64_t kProfileFileBytesMax =
    kProfileHeaderBytes + kProfileRegionsMax * kProfileRecordBytes + kProfileTrailerBytes;
// merge() takes at most this many traces.
inline constexpr size_t kProfileTracesMax = limits::kProfileTracesMax;
// Region size used for traces that have none (`serve` traces) and no --region-size.
inline constexpr uint32_t kProfileDefaultRegionSize = 1u << 20;
inline constexpr uint32_t kProfileRegionSizeMin = limits::kProfileRegionSizeMin;
inline constexpr uint32_t kProfileRegionSizeMax = limits::kProfileRegionSizeMax;

struct ProfileRegion {
  uint64_t region = 0;   // index at region_size
  double frequency = 0;  // fraction of traces that read it (0..1]
  double mean_first_read_ms =
      0;                 // mean over the traces that read it, of the time of its first read
  double mean_rank = 0;  // mean position in first-read order (0 = first region read)
  bool operator==(const ProfileRegion&) const = default;
};

struct ProfileRun {  // contiguous, in fetch order
  uint64_t first_region = 0;
  uint64_t count = 0;
  bool operator==(const ProfileRun&) const = default;
};

struct Profile {
  uint64_t image_size = 0;
  uint32_t region_size = 0;
  uint32_t traces = 0;                 // how many traces were merged
  std::vector<ProfileRegion> regions;  // kept regions, ordered by when first needed
  std::vector<ProfileRun> runs;     // the same regions grouped into contiguous runs, in fetch order
  uint64_t boot_set_bytes() const;  // bytes of the kept regions (last region may be short)
  bool operator==(const Profile&) const = default;
};

struct MergeOptions {
  double min_frequency = 0.25;  // regions read by fewer than this fraction of traces are dropped
  // 0: the traces' region size, or kProfileDefaultRegionSize if they have none (serve traces).
  uint32_t region_size = 0;
};

// Merges traces of one image. All traces must have the same image size, and those with a
// region size the same one (unless o.region_size is given). A read covering several
// regions touches each. Errors name traces by their 1-based position in `traces`.
Result<Profile> merge(std::span<const Trace> traces, const MergeOptions& o);

// Groups ordered regions into runs: a run grows while the next region is its end + 1.
std::vector<ProfileRun> make_runs(std::span<const ProfileRegion> regions);

// The file bytes of `p`. Frequencies are stored as a count of traces, round(frequency *
// traces): a profile from merge() or parse_profile() encodes exactly.
std::vector<std::byte> encode_profile(const Profile& p);
// Decodes and validates a whole profile file (runs are derived); `name` names it in errors.
Result<Profile> parse_profile(std::span<const std::byte> bytes, const std::string& name);
Result<Profile> read_profile(Env& env, const std::string& path);
// Writes path.tmp, syncs it, renames it over `path` and syncs the directory. path.tmp is
// removed on failure.
Result<void> write_profile(Env& env, const std::string& path, const Profile& p);

}  // namespace imgstream::profile
