// Defects found by testing from outside (issue 15): each test here failed on the main of that
// time and states the behaviour that fixed it.

#include <gtest/gtest.h>

#include <spdlog/sinks/ringbuffer_sink.h>
#include <spdlog/spdlog.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "jws_signer.h"
#include "meridian/cluster/keyring.h"
#include "test_support.h"

namespace meridian::testing {
namespace {

// Starts `up` answering every request with "<METHOD> <path> <body>".
void serve_echo(upstream& up) {
  auto echo = [](const httplib::Request& req, httplib::Response& res) {
    res.set_content(req.method + " " + req.path + " " + req.body, "text/plain");
  };
  up.server().Get(".*", echo);
  up.server().Post(".*", echo);
  up.server().Put(".*", echo);
  up.start();
}

// A node config with one upstream at `address` and a route sending every path to it.
std::string catch_all(const std::string& address) {
  return "upstreams:\n  - name: u\n    targets: [" + address +
         "]\nroutes:\n  - name: all\n    match: {path_prefix: /}\n    upstream: u\n";
}

// The value of header `name` (exact case) in a response read by raw_client, or "".
std::string header_of(const std::string& response, const std::string& name) {
  auto at = response.find("\r\n" + name + ": ");
  if (at == std::string::npos) return "";
  at += name.size() + 4;
  return response.substr(at, response.find("\r\n", at) - at);
}

// The body of a response read by raw_client::read_response.
std::string body_of(const std::string& response) {
  auto end = response.find("\r\n\r\n");
  return end == std::string::npos ? "" : response.substr(end + 4);
}

// --- 1. paths are normalized before routing and forwarded normalized -------------------------

class path_bypass : public ::testing::Test {
 protected:
  void SetUp() override {
    serve_echo(up_);
    key_ = jws::make_oct(32);
    std::ofstream(keys_.file("jwks.json"))
        << nlohmann::json{{"keys", {key_.jwk("k1", "HS256")}}}.dump();
    node_ = std::make_unique<running_node>(
        "jwt:\n  - {name: main, issuer: https://issuer.example, audience: api, jwks_file: " +
        keys_.file("jwks.json") + "}\nupstreams:\n  - name: u\n    targets: [" + up_.address() +
        "]\nroutes:\n"
        "  - name: pub\n    match: {path_prefix: /pub}\n    upstream: u\n"
        "  - name: priv\n    match: {path_prefix: /priv}\n    upstream: u\n"
        "    auth: {methods: [jwt], jwt: main}\n"
        "  - name: all\n    match: {path_prefix: /}\n    upstream: u\n");
    ASSERT_TRUE(node_->ok());
  }
  // Sends `target` byte for byte (like curl --path-as-is) and returns the response.
  std::string get(const std::string& target) {
    raw_client c(node_->port());
    EXPECT_TRUE(c.send("GET " + target + " HTTP/1.1\r\nHost: x\r\n\r\n"));
    return c.read_response();
  }
  temp_dir keys_;
  upstream up_;
  jws::test_key key_;
  std::unique_ptr<running_node> node_;
};

TEST_F(path_bypass, a_protected_path_spelled_differently_still_needs_the_token) {
  for (const char* target :
       {"/pub/../priv/secret.txt", "/pub/%2e%2e/priv/secret.txt", "/pub/%2E./priv/secret.txt",
        "//priv/secret.txt", "/%70riv/secret.txt", "/./priv/secret.txt", "/x/../priv/secret.txt",
        "/priv/./secret.txt", "/pub/./../priv/secret.txt?x=1", "///priv//secret.txt"}) {
    auto res = get(target);
    EXPECT_EQ(status_of(res), 401) << target << "\n" << res;
  }
  EXPECT_EQ(up_.hits.load(), 0);
}

TEST_F(path_bypass, encoded_slashes_and_bad_encodings_are_refused_with_400) {
  for (const char* target :
       {"/pub/..%2fpriv/secret.txt", "/pub/..%2Fpriv/secret.txt", "/pub/..%5cpriv/x",
        "/pub/..\\priv/x", "/pub/%zz", "/pub/%4", "/a%00b"}) {
    auto res = get(target);
    EXPECT_EQ(status_of(res), 400) << target << "\n" << res;
    EXPECT_NE(res.find("\"error\":\"bad_request\""), std::string::npos) << res;
  }
  EXPECT_EQ(up_.hits.load(), 0);
}

TEST_F(path_bypass, the_upstream_receives_the_normalized_path_and_the_query_untouched) {
  auto res = get("/pub/a/../b/%7euser//c/.?q=%2e%2e/x");
  ASSERT_EQ(status_of(res), 200) << res;
  EXPECT_EQ(body_of(res), "GET /pub/b/~user/c/ ");
  EXPECT_EQ(up_.last().target, "/pub/b/~user/c/?q=%2e%2e/x");
}

// --- 6. requests with bodies followed by more input in the same read -------------------------

// Every pair of {Content-Length body, chunked body, no body} sent in one write, and split at
// every byte, gets both answers in order.
TEST(pipelining, requests_with_bodies_followed_by_more_input_are_all_answered_in_order) {
  upstream up;
  serve_echo(up);
  running_node n(catch_all(up.address()));
  ASSERT_TRUE(n.ok());
  struct request {
    std::string bytes, expect;
  };
  const std::vector<request> kinds = {
      {"POST /cl HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", "POST /cl hello"},
      {"POST /ch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0"
       "\r\n\r\n",
       "POST /ch abcde"},
      {"GET /get HTTP/1.1\r\nHost: x\r\n\r\n", "GET /get "},
  };
  for (const auto& first : kinds) {
    for (const auto& second : kinds) {
      for (const char* between : {"", "\r\n"}) {  // RFC 9112 section 2.2: a stray CRLF
        const std::string all = first.bytes + between + second.bytes;
        for (size_t split = 0; split < all.size(); ++split) {
          raw_client c(n.port());
          ASSERT_TRUE(c.connected());
          ASSERT_TRUE(c.send(all.substr(0, split)));
          if (split > 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
          ASSERT_TRUE(c.send(all.substr(split)));
          auto r1 = c.read_response();
          auto r2 = c.read_response();
          ASSERT_EQ(body_of(r1), first.expect) << "split " << split << " of\n" << all;
          ASSERT_EQ(body_of(r2), second.expect) << "split " << split << " of\n" << all;
        }
      }
    }
  }
}

// --- 5. values from verified tokens never split a head ----------------------------------------

TEST(header_injection, a_signed_token_with_control_characters_in_forwarded_claims_is_refused) {
  upstream up;
  serve_echo(up);
  temp_dir keys;
  auto key = jws::make_oct(32);
  std::ofstream(keys.file("jwks.json"))
      << nlohmann::json{{"keys", {key.jwk("k1", "HS256")}}}.dump();
  running_node n(
      "jwt:\n  - {name: main, issuer: https://issuer.example, audience: api, jwks_file: " +
      keys.file("jwks.json") + "}\nupstreams:\n  - name: u\n    targets: [" + up.address() +
      "]\nroutes:\n  - name: plain\n    match: {path_prefix: /plain}\n    upstream: u\n"
      "    auth: {methods: [jwt], jwt: main}\n"
      "  - name: mapped\n    match: {path_prefix: /mapped}\n    upstream: u\n"
      "    auth: {methods: [jwt], jwt: main, claims_to_headers: {team: x-team}}\n");
  ASSERT_TRUE(n.ok());
  auto now = std::chrono::duration_cast<std::chrono::seconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  auto token = [&](const std::string& sub, const std::string& team) {
    nlohmann::json claims = {{"sub", sub},   {"team", team}, {"iss", "https://issuer.example"},
                             {"aud", "api"}, {"iat", now},   {"exp", now + 300}};
    return jws::make_token({{"alg", "HS256"}, {"kid", "k1"}}, claims, key);
  };
  auto get = [&](const std::string& path, const std::string& tok) {
    raw_client c(n.port());
    c.send("GET " + path + " HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + tok + "\r\n\r\n");
    return c.read_response();
  };
  ASSERT_EQ(status_of(get("/plain/x", token("acme", "red"))), 200);
  ASSERT_EQ(up.last().get_header_value("X-Consumer-Id"), "acme");
  const int before = up.hits.load();
  const std::string smuggled = "GET /admin HTTP/1.1\r\nHost: x\r\n\r\n";
  for (const std::string& evil :
       {std::string("acme\r\nX-Injected: 1"), std::string("acme\r\n\r\n") + smuggled,
        std::string("acme\nX-Injected: 1"), std::string("ac\0me", 5), std::string("ac\x0bme")}) {
    auto r1 = get("/plain/x", token(evil, "red"));
    EXPECT_EQ(status_of(r1), 401) << r1;
    EXPECT_NE(r1.find("invalid_token"), std::string::npos) << r1;
    auto r2 = get("/mapped/x", token("acme", evil));
    EXPECT_EQ(status_of(r2), 401) << r2;
  }
  EXPECT_EQ(up.hits.load(), before);
}

// --- 13. malformed upstream responses are a 502, never the upstream's status --------------------

// An upstream that answers every request head with fixed bytes and then closes.
class canned_upstream {
 public:
  explicit canned_upstream(std::string response) : response_(std::move(response)) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    ::listen(fd_, 64);
    socklen_t len = sizeof sa;
    ::getsockname(fd_, reinterpret_cast<sockaddr*>(&sa), &len);
    port_ = ntohs(sa.sin_port);
    thread_ = std::thread([this] {
      for (;;) {
        int c = ::accept(fd_, nullptr, nullptr);
        if (c < 0) return;
        std::string in;
        char buf[4096];
        while (in.find("\r\n\r\n") == std::string::npos) {
          pollfd p{c, POLLIN, 0};
          if (::poll(&p, 1, 2000) <= 0) break;
          ssize_t n = ::recv(c, buf, sizeof buf, 0);
          if (n <= 0) break;
          in.append(buf, static_cast<size_t>(n));
        }
        ::send(c, response_.data(), response_.size(), MSG_NOSIGNAL);
        std::this_thread::sleep_for(std::chrono::milliseconds(50));
        ::close(c);
      }
    });
  }
  ~canned_upstream() {
    ::shutdown(fd_, SHUT_RDWR);
    ::close(fd_);
    thread_.join();
  }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }

 private:
  std::string response_;
  int fd_ = -1;
  int port_ = 0;
  std::thread thread_;
};

TEST(malformed_upstream, responses_a_client_could_frame_differently_become_a_502_json) {
  for (const std::string& bad : {
           std::string("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nokk"),
           std::string("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok"),
           std::string("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n"
                       "2\r\nok\r\n0\r\n\r\n"),
           std::string("HTTP/1.1 200 OK\nContent-Length: 2\n\nok"),
           std::string("HTTP/1.1 200 OK\r\nX-A: a\nContent-Length: 2\r\n\r\nok"),
           std::string("HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nok", 47),
           std::string("HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 2\r\n\r\nok"),
           std::string("HTTP/1.1 200 OK\r\nX-A: a\x7f b\r\nContent-Length: 2\r\n\r\nok"),
           std::string("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok"),
           std::string("HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok"),
           std::string("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                       "Connection: upgrade\r\n\r\n"),
           std::string("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello"),
           std::string("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok"),
           std::string("HTTP/1.1 200 OK\r\nX-A: a\r\n  folded\r\nContent-Length: 2\r\n\r\nok"),
       }) {
    canned_upstream up(bad);
    running_node n(catch_all(up.address()));
    ASSERT_TRUE(n.ok());
    raw_client c(n.port());
    c.send("GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
    auto res = c.read_response();
    EXPECT_EQ(status_of(res), 502) << bad << "\n---\n" << res;
    EXPECT_NE(res.find("\"error\":\"bad_gateway\""), std::string::npos) << res;
    auto metrics = n.metrics();
    EXPECT_NE(metrics.find("meridian_upstream_malformed_responses"), std::string::npos);
    EXPECT_EQ(metrics.find("meridian_upstream_malformed_responses_total 0\n"), std::string::npos)
        << bad;
  }
}

// --- 3, 7, 8: the admin API under hostile clients ---------------------------------------------

// Sends a chunked body of `chunks` x 64 KiB after `head`; returns how many bytes went out before
// the server stopped taking them (it answered and closed), and the response.
std::pair<size_t, std::string> send_chunked(int port, const std::string& head, size_t chunks) {
  raw_client c(port);
  EXPECT_TRUE(c.send(head));
  const std::string chunk = "10000\r\n" + std::string(65536, 'x') + "\r\n";
  size_t sent = 0;
  for (size_t i = 0; i < chunks; ++i) {
    if (!c.send(chunk)) break;
    sent += chunk.size();
  }
  return {sent, c.read_response(std::chrono::seconds(5))};
}

long rss_kib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  }
  return 0;
}

TEST(admin_hostile, a_huge_body_is_refused_before_it_is_read_with_or_without_a_token) {
  running_node n("");
  ASSERT_TRUE(n.ok());
  const long before = rss_kib();
  // 16,384 chunks of 64 KiB = 1 GiB offered; the node stops reading long before.
  for (const std::string& auth :
       {std::string(), "Authorization: Bearer " + n.get().admin_token() + "\r\n"}) {
    auto [sent, res] =
        send_chunked(n.admin_port(),
                     "PUT /config/routes/x HTTP/1.1\r\nHost: x\r\n" + auth +
                         "Content-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n",
                     16384);
    EXPECT_LT(sent, size_t{256} << 20) << auth;
    EXPECT_EQ(status_of(res), auth.empty() ? 401 : 413) << res;
    // Declared sizes are refused at once.
    raw_client c(n.admin_port());
    c.send("PUT /config/routes/x HTTP/1.1\r\nHost: x\r\n" + auth +
           "Content-Type: text/plain\r\nContent-Length: 1073741824\r\n\r\n");
    auto r = c.read_response();
    EXPECT_EQ(status_of(r), auth.empty() ? 401 : 413) << r;
    EXPECT_TRUE(c.closed_by_peer(std::chrono::seconds(3)));
  }
  EXPECT_LT(rss_kib() - before, 100 * 1024);
  httplib::Client h("127.0.0.1", n.admin_port());
  auto health = h.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
}

TEST(admin_hostile, deeply_nested_json_is_refused_and_the_node_keeps_serving) {
  upstream up;
  serve_echo(up);
  running_node n(catch_all(up.address()));
  ASSERT_TRUE(n.ok());
  httplib::Client c("127.0.0.1", n.admin_port());
  httplib::Headers h = {{"Authorization", "Bearer " + n.get().admin_token()}};
  for (size_t depth : {65u, 100000u, 500000u}) {
    std::string body =
        "{\"name\":\"x\",\"a\":" + std::string(depth, '[') + std::string(depth, ']') + "}";
    auto res = c.Put("/config/routes/x", h, body, "application/json");
    ASSERT_TRUE(res) << depth;
    EXPECT_EQ(res->status, 400) << depth << " " << res->body;
    EXPECT_NE(res->body.find("nested deeper"), std::string::npos) << res->body;
  }
  auto proxied = n.client().Get("/still-here");
  ASSERT_TRUE(proxied);
  EXPECT_EQ(proxied->status, 200);
}

// Issue 15 (11): the admin lockout was a hard 60 s per address. Now each failure beyond five
// doubles the wait before the address's next attempt is even looked at; other addresses are
// never affected, and a success clears the address.
TEST(admin_hostile, failed_logins_slow_one_address_down_exponentially_and_no_other) {
  running_node n("");
  ASSERT_TRUE(n.ok());
  const std::string good = n.get().admin_token();
  struct answer {
    int status;
    std::string retry_after;
  };
  auto attempt = [&](const char* from, const std::string& token) {
    raw_client c(n.admin_port(), from);
    c.send("GET /config HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token + "\r\n\r\n");
    auto r = c.read_response();
    return answer{status_of(r), header_of(r, "Retry-After")};
  };
  const std::string bad = std::string(good.size(), 'x');
  for (int i = 1; i <= 6; ++i) EXPECT_EQ(attempt("127.0.0.3", bad).status, 401) << i;
  // Six failures: one second before the next attempt counts, even one with the right token.
  auto held = attempt("127.0.0.3", good);
  EXPECT_EQ(held.status, 429);
  EXPECT_EQ(held.retry_after, "1");
  EXPECT_EQ(attempt("127.0.0.4", good).status, 200) << "another address is not held";
  // Once the second is over, a seventh failure: two seconds now.
  auto ready = [&] {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (std::chrono::steady_clock::now() < deadline) {
      raw_client probe(n.admin_port(), "127.0.0.3");
      probe.send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");  // no token: never held
      EXPECT_EQ(status_of(probe.read_response()), 200);
      auto a = attempt("127.0.0.3", "");  // no token at all: 401 once free, 429 while held
      if (a.status != 429) return a.status;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return 0;
  };
  EXPECT_EQ(ready(), 401);  // that was the seventh failure
  held = attempt("127.0.0.3", bad);
  EXPECT_EQ(held.status, 429);
  EXPECT_EQ(held.retry_after, "2");
  EXPECT_EQ(ready(), 401);  // the eighth: four seconds
  EXPECT_EQ(attempt("127.0.0.3", good).retry_after, "4");
  // The right token once the wait is over clears the address: a failure is free again.
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(8);
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline &&
         (status = attempt("127.0.0.3", good).status) == 429)
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(status, 200);
  EXPECT_EQ(attempt("127.0.0.3", bad).status, 401);
  EXPECT_EQ(attempt("127.0.0.3", good).status, 200);
}

// Issue 15 (11): bad X-API-Key values were not throttled at all. Ten wrong keys from one
// address are free; then each doubles the wait before that address's next key is looked at
// (429 too_many_failures with Retry-After); other addresses are never held.
TEST(api_key_guessing, wrong_keys_slow_one_address_down_and_no_other) {
  upstream up;
  serve_echo(up);
  running_node n(
      "upstreams:\n  - name: u\n    targets: [" + up.address() +
      "]\nconsumers:\n  - {id: acme}\nroutes:\n  - name: keyed\n"
      "    match: {path_prefix: /keyed}\n    upstream: u\n    auth: {methods: [api_key]}\n");
  ASSERT_TRUE(n.ok());
  httplib::Client admin("127.0.0.1", n.admin_port());
  auto issued =
      admin.Post("/config/consumers/acme/keys",
                 {{"Authorization", "Bearer " + n.get().admin_token()}}, "", "application/json");
  ASSERT_TRUE(issued);
  ASSERT_EQ(issued->status, 201) << issued->body;
  const std::string good = nlohmann::json::parse(issued->body)["key"];
  const std::string bad = good.substr(0, good.size() - 1) + (good.back() == 'A' ? "B" : "A");
  struct answer {
    int status;
    std::string retry_after, body;
  };
  auto keyed = [&](const char* from, const std::string& key) {
    raw_client c(n.port(), from);
    c.send("GET /keyed/x HTTP/1.1\r\nHost: x\r\nX-API-Key: " + key + "\r\n\r\n");
    auto r = c.read_response();
    return answer{status_of(r), header_of(r, "Retry-After"), body_of(r)};
  };
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (keyed("127.0.0.5", good).status != 200 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the key reaches the proxy
  for (int i = 1; i <= 11; ++i) EXPECT_EQ(keyed("127.0.0.5", bad).status, 401) << i;
  auto held = keyed("127.0.0.5", good);
  EXPECT_EQ(held.status, 429) << held.body;
  EXPECT_EQ(held.retry_after, "1");
  EXPECT_NE(held.body.find("too_many_failures"), std::string::npos) << held.body;
  EXPECT_EQ(keyed("127.0.0.6", good).status, 200) << "another address is not held";
  // Once the wait is over the right key passes and clears the address.
  deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  int status = 0;
  while ((status = keyed("127.0.0.5", good).status) == 429 &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(status, 200);
  EXPECT_EQ(keyed("127.0.0.5", bad).status, 401);
  EXPECT_EQ(keyed("127.0.0.5", good).status, 200) << "one failure after a success is free";
}

// Opens `count` connections that each send the start of a head and then stall.
std::vector<std::unique_ptr<raw_client>> slow_clients(int port, int count) {
  std::vector<std::unique_ptr<raw_client>> out;
  for (int i = 0; i < count; ++i) {
    auto c = std::make_unique<raw_client>(port);
    c->send("GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ");
    out.push_back(std::move(c));
  }
  return out;
}

// Times one fresh GET /health; returns milliseconds, or -1 when it failed.
double time_health(int port) {
  auto start = std::chrono::steady_clock::now();
  raw_client c(port);
  c.send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
  auto res = c.read_response(std::chrono::seconds(5));
  if (status_of(res) != 200) return -1;
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

TEST(admin_hostile, slow_heads_hold_no_thread_and_health_keeps_answering) {
  running_node n("");
  ASSERT_TRUE(n.ok());
  auto slow = slow_clients(n.admin_port(), 200);
  // Keep trickling: one more header byte on every slow connection, as slowloris does.
  for (auto& c : slow) c->send("a");
  double worst = 0;
  for (int i = 0; i < 20; ++i) {
    double ms = time_health(n.admin_port());
    ASSERT_GE(ms, 0) << "request " << i;
    worst = std::max(worst, ms);
  }
  // 100 ms in the issue; a loaded CI machine gets some slack (typical: a few ms).
  EXPECT_LT(worst, 500) << "slowest /health " << worst << " ms";
  // At most max_per_address of them are still held: the oldest made room for newer ones.
  int open = 0;
  for (auto& c : slow) open += c->closed_by_peer(std::chrono::milliseconds(10)) ? 0 : 1;
  EXPECT_LE(open, 64);
}

TEST(proxy_hostile, slow_heads_do_not_delay_other_clients) {
  upstream up;
  serve_echo(up);
  running_node n(catch_all(up.address()));
  ASSERT_TRUE(n.ok());
  auto slow = slow_clients(n.port(), 200);
  for (auto& c : slow) c->send("a");
  double worst = 0;
  for (int i = 0; i < 20; ++i) {
    auto start = std::chrono::steady_clock::now();
    raw_client c(n.port());
    c.send("GET /x HTTP/1.1\r\nHost: x\r\n\r\n");
    auto res = c.read_response(std::chrono::seconds(5));
    ASSERT_EQ(status_of(res), 200) << res;
    worst = std::max(
        worst, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
                   .count());
  }
  EXPECT_LT(worst, 500) << "slowest request " << worst << " ms";
}

// --- 14, 16: names, hosts, logs, files --------------------------------------------------------

TEST(admin_names, names_that_are_no_valid_object_name_get_400) {
  running_node n("");
  ASSERT_TRUE(n.ok());
  httplib::Client c("127.0.0.1", n.admin_port());
  httplib::Headers h = {{"Authorization", "Bearer " + n.get().admin_token()}};
  for (const std::string& name :
       {std::string(".."), std::string("%2e%2e"), std::string("%7B%7D"), std::string("%FF%FE"),
        std::string("a%20b"), std::string(5000, 'r')}) {
    auto res = c.Put(("/config/routes/" + name).c_str(), h, "{}", "application/json");
    ASSERT_TRUE(res) << name;
    EXPECT_EQ(res->status, 400) << name << " " << res->body;
    EXPECT_NE(res->body.find("invalid_name"), std::string::npos) << res->body;
  }
}

TEST(host_header, a_host_with_userinfo_or_a_path_is_refused) {
  upstream up;
  serve_echo(up);
  running_node n(catch_all(up.address()));
  ASSERT_TRUE(n.ok());
  for (const char* host : {"a.example:80@b.example", "a.example/x", "a b", "a.example:8o", "[::1",
                           "a.example:123456", "a\\b"}) {
    raw_client c(n.port());
    c.send(std::string("GET / HTTP/1.1\r\nHost: ") + host + "\r\n\r\n");
    auto res = c.read_response();
    EXPECT_EQ(status_of(res), 400) << host << "\n" << res;
  }
  for (const char* host :
       {"a.example", "a.example:8080", "[::1]:80", "127.0.0.1", "xn--bcher-kva.example"}) {
    raw_client c(n.port());
    c.send(std::string("GET / HTTP/1.1\r\nHost: ") + host + "\r\n\r\n");
    EXPECT_EQ(status_of(c.read_response()), 200) << host;
  }
  EXPECT_EQ(up.hits.load(), 5);
}

TEST(ratelimit_view, a_global_limit_answers_its_one_count_whatever_key_is_asked) {
  upstream up;
  serve_echo(up);
  running_node n("upstreams:\n  - name: u\n    targets: [" + up.address() +
                 "]\nroutes:\n  - name: all\n    match: {path_prefix: /}\n    upstream: u\n"
                 "    rate_limit: {limit: 100, window: 1m, key: global, scope: local}\n");
  ASSERT_TRUE(n.ok());
  for (int i = 0; i < 3; ++i) ASSERT_EQ(n.client().Get("/x")->status, 200);
  httplib::Client c("127.0.0.1", n.admin_port());
  httplib::Headers h = {{"Authorization", "Bearer " + n.get().admin_token()}};
  for (const char* q : {"", "?key=global", "?key=anything"}) {
    auto res = c.Get((std::string("/ratelimits/all") + q).c_str(), h);
    ASSERT_TRUE(res);
    ASSERT_EQ(res->status, 200) << res->body;
    EXPECT_EQ(nlohmann::json::parse(res->body)["count"], 3) << q << " " << res->body;
  }
}

TEST(data_dir, the_data_directory_is_private_to_the_node) {
  temp_dir dir;
  auto cfg = node::parse_config("node: {id: solo, region: eu-west, data_dir: " + dir.file("data") +
                                    "}\nlisten: {proxy: 127.0.0.1:0, admin: 127.0.0.1:0}\n",
                                "solo.yaml");
  ASSERT_TRUE(cfg.value);
  std::filesystem::create_directories(dir.file("data"));
  std::filesystem::permissions(dir.file("data"), std::filesystem::perms::all);  // 0777 before
  node::node n(*cfg.value);
  std::string error;
  ASSERT_TRUE(n.start(&error)) << error;
  auto perms = std::filesystem::status(dir.file("data")).permissions();
  EXPECT_EQ(perms & std::filesystem::perms::all, std::filesystem::perms::owner_all);
  n.drain(std::chrono::seconds(1));
}

TEST(validate_command, makes_the_checks_run_makes_of_the_admin_token_file) {
  const char* bin = std::getenv("MERIDIAN_BIN");
  ASSERT_NE(bin, nullptr);
  temp_dir dir;
  std::ofstream(dir.file("short.token")) << "abcde\n";
  std::ofstream(dir.file("node.yaml"))
      << "node: {id: a, region: eu-west, data_dir: " << dir.file("data")
      << "}\nadmin: {token_file: " << dir.file("short.token") << "}\n";
  std::string out;
  FILE* p =
      ::popen((std::string(bin) + " validate " + dir.file("node.yaml") + " 2>&1").c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[512];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  int rc = ::pclose(p);
  EXPECT_NE(WEXITSTATUS(rc), 0) << out;
  EXPECT_NE(out.find("at least 16 characters"), std::string::npos) << out;
}

// promtool (Debian's prometheus package) lints /metrics: base units (seconds, not _ms), no
// type words in names, counters ending in _total, well-formed HELP and TYPE lines.
TEST(metrics_lint, promtool_reports_nothing_on_a_clustered_node_with_traffic) {
  ASSERT_EQ(std::system("command -v promtool >/dev/null"), 0) << "scripts/setup.sh installs it";
  upstream up;
  serve_echo(up);
  temp_dir dir;
  std::ofstream(dir.file("cluster.keys"))
      << meridian::cluster::encode_key(meridian::cluster::generate_key()) << "\n";
  running_node n("cluster: {bind: 127.0.0.1:" + std::to_string(unused_port()) +
                 ", seeds: [], keyring_file: " + dir.file("cluster.keys") + "}\n" +
                 "upstreams:\n  - name: u\n    targets: [" + up.address() +
                 "]\nroutes:\n  - name: all\n    match: {path_prefix: /}\n    upstream: u\n"
                 "    rate_limit: {limit: 100, window: 1m, key: ip}\n");
  ASSERT_TRUE(n.ok());
  for (int i = 0; i < 3; ++i) n.client().Get("/x");
  const std::string text = n.metrics();
  ASSERT_NE(text.find("meridian_cluster_"), std::string::npos);
  std::ofstream(dir.file("metrics.txt")) << text;
  std::string out;
  FILE* p = ::popen(("promtool check metrics < " + dir.file("metrics.txt") + " 2>&1").c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[512];
  while (std::fgets(buf, sizeof buf, p)) out += buf;
  int rc = ::pclose(p);
  EXPECT_EQ(WEXITSTATUS(rc), 0) << out;
  EXPECT_EQ(out, "");
}

// A node whose cluster key no peer accepts hears nothing back; it says so at warn (before,
// it logged nothing about why it never joined).
TEST(cluster_join, a_node_no_seed_answers_warns_that_its_key_may_not_be_accepted) {
  auto sink = std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(256);
  auto swim = spdlog::get("cluster.swim");
  if (!swim) {
    swim = std::make_shared<spdlog::logger>("cluster.swim", sink);
    spdlog::register_logger(swim);
  } else {
    swim->sinks().push_back(sink);
  }
  swim->set_level(spdlog::level::info);
  temp_dir dir;
  std::ofstream(dir.file("cluster.keys"))
      << meridian::cluster::encode_key(meridian::cluster::generate_key()) << "\n";
  // Two different ports: a seed equal to the node's own address is dropped (a node never seeds
  // from itself), and a node without seeds rightly never warns. Two calls can return the same
  // free port.
  const auto bind_port = unused_port();
  auto seed_port = unused_port();
  while (seed_port == bind_port) seed_port = unused_port();
  running_node n("cluster: {bind: 127.0.0.1:" + std::to_string(bind_port) +
                 ", seeds: [127.0.0.1:" + std::to_string(seed_port) +
                 "], keyring_file: " + dir.file("cluster.keys") + "}\n");
  ASSERT_TRUE(n.ok());
  auto warned = [&] {
    for (const auto& line : sink->last_formatted()) {
      if (line.find("not joined after") != std::string::npos &&
          line.find("keyring_file") != std::string::npos) {
        return true;
      }
    }
    return false;
  };
  EXPECT_TRUE(eventually(warned, std::chrono::seconds(20)));
}

}  // namespace
}  // namespace meridian::testing
