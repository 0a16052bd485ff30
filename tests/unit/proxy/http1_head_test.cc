// The heads the gateway writes, byte for byte: what an upstream and a client receive must not
// change by accident (forwarding headers, hop-by-hop removal, Connection-listed names, Via,
// X-Request-Id, rewrites, transforms, framing).
#include "http1_head.h"

#include <gtest/gtest.h>

#include <vector>

namespace meridian::node {
namespace {

std::string text(const byte_buffer& b) {
  return std::string(b.data(), b.size());
}

upstream_head plain(std::span<const field_view> fields) {
  upstream_head h;
  h.method = "GET";
  h.path = "/users/7";
  h.fields = fields;
  h.host = "api.example";
  h.forwarded_host = "api.example";
  h.client_ip = "203.0.113.9";
  h.request_id = "req-1";
  return h;
}

TEST(upstream_head, a_plain_request_gets_host_forwarding_headers_via_and_request_id) {
  std::vector<field_view> fields = {{http::field::host, "Host", "api.example"},
                                    {http::field::accept, "Accept", "*/*"}};
  byte_buffer out;
  EXPECT_EQ(write_upstream_head(plain(fields), out), 0u);
  EXPECT_EQ(text(out),
            "GET /users/7 HTTP/1.1\r\n"
            "Accept: */*\r\n"
            "Host: api.example\r\n"
            "X-Forwarded-For: 203.0.113.9\r\n"
            "X-Forwarded-Proto: http\r\n"
            "X-Forwarded-Host: api.example\r\n"
            "Via: 1.1 meridian\r\n"
            "X-Request-Id: req-1\r\n"
            "\r\n");
}

TEST(upstream_head, an_http2_client_is_named_in_via_and_its_websocket_gets_a_key_of_the_gateway) {
  std::vector<field_view> fields = {{http::field::unknown, "sec-websocket-version", "13"}};
  auto h = plain(fields);
  h.version = 20;
  h.upgrade = "websocket";
  h.websocket_key = "dGhlIHNhbXBsZSBub25jZQ==";
  byte_buffer out;
  write_upstream_head(h, out);
  EXPECT_EQ(text(out),
            "GET /users/7 HTTP/1.1\r\n"
            "sec-websocket-version: 13\r\n"
            "Host: api.example\r\n"
            "X-Forwarded-For: 203.0.113.9\r\n"
            "X-Forwarded-Proto: http\r\n"
            "X-Forwarded-Host: api.example\r\n"
            "Via: 2 meridian\r\n"
            "X-Request-Id: req-1\r\n"
            "Connection: Upgrade\r\nUpgrade: websocket\r\n"
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "\r\n");
}

TEST(upstream_head, hop_by_hop_and_connection_listed_fields_never_reach_the_upstream) {
  std::vector<field_view> fields = {
      {http::field::connection, "Connection", "keep-alive, X-Secret , close"},
      {http::field::keep_alive, "Keep-Alive", "timeout=5"},
      {http::field::te, "TE", "trailers"},
      {http::field::upgrade, "Upgrade", "h2c"},
      {http::field::transfer_encoding, "Transfer-Encoding", "chunked"},
      {http::field::proxy_authorization, "Proxy-Authorization", "Basic eA=="},
      {http::field::unknown, "x-secret", "1"},
      {http::field::unknown, "X-Kept", "2"}};
  auto h = plain(fields);
  h.chunked = true;
  byte_buffer out;
  write_upstream_head(h, out);
  EXPECT_EQ(text(out),
            "GET /users/7 HTTP/1.1\r\n"
            "X-Kept: 2\r\n"
            "Host: api.example\r\n"
            "X-Forwarded-For: 203.0.113.9\r\n"
            "X-Forwarded-Proto: http\r\n"
            "X-Forwarded-Host: api.example\r\n"
            "Via: 1.1 meridian\r\n"
            "X-Request-Id: req-1\r\n"
            "Transfer-Encoding: chunked\r\n"
            "\r\n");
}

TEST(upstream_head, earlier_proxies_are_kept_in_x_forwarded_for_and_via_and_spoofed_ids_dropped) {
  std::vector<field_view> fields = {{http::field::unknown, "X-Forwarded-For", "10.0.0.1"},
                                    {http::field::via, "Via", "1.0 edge"},
                                    {http::field::unknown, "X-Forwarded-For", "10.0.0.2"},
                                    {http::field::via, "Via", "1.1 lb"},
                                    {http::field::unknown, "X-Request-Id", "spoofed"},
                                    {http::field::unknown, "X-Forwarded-Proto", "https"},
                                    {http::field::unknown, "X-Forwarded-Host", "evil.example"}};
  auto h = plain(fields);
  h.tls = true;
  h.version = 10;
  byte_buffer out;
  write_upstream_head(h, out);
  EXPECT_EQ(text(out),
            "GET /users/7 HTTP/1.1\r\n"
            "X-Forwarded-For: 10.0.0.1\r\n"
            "Via: 1.0 edge\r\n"
            "Host: api.example\r\n"
            "X-Forwarded-For: 10.0.0.2, 203.0.113.9\r\n"
            "X-Forwarded-Proto: https\r\n"
            "X-Forwarded-Host: api.example\r\n"
            "Via: 1.1 lb, 1.0 meridian\r\n"
            "X-Request-Id: req-1\r\n"
            "\r\n");
}

TEST(upstream_head, route_transforms_and_identity_are_applied_and_consumed_credentials_dropped) {
  std::vector<field_view> fields = {{http::field::authorization, "Authorization", "Bearer t"},
                                    {http::field::unknown, "X-Env", "client"},
                                    {http::field::unknown, "X-Consumer-Id", "forged"},
                                    {http::field::unknown, "X-Remove-Me", "1"}};
  std::vector<std::string> drop = {"x-env", "x-consumer-id", "x-remove-me"};
  std::vector<std::pair<std::string, std::string>> set = {{"X-Env", "prod"}};
  std::vector<std::pair<std::string, std::string>> add = {{"X-Added", "a"}};
  std::vector<std::pair<std::string, std::string>> identity = {{"X-Consumer-Id", "alice"},
                                                               {"X-Bad", "a\r\nInjected: 1"}};
  query_transform qt;
  qt.remove = {"debug"};
  qt.rename = {{"q", "query"}};
  qt.add = {{"v", "2"}};
  auto h = plain(fields);
  h.query = "q=cats&debug=1&&flag";
  h.has_query = true;
  h.query_rules = &qt;
  h.drop = drop;
  h.set = set;
  h.add = add;
  h.identity = identity;
  h.strip_authorization = true;
  byte_buffer out;
  EXPECT_EQ(write_upstream_head(h, out), 1u);  // the header that would split the head
  EXPECT_EQ(text(out),
            "GET /users/7?query=cats&flag&v=2 HTTP/1.1\r\n"
            "Host: api.example\r\n"
            "X-Forwarded-For: 203.0.113.9\r\n"
            "X-Forwarded-Proto: http\r\n"
            "X-Forwarded-Host: api.example\r\n"
            "Via: 1.1 meridian\r\n"
            "X-Request-Id: req-1\r\n"
            "X-Env: prod\r\n"
            "X-Added: a\r\n"
            "X-Consumer-Id: alice\r\n"
            "\r\n");
}

TEST(upstream_head, an_empty_query_is_kept_as_sent) {
  auto h = plain({});
  h.has_query = true;
  byte_buffer out;
  write_upstream_head(h, out);
  EXPECT_EQ(text(out).substr(0, 25), "GET /users/7? HTTP/1.1\r\nH");
}

TEST(upstream_path, strip_prefix_keeps_a_leading_slash_and_rewrite_replaces_the_first_match) {
  route_config rc;
  rc.strip_prefix = "/api";
  std::string scratch;
  EXPECT_EQ(upstream_path("/api/users", rc, nullptr, &scratch), "/users");
  EXPECT_EQ(upstream_path("/apiusers", rc, nullptr, &scratch), "/users");
  EXPECT_EQ(upstream_path("/api", rc, nullptr, &scratch), "/");
  EXPECT_EQ(upstream_path("/other", rc, nullptr, &scratch), "/other");
  rc.strip_prefix.clear();
  rc.rewrite = rewrite_config{"^/v1/(.*)$", "/v2/$1"};
  boost::regex re(rc.rewrite->regex, boost::regex::ECMAScript);
  EXPECT_EQ(upstream_path("/v1/items/3", rc, &re, &scratch), "/v2/items/3");
  EXPECT_EQ(upstream_path("/v3/items", rc, &re, &scratch), "/v3/items");
}

// An upstream response's fields: one to keep, one listed in Connection, a framing field, and
// one the route replaces (drop: server).
std::vector<field_view> upstream_response_fields() {
  return {{http::field::content_type, "Content-Type", "application/json"},
          {http::field::connection, "Connection", "X-Internal"},
          {http::field::unknown, "X-Internal", "secret"},
          {http::field::transfer_encoding, "Transfer-Encoding", "chunked"},
          {http::field::server, "Server", "upstream/1"}};
}

TEST(response_head, the_upstreams_fields_pass_minus_hop_by_hop_with_the_gateways_added) {
  std::vector<field_view> fields = upstream_response_fields();
  std::vector<std::string> drop = {"server"};
  std::vector<std::pair<std::string, std::string>> set = {{"Server", "meridian"}};
  response_head h;
  h.status = 200;
  h.reason = "OK";
  h.fields = fields;
  h.drop = drop;
  h.set = set;
  h.rate_limit_lines = "RateLimit-Limit: 10\r\n";
  h.request_id = "req-1";
  h.chunked = true;
  byte_buffer out;
  write_response_head(h, out);
  EXPECT_EQ(text(out),
            "HTTP/1.1 200 OK\r\n"
            "Content-Type: application/json\r\n"
            "Server: meridian\r\n"
            "RateLimit-Limit: 10\r\n"
            "X-Request-Id: req-1\r\n"
            "Transfer-Encoding: chunked\r\n"
            "\r\n");
}

TEST(response_head, the_fields_for_other_codecs_are_the_ones_the_http1_head_carries) {
  std::vector<field_view> fields = upstream_response_fields();
  std::vector<std::string> drop = {"server"};
  std::vector<std::pair<std::string, std::string>> set = {{"Server", "meridian"},
                                                          {"Bad", "a\r\nb"}};
  response_head h;
  h.fields = fields;
  h.drop = drop;
  h.set = set;
  h.rate_limit_lines = "RateLimit-Limit: 10\r\nRateLimit-Remaining: 9\r\n";
  h.request_id = "req-1";
  std::vector<std::pair<std::string, std::string>> seen;
  for_each_response_field(h,
                          [&](std::string_view k, std::string_view v) { seen.emplace_back(k, v); });
  std::vector<std::pair<std::string, std::string>> expected = {{"Content-Type", "application/json"},
                                                               {"Server", "meridian"},
                                                               {"RateLimit-Limit", "10"},
                                                               {"RateLimit-Remaining", "9"},
                                                               {"X-Request-Id", "req-1"}};
  EXPECT_EQ(seen, expected);
  h.informational = true;
  seen.clear();
  for_each_response_field(h,
                          [&](std::string_view k, std::string_view v) { seen.emplace_back(k, v); });
  EXPECT_EQ(seen.size(), 2u);  // no rate-limit lines or request id on a 1xx
}

TEST(response_head, an_upstream_request_id_is_kept_and_connection_follows_the_decision) {
  std::vector<field_view> fields = {{http::field::unknown, "X-Request-Id", "up-9"}};
  response_head h;
  h.status = 503;
  h.fields = fields;
  h.request_id = "req-1";
  h.connection = response_head::connection::close;
  byte_buffer out;
  write_response_head(h, out);
  EXPECT_EQ(text(out),
            "HTTP/1.1 503 Service Unavailable\r\n"
            "X-Request-Id: up-9\r\n"
            "Connection: close\r\n"
            "\r\n");
  out.clear();
  h.fields = {};
  h.status = 100;
  h.reason = "Continue";
  h.informational = true;
  write_response_head(h, out);
  EXPECT_EQ(text(out), "HTTP/1.1 100 Continue\r\n\r\n");  // 1xx: nothing of ours added
}

}  // namespace
}  // namespace meridian::node
