#include "meridian/config/config_json.h"

#include <gtest/gtest.h>

#include <chrono>

namespace meridian::node {
namespace {

using namespace std::chrono_literals;

TEST(config_json, durations_use_the_largest_exact_unit) {
  EXPECT_EQ(format_duration(250ms), "250ms");
  EXPECT_EQ(format_duration(1500ms), "1500ms");
  EXPECT_EQ(format_duration(2s), "2s");
  EXPECT_EQ(format_duration(90s), "90s");
  EXPECT_EQ(format_duration(1min), "1m");
  EXPECT_EQ(format_duration(1h), "1h");
  EXPECT_EQ(format_duration(25h), "25h");
  EXPECT_EQ(format_duration(48h), "2d");
  EXPECT_EQ(format_duration(0ms), "0s");
  EXPECT_EQ(format_duration(-5s), "-5s");
}

TEST(config_json, balance_policies_are_written_by_name) {
  EXPECT_EQ(balance_name(balance_policy::round_robin), "round_robin");
  EXPECT_EQ(balance_name(balance_policy::least_request), "least_request");
  EXPECT_EQ(balance_name(balance_policy::consistent_hash), "consistent_hash");
  EXPECT_EQ(balance_name(balance_policy::random), "random");
}

config sample_config() {
  config c;
  upstream_config u;
  u.name = "users";
  u.targets.push_back({{"127.0.0.1", 9001}, "eu-west", "", 3, 0});
  u.targets.push_back({{"127.0.0.1", 9002}, "", "", 1, 0});
  u.balance = balance_policy::least_request;
  u.health_check.enabled = true;
  u.health_check.interval = 1s;
  u.health_check.timeout = 500ms;
  u.circuit_breaker.enabled = true;
  u.circuit_breaker.window = 10s;
  u.retries.attempts = 2;
  u.retries.on_status = {502, 503, 504};
  c.upstreams.push_back(u);

  route_config r;
  r.name = "users";
  r.match.path_prefix = "/api/users";
  r.match.methods = {"GET", "POST"};
  r.match.headers = {{"x-tenant", "acme"}};
  r.upstream = "users";
  r.strip_prefix = "/api";
  r.request_headers.add = {{"x-gateway", "meridian"}};
  r.request_headers.remove = {"x-internal"};
  r.auth =
      auth_config{{"api_key", "jwt"}, "main", {{"sub", "x-consumer-id"}}, {}, false, true, {"read"},
                  {{"role", "admin"}}};
  r.rate_limits.push_back({100, 1min, "consumer", "sliding_window", "global"});
  c.routes.push_back(r);

  route_config bare;
  bare.name = "bare";
  bare.upstream = "users";
  c.routes.push_back(bare);

  c.consumers.push_back({"acme", {"partners"}, {}, false, 0});
  c.jwt.push_back({"main", "https://issuer.example", "api", "./jwks.json", "",
                   std::chrono::minutes(5), "sub", 0});
  return c;
}

TEST(config_json, upstream_keeps_yaml_key_names_and_formats) {
  auto j = config_to_json(sample_config());
  ASSERT_EQ(j["upstreams"].size(), 1u);
  const auto& u = j["upstreams"][0];
  EXPECT_EQ(u["name"], "users");
  EXPECT_EQ(u["balance"], "least_request");
  EXPECT_FALSE(u.contains("hash_on"));
  EXPECT_EQ(u["targets"][0],
            (nlohmann::json{{"address", "127.0.0.1:9001"}, {"region", "eu-west"}, {"weight", 3}}));
  EXPECT_FALSE(u["targets"][1].contains("region"));
  EXPECT_EQ(u["health_check"]["interval"], "1s");
  EXPECT_EQ(u["health_check"]["timeout"], "500ms");
  EXPECT_EQ(u["circuit_breaker"]["window"], "10s");
  EXPECT_EQ(u["circuit_breaker"]["open_for"], "5s");
  EXPECT_EQ(u["timeouts"]["connect"], "1s");
  EXPECT_EQ(u["timeouts"]["request"], "15s");
  EXPECT_EQ(u["timeouts"]["idle"], "1m");
  EXPECT_EQ(u["retries"]["attempts"], 2);
  EXPECT_EQ(u["retries"]["on"], nlohmann::json::parse(R"(["connect_failure",502,503,504])"));
}

TEST(config_json, disabled_sections_and_empty_optionals_are_omitted) {
  config c = sample_config();
  c.upstreams[0].health_check.enabled = false;
  c.upstreams[0].circuit_breaker.enabled = false;
  auto j = config_to_json(c);
  EXPECT_FALSE(j["upstreams"][0].contains("health_check"));
  EXPECT_FALSE(j["upstreams"][0].contains("circuit_breaker"));
  const auto& bare = j["routes"][1];
  EXPECT_EQ(bare,
            (nlohmann::json{
                {"name", "bare"}, {"match", nlohmann::json::object()}, {"upstream", "users"}}))
      << bare.dump();
}

TEST(config_json, route_mirrors_the_yaml_shape) {
  auto j = config_to_json(sample_config());
  const auto& r = j["routes"][0];
  EXPECT_EQ(r["match"], nlohmann::json::parse(R"({"path_prefix":"/api/users",
      "methods":["GET","POST"],"headers":{"x-tenant":"acme"}})"));
  EXPECT_EQ(r["strip_prefix"], "/api");
  EXPECT_EQ(r["request_headers"],
            nlohmann::json::parse(R"({"add":{"x-gateway":"meridian"},"remove":["x-internal"]})"));
  EXPECT_FALSE(r.contains("response_headers"));
  EXPECT_EQ(r["auth"], nlohmann::json::parse(R"({"methods":["api_key","jwt"],"jwt":"main",
      "claims_to_headers":{"sub":"x-consumer-id"},"scopes":["read"],"claims":{"role":"admin"}})"));
}

TEST(config_json, one_rate_limit_is_a_map_and_several_are_a_list) {
  config c = sample_config();
  auto one = config_to_json(c)["routes"][0]["rate_limit"];
  EXPECT_EQ(one, nlohmann::json::parse(R"({"limit":100,"window":"1m","key":"consumer",
      "algorithm":"sliding_window","scope":"global","on_partition":"local_share"})"));
  c.routes[0].rate_limits.push_back({10, 1s, "ip", "sliding_window", "local"});
  auto several = config_to_json(c)["routes"][0]["rate_limit"];
  ASSERT_TRUE(several.is_array());
  ASSERT_EQ(several.size(), 2u);
  EXPECT_EQ(several[1]["window"], "1s");
  EXPECT_EQ(several[1]["key"], "ip");
  EXPECT_FALSE(config_to_json(c)["routes"][1].contains("rate_limit"));
}

TEST(config_json, top_level_lists_consumers_and_jwt_providers) {
  auto j = config_to_json(sample_config());
  EXPECT_EQ(j["consumers"], nlohmann::json::parse(R"([{"id":"acme","groups":["partners"]}])"));
  EXPECT_EQ(j["jwt"], nlohmann::json::parse(R"([{"name":"main","issuer":"https://issuer.example",
      "audience":"api","jwks_file":"./jwks.json"}])"));
  EXPECT_FALSE(j.contains("version"));  // the admin handler adds it
}

}  // namespace
}  // namespace meridian::node
