// The Env contract, run against every Env (PosixEnv in a temporary directory, MemEnv, and
// a rule-less FaultEnv over a MemEnv), then MemEnv's durability model and FaultEnv's
// faults.
#include "base/env.h"

#include <gtest/gtest.h>
#include <stdlib.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "base/env_fault.h"
#include "base/env_memory.h"

namespace imgstream {
namespace {

#define IMG_CAT_(a, b) a##b
#define IMG_CAT(a, b) IMG_CAT_(a, b)

// Asserts that a Result holds a value, printing the error message otherwise.
#define ASSERT_OK(expr)                                                       \
  do {                                                                        \
    auto _ok_r = (expr);                                                      \
    ASSERT_TRUE(_ok_r.has_value()) << #expr << ": " << _ok_r.error().message; \
  } while (0)

// NOLINTBEGIN(bugprone-macro-parentheses): lhs is a declaration
#define ASSERT_OK_AND_ASSIGN(lhs, expr)                             \
  auto IMG_CAT(_ok_r, __LINE__) = (expr);                           \
  ASSERT_TRUE(IMG_CAT(_ok_r, __LINE__).has_value())                 \
      << #expr << ": " << IMG_CAT(_ok_r, __LINE__).error().message; \
  lhs = std::move(IMG_CAT(_ok_r, __LINE__)).value()
// NOLINTEND(bugprone-macro-parentheses)

// Asserts that a Result holds an error with the given errno.
#define EXPECT_ERRNO(expr, err)                                         \
  do {                                                                  \
    auto _err_r = (expr);                                               \
    if (_err_r.has_value()) {                                           \
      ADD_FAILURE() << #expr << " succeeded, expected errno " << (err); \
    } else {                                                            \
      EXPECT_EQ(_err_r.error().code, (err)) << _err_r.error().message;  \
    }                                                                   \
  } while (0)

std::span<const std::byte> as_bytes(std::string_view s) {
  return {reinterpret_cast<const std::byte*>(s.data()), s.size()};
}

// The whole file as a string; "<error: ...>" on failure, so it can be compared.
std::string slurp(File& f) {
  auto size = f.size();
  if (!size) return "<error: " + size.error().message + ">";
  std::string s(*size, '\0');
  auto r = read_exact_at(f, 0, std::as_writable_bytes(std::span(s)));
  if (!r) return "<error: " + r.error().message + ">";
  return s;
}

std::string slurp(Env& env, const std::string& path) {
  auto f = env.open(path, OpenMode::ReadOnly);
  if (!f) return "<error: " + f.error().message + ">";
  return slurp(**f);
}

Result<void> put(Env& env, const std::string& path, std::string_view data) {
  auto f = TRY(env.open(path, OpenMode::CreateOrOpen));
  TRY(f->truncate(0));
  return write_all_at(*f, 0, as_bytes(data));
}

// ---------------------------------------------------------------------------------------
// The contract suite.

// An Env and an empty directory `root` to work in; cleans up after.
class Harness {
 public:
  virtual ~Harness() = default;
  virtual Env& env() = 0;
  std::string root;
};

class PosixHarness final : public Harness {
 public:
  PosixHarness() {
    char tmpl[] = "/tmp/imgstream-env-test-XXXXXX";
    IMG_CHECK(::mkdtemp(tmpl) != nullptr);
    root = tmpl;
  }
  ~PosixHarness() override {
    std::error_code ec;
    std::filesystem::remove_all(root, ec);
  }
  Env& env() override { return *Env::posix(); }
};

class MemHarness final : public Harness {
 public:
  MemHarness() {
    root = "/test";
    IMG_CHECK(mem_.mkdir(root).has_value());
  }
  Env& env() override { return mem_; }

 private:
  MemEnv mem_;
};

class FaultHarness final : public Harness {
 public:
  FaultHarness() : fault_(mem_) {
    root = "/test";
    IMG_CHECK(fault_.mkdir(root).has_value());
  }
  Env& env() override { return fault_; }

 private:
  MemEnv mem_;
  FaultEnv fault_;
};

class EnvContract : public testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "posix") h_ = std::make_unique<PosixHarness>();
    if (GetParam() == "memory") h_ = std::make_unique<MemHarness>();
    if (GetParam() == "fault") h_ = std::make_unique<FaultHarness>();
    IMG_CHECK(h_ != nullptr);
  }
  Env& env() { return h_->env(); }
  std::string at(std::string_view name) { return h_->root + "/" + std::string(name); }

  std::unique_ptr<Harness> h_;
};

INSTANTIATE_TEST_SUITE_P(AllEnvs, EnvContract, testing::Values("posix", "memory", "fault"),
                         [](const testing::TestParamInfo<std::string>& p) { return p.param; });

TEST_P(EnvContract, WriteThenReadBack) {
  ASSERT_OK_AND_ASSIGN(auto f, env().open(at("a"), OpenMode::CreateOrOpen));
  EXPECT_EQ(f->path(), at("a"));
  ASSERT_OK(write_all_at(*f, 0, as_bytes("hello, world")));
  ASSERT_OK_AND_ASSIGN(uint64_t size, f->size());
  EXPECT_EQ(size, 12u);
  EXPECT_EQ(slurp(*f), "hello, world");
  ASSERT_OK(write_all_at(*f, 7, as_bytes("there")));
  EXPECT_EQ(slurp(*f), "hello, there");
  ASSERT_OK(f->sync());
  EXPECT_EQ(slurp(env(), at("a")), "hello, there");
}

TEST_P(EnvContract, ReadsStopAtTheEnd) {
  ASSERT_OK(put(env(), at("a"), "abcdef"));
  ASSERT_OK_AND_ASSIGN(auto f, env().open(at("a"), OpenMode::ReadOnly));
  std::array<std::byte, 16> buf{};
  ASSERT_OK_AND_ASSIGN(size_t n, f->read_at(4, buf));
  EXPECT_EQ(n, 2u);
  ASSERT_OK_AND_ASSIGN(n, f->read_at(6, buf));
  EXPECT_EQ(n, 0u);
  ASSERT_OK_AND_ASSIGN(n, f->read_at(1000, buf));
  EXPECT_EQ(n, 0u);
  // read_exact_at turns an early end into EIO.
  EXPECT_ERRNO(read_exact_at(*f, 2, buf), EIO);
}

TEST_P(EnvContract, EmptyWriteDoesNotGrow) {
  ASSERT_OK_AND_ASSIGN(auto f, env().open(at("a"), OpenMode::CreateOrOpen));
  ASSERT_OK_AND_ASSIGN(size_t n, f->write_at(100, {}));
  EXPECT_EQ(n, 0u);
  ASSERT_OK_AND_ASSIGN(uint64_t size, f->size());
  EXPECT_EQ(size, 0u);
}

TEST_P(EnvContract, OpenModes) {
  EXPECT_ERRNO(env().open(at("missing"), OpenMode::ReadOnly), ENOENT);
  EXPECT_ERRNO(env().open(at("missing"), OpenMode::ReadWrite), ENOENT);
  EXPECT_ERRNO(env().open(at("no/such/dir"), OpenMode::CreateOrOpen), ENOENT);
  ASSERT_OK(put(env(), at("a"), "keep"));
  // CreateOrOpen of an existing file keeps its contents.
  ASSERT_OK_AND_ASSIGN(auto f, env().open(at("a"), OpenMode::CreateOrOpen));
  EXPECT_EQ(slurp(*f), "keep");
  // A file on the way is not a directory.
  EXPECT_ERRNO(env().open(at("a/b"), OpenMode::CreateOrOpen), ENOTDIR);
}

TEST_P(EnvContract, ReadOnlyFilesRefuseChanges) {
  ASSERT_OK(put(env(), at("a"), "data"));
  ASSERT_OK_AND_ASSIGN(auto f, env().open(at("a"), OpenMode::ReadOnly));
  EXPECT_ERRNO(f->write_at(0, as_bytes("x")), EBADF);
  EXPECT_ERRNO(f->truncate(0), EINVAL);
  EXPECT_ERRNO(f->punch_hole(0, 1), EBADF);
  EXPECT_EQ(slurp(*f), "data");
}

TEST_P(EnvContract, DirectoriesCannotBeOpenedAsFiles) {
  ASSERT_OK(env().mkdir(at("d")));
  EXPECT_ERRNO(env().open(at("d"), OpenMode::ReadOnly), EINVAL);
  EXPECT_ERRNO(env().open(at("d"), OpenMode::ReadWrite), EISDIR);
  EXPECT_ERRNO(env().open(at("d"), OpenMode::CreateOrOpen), EISDIR);
}

TEST_P(EnvContract, WriteBeyondTheEndLeavesZeros) {
  ASSERT_OK_AND_ASSIGN(auto f, env().open(at("a"), OpenMode::CreateOrOpen));
  ASSERT_OK(write_all_at(*f, 10000, as_bytes("x")));
  std::string s = slurp(*f);
  ASSERT_EQ(s.size(), 10001u);
  EXPECT_EQ(s, std::string(10000, '\0') + "x");
}

TEST_P(EnvContract, TruncateShrinksAndGrowsWithZeros) {
  ASSERT_OK_AND_ASSIGN(auto f, env().open(at("a"), OpenMode::CreateOrOpen));
  ASSERT_OK(write_all_at(*f, 0, as_bytes(std::string(5000, 'a'))));
  ASSERT_OK(f->truncate(3));
  EXPECT_EQ(slurp(*f), "aaa");
  // The old bytes must not come back when the file grows again.
  ASSERT_OK(f->truncate(6000));
  EXPECT_EQ(slurp(*f), "aaa" + std::string(5997, '\0'));
  ASSERT_OK(f->truncate(0));
  EXPECT_EQ(slurp(*f), "");
}

TEST_P(EnvContract, PunchHoleReadsZerosAndKeepsSize) {
  constexpr size_t kSize = 64 * 1024;
  ASSERT_OK_AND_ASSIGN(auto f, env().open(at("a"), OpenMode::CreateOrOpen));
  ASSERT_OK(write_all_at(*f, 0, as_bytes(std::string(kSize, 'a'))));
  // Unaligned on both ends, so partial blocks must be zeroed too.
  auto r = f->punch_hole(100, 20000);
  if (!r && r.error().code == ENOTSUP) GTEST_SKIP() << "no hole punching here";
  ASSERT_OK(r);
  std::string want =
      std::string(100, 'a') + std::string(20000, '\0') + std::string(kSize - 20100, 'a');
  EXPECT_EQ(slurp(*f), want);
  // Past the end: the size stays.
  ASSERT_OK(f->punch_hole(kSize - 10, 1000));
  ASSERT_OK_AND_ASSIGN(uint64_t size, f->size());
  EXPECT_EQ(size, kSize);
  EXPECT_ERRNO(f->punch_hole(0, 0), EINVAL);
}

TEST_P(EnvContract, ZeroRangeReadsZerosAndKeepsSize) {
  constexpr size_t kSize = 64 * 1024;
  ASSERT_OK_AND_ASSIGN(auto f, env().open(at("a"), OpenMode::CreateOrOpen));
  ASSERT_OK(write_all_at(*f, 0, as_bytes(std::string(kSize, 'z'))));
  auto r = f->zero_range(4095, 8194);
  if (!r && r.error().code == ENOTSUP) GTEST_SKIP() << "no zero range here";
  ASSERT_OK(r);
  std::string want =
      std::string(4095, 'z') + std::string(8194, '\0') + std::string(kSize - 4095 - 8194, 'z');
  EXPECT_EQ(slurp(*f), want);
  ASSERT_OK(f->zero_range(kSize - 1, 100));
  ASSERT_OK_AND_ASSIGN(uint64_t size, f->size());
  EXPECT_EQ(size, kSize);
}

// Exact hole positions depend on the file system's block size; these bounds hold on any
// that supports holes, and on one that reports everything as data.
TEST_P(EnvContract, SeekDataAndHole) {
  constexpr uint64_t kMiB = 1 << 20;
  ASSERT_OK_AND_ASSIGN(auto f, env().open(at("sparse"), OpenMode::CreateOrOpen));
  ASSERT_OK(write_all_at(*f, 0, as_bytes(std::string(4096, 'a'))));
  ASSERT_OK(write_all_at(*f, kMiB, as_bytes(std::string(4096, 'b'))));
  ASSERT_OK(f->truncate(2 * kMiB));
  ASSERT_OK_AND_ASSIGN(uint64_t d, f->seek_data(0));
  EXPECT_EQ(d, 0u);
  ASSERT_OK_AND_ASSIGN(uint64_t h, f->seek_hole(0));
  EXPECT_GE(h, 4096u);
  ASSERT_OK_AND_ASSIGN(d, f->seek_data(64 * 1024));
  EXPECT_GE(d, 64u * 1024);
  EXPECT_LE(d, kMiB);
  ASSERT_OK_AND_ASSIGN(h, f->seek_hole(kMiB));
  EXPECT_GE(h, kMiB + 4096);
  EXPECT_LE(h, 2 * kMiB);
  ASSERT_OK_AND_ASSIGN(d, f->seek_data(2 * kMiB));
  EXPECT_EQ(d, 2 * kMiB);
  ASSERT_OK_AND_ASSIGN(h, f->seek_hole(3 * kMiB));
  EXPECT_EQ(h, 2 * kMiB);
}

TEST_P(EnvContract, RenameReplacesAtomically) {
  ASSERT_OK(put(env(), at("a"), "new"));
  ASSERT_OK(put(env(), at("b"), "old contents"));
  ASSERT_OK(env().rename(at("a"), at("b")));
  EXPECT_EQ(slurp(env(), at("b")), "new");
  ASSERT_OK_AND_ASSIGN(bool there, env().exists(at("a")));
  EXPECT_FALSE(there);
  // Renaming onto itself changes nothing.
  ASSERT_OK(env().rename(at("b"), at("b")));
  EXPECT_EQ(slurp(env(), at("b")), "new");
}

TEST_P(EnvContract, RenameErrors) {
  EXPECT_ERRNO(env().rename(at("missing"), at("x")), ENOENT);
  ASSERT_OK(put(env(), at("f"), "f"));
  EXPECT_ERRNO(env().rename(at("f"), at("no/dir")), ENOENT);
  ASSERT_OK(env().mkdir(at("d")));
  ASSERT_OK(env().mkdir(at("d/sub")));
  EXPECT_ERRNO(env().rename(at("f"), at("d")), EISDIR);
  EXPECT_ERRNO(env().rename(at("d"), at("f")), ENOTDIR);
  EXPECT_ERRNO(env().rename(at("d"), at("d/sub/inner")), EINVAL);
  ASSERT_OK(env().mkdir(at("e")));
  ASSERT_OK(put(env(), at("e/child"), "c"));
  EXPECT_ERRNO(env().rename(at("d"), at("e")), ENOTEMPTY);
}

TEST_P(EnvContract, RenameMovesDirectoriesWithTheirContents) {
  ASSERT_OK(env().mkdir(at("d")));
  ASSERT_OK(put(env(), at("d/f"), "inside"));
  ASSERT_OK(env().mkdir(at("empty")));
  ASSERT_OK(env().rename(at("d"), at("empty")));  // an empty directory is replaced
  EXPECT_EQ(slurp(env(), at("empty/f")), "inside");
  ASSERT_OK_AND_ASSIGN(bool there, env().exists(at("d")));
  EXPECT_FALSE(there);
}

TEST_P(EnvContract, RemoveFiles) {
  ASSERT_OK(put(env(), at("a"), "x"));
  ASSERT_OK(env().remove(at("a")));
  ASSERT_OK_AND_ASSIGN(bool there, env().exists(at("a")));
  EXPECT_FALSE(there);
  EXPECT_ERRNO(env().remove(at("a")), ENOENT);
  ASSERT_OK(env().mkdir(at("d")));
  EXPECT_ERRNO(env().remove(at("d")), EISDIR);
}

TEST_P(EnvContract, OpenFilesOutliveRemoveAndRename) {
  ASSERT_OK(put(env(), at("a"), "still here"));
  ASSERT_OK_AND_ASSIGN(auto f, env().open(at("a"), OpenMode::ReadWrite));
  ASSERT_OK(env().rename(at("a"), at("b")));
  ASSERT_OK(write_all_at(*f, 0, as_bytes("STILL")));
  EXPECT_EQ(slurp(env(), at("b")), "STILL here");
  ASSERT_OK(env().remove(at("b")));
  EXPECT_EQ(slurp(*f), "STILL here");
}

TEST_P(EnvContract, Directories) {
  ASSERT_OK(env().mkdir(at("d")));
  ASSERT_OK(env().mkdir(at("d")));  // exists already: fine
  EXPECT_ERRNO(env().mkdir(at("x/y")), ENOENT);
  ASSERT_OK(put(env(), at("d/one"), "1"));
  ASSERT_OK(put(env(), at("d/two"), "2"));
  ASSERT_OK(env().mkdir(at("d/sub")));
  ASSERT_OK_AND_ASSIGN(auto names, env().list_dir(at("d")));
  std::sort(names.begin(), names.end());
  EXPECT_EQ(names, (std::vector<std::string>{"one", "sub", "two"}));
  ASSERT_OK_AND_ASSIGN(names, env().list_dir(at("d/sub")));
  EXPECT_TRUE(names.empty());
  EXPECT_ERRNO(env().list_dir(at("missing")), ENOENT);
  EXPECT_ERRNO(env().list_dir(at("d/one")), ENOTDIR);
  ASSERT_OK(env().sync_dir(at("d")));
  EXPECT_ERRNO(env().sync_dir(at("missing")), ENOENT);
  EXPECT_ERRNO(env().sync_dir(at("d/one")), ENOTDIR);
}

TEST_P(EnvContract, Exists) {
  ASSERT_OK(put(env(), at("f"), ""));
  ASSERT_OK(env().mkdir(at("d")));
  ASSERT_OK_AND_ASSIGN(bool there, env().exists(at("f")));
  EXPECT_TRUE(there);
  ASSERT_OK_AND_ASSIGN(there, env().exists(at("d")));
  EXPECT_TRUE(there);
  ASSERT_OK_AND_ASSIGN(there, env().exists(at("nope")));
  EXPECT_FALSE(there);
  ASSERT_OK_AND_ASSIGN(there, env().exists(at("nope/deeper")));
  EXPECT_FALSE(there);
  // As stat(2): a file where a directory should be is an error, not "missing".
  EXPECT_ERRNO(env().exists(at("f/x")), ENOTDIR);
}

TEST_P(EnvContract, NowaitReadIsARead) {
  ASSERT_OK(put(env(), at("a"), "cached"));
  ASSERT_OK_AND_ASSIGN(auto f, env().open(at("a"), OpenMode::ReadOnly));
  std::array<std::byte, 6> buf{};
  auto r = f->read_at_nowait(0, buf);
  if (!r) {
    EXPECT_TRUE(r.error().is_would_block()) << r.error().message;  // declining is allowed
    return;
  }
  EXPECT_EQ(*r, 6u);
  EXPECT_EQ(std::memcmp(buf.data(), "cached", 6), 0);
}

TEST_P(EnvContract, ConcurrentWritersAndCreators) {
  constexpr int kThreads = 4;
  constexpr int kBlocksPerThread = 64;
  constexpr size_t kBlock = 512;
  ASSERT_OK_AND_ASSIGN(auto f, env().open(at("shared"), OpenMode::CreateOrOpen));
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::string block(kBlock, static_cast<char>('A' + t));
      for (int i = 0; i < kBlocksPerThread; ++i) {
        uint64_t offset = static_cast<uint64_t>(i * kThreads + t) * kBlock;
        if (!write_all_at(*f, offset, as_bytes(block))) ++failures;
      }
      if (!put(env(), at("own" + std::to_string(t)), block)) ++failures;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  std::string s = slurp(*f);
  ASSERT_EQ(s.size(), kThreads * kBlocksPerThread * kBlock);
  for (size_t i = 0; i < s.size(); ++i) {
    ASSERT_EQ(s[i], 'A' + static_cast<int>((i / kBlock) % kThreads)) << "at " << i;
  }
  ASSERT_OK_AND_ASSIGN(auto names, env().list_dir(h_->root));
  EXPECT_EQ(names.size(), kThreads + 1u);
}

// ---------------------------------------------------------------------------------------
// MemEnv specifics.

TEST(MemEnv, HolesArePages) {
  constexpr uint64_t kPage = MemEnv::kPageSizeBytes;
  MemEnv env;
  ASSERT_OK_AND_ASSIGN(auto f, env.open("/f", OpenMode::CreateOrOpen));
  ASSERT_OK(f->truncate(10 * kPage));
  ASSERT_OK_AND_ASSIGN(uint64_t d, f->seek_data(0));
  EXPECT_EQ(d, 10 * kPage);  // all hole
  ASSERT_OK(write_all_at(*f, 3 * kPage + 1, as_bytes("x")));
  ASSERT_OK(write_all_at(*f, 4 * kPage, as_bytes("y")));
  ASSERT_OK_AND_ASSIGN(d, f->seek_data(0));
  EXPECT_EQ(d, 3 * kPage);
  ASSERT_OK_AND_ASSIGN(d, f->seek_data(3 * kPage + 7));
  EXPECT_EQ(d, 3 * kPage + 7);
  ASSERT_OK_AND_ASSIGN(uint64_t h, f->seek_hole(3 * kPage));
  EXPECT_EQ(h, 5 * kPage);
  ASSERT_OK_AND_ASSIGN(h, f->seek_hole(kPage + 5));
  EXPECT_EQ(h, kPage + 5);
  // Punching a whole page makes a hole; a partial punch only zeroes.
  ASSERT_OK(f->punch_hole(3 * kPage, kPage + 10));
  ASSERT_OK_AND_ASSIGN(d, f->seek_data(0));
  EXPECT_EQ(d, 4 * kPage);
  ASSERT_OK_AND_ASSIGN(h, f->seek_hole(4 * kPage));
  EXPECT_EQ(h, 5 * kPage);
  // The hole after the last page ends at the end of the file.
  ASSERT_OK(f->truncate(4 * kPage + 100));
  ASSERT_OK_AND_ASSIGN(h, f->seek_hole(4 * kPage));
  EXPECT_EQ(h, 4 * kPage + 100);
}

TEST(MemEnv, HugeSparseFilesAreCheap) {
  MemEnv env;
  ASSERT_OK_AND_ASSIGN(auto f, env.open("/big", OpenMode::CreateOrOpen));
  constexpr uint64_t kTiB = uint64_t{1} << 40;
  ASSERT_OK(f->truncate(kTiB));
  ASSERT_OK(write_all_at(*f, kTiB - 1, as_bytes("!")));
  ASSERT_OK(f->punch_hole(0, kTiB));
  ASSERT_OK(f->zero_range(0, kTiB));
  ASSERT_OK_AND_ASSIGN(uint64_t d, f->seek_data(0));
  EXPECT_EQ(d, kTiB);
  ASSERT_OK(f->sync());
  EXPECT_ERRNO(f->truncate(MemEnv::kFileSizeBytesMax + 1), EFBIG);
  EXPECT_ERRNO(f->write_at(MemEnv::kFileSizeBytesMax, as_bytes("x")), EFBIG);
  EXPECT_ERRNO(f->write_at(UINT64_MAX, as_bytes("x")), EFBIG);
  EXPECT_ERRNO(f->punch_hole(1, UINT64_MAX), EFBIG);
}

TEST(MemEnv, PathsAreNormalised) {
  MemEnv env;
  ASSERT_OK(env.mkdir("/a"));
  ASSERT_OK(put(env, "//a/./b", "x"));
  EXPECT_EQ(slurp(env, "/a/b"), "x");
  EXPECT_EQ(slurp(env, "a/b"), "x");
  EXPECT_EQ(slurp(env, "/a/../a/b/"), "x");
  EXPECT_ERRNO(env.open("", OpenMode::ReadOnly), ENOENT);
  EXPECT_ERRNO(env.open("/" + std::string(256, 'n'), OpenMode::CreateOrOpen), ENAMETOOLONG);
  ASSERT_OK(env.mkdir("/"));
  EXPECT_ERRNO(env.remove("/"), EISDIR);
  EXPECT_ERRNO(env.rename("/", "/x"), EBUSY);
}

TEST(MemEnv, ListDirIsSorted) {
  MemEnv env;
  for (const char* n : {"c", "a", "b"}) ASSERT_OK(put(env, std::string("/") + n, n));
  ASSERT_OK_AND_ASSIGN(auto names, env.list_dir("/"));
  EXPECT_EQ(names, (std::vector<std::string>{"a", "b", "c"}));
}

TEST(MemEnv, MkdirOverAFileIsEEXIST) {
  MemEnv env;
  ASSERT_OK(put(env, "/f", ""));
  EXPECT_ERRNO(env.mkdir("/f"), EEXIST);
}

// ---------------------------------------------------------------------------------------
// Durability: MemEnv::drop_unsynced() is a power loss.

// A MemEnv with a durable directory /d.
class Durability : public testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK(env_.mkdir("/d"));
    ASSERT_OK(env_.sync_dir("/"));
  }
  bool exists(const std::string& path) { return env_.exists(path).value(); }

  MemEnv env_;
};

TEST_F(Durability, UnsyncedWritesAreLost) {
  ASSERT_OK_AND_ASSIGN(auto f, env_.open("/d/f", OpenMode::CreateOrOpen));
  ASSERT_OK(env_.sync_dir("/d"));
  ASSERT_OK(write_all_at(*f, 0, as_bytes("lost")));
  env_.drop_unsynced();
  EXPECT_TRUE(exists("/d/f"));
  EXPECT_EQ(slurp(env_, "/d/f"), "");
}

TEST_F(Durability, SyncedWritesAreKept) {
  ASSERT_OK_AND_ASSIGN(auto f, env_.open("/d/f", OpenMode::CreateOrOpen));
  ASSERT_OK(env_.sync_dir("/d"));
  ASSERT_OK(write_all_at(*f, 0, as_bytes("kept")));
  ASSERT_OK(f->sync());
  // Overwrites, truncates and punches after the sync are all undone, even those that
  // change a page the sync shared with the durable copy.
  ASSERT_OK(write_all_at(*f, 1, as_bytes("XX")));
  ASSERT_OK(write_all_at(*f, 8000, as_bytes("far")));
  ASSERT_OK(f->punch_hole(0, 1));
  env_.drop_unsynced();
  EXPECT_EQ(slurp(env_, "/d/f"), "kept");
}

TEST_F(Durability, SyncedTruncateIsKept) {
  ASSERT_OK_AND_ASSIGN(auto f, env_.open("/d/f", OpenMode::CreateOrOpen));
  ASSERT_OK(env_.sync_dir("/d"));
  ASSERT_OK(write_all_at(*f, 0, as_bytes("0123456789")));
  ASSERT_OK(f->sync());
  ASSERT_OK(f->truncate(4));
  ASSERT_OK(f->sync());
  ASSERT_OK(f->truncate(8));  // grows with zeros, unsynced
  env_.drop_unsynced();
  EXPECT_EQ(slurp(env_, "/d/f"), "0123");
}

TEST_F(Durability, CreationNeedsSyncDir) {
  ASSERT_OK_AND_ASSIGN(auto f, env_.open("/d/f", OpenMode::CreateOrOpen));
  ASSERT_OK(write_all_at(*f, 0, as_bytes("data")));
  ASSERT_OK(f->sync());  // the data is durable, the name is not
  env_.drop_unsynced();
  EXPECT_FALSE(exists("/d/f"));
}

TEST_F(Durability, SyncDirWithoutFileSyncKeepsAnEmptyFile) {
  ASSERT_OK(put(env_, "/d/f", "data"));
  ASSERT_OK(env_.sync_dir("/d"));
  env_.drop_unsynced();
  EXPECT_EQ(slurp(env_, "/d/f"), "");
}

TEST_F(Durability, RenameWithoutSyncDirIsUndone) {
  ASSERT_OK(put(env_, "/d/old", "old"));
  ASSERT_OK(put(env_, "/d/tmp", "new"));
  for (const char* p : {"/d/old", "/d/tmp"}) {
    ASSERT_OK_AND_ASSIGN(auto f, env_.open(p, OpenMode::ReadWrite));
    ASSERT_OK(f->sync());
  }
  ASSERT_OK(env_.sync_dir("/d"));
  ASSERT_OK(env_.rename("/d/tmp", "/d/old"));
  EXPECT_EQ(slurp(env_, "/d/old"), "new");
  env_.drop_unsynced();
  EXPECT_EQ(slurp(env_, "/d/old"), "old");
  EXPECT_EQ(slurp(env_, "/d/tmp"), "new");
  // Now with the sync_dir.
  ASSERT_OK(env_.rename("/d/tmp", "/d/old"));
  ASSERT_OK(env_.sync_dir("/d"));
  env_.drop_unsynced();
  EXPECT_EQ(slurp(env_, "/d/old"), "new");
  EXPECT_FALSE(exists("/d/tmp"));
}

TEST_F(Durability, RemoveWithoutSyncDirIsUndone) {
  ASSERT_OK(put(env_, "/d/f", "x"));
  ASSERT_OK(env_.sync_dir("/d"));
  ASSERT_OK(env_.remove("/d/f"));
  env_.drop_unsynced();
  EXPECT_TRUE(exists("/d/f"));
  ASSERT_OK(env_.remove("/d/f"));
  ASSERT_OK(env_.sync_dir("/d"));
  env_.drop_unsynced();
  EXPECT_FALSE(exists("/d/f"));
}

TEST_F(Durability, UnsyncedDirectoryTakesItsContents) {
  ASSERT_OK(env_.mkdir("/d/sub"));
  ASSERT_OK(put(env_, "/d/sub/f", "x"));
  ASSERT_OK(env_.sync_dir("/d/sub"));  // the entry is durable inside an undurable dir
  env_.drop_unsynced();
  EXPECT_FALSE(exists("/d/sub"));
  // Recreated, the directory is empty.
  ASSERT_OK(env_.mkdir("/d/sub"));
  ASSERT_OK_AND_ASSIGN(auto names, env_.list_dir("/d/sub"));
  EXPECT_TRUE(names.empty());
}

TEST_F(Durability, RenameAcrossDirectoriesNeedsBothSynced) {
  ASSERT_OK(env_.mkdir("/e"));
  ASSERT_OK(env_.sync_dir("/"));
  ASSERT_OK(put(env_, "/d/f", "x"));
  ASSERT_OK(env_.sync_dir("/d"));
  ASSERT_OK(env_.rename("/d/f", "/e/f"));
  ASSERT_OK(env_.sync_dir("/e"));
  env_.drop_unsynced();
  // The model keeps both links: the source directory was not synced.
  EXPECT_TRUE(exists("/d/f"));
  EXPECT_TRUE(exists("/e/f"));
}

TEST_F(Durability, FilesOpenedBeforeTheDropFailWithEIO) {
  ASSERT_OK_AND_ASSIGN(auto f, env_.open("/d/f", OpenMode::CreateOrOpen));
  ASSERT_OK(env_.sync_dir("/d"));
  env_.drop_unsynced();
  std::array<std::byte, 1> b{};
  EXPECT_ERRNO(f->read_at(0, b), EIO);
  EXPECT_ERRNO(f->write_at(0, b), EIO);
  EXPECT_ERRNO(f->sync(), EIO);
  EXPECT_ERRNO(f->size(), EIO);
  EXPECT_ERRNO(f->truncate(0), EIO);
  EXPECT_ERRNO(f->seek_data(0), EIO);
  // Opened again, it works.
  ASSERT_OK_AND_ASSIGN(auto g, env_.open("/d/f", OpenMode::ReadWrite));
  ASSERT_OK(write_all_at(*g, 0, b));
}

TEST_F(Durability, DirectoriesMovedIntoEachOtherDoNotLoop) {
  // /d/a/b -> /b, then /d/a -> /b/a; sync only /b. The durable links now form a cycle
  // (d -> a -> b -> a); the drop must still end.
  ASSERT_OK(env_.mkdir("/d/a"));
  ASSERT_OK(env_.mkdir("/d/a/b"));
  ASSERT_OK(env_.sync_dir("/d"));
  ASSERT_OK(env_.sync_dir("/d/a"));
  ASSERT_OK(env_.rename("/d/a/b", "/b"));
  ASSERT_OK(env_.rename("/d/a", "/b/a"));
  ASSERT_OK(env_.sync_dir("/b"));
  env_.drop_unsynced();
  EXPECT_TRUE(exists("/d/a/b/a/b"));
}

TEST_F(Durability, UnreachableCyclesAreFreed) {
  // As above, inside an undurable directory /x: after the drop the cycle hangs from
  // nothing; ASan's leak check tells whether the MemEnv frees it when it goes.
  ASSERT_OK(env_.mkdir("/x"));
  ASSERT_OK(env_.mkdir("/x/a"));
  ASSERT_OK(env_.mkdir("/x/a/b"));
  ASSERT_OK(env_.sync_dir("/x"));
  ASSERT_OK(env_.sync_dir("/x/a"));
  ASSERT_OK(env_.rename("/x/a/b", "/x/b"));
  ASSERT_OK(env_.rename("/x/a", "/x/b/a"));
  ASSERT_OK(env_.sync_dir("/x/b"));
  env_.drop_unsynced();
  EXPECT_FALSE(exists("/x"));
}

// ---------------------------------------------------------------------------------------
// FaultEnv.

class Faults : public testing::Test {
 protected:
  Faults() : env_(mem_) {}
  MemEnv mem_;
  FaultEnv env_;
};

TEST_F(Faults, NthWriteToAPathFails) {
  auto rule = env_.add_rule({.ops = FaultOp::Write, .path = "x", .from_call = 3});
  ASSERT_OK_AND_ASSIGN(auto x, env_.open("/x", OpenMode::CreateOrOpen));
  ASSERT_OK_AND_ASSIGN(auto y, env_.open("/y", OpenMode::CreateOrOpen));
  ASSERT_OK(x->write_at(0, as_bytes("1")));
  ASSERT_OK(y->write_at(0, as_bytes("other path: not counted")));
  ASSERT_OK(x->write_at(1, as_bytes("2")));
  ASSERT_OK(x->sync());  // another op: not counted
  auto r = x->write_at(2, as_bytes("3"));
  EXPECT_ERRNO(r, EIO);
  EXPECT_NE(r.error().message.find("/x"), std::string::npos) << r.error().message;
  ASSERT_OK(x->write_at(2, as_bytes("4")));
  EXPECT_EQ(env_.fired(rule), 1u);
  EXPECT_EQ(slurp(env_, "/x"), "124");
}

TEST_F(Faults, EverySyncFailsFromTheFifthOn) {
  auto rule = env_.add_rule({.ops = FaultOp::Sync | FaultOp::SyncDir,
                             .from_call = 5,
                             .times = FaultRule::kForever,
                             .error = ENOSPC});
  ASSERT_OK_AND_ASSIGN(auto f, env_.open("/f", OpenMode::CreateOrOpen));
  for (int i = 1; i <= 4; ++i) ASSERT_OK(i % 2 ? f->sync() : env_.sync_dir("/"));
  for (int i = 0; i < 10; ++i) EXPECT_ERRNO(f->sync(), ENOSPC);
  EXPECT_ERRNO(env_.sync_dir("/"), ENOSPC);
  EXPECT_EQ(env_.fired(rule), 11u);
  env_.clear_rules();
  ASSERT_OK(f->sync());
}

TEST_F(Faults, WindowOfCalls) {
  env_.add_rule({.ops = FaultOp::Read, .from_call = 2, .times = 3});
  ASSERT_OK(put(env_, "/f", "abc"));
  ASSERT_OK_AND_ASSIGN(auto f, env_.open("/f", OpenMode::ReadOnly));
  std::array<std::byte, 3> b{};
  std::string outcome;
  for (int i = 0; i < 6; ++i) outcome += f->read_at(0, b) ? 'o' : 'x';
  EXPECT_EQ(outcome, "oxxxoo");
}

TEST_F(Faults, ExactAndSubstringPaths) {
  auto exact = env_.add_rule({.ops = FaultOp::Open,
                              .path = "/dir/file",
                              .match = PathMatch::Exact,
                              .times = FaultRule::kForever,
                              .error = EACCES});
  ASSERT_OK(env_.mkdir("/dir"));
  EXPECT_ERRNO(env_.open("/dir/file", OpenMode::CreateOrOpen), EACCES);
  ASSERT_OK(env_.open("/dir/file2", OpenMode::CreateOrOpen));
  EXPECT_EQ(env_.fired(exact), 1u);
  env_.clear_rules();
  env_.add_rule({.ops = FaultOp::Open, .path = "file", .times = FaultRule::kForever});
  EXPECT_ERRNO(env_.open("/dir/file2", OpenMode::ReadOnly), EIO);
  EXPECT_ERRNO(env_.open("/dir/afile", OpenMode::CreateOrOpen), EIO);
  ASSERT_OK(env_.open("/dir/other", OpenMode::CreateOrOpen));
}

TEST_F(Faults, EnvOperations) {
  env_.add_rule({.ops = FaultOp::Mkdir, .error = EROFS});
  env_.add_rule({.ops = FaultOp::Rename, .path = "target", .error = EXDEV});
  env_.add_rule({.ops = FaultOp::Remove | FaultOp::Exists | FaultOp::ListDir,
                 .times = FaultRule::kForever,
                 .error = EPERM});
  EXPECT_ERRNO(env_.mkdir("/d"), EROFS);
  ASSERT_OK(env_.mkdir("/d"));
  ASSERT_OK(put(env_, "/d/a", "a"));
  EXPECT_ERRNO(env_.rename("/d/a", "/d/target"), EXDEV);  // matched on the target path
  ASSERT_OK(env_.rename("/d/a", "/d/target"));
  EXPECT_ERRNO(env_.remove("/d/target"), EPERM);
  EXPECT_ERRNO(env_.exists("/d/target"), EPERM);
  EXPECT_ERRNO(env_.list_dir("/d"), EPERM);
  ASSERT_OK_AND_ASSIGN(bool there, mem_.exists("/d/target"));
  EXPECT_TRUE(there);
}

TEST_F(Faults, FirstFiringRuleDecides) {
  auto a = env_.add_rule({.ops = FaultOp::Truncate, .from_call = 2, .error = ENOSPC});
  auto b = env_.add_rule({.ops = FaultOp::Truncate, .times = 2, .error = EDQUOT});
  ASSERT_OK_AND_ASSIGN(auto f, env_.open("/f", OpenMode::CreateOrOpen));
  EXPECT_ERRNO(f->truncate(1), EDQUOT);  // a is not yet due
  EXPECT_ERRNO(f->truncate(1), ENOSPC);  // both due: a was added first
  ASSERT_OK(f->truncate(1));
  EXPECT_EQ(env_.fired(a), 1u);
  EXPECT_EQ(env_.fired(b), 1u);  // b's second call was taken by a, yet counted
}

TEST_F(Faults, ShortReadsAndWritesAreCompletedByTheLoops) {
  auto w = env_.add_rule({.ops = FaultOp::Write,
                          .times = FaultRule::kForever,
                          .action = FaultAction::Short,
                          .short_bytes = 3});
  auto r = env_.add_rule({.ops = FaultOp::Read,
                          .times = FaultRule::kForever,
                          .action = FaultAction::Short,
                          .short_bytes = 5});
  const std::string data = "the quick brown fox jumps over the lazy dog";  // 43 bytes
  ASSERT_OK_AND_ASSIGN(auto f, env_.open("/f", OpenMode::CreateOrOpen));
  ASSERT_OK_AND_ASSIGN(size_t n, f->write_at(0, as_bytes(data)));
  EXPECT_EQ(n, 3u);
  ASSERT_OK(write_all_at(*f, 0, as_bytes(data)));
  EXPECT_EQ(env_.fired(w), 1u + 15u);
  std::string got(data.size(), '\0');
  auto buf = std::as_writable_bytes(std::span(got));
  ASSERT_OK_AND_ASSIGN(n, f->read_at(0, buf));
  EXPECT_EQ(n, 5u);
  // A nowait read that would be short declines instead.
  auto nw = f->read_at_nowait(0, buf);
  ASSERT_FALSE(nw);
  EXPECT_TRUE(nw.error().is_would_block());
  ASSERT_OK(read_exact_at(*f, 0, buf));
  EXPECT_EQ(got, data);
  EXPECT_EQ(env_.fired(r), 1u + 1u + 9u);
  EXPECT_EQ(slurp(mem_, "/f"), data);
}

TEST_F(Faults, FilesHaveNoDescriptor) {
  FaultEnv over_posix(*Env::posix());
  ASSERT_OK_AND_ASSIGN(auto f, over_posix.open("/proc/self/status", OpenMode::ReadOnly));
  EXPECT_EQ(f->fd(), -1);
}

TEST_F(Faults, ConcurrentCallsAreCountedExactly) {
  constexpr int kThreads = 4;
  constexpr int kWritesPerThread = 100;
  auto rule = env_.add_rule({.ops = FaultOp::Write, .from_call = 101, .times = 50});
  ASSERT_OK_AND_ASSIGN(auto f, env_.open("/f", OpenMode::CreateOrOpen));
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kWritesPerThread; ++i) {
        if (!f->write_at(static_cast<uint64_t>(t) * kWritesPerThread + i, as_bytes("x")))
          ++failures;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 50);
  EXPECT_EQ(env_.fired(rule), 50u);
  EXPECT_EQ(env_.io_points(), 1u + kThreads * kWritesPerThread);  // + the CreateOrOpen
}

TEST_F(Faults, CrashStopsEverythingUntilRestart) {
  ASSERT_OK_AND_ASSIGN(auto f, env_.open("/f", OpenMode::CreateOrOpen));  // point 1
  ASSERT_OK(env_.sync_dir("/"));                                          // point 2
  env_.set_crash_at(4);
  ASSERT_OK(write_all_at(*f, 0, as_bytes("synced")));  // point 3
  std::array<std::byte, 4> b{};
  ASSERT_OK(f->read_at(0, b));  // not an I/O point
  EXPECT_FALSE(env_.crashed());
  EXPECT_ERRNO(f->sync(), EIO);  // point 4: the power goes
  EXPECT_TRUE(env_.crashed());
  EXPECT_EQ(env_.io_points(), 4u);
  EXPECT_ERRNO(f->read_at(0, b), EIO);  // reads too
  EXPECT_ERRNO(env_.exists("/f"), EIO);
  EXPECT_ERRNO(env_.open("/f", OpenMode::ReadOnly), EIO);
  EXPECT_EQ(slurp(mem_, "/f"), "synced");  // the write reached the MemEnv, unsynced
  mem_.drop_unsynced();
  env_.restart();
  EXPECT_FALSE(env_.crashed());
  EXPECT_EQ(env_.io_points(), 0u);
  EXPECT_ERRNO(f->size(), EIO);  // a File of the dead process
  EXPECT_EQ(slurp(env_, "/f"), "");
}

// The atomic-replace protocol: write a temporary file, sync it, rename it over the old
// one, sync the directory. Skipping the sync of the data is the classic bug.
enum class SyncData { Yes, No };

Result<void> save(Env& env, std::string_view contents, SyncData sync_data) {
  auto f = TRY(env.open("/d/data.tmp", OpenMode::CreateOrOpen));
  TRY(f->truncate(0));
  TRY(write_all_at(*f, 0, as_bytes(contents)));
  if (sync_data == SyncData::Yes) TRY(f->sync());
  TRY(env.rename("/d/data.tmp", "/d/data"));
  return env.sync_dir("/d");
}

// Crashes the second save at every I/O point k, and once after its last one (power lost
// right after the save returned); returns what /d/data held after each recovery.
std::vector<std::string> crash_everywhere(SyncData sync_data) {
  const std::string v1 = "version one", v2 = "version two, longer";
  uint64_t points = 0;
  {
    MemEnv mem;
    FaultEnv env(mem);
    IMG_CHECK(mem.mkdir("/d") && mem.sync_dir("/") && save(mem, v1, SyncData::Yes));
    IMG_CHECK(save(env, v2, sync_data).has_value());
    points = env.io_points();
  }
  std::vector<std::string> seen;
  for (uint64_t k = 1; k <= points + 1; ++k) {
    MemEnv mem;
    FaultEnv env(mem);
    IMG_CHECK(mem.mkdir("/d") && mem.sync_dir("/") && save(mem, v1, SyncData::Yes));
    env.set_crash_at(k);
    auto r = save(env, v2, sync_data);
    EXPECT_EQ(r.has_value(), k > points) << "k=" << k;
    EXPECT_EQ(env.crashed(), k <= points) << "k=" << k;
    mem.drop_unsynced();
    env.restart();
    seen.push_back(slurp(env, "/d/data"));
  }
  return seen;
}

TEST(CrashAt, AtomicReplaceSurvivesEveryCrashPoint) {
  std::vector<std::string> seen = crash_everywhere(SyncData::Yes);
  // open, truncate, write, sync, rename, sync_dir; then after the end.
  ASSERT_EQ(seen.size(), 7u);
  for (size_t k = 0; k < seen.size(); ++k) {
    EXPECT_TRUE(seen[k] == "version one" || seen[k] == "version two, longer")
        << "crash at " << k + 1 << " left '" << seen[k] << "'";
  }
  // The rename is durable only once sync_dir has returned.
  EXPECT_EQ(seen[5], "version one");
  EXPECT_EQ(seen[6], "version two, longer");
}

TEST(CrashAt, FindsAMissingSync) {
  std::vector<std::string> seen = crash_everywhere(SyncData::No);
  ASSERT_EQ(seen.size(), 6u);
  for (size_t k = 0; k + 1 < seen.size(); ++k) EXPECT_EQ(seen[k], "version one");
  // The durable rename of an unsynced file: the old version is gone, the new one empty.
  EXPECT_EQ(seen.back(), "");
}

}  // namespace
}  // namespace imgstream
