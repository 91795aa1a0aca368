#include "base/units.h"

#include <fmt/format.h>

#include <limits>

namespace imgstream {

Result<uint64_t> parse_size(std::string_view text) {
  const std::string input(text);
  if (text.empty()) return Error::invalid("empty size");
  uint64_t value = 0;
  size_t i = 0;
  for (; i < text.size() && text[i] >= '0' && text[i] <= '9'; ++i) {
    uint64_t digit = static_cast<uint64_t>(text[i] - '0');
    if (value > (std::numeric_limits<uint64_t>::max() - digit) / 10)
      return Error::invalid("size '" + input + "' is too large");
    value = value * 10 + digit;
  }
  if (i == 0) return Error::invalid("size '" + input + "' does not start with a number");
  std::string_view suffix = text.substr(i);
  unsigned shift = 0;
  if (!suffix.empty()) {
    switch (suffix[0]) {
      case 'k': case 'K': shift = 10; break;
      case 'm': case 'M': shift = 20; break;
      case 'g': case 'G': shift = 30; break;
      case 't': case 'T': shift = 40; break;
      case 'b': case 'B': shift = 0; break;
      default: return Error::invalid("size '" + input + "' has an unknown suffix");
    }
    std::string_view rest = suffix.substr(1);
    if (shift != 0 && !rest.empty() && rest != "B" && rest != "iB" && rest != "b")
      return Error::invalid("size '" + input + "' has an unknown suffix");
    if (shift == 0 && !rest.empty())
      return Error::invalid("size '" + input + "' has an unknown suffix");
  }
  if (shift && value > (std::numeric_limits<uint64_t>::max() >> shift))
    return Error::invalid("size '" + input + "' is too large");
  return value << shift;
}

std::string format_size(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 5) {
    v /= 1024.0;
    ++u;
  }
  if (u == 0) return fmt::format("{} B", bytes);
  return fmt::format("{:.1f} {}", v, kUnits[u]);
}

}  // namespace imgstream
