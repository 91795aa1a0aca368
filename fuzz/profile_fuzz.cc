// Fuzzes parse_profile (docs/profile-format.md), the decoder of boot profiles: a profile
// may be copied between machines and steers what a streamer fetches first. Invariants:
// no crash or out-of-bounds read; what decodes is valid (regions inside the image, unique,
// in first-read order, frequencies in (0, 1], runs derived from the regions) and the file
// is canonical: encoding it again gives back exactly the input; any shorter prefix of a
// valid file is an error.
#include "fuzz_check.h"
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <vector>

#include "profile/profile.h"

namespace {

using namespace imgstream::profile;

void check_valid(const Profile& p) {
  FUZZ_CHECK(p.image_size > 0 && p.traces > 0);
  const uint64_t regions = (p.image_size - 1) / p.region_size + 1;
  FUZZ_CHECK(p.regions.size() <= regions);
  std::set<uint64_t> seen;
  for (size_t i = 0; i < p.regions.size(); ++i) {
    const ProfileRegion& r = p.regions[i];
    FUZZ_CHECK(r.region < regions && seen.insert(r.region).second);
    FUZZ_CHECK(r.frequency > 0 && r.frequency <= 1);
    FUZZ_CHECK(std::isfinite(r.mean_first_read_ms) && r.mean_first_read_ms >= 0);
    FUZZ_CHECK(std::isfinite(r.mean_rank) && r.mean_rank >= 0);
    if (i > 0) FUZZ_CHECK(p.regions[i - 1].mean_first_read_ms <= r.mean_first_read_ms);
  }
  FUZZ_CHECK(p.runs == make_runs(p.regions));
  uint64_t in_runs = 0;
  for (const ProfileRun& run : p.runs) in_runs += run.count;
  FUZZ_CHECK(in_runs == p.regions.size());
  FUZZ_CHECK(p.boot_set_bytes() <= p.image_size);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::span<const std::byte> in(reinterpret_cast<const std::byte*>(data), size);
  auto p = parse_profile(in, "fuzz");
  if (!p) {
    FUZZ_CHECK(!p.error().message.empty());
    return 0;
  }
  check_valid(*p);
  const std::vector<std::byte> again = encode_profile(*p);
  FUZZ_CHECK(again.size() == size && std::equal(again.begin(), again.end(), in.begin()));
  auto twice = parse_profile(again, "again");
  FUZZ_CHECK(twice && *twice == *p);
  FUZZ_CHECK(!parse_profile(in.first(size - 1), "cut"));
  return 0;
}
