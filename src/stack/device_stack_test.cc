#include "stack/device_stack.h"

#include <gtest/gtest.h>

#include <vector>

#include "base/env_memory.h"
#include "device/forwarding_device.h"
#include "nbd/testing.h"

namespace imgstream::stack {
namespace {

constexpr uint64_t kSize = 4 << 20;

// A base whose first half is local, as a streaming device with half its regions present.
struct HalfLocal final : ForwardingDevice {
  using ForwardingDevice::ForwardingDevice;
  bool is_local(uint64_t off, uint64_t len) const override { return off + len <= kSize / 2; }
};

TEST(DeviceStack, ABaseAloneIsTheTop) {
  MemEnv env;
  nbd::testing::MemoryDevice dev(kSize);
  StackOptions o;
  o.base = &dev;
  auto s = DeviceStack::build(env, std::move(o));
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_EQ(&(*s)->top(), &dev);
  EXPECT_EQ((*s)->tracker(), nullptr);
  EXPECT_EQ((*s)->mirror(), nullptr);
  EXPECT_TRUE((*s)->close());
  EXPECT_TRUE((*s)->close());  // twice: nothing more to do
}

TEST(DeviceStack, TracingAsksTheBaseWhatIsLocalAndTrackingRecordsWrites) {
  MemEnv env;
  nbd::testing::MemoryDevice mem(kSize);
  StackOptions o;
  o.owned_base = std::make_unique<HalfLocal>(mem);
  o.trace_path = "/t";
  o.trace_header.region_size = 65536;
  o.track_path = "/track";
  auto s = DeviceStack::build(env, std::move(o));
  ASSERT_TRUE(s) << s.error().message;
  BlockDevice& top = (*s)->top();
  EXPECT_EQ(top.size(), kSize);
  std::vector<std::byte> buf(4096);
  ASSERT_TRUE(top.read(0, buf));
  ASSERT_TRUE(top.read(kSize - 4096, buf));
  ASSERT_TRUE(top.write(kSize - 4096, buf, Durability::Fua));
  ASSERT_NE((*s)->tracker(), nullptr);
  EXPECT_EQ((*s)->tracker()->dirty_count(), 1u);
  ASSERT_TRUE((*s)->close());

  auto t = profile::read_trace(env, "/t");
  ASSERT_TRUE(t) << t.error().message;
  EXPECT_EQ(t->header.image_size, kSize);
  ASSERT_EQ(t->records.size(), 2u);  // reads only
  EXPECT_EQ(t->records[0].flags, profile::kRecordLocal);
  EXPECT_EQ(t->records[1].flags, 0u);
}

TEST(DeviceStack, AMigrationSourceHasMirrorAndHoldOnTop) {
  MemEnv env;
  nbd::testing::MemoryDevice dev(kSize);
  StackOptions bad;
  bad.base = &dev;
  bad.migration_source = true;
  EXPECT_FALSE(DeviceStack::build(env, std::move(bad)));  // no tracking file

  StackOptions o;
  o.base = &dev;
  o.track_path = "/track";
  o.migration_source = true;
  auto s = DeviceStack::build(env, std::move(o));
  ASSERT_TRUE(s) << s.error().message;
  ASSERT_NE((*s)->mirror(), nullptr);
  ASSERT_NE((*s)->hold(), nullptr);
  EXPECT_EQ(&(*s)->top(), static_cast<BlockDevice*>((*s)->hold()));
  std::vector<std::byte> buf(4096, std::byte{7});
  ASSERT_TRUE((*s)->top().write(0, buf, Durability::Buffered));
  EXPECT_EQ((*s)->tracker()->dirty_count(), 1u);
  EXPECT_TRUE((*s)->close());
}

TEST(DeviceStack, AFailingLayerIsAnErrorNamingItsFile) {
  MemEnv env;
  nbd::testing::MemoryDevice dev(kSize);
  StackOptions o;
  o.base = &dev;
  o.trace_path = "/no/such/dir/t";
  auto s = DeviceStack::build(env, std::move(o));
  ASSERT_FALSE(s);
  EXPECT_NE(s.error().message.find("/no/such/dir/t"), std::string::npos) << s.error().message;
}

}  // namespace
}  // namespace imgstream::stack
