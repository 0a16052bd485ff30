#include "meridian/admin/admin_server.h"

#include <gtest/gtest.h>
#include <httplib.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace meridian::node {
namespace {

using json = nlohmann::json;

constexpr const char* token = "s3cret-token-0123456789";

class admin_server_test : public ::testing::Test {
 protected:
  void SetUp() override {
    admin_handlers handlers;
    handlers.metrics_text = [this] {
      if (throw_from_metrics) throw std::runtime_error("metrics exploded");
      return std::string("# TYPE meridian_requests_total counter\nmeridian_requests_total 7\n");
    };
    handlers.effective_config = [] {
      return json{{"routes", json::array()}, {"upstreams", json::array()}, {"version", 3}};
    };
    server = std::make_unique<admin_server>("eu-1", token, std::move(handlers));
    std::string error;
    ASSERT_TRUE(server->start("127.0.0.1", 0, &error)) << error;
    ASSERT_NE(server->port(), 0);
    client = std::make_unique<httplib::Client>("127.0.0.1", server->port());
    client->set_connection_timeout(5, 0);
    client->set_read_timeout(5, 0);
  }

  httplib::Headers bearer(const std::string& value = token) {
    return {{"Authorization", "Bearer " + value}};
  }

  static void expect_json_error(const httplib::Result& res, int status, const std::string& code) {
    ASSERT_TRUE(res) << httplib::to_string(res.error());
    EXPECT_EQ(res->status, status);
    EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
    auto body = json::parse(res->body);
    EXPECT_EQ(body["error"], code) << res->body;
    EXPECT_TRUE(body["message"].is_string()) << res->body;
  }

  std::atomic<bool> throw_from_metrics{false};
  std::unique_ptr<admin_server> server;
  std::unique_ptr<httplib::Client> client;
};

TEST_F(admin_server_test, health_needs_no_token_and_names_the_node) {
  auto res = client->Get("/health");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
  EXPECT_EQ(json::parse(res->body), (json{{"status", "ok"}, {"node", "eu-1"}}));
}

TEST_F(admin_server_test, metrics_without_token_is_401_with_challenge) {
  auto res = client->Get("/metrics");
  expect_json_error(res, 401, "unauthorized");
  EXPECT_EQ(res->get_header_value("WWW-Authenticate"), "Bearer");
}

TEST_F(admin_server_test, wrong_or_malformed_tokens_are_401) {
  expect_json_error(client->Get("/metrics", bearer("s3cret-token-0123456788")), 401,
                    "unauthorized");  // same length
  expect_json_error(client->Get("/metrics", bearer("short")), 401, "unauthorized");
  expect_json_error(client->Get("/metrics", bearer(std::string(token) + "x")), 401, "unauthorized");
  expect_json_error(client->Get("/metrics", bearer("")), 401, "unauthorized");
  expect_json_error(client->Get("/metrics", {{"Authorization", std::string("Basic ") + token}}),
                    401, "unauthorized");
  expect_json_error(client->Get("/metrics", {{"Authorization", token}}), 401, "unauthorized");
}

TEST_F(admin_server_test, an_address_guessing_tokens_waits_longer_after_each_failure) {
  // Five failures are free, the sixth makes the address wait a second (then 2, 4, ... s:
  // hardening_test's admin_hostile.failed_logins_slow_one_address_down_exponentially_and_no_other).
  for (int i = 0; i < 6; ++i) {
    expect_json_error(client->Get("/metrics", bearer("guess-" + std::to_string(i))), 401,
                      "unauthorized");
  }
  // While it waits even the right token is not looked at: guessing gains nothing.
  auto res = client->Get("/metrics", bearer());
  expect_json_error(res, 429, "too_many_failures");
  EXPECT_EQ(res->get_header_value("Retry-After"), "1");
  EXPECT_EQ(client->Get("/health")->status, 200);  // the unauthenticated probe still answers
}

TEST_F(admin_server_test, metrics_with_token_is_prometheus_text) {
  auto res = client->Get("/metrics", bearer());
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "text/plain; version=0.0.4");
  EXPECT_NE(res->body.find("meridian_requests_total 7\n"), std::string::npos) << res->body;
  // The scheme is case-insensitive (RFC 6750).
  res = client->Get("/metrics", {{"Authorization", std::string("bearer ") + token}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

TEST_F(admin_server_test, config_answers_the_handler_json) {
  expect_json_error(client->Get("/config"), 401, "unauthorized");
  auto res = client->Get("/config", bearer());
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->get_header_value("Content-Type"), "application/json");
  auto body = json::parse(res->body);
  EXPECT_EQ(body["version"], 3);
  EXPECT_TRUE(body["routes"].is_array());
}

TEST_F(admin_server_test, unknown_path_is_404_json_once_authorized) {
  expect_json_error(client->Get("/nope"), 401, "unauthorized");
  expect_json_error(client->Get("/nope", bearer()), 404, "not_found");
  expect_json_error(client->Get("/metrics/extra", bearer()), 404, "not_found");
  expect_json_error(client->Get("/metrics/", bearer()), 404, "not_found");
}

TEST_F(admin_server_test, wrong_method_on_known_path_is_405_json) {
  auto res = client->Post("/metrics", bearer(), "x", "text/plain");
  expect_json_error(res, 405, "method_not_allowed");
  EXPECT_EQ(res->get_header_value("Allow"), "GET, HEAD");
  expect_json_error(client->Delete("/health"), 405, "method_not_allowed");
}

TEST_F(admin_server_test, throwing_handler_is_500_and_server_keeps_serving) {
  throw_from_metrics = true;
  auto res = client->Get("/metrics", bearer());
  expect_json_error(res, 500, "internal_error");
  EXPECT_EQ(json::parse(res->body)["message"], "metrics exploded");
  throw_from_metrics = false;
  res = client->Get("/metrics", bearer());
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  res = client->Get("/health");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

TEST_F(admin_server_test, body_over_one_mib_is_413_json) {
  auto res = client->Post("/config", bearer(), std::string((1 << 20) + 1, 'x'), "text/plain");
  expect_json_error(res, 413, "payload_too_large");
}

TEST_F(admin_server_test, stop_is_idempotent_and_closes_the_port) {
  server->stop();
  server->stop();
  auto res = client->Get("/health");
  EXPECT_FALSE(res);
}

TEST_F(admin_server_test, second_start_and_busy_port_fail_with_a_message) {
  std::string error;
  EXPECT_FALSE(server->start("127.0.0.1", 0, &error));
  EXPECT_NE(error.find("already started"), std::string::npos) << error;

  admin_server other("eu-2", token, {});
  error.clear();
  EXPECT_FALSE(other.start("127.0.0.1", server->port(), &error));
  EXPECT_NE(error.find("127.0.0.1:" + std::to_string(server->port())), std::string::npos) << error;
}

TEST(admin_server, empty_token_locks_every_protected_endpoint) {
  admin_server server("eu-1", "", {});
  std::string error;
  ASSERT_TRUE(server.start("127.0.0.1", 0, &error)) << error;
  httplib::Client client("127.0.0.1", server.port());
  auto res = client.Get("/health");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  res = client.Get("/metrics", {{"Authorization", "Bearer "}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 401);
}

TEST(admin_server, unset_handler_endpoint_is_404) {
  admin_server server("eu-1", token, {});
  std::string error;
  ASSERT_TRUE(server.start("127.0.0.1", 0, &error)) << error;
  httplib::Client client("127.0.0.1", server.port());
  auto res = client.Get("/metrics", {{"Authorization", std::string("Bearer ") + token}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 404);
  EXPECT_EQ(json::parse(res->body)["error"], "not_found");
}

// A cluster-wide view holds its admin worker while it waits for the other nodes' peer endpoints.
// With every general worker so held, /peer/ requests still answer: otherwise nodes each busy
// with such views would wait on each other's full pools until their peer calls timed out.
TEST(admin_server, peer_endpoints_answer_while_every_general_worker_waits) {
  const std::string peer_token = "peer-token-0123456789abcdef";
  std::mutex mu;
  std::condition_variable cv;
  bool released = false;
  int inside = 0;
  admin_handlers h;
  h.cluster_members = [&] {
    std::unique_lock lock(mu);
    ++inside;
    cv.notify_all();
    cv.wait(lock, [&] { return released; });
    return json::array();
  };
  h.peer_health = [] { return json{{"status", "healthy"}}; };
  admin_server server("eu-1", token, std::move(h), {}, peer_token);
  std::string error;
  ASSERT_TRUE(server.start("127.0.0.1", 0, &error)) << error;
  std::vector<std::thread> views;
  std::atomic<int> views_answered{0};
  for (int i = 0; i < 6; ++i) {
    views.emplace_back([&] {
      httplib::Client c("127.0.0.1", server.port());
      c.set_read_timeout(60, 0);
      auto res = c.Get("/cluster/members", {{"Authorization", std::string("Bearer ") + token}});
      if (res && res->status == 200) ++views_answered;
    });
  }
  bool all_held;
  {
    std::unique_lock lock(mu);
    all_held = cv.wait_for(lock, std::chrono::seconds(20), [&] { return inside >= 4; });
  }
  httplib::Client peer("127.0.0.1", server.port());
  peer.set_read_timeout(5, 0);
  auto res = peer.Get("/peer/health", {{"Authorization", "Bearer " + peer_token}});
  const bool peer_answered =
      res && res->status == 200 && res->body.find("healthy") != std::string::npos;
  {
    std::lock_guard lock(mu);
    released = true;
  }
  cv.notify_all();
  for (auto& t : views) t.join();
  EXPECT_TRUE(all_held) << "the general workers never all held a view";
  EXPECT_TRUE(peer_answered) << (res ? std::to_string(res->status)
                                     : httplib::to_string(res.error()));
  EXPECT_EQ(views_answered.load(), 6);
}

// Pipelined requests for both pools on one connection: each is answered, in order.
TEST(admin_server, pipelined_peer_and_general_requests_are_answered_in_order) {
  admin_handlers h;
  h.peer_health = [] { return json{{"status", "peer-view"}}; };
  admin_server server("eu-1", token, std::move(h), {}, "peer-token-0123456789abcdef");
  std::string error;
  ASSERT_TRUE(server.start("127.0.0.1", 0, &error)) << error;
  const std::string peer =
      "GET /peer/health HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer "
      "peer-token-0123456789abcdef\r\n\r\n";
  const std::string general = "GET /health HTTP/1.1\r\nHost: a\r\n\r\n";
  // Five: the server closes a connection after five requests (keep_alive_max_count).
  const std::string input = general + peer + peer + general + peer;
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  sa.sin_port = htons(static_cast<uint16_t>(server.port()));
  ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa), 0);
  ASSERT_EQ(::send(fd, input.data(), input.size(), MSG_NOSIGNAL),
            static_cast<ssize_t>(input.size()));
  std::string out;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  auto answers = [&] {
    size_t n = 0;
    for (size_t at = out.find("HTTP/1.1 200"); at != std::string::npos;
         at = out.find("HTTP/1.1 200", at + 1))
      ++n;
    return n;
  };
  // Until the server closes (after the fifth answer) or the deadline.
  while (std::chrono::steady_clock::now() < deadline) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 200) <= 0) continue;
    char buf[8192];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  ASSERT_EQ(answers(), 5u) << out;
  // general, peer, peer, general, peer: /health names the node, /peer/health the view.
  std::vector<char> order;
  for (size_t at = 0;;) {
    size_t node = out.find("\"eu-1\"", at), view = out.find("peer-view", at);
    if (node == std::string::npos && view == std::string::npos) break;
    if (view == std::string::npos || (node != std::string::npos && node < view)) {
      order.push_back('g');
      at = node + 1;
    } else {
      order.push_back('p');
      at = view + 1;
    }
  }
  EXPECT_EQ(std::string(order.begin(), order.end()), "gppgp") << out;
}

}  // namespace
}  // namespace meridian::node
