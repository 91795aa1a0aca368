#include "store/local_store.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "base/env_memory.h"

namespace imgstream::store {
namespace {

StoreOptions options(const std::string& dir) {
  StoreOptions o;
  o.dir = dir;
  o.image_size = 1 << 20;
  o.region_size = 64 << 10;
  o.source_uri = "mem://image";
  return o;
}

void put(Env& env, const std::string& path) {
  auto f = env.open(path, OpenMode::CreateOrOpen);
  ASSERT_TRUE(f) << f.error().message;
}

std::vector<std::string> names(Env& env, const std::string& dir) {
  auto n = env.list_dir(dir);
  EXPECT_TRUE(n) << n.error().message;
  return n ? *n : std::vector<std::string>{};
}

TEST(LocalStoreDir, AMissingEmptyOrHalfMadeDirectoryMayHoldAStore) {
  MemEnv env;
  EXPECT_TRUE(LocalStore::check_dir(env, "/missing"));
  ASSERT_TRUE(env.mkdir("/empty"));
  EXPECT_TRUE(LocalStore::check_dir(env, "/empty"));
  ASSERT_TRUE(env.mkdir("/half"));
  for (std::string_view n : kStoreNamesBeingMade) put(env, "/half/" + std::string(n));
  EXPECT_TRUE(LocalStore::check_dir(env, "/half"));
  EXPECT_TRUE(LocalStore::open_or_create(env, options("/half")));
}

TEST(LocalStoreDir, SomeonesDirectoryIsRefusedAndLeftAsItWas) {
  MemEnv env;
  ASSERT_TRUE(env.mkdir("/mine"));
  put(env, "/mine/data");
  put(env, "/mine/photo.jpg");
  const std::vector<std::string> before = names(env, "/mine");
  auto s = LocalStore::open_or_create(env, options("/mine"));
  ASSERT_FALSE(s);
  EXPECT_EQ(s.error().code, EEXIST);
  EXPECT_NE(s.error().message.find("not an imgstream store and not empty (it holds 'photo.jpg')"),
            std::string::npos)
      << s.error().message;
  EXPECT_EQ(names(env, "/mine"), before) << "not even a lock file was made";
}

TEST(LocalStoreDir, AStoreIsResumedWhateverElseItHolds) {
  MemEnv env;
  ASSERT_TRUE(LocalStore::open_or_create(env, options("/s")));
  put(env, "/s/ctl.sock");
  EXPECT_TRUE(LocalStore::check_dir(env, "/s"));
  auto again = LocalStore::open_or_create(env, options("/s"));
  ASSERT_TRUE(again) << again.error().message;
  EXPECT_FALSE((*again)->created());
}

TEST(LocalStoreDir, MissingParentsAreMade) {
  MemEnv env;
  auto s = LocalStore::open_or_create(env, options("/var/lib/imgstream/vm1"));
  ASSERT_TRUE(s) << s.error().message;
  EXPECT_TRUE((*s)->created());
  auto n = names(env, "/var/lib/imgstream/vm1");
  EXPECT_NE(std::find(n.begin(), n.end(), "meta"), n.end());
  // The parents are durable too: the store survives power loss.
  s->reset();
  env.drop_unsynced();
  EXPECT_TRUE(*env.exists("/var/lib/imgstream/vm1/meta"));
}

TEST(LocalStoreDir, MakeDirsMakesEveryMissingLevel) {
  MemEnv env;
  ASSERT_TRUE(make_dirs(env, "/a/b/c"));
  EXPECT_TRUE(*env.exists("/a/b/c"));
  ASSERT_TRUE(make_dirs(env, "/a/b/c"));  // existing: fine
  put(env, "/a/file");
  EXPECT_FALSE(make_dirs(env, "/a/file/d"));
}

}  // namespace
}  // namespace imgstream::store
