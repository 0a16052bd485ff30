// Tests for the YAML config loader: the SPEC example, defaults, and every class of error with the
// exact line it is reported on.

#include "meridian/config/config.h"
#include "meridian/config/config_json.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

namespace meridian::node {
namespace {

using std::chrono::hours;
using std::chrono::milliseconds;
using std::chrono::minutes;
using std::chrono::seconds;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Pair;

// The node configuration example from SPEC.md, verbatim.
constexpr const char* spec_example = R"(node:
  id: eu-1                    # unique in the cluster; default: hostname
  region: eu-west             # required
  zone: eu-west-a             # optional
  data_dir: ./data/eu-1       # RocksDB and the node's persistent identity live here
  workers: 1                  # proxy worker threads; 0 = one per core
listen:
  proxy: 127.0.0.1:8080
  admin: 127.0.0.1:9901
admin:
  token_file: ./admin.token   # bearer token; every admin endpoint but GET /health requires it
cluster:
  bind: 127.0.0.1:7946        # UDP (gossip) and TCP (state sync) on the same port
  advertise: 127.0.0.1:7946   # default: bind
  seeds: [127.0.0.1:7947]     # any reachable members; retried with backoff until joined
  keyring_file: ./cluster.keys  # base64 32-byte keys, one a line, the first is primary
upstreams:
  - name: users
    targets:
      - {address: 127.0.0.1:9001, region: eu-west, weight: 1}
      - {address: 127.0.0.1:9002, region: us-east}
    balance: round_robin        # round_robin | least_request | consistent_hash | random
    health_check: {path: /healthz, interval: 1s, timeout: 500ms, unhealthy_after: 2, healthy_after: 2}
    circuit_breaker: {failure_rate: 0.5, min_requests: 10, window: 10s, open_for: 5s, half_open_probes: 1, scope: cluster}
    timeouts: {connect: 1s, request: 15s}
    retries: {attempts: 2, on: [connect_failure, 502, 503, 504]}
routes:
  - name: users
    match: {path_prefix: /api/users, methods: [GET, POST], host: api.example.com,
            headers: {x-tenant: acme}, query: {version: "2"}}
    upstream: users
    strip_prefix: /api          # /api/users/7 -> /users/7 upstream
    request_headers: {add: {x-gateway: meridian}, remove: [x-internal]}
    response_headers: {add: {x-served-by: meridian}}
    auth: {methods: [api_key, jwt]}
    rate_limit: {limit: 100, window: 1m, key: consumer, algorithm: sliding_window, scope: global}
consumers:
  - id: acme
    groups: [partners]
jwt:
  - name: main
    issuer: https://issuer.example
    audience: api
    jwks_file: ./jwks.json      # or jwks_url
)";

// The smallest valid config; tests append sections to it. Line 1 is "node:".
constexpr const char* minimal = "node:\n  region: eu-west\n";

// Parses text as "test.yaml". A leading newline is dropped, so a raw string's first real line is
// line 1.
config_result parse(std::string text) {
  if (!text.empty() && text.front() == '\n') text.erase(0, 1);
  return parse_config(text, "test.yaml");
}

std::vector<std::string> errors_of(const config_result& result) {
  std::vector<std::string> out;
  for (const config_error& e : result.errors) out.push_back(e.to_string());
  return out;
}

// Parses text and returns its config, failing the test with every error when it does not parse.
config parse_ok(const std::string& text) {
  config_result result = parse(text);
  EXPECT_THAT(errors_of(result), IsEmpty());
  return result.value.value_or(config{});
}

// ---- the SPEC example and defaults --------------------------------------------------------

TEST(config, spec_example_parses_into_the_documented_values) {
  config_result result = parse_config(spec_example, "spec.yaml");
  ASSERT_THAT(errors_of(result), IsEmpty());
  ASSERT_TRUE(result.value);
  const config& c = *result.value;
  EXPECT_EQ(c.source, "spec.yaml");

  EXPECT_EQ(c.node.id, "eu-1");
  EXPECT_EQ(c.node.region, "eu-west");
  EXPECT_EQ(c.node.zone, "eu-west-a");
  EXPECT_EQ(c.node.data_dir, "./data/eu-1");
  EXPECT_EQ(c.node.workers, 1u);
  EXPECT_EQ(c.listen.proxy, (address{"127.0.0.1", 8080}));
  EXPECT_EQ(c.listen.admin, (address{"127.0.0.1", 9901}));
  EXPECT_EQ(c.admin.token_file, "./admin.token");

  ASSERT_TRUE(c.cluster);
  EXPECT_EQ(c.cluster->bind, (address{"127.0.0.1", 7946}));
  EXPECT_EQ(c.cluster->advertise, (address{"127.0.0.1", 7946}));
  EXPECT_THAT(c.cluster->seeds, ElementsAre(address{"127.0.0.1", 7947}));
  EXPECT_EQ(c.cluster->keyring_file, "./cluster.keys");

  ASSERT_EQ(c.upstreams.size(), 1u);
  const upstream_config& u = c.upstreams[0];
  EXPECT_EQ(u.name, "users");
  EXPECT_EQ(u.line, 18);
  ASSERT_EQ(u.targets.size(), 2u);
  EXPECT_EQ(u.targets[0].addr, (address{"127.0.0.1", 9001}));
  EXPECT_EQ(u.targets[0].region, "eu-west");
  EXPECT_EQ(u.targets[0].weight, 1u);
  EXPECT_EQ(u.targets[0].line, 20);
  EXPECT_EQ(u.targets[1].addr, (address{"127.0.0.1", 9002}));
  EXPECT_EQ(u.targets[1].region, "us-east");
  EXPECT_EQ(u.targets[1].weight, 1u);
  EXPECT_EQ(u.balance, balance_policy::round_robin);
  EXPECT_TRUE(u.health_check.enabled);
  EXPECT_EQ(u.health_check.path, "/healthz");
  EXPECT_EQ(u.health_check.interval, seconds(1));
  EXPECT_EQ(u.health_check.timeout, milliseconds(500));
  EXPECT_EQ(u.health_check.unhealthy_after, 2u);
  EXPECT_EQ(u.health_check.healthy_after, 2u);
  EXPECT_TRUE(u.circuit_breaker.enabled);
  EXPECT_DOUBLE_EQ(u.circuit_breaker.failure_rate, 0.5);
  EXPECT_EQ(u.circuit_breaker.min_requests, 10u);
  EXPECT_EQ(u.circuit_breaker.window, seconds(10));
  EXPECT_EQ(u.circuit_breaker.open_for, seconds(5));
  EXPECT_EQ(u.circuit_breaker.half_open_probes, 1u);
  EXPECT_EQ(u.circuit_breaker.scope, "cluster");
  EXPECT_EQ(u.timeouts.connect, seconds(1));
  EXPECT_EQ(u.timeouts.request, seconds(15));
  EXPECT_EQ(u.retries.attempts, 2u);
  EXPECT_TRUE(u.retries.on_connect_failure);
  EXPECT_FALSE(u.retries.on_timeout);
  EXPECT_THAT(u.retries.on_status, ElementsAre(502, 503, 504));

  ASSERT_EQ(c.routes.size(), 1u);
  const route_config& r = c.routes[0];
  EXPECT_EQ(r.name, "users");
  EXPECT_EQ(r.line, 28);
  EXPECT_EQ(r.match.path_prefix, "/api/users");
  EXPECT_FALSE(r.match.path);
  EXPECT_FALSE(r.match.path_regex);
  EXPECT_THAT(r.match.methods, ElementsAre("GET", "POST"));
  EXPECT_EQ(r.match.host, "api.example.com");
  EXPECT_THAT(r.match.headers, ElementsAre(Pair("x-tenant", "acme")));
  EXPECT_THAT(r.match.query, ElementsAre(Pair("version", "2")));
  EXPECT_EQ(r.upstream, "users");
  EXPECT_EQ(r.strip_prefix, "/api");
  EXPECT_THAT(r.request_headers.add, ElementsAre(Pair("x-gateway", "meridian")));
  EXPECT_THAT(r.request_headers.remove, ElementsAre("x-internal"));
  EXPECT_THAT(r.response_headers.add, ElementsAre(Pair("x-served-by", "meridian")));
  ASSERT_TRUE(r.auth);
  EXPECT_THAT(r.auth->methods, ElementsAre("api_key", "jwt"));
  EXPECT_EQ(r.auth->jwt, "");
  ASSERT_EQ(r.rate_limits.size(), 1u);
  EXPECT_EQ(r.rate_limits[0].limit, 100u);
  EXPECT_EQ(r.rate_limits[0].window, minutes(1));
  EXPECT_EQ(r.rate_limits[0].key, "consumer");
  EXPECT_EQ(r.rate_limits[0].algorithm, "sliding_window");
  EXPECT_EQ(r.rate_limits[0].scope, "global");

  ASSERT_EQ(c.consumers.size(), 1u);
  EXPECT_EQ(c.consumers[0].id, "acme");
  EXPECT_THAT(c.consumers[0].groups, ElementsAre("partners"));
  EXPECT_EQ(c.consumers[0].line, 38);
  ASSERT_EQ(c.jwt.size(), 1u);
  EXPECT_EQ(c.jwt[0].name, "main");
  EXPECT_EQ(c.jwt[0].issuer, "https://issuer.example");
  EXPECT_EQ(c.jwt[0].audience, "api");
  EXPECT_EQ(c.jwt[0].jwks_file, "./jwks.json");
  EXPECT_EQ(c.jwt[0].line, 41);
}

TEST(config, minimal_config_gets_the_documented_defaults) {
  config c = parse_ok(minimal);
  char host[256] = {};
  ASSERT_EQ(gethostname(host, sizeof(host) - 1), 0);
  EXPECT_EQ(c.node.id, host);
  EXPECT_EQ(c.node.region, "eu-west");
  EXPECT_EQ(c.node.zone, "");
  EXPECT_EQ(c.node.data_dir, "./data");
  EXPECT_EQ(c.node.workers, 1u);
  EXPECT_EQ(c.listen.proxy, (address{"127.0.0.1", 8080}));
  EXPECT_EQ(c.listen.admin, (address{"127.0.0.1", 9901}));
  EXPECT_EQ(c.admin.token_file, "");
  EXPECT_FALSE(c.cluster);
  EXPECT_EQ(c.limits.max_header_bytes, 64u * 1024);
  EXPECT_EQ(c.limits.max_url_bytes, 8u * 1024);
  EXPECT_EQ(c.limits.max_body_bytes, 0u);
  EXPECT_EQ(c.limits.header_timeout, seconds(10));
  EXPECT_EQ(c.limits.idle_timeout, seconds(60));
  EXPECT_EQ(c.log.level, "info");
  EXPECT_FALSE(c.log.access_log.enabled);
  EXPECT_EQ(c.log.access_log.path, "stdout");
  EXPECT_THAT(c.upstreams, IsEmpty());
  EXPECT_THAT(c.routes, IsEmpty());
}

TEST(config, upstream_and_route_defaults_apply_when_keys_are_absent) {
  config c = parse_ok(std::string(minimal) + R"(
upstreams:
  - name: a
    targets: [127.0.0.1:9001]
routes:
  - name: r
    upstream: a
)");
  ASSERT_EQ(c.upstreams.size(), 1u);
  const upstream_config& u = c.upstreams[0];
  EXPECT_EQ(u.balance, balance_policy::round_robin);
  EXPECT_EQ(u.hash_on, "ip");
  EXPECT_FALSE(u.health_check.enabled);
  EXPECT_FALSE(u.circuit_breaker.enabled);
  EXPECT_EQ(u.timeouts.connect, seconds(1));
  EXPECT_EQ(u.timeouts.request, seconds(15));
  EXPECT_EQ(u.timeouts.idle, seconds(60));
  EXPECT_EQ(u.retries.attempts, 0u);
  EXPECT_TRUE(u.retries.on_connect_failure);
  EXPECT_FALSE(u.retries.on_timeout);
  EXPECT_THAT(u.retries.on_status, IsEmpty());
  EXPECT_EQ(u.outlier.consecutive_failures, 5u);
  EXPECT_EQ(u.pool.max_idle_per_target, 64u);
  const route_config& r = c.routes[0];
  EXPECT_FALSE(r.auth);
  EXPECT_FALSE(r.rewrite);
  EXPECT_FALSE(r.max_body_bytes);
  EXPECT_FALSE(r.preserve_host);
  EXPECT_THAT(r.rate_limits, IsEmpty());
  EXPECT_EQ(r.strip_prefix, "");
}

TEST(config, a_null_value_counts_as_absent) {
  config c = parse_ok(R"(
node:
  region: eu-west
  id:
  zone: ~
cluster:
)");
  EXPECT_FALSE(c.node.id.empty());
  EXPECT_EQ(c.node.zone, "");
  EXPECT_FALSE(c.cluster);
}

TEST(config, cluster_advertise_defaults_to_bind) {
  config c = parse_ok(std::string(minimal) + "cluster: {bind: 10.0.0.1:7000}\n");
  ASSERT_TRUE(c.cluster);
  EXPECT_EQ(c.cluster->advertise, (address{"10.0.0.1", 7000}));
  EXPECT_THAT(c.cluster->seeds, IsEmpty());
}

TEST(config, cluster_state_settings_have_defaults_and_bounds) {
  config c = parse_ok(std::string(minimal) + "cluster: {bind: 10.0.0.1:7000}\n");
  EXPECT_EQ(c.cluster->sync_interval, std::chrono::milliseconds(100));
  EXPECT_EQ(c.cluster->tombstone_grace, std::chrono::hours(24));
  EXPECT_TRUE(c.cluster->clock_correction);
  c = parse_ok(std::string(minimal) +
               "cluster: {sync_interval: 50ms, max_clock_skew: 5s, tombstone_grace: 2h, "
               "max_counter_keys: 5000, clock_correction: false}\n");
  EXPECT_FALSE(c.cluster->clock_correction);
  EXPECT_EQ(c.cluster->sync_interval, std::chrono::milliseconds(50));
  EXPECT_EQ(c.cluster->max_clock_skew, std::chrono::seconds(5));
  EXPECT_EQ(c.cluster->max_counter_keys, 5000u);
  auto bad = parse_config(std::string(minimal) + "cluster: {sync_interval: 1ms}\n", "c.yaml");
  ASSERT_FALSE(bad.value);
  EXPECT_THAT(errors_of(bad)[0], HasSubstr("cluster.sync_interval: must be between 10ms and 10s"));
}

TEST(config, failover_upstreams_must_exist_and_fallbacks_parse) {
  auto bad = parse_config(std::string(minimal) +
                              "upstreams:\n  - name: a\n    targets: [127.0.0.1:1]\n"
                              "    failover: [nowhere]\n",
                          "c.yaml");
  ASSERT_FALSE(bad.value);
  EXPECT_THAT(errors_of(bad)[0],
              HasSubstr("upstream 'a': failover upstream 'nowhere' is not defined"));
  config c = parse_ok(std::string(minimal) +
                      "upstreams:\n  - name: a\n    targets: [127.0.0.1:1]\n    failover: [b]\n"
                      "  - name: b\n    targets: [127.0.0.1:2]\n"
                      "routes:\n  - name: r\n    upstream: a\n"
                      "    fallback: {status: 503, body: sorry, headers: {retry-after: '5'}}\n");
  EXPECT_EQ(c.upstreams[0].failover, std::vector<std::string>{"b"});
  ASSERT_TRUE(c.routes[0].fallback);
  EXPECT_EQ(c.routes[0].fallback->status, 503);
  EXPECT_EQ(c.routes[0].fallback->body, "sorry");
  EXPECT_EQ(c.routes[0].fallback->content_type, "text/plain");
}

TEST(config, workers_zero_means_one_per_core) {
  config c = parse_ok("node: {region: r, workers: 0}\n");
  unsigned cores = std::max(1u, std::min(256u, std::thread::hardware_concurrency()));
  EXPECT_EQ(c.node.workers, cores);
}

TEST(config, clock_offset_is_a_signed_duration_defaulting_to_zero) {
  EXPECT_EQ(parse_ok("node: {region: r}\n").node.clock_offset, milliseconds(0));
  EXPECT_EQ(parse_ok("node: {region: r, clock_offset: -1500ms}\n").node.clock_offset,
            milliseconds(-1500));
  EXPECT_EQ(parse_ok("node: {region: r, clock_offset: 2s}\n").node.clock_offset, seconds(2));
  config_result bad = parse("node: {region: r, clock_offset: --2s}\n");
  ASSERT_EQ(bad.errors.size(), 1u);
  EXPECT_NE(bad.errors[0].message.find("node.clock_offset: invalid duration"), std::string::npos);
}

TEST(config, oauth_grants_and_client_redirect_uris_are_checked) {
  config c = parse_ok(R"(node: {region: r}
oauth: {issuer: https://gw.example}
consumers:
  - {id: web, redirect_uris: ["https://web.example/cb", "http://127.0.0.1:9/cb", "com.app:/cb"]}
  - {id: spa, public_client: true}
)");
  ASSERT_TRUE(c.oauth);
  EXPECT_EQ(c.oauth->grants, (std::vector<std::string>{"client_credentials", "password",
                                                       "authorization_code", "refresh_token"}));
  EXPECT_EQ(c.oauth->authorize_path, "/oauth/authorize");
  EXPECT_EQ(c.oauth->refresh_token_ttl, hours(24 * 30));
  EXPECT_EQ(c.consumers[0].redirect_uris.size(), 3u);
  EXPECT_FALSE(c.consumers[0].public_client);
  EXPECT_TRUE(c.consumers[1].public_client);
  config d = parse_ok(R"(node: {region: r}
oauth: {issuer: i, grants: [authorization_code, refresh_token], refresh_token_ttl: 1d}
)");
  EXPECT_EQ(d.oauth->grants, (std::vector<std::string>{"authorization_code", "refresh_token"}));
  EXPECT_EQ(d.oauth->refresh_token_ttl, hours(24));
  config_result bad = parse(R"(node: {region: r}
oauth: {issuer: i, grants: [implicit], refresh_token_ttl: 5s}
consumers:
  - {id: web, redirect_uris: ["http://web.example/cb", "https://web.example/cb#frag"]}
  - {id: sly, redirect_uris: ["http://127.0.0.1.evil.example/cb", "http://localhost@evil.example/cb",
                              "http://localhost.evil.example", "http://127.0.0.1:80x/cb"]}
)");
  std::vector<std::string> messages;
  for (const auto& e : bad.errors) messages.push_back(e.message);
  ASSERT_EQ(messages.size(), 8u) << ::testing::PrintToString(messages);
  for (size_t i = 4; i < 8; ++i)
    EXPECT_NE(messages[i].find("must be an absolute https:// URI"), std::string::npos) << i;
  EXPECT_NE(messages[0].find("refresh_token_ttl: must be at least 1m"), std::string::npos);
  EXPECT_NE(messages[1].find("'implicit' is not one of client_credentials"), std::string::npos);
  EXPECT_NE(messages[2].find("'http://web.example/cb' must be an absolute https:// URI"),
            std::string::npos);
  EXPECT_NE(messages[3].find("without a fragment"), std::string::npos);
}

TEST(config, listen_ports_may_be_zero_for_an_ephemeral_port) {
  config c = parse_ok(std::string(minimal) + "listen: {proxy: 127.0.0.1:0, admin: 127.0.0.1:0}\n");
  EXPECT_EQ(c.listen.proxy.port, 0);
}

// ---- extra sections -----------------------------------------------------------------------

TEST(config, extra_sections_use_the_struct_member_names_as_keys) {
  config c = parse_ok(R"yaml(
node: {region: eu-west}
limits: {max_header_bytes: 32KiB, max_url_bytes: 4096, max_body_bytes: 10MiB, header_timeout: 5s,
         idle_timeout: 2m, max_connections: 100}
log: {level: debug, access_log: {enabled: true, path: /var/log/meridian.log}}
upstreams:
  - name: a
    targets: [127.0.0.1:9001, "[::1]:9002"]
    balance: consistent_hash
    hash_on: header:X-User
    outlier: {consecutive_failures: 3, eject_for: 30s}
    pool: {max_idle_per_target: 8, max_connections_per_target: 100}
    timeouts: {idle: 90s}
    retries: {budget_ratio: 0.1, budget_min_per_s: 5}
    health_check: {expect_status: [200, 204]}
routes:
  - name: r
    upstream: a
    match: {path_regex: "^/v[0-9]+/.*$"}
    rewrite: {regex: "^/v1/(.*)", replacement: "/$1"}
    query: {add: {a: b}, remove: [x], rename: {old: new}}
    request_headers: {set: {x-set: one}}
    max_body_bytes: 1m
    preserve_host: false
)yaml");
  EXPECT_EQ(c.limits.max_header_bytes, 32u * 1024);
  EXPECT_EQ(c.limits.max_url_bytes, 4096u);
  EXPECT_EQ(c.limits.max_body_bytes, 10u * 1024 * 1024);
  EXPECT_EQ(c.limits.header_timeout, seconds(5));
  EXPECT_EQ(c.limits.idle_timeout, minutes(2));
  EXPECT_EQ(c.limits.max_connections, 100u);
  EXPECT_EQ(c.log.level, "debug");
  EXPECT_TRUE(c.log.access_log.enabled);
  EXPECT_EQ(c.log.access_log.path, "/var/log/meridian.log");

  ASSERT_EQ(c.upstreams.size(), 1u);
  const upstream_config& u = c.upstreams[0];
  ASSERT_EQ(u.targets.size(), 2u);
  EXPECT_EQ(u.targets[1].addr, (address{"::1", 9002}));
  EXPECT_EQ(u.targets[1].weight, 1u);
  EXPECT_EQ(u.balance, balance_policy::consistent_hash);
  EXPECT_EQ(u.hash_on, "header:x-user");
  EXPECT_EQ(u.outlier.consecutive_failures, 3u);
  EXPECT_EQ(u.outlier.eject_for, seconds(30));
  EXPECT_EQ(u.pool.max_idle_per_target, 8u);
  EXPECT_EQ(u.pool.max_connections_per_target, 100u);
  EXPECT_EQ(u.timeouts.idle, seconds(90));
  EXPECT_EQ(u.timeouts.connect, seconds(1));
  EXPECT_DOUBLE_EQ(u.retries.budget_ratio, 0.1);
  EXPECT_EQ(u.retries.budget_min_per_s, 5u);
  EXPECT_TRUE(u.health_check.enabled);
  EXPECT_EQ(u.health_check.path, "/healthz");
  EXPECT_THAT(u.health_check.expect_status, ElementsAre(200, 204));

  ASSERT_EQ(c.routes.size(), 1u);
  const route_config& r = c.routes[0];
  EXPECT_EQ(r.match.path_regex, "^/v[0-9]+/.*$");
  ASSERT_TRUE(r.rewrite);
  EXPECT_EQ(r.rewrite->regex, "^/v1/(.*)");
  EXPECT_EQ(r.rewrite->replacement, "/$1");
  EXPECT_THAT(r.query.add, ElementsAre(Pair("a", "b")));
  EXPECT_THAT(r.query.remove, ElementsAre("x"));
  EXPECT_THAT(r.query.rename, ElementsAre(Pair("old", "new")));
  EXPECT_THAT(r.request_headers.set, ElementsAre(Pair("x-set", "one")));
  EXPECT_EQ(r.max_body_bytes, 1024u * 1024);
  EXPECT_EQ(r.preserve_host, false);
}

TEST(config, a_target_may_be_a_plain_address_or_a_map_without_region) {
  config c = parse_ok(std::string(minimal) + R"(upstreams:
  - name: a
    targets:
      - 10.0.0.1:80
      - {address: 10.0.0.2:80, weight: 3, zone: z1}
)");
  ASSERT_EQ(c.upstreams[0].targets.size(), 2u);
  const target_config& plain = c.upstreams[0].targets[0];
  EXPECT_EQ(plain.addr, (address{"10.0.0.1", 80}));
  EXPECT_EQ(plain.region, "");
  EXPECT_EQ(plain.line, 6);
  const target_config& mapped = c.upstreams[0].targets[1];
  EXPECT_EQ(mapped.region, "");
  EXPECT_EQ(mapped.zone, "z1");
  EXPECT_EQ(mapped.weight, 3u);
  EXPECT_EQ(mapped.line, 7);
}

TEST(config, rate_limit_may_be_one_map_or_a_list_of_maps) {
  config c = parse_ok(std::string(minimal) + R"(upstreams: [{name: a, targets: [127.0.0.1:1]}]
routes:
  - name: one
    upstream: a
    rate_limit: {limit: 5}
  - name: two
    upstream: a
    rate_limit:
      - {limit: 10, window: 1s, key: ip, algorithm: token_bucket, scope: local}
      - {limit: 1000, window: 1h, key: "header:X-Api-Key", algorithm: fixed_window, scope: region}
)");
  ASSERT_EQ(c.routes.size(), 2u);
  ASSERT_EQ(c.routes[0].rate_limits.size(), 1u);
  EXPECT_EQ(c.routes[0].rate_limits[0].limit, 5u);
  EXPECT_EQ(c.routes[0].rate_limits[0].window, minutes(1));
  ASSERT_EQ(c.routes[1].rate_limits.size(), 2u);
  EXPECT_EQ(c.routes[1].rate_limits[0].key, "ip");
  EXPECT_EQ(c.routes[1].rate_limits[0].algorithm, "token_bucket");
  EXPECT_EQ(c.routes[1].rate_limits[0].scope, "local");
  EXPECT_EQ(c.routes[1].rate_limits[1].key, "header:x-api-key");
  EXPECT_EQ(c.routes[1].rate_limits[1].window, std::chrono::hours(1));
}

TEST(config, methods_are_upper_cased_and_match_header_names_lower_cased) {
  config c = parse_ok(std::string(minimal) + R"(upstreams: [{name: a, targets: [127.0.0.1:1]}]
routes:
  - name: r
    upstream: a
    match: {path: /x, methods: [get, Post, GET], headers: {X-Tenant: Acme}, host: API.Example.com}
)");
  const match_config& m = c.routes[0].match;
  EXPECT_THAT(m.methods, ElementsAre("GET", "POST"));
  EXPECT_THAT(m.headers, ElementsAre(Pair("x-tenant", "Acme")));
  EXPECT_EQ(m.host, "api.example.com");
  EXPECT_EQ(m.path, "/x");
}

TEST(config, route_auth_may_name_a_jwt_provider_and_map_claims_to_headers) {
  config c = parse_ok(std::string(minimal) + R"(upstreams: [{name: a, targets: [127.0.0.1:1]}]
routes:
  - name: r
    upstream: a
    auth: {methods: [jwt], jwt: main, claims_to_headers: {sub: x-consumer-id}}
jwt:
  - {name: main, jwks_url: "https://issuer.example/.well-known/jwks.json"}
)");
  ASSERT_TRUE(c.routes[0].auth);
  EXPECT_EQ(c.routes[0].auth->jwt, "main");
  EXPECT_THAT(c.routes[0].auth->claims_to_headers, ElementsAre(Pair("sub", "x-consumer-id")));
  EXPECT_EQ(c.jwt[0].jwks_url, "https://issuer.example/.well-known/jwks.json");
}

TEST(config, scopes_and_claims_need_the_jwt_method) {
  config_result r = parse(std::string(minimal) + R"(upstreams: [{name: a, targets: [127.0.0.1:1]}]
routes:
  - name: r
    upstream: a
    auth: {methods: [api_key], scopes: [read]}
)");
  ASSERT_EQ(r.errors.size(), 1u);
  EXPECT_NE(r.errors[0].message.find("methods does not include jwt"), std::string::npos)
      << r.errors[0].message;
}

TEST(config, retries_on_lists_exactly_what_is_retried) {
  config c = parse_ok(std::string(minimal) + R"(upstreams:
  - name: a
    targets: [127.0.0.1:1]
    retries: {attempts: 1, on: [timeout, 503]}
)");
  const retries_config& r = c.upstreams[0].retries;
  EXPECT_FALSE(r.on_connect_failure);
  EXPECT_TRUE(r.on_timeout);
  EXPECT_THAT(r.on_status, ElementsAre(503));
}

// ---- errors, each with its exact line ------------------------------------------------------

TEST(config, unknown_key_is_reported_with_its_line) {
  config_result result = parse(R"(
node:
  region: eu-west
  colour: blue
)");
  EXPECT_FALSE(result.value);
  EXPECT_THAT(errors_of(result), ElementsAre("test.yaml:3: unknown key 'colour' in node"));
}

TEST(config, unknown_keys_are_reported_at_every_depth) {
  config_result result = parse(R"(
node: {region: eu-west}
routez: []
upstreams:
  - name: a
    targets: [{address: 127.0.0.1:1, wieght: 2}]
    health_check: {path: /h, intervall: 1s}
routes:
  - name: r
    upstream: a
    match: {path: /x,
            foo: 1}
    rate_limit: [{limit: 1, brust: 2}]
)");
  EXPECT_THAT(errors_of(result),
              ElementsAre("test.yaml:2: unknown key 'routez' at the top level",
                          "test.yaml:5: unknown key 'wieght' in upstreams[0].targets[0]",
                          "test.yaml:6: unknown key 'intervall' in upstreams[0].health_check",
                          "test.yaml:11: unknown key 'foo' in routes[0].match",
                          "test.yaml:12: unknown key 'brust' in routes[0].rate_limit[0]"));
}

TEST(config, duplicate_key_in_one_map_is_reported) {
  config_result result = parse(R"(
node:
  region: eu-west
  region: us-east
)");
  EXPECT_THAT(errors_of(result), ElementsAre("test.yaml:3: duplicate key 'region' in node"));
}

TEST(config, every_problem_is_reported_in_line_order) {
  config_result result = parse(R"(
node:
  workers: lots
upstreams:
  - name: a
    targets: []
    balance: fastest
routes:
  - name: r
    upstream: b
    match: {path: nope}
)");
  EXPECT_FALSE(result.value);
  EXPECT_THAT(errors_of(result),
              ElementsAre("test.yaml:1: missing required key 'region' in node",
                          "test.yaml:2: node.workers: expected a whole number, got 'lots'",
                          "test.yaml:5: upstream 'a' has no targets (at least one is required)",
                          "test.yaml:6: upstreams[0].balance: 'fastest' is not one of round_robin, "
                          "least_request, consistent_hash, random",
                          "test.yaml:9: route 'r': upstream 'b' is not defined",
                          "test.yaml:10: routes[0].match.path: 'nope' must start with '/'"));
}

TEST(config, yaml_syntax_error_is_reported_with_its_line) {
  config_result result = parse(R"(
node:
  region: [eu-west
listen: {}
)");
  EXPECT_FALSE(result.value);
  // yaml-cpp notices the unclosed '[' where the next line starts.
  EXPECT_THAT(errors_of(result),
              ElementsAre("test.yaml:3: invalid YAML: end of sequence flow not found"));
}

TEST(config, bad_indentation_is_a_yaml_error_with_its_line) {
  config_result result = parse("node:\n  region: a\n   zone: b\n");
  ASSERT_EQ(result.errors.size(), 1u);
  EXPECT_EQ(result.errors[0].line, 3);
}

TEST(config, missing_region_is_reported) {
  EXPECT_THAT(errors_of(parse("node: {id: a}\n")),
              ElementsAre("test.yaml:1: missing required key 'region' in node"));
  EXPECT_THAT(errors_of(parse("listen: {}\n")),
              ElementsAre("test.yaml:1: missing required key 'node' (node.region is required)"));
  EXPECT_THAT(errors_of(parse("node:\n  region:\n")),
              ElementsAre("test.yaml:2: node.region: must have a value"));
}

TEST(config, empty_or_non_map_document_is_reported) {
  EXPECT_THAT(errors_of(parse("")),
              ElementsAre("test.yaml:1: the config is empty (node.region is required)"));
  EXPECT_THAT(errors_of(parse("# only a comment\n")),
              ElementsAre("test.yaml:1: the config is empty (node.region is required)"));
  EXPECT_THAT(errors_of(parse("- a\n- b\n")),
              ElementsAre("test.yaml:1: the config: expected a map, got a list"));
}

TEST(config, second_yaml_document_is_reported) {
  EXPECT_THAT(errors_of(parse(std::string(minimal) + "---\nnode: {region: b}\n")),
              ElementsAre("test.yaml:4: only one YAML document is allowed"));
}

TEST(config, wrong_types_are_reported_with_the_value_line) {
  config_result result = parse(R"(
node:
  region: {name: eu}
listen: [127.0.0.1:1]
upstreams:
  - name: a
    targets: 127.0.0.1:1
routes: {name: r}
consumers:
  - id: c
    groups: partners
)");
  EXPECT_THAT(errors_of(result),
              ElementsAre("test.yaml:2: node.region: expected a string, got a map",
                          "test.yaml:3: listen: expected a map, got a list",
                          "test.yaml:6: upstreams[0].targets: expected a list, got '127.0.0.1:1'",
                          "test.yaml:7: routes: expected a list, got a map",
                          "test.yaml:10: consumers[0].groups: expected a list, got 'partners'"));
}

TEST(config, bad_durations_are_reported) {
  config_result result = parse(std::string(minimal) + R"(upstreams:
  - name: a
    targets: [127.0.0.1:1]
    health_check:
      interval: -1s
      timeout: 100us
    timeouts: {connect: "", request: 0s, idle: 10}
)");
  const std::string hint = "(expected a number and a unit ms, s, m, h or d, e.g. 250ms or 1.5s)";
  EXPECT_THAT(
      errors_of(result),
      ElementsAre("test.yaml:7: upstreams[0].health_check.interval: invalid duration '-1s' " + hint,
                  "test.yaml:8: upstreams[0].health_check.timeout: invalid duration "
                  "'100us' " +
                      hint,
                  "test.yaml:9: upstreams[0].timeouts.connect: invalid duration '' " + hint,
                  "test.yaml:9: upstreams[0].timeouts.request: must be greater than 0",
                  "test.yaml:9: upstreams[0].timeouts.idle: invalid duration '10' " + hint));
}

TEST(config, bad_addresses_are_reported) {
  config_result result = parse(std::string(minimal) + R"(listen:
  proxy: 127.0.0.1
  admin: "[::1:9901"
cluster:
  bind: 127.0.0.1:70000
  seeds: [a:0, "::1:80"]
)");
  EXPECT_THAT(
      errors_of(result),
      ElementsAre("test.yaml:4: listen.proxy: invalid address '127.0.0.1' (expected host:port with "
                  "a port in 0..65535; IPv6 as [::1]:port)",
                  "test.yaml:5: listen.admin: invalid address '[::1:9901' (expected host:port with "
                  "a port in 0..65535; IPv6 as [::1]:port)",
                  "test.yaml:7: cluster.bind: invalid address '127.0.0.1:70000' (expected "
                  "host:port with a port in 0..65535; IPv6 as [::1]:port)",
                  "test.yaml:8: cluster.seeds[0]: invalid address 'a:0' (expected host:port with "
                  "a port in 1..65535; IPv6 as [::1]:port)",
                  "test.yaml:8: cluster.seeds[1]: invalid address '::1:80' (expected host:port "
                  "with a port in 1..65535; IPv6 as [::1]:port)"));
}

TEST(config, bad_enum_values_are_reported) {
  config_result result = parse(std::string(minimal) + R"(upstreams:
  - name: a
    targets: [127.0.0.1:1]
    balance: fastest
    circuit_breaker: {scope: global}
routes:
  - name: r
    upstream: a
    auth: {methods: [basic]}
    rate_limit: {limit: 1, key: user, algorithm: gcra, scope: cluster}
log: {level: verbose}
)");
  EXPECT_THAT(
      errors_of(result),
      ElementsAre(
          "test.yaml:6: upstreams[0].balance: 'fastest' is not one of round_robin, "
          "least_request, consistent_hash, random",
          "test.yaml:7: upstreams[0].circuit_breaker.scope: 'global' is not one of local, "
          "region, cluster",
          "test.yaml:11: routes[0].auth.methods[0]: 'basic' is not one of api_key, jwt, oauth",
          "test.yaml:12: routes[0].rate_limit.key: 'user' is not one of consumer, ip, "
          "route, global, header:NAME",
          "test.yaml:12: routes[0].rate_limit.algorithm: 'gcra' is not one of "
          "sliding_window, fixed_window, token_bucket, leaky_bucket",
          "test.yaml:12: routes[0].rate_limit.scope: 'cluster' is not one of local, "
          "region, global",
          "test.yaml:13: log.level: 'verbose' is not one of trace, debug, info, warn, "
          "error, critical, off"));
}

TEST(config, duplicate_names_are_reported_at_the_second_definition) {
  config_result result = parse(std::string(minimal) + R"(upstreams:
  - {name: a, targets: [127.0.0.1:1]}
  - {name: a, targets: [127.0.0.1:2]}
routes:
  - {name: r, upstream: a}
  - {name: r, upstream: a}
consumers:
  - id: c
  - id: c
jwt:
  - {name: j, jwks_file: a.json}
  - {name: j, jwks_file: b.json}
)");
  EXPECT_THAT(errors_of(result),
              ElementsAre("test.yaml:5: duplicate upstream name 'a' (first defined at line 4)",
                          "test.yaml:8: duplicate route name 'r' (first defined at line 7)",
                          "test.yaml:11: duplicate consumer id 'c' (first defined at line 10)",
                          "test.yaml:14: duplicate jwt name 'j' (first defined at line 13)"));
}

TEST(config, route_naming_a_missing_upstream_is_reported_at_the_upstream_line) {
  config_result result = parse(std::string(minimal) + R"(routes:
  - name: r
    match: {path: /}
    upstream: nowhere
)");
  EXPECT_THAT(errors_of(result),
              ElementsAre("test.yaml:6: route 'r': upstream 'nowhere' is not defined"));
}

TEST(config, route_without_upstream_is_reported) {
  EXPECT_THAT(errors_of(parse(std::string(minimal) + "routes:\n  - name: r\n")),
              ElementsAre("test.yaml:4: missing required key 'upstream' in routes[0]"));
}

TEST(config, route_auth_naming_a_missing_jwt_provider_is_reported) {
  config_result result =
      parse(std::string(minimal) + R"(upstreams: [{name: a, targets: [127.0.0.1:1]}]
jwt: [{name: main, jwks_file: j.json}]
routes:
  - name: r
    upstream: a
    auth:
      methods: [jwt]
      jwt: other
)");
  EXPECT_THAT(errors_of(result),
              ElementsAre("test.yaml:10: route 'r': jwt provider 'other' is not defined"));
}

TEST(config, route_auth_using_jwt_without_any_provider_is_reported) {
  config_result result =
      parse(std::string(minimal) + R"(upstreams: [{name: a, targets: [127.0.0.1:1]}]
routes:
  - name: r
    upstream: a
    auth: {methods: [api_key, jwt]}
)");
  EXPECT_THAT(errors_of(result),
              ElementsAre("test.yaml:7: route 'r': auth uses jwt but no jwt providers are "
                          "configured"));
}

TEST(config, upstream_without_targets_is_reported) {
  config_result result = parse(std::string(minimal) + R"(upstreams:
  - name: a
  - name: b
    targets: []
)");
  EXPECT_THAT(errors_of(result),
              ElementsAre("test.yaml:4: upstream 'a' has no targets (at least one is required)",
                          "test.yaml:6: upstream 'b' has no targets (at least one is required)"));
}

TEST(config, target_weight_zero_is_reported) {
  config_result result = parse(std::string(minimal) + R"(upstreams:
  - name: a
    targets:
      - {address: 127.0.0.1:1, weight: 0}
)");
  EXPECT_THAT(
      errors_of(result),
      ElementsAre("test.yaml:6: upstreams[0].targets[0].weight: must be at least 1, got 0"));
}

TEST(config, target_without_address_is_reported) {
  config_result result = parse(std::string(minimal) + R"(upstreams:
  - name: a
    targets:
      - {region: eu-west}
)");
  EXPECT_THAT(
      errors_of(result),
      ElementsAre("test.yaml:6: missing required key 'address' in upstreams[0].targets[0]"));
}

TEST(config, non_token_method_is_reported) {
  config_result result =
      parse(std::string(minimal) + R"(upstreams: [{name: a, targets: [127.0.0.1:1]}]
routes:
  - name: r
    upstream: a
    match:
      methods: [GET, "PO ST", "GET/1"]
)");
  EXPECT_THAT(errors_of(result),
              ElementsAre("test.yaml:8: routes[0].match.methods[1]: 'PO ST' is not a valid HTTP "
                          "method",
                          "test.yaml:8: routes[0].match.methods[2]: 'GET/1' is not a valid HTTP "
                          "method"));
}

TEST(config, paths_and_strip_prefix_must_start_with_a_slash) {
  config_result result =
      parse(std::string(minimal) + R"(upstreams: [{name: a, targets: [127.0.0.1:1]}]
routes:
  - name: r1
    upstream: a
    match: {path_prefix: api}
    strip_prefix: api
  - name: r2
    upstream: a
    match: {path: ""}
)");
  EXPECT_THAT(errors_of(result),
              ElementsAre("test.yaml:7: routes[0].match.path_prefix: 'api' must start with '/'",
                          "test.yaml:8: routes[0].strip_prefix: 'api' must start with '/'",
                          "test.yaml:11: routes[1].match.path: must not be empty"));
}

TEST(config, path_conditions_may_be_combined) {
  // SPEC: a route matches when every field given matches; the router checks them all.
  config c = parse_ok(std::string(minimal) + R"(upstreams: [{name: a, targets: [127.0.0.1:1]}]
routes:
  - name: r
    upstream: a
    match: {path_prefix: /api/, path_regex: "^/api/v[0-9]+/.*"}
)");
  EXPECT_EQ(c.routes[0].match.path_prefix, "/api/");
  EXPECT_EQ(c.routes[0].match.path_regex, "^/api/v[0-9]+/.*");
}

TEST(config, path_regex_that_does_not_compile_is_reported_with_its_line) {
  config_result result =
      parse(std::string(minimal) + R"(upstreams: [{name: a, targets: [127.0.0.1:1]}]
routes:
  - name: r
    upstream: a
    match:
      path_regex: "^/users/([0-9]+$"
    rewrite: {regex: "(", replacement: /}
)");
  ASSERT_EQ(result.errors.size(), 2u);
  EXPECT_EQ(result.errors[0].line, 8);
  EXPECT_THAT(result.errors[0].message,
              HasSubstr("routes[0].match.path_regex: invalid regex '^/users/([0-9]+$': "));
  EXPECT_EQ(result.errors[1].line, 9);
  EXPECT_THAT(result.errors[1].message, HasSubstr("routes[0].rewrite.regex: invalid regex '(': "));
}

TEST(config, retries_on_rejects_statuses_outside_5xx_and_unknown_words) {
  config_result result = parse(std::string(minimal) + R"(upstreams:
  - name: a
    targets: [127.0.0.1:1]
    retries:
      on: [connect_failure, 404, reset, 600]
)");
  EXPECT_THAT(
      errors_of(result),
      ElementsAre(
          "test.yaml:7: upstreams[0].retries.on[1]: '404' is not connect_failure, timeout "
          "or a status code in 500..599",
          "test.yaml:7: upstreams[0].retries.on[2]: 'reset' is not connect_failure, timeout "
          "or a status code in 500..599",
          "test.yaml:7: upstreams[0].retries.on[3]: '600' is not connect_failure, timeout "
          "or a status code in 500..599"));
}

TEST(config, rate_limit_must_be_positive_and_present) {
  config_result result =
      parse(std::string(minimal) + R"(upstreams: [{name: a, targets: [127.0.0.1:1]}]
routes:
  - name: r
    upstream: a
    rate_limit:
      - {limit: 0}
      - {window: 1s}
)");
  EXPECT_THAT(errors_of(result),
              ElementsAre("test.yaml:8: routes[0].rate_limit[0].limit: must be at least 1, got 0",
                          "test.yaml:9: missing required key 'limit' in routes[0].rate_limit[1]"));
}

TEST(config, circuit_breaker_failure_rate_must_be_in_zero_one) {
  config_result result = parse(std::string(minimal) + R"(upstreams:
  - name: a
    targets: [127.0.0.1:1]
    circuit_breaker: {failure_rate: 0}
  - name: b
    targets: [127.0.0.1:1]
    circuit_breaker: {failure_rate: 1.5}
  - name: c
    targets: [127.0.0.1:1]
    circuit_breaker: {failure_rate: 1}
)");
  EXPECT_THAT(errors_of(result),
              ElementsAre("test.yaml:6: upstreams[0].circuit_breaker.failure_rate: must be greater "
                          "than 0 and at most 1, got 0",
                          "test.yaml:9: upstreams[1].circuit_breaker.failure_rate: must be greater "
                          "than 0 and at most 1, got 1.5"));
}

TEST(config, workers_above_256_is_reported) {
  EXPECT_THAT(errors_of(parse("node:\n  region: r\n  workers: 257\n")),
              ElementsAre("test.yaml:3: node.workers: must be between 0 and 256, got 257"));
}

TEST(config, jwt_provider_needs_exactly_one_key_source) {
  config_result result = parse(std::string(minimal) + R"(jwt:
  - name: a
  - {name: b, jwks_file: f, jwks_url: "https://x"}
  - {name: c, jwks_url: "ftp://x"}
)");
  EXPECT_THAT(errors_of(result),
              ElementsAre("test.yaml:4: jwt[0]: one of jwks_file or jwks_url is required",
                          "test.yaml:5: jwt[1]: give only one of jwks_file and jwks_url",
                          "test.yaml:6: jwt[2].jwks_url: 'ftp://x' must be an http:// or https:// "
                          "URL"));
}

TEST(config, header_transform_rejects_bad_names_and_values) {
  config_result result =
      parse(std::string(minimal) + R"(upstreams: [{name: a, targets: [127.0.0.1:1]}]
routes:
  - name: r
    upstream: a
    request_headers:
      add: {"bad name": x}
      set: {x-ok: "a\r\nInjected: 1"}
      remove: ["x y"]
)");
  EXPECT_THAT(errors_of(result),
              ElementsAre("test.yaml:8: routes[0].request_headers.add: 'bad name' is not a valid "
                          "header name",
                          "test.yaml:9: routes[0].request_headers.set.x-ok: header value contains "
                          "control characters",
                          "test.yaml:10: routes[0].request_headers.remove[0]: 'x y' is not a valid "
                          "header name"));
}

TEST(config, same_proxy_and_admin_address_is_reported) {
  EXPECT_THAT(errors_of(parse(std::string(minimal) +
                              "listen: {proxy: 127.0.0.1:80, admin: 127.0.0.1:80}\n")),
              ElementsAre("test.yaml:3: listen.proxy and listen.admin must differ, both are "
                          "127.0.0.1:80"));
}

TEST(config, jwt_provider_named_without_the_jwt_method_is_reported) {
  config_result result =
      parse(std::string(minimal) + R"(upstreams: [{name: a, targets: [127.0.0.1:1]}]
jwt: [{name: main, jwks_file: j.json}]
routes:
  - name: r
    upstream: a
    auth:
      methods: [api_key]
      jwt: main
)");
  EXPECT_THAT(errors_of(result),
              ElementsAre("test.yaml:10: routes[0].auth: jwt provider 'main' is named but methods "
                          "does not include jwt"));
}

TEST(config, recursive_aliases_are_reported_not_followed_forever) {
  config_result result = parse(std::string(minimal) + R"(upstreams: &u [*u]
routes:
  - name: r
    upstream: a
    match: {headers: &h {x-a: *h}}
)");
  EXPECT_THAT(
      errors_of(result),
      ElementsAre("test.yaml:3: upstreams[0]: expected a map, got a list",
                  "test.yaml:6: route 'r': upstream 'a' is not defined",
                  "test.yaml:7: routes[0].match.headers.x-a: expected a string, got a map"));
}

TEST(config, non_string_keys_are_reported) {
  config_result result = parse(std::string(minimal) + "listen: {[a, b]: 1}\n");
  EXPECT_THAT(errors_of(result),
              ElementsAre("test.yaml:3: keys must be plain strings, got a list in listen"));
}

TEST(config, error_to_string_is_file_colon_line) {
  EXPECT_EQ((config_error{"a.yaml", 7, "boom"}.to_string()), "a.yaml:7: boom");
  EXPECT_EQ((config_error{"a.yaml", 0, "boom"}.to_string()), "a.yaml: boom");
}

// ---- load_config ----------------------------------------------------------------------------

TEST(config, load_config_on_a_missing_file_gives_a_clear_error) {
  config_result result = load_config("/nonexistent/meridian.yaml");
  EXPECT_FALSE(result.value);
  EXPECT_THAT(errors_of(result),
              ElementsAre("/nonexistent/meridian.yaml: cannot open: No such file or directory"));
}

TEST(config, load_config_reads_a_file_and_names_it_in_errors) {
  std::filesystem::path dir = std::filesystem::temp_directory_path() /
                              ("meridian_config_test_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  std::filesystem::path good = dir / "good.yaml";
  std::filesystem::path bad = dir / "bad.yaml";
  std::ofstream(good) << spec_example;
  std::ofstream(bad) << "node:\n  region: r\n  extra: 1\n";

  config_result ok = load_config(good.string());
  EXPECT_THAT(errors_of(ok), IsEmpty());
  ASSERT_TRUE(ok.value);
  EXPECT_EQ(ok.value->source, good.string());

  EXPECT_THAT(errors_of(load_config(bad.string())),
              ElementsAre(bad.string() + ":3: unknown key 'extra' in node"));
  EXPECT_THAT(errors_of(load_config(dir.string())), ElementsAre(HasSubstr("cannot read")));
  std::filesystem::remove_all(dir);
}

// ---- value syntax
// ----------------------------------------------------------------------------

TEST(config, parse_duration_accepts_units_and_decimals) {
  EXPECT_EQ(parse_duration("250ms"), milliseconds(250));
  EXPECT_EQ(parse_duration("2s"), seconds(2));
  EXPECT_EQ(parse_duration("1m"), minutes(1));
  EXPECT_EQ(parse_duration("1h"), std::chrono::hours(1));
  EXPECT_EQ(parse_duration("1d"), std::chrono::hours(24));
  EXPECT_EQ(parse_duration("1.5s"), milliseconds(1500));
  EXPECT_EQ(parse_duration("0.25m"), seconds(15));
  EXPECT_EQ(parse_duration("0s"), milliseconds(0));
  EXPECT_EQ(parse_duration("1.500s"), milliseconds(1500));
}

TEST(config, parse_duration_rejects_malformed_text) {
  for (const char* bad : {"",          "s",     "10",    "-1s",  "+1s",
                          "1.5",       "1.s",   ".5s",   "1 s",  " 1s",
                          "1s ",       "100us", "1ns",   "1S",   "1sec",
                          "1.0005s",   "0.5ms", "1e3ms", "1m1s", "99999999999999999999d",
                          "365000000d"}) {
    EXPECT_FALSE(parse_duration(bad)) << "'" << bad << "'";
  }
}

TEST(config, parse_address_accepts_names_ipv4_and_bracketed_ipv6) {
  EXPECT_EQ(parse_address("127.0.0.1:8080"), (address{"127.0.0.1", 8080}));
  EXPECT_EQ(parse_address("example.com:443"), (address{"example.com", 443}));
  EXPECT_EQ(parse_address("localhost:1"), (address{"localhost", 1}));
  EXPECT_EQ(parse_address("my_host-1:65535"), (address{"my_host-1", 65535}));
  EXPECT_EQ(parse_address("[::1]:80"), (address{"::1", 80}));
  EXPECT_EQ(parse_address("[2001:db8::1]:9000"), (address{"2001:db8::1", 9000}));
  EXPECT_EQ(parse_address("0.0.0.0:0", true), (address{"0.0.0.0", 0}));
}

TEST(config, parse_address_rejects_bad_hosts_and_ports) {
  for (const char* bad : {"",           ":80",          "host",     "host:",     "host:0",
                          "host:65536", "host:-1",      "host:+80", "host:080a", "host:000080",
                          "::1:80",     "[::1]",        "[::1]80",  "[]:80",     "[nothost]:80",
                          "1.2.3:80",   "256.0.0.1:80", "a b:80",   "host/x:80", "-host:80"}) {
    EXPECT_FALSE(parse_address(bad)) << "'" << bad << "'";
  }
}

TEST(config, address_to_string_brackets_ipv6_hosts) {
  EXPECT_EQ((address{"127.0.0.1", 80}.to_string()), "127.0.0.1:80");
  EXPECT_EQ((address{"::1", 80}.to_string()), "[::1]:80");
  EXPECT_EQ(parse_address("[fe80::1]:7")->to_string(), "[fe80::1]:7");
}

TEST(config, parse_size_uses_powers_of_1024_for_every_unit_spelling) {
  EXPECT_EQ(parse_size("0"), 0u);
  EXPECT_EQ(parse_size("1024"), 1024u);
  EXPECT_EQ(parse_size("10b"), 10u);
  EXPECT_EQ(parse_size("64KiB"), 64u * 1024);
  EXPECT_EQ(parse_size("64k"), 64u * 1024);
  EXPECT_EQ(parse_size("64KB"), 64u * 1024);
  EXPECT_EQ(parse_size("10MiB"), 10u << 20);
  EXPECT_EQ(parse_size("10m"), 10u << 20);
  EXPECT_EQ(parse_size("10MB"), 10u << 20);
  EXPECT_EQ(parse_size("1GiB"), 1u << 30);
  EXPECT_EQ(parse_size("1g"), 1u << 30);
  EXPECT_EQ(parse_size("1gb"), 1u << 30);
}

TEST(config, parse_size_rejects_malformed_text) {
  for (const char* bad : {"", "KiB", "-1", "1.5MiB", "1 KiB", "1TiB", "1kibs", "0x10",
                          "99999999999999999999", "17179869184GiB"}) {
    EXPECT_FALSE(parse_size(bad)) << "'" << bad << "'";
  }
}

TEST(config, http2_section_has_defaults_and_checks_its_ranges) {
  config d = parse_ok(minimal);
  EXPECT_TRUE(d.http2.enabled);
  EXPECT_EQ(d.http2.max_concurrent_streams, 256u);
  EXPECT_EQ(d.http2.initial_stream_window, 64u * 1024);
  EXPECT_EQ(d.http2.max_continuations, 8u);
  config c = parse_ok(std::string(minimal) +
                      "http2: {enabled: false, max_concurrent_streams: 10, "
                      "initial_stream_window: 1MiB, connection_window: 4MiB, reset_burst: 5, "
                      "resets_per_second: 2, control_frame_burst: 7, "
                      "control_frames_per_second: 3, max_continuations: 0}\n");
  EXPECT_FALSE(c.http2.enabled);
  EXPECT_EQ(c.http2.max_concurrent_streams, 10u);
  EXPECT_EQ(c.http2.initial_stream_window, 1024u * 1024);
  EXPECT_EQ(c.http2.connection_window, 4u * 1024 * 1024);
  EXPECT_EQ(c.http2.reset_burst, 5u);
  EXPECT_EQ(c.http2.resets_per_second, 2u);
  EXPECT_EQ(c.http2.control_frame_burst, 7u);
  EXPECT_EQ(c.http2.control_frames_per_second, 3u);
  EXPECT_EQ(c.http2.max_continuations, 0u);
  auto bad =
      parse_config(std::string(minimal) + "http2: {initial_stream_window: 4GiB}\n", "c.yaml");
  ASSERT_FALSE(bad.value);
  EXPECT_THAT(errors_of(bad)[0],
              HasSubstr("http2.initial_stream_window: must be between 1024 and 2147483647"));
  auto unknown = parse_config(std::string(minimal) + "http2: {max_streams: 4}\n", "c.yaml");
  ASSERT_FALSE(unknown.value);
}

TEST(config, upstream_protocols_take_tls_and_check_their_combinations) {
  auto with_upstream = [](const std::string& extra) {
    return std::string(
               "node: {id: a, region: r}\nupstreams:\n  - name: u\n"
               "    targets: [{address: 127.0.0.1:1}]\n") +
           extra;
  };
  config plain = parse_ok(with_upstream(""));
  ASSERT_EQ(plain.upstreams.size(), 1u);
  EXPECT_EQ(plain.upstreams[0].protocol, upstream_protocol::http1);
  EXPECT_FALSE(plain.upstreams[0].tls);
  EXPECT_EQ(plain.upstreams[0].pool.max_streams_per_connection, 100u);

  // h2 is always over TLS, verified by default.
  config h2 = parse_ok(with_upstream("    protocol: h2\n"));
  ASSERT_TRUE(h2.upstreams[0].tls);
  EXPECT_TRUE(h2.upstreams[0].tls->verify);

  config full =
      parse_ok(with_upstream("    protocol: h2c\n    pool: {max_streams_per_connection: 7}\n"
                             "    health_check: {grpc_service: pkg.Svc}\n"));
  EXPECT_EQ(full.upstreams[0].protocol, upstream_protocol::h2c);
  EXPECT_EQ(full.upstreams[0].pool.max_streams_per_connection, 7u);
  EXPECT_TRUE(full.upstreams[0].health_check.grpc);
  EXPECT_EQ(full.upstreams[0].health_check.grpc_service, "pkg.Svc");

  config https =
      parse_ok(with_upstream("    tls: {ca_file: ca.pem, server_name: x.internal, cert: c.pem, "
                             "key: k.pem, verify: false}\n"));
  ASSERT_TRUE(https.upstreams[0].tls);
  EXPECT_EQ(https.upstreams[0].protocol, upstream_protocol::http1);
  EXPECT_EQ(https.upstreams[0].tls->ca_file, "ca.pem");
  EXPECT_EQ(https.upstreams[0].tls->server_name, "x.internal");
  EXPECT_FALSE(https.upstreams[0].tls->verify);

  auto errors = [&](const std::string& extra) {
    auto r = parse_config(with_upstream(extra), "c.yaml");
    EXPECT_FALSE(r.value) << extra;
    return r.value ? std::string() : errors_of(r)[0];
  };
  EXPECT_THAT(errors("    protocol: h3\n"), HasSubstr("protocol"));
  EXPECT_THAT(errors("    protocol: h2c\n    tls: {}\n"), HasSubstr("h2c is HTTP/2 without TLS"));
  EXPECT_THAT(errors("    tls: {cert: c.pem}\n"), HasSubstr("cert and key go together"));
  EXPECT_THAT(errors("    pool: {max_streams_per_connection: 0}\n"), HasSubstr("at least 1"));
  EXPECT_THAT(errors("    health_check: {grpc: true}\n"), HasSubstr("needs protocol h2c or h2"));
  EXPECT_THAT(errors("    tls: {ca: x}\n"), HasSubstr("ca"));
}

TEST(config, grpc_transcode_reads_its_descriptors_at_load_and_carries_them_in_documents) {
  const std::string set_path = MERIDIAN_BOOKSTORE_DESCRIPTOR_SET;
  auto with_route = [&](const std::string& protocol, const std::string& transcode) {
    return "node: {id: a, region: r}\nupstreams:\n  - name: g\n    protocol: " + protocol +
           "\n    targets: [{address: 127.0.0.1:1}]\nroutes:\n  - name: rest\n"
           "    match: {path_prefix: /v1/}\n    upstream: g\n    grpc_transcode: " +
           transcode + "\n";
  };
  config c = parse_ok(
      with_route("h2c", "{descriptor_set: " + set_path + ", services: [bookstore.v1.Bookstore]}"));
  ASSERT_TRUE(c.routes[0].grpc_transcode);
  const auto& t = *c.routes[0].grpc_transcode;
  EXPECT_EQ(t.descriptor_set, set_path);
  EXPECT_EQ(t.services, std::vector<std::string>{"bookstore.v1.Bookstore"});
  std::ifstream in(set_path, std::ios::binary);
  std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // The files libprotobuf carries (descriptor.proto) are left out of what travels.
  EXPECT_FALSE(t.descriptor_bytes.empty());
  EXPECT_LT(t.descriptor_bytes.size(), file.size());

  // The JSON document carries the set inline; read back, it is the same set.
  auto j = config_to_json(c)["routes"][0]["grpc_transcode"];
  ASSERT_TRUE(j.contains("descriptor_set_base64"));
  config back = parse_ok(
      with_route("h2", "{descriptor_set_base64: " + j["descriptor_set_base64"].get<std::string>() +
                           ", services: [bookstore.v1.Bookstore]}"));
  EXPECT_EQ(back.routes[0].grpc_transcode->descriptor_bytes, t.descriptor_bytes);

  auto error_of = [&](const std::string& text) {
    auto r = parse_config(text, "c.yaml");
    EXPECT_FALSE(r.value) << text;
    return r.value ? std::string() : errors_of(r)[0];
  };
  EXPECT_THAT(error_of(with_route("h2c", "{descriptor_set: /nonexistent.pb}")),
              HasSubstr("c.yaml:10: routes[0].grpc_transcode.descriptor_set: cannot read"));
  EXPECT_THAT(error_of(with_route("h2c", "{descriptor_set: " + set_path + ", services: [x.Y]}")),
              HasSubstr("unknown service x.Y"));
  EXPECT_THAT(error_of(with_route("http1", "{descriptor_set: " + set_path + "}")),
              HasSubstr("needs protocol h2c or h2"));
  EXPECT_THAT(error_of(with_route("h2c", "{descriptor_set_base64: '%%%'}")),
              HasSubstr("not base64"));
  EXPECT_THAT(error_of(with_route("h2c", "{services: [a.B]}")), HasSubstr("descriptor_set"));
}

}  // namespace
}  // namespace meridian::node

namespace meridian::node {
namespace {

TEST(config, a_month_quota_takes_a_time_zone_and_refuses_what_cannot_apply) {
  const std::string base = std::string(minimal) +
                           "upstreams:\n  - name: a\n    targets: [127.0.0.1:1]\n"
                           "routes:\n  - name: r\n    match: {path_prefix: /}\n    upstream: a\n";
  config c = parse_ok(base +
                      "    api_version: v2\n"
                      "    rate_limit: {limit: 1000, window: 1mo, timezone: Europe/Berlin}\n");
  ASSERT_EQ(c.routes[0].rate_limits.size(), 1u);
  EXPECT_TRUE(c.routes[0].rate_limits[0].calendar_month);
  EXPECT_EQ(c.routes[0].rate_limits[0].timezone, "Europe/Berlin");
  EXPECT_EQ(c.routes[0].api_version, "v2");
  const auto j = config_to_json(c)["routes"][0];
  EXPECT_EQ(j["rate_limit"]["window"], "1mo");
  EXPECT_EQ(j["rate_limit"]["timezone"], "Europe/Berlin");
  EXPECT_EQ(j["api_version"], "v2");
  struct bad_case {
    const char* limit;
    const char* message;
  } cases[] = {
      {"{limit: 5, window: 1mo, timezone: Mars/Base}", "no such zone"},
      {"{limit: 5, window: 1mo, timezone: ../../etc/passwd}", "is not UTC, an offset"},
      {"{limit: 5, window: 1m, timezone: UTC}", "only a calendar window"},
      {"{limit: 5, window: 1mo, algorithm: token_bucket}", "do not apply"},
      {"{limit: 5, window: 2mo}", "rate_limit.window"},
  };
  for (const auto& bc : cases) {
    auto bad = parse(base + "    rate_limit: " + bc.limit + "\n");
    EXPECT_FALSE(bad.value) << bc.limit;
    ASSERT_FALSE(bad.errors.empty()) << bc.limit;
    EXPECT_THAT(errors_of(bad)[0], HasSubstr(bc.message)) << bc.limit;
  }
}

}  // namespace
}  // namespace meridian::node
