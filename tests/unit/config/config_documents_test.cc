// Cluster config documents: every route, upstream and consumer of a config file, written as
// GET /config's JSON, composes back into the same config (the seed path), and bad documents
// are reported by name.
#include <gtest/gtest.h>

#include "meridian/config/config.h"
#include "meridian/config/config_json.h"

namespace meridian::node {
namespace {

const char* full_config = R"(
node: {id: eu-1, region: eu-west}
upstreams:
  - name: users
    targets:
      - {address: 127.0.0.1:9001, region: eu-west, weight: 3}
      - {address: 127.0.0.1:9002, region: us-east}
    balance: least_request
    health_check: {path: /healthz, interval: 1s, timeout: 500ms, unhealthy_after: 2, healthy_after: 2}
    circuit_breaker: {failure_rate: 0.5, min_requests: 10, window: 10s, open_for: 5s, half_open_probes: 1, scope: cluster}
    timeouts: {connect: 1s, request: 15s}
    retries: {attempts: 2, on: [connect_failure, 502, 503, 504]}
  - name: other
    targets: [{address: 127.0.0.1:9003}]
    protocol: h2
    tls: {ca_file: /etc/ca.pem, server_name: api.internal, verify: true}
    pool: {max_streams_per_connection: 50}
    health_check: {grpc: true, grpc_service: users.v1.Users}
routes:
  - name: users
    match: {path_prefix: /api/users, methods: [GET, POST], host: api.example.com,
            headers: {x-tenant: acme}, query: {version: "2"}}
    upstream: users
    strip_prefix: /api
    request_headers: {add: {x-gateway: meridian}, remove: [x-internal]}
    response_headers: {add: {x-served-by: meridian}}
    rate_limit: {limit: 100, window: 1m, key: consumer, algorithm: sliding_window, scope: global}
  - name: exact
    match: {path: /status}
    upstream: other
consumers:
  - id: acme
    groups: [partners]
)";

std::vector<config_document> documents_from(const config& c) {
  auto j = config_to_json(c);
  std::vector<config_document> docs;
  for (const auto& r : j["routes"])
    docs.push_back({document_kind::route, r["name"].get<std::string>(), r.dump()});
  for (const auto& u : j["upstreams"])
    docs.push_back({document_kind::upstream, u["name"].get<std::string>(), u.dump()});
  for (const auto& c2 : j["consumers"])
    docs.push_back({document_kind::consumer, c2["id"].get<std::string>(), c2.dump()});
  return docs;
}

TEST(config_documents, a_config_file_round_trips_through_its_json_documents) {
  auto parsed = parse_config(full_config, "full.yaml");
  ASSERT_TRUE(parsed.value) << parsed.errors.front().to_string();
  auto docs = documents_from(*parsed.value);
  ASSERT_EQ(docs.size(), 5u);
  config base = *parsed.value;
  auto composed = compose_config(base, docs, true);
  ASSERT_TRUE(composed.errors.empty()) << composed.errors.front();
  auto a = config_to_json(*parsed.value);
  auto b = config_to_json(composed.cfg);
  EXPECT_EQ(a["routes"], b["routes"]);
  EXPECT_EQ(a["upstreams"], b["upstreams"]);
  EXPECT_EQ(a["consumers"], b["consumers"]);
}

TEST(config_documents, problems_name_the_document_and_lenient_mode_keeps_the_rest) {
  auto parsed = parse_config("node: {region: eu-west}\n", "n.yaml");
  ASSERT_TRUE(parsed.value);
  std::vector<config_document> docs = {
      {document_kind::upstream, "u", R"({"name":"u","targets":[{"address":"127.0.0.1:1"}]})"},
      {document_kind::route, "ok", R"({"name":"ok","upstream":"u"})"},
      {document_kind::route, "orphan", R"({"name":"orphan","upstream":"gone"})"},
      {document_kind::route, "typo", R"({"name":"typo","upstream":"u","matchh":{}})"},
      {document_kind::consumer, "c", R"({"id":"d"})"},
      {document_kind::route, "broken", "{"},
  };
  auto lenient = compose_config(*parsed.value, docs, false);
  ASSERT_EQ(lenient.cfg.routes.size(), 1u);
  EXPECT_EQ(lenient.cfg.routes[0].name, "ok");
  EXPECT_EQ(lenient.cfg.upstreams.size(), 1u);
  EXPECT_TRUE(lenient.cfg.consumers.empty());
  ASSERT_EQ(lenient.errors.size(), 4u);
  std::string all;
  for (const auto& e : lenient.errors) all += e + "\n";
  EXPECT_NE(all.find("routes/orphan: upstream 'gone' is not defined"), std::string::npos) << all;
  EXPECT_NE(all.find("routes/typo:1: unknown key 'matchh'"), std::string::npos) << all;
  EXPECT_NE(all.find("consumers/c: id 'd' does not match the path"), std::string::npos) << all;
  EXPECT_NE(all.find("routes/broken"), std::string::npos) << all;

  auto strict = compose_config(*parsed.value, docs, true);
  EXPECT_EQ(strict.errors, lenient.errors);
  EXPECT_TRUE(strict.cfg.routes.empty());
}

}  // namespace
}  // namespace meridian::node
