// The patch journal: a power cut at every I/O point of writing and applying it leaves
// the image, after recovery, either as it was or fully patched; damaged and foreign
// journals are told apart.
#include "patch/patch_journal.h"

#include <gtest/gtest.h>

#include <fstream>
#include <iterator>

#include "base/env_fault.h"
#include "base/env_memory.h"

namespace imgstream::patch {
namespace {

constexpr uint64_t kImageBytes = 64 * 1024;
const std::string kImage = "/d/disk.img";

std::vector<std::byte> pattern(uint64_t n, uint8_t v) {
  return std::vector<std::byte>(n, std::byte{v});
}

// The old image: all 1s. The patch: three runs of 2s, one longer than an entry.
std::vector<OverlayDevice::Run> the_runs() {
  return {{0, pattern(4096, 2)}, {8192, pattern(100, 2)}, {20000, pattern(30000, 2)}};
}

std::vector<std::byte> patched_image() {
  auto img = pattern(kImageBytes, 1);
  for (const auto& r : the_runs())
    std::copy(r.bytes.begin(), r.bytes.end(), img.begin() + std::ptrdiff_t(r.offset));
  return img;
}

void make_image(Env& env) {
  IMG_CHECK(env.mkdir("/d") && env.sync_dir("/"));
  auto f = env.open(kImage, OpenMode::CreateOrOpen);
  IMG_CHECK(f && write_all_at(**f, 0, pattern(kImageBytes, 1)) && (*f)->sync());
  IMG_CHECK(env.sync_dir("/d"));
}

std::vector<std::byte> read_image(Env& env) {
  auto f = env.open(kImage, OpenMode::ReadOnly);
  std::vector<std::byte> b(kImageBytes);
  IMG_CHECK(f && read_exact_at(**f, 0, b));
  return b;
}

Result<void> patch_in_place(Env& env) {
  auto img = TRY(env.open(kImage, OpenMode::ReadWrite));
  TRY(write_journal(env, journal_path(kImage), kImageBytes, the_runs()));
  auto info = TRY(apply_journal(env, journal_path(kImage), *img, kImageBytes));
  if (info.state != JournalState::Committed) return Error{EIO, "not committed"};
  return ok();
}

TEST(PatchJournal, WritesAppliesAndRemoves) {
  MemEnv env;
  make_image(env);
  ASSERT_TRUE(patch_in_place(env).has_value());
  EXPECT_EQ(read_image(env), patched_image());
  EXPECT_FALSE(env.exists(journal_path(kImage)).value());
}

TEST(PatchJournal, PowerLossAtEveryPointLeavesOldOrNew) {
  uint64_t points = 0;
  {
    MemEnv mem;
    make_image(mem);
    FaultEnv env(mem);
    ASSERT_TRUE(patch_in_place(env).has_value());
    points = env.io_points();
  }
  ASSERT_GT(points, 5u);
  const auto old_image = pattern(kImageBytes, 1), new_image = patched_image();
  unsigned saw_old = 0, saw_new = 0;
  for (uint64_t k = 1; k <= points + 1; ++k) {
    MemEnv mem;
    make_image(mem);
    FaultEnv env(mem);
    env.set_crash_at(k);
    (void)patch_in_place(env);
    mem.drop_unsynced();
    env.restart();
    // What the next `imgstream patch` (or --recover) does first.
    {
      auto img = env.open(kImage, OpenMode::ReadWrite);
      ASSERT_TRUE(img.has_value());
      auto r = recover_journal(env, journal_path(kImage), **img, kImageBytes);
      ASSERT_TRUE(r.has_value()) << "k=" << k << ": " << r.error().message;
    }
    const auto got = read_image(env);
    EXPECT_TRUE(got == old_image || got == new_image)
        << "crash at I/O point " << k << " mixed them";
    (got == old_image ? saw_old : saw_new)++;
    EXPECT_FALSE(env.exists(journal_path(kImage)).value()) << "k=" << k;
  }
  EXPECT_GT(saw_old, 0u);
  EXPECT_GT(saw_new, 0u);
}

TEST(PatchJournal, ACutJournalIsIncompleteAtEveryLength) {
  MemEnv env;
  make_image(env);
  ASSERT_TRUE(write_journal(env, "/d/j", kImageBytes, the_runs()).has_value());
  std::vector<std::byte> whole;
  {
    auto f = env.open("/d/j", OpenMode::ReadOnly).value();
    whole.resize(f->size().value());
    ASSERT_TRUE(read_exact_at(*f, 0, whole).has_value());
  }
  auto info = inspect_journal(env, "/d/j", kImageBytes);
  ASSERT_TRUE(info.has_value());
  EXPECT_EQ(info->state, JournalState::Committed);
  EXPECT_EQ(info->bytes, 4096u + 100 + 30000);
  for (size_t len = 0; len < whole.size(); len += (len < 4200 ? 1 : 97)) {
    {
      auto f = env.open("/d/j", OpenMode::ReadWrite).value();
      ASSERT_TRUE(f->truncate(len).has_value());
      if (len > 0) {
        ASSERT_TRUE(write_all_at(*f, 0, std::span(whole).first(len)).has_value());
      }
    }
    auto cut = inspect_journal(env, "/d/j", kImageBytes);
    ASSERT_TRUE(cut.has_value()) << len << ": " << cut.error().message;
    EXPECT_EQ(cut->state, JournalState::Incomplete) << len;
  }
}

TEST(PatchJournal, AFlippedByteIsNeverApplied) {
  MemEnv env;
  make_image(env);
  ASSERT_TRUE(write_journal(env, "/d/j", kImageBytes, the_runs()).has_value());
  auto f = env.open("/d/j", OpenMode::ReadWrite).value();
  const uint64_t size = f->size().value();
  for (uint64_t at = 0; at < size; at += 211) {
    std::byte b[1];
    ASSERT_TRUE(read_exact_at(*f, at, b).has_value());
    const std::byte flipped[1] = {b[0] ^ std::byte{0x40}};
    ASSERT_TRUE(write_all_at(*f, at, flipped).has_value());
    auto info = inspect_journal(env, "/d/j", kImageBytes);
    // Byte 0-7 is the magic: then it is not a journal at all.
    if (at < 8) {
      EXPECT_FALSE(info.has_value()) << at;
    } else {
      ASSERT_TRUE(info.has_value()) << at;
      EXPECT_EQ(info->state, JournalState::Incomplete) << at;
    }
    ASSERT_TRUE(write_all_at(*f, at, b).has_value());
  }
}

TEST(PatchJournal, SomebodysFileIsNotDeleted) {
  MemEnv env;
  make_image(env);
  {
    auto f = env.open(journal_path(kImage), OpenMode::CreateOrOpen).value();
    const std::string text = "my notes, not a journal";
    ASSERT_TRUE(write_all_at(*f, 0, std::as_bytes(std::span(text))).has_value());
  }
  auto img = env.open(kImage, OpenMode::ReadWrite).value();
  auto r = recover_journal(env, journal_path(kImage), *img, kImageBytes);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("not an imgstream patch journal"), std::string::npos);
  EXPECT_TRUE(env.exists(journal_path(kImage)).value());
  EXPECT_FALSE(write_journal(env, journal_path(kImage), kImageBytes, the_runs()).has_value());
}

TEST(PatchJournal, AJournalOfAnotherImageIsRefused) {
  MemEnv env;
  make_image(env);
  ASSERT_TRUE(write_journal(env, "/d/j", kImageBytes * 2, the_runs()).has_value());
  auto r = inspect_journal(env, "/d/j", kImageBytes);
  ASSERT_FALSE(r.has_value());
  EXPECT_NE(r.error().message.find("not of this one"), std::string::npos);
}

// fuzz/corpus/patch_journal_fuzz/committed was written by a Python script from the byte
// tables of docs/patch-journal.md alone: the reader agrees with the document.
TEST(PatchJournal, ReadsAJournalWrittenFromTheDocument) {
  std::ifstream in(std::string(IMGSTREAM_SOURCE_DIR) + "/fuzz/corpus/patch_journal_fuzz/committed",
                   std::ios::binary);
  ASSERT_TRUE(in.good());
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  MemEnv env;
  make_image(env);
  {
    auto f = env.open(journal_path(kImage), OpenMode::CreateOrOpen).value();
    ASSERT_TRUE(write_all_at(*f, 0, std::as_bytes(std::span(bytes))).has_value());
  }
  auto info = inspect_journal(env, journal_path(kImage), kImageBytes);
  ASSERT_TRUE(info.has_value()) << info.error().message;
  EXPECT_EQ(info->state, JournalState::Committed) << info->why;
  EXPECT_EQ(info->entries, 2u);
  EXPECT_EQ(info->bytes, 400u);
  auto img = env.open(kImage, OpenMode::ReadWrite).value();
  ASSERT_TRUE(recover_journal(env, journal_path(kImage), *img, kImageBytes).has_value());
  auto now = read_image(env);
  EXPECT_EQ(now[4096], std::byte{2});
  EXPECT_EQ(now[4195], std::byte{2});
  EXPECT_EQ(now[4196], std::byte{1});
  EXPECT_EQ(now[20299], std::byte{3});
}

}  // namespace
}  // namespace imgstream::patch
