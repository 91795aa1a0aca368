#include "patch/overlay_device.h"

#include <gtest/gtest.h>

#include "nbd/testing.h"

namespace imgstream::patch {
namespace {

using nbd::testing::MemoryDevice;

std::vector<std::byte> filled(size_t n, uint8_t v) { return std::vector<std::byte>(n, std::byte{v}); }

TEST(OverlayDevice, WritesStayInMemoryAndReadBack) {
  MemoryDevice below(64 * 1024 + 100);  // not a whole number of pages
  ASSERT_TRUE(below.write(0, filled(below.size(), 7), Durability::Buffered).has_value());
  OverlayDevice o(below);
  // A write across a page edge, partial on both sides: the rest of each page comes from below.
  ASSERT_TRUE(o.write(4000, filled(200, 9), Durability::Buffered).has_value());
  // The last, short page.
  ASSERT_TRUE(o.write(64 * 1024 + 90, filled(10, 5), Durability::Buffered).has_value());
  std::vector<std::byte> got(o.size());
  ASSERT_TRUE(o.read(0, got).has_value());
  for (size_t i = 0; i < got.size(); ++i) {
    uint8_t want = 7;
    if (i >= 4000 && i < 4200) want = 9;
    if (i >= 64 * 1024 + 90) want = 5;
    ASSERT_EQ(got[i], std::byte{want}) << i;
  }
  std::vector<std::byte> under(below.size());
  ASSERT_TRUE(below.read(0, under).has_value());
  EXPECT_EQ(under, filled(below.size(), 7));  // below untouched
  auto runs = o.dirty_runs();
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].offset, 0u);
  EXPECT_EQ(runs[0].bytes.size(), 8192u);  // two adjacent pages merged
  EXPECT_EQ(runs[1].offset, 64u * 1024);
  EXPECT_EQ(runs[1].bytes.size(), 100u);  // cut at the device's end
  EXPECT_EQ(o.dirty_bytes(), 8292u);
}

TEST(OverlayDevice, DropUnchangedForgetsPagesRewrittenWithTheSameBytes) {
  MemoryDevice below(16 * 4096);
  ASSERT_TRUE(below.write(0, filled(below.size(), 1), Durability::Buffered).has_value());
  OverlayDevice o(below);
  ASSERT_TRUE(o.write(0, filled(3 * 4096, 1), Durability::Buffered).has_value());  // same bytes
  ASSERT_TRUE(o.write(5 * 4096 + 7, filled(1, 2), Durability::Buffered).has_value());
  auto dropped = o.drop_unchanged();
  ASSERT_TRUE(dropped.has_value());
  EXPECT_EQ(*dropped, 3u * 4096);
  auto runs = o.dirty_runs();
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].offset, 5u * 4096);
  std::vector<std::byte> b(1);
  ASSERT_TRUE(o.read(5 * 4096 + 7, b).has_value());
  EXPECT_EQ(b[0], std::byte{2});
}

TEST(OverlayDevice, AReadErrorBelowIsReturned) {
  MemoryDevice below(8 * 4096);
  below.fail_from(4 * 4096);
  OverlayDevice o(below);
  EXPECT_FALSE(o.write(5 * 4096 + 1, filled(1, 2), Durability::Buffered).has_value());
  EXPECT_TRUE(o.write(6 * 4096, filled(4096, 2), Durability::Buffered).has_value());  // whole page: no read
  std::vector<std::byte> b(4096);
  EXPECT_TRUE(o.read(6 * 4096, b).has_value());
  EXPECT_FALSE(o.read(4 * 4096, b).has_value());
}

}  // namespace
}  // namespace imgstream::patch
