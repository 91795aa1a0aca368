// The parsers of the patch's inputs: the command line's actions and the image's fstab.
#include <gtest/gtest.h>

#include "patch/fstab.h"
#include "patch/patcher.h"

namespace imgstream::patch {
namespace {

using K = Action::Kind;

TEST(ParseAction, AddWithModeAndOwner) {
  auto a = parse_action(K::Add, "./dir with:colon/f.conf:/etc/app/f.conf:0640:1000:100");
  ASSERT_TRUE(a.has_value()) << a.error().message;
  EXPECT_EQ(a->host, "./dir with:colon/f.conf");
  EXPECT_EQ(a->guest, "/etc/app/f.conf");
  ASSERT_TRUE(a->attr.has_value());
  EXPECT_EQ(a->attr->mode, 0640u);
  EXPECT_EQ(a->attr->uid, 1000u);
  EXPECT_EQ(a->attr->gid, 100u);
  auto plain = parse_action(K::Add, "f:/etc/f");
  ASSERT_TRUE(plain.has_value());
  EXPECT_FALSE(plain->attr.has_value());
  auto mode_only = parse_action(K::Add, "f:/etc/f:755");
  ASSERT_TRUE(mode_only.has_value());
  EXPECT_EQ(mode_only->attr->mode, 0755u);
}

TEST(ParseAction, RefusesWhatIsMalformed) {
  EXPECT_FALSE(parse_action(K::Add, "nocolon").has_value());
  EXPECT_FALSE(parse_action(K::Add, "f:/etc/f:999").has_value());     // not octal
  EXPECT_FALSE(parse_action(K::Add, "f:/etc/f:0644:1").has_value());  // uid without gid
  EXPECT_FALSE(parse_action(K::Add, "f:/etc/f:0644:x:y").has_value());
  EXPECT_FALSE(parse_action(K::Mkdir, "relative/dir").has_value());
  EXPECT_FALSE(parse_action(K::Write, "/etc/motd").has_value());  // no text
  EXPECT_FALSE(parse_action(K::Symlink, "target").has_value());
  EXPECT_FALSE(parse_action(K::Firstboot, "").has_value());
}

TEST(ParseAction, WriteAndSymlinkSplitWhereTheGuestPathIs) {
  auto w = parse_action(K::Write, "/etc/motd:a: b:c");
  ASSERT_TRUE(w.has_value());
  EXPECT_EQ(w->guest, "/etc/motd");
  EXPECT_EQ(w->text, "a: b:c");
  auto l = parse_action(K::Symlink, "../lib/x:y:/usr/lib/z");
  ASSERT_TRUE(l.has_value());
  EXPECT_EQ(l->text, "../lib/x:y");
  EXPECT_EQ(l->guest, "/usr/lib/z");
}

TEST(Fstab, ParsesDebianStyleEntries) {
  const auto e = parse_fstab(
      "# /etc/fstab\n"
      "UUID=ABCD-ef01 / ext4 errors=remount-ro 0 1\n"
      "LABEL=my\\040boot\t/boot  ext2 defaults 0 2 # trailing comment\n"
      "\n   \n"
      "/dev/vda3 none swap sw 0 0\n"
      "broken-line-with-one-field\n");
  ASSERT_EQ(e.size(), 3u);
  EXPECT_EQ(e[1].spec, "LABEL=my boot");
  EXPECT_EQ(e[1].dir, "/boot");
  EXPECT_EQ(e[1].type, "ext2");
  auto uuid = parse_device_ref(e[0].spec);
  EXPECT_EQ(uuid.kind, DeviceRef::Kind::Uuid);
  EXPECT_EQ(uuid.value, "abcd-ef01");
  auto label = parse_device_ref(e[1].spec);
  EXPECT_EQ(label.kind, DeviceRef::Kind::Label);
  EXPECT_EQ(label.value, "my boot");
}

TEST(Fstab, DeviceNamesGivePartitionNumbers) {
  EXPECT_EQ(parse_device_ref("/dev/vda2").partition, 2u);
  EXPECT_EQ(parse_device_ref("/dev/sdb13").partition, 13u);
  EXPECT_EQ(parse_device_ref("/dev/nvme0n1p3").partition, 3u);
  EXPECT_EQ(parse_device_ref("/dev/mmcblk0p1").partition, 1u);
  EXPECT_EQ(parse_device_ref("/dev/vda").kind, DeviceRef::Kind::Unknown);
  EXPECT_EQ(parse_device_ref("/dev/nvme0n1").kind, DeviceRef::Kind::Unknown);
  EXPECT_EQ(parse_device_ref("/dev/disk/by-uuid/ABC").value, "abc");
  EXPECT_EQ(parse_device_ref("tmpfs").kind, DeviceRef::Kind::Unknown);
}

}  // namespace
}  // namespace imgstream::patch
