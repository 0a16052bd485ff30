// Upstream behaviour end to end: balancing, retries, timeouts, health checks, passive ejection,
// reloads and connection limits.

#include <gtest/gtest.h>

#include <spdlog/spdlog.h>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "test_support.h"

namespace meridian::testing {
namespace {

// An upstream that answers every GET with its own name and a status that tests can change.
class named_upstream : public upstream {
 public:
  explicit named_upstream(std::string name) : name_(std::move(name)) {
    server().Get("/healthz", [this](const httplib::Request&, httplib::Response& res) {
      res.status = healthy.load() ? 200 : 500;
      res.set_content(name_, "text/plain");
    });
    server().Get("/slow", [this](const httplib::Request&, httplib::Response& res) {
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms.load()));
      res.set_content(name_, "text/plain");
    });
    server().Get(".*", [this](const httplib::Request& req, httplib::Response& res) {
      res.status = status.load();
      res.set_content(name_, "text/plain");
      served.fetch_add(1);
    });
    start();
  }
  std::atomic<int> status{200};
  std::atomic<bool> healthy{true};
  std::atomic<int> delay_ms{0};
  std::atomic<int> served{0};

 private:
  std::string name_;
};

std::string route_to(const std::string& upstream_yaml) {
  return "upstreams:\n" + upstream_yaml +
         "routes:\n  - name: r\n    match: {path_prefix: /}\n    upstream: u\n";
}

TEST(upstream, round_robin_follows_weights) {
  named_upstream a("a"), b("b");
  running_node n(route_to("  - name: u\n    targets:\n      - {address: " + a.address() +
                          ", weight: 3}\n      - {address: " + b.address() + ", weight: 1}\n"));
  ASSERT_TRUE(n.ok());
  auto c = n.client();
  std::map<std::string, int> seen;
  for (int i = 0; i < 40; ++i) {
    auto res = c.Get("/");
    ASSERT_TRUE(res);
    seen[res->body]++;
  }
  EXPECT_EQ(seen["a"], 30);
  EXPECT_EQ(seen["b"], 10);
}

TEST(upstream, consistent_hash_sends_the_same_key_to_the_same_target) {
  named_upstream a("a"), b("b"), c3("c");
  running_node n(
      route_to("  - name: u\n    balance: consistent_hash\n    hash_on: header:x-user\n"
               "    targets: [" +
               a.address() + ", " + b.address() + ", " + c3.address() + "]\n"));
  ASSERT_TRUE(n.ok());
  auto c = n.client();
  std::set<std::string> targets_used;
  for (int user = 0; user < 30; ++user) {
    std::string first;
    for (int i = 0; i < 3; ++i) {
      auto res = c.Get("/", {{"X-User", "user-" + std::to_string(user)}});
      ASSERT_TRUE(res);
      if (i == 0) first = res->body;
      EXPECT_EQ(res->body, first) << "user-" << user;
    }
    targets_used.insert(first);
  }
  EXPECT_EQ(targets_used.size(), 3u) << "30 keys should spread over all targets";
}

TEST(upstream, least_request_and_random_reach_every_target) {
  named_upstream a("a"), b("b");
  for (const char* policy : {"least_request", "random"}) {
    running_node n(route_to(std::string("  - name: u\n    balance: ") + policy +
                            "\n    targets: [" + a.address() + ", " + b.address() + "]\n"));
    ASSERT_TRUE(n.ok());
    auto c = n.client();
    std::set<std::string> seen;
    for (int i = 0; i < 50 && seen.size() < 2; ++i) {
      auto res = c.Get("/");
      ASSERT_TRUE(res);
      seen.insert(res->body);
    }
    EXPECT_EQ(seen.size(), 2u) << policy;
  }
}

TEST(upstream, connect_failure_is_retried_on_another_target) {
  named_upstream live("live");
  running_node n(
      route_to("  - name: u\n    retries: {attempts: 2, on: [connect_failure]}\n"
               "    outlier: {consecutive_failures: 0}\n    targets: [127.0.0.1:" +
               std::to_string(unused_port()) + ", " + live.address() + "]\n"));
  ASSERT_TRUE(n.ok());
  auto c = n.client();
  for (int i = 0; i < 6; ++i) {
    auto res = c.Get("/");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    EXPECT_EQ(res->body, "live");
  }
  EXPECT_NE(n.metrics().find("meridian_retries_total 3\n"), std::string::npos) << n.metrics();
}

TEST(upstream, without_retries_a_dead_target_gives_json_502) {
  running_node n(
      route_to("  - name: u\n    targets: [127.0.0.1:" + std::to_string(unused_port()) + "]\n"));
  ASSERT_TRUE(n.ok());
  auto res = n.client().Get("/");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 502);
  EXPECT_NE(res->body.find("\"error\":\"upstream_unavailable\""), std::string::npos) << res->body;
}

TEST(upstream, retry_on_status_moves_to_a_healthy_target_for_idempotent_requests) {
  named_upstream bad("bad"), good("good");
  bad.status = 503;
  running_node n(
      route_to("  - name: u\n    retries: {attempts: 1, on: [503]}\n"
               "    outlier: {consecutive_failures: 0}\n    targets: [" +
               bad.address() + ", " + good.address() + "]\n"));
  ASSERT_TRUE(n.ok());
  auto c = n.client();
  for (int i = 0; i < 4; ++i) {
    auto res = c.Get("/");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 200);
    EXPECT_EQ(res->body, "good");
  }
  // POST is not idempotent: the 503 is passed on as it is.
  int posts_503 = 0;
  for (int i = 0; i < 4; ++i) {
    auto res = c.Post("/", "x", "text/plain");
    ASSERT_TRUE(res);
    posts_503 += res->status == 503;
  }
  EXPECT_EQ(posts_503, 0) << "POST has no handler upstream: 404 from either target";
}

TEST(upstream, slow_upstream_gets_504_after_the_request_timeout) {
  named_upstream slow("slow");
  slow.delay_ms = 1500;
  running_node n(
      route_to("  - name: u\n    timeouts: {connect: 1s, request: 200ms}\n"
               "    targets: [" +
               slow.address() + "]\n"));
  ASSERT_TRUE(n.ok());
  auto start = std::chrono::steady_clock::now();
  auto res = n.client().Get("/slow");
  auto took = std::chrono::steady_clock::now() - start;
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 504);
  EXPECT_NE(res->body.find("upstream_timeout"), std::string::npos);
  EXPECT_LT(took, std::chrono::milliseconds(1200));
}

TEST(upstream, active_health_checks_take_a_target_out_and_bring_it_back) {
  named_upstream a("a"), b("b");
  running_node n(
      route_to("  - name: u\n    health_check: {path: /healthz, interval: 50ms, "
               "timeout: 200ms, unhealthy_after: 2, healthy_after: 2}\n"
               "    targets: [" +
               a.address() + ", " + b.address() + "]\n"));
  ASSERT_TRUE(n.ok());
  auto c = n.client();
  a.healthy = false;
  ASSERT_TRUE(eventually([&] {
    return n.metrics().find("meridian_upstream_healthy{upstream=\"u\",target=\"" + a.address() +
                            "\"} 0") != std::string::npos;
  })) << n.metrics();
  for (int i = 0; i < 10; ++i) {
    auto res = c.Get("/");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->body, "b");
  }
  a.healthy = true;
  ASSERT_TRUE(eventually([&] {
    std::set<std::string> seen;
    for (int i = 0; i < 4; ++i) {
      auto res = c.Get("/");
      if (res) seen.insert(res->body);
    }
    return seen.count("a") == 1;
  }));
}

TEST(upstream, consecutive_failures_eject_a_target_passively) {
  named_upstream bad("bad"), good("good");
  bad.status = 502;
  running_node n(
      route_to("  - name: u\n    outlier: {consecutive_failures: 3, eject_for: 30s}\n"
               "    targets: [" +
               bad.address() + ", " + good.address() + "]\n"));
  ASSERT_TRUE(n.ok());
  auto c = n.client();
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(c.Get("/"));
  int before = bad.served.load();
  EXPECT_EQ(before, 3);
  for (int i = 0; i < 10; ++i) {
    auto res = c.Get("/");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->body, "good");
  }
  EXPECT_EQ(bad.served.load(), before);
  EXPECT_NE(n.metrics().find("meridian_ejections_total 1\n"), std::string::npos);
}

TEST(upstream, reload_changes_routes_without_dropping_a_keep_alive_connection) {
  named_upstream a("a"), b("b");
  auto config_for = [&](const named_upstream& target) {
    return route_to("  - name: u\n    targets: [" + target.address() + "]\n");
  };
  running_node n(config_for(a));
  ASSERT_TRUE(n.ok());
  raw_client c(n.port());
  ASSERT_TRUE(c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
  auto r = c.read_response();
  ASSERT_NE(r.find("\r\n\r\na"), std::string::npos) << r;
  std::string error;
  ASSERT_TRUE(n.apply(config_for(b), &error)) << error;
  ASSERT_TRUE(eventually([&] {
    if (!c.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n")) return false;
    auto again = c.read_response();
    return again.find("\r\n\r\nb") != std::string::npos;
  }));
  EXPECT_FALSE(c.closed_by_peer(100ms));
}

TEST(upstream, reload_with_bad_regex_keeps_the_running_config) {
  named_upstream a("a");
  running_node n(route_to("  - name: u\n    targets: [" + a.address() + "]\n"));
  ASSERT_TRUE(n.ok());
  std::string error;
  EXPECT_FALSE(n.apply("upstreams:\n  - name: u\n    targets: [" + a.address() +
                           "]\nroutes:\n  - name: r\n    match: {path_regex: '(unclosed'}\n"
                           "    upstream: u\n",
                       &error));
  auto res = n.client().Get("/");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->body, "a");
}

TEST(upstream, idle_client_connections_are_closed_after_the_idle_timeout) {
  named_upstream a("a");
  running_node n("limits: {idle_timeout: 200ms, header_timeout: 200ms}\n" +
                 route_to("  - name: u\n    targets: [" + a.address() + "]\n"));
  ASSERT_TRUE(n.ok());
  raw_client idle(n.port());
  EXPECT_TRUE(idle.closed_by_peer(2s));
  // Slowloris: a head that never completes is answered 408 and closed.
  raw_client slow(n.port());
  ASSERT_TRUE(slow.send("GET / HTTP/1.1\r\nHost: h\r\nX-Slow: "));
  EXPECT_TRUE(slow.closed_by_peer(2s));
  EXPECT_EQ(status_of(slow.buffer()), 408) << slow.buffer();
}

TEST(upstream, connections_over_the_limit_are_refused) {
  named_upstream a("a");
  running_node n("limits: {max_connections: 2}\n" +
                 route_to("  - name: u\n    targets: [" + a.address() + "]\n"));
  ASSERT_TRUE(n.ok());
  raw_client one(n.port()), two(n.port());
  ASSERT_TRUE(one.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
  ASSERT_EQ(status_of(one.read_response()), 200);
  ASSERT_TRUE(two.send("GET / HTTP/1.1\r\nHost: h\r\n\r\n"));
  ASSERT_EQ(status_of(two.read_response()), 200);
  raw_client three(n.port());
  EXPECT_TRUE(three.closed_by_peer(2s));
  EXPECT_TRUE(three.buffer().empty());
}

}  // namespace
}  // namespace meridian::testing

namespace meridian::testing {
namespace {

TEST(upstream, retry_budget_caps_retries_per_second) {
  named_upstream bad("bad"), good("good");
  bad.status = 503;
  good.status = 503;
  running_node n(
      route_to("  - name: u\n    retries: {attempts: 3, on: [503], budget_ratio: 0, "
               "budget_min_per_s: 2}\n    outlier: {consecutive_failures: 0}\n"
               "    targets: [" +
               bad.address() + ", " + good.address() + "]\n"));
  ASSERT_TRUE(n.ok());
  auto c = n.client();
  for (int i = 0; i < 10; ++i) {
    auto res = c.Get("/");
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 503);
  }
  // At most 2 retries in the budget window (the test runs well inside one second or two).
  int total = bad.served.load() + good.served.load();
  EXPECT_LE(total, 10 + 4);
  EXPECT_GE(total, 10 + 2);
  EXPECT_NE(n.metrics().find("meridian_retries_budget_exhausted_total"), std::string::npos);
}

TEST(upstream, connections_per_target_cap_refuses_overflow_with_503) {
  named_upstream slow("slow");
  slow.delay_ms = 500;
  running_node n(
      route_to("  - name: u\n    pool: {max_connections_per_target: 1}\n"
               "    targets: [" +
               slow.address() + "]\n"));
  ASSERT_TRUE(n.ok());
  raw_client first(n.port()), second(n.port());
  ASSERT_TRUE(first.send("GET /slow HTTP/1.1\r\nHost: h\r\n\r\n"));
  ASSERT_TRUE(eventually([&] { return slow.hits.load() == 1; }));
  ASSERT_TRUE(second.send("GET /slow HTTP/1.1\r\nHost: h\r\n\r\n"));
  auto r2 = second.read_response();
  EXPECT_EQ(status_of(r2), 503) << r2;
  EXPECT_NE(r2.find("upstream_overloaded"), std::string::npos);
  EXPECT_EQ(status_of(first.read_response()), 200);
}

TEST(upstream, access_log_writes_one_json_line_per_request) {
  named_upstream a("a");
  temp_dir logs;
  running_node n("log: {access_log: {enabled: true, path: " + logs.file("access.log") + "}}\n" +
                 route_to("  - name: u\n    targets: [" + a.address() + "]\n"));
  ASSERT_TRUE(n.ok());
  auto res = n.client().Get("/logged?x=1", {{"X-Request-Id", "trace-42"}});
  ASSERT_TRUE(res);
  std::string line;
  ASSERT_TRUE(eventually([&] {
    spdlog::apply_all([](const std::shared_ptr<spdlog::logger>& l) { l->flush(); });
    std::ifstream in(logs.file("access.log"));
    return static_cast<bool>(std::getline(in, line)) && !line.empty();
  }));
  auto j = nlohmann::json::parse(line);
  EXPECT_EQ(j["request_id"], "trace-42");
  EXPECT_EQ(j["method"], "GET");
  EXPECT_EQ(j["path"], "/logged?x=1");
  EXPECT_EQ(j["status"], 200);
  EXPECT_EQ(j["route"], "r");
  EXPECT_EQ(j["upstream"], a.address());
  EXPECT_EQ(j["client"], "127.0.0.1");
  EXPECT_TRUE(j["duration_ms"].is_number());
}

}  // namespace
}  // namespace meridian::testing

namespace meridian::testing {
namespace {

TEST(upstream, several_workers_share_the_port_and_all_serve) {
  named_upstream a("a");
  // The test node header sets workers implicitly to 1; override through a full node section.
  temp_dir dir;
  auto text = "node: {id: w, region: eu-west, workers: 3, data_dir: " + dir.file("d") +
              "}\nlisten: {proxy: 127.0.0.1:0, admin: 127.0.0.1:0}\n" +
              route_to("  - name: u\n    targets: [" + a.address() + "]\n");
  auto cfg = node::parse_config(text, "w.yaml");
  ASSERT_TRUE(cfg.value);
  node::node n(*cfg.value);
  std::string error;
  ASSERT_TRUE(n.start(&error)) << error;
  // Many short connections: the kernel spreads them over the three listeners.
  for (int i = 0; i < 60; ++i) {
    raw_client c(n.proxy_port());
    ASSERT_TRUE(c.send("GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"));
    ASSERT_EQ(status_of(c.read_response()), 200);
  }
  EXPECT_EQ(a.served.load(), 60);
  n.drain(std::chrono::seconds(2));
}

}  // namespace
}  // namespace meridian::testing
