#include "profile/profile.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <optional>
#include <string_view>
#include <unordered_map>

#include "base/check.h"
#include "base/crc32c.h"
#include "base/endian.h"
#include "base/stop.h"

namespace imgstream::profile {

namespace {

constexpr size_t kHeaderCrcAt = kProfileHeaderBytes - 4;

bool region_size_ok(uint64_t rs) {
  return rs >= kProfileRegionSizeMin && rs <= kProfileRegionSizeMax && std::has_single_bit(rs);
}

uint64_t image_regions(uint64_t image_size, uint32_t region_size) {
  return image_size / region_size + (image_size % region_size != 0);
}

std::string trace_name(size_t i) {
  return "trace " + std::to_string(i + 1);
}

// Per region, summed over the traces that read it.
struct Acc {
  uint32_t traces = 0;
  double sum_first_read_ms = 0;
  double sum_rank = 0;
};

// Adds one trace's first reads to `acc`.
Result<void> add_trace(const Trace& t, size_t index, uint32_t region_size,
                       std::unordered_map<uint64_t, Acc>& acc) {
  std::vector<TraceRecord> rs = t.records;
  std::stable_sort(rs.begin(), rs.end(), [](const TraceRecord& a, const TraceRecord& b) {
    return a.time_ns < b.time_ns;
  });
  std::unordered_map<uint64_t, uint64_t> seen;  // region -> rank
  for (const TraceRecord& r : rs) {
    if (r.length == 0 || r.offset > t.header.image_size ||
        r.length > t.header.image_size - r.offset)
      return Error::invalid(trace_name(index) + ": a read outside the image or empty (offset " +
                            std::to_string(r.offset) + ", length " + std::to_string(r.length) +
                            ")");
    const uint64_t last = (r.offset + r.length - 1) / region_size;
    for (uint64_t g = r.offset / region_size; g <= last; ++g) {
      const uint64_t rank = seen.size();
      if (!seen.emplace(g, rank).second) continue;
      Acc& a = acc[g];
      a.traces += 1;
      a.sum_first_read_ms += double(r.time_ns) / 1e6;
      a.sum_rank += double(rank);
    }
  }
  return ok();
}

Result<uint32_t> pick_region_size(std::span<const Trace> traces, const MergeOptions& o) {
  if (o.region_size != 0) {
    if (!region_size_ok(o.region_size))
      return Error::invalid("region size " + std::to_string(o.region_size) +
                            " is not a power of two from 4 KiB to 1 GiB");
    return o.region_size;
  }
  uint32_t rs = 0;
  size_t from = 0;
  for (size_t i = 0; i < traces.size(); ++i) {
    const uint32_t r = traces[i].header.region_size;
    if (r == 0) continue;
    if (!region_size_ok(r))
      return Error::invalid(trace_name(i) + ": bad region size " + std::to_string(r));
    if (rs != 0 && r != rs)
      return Error::invalid(trace_name(from) + " has region size " + std::to_string(rs) + " but " +
                            trace_name(i) + " has " + std::to_string(r) +
                            "; choose one with a region size option");
    if (rs == 0) from = i;
    rs = r;
  }
  return rs != 0 ? rs : kProfileDefaultRegionSize;
}

Result<void> check_inputs(std::span<const Trace> traces, const MergeOptions& o) {
  if (traces.empty()) return Error::invalid("no traces to merge");
  if (traces.size() > kProfileTracesMax)
    return Error::invalid("too many traces (" + std::to_string(traces.size()) + ", at most " +
                          std::to_string(kProfileTracesMax) + ")");
  if (!(o.min_frequency >= 0 && o.min_frequency <= 1))
    return Error::invalid("minimum frequency must be from 0 to 1");
  const uint64_t size = traces[0].header.image_size;
  if (size == 0) return Error::invalid(trace_name(0) + ": image size is 0");
  for (size_t i = 1; i < traces.size(); ++i)
    if (traces[i].header.image_size != size)
      return Error::invalid(trace_name(i) + " is of an image of " +
                            std::to_string(traces[i].header.image_size) + " bytes but " +
                            trace_name(0) + " of " + std::to_string(size) +
                            " bytes: traces must be of the same image");
  return ok();
}

bool by_first_read(const ProfileRegion& a, const ProfileRegion& b) {
  if (a.mean_first_read_ms != b.mean_first_read_ms)
    return a.mean_first_read_ms < b.mean_first_read_ms;
  return a.region < b.region;
}

Error corrupt(const std::string& name, uint64_t at, std::string_view what) {
  return Error::invalid("profile " + name + ": " + std::string(what) + " at byte " +
                        std::to_string(at));
}

void put_double(std::byte* p, double v) {
  le::put64(p, std::bit_cast<uint64_t>(v));
}
double get_double(const std::byte* p) {
  return std::bit_cast<double>(le::get64(p));
}

uint32_t trace_count(const ProfileRegion& r, uint32_t traces) {
  return uint32_t(std::llround(r.frequency * double(traces)));
}

}  // namespace

uint64_t Profile::boot_set_bytes() const {
  uint64_t bytes = 0;
  for (const ProfileRegion& r : regions) {
    const uint64_t start = r.region * region_size;
    if (start < image_size) bytes += std::min<uint64_t>(region_size, image_size - start);
  }
  return bytes;
}

std::vector<ProfileRun> make_runs(std::span<const ProfileRegion> regions) {
  std::vector<ProfileRun> runs;
  for (const ProfileRegion& r : regions) {
    if (!runs.empty() && runs.back().first_region + runs.back().count == r.region)
      ++runs.back().count;
    else
      runs.push_back(ProfileRun{r.region, 1});
  }
  return runs;
}

Result<Profile> merge(std::span<const Trace> traces, const MergeOptions& o) {
  TRY(check_inputs(traces, o));
  Profile p;
  p.image_size = traces[0].header.image_size;
  p.region_size = TRY(pick_region_size(traces, o));
  p.traces = uint32_t(traces.size());
  std::unordered_map<uint64_t, Acc> acc;
  for (size_t i = 0; i < traces.size(); ++i) TRY(add_trace(traces[i], i, p.region_size, acc));
  for (const auto& [region, a] : acc) {
    const double frequency = double(a.traces) / double(p.traces);
    if (frequency < o.min_frequency) continue;
    p.regions.push_back(
        ProfileRegion{region, frequency, a.sum_first_read_ms / a.traces, a.sum_rank / a.traces});
  }
  if (p.regions.size() > kProfileRegionsMax)
    return Error::invalid("the profile would keep " + std::to_string(p.regions.size()) +
                          " regions, more than " + std::to_string(kProfileRegionsMax) +
                          "; use a larger region size or minimum frequency");
  std::sort(p.regions.begin(), p.regions.end(), by_first_read);
  p.runs = make_runs(p.regions);
  return p;
}

std::vector<std::byte> encode_profile(const Profile& p) {
  const size_t n = p.regions.size();
  std::vector<std::byte> b(kProfileHeaderBytes + n * kProfileRecordBytes + kProfileTrailerBytes);
  std::memcpy(b.data(), kProfileMagic, sizeof kProfileMagic);
  le::put32(b.data() + 8, kProfileVersion);
  le::put32(b.data() + 12, kProfileHeaderBytes);
  le::put64(b.data() + 16, p.image_size);
  le::put32(b.data() + 24, p.region_size);
  le::put32(b.data() + 28, p.traces);
  le::put64(b.data() + 32, n);
  le::put32(b.data() + kHeaderCrcAt, crc32c(std::span(b).first(kHeaderCrcAt)));
  std::byte* q = b.data() + kProfileHeaderBytes;
  for (const ProfileRegion& r : p.regions) {
    le::put64(q, r.region);
    le::put32(q + 8, trace_count(r, p.traces));
    le::put32(q + 12, 0);
    put_double(q + 16, r.mean_first_read_ms);
    put_double(q + 24, r.mean_rank);
    q += kProfileRecordBytes;
  }
  const auto records = std::span(b).subspan(kProfileHeaderBytes, n * kProfileRecordBytes);
  le::put32(q, crc32c(records));
  return b;
}

namespace {

Result<Profile> parse_header(std::span<const std::byte> b, const std::string& name,
                             uint64_t& count) {
  if (b.size() < kProfileHeaderBytes)
    return Error::invalid("profile " + name + ": shorter than its header (" +
                          std::to_string(b.size()) + " bytes)");
  if (std::memcmp(b.data(), kProfileMagic, sizeof kProfileMagic) != 0)
    return Error::invalid("profile " + name + ": not a profile file (bad magic)");
  if (crc32c(b.first(kHeaderCrcAt)) != le::get32(b.data() + kHeaderCrcAt))
    return corrupt(name, 0, "header CRC mismatch");
  const uint32_t version = le::get32(b.data() + 8);
  if (version != kProfileVersion)
    return Error::invalid("profile " + name + ": unsupported version " + std::to_string(version));
  if (le::get32(b.data() + 12) != kProfileHeaderBytes) return corrupt(name, 12, "bad header size");
  Profile p;
  p.image_size = le::get64(b.data() + 16);
  p.region_size = le::get32(b.data() + 24);
  p.traces = le::get32(b.data() + 28);
  count = le::get64(b.data() + 32);
  if (p.image_size == 0) return corrupt(name, 16, "image size is 0");
  if (!region_size_ok(p.region_size)) return corrupt(name, 24, "bad region size");
  if (p.traces == 0 || p.traces > kProfileTracesMax) return corrupt(name, 28, "bad trace count");
  if (count > kProfileRegionsMax || count > image_regions(p.image_size, p.region_size))
    return corrupt(name, 32, "more regions than the image has");
  for (size_t i = 40; i < kHeaderCrcAt; ++i)
    if (b[i] != std::byte{0}) return corrupt(name, i, "reserved header byte not zero");
  return p;
}

Result<ProfileRegion> parse_record(const std::byte* q, const Profile& p, const std::string& name,
                                   uint64_t at) {
  ProfileRegion r;
  r.region = le::get64(q);
  const uint32_t count = le::get32(q + 8);
  r.mean_first_read_ms = get_double(q + 16);
  r.mean_rank = get_double(q + 24);
  const uint64_t regions = image_regions(p.image_size, p.region_size);
  if (r.region >= regions) return corrupt(name, at, "region outside the image");
  if (count == 0 || count > p.traces) return corrupt(name, at + 8, "bad trace count");
  if (le::get32(q + 12) != 0) return corrupt(name, at + 12, "reserved field not zero");
  if (!std::isfinite(r.mean_first_read_ms) || r.mean_first_read_ms < 0)
    return corrupt(name, at + 16, "bad first-read time");
  if (!std::isfinite(r.mean_rank) || r.mean_rank < 0 || r.mean_rank >= double(regions))
    return corrupt(name, at + 24, "bad rank");
  r.frequency = double(count) / double(p.traces);
  return r;
}

}  // namespace

Result<Profile> parse_profile(std::span<const std::byte> bytes, const std::string& name) {
  uint64_t count = 0;
  Profile p = TRY(parse_header(bytes, name, count));
  const uint64_t want = kProfileHeaderBytes + count * kProfileRecordBytes + kProfileTrailerBytes;
  if (bytes.size() < want)
    return Error::invalid("profile " + name + ": truncated (" + std::to_string(bytes.size()) +
                          " bytes, " + std::to_string(want) + " expected)");
  if (bytes.size() > want) return corrupt(name, want, "trailing bytes after the profile");
  const auto records = bytes.subspan(kProfileHeaderBytes, count * kProfileRecordBytes);
  if (crc32c(records) != le::get32(bytes.data() + want - kProfileTrailerBytes))
    return corrupt(name, want - kProfileTrailerBytes, "region records CRC mismatch");
  p.regions.reserve(count);
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t at = kProfileHeaderBytes + i * kProfileRecordBytes;
    ProfileRegion r = TRY(parse_record(bytes.data() + at, p, name, at));
    if (!p.regions.empty() && !by_first_read(p.regions.back(), r))
      return corrupt(name, at, "regions out of order");
    p.regions.push_back(r);
  }
  std::vector<uint64_t> ids;
  ids.reserve(count);
  for (const ProfileRegion& r : p.regions) ids.push_back(r.region);
  std::sort(ids.begin(), ids.end());
  if (std::adjacent_find(ids.begin(), ids.end()) != ids.end())
    return Error::invalid("profile " + name + ": a region is listed twice");
  p.runs = make_runs(p.regions);
  return p;
}

Result<Profile> read_profile(Env& env, const std::string& path) {
  auto f = TRY_CTX(env.open(path, OpenMode::ReadOnly), "profile " + path);
  const uint64_t size = TRY_CTX(f->size(), "profile " + path);
  if (size > kProfileFileBytesMax)
    return Error{EFBIG, "profile " + path + ": " + std::to_string(size) + " bytes is too large"};
  std::vector<std::byte> bytes(size);
  TRY_CTX(read_exact_at(*f, 0, bytes), "profile " + path);
  return parse_profile(bytes, path);
}

Result<void> write_profile(Env& env, const std::string& path, const Profile& p) {
  IMG_CHECK(p.regions.size() <= kProfileRegionsMax);
  const std::vector<std::byte> bytes = encode_profile(p);
  const std::string tmp = path + ".tmp";
  // A real file's temporary is removed on every failure (and on a forced exit).
  std::optional<TempFile> tmp_file;
  if (&env == Env::posix()) tmp_file.emplace(tmp);
  {
    auto f = TRY_CTX(env.open(tmp, OpenMode::CreateOrOpen), "profile " + tmp);
    TRY_CTX(f->truncate(0), "profile " + tmp);
    TRY_CTX(write_all_at(*f, 0, bytes), "profile " + tmp);
    TRY_CTX(f->sync(), "profile " + tmp);
  }
  TRY_CTX(env.rename(tmp, path), "profile " + path);
  if (tmp_file) tmp_file->keep();
  TRY_CTX(env.sync_dir(parent_dir(path)), "profile " + path);
  return ok();
}

}  // namespace imgstream::profile
