#include "meridian/storage/store.h"

#include <gtest/gtest.h>

#include <sys/statvfs.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <vector>

namespace meridian::storage {
namespace {

class temp_dir {
 public:
  temp_dir() {
    path_ = std::filesystem::temp_directory_path() /
            ("meridian-store-" + std::to_string(std::random_device{}()));
  }
  ~temp_dir() { std::filesystem::remove_all(path_); }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

TEST(store, put_then_get_returns_value_and_survives_reopen) {
  temp_dir dir;
  std::string error;
  {
    auto s = store::open(dir.str(), &error);
    ASSERT_TRUE(s) << error;
    ASSERT_TRUE(s->put(family::config, "route/a", "one", {.sync = true}).is_ok());
  }
  auto s = store::open(dir.str(), &error);
  ASSERT_TRUE(s) << error;
  std::string value;
  ASSERT_TRUE(s->get(family::config, "route/a", &value).is_ok());
  EXPECT_EQ(value, "one");
}

TEST(store, families_are_separate_key_spaces) {
  temp_dir dir;
  std::string error;
  auto s = store::open(dir.str(), &error);
  ASSERT_TRUE(s) << error;
  ASSERT_TRUE(s->put(family::counters, "k", "c").is_ok());
  std::string value;
  EXPECT_TRUE(s->get(family::state, "k", &value).is_not_found());
}

TEST(store, batch_write_applies_puts_and_deletes_together) {
  temp_dir dir;
  std::string error;
  auto s = store::open(dir.str(), &error);
  ASSERT_TRUE(s) << error;
  ASSERT_TRUE(s->put(family::meta, "old", "x").is_ok());
  ASSERT_TRUE(s->write({{family::meta, "new", "y"}, {family::meta, "old", std::nullopt}}).is_ok());
  std::string value;
  EXPECT_TRUE(s->get(family::meta, "old", &value).is_not_found());
  ASSERT_TRUE(s->get(family::meta, "new", &value).is_ok());
  EXPECT_EQ(value, "y");
}

TEST(store, scan_visits_only_keys_with_prefix_in_order) {
  temp_dir dir;
  std::string error;
  auto s = store::open(dir.str(), &error);
  ASSERT_TRUE(s) << error;
  for (auto k : {"b/2", "a/1", "b/1", "c/1"}) ASSERT_TRUE(s->put(family::config, k, k).is_ok());
  std::vector<std::string> seen;
  ASSERT_TRUE(s->scan(family::config, "b/", [&](std::string_view k, std::string_view) {
                 seen.emplace_back(k);
                 return true;
               }).is_ok());
  EXPECT_EQ(seen, (std::vector<std::string>{"b/1", "b/2"}));
}

TEST(store, checkpoint_is_an_openable_copy) {
  temp_dir dir;
  temp_dir backup;
  std::string error;
  {
    auto s = store::open(dir.str(), &error);
    ASSERT_TRUE(s) << error;
    ASSERT_TRUE(s->put(family::config, "k", "v").is_ok());
    ASSERT_TRUE(s->checkpoint(backup.str()).is_ok());
  }
  auto copy = store::open(backup.str(), &error);
  ASSERT_TRUE(copy) << error;
  std::string value;
  ASSERT_TRUE(copy->get(family::config, "k", &value).is_ok());
  EXPECT_EQ(value, "v");
}

TEST(store, second_open_of_same_dir_fails_with_message) {
  temp_dir dir;
  std::string error;
  auto first = store::open(dir.str(), &error);
  ASSERT_TRUE(first) << error;
  auto second = store::open(dir.str(), &error);
  EXPECT_FALSE(second);
  EXPECT_NE(error.find("lock"), std::string::npos) << error;
}

// A full disk must not stop the node: writes are refused with a clear error before RocksDB sees
// ENOSPC (which would latch it, and the Debian build asserts on the failed log), and come back
// by themselves once there is room. Needs root for a small tmpfs; skipped otherwise.
TEST(store, writes_are_refused_while_the_disk_is_nearly_full_and_resume_after) {
  temp_dir dir;
  std::filesystem::create_directories(dir.str());
  std::string mount = "mount -t tmpfs -o size=256m tmpfs " + dir.str() + " 2>/dev/null";
  if (geteuid() != 0 || std::system(mount.c_str()) != 0) GTEST_SKIP() << "needs root for tmpfs";
  struct unmount {
    std::string dir;
    ~unmount() { std::system(("umount -l " + dir).c_str()); }
  } guard{dir.str()};
  std::string error;
  auto s = store::open(dir.str() + "/db", &error);
  ASSERT_TRUE(s) << error;
  ASSERT_TRUE(s->put(family::config, "a", "1", {.sync = true}).is_ok());
  std::string filler = dir.str() + "/filler";
  {
    std::FILE* f = std::fopen(filler.c_str(), "w");
    ASSERT_NE(f, nullptr);
    struct statvfs fs {};
    ASSERT_EQ(statvfs(dir.str().c_str(), &fs), 0);
    uint64_t free_mib = (static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize) >> 20;
    ASSERT_GT(free_mib, 64u) << "writes are allowed before the disk fills";
    std::vector<char> block(1 << 20, 'x');
    for (uint64_t i = 0; i + 32 < free_mib; ++i) std::fwrite(block.data(), 1, block.size(), f);
    std::fclose(f);
  }
  auto refused = s->put(family::config, "b", "2", {.sync = true});
  ASSERT_FALSE(refused.is_ok());
  EXPECT_NE(refused.message().find("disk full"), std::string::npos) << refused.message();
  std::string value;
  EXPECT_TRUE(s->get(family::config, "a", &value).is_ok()) << "reads go on";
  std::filesystem::remove(filler);
  EXPECT_TRUE(s->put(family::config, "b", "2", {.sync = true}).is_ok());
}

}  // namespace
}  // namespace meridian::storage
