// Partition tables written by sfdisk and file systems made by mke2fs / mkswap, read back
// by read_partition_table and probe_fs; the other file systems by their magic numbers.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "base/shell_testing.h"
#include "disk/fs_probe.h"
#include "disk/partition_table.h"

namespace imgstream::disk {
namespace {

namespace fs = std::filesystem;
using imgstream::testing::sh;
using imgstream::testing::sh_out;

std::vector<std::byte> head_of(const std::string& path, size_t n, uint64_t at = 0) {
  std::vector<std::byte> b(n);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return {};
  const ssize_t got = ::pread(fd, b.data(), n, off_t(at));
  ::close(fd);
  b.resize(got < 0 ? 0 : size_t(got));
  return b;
}

class DiskTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/imgstream-disk-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    img_ = (dir_ / "disk.img").string();
    ASSERT_EQ(sh("truncate -s 64M " + img_), 0);
  }
  void TearDown() override { fs::remove_all(dir_); }
  void sfdisk(const std::string& script) {
    ASSERT_EQ(sh("printf '" + script + "' | sfdisk -q " + img_), 0);
  }
  fs::path dir_;
  std::string img_;
};

TEST_F(DiskTest, ReadsAnMbrWrittenBySfdisk) {
  sfdisk("label: dos\\nstart=2048, size=8M, type=83\\nsize=16M, type=82\\nsize=8M, type=5\\n");
  auto t = read_partition_table(head_of(img_, 1 << 20));
  ASSERT_EQ(t.kind, TableKind::Mbr);
  ASSERT_EQ(t.partitions.size(), 3u);
  EXPECT_EQ(t.partitions[0].number, 1u);
  EXPECT_EQ(t.partitions[0].start(), 2048u * 512);
  EXPECT_EQ(t.partitions[0].bytes(), 8u << 20);
  EXPECT_EQ(t.partitions[1].mbr_type, 0x82);
  EXPECT_TRUE(t.partitions[2].is_extended());
  auto usable = usable_partitions(t, 64 << 20);
  EXPECT_EQ(usable.size(), 2u);  // the extended one is not where a file system is
}

TEST_F(DiskTest, ReadsAGptWrittenBySfdisk) {
  sfdisk("label: gpt\\nsize=4M\\nsize=8M\\nsize=16M\\n");
  auto t = read_partition_table(head_of(img_, 1 << 20));
  ASSERT_EQ(t.kind, TableKind::Gpt);
  ASSERT_EQ(t.partitions.size(), 3u);
  const std::string dump = sh_out("sfdisk -d " + img_);
  for (const auto& p : t.partitions) {
    EXPECT_TRUE(p.gpt);
    // sfdisk's own dump names the same start sector for each partition.
    EXPECT_NE(dump.find("start=" + std::string(12 - std::to_string(p.first_lba).size(), ' ') +
                        std::to_string(p.first_lba)),
              std::string::npos)
        << dump;
  }
  EXPECT_EQ(t.partitions[2].bytes(), 16u << 20);
  // A partition that runs past the end of the image is not usable.
  EXPECT_EQ(usable_partitions(t, 20 << 20).size(), 2u);
}

TEST_F(DiskTest, NoTableInZeros) {
  auto t = read_partition_table(head_of(img_, 1 << 20));
  EXPECT_EQ(t.kind, TableKind::None);
  EXPECT_TRUE(t.partitions.empty());
  EXPECT_EQ(read_partition_table({}).kind, TableKind::None);
}

TEST_F(DiskTest, ProbesExtAsBlkidDoes) {
  for (const std::string type : {"ext2", "ext3", "ext4"}) {
    SCOPED_TRACE(type);
    ASSERT_EQ(sh("mke2fs -q -F -t " + type + " -L lbl-" + type + " " + img_ + " 16M"), 0);
    auto info = probe_fs(head_of(img_, kFsProbeBytes));
    EXPECT_STREQ(fs_kind_name(info.kind), type.c_str());
    EXPECT_TRUE(info.ext.clean());
    EXPECT_FALSE(info.ext.has_errors());
    EXPECT_FALSE(info.ext.needs_recovery());
    EXPECT_EQ(info.ext.label, "lbl-" + type);
    std::string uuid = sh_out("blkid -p -o value -s UUID " + img_);
    while (!uuid.empty() && uuid.back() == '\n') uuid.pop_back();
    EXPECT_EQ(info.ext.uuid_text(), uuid);
    EXPECT_EQ(info.ext.has_journal(), type != "ext2");
  }
}

TEST_F(DiskTest, ProbesSwapAndMagicNumbers) {
  ASSERT_EQ(sh("mkswap " + img_), 0);
  EXPECT_EQ(probe_fs(head_of(img_, kFsProbeBytes)).kind, FsKind::Swap);
  std::vector<std::byte> b(kFsProbeBytes);
  auto put = [&](size_t at, std::string_view s) {
    std::memcpy(b.data() + at, s.data(), s.size());
  };
  put(0, "XFSB");
  EXPECT_EQ(probe_fs(b).kind, FsKind::Xfs);
  EXPECT_STREQ(fs_kind_name(FsKind::Xfs), "XFS");
  std::fill(b.begin(), b.end(), std::byte{0});
  put(65536 + 64, "_BHRfS_M");
  EXPECT_EQ(probe_fs(b).kind, FsKind::Btrfs);
  // Too short a head for btrfs's magic: not found, and no read past the end.
  EXPECT_EQ(probe_fs(std::span(b).first(65536)).kind, FsKind::Unknown);
}

TEST_F(DiskTest, DirtyAndErrorStatesAreSeen) {
  ASSERT_EQ(sh("mke2fs -q -F -t ext4 " + img_ + " 16M"), 0);
  // debugfs -w sets what a crashed kernel leaves: the state not clean, recovery needed.
  ASSERT_EQ(sh("debugfs -w -R 'ssv state 0' " + img_), 0);
  ASSERT_EQ(sh("debugfs -w -R 'feature needs_recovery' " + img_), 0);
  auto info = probe_fs(head_of(img_, kFsProbeBytes));
  EXPECT_FALSE(info.ext.clean());
  EXPECT_TRUE(info.ext.needs_recovery());
  ASSERT_EQ(sh("debugfs -w -R 'ssv state 2' " + img_), 0);
  EXPECT_TRUE(probe_fs(head_of(img_, kFsProbeBytes)).ext.has_errors());
}

}  // namespace
}  // namespace imgstream::disk
