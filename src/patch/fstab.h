// /etc/fstab of an image, read to find its other file systems (/boot on a partition of
// its own). Untrusted text (fuzz/fstab_fuzz.cc): lines and fields are bounded, octal
// escapes (\040) decoded as fstab(5) says, anything malformed skipped.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "base/limits.h"

namespace imgstream::patch {

inline constexpr size_t kFstabLinesMax = limits::kFstabLinesMax;

struct FstabEntry {
  std::string spec;  // UUID=..., LABEL=..., PARTUUID=..., /dev/vda2, ...
  std::string dir;   // the mount point
  std::string type;
};

std::vector<FstabEntry> parse_fstab(std::string_view text);

// What a spec names, for matching it against the partitions of the image.
struct DeviceRef {
  enum class Kind { Uuid, Label, PartUuid, Partition, Unknown } kind = Kind::Unknown;
  std::string value;       // Uuid (lower case), Label, PartUuid (lower case)
  unsigned partition = 0;  // Partition: the N of /dev/sdaN, /dev/vdaN, /dev/nvme0n1pN
};
DeviceRef parse_device_ref(std::string_view spec);

}  // namespace imgstream::patch
