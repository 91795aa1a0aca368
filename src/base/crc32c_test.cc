#include "base/crc32c.h"

#include <gtest/gtest.h>

#include <string_view>
#include <vector>

namespace imgstream {
namespace {

std::span<const std::byte> bytes(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

TEST(Crc32c, KnownVectors) {
  // RFC 3720 (iSCSI) check value and test patterns.
  EXPECT_EQ(crc32c(bytes("123456789")), 0xE3069283u);
  std::vector<std::byte> zeros(32, std::byte{0});
  EXPECT_EQ(crc32c(zeros), 0x8A9136AAu);
  std::vector<std::byte> ones(32, std::byte{0xff});
  EXPECT_EQ(crc32c(ones), 0x62A8AB43u);
  EXPECT_EQ(crc32c({}), 0u);
}

TEST(Crc32c, IncrementalEqualsWhole) {
  std::string s = "the quick brown fox jumps over the lazy dog, many times over";
  uint32_t whole = crc32c(bytes(s));
  for (size_t cut = 0; cut <= s.size(); ++cut) {
    uint32_t part = crc32c(bytes(std::string_view(s).substr(0, cut)));
    EXPECT_EQ(crc32c(bytes(std::string_view(s).substr(cut)), part), whole) << cut;
  }
}

}  // namespace
}  // namespace imgstream
