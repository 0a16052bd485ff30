// Circuit breaking and regional failover on one node, through real sockets: a failing target is
// cut off and probed back, and a node whose region's targets are all down serves from another
// region without the client seeing errors.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "test_support.h"

namespace meridian::testing {
namespace {

class breakers : public ::testing::Test {
 protected:
  void SetUp() override {
    good_.server().Get(".*", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("good", "text/plain");
    });
    bad_.server().Get(".*", [this](const httplib::Request&, httplib::Response& res) {
      if (failing_) {
        res.status = 500;
        res.set_content("broken", "text/plain");
      } else {
        res.set_content("recovered", "text/plain");
      }
    });
    good_.start();
    bad_.start();
  }
  nlohmann::json breakers_of(running_node& n) {
    httplib::Client c("127.0.0.1", n.admin_port());
    auto res = c.Get("/breakers", {{"Authorization", "Bearer " + n.get().admin_token()}});
    return res ? nlohmann::json::parse(res->body, nullptr, false) : nlohmann::json();
  }
  std::string state_of(running_node& n, const std::string& address) {
    auto all = breakers_of(n);  // kept alive for the loop
    for (const auto& b : all["breakers"])
      if (b["target"] == address) return b["state"];
    return "";
  }
  upstream good_, bad_;
  std::atomic<bool> failing_{true};
};

TEST_F(breakers, a_failing_target_is_cut_off_then_probed_back_in) {
  running_node n(
      "upstreams:\n  - name: u\n    targets: [{address: " + good_.address() +
      "}, {address: " + bad_.address() +
      "}]\n    outlier: {consecutive_failures: 0}\n"
      "    circuit_breaker: {failure_rate: 0.5, min_requests: 4, window: 10s, open_for: 1s,"
      " half_open_probes: 1, scope: local}\n"
      "routes:\n  - name: r\n    match: {path_prefix: /}\n    upstream: u\n");
  ASSERT_TRUE(n.ok());
  auto c = n.client();
  int errors = 0;
  for (int i = 0; i < 8; ++i) errors += c.Get("/")->status == 500;
  EXPECT_EQ(state_of(n, bad_.address()), "open") << breakers_of(n).dump();
  EXPECT_LE(errors, 4);  // round robin: every other request until the breaker opened
  int bad_hits = bad_.hits.load();
  for (int i = 0; i < 20; ++i) EXPECT_EQ(c.Get("/")->status, 200);
  EXPECT_EQ(bad_.hits.load(), bad_hits) << "an open breaker lets nothing through";
  auto b = breakers_of(n)["breakers"];
  ASSERT_EQ(b.size(), 2u);
  for (const auto& x : b) {
    if (x["target"] != bad_.address()) continue;
    EXPECT_EQ(x["origin"], "test-1");
    EXPECT_GT(x["until"].get<int64_t>(), x["since"].get<int64_t>());
  }

  failing_ = false;  // it recovers; after open_for one probe finds out and closes the breaker
  ASSERT_TRUE(eventually(
      [&] {
        c.Get("/");
        return state_of(n, bad_.address()) == "closed";
      },
      5s));
  EXPECT_NE(n.metrics().find("meridian_breaker_state{upstream=\"u\",target=\"" + bad_.address() +
                             "\"} 0"),
            std::string::npos);
}

TEST_F(breakers, an_outlier_ejection_opens_the_breaker_so_other_nodes_can_learn_it) {
  // Outlier detection ejects after 3 failures, before the breaker's min_requests: the ejection
  // itself must open the breaker (the state the cluster shares), not only stop local traffic.
  running_node n(
      "upstreams:\n  - name: u\n    targets: [{address: " + good_.address() +
      "}, {address: " + bad_.address() +
      "}]\n    outlier: {consecutive_failures: 3, eject_for: 10s}\n"
      "    circuit_breaker: {failure_rate: 0.5, min_requests: 50, window: 10s, open_for: 5s,"
      " half_open_probes: 1, scope: cluster}\n"
      "routes:\n  - name: r\n    match: {path_prefix: /}\n    upstream: u\n");
  ASSERT_TRUE(n.ok());
  auto c = n.client();
  for (int i = 0; i < 8; ++i) c.Get("/");
  EXPECT_EQ(bad_.hits.load(), 3) << "ejected after the third failure";
  EXPECT_EQ(state_of(n, bad_.address()), "open") << breakers_of(n).dump();
}

TEST_F(breakers, with_every_target_of_its_region_down_a_node_serves_from_another_region) {
  // This node is in eu-west; its own target refuses connections, the us-east one works.
  int closed_port = unused_port();
  running_node n("upstreams:\n  - name: u\n    targets: [{address: 127.0.0.1:" +
                 std::to_string(closed_port) + ", region: eu-west}, {address: " + good_.address() +
                 ", region: us-east}]\n" + "    retries: {attempts: 1, on: [connect_failure]}\n" +
                 "routes:\n  - name: r\n    match: {path_prefix: /}\n    upstream: u\n");
  ASSERT_TRUE(n.ok());
  auto c = n.client();
  for (int i = 0; i < 10; ++i) {
    auto res = c.Get("/");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200) << i;  // the failed connect is retried in us-east
  }
  EXPECT_EQ(good_.hits.load(), 10);
  EXPECT_NE(n.metrics().find("meridian_upstream_failovers_total{upstream=\"u\"}"),
            std::string::npos);
}

TEST_F(breakers, failover_prefers_regions_in_the_order_the_targets_name_them) {
  int closed_port = unused_port();
  failing_ = false;
  running_node n("upstreams:\n  - name: u\n    targets: [{address: 127.0.0.1:" +
                 std::to_string(closed_port) + ", region: eu-west}, {address: " + bad_.address() +
                 ", region: ap-south}, {address: " + good_.address() + ", region: us-east}]\n" +
                 "    retries: {attempts: 1, on: [connect_failure]}\n" +
                 "routes:\n  - name: r\n    match: {path_prefix: /}\n    upstream: u\n");
  ASSERT_TRUE(n.ok());
  auto c = n.client();
  for (int i = 0; i < 6; ++i) EXPECT_EQ(c.Get("/")->body, "recovered");  // ap-south, listed first
  EXPECT_EQ(good_.hits.load(), 0);
}

TEST_F(breakers, targets_of_this_region_take_all_traffic_while_they_work) {
  running_node n("upstreams:\n  - name: u\n    targets: [{address: " + good_.address() +
                 ", region: us-east}, {address: " + bad_.address() + ", region: eu-west}]\n" +
                 "routes:\n  - name: r\n    match: {path_prefix: /}\n    upstream: u\n");
  ASSERT_TRUE(n.ok());
  failing_ = false;
  auto c = n.client();
  for (int i = 0; i < 6; ++i) EXPECT_EQ(c.Get("/")->body, "recovered");
  EXPECT_EQ(good_.hits.load(), 0);
}

TEST_F(breakers, an_upstream_with_no_usable_target_hands_over_to_its_failover_upstream) {
  int closed_port = unused_port();
  running_node n(
      "upstreams:\n  - name: primary\n    targets: [127.0.0.1:" + std::to_string(closed_port) +
      "]\n    health_check: {path: /h, interval: 100ms, timeout: 100ms,"
      " unhealthy_after: 1, healthy_after: 1}\n    failover: [backup]\n"
      "  - name: backup\n    targets: [" +
      good_.address() + "]\n" +
      "routes:\n  - name: r\n    match: {path_prefix: /}\n    upstream: primary\n");
  ASSERT_TRUE(n.ok());
  auto c = n.client();
  // Once the health check marks the only primary target down, requests go to the backup.
  ASSERT_TRUE(eventually(
      [&] {
        auto res = c.Get("/");
        return res && res->status == 200 && res->body == "good";
      },
      5s));
  for (int i = 0; i < 5; ++i) EXPECT_EQ(c.Get("/")->body, "good");
}

TEST_F(breakers, a_route_fallback_answers_instead_of_a_gateway_error) {
  int closed_port = unused_port();
  running_node n("upstreams:\n  - name: u\n    targets: [127.0.0.1:" + std::to_string(closed_port) +
                 "]\n" + "routes:\n  - name: r\n    match: {path_prefix: /}\n    upstream: u\n" +
                 "    fallback: {status: 200, body: '{\"status\":\"degraded\"}',"
                 " content_type: application/json, headers: {x-fallback: 'yes'}}\n" +
                 "  - name: plain\n    match: {path_prefix: /plain}\n    upstream: u\n");
  ASSERT_TRUE(n.ok());
  auto c = n.client();
  auto res = c.Get("/x");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "{\"status\":\"degraded\"}");
  EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
  EXPECT_EQ(res->get_header_value("x-fallback"), "yes");
  auto plain = c.Get("/plain");
  ASSERT_TRUE(plain);
  EXPECT_EQ(plain->status, 502);  // a route without a fallback keeps the gateway's error
  EXPECT_NE(n.metrics().find("meridian_fallbacks_total"), std::string::npos);
}

}  // namespace
}  // namespace meridian::testing
