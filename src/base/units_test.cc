#include "base/units.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <limits>
#include <string>

namespace imgstream {
namespace {

constexpr uint64_t kKiB = uint64_t{1} << 10;
constexpr uint64_t kMiB = uint64_t{1} << 20;
constexpr uint64_t kGiB = uint64_t{1} << 30;
constexpr uint64_t kTiB = uint64_t{1} << 40;
constexpr uint64_t kMax = std::numeric_limits<uint64_t>::max();

uint64_t parsed(const char* text) {
  Result<uint64_t> r = parse_size(text);
  EXPECT_TRUE(r.has_value()) << "'" << text << "': " << r.error().message;
  return r.value_or(0);
}

void expect_invalid(const char* text) {
  Result<uint64_t> r = parse_size(text);
  ASSERT_FALSE(r.has_value()) << "'" << text << "' parsed as " << *r;
  EXPECT_EQ(r.error().code, EINVAL) << text;
  EXPECT_FALSE(r.error().message.empty());
}

TEST(ParseSize, PlainNumbers) {
  EXPECT_EQ(parsed("0"), 0u);
  EXPECT_EQ(parsed("4096"), 4096u);
  EXPECT_EQ(parsed("007"), 7u);
  EXPECT_EQ(parsed("18446744073709551615"), kMax);
}

TEST(ParseSize, BinarySuffixes) {
  EXPECT_EQ(parsed("64K"), 64 * kKiB);
  EXPECT_EQ(parsed("64k"), 64 * kKiB);
  EXPECT_EQ(parsed("1M"), kMiB);
  EXPECT_EQ(parsed("1m"), kMiB);
  EXPECT_EQ(parsed("2G"), 2 * kGiB);
  EXPECT_EQ(parsed("1T"), kTiB);
  EXPECT_EQ(parsed("0T"), 0u);
}

TEST(ParseSize, TrailingBytes) {
  EXPECT_EQ(parsed("64KiB"), 64 * kKiB);
  EXPECT_EQ(parsed("1MiB"), kMiB);
  EXPECT_EQ(parsed("3GiB"), 3 * kGiB);
  // "MB" means MiB here: every suffix is a power of 1024.
  EXPECT_EQ(parsed("1MB"), kMiB);
  EXPECT_EQ(parsed("1KB"), kKiB);
  EXPECT_EQ(parsed("1Mb"), kMiB);
  EXPECT_EQ(parsed("17B"), 17u);
  EXPECT_EQ(parsed("17b"), 17u);
}

TEST(ParseSize, Overflow) {
  expect_invalid("18446744073709551616");  // 2^64
  expect_invalid("99999999999999999999999");
  EXPECT_EQ(parsed("16777215T"), 16777215 * kTiB);
  expect_invalid("16777216T");  // exactly 2^64
  EXPECT_EQ(parsed("17179869183G"), 17179869183 * kGiB);
  expect_invalid("17179869184G");
}

TEST(ParseSize, Garbage) {
  expect_invalid("");
  expect_invalid("K");
  expect_invalid("abc");
  expect_invalid("-1");
  expect_invalid("+1");
  expect_invalid(" 1");
  expect_invalid("1 ");
  expect_invalid("1 K");
  expect_invalid("1.5G");
  expect_invalid("12X");
  expect_invalid("1KiBB");
  expect_invalid("1Ki");
  expect_invalid("1iB");
  expect_invalid("1BB");
  expect_invalid("1K2");
  expect_invalid("0x10");
  expect_invalid("1P");  // the suffixes are K, M, G and T only (units.h)
}

TEST(ParseSize, MessageNamesTheInput) {
  Result<uint64_t> r = parse_size("12X");
  ASSERT_FALSE(r);
  EXPECT_NE(r.error().message.find("12X"), std::string::npos) << r.error().message;
}

TEST(FormatSize, Bytes) {
  EXPECT_EQ(format_size(0), "0 B");
  EXPECT_EQ(format_size(17), "17 B");
  EXPECT_EQ(format_size(1023), "1023 B");
}

TEST(FormatSize, BinaryUnits) {
  EXPECT_EQ(format_size(kKiB), "1.0 KiB");
  EXPECT_EQ(format_size(1536), "1.5 KiB");
  EXPECT_EQ(format_size(kMiB), "1.0 MiB");
  EXPECT_EQ(format_size(3 * kGiB / 2), "1.5 GiB");
  EXPECT_EQ(format_size(2 * kTiB), "2.0 TiB");
  EXPECT_EQ(format_size(kTiB * 1024), "1.0 PiB");
  // PiB is the largest unit.
  EXPECT_EQ(format_size(kMax), "16384.0 PiB");
}

TEST(FormatSize, RoundTripsWholeUnits) {
  for (const char* s : {"1K", "1M", "1G", "1T"}) {
    std::string f = format_size(parsed(s));
    EXPECT_EQ(f.substr(0, 4), "1.0 ") << s << " -> " << f;
  }
}

}  // namespace
}  // namespace imgstream
