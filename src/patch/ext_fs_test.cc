// ExtFs over real file systems: images made by mke2fs -d (e2fsprogs), edited through an
// OverlayDevice, the overlay's runs written back, then judged by e2fsck -fn and read back
// by debugfs, the tools that define what a correct ext file system is.
#include "patch/ext_fs.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "base/env.h"
#include "base/shell_testing.h"
#include "device/file_device.h"
#include "patch/overlay_device.h"

namespace imgstream::patch {
namespace {

namespace fs = std::filesystem;
using imgstream::testing::sh;
using imgstream::testing::sh_out;

std::vector<std::byte> bytes_of(std::string_view s) {
  auto b = std::as_bytes(std::span(s.data(), s.size()));
  return {b.begin(), b.end()};
}

std::string text_of(const std::vector<std::byte>& b) {
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

class ExtFsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/imgstream-extfs-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    const fs::path tree = dir_ / "tree";
    fs::create_directories(tree / "etc/sub/deeper");
    std::ofstream(tree / "etc/hostname") << "old-name\n";
    std::ofstream(tree / "etc/sub/a") << "a";
    std::ofstream(tree / "etc/sub/deeper/b") << std::string(70000, 'b');
    fs::create_symlink("/etc", tree / "abs");
    fs::create_symlink("etc", tree / "rel");
    fs::create_symlink("../../etc", tree / "etc/sub/up");
    img_ = (dir_ / "fs.img").string();
  }
  void TearDown() override { fs::remove_all(dir_); }

  void make(const std::string& type, const std::string& size) {
    ASSERT_EQ(sh("mke2fs -q -F -t " + type + " -d " + (dir_ / "tree").string() + " " + img_ +
                 " " + size),
              0);
  }

  // Opens the image read-only below an overlay: the image is untouched until apply().
  void open_fs() {
    auto dev = FileDevice::open(*Env::posix(), img_, Access::ReadOnly);
    ASSERT_TRUE(dev.has_value()) << dev.error().message;
    dev_ = std::move(*dev);
    overlay_ = std::make_unique<OverlayDevice>(*dev_);
    auto f = ExtFs::open(*overlay_, 0, overlay_->size(), true, "fs.img");
    ASSERT_TRUE(f.has_value()) << f.error().message;
    fs_ = std::move(*f);
  }

  // Closes the file system and writes the overlay's changed pages into the image.
  void apply() {
    ASSERT_TRUE(fs_->close().has_value());
    fs_.reset();
    auto dropped = overlay_->drop_unchanged();
    ASSERT_TRUE(dropped.has_value());
    auto runs = overlay_->dirty_runs();
    overlay_.reset();
    dev_.reset();
    int fd = ::open(img_.c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0);
    for (const auto& r : runs)
      ASSERT_EQ(::pwrite(fd, r.bytes.data(), r.bytes.size(), off_t(r.offset)),
                ssize_t(r.bytes.size()));
    ::close(fd);
  }

  void expect_fsck_clean() {
    const std::string out = sh_out("e2fsck -fn " + img_ + " 2>&1; echo rc=$?");
    EXPECT_NE(out.find("rc=0"), std::string::npos) << out;
  }

  std::string debugfs_cat(const std::string& path) {
    return sh_out("debugfs -R 'cat " + path + "' " + img_ + " 2>/dev/null");
  }

  fs::path dir_;
  std::string img_;
  std::unique_ptr<FileDevice> dev_;
  std::unique_ptr<OverlayDevice> overlay_;
  std::unique_ptr<ExtFs> fs_;
};

TEST_F(ExtFsTest, ReadsWhatMke2fsWrote) {
  make("ext4", "16M");
  open_fs();
  auto h = fs_->read_file("/etc/hostname");
  ASSERT_TRUE(h.has_value()) << h.error().message;
  EXPECT_EQ(text_of(*h), "old-name\n");
  auto b = fs_->read_file("/etc/sub/deeper/b");
  ASSERT_TRUE(b.has_value());
  EXPECT_EQ(b->size(), 70000u);
  auto via_rel = fs_->read_file("/rel/hostname");  // a relative symlink is followed
  ASSERT_TRUE(via_rel.has_value()) << via_rel.error().message;
  auto via_up = fs_->read_file("/etc/sub/up/hostname");
  ASSERT_TRUE(via_up.has_value()) << via_up.error().message;
  auto l = fs_->lstat("/abs");
  ASSERT_TRUE(l.has_value());
  EXPECT_EQ(l->type, FileType::Symlink);
  EXPECT_EQ(l->link_target, "/etc");
  auto entries = fs_->list("/etc");
  ASSERT_TRUE(entries.has_value());
  EXPECT_EQ(entries->size(), 2u);  // hostname, sub
}

TEST_F(ExtFsTest, EditsPassE2fsckAndReadBackWithDebugfs) {
  for (const std::string type : {"ext4", "ext3", "ext2"}) {
    SCOPED_TRACE(type);
    make(type, "32M");
    open_fs();
    const Attr a{0644, 0, 0};
    ASSERT_TRUE(fs_->write_file("/etc/hostname", bytes_of("new-name\n"), a).has_value());
    ASSERT_TRUE(fs_->make_dirs("/opt/x/y", Attr{0755, 0, 0}).has_value());
    const std::string big(300000, 'z');
    auto w = fs_->write_file("/opt/x/y/big", bytes_of(big), Attr{0600, 1000, 1000});
    ASSERT_TRUE(w.has_value()) << w.error().message;
    ASSERT_TRUE(fs_->symlink("../etc/hostname", "/opt/link").has_value());
    auto rm = fs_->remove("/etc/sub");
    ASSERT_TRUE(rm.has_value()) << rm.error().message;
    // Many entries in one directory: it must grow past its first block.
    for (int i = 0; i < 300; ++i)
      ASSERT_TRUE(
          fs_->write_file("/opt/many-" + std::to_string(i) + "-with-a-long-name", bytes_of("x"), a)
              .has_value());
    apply();
    expect_fsck_clean();
    EXPECT_EQ(debugfs_cat("/etc/hostname"), "new-name\n");
    EXPECT_EQ(debugfs_cat("/opt/x/y/big"), big);
    EXPECT_EQ(debugfs_cat("/opt/many-299-with-a-long-name"), "x");
    const std::string st = sh_out("debugfs -R 'stat /opt/x/y/big' " + img_ + " 2>/dev/null");
    EXPECT_NE(st.find("User:  1000"), std::string::npos) << st;
    EXPECT_NE(st.find("Mode:  0600"), std::string::npos) << st;
    const std::string ls = sh_out("debugfs -R 'ls -l /etc' " + img_ + " 2>/dev/null");
    EXPECT_EQ(ls.find("sub"), std::string::npos) << ls;
    open_fs();
    auto l = fs_->lstat("/opt/link");
    ASSERT_TRUE(l.has_value());
    EXPECT_EQ(l->link_target, "../etc/hostname");
    auto through = fs_->read_file("/opt/link");
    ASSERT_TRUE(through.has_value());
    EXPECT_EQ(text_of(*through), "new-name\n");
    fs_.reset();
    overlay_.reset();
    dev_.reset();
  }
}

TEST_F(ExtFsTest, RefusesPathsThatEscape) {
  make("ext4", "16M");
  open_fs();
  const Attr a{0644, 0, 0};
  auto up = fs_->write_file("/../etc/x", bytes_of("x"), a);
  ASSERT_FALSE(up.has_value());
  EXPECT_EQ(up.error().code, EXDEV);
  EXPECT_NE(up.error().message.find("climbs above the root"), std::string::npos);
  auto abs = fs_->write_file("/abs/x", bytes_of("x"), a);
  ASSERT_FALSE(abs.has_value());
  EXPECT_EQ(abs.error().code, EXDEV);
  EXPECT_NE(abs.error().message.find("absolute path /etc"), std::string::npos);
  // /etc/sub/up is a link to ../../etc, that is /etc: one more ".." is the root.
  auto rel = fs_->write_file("/etc/sub/up/../x", bytes_of("x"), a);
  EXPECT_TRUE(rel.has_value()) << rel.error().message;
  EXPECT_TRUE(fs_->exists("/x").value());
  auto through_link = fs_->write_file("/etc/sub/up/../../x", bytes_of("x"), a);
  ASSERT_FALSE(through_link.has_value());
  EXPECT_EQ(through_link.error().code, EXDEV);
  auto not_abs = fs_->read_file("etc/hostname");
  ASSERT_FALSE(not_abs.has_value());
  EXPECT_EQ(not_abs.error().code, EINVAL);
}

TEST_F(ExtFsTest, SymlinkLoopIsELOOP) {
  make("ext4", "16M");
  open_fs();
  ASSERT_TRUE(fs_->symlink("loop2", "/loop1").has_value());
  ASSERT_TRUE(fs_->symlink("loop1", "/loop2").has_value());
  auto r = fs_->read_file("/loop1");
  ASSERT_FALSE(r.has_value());
  EXPECT_EQ(r.error().code, ELOOP);
}

TEST_F(ExtFsTest, FullFileSystemIsENOSPCAndSaysSo) {
  make("ext4", "4M");
  open_fs();
  const std::string huge(8 << 20, 'q');
  auto w = fs_->write_file("/huge", bytes_of(huge), Attr{0644, 0, 0});
  ASSERT_FALSE(w.has_value());
  EXPECT_EQ(w.error().code, ENOSPC);
  EXPECT_NE(w.error().message.find("full"), std::string::npos) << w.error().message;
}

TEST_F(ExtFsTest, NotAnExtFileSystemIsRefused) {
  {
    std::ofstream f(img_);
    f << std::string(1 << 20, '\0');
  }
  auto dev = FileDevice::open(*Env::posix(), img_, Access::ReadOnly);
  ASSERT_TRUE(dev.has_value());
  auto f = ExtFs::open(**dev, 0, (*dev)->size(), false, "zeros.img");
  ASSERT_FALSE(f.has_value());
  EXPECT_NE(f.error().message.find("zeros.img"), std::string::npos);
}

TEST_F(ExtFsTest, ReadOnlyOpenRefusesWrites) {
  make("ext4", "16M");
  auto dev = FileDevice::open(*Env::posix(), img_, Access::ReadOnly);
  ASSERT_TRUE(dev.has_value());
  auto f = ExtFs::open(**dev, 0, (*dev)->size(), false, "fs.img");
  ASSERT_TRUE(f.has_value()) << f.error().message;
  auto w = (*f)->write_file("/etc/hostname", bytes_of("x"), Attr{0644, 0, 0});
  EXPECT_FALSE(w.has_value());
}

}  // namespace
}  // namespace imgstream::patch
