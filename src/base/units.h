// Sizes and rates as users write them: "4096", "64K", "1M", "2G", "1T" (powers of 1024;
// a trailing "B"/"iB" is accepted: "64KiB", "1MB").
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "base/result.h"

namespace imgstream {

Result<uint64_t> parse_size(std::string_view text);
// "1.5 GiB", "512.0 KiB", "17 B": for progress lines and messages.
std::string format_size(uint64_t bytes);

}  // namespace imgstream
