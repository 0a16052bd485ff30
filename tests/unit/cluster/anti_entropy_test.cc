// Anti-entropy at scale on real sockets: three gossip_node + replicated_state pairs in one
// process over loopback UDP/TCP, 10,000 documents, a partition made by keys (a node holding
// another key can neither read nor be read) and its healing. No simulator: the real transport,
// the real message size limit.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <memory>
#include <thread>

#include "meridian/cluster/gossip_node.h"
#include "meridian/cluster/keyring.h"
#include "meridian/cluster/replicated_state.h"
#include "sanitized.h"

namespace meridian::cluster {
namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

bool eventually(const std::function<bool()>& cond, std::chrono::milliseconds limit) {
  auto deadline = steady::now() + limit;
  while (steady::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return cond();
}

int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// A route-sized document (about 300 bytes, like a PUT /config/routes body).
std::string route_body(int i, int generation) {
  return R"({"name":"r)" + std::to_string(i) + R"(","match":{"path_prefix":"/api/v)" +
         std::to_string(generation) + "/r" + std::to_string(i) +
         R"(","methods":["GET","POST"],"headers":{"x-tenant":"acme"}},"upstream":"users",)"
         R"("strip_prefix":"/api","request_headers":{"add":{"x-gateway":"meridian"},)"
         R"("remove":["x-internal"]},"rate_limit":{"limit":100,"window":"1m","key":"consumer"}})";
}

struct peer {
  peer(const std::string& id, std::vector<std::string> seeds, cluster_key key)
      : state(state_options{.self_id = id}, unix_ms, nullptr) {
    gossip_options o;
    o.self = {id, "127.0.0.1:0", "eu-west", "a"};
    o.bind_port = 0;
    o.seeds = std::move(seeds);
    o.keys = {key};
    // Partitions here last seconds; let dead members be probed as often as they are suspected.
    o.swim.dead_probe_interval = 1000ms;
    o.app = &state;
    gossip = std::make_unique<gossip_node>(std::move(o), nullptr);
  }
  void start() {
    std::string error;
    ASSERT_TRUE(gossip->start(&error)) << error;
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(gossip->port()); }
  int alive() const {
    int n = 0;
    for (const auto& m : gossip->members()) n += m.state == member_state::alive;
    return n;
  }
  replicated_state state;
  std::unique_ptr<gossip_node> gossip;
};

// Every document (tombstones included) of both families, as one comparable value.
std::vector<std::pair<std::string, lww_entry>> everything(const replicated_state& s) {
  auto out = s.documents(doc_family::config, true);
  for (auto& d : s.documents(doc_family::state, true)) out.push_back(std::move(d));
  return out;
}

bool same_digests(const std::vector<std::unique_ptr<peer>>& peers) {
  for (const auto& p : peers) {
    if (p->state.digest(doc_family::config) != peers[0]->state.digest(doc_family::config) ||
        p->state.digest(doc_family::state) != peers[0]->state.digest(doc_family::state))
      return false;
  }
  return true;
}

TEST(anti_entropy, ten_thousand_documents_reach_every_node_and_survive_a_healed_partition) {
  const cluster_key key = generate_key();
  std::vector<std::unique_ptr<peer>> peers;
  peers.push_back(std::make_unique<peer>("a", std::vector<std::string>{}, key));
  std::string error;
  // 10,000 documents on a before anyone else exists: only anti-entropy can bring them over
  // (about 3 MB, fifty times what one sealed message may carry). Under the sanitizers 2,000
  // (still ten messages' worth): three nodes in one ASan process merging 10,000 documents under
  // ctest -j2 starve their own gossip threads long enough to declare each other dead.
  const int n = testing::sanitized ? 2'000 : 10'000;
  for (int i = 0; i < n; ++i)
    ASSERT_GT(peers[0]->state.put(doc_family::config, "routes/r" + std::to_string(i),
                                  route_body(i, 1), &error),
              0u)
        << error;
  peers[0]->start();
  for (const char* id : {"b", "c"}) {
    peers.push_back(std::make_unique<peer>(id, std::vector<std::string>{peers[0]->address()}, key));
    peers.back()->start();
  }
  ASSERT_TRUE(eventually([&] { return peers[1]->alive() == 3 && peers[2]->alive() == 3; }, 10s));
  auto t = steady::now();
  ASSERT_TRUE(eventually([&] { return same_digests(peers); }, 20s * testing::slowdown))
      << "b holds " << peers[1]->state.stats().documents << ", c holds "
      << peers[2]->state.stats().documents << " of " << n;
  std::printf("%d documents from one node to two: %lld ms\n", n,
              static_cast<long long>((steady::now() - t) / 1ms));

  // Partition c away (another key: each side drops the other's packets as unauthenticated)
  // until both sides see the other as failed, while a and b change a quarter of the state.
  peers[2]->gossip->set_keys({generate_key()});
  for (int i = 0; i < n / 5; ++i)
    peers[0]->state.put(doc_family::config, "routes/r" + std::to_string(i), route_body(i, 2),
                        &error);
  for (int i = n / 5; i < n / 4; ++i)
    peers[0]->state.remove(doc_family::config, "routes/r" + std::to_string(i), &error);
  for (int i = n; i < n + n / 20; ++i)
    peers[1]->state.put(doc_family::config, "routes/r" + std::to_string(i), route_body(i, 1),
                        &error);
  for (auto& p : peers) p->gossip->flush_application();
  ASSERT_TRUE(eventually(
      [&] { return peers[2]->alive() == 1 && peers[0]->alive() == 2 && peers[1]->alive() == 2; },
      20s * testing::slowdown));
  ASSERT_TRUE(eventually(
      [&] {
        return peers[0]->state.digest(doc_family::config) ==
               peers[1]->state.digest(doc_family::config);
      },
      10s));
  ASSERT_NE(peers[2]->state.digest(doc_family::config), peers[0]->state.digest(doc_family::config));

  peers[2]->gossip->set_keys({key});
  t = steady::now();
  bool converged = eventually([&] { return same_digests(peers); }, 5s * testing::slowdown);
  auto took = steady::now() - t;
  std::printf("%d changes after the partition healed: %lld ms\n", n * 3 / 10,
              static_cast<long long>(took / 1ms));
  ASSERT_TRUE(converged) << "c holds " << peers[2]->state.stats().documents << " of " << n;
  // Nothing acknowledged is lost, deletions included: every entry is the same everywhere.
  auto reference = everything(peers[0]->state);
  EXPECT_EQ(reference.size(), static_cast<size_t>(n + n / 20));
  EXPECT_EQ(peers[0]->state.stats().documents, static_cast<size_t>(n));
  for (size_t i = 1; i < peers.size(); ++i) EXPECT_TRUE(everything(peers[i]->state) == reference);
  EXPECT_EQ(peers[2]->state.get(doc_family::config, "routes/r7")->value, route_body(7, 2));
  EXPECT_TRUE(
      peers[2]->state.get(doc_family::config, "routes/r" + std::to_string(n / 5 + 10))->deleted);
  EXPECT_EQ(peers[2]->state.get(doc_family::config, "routes/r" + std::to_string(n + 10))->value,
            route_body(n + 10, 1));
  for (auto& p : peers) p->gossip->stop(false);
}

}  // namespace
}  // namespace meridian::cluster
