#include "migrate/migration_control.h"

#include <gtest/gtest.h>

#include "base/env_memory.h"
#include "io/control.h"
#include "migrate/dirty_tracking_device.h"
#include "migrate/testing.h"
#include "nbd/testing.h"

namespace imgstream::migrate {
namespace {

using nlohmann::json;
constexpr uint64_t kSize = 1u << 20;

struct Served {
  MemEnv env;
  nbd::testing::MemoryDevice disk{kSize};
  std::unique_ptr<DirtyTracker> tracker = [&] {
    auto t = DirtyTracker::open(env, "/t.track", kSize);
    EXPECT_TRUE(t);
    return std::move(*t);
  }();
  DirtyTrackingDevice tracked{disk, *tracker};
  MirrorDevice mirror{tracked, *tracker};
  HoldDevice hold{mirror};
  Migration m{"/img", "/t.track", *tracker, mirror, hold};

  json cmd(const std::string& line) { return migration_command(line, m); }
  bool failed(const std::string& line) { return cmd(line).contains("error"); }
};

TEST(MigrationControl, BadLinesAreErrorsAndChangeNothing) {
  Served s;
  std::vector<std::byte> b(4096, std::byte{1});
  for (uint64_t off : {0u, 8192u, 65536u})
    ASSERT_TRUE(s.tracked.write(off, b, Durability::Buffered));
  ASSERT_EQ(s.tracker->dirty_count(), 3u);
  for (const char* bad : {"", "frob", "take", "take x 5", "take 0 -1", "take 0 5 1 2", "take 0 1e3",
                          "hold 5s", "hold 600001", "drain abc", "begin", "begin later", "info now",
                          "confirm 1", "active", "switch", "take 0 99999999999999999999"})
    EXPECT_TRUE(s.failed(bad)) << bad;
  EXPECT_EQ(s.tracker->dirty_count(), 3u);
  EXPECT_EQ(s.tracker->pending_count(), 0u);
  EXPECT_FALSE(s.hold.held());
  // A switch needs the disk held, and is refused before it connects anywhere.
  int opened = 0;
  s.m.open_target = [&](const std::string&, unsigned,
                        std::chrono::milliseconds) -> Result<std::unique_ptr<NbdTarget>> {
    ++opened;
    return Error::io("no target here");
  };
  EXPECT_TRUE(s.failed("switch nbd://x"));
  EXPECT_EQ(opened, 0);
  EXPECT_TRUE(s.failed("active nbd://x 65"));
  EXPECT_EQ(opened, 0);
  EXPECT_TRUE(s.failed("active nbd://x 3"));
  EXPECT_EQ(opened, 1);
}

TEST(MigrationControl, TakeGivesRunsAndInfoSaysWhereTheDiskIs) {
  Served s;
  std::vector<std::byte> b(8192, std::byte{1});
  ASSERT_TRUE(s.tracked.write(4096, b, Durability::Buffered));
  ASSERT_TRUE(s.tracked.write(65536, b, Durability::Buffered));
  const json r = s.cmd("take 0 100");
  auto runs = get_u64_pairs(r, "runs");
  ASSERT_TRUE(runs) << r;
  ASSERT_EQ(runs->size(), 2u);
  EXPECT_EQ((*runs)[0], (std::pair<uint64_t, uint64_t>{1, 2}));
  EXPECT_EQ((*runs)[1], (std::pair<uint64_t, uint64_t>{16, 2}));
  EXPECT_EQ(u64_or(s.cmd("info"), "pending", 0), 4u);
  EXPECT_FALSE(s.failed("confirm"));
  const json i = s.cmd("info");
  EXPECT_EQ(u64_or(i, "dirty", 9), 0u);
  EXPECT_FALSE(bool_or(i, "switched", true));
  EXPECT_EQ(string_or(i, "switched_to", "?"), "");
}

TEST(MigrationControl, AfterASwitchNothingMoreIsMigrated) {
  Served s;
  testing::MemoryTarget target(kSize);
  ASSERT_FALSE(s.failed("hold 5000"));
  const json sw = s.cmd("switch " + target.uri() + " 2");
  ASSERT_FALSE(sw.contains("error")) << sw;
  ASSERT_FALSE(s.failed("resume"));
  const json i = s.cmd("info");
  EXPECT_TRUE(bool_or(i, "switched", false));
  EXPECT_EQ(string_or(i, "switched_to", ""), target.uri());
  for (const char* again : {"begin fresh", "take 0 10", "active nbd://x"}) {
    const std::string e = string_or(s.cmd(again), "error", "");
    EXPECT_NE(e.find("was switched to"), std::string::npos) << again << ": " << e;
  }
  // The machine's writes go to the target now.
  std::vector<std::byte> b(4096, std::byte{7});
  ASSERT_TRUE(s.hold.write(0, b, Durability::Fua));
  EXPECT_EQ(target.contents()[0], std::byte{7});
}

}  // namespace
}  // namespace imgstream::migrate
