// Real `meridian run` processes forming a cluster on loopback: join, failure detection, restart,
// and a node with the wrong key kept out. Short black-box stories, as in Redis's cluster tests.

#include <gtest/gtest.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <algorithm>
#include <atomic>

#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "meridian/cluster/keyring.h"
#include "meridian/cluster/replicated_state.h"
#include "meridian/storage/store.h"
#include "process_support.h"
#include "sanitized.h"

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
           ", data_dir: " + dir_.file("n" + std::to_string(i)) + node_fields_[i] +
           "}\nlisten: {proxy: 127.0.0.1:" + std::to_string(ports_[i].proxy) +
           ", admin: 127.0.0.1:" + std::to_string(ports_[i].admin) +
           "}\nadmin: {token_file: " + dir_.file("admin.token") +
           "}\ncluster: {bind: 127.0.0.1:" + std::to_string(ports_[i].gossip) + ", seeds: [" +
           seeds + "], keyring_file: " + keyring + "}\n" + extra_yaml_;
  }
  std::string extra_yaml_;                  // appended to every node's config
  std::map<int, std::string> node_fields_;  // added to node i's `node` section (", key: value")

  // Starts node i and waits until its admin API answers. Ports are picked free but may be taken
  // by a parallel test before the child binds them: then the child exits, and node i gets new
  // ports and another try. A child that is still starting is waited for (loading 10,000
  // documents under the sanitizers on a loaded machine takes more than 3 s).
  void start(int i, const std::string& keyring = "") {
    auto path = dir_.file("n" + std::to_string(i) + ".yaml");
    for (int attempt = 0; attempt < 4; ++attempt) {
      write_file(path, config_for(i, keyring.empty() ? dir_.file("cluster.keys") : keyring));
      nodes_[i] = std::make_unique<child_node>(path, dir_.file("n" + std::to_string(i) + ".log"));
      bool up = false;
      eventually(
          [&] {
            httplib::Client c("127.0.0.1", ports_[i].admin);
            auto res = c.Get("/health");
            up = res && res->status == 200 &&
                 res->body.find("\"n" + std::to_string(i) + "\"") != std::string::npos;
            return up || !nodes_[i]->running();
          },
          30s * testing::slowdown);
      if (up) return;
      if (nodes_[i]->running()) break;  // neither up nor gone: no other ports will help
      ports_[i] = {unused_port(), unused_port(), unused_port()};
    }
    FAIL() << "node " << i << " did not start:\n" << nodes_[i]->log();
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
  // The issue's bound is 3 s (measured in docs/benchmarks.md); generous here, where ctest runs
  // other multi-process clusters in parallel on two cores.
  ASSERT_TRUE(eventually(joined, 10s)) << [&] {
    std::string who;  // which node lacks whom, when it fails
    for (int i = 0; i < count; ++i) {
      who += "node " + std::to_string(i) + " sees " + std::to_string(alive_count(i)) + " alive:";
      for (const auto& m : members_of(i))
        who += " " + m["id"].get<std::string>() + "=" + m["state"].get<std::string>();
      who += "\n";
    }
    return who + nodes_[0]->log();
  }();

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
  EXPECT_EQ(nodes_[2]->wait_exit(10s), 0) << nodes_[2]->log();
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
  // GET /cluster/keys on node 0: the rotation's progress over both nodes.
  auto keys_view = [&] {
    httplib::Client c("127.0.0.1", ports_[0].admin);
    auto res = c.Get("/cluster/keys", {{"Authorization", "Bearer test-token-0123456789abcdef"}});
    return res && res->status == 200 ? nlohmann::json::parse(res->body) : nlohmann::json();
  };
  // The fingerprint that is primary on both nodes, or "".
  auto primary_on_both = [&](const nlohmann::json& v) {
    if (!v.is_object()) return std::string();
    for (const auto& [fp, n] : v["keys"].items())
      if (n["primary_on"] == 2) return fp;
    return std::string();
  };
  std::string first_primary;
  int pass = 0;
  for (const auto& ring :
       {old_key + "\n" + new_key + "\n", new_key + "\n" + old_key + "\n", new_key + "\n"}) {
    write_file(dir_.file("cluster.keys"), ring);
    for (int i = 0; i < 2; ++i) ::kill(nodes_[i]->pid(), SIGHUP);
    ++pass;
    // A pass is done when both nodes report the new keyring: install (2 keys everywhere, old
    // primary), switch (2 keys, new primary), remove (the new key alone).
    ASSERT_TRUE(eventually(
        [&] {
          auto v = keys_view();
          if (!v.is_object() || v["alive"] != 2) return false;
          size_t want_keys = pass == 3 ? 1 : 2;
          if (v["keys"].size() != want_keys) return false;
          for (const auto& [fp, n] : v["keys"].items())
            if (n["installed_on"] != 2) return false;
          auto primary = primary_on_both(v);
          if (primary.empty()) return false;
          if (pass == 1) first_primary = primary;
          return pass == 1 || primary != first_primary;
        },
        5s))
        << "pass " << pass << ": " << keys_view().dump();
    ASSERT_TRUE(eventually([&] { return alive_count(0) == 2 && alive_count(1) == 2; }, 3s));
  }
  write_file(dir_.file("new-only.keys"), new_key + "\n");
  start(2, dir_.file("new-only.keys"));
  EXPECT_TRUE(eventually([&] { return alive_count(0) == 3 && alive_count(2) == 3; }, 5s))
      << nodes_[2]->log();
}

}  // namespace
}  // namespace meridian::testing

// Cluster-wide config: documents written through any node's admin API reach every node's data
// plane, bad documents are refused whole, and an acknowledged write survives kill -9.
namespace meridian::testing {
namespace {

struct reply {
  int status = 0;
  nlohmann::json body;
};

class cluster_config : public cluster_processes {
 protected:
  reply admin(int i, const std::string& method, const std::string& path,
              const std::string& body = "") {
    httplib::Client c("127.0.0.1", ports_[i].admin);
    c.set_read_timeout(5, 0);
    httplib::Headers h = {{"Authorization", "Bearer test-token-0123456789abcdef"}};
    httplib::Result res = method == "PUT"      ? c.Put(path.c_str(), h, body, "application/json")
                          : method == "POST"   ? c.Post(path.c_str(), h, body, "application/json")
                          : method == "DELETE" ? c.Delete(path.c_str(), h)
                                               : c.Get(path.c_str(), h);
    if (!res) return {};
    return {res->status, nlohmann::json::parse(res->body, nullptr, false)};
  }

  // Status of GET path on node i's proxy (0 when it does not answer).
  int proxy_status(int i, const std::string& path) {
    httplib::Client c("127.0.0.1", ports_[i].proxy);
    c.set_read_timeout(2, 0);
    auto res = c.Get(path.c_str());
    return res ? res->status : 0;
  }

  void start_cluster(int n) {
    for (int i = 0; i < n; ++i) {
      start(i);
      if (HasFatalFailure()) return;
    }
    ASSERT_TRUE(eventually(
        [&] {
          for (int i = 0; i < n; ++i)
            if (alive_count(i) != n) return false;
          return true;
        },
        20s))  // seconds when alone; 8 s was too short under ctest -j2 on a loaded machine
        << [&] {
             std::string who;
             for (int i = 0; i < n; ++i)
               who += "node " + std::to_string(i) + " sees " + std::to_string(alive_count(i)) +
                      " alive: " + admin(i, "GET", "/cluster/members").body.dump() + "\n";
             return who + nodes_[0]->log();
           }();
  }

  std::string upstream_doc() {
    return R"({"targets":[{"address":")" + backend_.address() + R"("}]})";
  }

  void SetUp() override {
    cluster_processes::SetUp();
    backend_.server().Get(".*", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("from backend", "text/plain");
    });
    backend_.start();
  }

  upstream backend_;
};

TEST_F(cluster_config, a_route_put_on_one_node_is_served_by_every_node) {
  start_cluster(count);
  auto up = admin(0, "PUT", "/config/upstreams/backend", upstream_doc());
  ASSERT_EQ(up.status, 200) << up.body.dump();
  // A route is checked against the upstreams the receiving node holds: wait for node 1 to have it.
  ASSERT_TRUE(eventually([&] { return admin(1, "GET", "/config").body["upstreams"].size() == 1; },
                         10s * testing::slowdown))
      << "the upstream did not reach node 1";
  auto put_at = std::chrono::steady_clock::now();
  auto r = admin(1, "PUT", "/config/routes/hello",
                 R"({"match":{"path_prefix":"/hello"},"upstream":"backend"})");
  ASSERT_EQ(r.status, 200) << r.body.dump();
  uint64_t version = r.body["version"].get<uint64_t>();

  std::vector<double> took_ms(count, -1);
  ASSERT_TRUE(eventually(
      [&] {
        bool all = true;
        for (int i = 0; i < count; ++i) {
          if (took_ms[i] >= 0) continue;
          if (proxy_status(i, "/hello/x") == 200) {
            took_ms[i] =
                std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - put_at)
                    .count();
          } else {
            all = false;
          }
        }
        return all;
      },
      20s * testing::slowdown))
      << nodes_[3]->log();
  double slowest = *std::max_element(took_ms.begin(), took_ms.end());
  std::printf("route served by all %d nodes %.0f ms after the PUT\n", count, slowest);
  // Gossip carries it, not the 30 s push-pull: seconds at most even on a loaded machine (the
  // 1 s p99 figure is measured by bench/config_propagation.py, docs/benchmarks.md).
  EXPECT_LT(slowest, 5000 * testing::slowdown);

  // Every node reports the same version and, once digests have gossiped, convergence.
  ASSERT_TRUE(eventually(
      [&] {
        for (int i = 0; i < count; ++i) {
          auto h = admin(i, "GET", "/cluster/health");
          if (h.status != 200 || h.body["converged"] != true ||
              h.body["config_version"].get<uint64_t>() != version)
            return false;
        }
        return true;
      },
      10s));
  auto cfg = admin(4, "GET", "/config");
  EXPECT_EQ(cfg.body["version"].get<uint64_t>(), version);
  ASSERT_EQ(cfg.body["routes"].size(), 1u);
  EXPECT_EQ(cfg.body["routes"][0]["name"], "hello");

  // A DELETE on a third node removes it everywhere.
  ASSERT_EQ(admin(2, "DELETE", "/config/routes/hello").status, 200);
  ASSERT_TRUE(eventually(
      [&] {
        for (int i = 0; i < count; ++i)
          if (proxy_status(i, "/hello") != 404) return false;
        return true;
      },
      10s));
}

// Issue 15 (2): anti-entropy stopped for good once the state passed one message (64 KiB). Node 0
// starts holding 10,000 routes that the others never saw (written to its store beforehand: a PUT
// with 10,000 routes present takes about 3 s today, see docs/operations.md); they must pull all
// of them. Then node 2 is stopped (SIGSTOP, at least MERIDIAN_PAUSE_S seconds, 10 by default:
// long enough to be declared dead) while node 0 changes 3,000 of the routes (restarted over
// its store, so only anti-entropy can spread them) and takes acknowledged admin writes: node 2
// must hold exactly the same documents within 5 s of SIGCONT.
TEST_F(cluster_config, ten_thousand_routes_converge_within_5s_after_a_node_paused_through_writes) {
  constexpr int routes = 10'000;
  const char* pause_env = std::getenv("MERIDIAN_PAUSE_S");
  const auto pause = std::chrono::seconds(pause_env ? std::atoi(pause_env) : 10);
  auto route = [](const std::string& name, const std::string& prefix) {
    return R"({"name":")" + name + R"(","match":{"path_prefix":"/)" + prefix +
           R"(","methods":["GET","POST"]},"upstream":"backend",)"
           R"("request_headers":{"add":{"x-gateway":"meridian"}}})";
  };
  // Writes to node 0's store while node 0 is not running.
  auto write_store = [&](const std::function<void(cluster::replicated_state&)>& writes) {
    std::filesystem::create_directories(dir_.file("n0"));
    std::string error;
    auto store = storage::store::open(dir_.file("n0") + "/db", &error);
    ASSERT_TRUE(store) << error;
    auto unix_ms = [] {
      return std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::system_clock::now().time_since_epoch())
          .count();
    };
    cluster::replicated_state st(cluster::state_options{.self_id = "n0"}, unix_ms, store.get());
    ASSERT_TRUE(st.load(&error)) << error;
    writes(st);
  };
  std::string error;
  write_store([&](cluster::replicated_state& st) {
    st.put(cluster::doc_family::config, "upstreams/backend",
           R"({"name":"backend","targets":[{"address":")" + backend_.address() + R"("}]})", &error);
    for (int i = 0; i < routes; ++i) {
      std::string name = "r" + std::to_string(i);
      st.put(cluster::doc_family::config, "routes/" + name, route(name, name), &error, false);
    }
  });
  // The documents count and digest node i reports, or {-1, ""}.
  auto state_of_config = [&](int i) -> std::pair<int64_t, std::string> {
    auto h = admin(i, "GET", "/cluster/health");
    if (h.status != 200 || !h.body.contains("config_documents")) return {-1, ""};
    return {h.body["config_documents"].get<int64_t>(), h.body["config_digest"].get<std::string>()};
  };
  auto all_hold = [&](int64_t documents) {
    auto first = state_of_config(0);
    if (first.first != documents) return false;
    for (int i = 1; i < 3; ++i)
      if (state_of_config(i) != first) return false;
    return true;
  };
  auto t = std::chrono::steady_clock::now();
  start_cluster(3);
  ASSERT_TRUE(eventually([&] { return all_hold(routes + 1); }, 60s * testing::slowdown))
      << "node 1 holds " << state_of_config(1).first << ", node 2 " << state_of_config(2).first;
  std::printf("10,001 documents from node 0 to nodes 1 and 2 in %lld ms (start included)\n",
              static_cast<long long>((std::chrono::steady_clock::now() - t) / 1ms));

  ::kill(nodes_[2]->pid(), SIGSTOP);
  auto paused_at = std::chrono::steady_clock::now();
  struct resume_on_exit {
    pid_t pid;
    ~resume_on_exit() { ::kill(pid, SIGCONT); }
  } resume{nodes_[2]->pid()};
  ::kill(nodes_[0]->pid(), SIGTERM);
  // A sanitizer report makes the exit status 66; the report is in the log, printed here.
  ASSERT_EQ(nodes_[0]->wait_exit(10s), 0) << nodes_[0]->log();
  // 2,000 routes replaced, 500 deleted, 500 new: none of them ever leaves as a delta.
  write_store([&](cluster::replicated_state& st) {
    for (int i = 0; i < 2'000; ++i) {
      std::string name = "r" + std::to_string(i * 5);
      st.put(cluster::doc_family::config, "routes/" + name, route(name, "v2/" + name), &error,
             false);
    }
    for (int i = 0; i < 500; ++i)
      st.remove(cluster::doc_family::config, "routes/r" + std::to_string(i * 5 + 1), &error);
    for (int i = 0; i < 500; ++i) {
      std::string name = "new" + std::to_string(i);
      st.put(cluster::doc_family::config, "routes/" + name, route(name, name), &error, false);
    }
  });
  start(0);
  // Acknowledged writes through the admin API while node 2 is stopped.
  auto put = admin(0, "PUT", "/config/routes/acked",
                   R"({"match":{"path_prefix":"/acked"},"upstream":"backend"})");
  ASSERT_EQ(put.status, 200) << put.body.dump();
  ASSERT_EQ(admin(1, "DELETE", "/config/routes/r3").status, 200);
  const int64_t expected = routes + 1 + 500 - 500 + 1 - 1;
  ASSERT_TRUE(eventually(
      [&] {
        return state_of_config(0).first == expected && state_of_config(1) == state_of_config(0);
      },
      30s))
      << "node 1 holds " << state_of_config(1).first << ", node 0 " << state_of_config(0).first;
  while (std::chrono::steady_clock::now() - paused_at < pause) std::this_thread::sleep_for(100ms);
  EXPECT_NE(state_of(0, "n2"), "alive") << "node 2 was stopped long enough to be declared failed";

  ::kill(nodes_[2]->pid(), SIGCONT);
  std::printf("node 2 stopped for %lld ms\n",
              static_cast<long long>((std::chrono::steady_clock::now() - paused_at) / 1ms));
  t = std::chrono::steady_clock::now();
  bool converged = eventually([&] { return all_hold(expected); }, 30s);
  auto took = std::chrono::steady_clock::now() - t;
  std::printf("node 2 held all %lld documents %lld ms after SIGCONT\n",
              static_cast<long long>(expected), static_cast<long long>(took / 1ms));
  ASSERT_TRUE(converged) << "node 2 holds " << state_of_config(2).first << " of " << expected
                         << "\n"
                         << nodes_[2]->log();
  EXPECT_LT(took, 5s * testing::slowdown);
  // And its data plane serves exactly that, the acknowledged writes included. The route count
  // alone does not tell (the data plane before the pause also had 10,000 routes): wait for the
  // installed config to hold the writes made during the pause.
  std::map<std::string, std::string> prefix;
  auto read_routes = [&] {
    auto cfg = admin(2, "GET", "/config");
    prefix.clear();
    if (cfg.status != 200) return false;
    for (const auto& r : cfg.body["routes"])
      prefix[r["name"].get<std::string>()] = r["match"]["path_prefix"].get<std::string>();
    return prefix.size() == static_cast<size_t>(expected - 1) && prefix.count("acked") &&
           prefix.count("new499");
  };
  ASSERT_TRUE(eventually(read_routes, 30s)) << prefix.size() << " routes";
  EXPECT_EQ(prefix["acked"], "/acked");
  EXPECT_FALSE(prefix.count("r3"));
  EXPECT_FALSE(prefix.count("r6"));
  EXPECT_EQ(prefix["r10"], "/v2/r10");
  EXPECT_EQ(prefix["new499"], "/new499");
}

// Issue 15 (4): a 4-byte length prefix alone made a node allocate 4 MiB; 1,000 such connections
// took one to 3.8 GB. Now 1,000 keyless connections on the gossip port (half announce a 4 MiB
// frame and send nothing more, half announce a legal one and trickle it a byte at a time;
// reconnecting whenever dropped) leave the node within 100 MB of where it was, and it keeps
// gossiping with its real peer: UDP deltas and a push-pull served on the attacked TCP port.
TEST_F(cluster_config,
       a_thousand_keyless_gossip_connections_cost_little_memory_and_peers_still_sync) {
  const char* env = std::getenv("MERIDIAN_ATTACK_CONNECTIONS");
  const int connections = env ? std::atoi(env) : 1000;
  start_cluster(2);
  auto rss_kib = [&](const char* field) {
    std::ifstream in("/proc/" + std::to_string(nodes_[0]->pid()) + "/status");
    std::string line;
    while (std::getline(in, line))
      if (line.rfind(field, 0) == 0) return std::stol(line.substr(std::strlen(field)));
    return -1L;
  };
  const long before_kib = rss_kib("VmRSS:");

  std::atomic<bool> stop{false};
  std::atomic<uint64_t> reconnects{0};
  std::thread attacker([&] {
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(static_cast<uint16_t>(ports_[0].gossip));
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    auto open_one = [&](int i) {
      int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      if (fd < 0) return -1;
      if (::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof to) != 0) {
        ::close(fd);
        return -1;
      }
      // 4 MiB announced, or a legal 60,000-byte frame that starts like a sealed one.
      const unsigned char big[4] = {0x00, 0x40, 0x00, 0x00};
      const unsigned char legal[8] = {0x00, 0x00, 0xea, 0x60, 'M', 'R', 'D', '1'};
      if (i % 2 == 0)
        ::send(fd, big, sizeof big, MSG_NOSIGNAL);
      else
        ::send(fd, legal, sizeof legal, MSG_NOSIGNAL);
      return fd;
    };
    std::vector<int> fds(static_cast<size_t>(connections), -1);
    for (int i = 0; i < connections && !stop; ++i) fds[static_cast<size_t>(i)] = open_one(i);
    while (!stop) {
      for (int i = 0; i < connections && !stop; ++i) {
        int& fd = fds[static_cast<size_t>(i)];
        char byte = 'x';
        if (fd >= 0 && (i % 2 == 0 || ::send(fd, &byte, 1, MSG_NOSIGNAL | MSG_DONTWAIT) >= 0)) {
          // Dropped by the node? Then reconnect and announce again.
          char probe;
          ssize_t n = ::recv(fd, &probe, 1, MSG_DONTWAIT);
          if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;
        }
        if (fd >= 0) ::close(fd);
        fd = open_one(i);
        reconnects.fetch_add(1);
      }
      std::this_thread::sleep_for(200ms);
    }
    for (int fd : fds)
      if (fd >= 0) ::close(fd);
  });
  struct join_on_exit {
    std::atomic<bool>& stop;
    std::thread& t;
    ~join_on_exit() {
      stop = true;
      if (t.joinable()) t.join();
    }
  } joiner{stop, attacker};

  std::this_thread::sleep_for(3s);  // let the attack fill the node's streams first
  // A change small enough for a datagram travels by UDP; an upstream too large for one is only
  // announced, so node 1 must pull it from node 0 over the attacked TCP port.
  ASSERT_EQ(admin(0, "PUT", "/config/upstreams/small", upstream_doc()).status, 200);
  std::string targets;
  for (int i = 0; i < 150; ++i)
    targets += std::string(i ? "," : "") + R"({"address":"127.0.0.1:)" + std::to_string(20000 + i) +
               R"(","region":"eu-west","weight":1})";
  auto big = admin(0, "PUT", "/config/upstreams/large", R"({"targets":[)" + targets + "]}");
  ASSERT_EQ(big.status, 200) << big.body.dump();
  auto upstreams_on_1 = [&] {
    auto cfg = admin(1, "GET", "/config");
    return cfg.status == 200 ? cfg.body["upstreams"].size() : 0u;
  };
  ASSERT_TRUE(eventually([&] { return upstreams_on_1() == 2; }, 20s))
      << "node 1 holds " << upstreams_on_1() << " of 2 upstreams\n"
      << nodes_[1]->log();
  std::this_thread::sleep_for(3s);  // the attack goes on, the peers stay friends
  EXPECT_EQ(state_of(0, "n1"), "alive");
  EXPECT_EQ(state_of(1, "n0"), "alive");

  const long peak_kib = rss_kib("VmHWM:");
  stop = true;
  attacker.join();
  httplib::Client c("127.0.0.1", ports_[0].admin);
  auto text = c.Get("/metrics", {{"Authorization", "Bearer test-token-0123456789abcdef"}});
  ASSERT_TRUE(text);
  std::printf("%d connections (%llu reconnects): node RSS %ld MiB before, peak %ld MiB\n",
              connections, static_cast<unsigned long long>(reconnects.load()), before_kib / 1024,
              peak_kib / 1024);
  EXPECT_LE(peak_kib - before_kib, 100 * 1024 * testing::memory_overhead);
  // Dropped at the cap (1,000 against 64: the oldest without a frame goes long before its
  // 2 s first-frame deadline would) and refused from the 4 MiB length prefix.
  for (const char* m :
       {"meridian_cluster_streams_refused_total ", "meridian_cluster_streams_oversized_total "}) {
    auto at = text->body.find("\n" + std::string(m));  // the sample, not its # HELP line
    ASSERT_NE(at, std::string::npos) << m;
    EXPECT_GT(std::stoull(text->body.substr(at + 1 + std::strlen(m))), 0u) << m;
  }
}

TEST_F(cluster_config, invalid_documents_are_refused_with_400_and_change_nothing) {
  start_cluster(2);
  auto before = admin(0, "GET", "/config");
  auto r = admin(0, "PUT", "/config/routes/orphan",
                 R"({"match":{"path_prefix":"/o"},"upstream":"nowhere"})");
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body["message"].get<std::string>().find("upstream 'nowhere' is not defined"),
            std::string::npos)
      << r.body.dump();
  r = admin(0, "PUT", "/config/routes/x", "{not json");
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body["error"], "invalid_json");
  r = admin(0, "PUT", "/config/routes/x", R"({"name":"y","upstream":"a"})");
  EXPECT_EQ(r.status, 400);
  r = admin(0, "PUT", "/config/upstreams/u", R"({"targets":[{"address":"nohost"}]})");
  EXPECT_EQ(r.status, 400) << r.body.dump();
  r = admin(0, "PUT", "/config/upstreams/u", R"({"targets":[], "bogus": 1})");
  EXPECT_EQ(r.status, 400);
  EXPECT_NE(r.body.dump().find("unknown key 'bogus'"), std::string::npos) << r.body.dump();
  EXPECT_EQ(admin(0, "PUT", "/config/widgets/w", "{}").status, 404);
  EXPECT_EQ(admin(0, "DELETE", "/config/routes/never").status, 404);
  // An upstream that a route uses cannot be deleted out from under it.
  ASSERT_EQ(admin(0, "PUT", "/config/upstreams/backend", upstream_doc()).status, 200);
  ASSERT_EQ(
      admin(0, "PUT", "/config/routes/r", R"({"match":{"path_prefix":"/r"},"upstream":"backend"})")
          .status,
      200);
  // Node 1 must hold the route too (it may have the upstream a round before the route, and then
  // the delete is valid there): wait until it serves /r, then try.
  ASSERT_TRUE(eventually([&] { return proxy_status(1, "/r") == 200; }, 5s));
  r = admin(1, "DELETE", "/config/upstreams/backend");
  EXPECT_EQ(r.status, 400) << r.body.dump();
  // The checks a put brings with it: an upstream's failover upstreams must exist, a route may
  // not ask for jwt on a node without providers; replacing a valid route with an orphan is
  // refused, and re-putting the same valid route is fine.
  r = admin(0, "PUT", "/config/upstreams/f",
            R"({"targets":[{"address":"127.0.0.1:1"}],"failover":["missing"]})");
  EXPECT_EQ(r.status, 400) << r.body.dump();
  EXPECT_NE(r.body.dump().find("failover upstream 'missing' is not defined"), std::string::npos)
      << r.body.dump();
  EXPECT_EQ(admin(0, "PUT", "/config/upstreams/f",
                  R"({"targets":[{"address":"127.0.0.1:1"}],"failover":["backend"]})")
                .status,
            200);
  r = admin(0, "PUT", "/config/routes/j",
            R"({"match":{"path_prefix":"/j"},"upstream":"backend","auth":{"methods":["jwt"]}})");
  EXPECT_EQ(r.status, 400) << r.body.dump();
  EXPECT_NE(r.body.dump().find("no jwt providers"), std::string::npos) << r.body.dump();
  r = admin(0, "PUT", "/config/routes/r", R"({"match":{"path_prefix":"/r"},"upstream":"gone"})");
  EXPECT_EQ(r.status, 400) << r.body.dump();
  EXPECT_NE(r.body.dump().find("upstream 'gone' is not defined"), std::string::npos);
  EXPECT_EQ(
      admin(0, "PUT", "/config/routes/r", R"({"match":{"path_prefix":"/r"},"upstream":"backend"})")
          .status,
      200);
  // Workers take a new snapshot on their next sweep (50 ms).
  EXPECT_TRUE(eventually([&] { return proxy_status(0, "/r") == 200; }, 2s));
  EXPECT_EQ(admin(0, "GET", "/health").status, 200);  // still serving
  EXPECT_EQ(before.body["routes"].size(), 0u);
}

TEST_F(cluster_config, an_acknowledged_put_survives_kill_9_of_every_node) {
  start_cluster(3);
  ASSERT_EQ(admin(2, "PUT", "/config/upstreams/backend", upstream_doc()).status, 200);
  auto r = admin(2, "PUT", "/config/routes/durable",
                 R"({"match":{"path_prefix":"/durable"},"upstream":"backend"})");
  ASSERT_EQ(r.status, 200);
  for (int i = 0; i < 3; ++i) ::kill(nodes_[i]->pid(), SIGKILL);
  for (int i = 0; i < 3; ++i) nodes_[i]->wait_exit(2s);
  for (int i = 0; i < 3; ++i) start(i);
  ASSERT_TRUE(eventually(
      [&] {
        for (int i = 0; i < 3; ++i)
          if (alive_count(i) != 3 || proxy_status(i, "/durable") != 200) return false;
        return true;
      },
      10s))
      << nodes_[0]->log();
  EXPECT_EQ(admin(0, "GET", "/config").body["version"], r.body["version"]);
}

}  // namespace
}  // namespace meridian::testing

namespace meridian::testing {
namespace {

// One global limit across three processes: the nodes share their counts by gossip, so the
// cluster admits the limit, not three times it, and every node reports the same view.
TEST_F(cluster_config, a_global_rate_limit_holds_across_nodes) {
  start_cluster(3);
  ASSERT_EQ(admin(0, "PUT", "/config/upstreams/backend", upstream_doc()).status, 200);
  ASSERT_TRUE(eventually([&] { return admin(1, "GET", "/config").body["upstreams"].size() == 1; },
                         10s * testing::slowdown))
      << "the upstream did not reach node 1";
  auto r = admin(1, "PUT", "/config/routes/limited",
                 R"({"match":{"path_prefix":"/limited"},"upstream":"backend",)"
                 R"("rate_limit":{"limit":6,"window":"1h","key":"global"}})");
  ASSERT_EQ(r.status, 200) << r.body.dump();
  // A second route written after it: once a node serves /probe it holds /limited too.
  ASSERT_EQ(admin(1, "PUT", "/config/routes/probe",
                  R"({"match":{"path_prefix":"/probe"},"upstream":"backend"})")
                .status,
            200);
  ASSERT_TRUE(eventually(
      [&] {
        for (int i = 0; i < 3; ++i)
          if (proxy_status(i, "/probe") != 200) return false;
        return true;
      },
      5s));

  // Requests round-robin over the nodes. Before each one, the node it goes to must have heard
  // of every admission so far (polled, with a deadline): the test checks that counts are shared,
  // not how fast they travel on a loaded machine (a fixed 400 ms spacing flaked under ctest -j2).
  int admitted = 0, refused = 0;
  std::string statuses;  // for the failure message
  for (int n = 0; n < 15; ++n) {
    ASSERT_TRUE(eventually(
        [&] {
          auto v = admin(n % 3, "GET", "/ratelimits/limited?key=");
          return v.status == 200 && v.body["count"] == admitted;
        },
        10s))
        << "node " << n % 3 << " never saw " << admitted << " admissions";
    // The admin API sees a config the moment it is installed; the node's workers take it a
    // moment later: a 404 there counts nothing, so ask again until the route is served.
    int status = 404;
    ASSERT_TRUE(eventually([&] { return (status = proxy_status(n % 3, "/limited")) != 404; }, 5s))
        << "node " << n % 3 << " never served /limited";
    statuses += std::to_string(status) + " ";
    admitted += status == 200;
    refused += status == 429;
  }
  EXPECT_EQ(admitted + refused, 15) << "statuses: " << statuses;
  EXPECT_EQ(admitted, 6) << "three per-node limits would admit up to 15";
  // Every node reports the cluster-wide count, split by node.
  ASSERT_TRUE(eventually(
      [&] {
        for (int i = 0; i < 3; ++i) {
          auto v = admin(i, "GET", "/ratelimits/limited?key=");
          if (v.status != 200 || v.body["count"] != admitted) return false;
        }
        return true;
      },
      5s))
      << admin(0, "GET", "/ratelimits/limited?key=").body.dump();
  auto v = admin(2, "GET", "/ratelimits/limited?key=");
  EXPECT_EQ(v.body["limit"], 6);
  EXPECT_EQ(v.body["by_node"].size(), 3u) << v.body.dump();
}

}  // namespace
}  // namespace meridian::testing

namespace meridian::testing {
namespace {

// A breaker with cluster scope: one node's observation opens it on every node, so nodes that
// never sent the target a request avoid it too; its recovery closes it everywhere.
TEST_F(cluster_config, a_breaker_opened_by_one_node_is_open_on_every_node) {
  start_cluster(count);  // 5 nodes in 3 regions
  upstream bad;
  std::atomic<bool> failing{true};
  bad.server().Get(".*", [&](const httplib::Request&, httplib::Response& res) {
    res.status = failing ? 500 : 200;
    res.set_content(failing ? "broken" : "ok", "text/plain");
  });
  bad.start();
  auto up = admin(0, "PUT", "/config/upstreams/pair",
                  R"({"targets":[{"address":")" + backend_.address() + R"("},{"address":")" +
                      bad.address() +
                      R"("}],"outlier":{"consecutive_failures":0},)"
                      R"("circuit_breaker":{"failure_rate":0.5,"min_requests":4,"window":"10s",)"
                      R"("open_for":"2s","half_open_probes":1,"scope":"cluster"}})");
  ASSERT_EQ(up.status, 200) << up.body.dump();
  ASSERT_TRUE(
      eventually([&] { return admin(0, "GET", "/config").body["upstreams"].size() == 1; }, 5s));
  ASSERT_EQ(admin(0, "PUT", "/config/routes/pair",
                  R"({"match":{"path_prefix":"/pair"},"upstream":"pair"})")
                .status,
            200);
  // Nodes 1 and 2 get the route without a single request through them (so neither can trip
  // the breaker itself); node 0 is the only one with traffic until its breaker opens.
  ASSERT_TRUE(eventually(
      [&] {
        for (int i = 1; i < count; ++i)
          if (admin(i, "GET", "/config").body["routes"].size() != 1) return false;
        return true;
      },
      5s));
  auto state_on = [&](int i) {
    auto all = admin(i, "GET", "/breakers").body;
    for (const auto& b : all["breakers"])
      if (b["target"] == bad.address())
        return b["state"].get<std::string>() + "/" + b["origin"].get<std::string>();
    return std::string();
  };
  ASSERT_TRUE(eventually(
      [&] {
        proxy_status(0, "/pair");
        return state_on(0).rfind("open/", 0) == 0;
      },
      5s));
  auto opened = std::chrono::steady_clock::now();
  ASSERT_TRUE(eventually(
      [&] {
        for (int i = 1; i < count; ++i)
          if (state_on(i).rfind("open/n0", 0) != 0) return false;
        return true;
      },
      5s))
      << state_on(1) << " " << state_on(4);
  std::printf(
      "breaker open on every node %.0f ms after node 0 opened it\n",
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - opened).count());
  int before = bad.hits.load();
  ASSERT_TRUE(eventually([&] { return proxy_status(2, "/pair") == 200; }, 2s));  // next sweep
  for (int i = 0; i < 10; ++i) EXPECT_EQ(proxy_status(2, "/pair"), 200);
  EXPECT_EQ(bad.hits.load(), before) << "node 2 never sends the failing target a request";

  // Still failing, traffic through every node: the breaker opened for 2 s, so exactly one
  // half-open probe (half_open_probes: 1) reaches the target cluster-wide before the failed
  // probe reopens it for 4 s. Counted over the first 5 s after the trip.
  int at_trip = bad.hits.load();
  for (int i = 0; std::chrono::steady_clock::now() - opened < 5s; ++i) {
    proxy_status(i % count, "/pair");
    std::this_thread::sleep_for(50ms);  // pacing the load
  }
  EXPECT_EQ(bad.hits.load() - at_trip, 1) << "one probe per open period, cluster-wide";

  // Recovery: after open_for the probe owner's probe closes it, and every node follows.
  failing = false;
  ASSERT_TRUE(eventually(
      [&] {
        for (int i = 0; i < count; ++i) proxy_status(i, "/pair");
        for (int i = 0; i < count; ++i)
          if (state_on(i).rfind("closed/", 0) != 0) return false;
        return true;
      },
      10s))
      << state_on(0) << " " << state_on(1) << " " << state_on(4);
}

}  // namespace
}  // namespace meridian::testing

namespace meridian::testing {
namespace {

// API keys: issued on one node, valid on every node within a second; revoked on one node,
// refused everywhere within a second; the plaintext never reaches a store or a log.
TEST_F(cluster_config, a_client_credentials_token_minted_on_one_node_works_on_every_node) {
  extra_yaml_ =
      "oauth: {issuer: https://gw.example, scopes: [read, write], access_token_ttl: 10m}\n";
  start_cluster(3);
  ASSERT_EQ(admin(0, "PUT", "/config/upstreams/backend", upstream_doc()).status, 200);
  ASSERT_EQ(admin(0, "PUT", "/config/consumers/acme", "{}").status, 200);
  ASSERT_EQ(admin(0, "PUT", "/config/routes/reports",
                  R"({"match":{"path_prefix":"/reports"},"upstream":"backend",)"
                  R"("auth":{"methods":["oauth"],"scopes":["read"]}})")
                .status,
            200);
  auto issued = admin(0, "POST", "/config/consumers/acme/keys", "");
  ASSERT_EQ(issued.status, 201) << issued.body.dump();
  const std::string client_id = issued.body["key_id"], secret = issued.body["key"];
  auto post = [&](int node, const std::string& path, const std::string& form, const std::string& id,
                  const std::string& pw) {
    httplib::Client c("127.0.0.1", ports_[node].proxy);
    c.set_read_timeout(2, 0);
    if (!id.empty()) c.set_basic_auth(id, pw);
    auto res = c.Post(path.c_str(), form, "application/x-www-form-urlencoded");
    return res ? reply{res->status, nlohmann::json::parse(res->body, nullptr, false)} : reply{};
  };
  auto get = [&](int node, const std::string& token) {
    httplib::Client c("127.0.0.1", ports_[node].proxy);
    c.set_read_timeout(2, 0);
    auto res = c.Get("/reports/q1", {{"Authorization", "Bearer " + token}});
    return res ? res->status : 0;
  };
  // Node 0 mints once the client (the API key) has reached it.
  reply minted;
  ASSERT_TRUE(eventually(
      [&] {
        minted =
            post(0, "/oauth/token", "grant_type=client_credentials&scope=read", client_id, secret);
        return minted.status == 200;
      },
      5s))
      << minted.body.dump();
  const std::string token = minted.body["access_token"];
  EXPECT_EQ(minted.body["token_type"], "Bearer");
  EXPECT_EQ(minted.body["expires_in"], 600);
  EXPECT_EQ(minted.body["scope"], "read");
  // Node 2 accepts it once node 0's public key has arrived by gossip.
  auto minted_at = std::chrono::steady_clock::now();
  ASSERT_TRUE(eventually([&] { return get(2, token) == 200 && get(1, token) == 200; }, 5s)) << [&] {
    httplib::Client c("127.0.0.1", ports_[2].proxy);
    auto res = c.Get("/reports/q1", {{"Authorization", "Bearer " + token}});
    httplib::Client c0("127.0.0.1", ports_[0].proxy);
    auto res0 = c0.Get("/reports/q1", {{"Authorization", "Bearer " + token}});
    return (res ? res->body : std::string("no answer")) +
           " / node 0: " + (res0 ? res0->body : std::string("no answer"));
  }();
  std::printf(
      "token minted on node 0 accepted by nodes 1 and 2 after %.0f ms\n",
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - minted_at)
          .count());
  EXPECT_EQ(backend_.last().get_header_value("X-Consumer-Id"), "acme");
  // Introspection on node 1 (RFC 7662).
  // The client (the API key) reaches node 1 like any key document, within about a second.
  reply info;
  ASSERT_TRUE(eventually(
      [&] {
        info = post(1, "/oauth/introspect", "token=" + token, client_id, secret);
        return info.status == 200;
      },
      5s))
      << info.body.dump();
  EXPECT_EQ(info.body["active"], true);
  EXPECT_EQ(info.body["sub"], "acme");
  EXPECT_EQ(info.body["client_id"], client_id);
  EXPECT_EQ(info.body["scope"], "read");
  // Errors per RFC 6749 section 5.2.
  EXPECT_EQ(
      post(0, "/oauth/token", "grant_type=client_credentials", client_id, secret + "x").status,
      401);
  EXPECT_EQ(post(0, "/oauth/token", "grant_type=client_credentials", "", "").body["error"],
            "invalid_client");
  EXPECT_EQ(post(0, "/oauth/token", "grant_type=implicit", client_id, secret).body["error"],
            "unsupported_grant_type");
  EXPECT_EQ(post(0, "/oauth/token", "grant_type=client_credentials&scope=admin", client_id, secret)
                .body["error"],
            "invalid_scope");
  // A token without the route's scope is 403; a tampered one 401.
  auto write_only =
      post(0, "/oauth/token", "grant_type=client_credentials&scope=write", client_id, secret);
  ASSERT_EQ(write_only.status, 200);
  EXPECT_TRUE(eventually([&] { return get(2, write_only.body["access_token"]) == 403; }, 3s));
  std::string tampered = token;
  tampered[tampered.size() - 5] = tampered[tampered.size() - 5] == 'A' ? 'B' : 'A';
  EXPECT_EQ(get(2, tampered), 401);
  // Revoked on node 1 (RFC 7009): refused on every node.
  EXPECT_EQ(post(1, "/oauth/revoke", "token=" + token, client_id, secret).status, 200);
  EXPECT_TRUE(eventually(
      [&] { return get(0, token) == 401 && get(1, token) == 401 && get(2, token) == 401; }, 3s));
  EXPECT_TRUE(eventually(
      [&] {
        auto r = post(2, "/oauth/introspect", "token=" + token, client_id, secret);
        return r.status == 200 && r.body["active"] == false;
      },
      5s));
}

// The value of a query parameter in a URL, percent-decoded.
std::string url_param(const std::string& url, const std::string& name) {
  auto q = url.find('?');
  if (q == std::string::npos) return "";
  std::string rest = url.substr(q + 1);
  size_t pos = 0;
  while (pos <= rest.size()) {
    size_t amp = rest.find('&', pos);
    std::string pair = rest.substr(pos, amp == std::string::npos ? std::string::npos : amp - pos);
    auto eq = pair.find('=');
    if (pair.substr(0, eq) == name && eq != std::string::npos) {
      std::string v = pair.substr(eq + 1), out;
      for (size_t i = 0; i < v.size(); ++i) {
        if (v[i] == '%' && i + 2 < v.size()) {
          out.push_back(static_cast<char>(std::stoi(v.substr(i + 1, 2), nullptr, 16)));
          i += 2;
        } else {
          out.push_back(v[i] == '+' ? ' ' : v[i]);
        }
      }
      return out;
    }
    if (amp == std::string::npos) break;
    pos = amp + 1;
  }
  return "";
}

TEST_F(cluster_config, authorization_code_and_refresh_tokens_work_on_every_node) {
  extra_yaml_ =
      "oauth: {issuer: https://gw.example, scopes: [read, write], access_token_ttl: 10m}\n";
  start_cluster(3);
  ASSERT_EQ(admin(0, "PUT", "/config/upstreams/backend", upstream_doc()).status, 200);
  ASSERT_EQ(
      admin(0, "PUT", "/config/consumers/web", R"({"redirect_uris":["https://web.example/cb"]})")
          .status,
      200);
  ASSERT_EQ(admin(0, "PUT", "/config/consumers/alice", R"({"groups":["staff"]})").status, 200);
  ASSERT_EQ(admin(0, "PUT", "/config/routes/reports",
                  R"({"match":{"path_prefix":"/reports"},"upstream":"backend",)"
                  R"("auth":{"methods":["oauth"],"scopes":["read"]}})")
                .status,
            200);
  EXPECT_EQ(admin(0, "PUT", "/config/consumers/alice/password", R"({"password":"short"})").status,
            400);
  EXPECT_EQ(
      admin(0, "PUT", "/config/consumers/nobody/password", R"({"password":"long enough"})").status,
      404);
  ASSERT_EQ(
      admin(0, "PUT", "/config/consumers/alice/password", R"({"password":"correct horse battery"})")
          .status,
      200);
  ASSERT_EQ(admin(0, "PUT", "/config/consumers/bob", "{}").status, 200);
  ASSERT_EQ(
      admin(0, "PUT", "/config/consumers/bob/password", R"({"password":"bob's secret"})").status,
      200);
  auto issued = admin(0, "POST", "/config/consumers/web/keys", "");
  ASSERT_EQ(issued.status, 201);
  const std::string client_id = issued.body["key_id"], secret = issued.body["key"];
  // The plaintext password is stored nowhere: not in the config, the audit trail or the logs.
  EXPECT_EQ(admin(0, "GET", "/config").body.dump().find("correct horse"), std::string::npos);

  struct http_reply {
    int status = 0;
    std::string body, location, content_type;
  };
  auto request = [&](int node, const std::string& method, const std::string& path,
                     const std::string& form, bool basic) {
    httplib::Client c("127.0.0.1", ports_[node].proxy);
    c.set_read_timeout(5, 0);
    if (basic) c.set_basic_auth(client_id, secret);
    auto res = method == "GET" ? c.Get(path.c_str())
                               : c.Post(path.c_str(), form, "application/x-www-form-urlencoded");
    if (!res) return http_reply{};
    return http_reply{res->status, res->body, res->get_header_value("Location"),
                      res->get_header_value("Content-Type")};
  };
  auto get = [&](int node, const std::string& token) {
    httplib::Client c("127.0.0.1", ports_[node].proxy);
    c.set_read_timeout(2, 0);
    auto res = c.Get("/reports/q1", {{"Authorization", "Bearer " + token}});
    return res ? res->status : 0;
  };
  const std::string verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";  // RFC 7636 B
  const std::string params = "response_type=code&client_id=" + client_id +
                             "&redirect_uri=https%3A%2F%2Fweb.example%2Fcb&scope=read&state=s1"
                             "&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
                             "&code_challenge_method=S256";
  // Logins fail (and count against the user) until the password reaches a node: wait for it.
  EXPECT_EQ(admin(0, "GET", "/config/consumers/alice/password").body["password"], "set");
  ASSERT_TRUE(eventually(
      [&] {
        for (int n = 1; n < 3; ++n)
          for (const char* user : {"alice", "bob"})
            if (admin(n, "GET", "/config/consumers/" + std::string(user) + "/password")
                    .body["password"] != "set")
              return false;
        return true;
      },
      15s));
  // The consent page on node 1, once the client (its key) reached it.
  http_reply page;
  ASSERT_TRUE(eventually(
      [&] {
        page = request(1, "GET", "/oauth/authorize?" + params, "", false);
        return page.status == 200;
      },
      15s))
      << page.status << " " << page.body;
  EXPECT_EQ(page.content_type, "text/html; charset=utf-8");
  EXPECT_NE(page.body.find("web asks for access"), std::string::npos);
  // Log in and allow, on node 1 (once the password document reached it).
  auto login = [&](int node) {
    http_reply r;
    bool ok = eventually(
        [&] {
          r = request(node, "POST", "/oauth/authorize",
                      params + "&username=alice&password=correct+horse+battery&decision=allow",
                      false);
          return r.status == 302;
        },
        15s);
    EXPECT_TRUE(ok) << r.status << " " << r.body;
    EXPECT_EQ(url_param(r.location, "state"), "s1");
    return url_param(r.location, "code");
  };
  std::string code = login(1);
  ASSERT_FALSE(code.empty());
  // Redeemed on node 2 with the verifier (node 1's signing key reaches it by gossip).
  auto redeem = [&](int node, const std::string& c) {
    return request(node, "POST", "/oauth/token",
                   "grant_type=authorization_code&code=" + c +
                       "&redirect_uri=https%3A%2F%2Fweb.example%2Fcb&code_verifier=" + verifier,
                   true);
  };
  // Retries call until it answers 200 (what it needs may still be on its way by gossip).
  auto until_ok = [&](auto call) {
    http_reply r;
    bool ok = eventually(
        [&] {
          r = call();
          return r.status == 200;
        },
        15s);
    EXPECT_TRUE(ok) << r.status << " " << r.body;
    return nlohmann::json::parse(r.body, nullptr, false);
  };
  auto t1 = until_ok([&] { return redeem(2, code); });
  ASSERT_TRUE(t1.contains("refresh_token"));
  const std::string at1 = t1["access_token"], rt1 = t1["refresh_token"];
  ASSERT_TRUE(eventually([&] { return get(0, at1) == 200; }, 15s));
  EXPECT_EQ(backend_.last().get_header_value("X-Consumer-Id"), "alice");
  EXPECT_EQ(backend_.last().get_header_value("X-Consumer-Groups"), "staff");

  // Refresh on node 0: a new pair.
  auto refresh = [&](int node, const std::string& rt) {
    return request(node, "POST", "/oauth/token", "grant_type=refresh_token&refresh_token=" + rt,
                   true);
  };
  auto t2 = until_ok([&] { return refresh(0, rt1); });
  ASSERT_TRUE(t2.contains("refresh_token"));
  const std::string at2 = t2["access_token"], rt2 = t2["refresh_token"];
  // rt1 replayed on node 1, once node 1 knows it was used: refused, and the grant dies
  // everywhere (both access tokens and rt2). Introspection answers inactive as well for a token
  // node 1 cannot verify yet, so first wait until it holds node 2's signing key (at1 passes).
  ASSERT_TRUE(eventually([&] { return get(1, at1) == 200; }, 15s));
  ASSERT_TRUE(eventually(
      [&] {
        auto r = request(1, "POST", "/oauth/introspect", "token=" + rt1, true);
        return r.status == 200 && nlohmann::json::parse(r.body)["active"] == false;
      },
      15s));
  auto reuse = refresh(1, rt1);
  EXPECT_EQ(reuse.status, 400);
  EXPECT_NE(reuse.body.find("reuse detected"), std::string::npos) << reuse.body;
  EXPECT_TRUE(eventually(
      [&] {
        for (int n = 0; n < 3; ++n)
          if (get(n, at1) != 401 || get(n, at2) != 401) return false;
        return true;
      },
      15s));
  EXPECT_EQ(refresh(2, rt2).status, 400);

  // One code redeemed on two nodes at the same moment: whichever way the race goes (one refused,
  // or both accepted before either heard of the other), every token it bought ends revoked on
  // every node.
  std::string raced = login(0);
  http_reply a, b;
  std::thread ta([&] { a = redeem(1, raced); });
  std::thread tb([&] { b = redeem(2, raced); });
  ta.join();
  tb.join();
  std::printf("same code redeemed on nodes 1 and 2 at once: %d and %d\n", a.status, b.status);
  EXPECT_TRUE(a.status == 200 || b.status == 200) << a.body << " / " << b.body;
  std::vector<std::string> bought;
  for (const auto* r : {&a, &b})
    if (r->status == 200) bought.push_back(nlohmann::json::parse(r->body)["access_token"]);
  EXPECT_TRUE(eventually(
      [&] {
        for (const auto& t : bought)
          for (int n = 0; n < 3; ++n)
            if (get(n, t) != 401) return false;
        return true;
      },
      15s));

  // The password grant, on node 2; a wrong password is invalid_grant.
  EXPECT_EQ(request(2, "POST", "/oauth/token",
                    "grant_type=password&username=alice&password=wrong+password", true)
                .status,
            400);
  auto pw =
      request(2, "POST", "/oauth/token",
              "grant_type=password&username=alice&password=correct+horse+battery&scope=read", true);
  ASSERT_EQ(pw.status, 200) << pw.body;
  EXPECT_TRUE(eventually(
      [&] { return get(1, nlohmann::json::parse(pw.body)["access_token"]) == 200; }, 15s));
  // Guessing is throttled cluster-wide: five wrong passwords on nodes 1 and 2 make node 0, which
  // saw none of them, hold the address's next attempt (right password or not) once their counts
  // reach it; the hold is a growing delay (1 s after the fifth failure, then 2 s, 4 s ...).
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(request(1 + i % 2, "POST", "/oauth/token",
                      "grant_type=password&username=bob&password=guess" + std::to_string(i), true)
                  .status,
              400);
  }
  http_reply locked;
  EXPECT_TRUE(eventually(
      [&] {
        locked = request(0, "POST", "/oauth/token",
                         "grant_type=password&username=bob&password=bob%27s+secret", true);
        return locked.body.find("too many failed attempts for this user from this address") !=
               std::string::npos;
      },
      15s))
      << locked.status << " " << locked.body;
  EXPECT_EQ(locked.status, 400);
  // Removing the password ends logins on every node.
  ASSERT_EQ(admin(0, "DELETE", "/config/consumers/alice/password", "").status, 200);
  EXPECT_EQ(admin(0, "GET", "/config/consumers/alice/password").body["password"], "none");
  http_reply after;
  EXPECT_TRUE(eventually(
      [&] {
        after = request(2, "POST", "/oauth/token",
                        "grant_type=password&username=alice&password=correct+horse+battery", true);
        return after.status == 400;
      },
      15s));
  EXPECT_NE(after.body.find("wrong username or password"), std::string::npos) << after.body;
  for (int n = 0; n < 3; ++n) EXPECT_EQ(nodes_[n]->log().find("correct horse"), std::string::npos);
}

TEST_F(cluster_config, a_skewed_clock_is_measured_and_corrected_to_the_cluster_median) {
  node_fields_[2] = ", clock_offset: 5s";
  start_cluster(3);
  // n0 and n1 measure n2's clock 5 s ahead on their probe acks; n2 measures theirs 5 s behind
  // and corrects by -5 s, so its windows, deadlines and timestamps follow the median clock.
  nlohmann::json h0, h2;
  auto near = [](const nlohmann::json& v, int64_t want) {
    return v.is_number() && std::abs(v.get<int64_t>() - want) <= 250;
  };
  EXPECT_TRUE(eventually(
      [&] {
        h0 = admin(0, "GET", "/cluster/health").body;
        h2 = admin(2, "GET", "/cluster/health").body;
        return near(h0["clock_offsets_ms"]["n2"], 5000) && near(h0["clock_offsets_ms"]["n1"], 0) &&
               near(h0["clock_correction_ms"], 0) && near(h2["clock_offsets_ms"]["n0"], -5000) &&
               near(h2["clock_correction_ms"], -5000);
      },
      10s))
      << h0.dump() << "\n"
      << h2.dump();
  EXPECT_NE(nodes_[2]->log().find("clock: this node's clock is"), std::string::npos);
}

TEST_F(cluster_config, every_change_is_in_the_audit_trail_of_every_node) {
  start_cluster(2);
  ASSERT_EQ(admin(0, "PUT", "/config/upstreams/backend", upstream_doc()).status, 200);
  ASSERT_EQ(admin(0, "PUT", "/config/routes/audited",
                  R"({"match":{"path_prefix":"/audited"},"upstream":"backend"})")
                .status,
            200);
  EXPECT_EQ(admin(0, "PUT", "/config/routes/broken", "{not json").status, 400);
  // Node 1 never saw these requests; the trail reaches it by gossip, newest first.
  nlohmann::json entries;
  ASSERT_TRUE(eventually(
      [&] {
        entries = admin(1, "GET", "/audit").body["entries"];
        return entries.is_array() && entries.size() >= 3;
      },
      5s))
      << entries.dump();
  EXPECT_EQ(entries[0]["path"], "/config/routes/broken");
  EXPECT_EQ(entries[0]["status"], 400);
  EXPECT_EQ(entries[1]["method"], "PUT");
  EXPECT_EQ(entries[1]["path"], "/config/routes/audited");
  EXPECT_EQ(entries[1]["node"], "n0");
  EXPECT_EQ(entries[1]["from"], "127.0.0.1");
  EXPECT_EQ(entries[1]["status"], 200);
  EXPECT_GE(entries[0]["at"].get<int64_t>(), entries[1]["at"].get<int64_t>());
  // Reads are not audited; since= filters.
  auto since = entries[0]["at"].get<int64_t>() + 1;
  EXPECT_EQ(admin(1, "GET", "/audit?since=" + std::to_string(since)).body["entries"].size(), 0u);
  EXPECT_EQ(admin(1, "GET", "/audit?limit=x").status, 400);
}

TEST_F(cluster_config, keys_rotate_through_the_admin_api_install_use_remove_on_every_node) {
  const std::string old_key = read_key();
  const std::string new_key = meridian::cluster::encode_key(meridian::cluster::generate_key());
  // Each node its own keyring file: the API rewrites every node's file.
  auto keyring_of = [&](int i) { return dir_.file("k" + std::to_string(i) + ".keys"); };
  for (int i = 0; i < 3; ++i) {
    write_file(keyring_of(i), old_key + "\n");
    start(i, keyring_of(i));
  }
  auto all_alive = [&] {
    return alive_count(0) == 3 && alive_count(1) == 3 && alive_count(2) == 3;
  };
  ASSERT_TRUE(eventually(all_alive, 15s));
  auto progress = [&](int i) { return admin(i, "GET", "/cluster/keys").body; };
  auto on_all = [&](int i, const std::string& fp, const char* what) {
    auto v = progress(i);
    return v.is_object() && v["alive"] == 3 && v["keys"].contains(fp) && v["keys"][fp][what] == 3;
  };

  EXPECT_EQ(admin(0, "POST", "/cluster/keys", R"({"key":"not-a-key"})").status, 400);
  EXPECT_EQ(admin(0, "PUT", "/cluster/keys/0123456789abcdef/primary").status, 404);
  // Install on node 0: every node holds it, the old key stays primary.
  auto r = admin(0, "POST", "/cluster/keys", nlohmann::json{{"key", new_key}}.dump());
  ASSERT_EQ(r.status, 200) << r.body.dump();
  const std::string new_fp = r.body["fingerprint"];
  std::string old_fp;
  for (const auto& [fp, n] : r.body["progress"]["keys"].items())
    if (fp != new_fp) old_fp = fp;
  ASSERT_FALSE(old_fp.empty()) << r.body.dump();
  ASSERT_TRUE(eventually([&] { return on_all(2, new_fp, "installed_on"); }, 15s))
      << progress(2).dump();
  EXPECT_TRUE(on_all(2, old_fp, "primary_on"));
  r = admin(1, "DELETE", "/cluster/keys/" + old_fp);
  EXPECT_EQ(r.status, 409) << "the primary cannot be removed: " << r.body.dump();
  // Use, from node 1 (409 not_installed_everywhere until node 1 has heard from every node):
  // every node seals with the new key. Tried at an operator's pace: every try is an audit entry
  // gossiped to every node, and a hundred a second (the default pace) once held node 2's
  // keyring register back from node 1 until the 30 s push-pull.
  ASSERT_TRUE(eventually(
      [&] {
        r = admin(1, "PUT", "/cluster/keys/" + new_fp + "/primary");
        EXPECT_TRUE(r.status == 200 || r.body["error"] == "not_installed_everywhere")
            << r.body.dump();
        return r.status == 200;
      },
      15s, 200ms))
      << progress(1).dump() << "\n"
      <<
      [&] {
        std::string out;
        for (int i : {1, 2}) {
          httplib::Client c("127.0.0.1", ports_[i].admin);
          auto res = c.Get("/metrics", {{"Authorization", "Bearer test-token-0123456789abcdef"}});
          if (!res) continue;
          std::istringstream in(res->body);
          for (std::string line; std::getline(in, line);)
            if (line.rfind("meridian_cluster_", 0) == 0 || line.rfind("meridian_state_", 0) == 0)
              out += "n" + std::to_string(i) + " " + line + "\n";
        }
        return out;
      }()
      << nodes_[1]->log();
  ASSERT_TRUE(eventually([&] { return on_all(0, new_fp, "primary_on"); }, 15s))
      << progress(0).dump();
  // Remove, from node 2 (409 in_use while it knows a node still sealing with the old key): the
  // old key is gone everywhere, members never dropped.
  ASSERT_TRUE(eventually(
      [&] {
        r = admin(2, "DELETE", "/cluster/keys/" + old_fp);
        EXPECT_TRUE(r.status == 200 || r.body["error"] == "in_use") << r.body.dump();
        return r.status == 200;
      },
      15s, 200ms));
  ASSERT_TRUE(eventually(
      [&] {
        auto v = progress(0);
        return v.is_object() && v["keys"].size() == 1 && on_all(0, new_fp, "installed_on");
      },
      15s))
      << progress(0).dump();
  EXPECT_TRUE(all_alive());
  // Every node's file now holds the new key alone (a restart keeps it), and a node started with
  // only the new key joins.
  for (int i = 0; i < 3; ++i) {
    std::ifstream in(keyring_of(i));
    std::string line, keys;
    while (std::getline(in, line))
      if (!line.empty() && line[0] != '#') keys += line + "\n";
    EXPECT_EQ(keys, new_key + "\n") << "node " << i;
  }
  write_file(dir_.file("new-only.keys"), new_key + "\n");
  start(3, dir_.file("new-only.keys"));
  EXPECT_TRUE(eventually([&] { return alive_count(0) == 4 && alive_count(3) == 4; }, 15s))
      << nodes_[3]->log();
}

TEST_F(cluster_config, an_api_key_issued_on_one_node_works_everywhere_until_revoked) {
  start_cluster(3);
  ASSERT_EQ(admin(0, "PUT", "/config/upstreams/backend", upstream_doc()).status, 200);
  ASSERT_EQ(admin(0, "PUT", "/config/consumers/acme", R"({"groups":["partners"]})").status, 200);
  ASSERT_EQ(admin(0, "PUT", "/config/routes/keyed",
                  R"({"match":{"path_prefix":"/keyed"},"upstream":"backend",)"
                  R"("auth":{"methods":["api_key"],"groups":["partners"]}})")
                .status,
            200);
  ASSERT_EQ(admin(0, "PUT", "/config/routes/staff",
                  R"({"match":{"path_prefix":"/staff"},"upstream":"backend",)"
                  R"("auth":{"methods":["api_key"],"groups":["staff"]}})")
                .status,
            200);
  ASSERT_TRUE(eventually(
      [&] {
        for (int i = 0; i < 3; ++i)
          if (proxy_status(i, "/staff") != 401) return false;  // routes in place everywhere
        return true;
      },
      5s));

  auto issued = admin(0, "POST", "/config/consumers/acme/keys", "");
  ASSERT_EQ(issued.status, 201) << issued.body.dump();
  std::string key = issued.body["key"], key_id = issued.body["key_id"];
  auto with_key = [&](int node, const std::string& path, const std::string& k) {
    httplib::Client c("127.0.0.1", ports_[node].proxy);
    c.set_read_timeout(2, 0);
    auto res = c.Get(path.c_str(), {{"X-API-Key", k}});
    return res ? res->status : 0;
  };
  auto issued_at = std::chrono::steady_clock::now();
  ASSERT_TRUE(eventually(
      [&] {
        for (int i = 0; i < 3; ++i)
          if (with_key(i, "/keyed/who", key) != 200) return false;
        return true;
      },
      5s));
  std::printf(
      "key valid on all 3 nodes %.0f ms after it was issued\n",
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - issued_at)
          .count());
  auto seen = backend_.last();  // what the upstream got with the last keyed request
  EXPECT_EQ(seen.get_header_value("X-Consumer-Id"), "acme");
  EXPECT_EQ(seen.get_header_value("X-Consumer-Groups"), "partners");
  EXPECT_FALSE(seen.has_header("X-API-Key")) << "the key ends at the gateway";
  EXPECT_EQ(with_key(1, "/staff", key), 403);     // known consumer, wrong group
  EXPECT_EQ(proxy_status(1, "/keyed/who"), 401);  // no key
  std::string wrong = key;
  wrong.back() = wrong.back() == '0' ? '1' : '0';
  EXPECT_EQ(with_key(2, "/keyed/who", wrong), 401);  // right id, wrong secret
  EXPECT_EQ(with_key(2, "/keyed/who", "garbage"), 401);
  auto listed = admin(0, "GET", "/config/consumers/acme/keys");
  ASSERT_EQ(listed.body["keys"].size(), 1u);
  EXPECT_EQ(listed.body["keys"][0]["key_id"], key_id);
  EXPECT_FALSE(listed.body.dump().find(key) != std::string::npos);

  ASSERT_EQ(httplib::Client("127.0.0.1", ports_[0].admin)
                .Delete(("/config/consumers/acme/keys/" + key_id).c_str(),
                        {{"Authorization", "Bearer test-token-0123456789abcdef"}})
                ->status,
            200);
  auto revoked_at = std::chrono::steady_clock::now();
  ASSERT_TRUE(eventually(
      [&] {
        for (int i = 0; i < 3; ++i)
          if (with_key(i, "/keyed/who", key) != 401) return false;
        return true;
      },
      5s));
  std::printf(
      "key refused on all 3 nodes %.0f ms after it was revoked\n",
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - revoked_at)
          .count());
  // The plaintext is in no store, log or config file.
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir_.file(""))) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    std::string content((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(content.find(key.substr(20)), std::string::npos) << entry.path();
  }
}

}  // namespace
}  // namespace meridian::testing
