// Real `meridian run` processes forming a cluster on loopback: join, failure detection, restart,
// and a node with the wrong key kept out. Short black-box stories, as in Redis's cluster tests.

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "meridian/cluster/keyring.h"
#include "process_support.h"

namespace meridian::testing {
namespace {

struct node_ports {
  int proxy = 0, admin = 0, gossip = 0;
};

class cluster_processes : public ::testing::Test {
 protected:
  void SetUp() override {
    write_file(dir_.file("cluster.keys"),
               meridian::cluster::encode_key(meridian::cluster::generate_key()) + "\n");
    write_file(dir_.file("admin.token"), "test-token-0123456789abcdef\n");
  }

  std::string config_for(int i, const std::string& keyring) {
    static const char* regions[] = {"eu-west", "us-east", "ap-south"};
    std::string seeds;
    for (int s = 0; s < 2; ++s) {
      seeds += (s ? ", " : "") + std::string("127.0.0.1:") + std::to_string(ports_[s].gossip);
    }
    return "node: {id: n" + std::to_string(i) + ", region: " + regions[i % 3] +
           ", data_dir: " + dir_.file("n" + std::to_string(i)) +
           "}\nlisten: {proxy: 127.0.0.1:" + std::to_string(ports_[i].proxy) +
           ", admin: 127.0.0.1:" + std::to_string(ports_[i].admin) +
           "}\nadmin: {token_file: " + dir_.file("admin.token") +
           "}\ncluster: {bind: 127.0.0.1:" + std::to_string(ports_[i].gossip) + ", seeds: [" +
           seeds + "], keyring_file: " + keyring + "}\n";
  }

  // Starts node i and waits until its admin API answers. Ports are picked free but may be taken
  // by a parallel test before the child binds them: then the child exits, and node i gets new
  // ports and another try.
  void start(int i, const std::string& keyring = "") {
    auto path = dir_.file("n" + std::to_string(i) + ".yaml");
    for (int attempt = 0; attempt < 4; ++attempt) {
      write_file(path, config_for(i, keyring.empty() ? dir_.file("cluster.keys") : keyring));
      nodes_[i] = std::make_unique<child_node>(path, dir_.file("n" + std::to_string(i) + ".log"));
      bool up = eventually(
          [&] {
            httplib::Client c("127.0.0.1", ports_[i].admin);
            auto res = c.Get("/health");
            return res && res->status == 200 &&
                   res->body.find("\"n" + std::to_string(i) + "\"") != std::string::npos;
          },
          3s);
      if (up) return;
      nodes_[i].reset();  // kills it if it is somehow still running
      ports_[i] = {unused_port(), unused_port(), unused_port()};
    }
    FAIL() << "node " << i << " did not start";
  }

  // The member table node i reports, or an empty array when it does not answer.
  nlohmann::json members_of(int i) {
    httplib::Client c("127.0.0.1", ports_[i].admin);
    c.set_read_timeout(2, 0);
    auto res = c.Get("/cluster/members", {{"Authorization", "Bearer test-token-0123456789abcdef"}});
    if (!res || res->status != 200) return nlohmann::json::array();
    auto j = nlohmann::json::parse(res->body, nullptr, false);
    return j.is_object() && j.contains("members") ? j["members"] : nlohmann::json::array();
  }

  // The state node i reports for member id, or "" when unknown.
  std::string state_of(int i, const std::string& id, uint64_t* incarnation = nullptr) {
    for (const auto& m : members_of(i)) {
      if (m["id"] == id) {
        if (incarnation) *incarnation = m["incarnation"].get<uint64_t>();
        return m["state"].get<std::string>();
      }
    }
    return "";
  }

  std::string read_key() {
    std::ifstream in(dir_.file("cluster.keys"));
    std::string line;
    std::getline(in, line);
    return line;
  }

  int alive_count(int i) {
    int n = 0;
    for (const auto& m : members_of(i)) n += m["state"] == "alive";
    return n;
  }

  static constexpr int count = 5;
  temp_dir dir_;
  node_ports ports_[count + 1];
  std::unique_ptr<child_node> nodes_[count + 1];

 public:
  cluster_processes() {
    for (auto& p : ports_) p = {unused_port(), unused_port(), unused_port()};
  }
};

TEST_F(cluster_processes, five_nodes_join_detect_a_kill_and_see_the_restart) {
  for (int i = 0; i < count; ++i) start(i);
  auto joined = [&] {
    for (int i = 0; i < count; ++i) {
      if (alive_count(i) != count) return false;
    }
    return true;
  };
  ASSERT_TRUE(eventually(joined, 5s)) << nodes_[0]->log();  // the bound: 3 s after start

  uint64_t before = 0;
  ASSERT_EQ(state_of(0, "n4", &before), "alive");
  ::kill(nodes_[4]->pid(), SIGKILL);
  nodes_[4]->wait_exit(2s);
  auto all_see_dead = [&] {
    for (int i = 0; i < 4; ++i) {
      if (state_of(i, "n4") != "dead") return false;
    }
    return true;
  };
  auto killed_at = std::chrono::steady_clock::now();
  ASSERT_TRUE(eventually(all_see_dead, 12s)) << nodes_[0]->log();
  EXPECT_LT(std::chrono::steady_clock::now() - killed_at, 8s);

  start(4);
  auto back = [&] {
    for (int i = 0; i < 4; ++i) {
      uint64_t inc = 0;
      if (state_of(i, "n4", &inc) != "alive" || inc <= before) return false;
    }
    return true;
  };
  ASSERT_TRUE(eventually(back, 6s)) << nodes_[4]->log();
}

TEST_F(cluster_processes, a_node_with_another_key_never_joins_and_says_why) {
  for (int i = 0; i < 2; ++i) start(i);
  ASSERT_TRUE(eventually([&] { return alive_count(0) == 2 && alive_count(1) == 2; }, 5s));
  write_file(dir_.file("other.keys"),
             meridian::cluster::encode_key(meridian::cluster::generate_key()) + "\n");
  start(count, dir_.file("other.keys"));
  ASSERT_TRUE(eventually(
      [&] { return nodes_[0]->log().find("failed authentication") != std::string::npos; }, 5s))
      << nodes_[0]->log();
  for (int i = 0; i < 2; ++i) EXPECT_EQ(state_of(i, "n" + std::to_string(count)), "");
  EXPECT_EQ(alive_count(count), 1) << "the outsider only knows itself";
}

TEST_F(cluster_processes, sigterm_leaves_so_others_see_left_not_dead) {
  for (int i = 0; i < 3; ++i) start(i);
  ASSERT_TRUE(eventually([&] { return alive_count(0) == 3; }, 5s));
  ::kill(nodes_[2]->pid(), SIGTERM);
  EXPECT_EQ(nodes_[2]->wait_exit(10s), 0);
  ASSERT_TRUE(
      eventually([&] { return state_of(0, "n2") == "left" && state_of(1, "n2") == "left"; }, 5s));
}

}  // namespace
}  // namespace meridian::testing

namespace meridian::testing {
namespace {

// Rotation by config reload, in the three passes of docs/operations.md: install the new key
// everywhere, make it primary, remove the old one. Nobody drops out on the way, and afterwards a
// node holding only the new key joins.
TEST_F(cluster_processes, keys_rotate_by_reload_without_losing_members) {
  const std::string old_key = read_key();
  const std::string new_key = meridian::cluster::encode_key(meridian::cluster::generate_key());
  for (int i = 0; i < 2; ++i) start(i);
  ASSERT_TRUE(eventually([&] { return alive_count(0) == 2 && alive_count(1) == 2; }, 5s));
  for (const auto& ring :
       {old_key + "\n" + new_key + "\n", new_key + "\n" + old_key + "\n", new_key + "\n"}) {
    write_file(dir_.file("cluster.keys"), ring);
    for (int i = 0; i < 2; ++i) ::kill(nodes_[i]->pid(), SIGHUP);
    // Each pass is done once both have logged the reload; gossip keeps flowing through it.
    ASSERT_TRUE(eventually([&] { return alive_count(0) == 2 && alive_count(1) == 2; }, 3s));
    std::this_thread::sleep_for(300ms);  // let a few probe rounds run under the new keys
    ASSERT_EQ(alive_count(0), 2);
  }
  write_file(dir_.file("new-only.keys"), new_key + "\n");
  start(2, dir_.file("new-only.keys"));
  EXPECT_TRUE(eventually([&] { return alive_count(0) == 3 && alive_count(2) == 3; }, 5s))
      << nodes_[2]->log();
}

}  // namespace
}  // namespace meridian::testing
