#include "profile/profile.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <optional>
#include <string_view>
#include <unordered_map>

#include "base/check.h"
#include "base/codec.h"
#include "base/stop.h"
#include "profile/file_header.h"

namespace imgstream::profile {

namespace {

// docs/profile-format.md; the header's framing is docs/framing.md's. Messages are
// prefixed with "profile NAME: ".
constexpr Frame kHeaderFrame =
    file_header_frame(std::string_view(kProfileMagic, sizeof kProfileMagic), kProfileVersion,
                      "not a profile file (bad magic)");
static_assert(kProfileHeaderBytes == kFileHeaderBytes);

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
  std::vector<std::byte> b =
      new_frame(kHeaderFrame, kProfileHeaderBytes + n * kProfileRecordBytes + kProfileTrailerBytes);
  ByteWriter w(b);
  w.u64_at(16, p.image_size);
  w.u32_at(24, p.region_size);
  w.u32_at(28, p.traces);
  w.u64_at(32, n);
  seal_frame(b, kHeaderFrame);
  w.skip(kProfileHeaderBytes);
  for (const ProfileRegion& r : p.regions) {
    w.u64(r.region);
    w.u32(trace_count(r, p.traces));
    w.u32(0);
    w.f64(r.mean_first_read_ms);
    w.f64(r.mean_rank);
  }
  const auto records = std::span(b).subspan(kProfileHeaderBytes, n * kProfileRecordBytes);
  w.u32(crc32c(records));
  IMG_CHECK(w.pos() == b.size());
  return b;
}

namespace {

Result<Profile> parse_header(std::span<const std::byte> b, const std::string& name,
                             uint64_t& count) {
  ByteReader r = TRY_CTX(open_frame(b, kHeaderFrame), "profile " + name);
  Profile p;
  p.image_size = r.u64_at(16);
  p.region_size = r.u32_at(24);
  p.traces = r.u32_at(28);
  count = r.u64_at(32);
  if (p.image_size == 0) return corrupt(name, 16, "image size is 0");
  if (!region_size_ok(p.region_size)) return corrupt(name, 24, "bad region size");
  if (p.traces == 0 || p.traces > kProfileTracesMax) return corrupt(name, 28, "bad trace count");
  if (count > kProfileRegionsMax || count > image_regions(p.image_size, p.region_size))
    return corrupt(name, 32, "more regions than the image has");
  if (auto at = file_header_nonzero_reserved(r))
    return corrupt(name, *at, "reserved header byte not zero");
  return p;
}

// The record at `at`; the caller checked that the records are all there.
Result<ProfileRegion> parse_record(ByteReader& q, const Profile& p, const std::string& name,
                                   uint64_t at) {
  ProfileRegion r;
  r.region = q.u64();
  const uint32_t count = q.u32();
  const uint32_t reserved = q.u32();
  r.mean_first_read_ms = q.f64();
  r.mean_rank = q.f64();
  const uint64_t regions = image_regions(p.image_size, p.region_size);
  if (r.region >= regions) return corrupt(name, at, "region outside the image");
  if (count == 0 || count > p.traces) return corrupt(name, at + 8, "bad trace count");
  if (reserved != 0) return corrupt(name, at + 12, "reserved field not zero");
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
  ByteReader in(bytes);
  const auto records = in.bytes_at(kProfileHeaderBytes, count * kProfileRecordBytes);
  if (crc32c(records) != in.u32_at(want - kProfileTrailerBytes))
    return corrupt(name, want - kProfileTrailerBytes, "region records CRC mismatch");
  p.regions.reserve(count);
  in.skip(kProfileHeaderBytes);
  for (uint64_t i = 0; i < count; ++i) {
    const uint64_t at = in.pos();
    ProfileRegion r = TRY(parse_record(in, p, name, at));
    if (!p.regions.empty() && !by_first_read(p.regions.back(), r))
      return corrupt(name, at, "regions out of order");
    p.regions.push_back(r);
  }
  IMG_CHECK(in.ok());  // bytes.size() == want
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
