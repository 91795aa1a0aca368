#include "patch/fstab.h"

#include <cctype>

#include "base/limits.h"

namespace imgstream::patch {

namespace {

constexpr size_t kFieldMax = limits::kFstabFieldBytesMax;

std::string unescape(std::string_view f) {
  const auto octal = [&](size_t k) { return f[k] >= '0' && f[k] <= '7'; };
  std::string out;
  for (size_t i = 0; i < f.size(); ++i) {
    if (f[i] == '\\' && i + 3 < f.size() && octal(i + 1) && octal(i + 2) && octal(i + 3)) {
      out += char(((f[i + 1] - '0') << 6) | ((f[i + 2] - '0') << 3) | (f[i + 3] - '0'));
      i += 3;
      continue;
    }
    out += f[i];
  }
  return out;
}

std::vector<std::string_view> fields_of(std::string_view line) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < line.size() && out.size() < 6) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    size_t j = i;
    while (j < line.size() && line[j] != ' ' && line[j] != '\t') ++j;
    if (j > i) out.push_back(line.substr(i, j - i));
    i = j;
  }
  return out;
}

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

// The partition number at the end of a device path: /dev/vda2 -> 2, /dev/nvme0n1p3 -> 3;
// 0 when it names a whole disk or something else.
unsigned trailing_partition(std::string_view path) {
  size_t d = path.size();
  while (d > 0 && std::isdigit(static_cast<unsigned char>(path[d - 1]))) --d;
  if (d == path.size() || path.size() - d > 3 || d == 0) return 0;
  const std::string_view disk = path.substr(0, d);
  const bool letter_disk = std::isalpha(static_cast<unsigned char>(disk.back())) &&
                           (disk.starts_with("/dev/sd") || disk.starts_with("/dev/vd") ||
                            disk.starts_with("/dev/hd") || disk.starts_with("/dev/xvd"));
  const bool p_disk = disk.size() > 1 && disk.back() == 'p' &&
                      std::isdigit(static_cast<unsigned char>(disk[disk.size() - 2]));
  if (!letter_disk && !p_disk) return 0;
  unsigned n = 0;
  for (char c : path.substr(d)) n = n * 10 + unsigned(c - '0');
  return n;
}

}  // namespace

std::vector<FstabEntry> parse_fstab(std::string_view text) {
  std::vector<FstabEntry> out;
  size_t lines = 0;
  while (!text.empty() && lines++ < kFstabLinesMax) {
    const size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text = nl == std::string_view::npos ? std::string_view{} : text.substr(nl + 1);
    const size_t hash = line.find('#');
    if (hash != std::string_view::npos) line = line.substr(0, hash);
    auto f = fields_of(line);
    if (f.size() < 3 || f[0].size() > kFieldMax || f[1].size() > kFieldMax) continue;
    out.push_back(FstabEntry{unescape(f[0]), unescape(f[1]), std::string(f[2])});
  }
  return out;
}

DeviceRef parse_device_ref(std::string_view spec) {
  DeviceRef r;
  auto tagged = [&](std::string_view tag, DeviceRef::Kind k, bool fold) {
    if (!spec.starts_with(tag)) return false;
    std::string v(spec.substr(tag.size()));
    if (v.size() >= 2 && (v.front() == '"' || v.front() == '\'') && v.back() == v.front())
      v = v.substr(1, v.size() - 2);
    r.kind = k;
    r.value = fold ? lower(std::move(v)) : std::move(v);
    return true;
  };
  if (tagged("UUID=", DeviceRef::Kind::Uuid, true)) return r;
  if (tagged("LABEL=", DeviceRef::Kind::Label, false)) return r;
  if (tagged("PARTUUID=", DeviceRef::Kind::PartUuid, true)) return r;
  if (spec.starts_with("/dev/disk/by-uuid/")) {
    r.kind = DeviceRef::Kind::Uuid;
    r.value = lower(std::string(spec.substr(18)));
    return r;
  }
  if (spec.starts_with("/dev/disk/by-label/")) {
    r.kind = DeviceRef::Kind::Label;
    r.value = unescape(spec.substr(19));
    return r;
  }
  if (const unsigned n = trailing_partition(spec)) {
    r.kind = DeviceRef::Kind::Partition;
    r.partition = n;
  }
  return r;
}

}  // namespace imgstream::patch
