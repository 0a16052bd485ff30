// End-to-end behaviour of the proxy on real loopback sockets: forwarding, transforms, framing,
// limits and the request-smuggling defences.

#include <gtest/gtest.h>

#include <chrono>
#include <thread>

#include <random>
#include <regex>

#include "test_support.h"

namespace meridian::testing {
namespace {

std::string simple_config(const std::string& upstream_address, const std::string& route_extra = "",
                          const std::string& upstream_extra = "") {
  return "upstreams:\n  - name: u\n    targets: [{address: " + upstream_address + "}]\n" +
         upstream_extra + "routes:\n  - name: r\n    match: {path_prefix: /}\n    upstream: u\n" +
         route_extra;
}

class proxy : public ::testing::Test {
 protected:
  void SetUp() override {
    up_.server().Get("/stream", [](const httplib::Request&, httplib::Response& res) {
      res.set_chunked_content_provider("text/plain", [](size_t, httplib::DataSink& sink) {
        for (int i = 0; i < 5; ++i) sink.write("part;", 5);
        sink.done();
        return true;
      });
    });
    up_.server().Get(".*", [](const httplib::Request& req, httplib::Response& res) {
      std::string echo = "path=" + req.path;
      if (!req.params.empty()) {
        echo += " query=";
        for (auto& [k, v] : req.params) echo += k + "=" + v + ";";
      }
      res.set_content(echo, "text/plain");
      res.set_header("X-Upstream", "yes");
    });
    up_.server().Post(".*", [](const httplib::Request& req, httplib::Response& res) {
      res.set_content("got " + std::to_string(req.body.size()) + ": " + req.body, "text/plain");
    });
    up_.start();
  }
  upstream up_;
};

TEST_F(proxy, forwards_request_and_adds_forwarding_headers) {
  running_node n(simple_config(up_.address()));
  ASSERT_TRUE(n.ok());
  auto c = n.client();
  auto res = c.Get("/hello?a=1", {{"X-Forwarded-For", "10.0.0.1"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  EXPECT_EQ(res->body, "path=/hello query=a=1;");
  EXPECT_EQ(res->get_header_value("X-Upstream"), "yes");
  auto seen = up_.last();
  EXPECT_EQ(seen.get_header_value("X-Forwarded-For"), "10.0.0.1, 127.0.0.1");
  EXPECT_EQ(seen.get_header_value("X-Forwarded-Proto"), "http");
  EXPECT_EQ(seen.get_header_value("X-Forwarded-Host"), "127.0.0.1:" + std::to_string(n.port()));
  EXPECT_EQ(seen.get_header_value("Via"), "1.1 meridian");
  auto id = seen.get_header_value("X-Request-Id");
  EXPECT_TRUE(std::regex_match(
      id, std::regex("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")))
      << id;
  EXPECT_EQ(res->get_header_value("X-Request-Id"), id);
}

TEST_F(proxy, keeps_a_well_formed_request_id_and_replaces_a_bad_one) {
  running_node n(simple_config(up_.address()));
  ASSERT_TRUE(n.ok());
  auto c = n.client();
  ASSERT_TRUE(c.Get("/", {{"X-Request-Id", "abc-123.4:5_6"}}));
  EXPECT_EQ(up_.last().get_header_value("X-Request-Id"), "abc-123.4:5_6");
  ASSERT_TRUE(c.Get("/", {{"X-Request-Id", "bad id with spaces"}}));
  EXPECT_EQ(up_.last().get_header_value("X-Request-Id").size(), 36u);
}

TEST_F(proxy, hop_by_hop_headers_and_connection_listed_headers_are_not_forwarded) {
  running_node n(simple_config(up_.address()));
  ASSERT_TRUE(n.ok());
  raw_client c(n.port());
  ASSERT_TRUE(c.send(
      "GET /x HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\n"
      "Keep-Alive: timeout=5\r\nTE: trailers\r\nUpgrade: websocket\r\nProxy-Authorization: p\r\n"
      "X-Kept: k\r\n\r\n"));
  auto r = c.read_response();
  ASSERT_EQ(status_of(r), 200) << r;
  auto seen = up_.last();
  EXPECT_FALSE(seen.has_header("X-Secret"));
  EXPECT_FALSE(seen.has_header("Keep-Alive"));
  EXPECT_FALSE(seen.has_header("TE"));
  EXPECT_FALSE(seen.has_header("Upgrade"));
  EXPECT_FALSE(seen.has_header("Proxy-Authorization"));
  EXPECT_EQ(seen.get_header_value("X-Kept"), "k");
}

TEST_F(proxy, unmatched_request_gets_json_404_and_connection_stays_usable) {
  running_node n("upstreams:\n  - name: u\n    targets: [{address: " + up_.address() +
                 "}]\nroutes:\n  - name: r\n    match: {path_prefix: /api}\n    upstream: u\n");
  ASSERT_TRUE(n.ok());
  raw_client c(n.port());
  ASSERT_TRUE(c.send("GET /other HTTP/1.1\r\nHost: a\r\n\r\n"));
  auto r = c.read_response();
  EXPECT_EQ(status_of(r), 404) << r;
  EXPECT_NE(r.find("application/json"), std::string::npos);
  EXPECT_NE(r.find("\"error\":\"not_found\""), std::string::npos);
  EXPECT_NE(r.find("\"request_id\":"), std::string::npos);
  ASSERT_TRUE(c.send("GET /api/x HTTP/1.1\r\nHost: a\r\n\r\n"));
  EXPECT_EQ(status_of(c.read_response()), 200);
  EXPECT_EQ(up_.hits.load(), 1);
}

TEST_F(proxy, strip_prefix_rewrite_and_query_transforms_shape_the_upstream_request) {
  running_node n(
      "upstreams:\n  - name: u\n    targets: [{address: " + up_.address() +
      "}]\nroutes:\n"
      "  - name: strip\n    match: {path_prefix: /api}\n    upstream: u\n    strip_prefix: /api\n"
      "    query: {add: {added: '1'}, remove: [drop], rename: {old: new}}\n"
      "  - name: rw\n    match: {path_prefix: /v1/}\n    upstream: u\n"
      "    rewrite: {regex: '^/v1/users/([0-9]+)$', replacement: '/users?id=$1'}\n");
  ASSERT_TRUE(n.ok());
  auto c = n.client();
  auto res = c.Get("/api/users/7?drop=x&old=5&keep=k");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->body, "path=/users/7 query=added=1;keep=k;new=5;");
  res = c.Get("/api");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->body, "path=/ query=added=1;");
  res = c.Get("/v1/users/42");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->body, "path=/users query=id=42;");
}

TEST_F(proxy, request_and_response_header_transforms_apply) {
  running_node n(simple_config(
      up_.address(),
      "    request_headers: {add: {x-gateway: meridian}, set: {x-mode: forced}, remove: "
      "[x-internal]}\n"
      "    response_headers: {add: {x-served-by: meridian}, remove: [x-upstream]}\n"));
  ASSERT_TRUE(n.ok());
  auto c = n.client();
  auto res = c.Get("/", {{"X-Internal", "secret"}, {"X-Mode", "client"}});
  ASSERT_TRUE(res);
  auto seen = up_.last();
  EXPECT_EQ(seen.get_header_value("x-gateway"), "meridian");
  EXPECT_EQ(seen.get_header_value("x-mode"), "forced");
  EXPECT_EQ(seen.get_header_value_count("x-mode"), 1u);
  EXPECT_FALSE(seen.has_header("x-internal"));
  EXPECT_EQ(res->get_header_value("x-served-by"), "meridian");
  EXPECT_FALSE(res->has_header("X-Upstream"));
}

TEST_F(proxy, pipelined_requests_get_responses_in_order) {
  running_node n(simple_config(up_.address()));
  ASSERT_TRUE(n.ok());
  raw_client c(n.port());
  ASSERT_TRUE(
      c.send("GET /one HTTP/1.1\r\nHost: a\r\n\r\nGET /two HTTP/1.1\r\nHost: a\r\n\r\n"
             "GET /three HTTP/1.1\r\nHost: a\r\n\r\n"));
  for (const char* path : {"/one", "/two", "/three"}) {
    auto r = c.read_response();
    ASSERT_EQ(status_of(r), 200) << r;
    EXPECT_NE(r.find(std::string("path=") + path), std::string::npos) << r;
  }
}

TEST_F(proxy, upstream_connections_are_reused_across_requests) {
  running_node n(simple_config(up_.address()));
  ASSERT_TRUE(n.ok());
  auto c = n.client();
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(c.Get("/"));
  auto m = n.metrics();
  EXPECT_NE(m.find("meridian_upstream_connections_opened_total 1\n"), std::string::npos) << m;
  EXPECT_NE(m.find("meridian_upstream_connections_reused_total 19\n"), std::string::npos) << m;
}

TEST_F(proxy, chunked_request_body_is_forwarded_whole) {
  running_node n(simple_config(up_.address()));
  ASSERT_TRUE(n.ok());
  raw_client c(n.port());
  ASSERT_TRUE(
      c.send("POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
             "5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n"));
  auto r = c.read_response();
  EXPECT_EQ(status_of(r), 200) << r;
  EXPECT_NE(r.find("got 11: hello world"), std::string::npos) << r;
}

TEST_F(proxy, chunked_response_is_forwarded_chunked) {
  running_node n(simple_config(up_.address()));
  ASSERT_TRUE(n.ok());
  auto c = n.client();
  auto res = c.Get("/stream");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->body, "part;part;part;part;part;");
  EXPECT_EQ(res->get_header_value("Transfer-Encoding"), "chunked");
}

// The bytes of a response larger than every buffer on the way, to a client that reads slowly:
// the gateway's writes to the client wait for room (EAGAIN) while the upstream's bytes keep
// arriving and are appended behind them. Both framings: the upstream's Content-Length, and
// the chunks the gateway writes itself.
TEST(proxy_slow_reader, a_large_response_arrives_byte_exact) {
  constexpr size_t total = 12 << 20;
  auto byte_at = [](size_t i) { return static_cast<char>('a' + (i * 7 + i / 4099) % 26); };
  upstream up;
  auto provide = [&](size_t offset, size_t length, httplib::DataSink& sink) {
    std::string piece(std::min<size_t>(length, 50000), '\0');
    for (size_t i = 0; i < piece.size(); ++i) piece[i] = byte_at(offset + i);
    return sink.write(piece.data(), piece.size());
  };
  up.server().Get("/sized", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content_provider(total, "application/octet-stream", provide);
  });
  up.server().Get("/chunked", [&](const httplib::Request&, httplib::Response& res) {
    res.set_chunked_content_provider(
        "application/octet-stream", [&, sent = size_t{0}](size_t, httplib::DataSink& sink) mutable {
          if (sent >= total) {
            sink.done();
            return true;
          }
          size_t n = std::min<size_t>(total - sent, 50000);
          bool ok = provide(sent, n, sink);
          sent += n;
          return ok;
        });
  });
  up.start();
  running_node n(simple_config(up.address()));
  ASSERT_TRUE(n.ok());
  for (std::string path : {"/sized", "/chunked"}) {
    raw_client c(n.port());
    ASSERT_TRUE(c.send("GET " + path + " HTTP/1.1\r\nHost: a\r\n\r\n"));
    // Read slowly: 16 KiB, then a pause, until the whole response is in or 60 s passed.
    std::string got;
    auto deadline = std::chrono::steady_clock::now() + 60s;
    bool chunked = path == "/chunked";
    auto complete = [&] {
      auto end = got.find("\r\n\r\n");
      if (end == std::string::npos) return false;
      if (chunked) return got.size() >= 5 && got.compare(got.size() - 5, 5, "0\r\n\r\n") == 0;
      return got.size() >= end + 4 + total;
    };
    while (!complete() && std::chrono::steady_clock::now() < deadline) {
      pollfd p{c.fd(), POLLIN, 0};
      if (::poll(&p, 1, 1000) <= 0) continue;
      char buf[16384];
      ssize_t r = ::recv(c.fd(), buf, sizeof buf, 0);
      if (r <= 0) break;
      got.append(buf, static_cast<size_t>(r));
      std::this_thread::sleep_for(std::chrono::microseconds(300));
    }
    ASSERT_TRUE(complete()) << path << ": " << got.size() << " bytes in";
    auto end = got.find("\r\n\r\n");
    std::string body;
    if (!chunked) {
      body = got.substr(end + 4);
    } else {
      size_t at = end + 4;
      while (true) {
        auto line_end = got.find("\r\n", at);
        ASSERT_NE(line_end, std::string::npos) << path;
        size_t size = std::stoul(got.substr(at, line_end - at), nullptr, 16);
        if (size == 0) break;
        ASSERT_EQ(got.compare(line_end + 2 + size, 2, "\r\n"), 0) << path << " chunk at " << at;
        body.append(got, line_end + 2, size);
        at = line_end + 2 + size + 2;
      }
    }
    ASSERT_EQ(body.size(), total) << path;
    size_t first_bad = total;
    for (size_t i = 0; i < total; ++i) {
      if (body[i] != byte_at(i)) {
        first_bad = i;
        break;
      }
    }
    EXPECT_EQ(first_bad, total) << path << ": the body differs from byte " << first_bad;
  }
}

TEST_F(proxy, head_request_gets_headers_without_body) {
  running_node n(simple_config(up_.address()));
  ASSERT_TRUE(n.ok());
  raw_client c(n.port());
  ASSERT_TRUE(c.send("HEAD /h HTTP/1.1\r\nHost: a\r\n\r\nGET /g HTTP/1.1\r\nHost: a\r\n\r\n"));
  auto r = c.read([](const std::string& b) { return b.find("path=/g") != std::string::npos; });
  EXPECT_EQ(status_of(r), 200);
  EXPECT_EQ(r.find("path=/h"), std::string::npos) << r;
  EXPECT_NE(r.find("path=/g"), std::string::npos) << r;
}

TEST_F(proxy, http10_client_gets_a_response_and_the_connection_closes) {
  running_node n(simple_config(up_.address()));
  ASSERT_TRUE(n.ok());
  raw_client c(n.port());
  ASSERT_TRUE(c.send("GET /old HTTP/1.0\r\n\r\n"));
  EXPECT_TRUE(c.closed_by_peer());
  EXPECT_EQ(status_of(c.buffer()), 200) << c.buffer();
  EXPECT_NE(c.buffer().find("path=/old"), std::string::npos);
}

TEST_F(proxy, body_over_route_limit_is_refused_with_413_before_reaching_upstream) {
  running_node n(simple_config(up_.address(), "    max_body_bytes: 1KiB\n"));
  ASSERT_TRUE(n.ok());
  raw_client c(n.port());
  ASSERT_TRUE(c.send("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n"));
  auto r = c.read_response();
  EXPECT_EQ(status_of(r), 413) << r;
  raw_client chunked(n.port());
  std::string big(2000, 'x');
  ASSERT_TRUE(
      chunked.send("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n7d0\r\n" + big +
                   "\r\n0\r\n\r\n"));
  EXPECT_EQ(status_of(chunked.read_response()), 413);
  EXPECT_EQ(up_.hits.load(), 0);
}

TEST_F(proxy, a_head_larger_than_one_read_arrives_whole_in_one_or_several_writes) {
  // Beast parses a partial head field by field; a head that outgrew the first read (a large
  // cookie or JWT) used to be refused with 400 "bad field". Sizes around the 512-byte first read
  // and the 4 KiB buffer block, sent at once and split mid-field.
  running_node n(simple_config(up_.address()));
  ASSERT_TRUE(n.ok());
  for (size_t size : {400, 600, 5000, 7500}) {  // the test upstream takes 8 KiB heads
    for (size_t split : {0, 100, 700}) {
      std::string cookie(size, 'c');
      std::string req = "GET /big HTTP/1.1\r\nHost: a\r\nCookie: " + cookie +
                        "\r\nX-After: 1\r\nConnection: close\r\n\r\n";
      raw_client c(n.port());
      if (split && split < req.size()) {
        ASSERT_TRUE(c.send(req.substr(0, split)));
        std::this_thread::sleep_for(std::chrono::milliseconds(20));  // two reads, not a timing test
        ASSERT_TRUE(c.send(req.substr(split)));
      } else {
        ASSERT_TRUE(c.send(req));
      }
      c.closed_by_peer();
      EXPECT_EQ(status_of(c.buffer()), 200)
          << "size " << size << " split " << split << ": " << c.buffer().substr(0, 200);
      auto seen = up_.last();
      EXPECT_EQ(seen.get_header_value("Cookie").size(), size);
      EXPECT_EQ(seen.get_header_value("X-After"), "1");
    }
  }
}

TEST_F(proxy, empty_lines_before_a_request_line_are_ignored) {
  running_node n(simple_config(up_.address()));
  ASSERT_TRUE(n.ok());
  raw_client c(n.port());
  ASSERT_TRUE(c.send("\r\n\r\nGET /a HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"));
  c.closed_by_peer();
  EXPECT_EQ(status_of(c.buffer()), 200) << c.buffer();
}

TEST_F(proxy, oversized_header_block_gets_431_and_long_url_gets_414) {
  running_node n(simple_config(up_.address()));
  ASSERT_TRUE(n.ok());
  {
    raw_client c(n.port());
    ASSERT_TRUE(
        c.send("GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + std::string(70000, 'a') + "\r\n\r\n"));
    EXPECT_EQ(status_of(c.read_response()), 431);
  }
  {
    raw_client c(n.port());
    ASSERT_TRUE(c.send("GET /" + std::string(9000, 'a') + " HTTP/1.1\r\nHost: a\r\n\r\n"));
    EXPECT_EQ(status_of(c.read_response()), 414);
  }
  EXPECT_EQ(up_.hits.load(), 0);
  raw_client after(n.port());
  ASSERT_TRUE(after.send("GET /ok HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"));
  after.closed_by_peer();
  EXPECT_EQ(status_of(after.buffer()), 200) << after.buffer();
}

// Each of these must be refused (4xx/501 or a close) and must never reach the upstream.
struct smuggling_case {
  const char* name;
  std::string request;
  int status;  // expected status; 0 means a close without response is fine too
  friend void PrintTo(const smuggling_case& c, std::ostream* os) { *os << c.name; }
};

class smuggling : public proxy, public ::testing::WithParamInterface<smuggling_case> {};

TEST_P(smuggling, malformed_request_is_refused_and_never_forwarded) {
  running_node n(simple_config(up_.address()));
  ASSERT_TRUE(n.ok());
  {
    raw_client c(n.port());
    ASSERT_TRUE(c.send(GetParam().request));
    auto r = c.read_response();
    if (GetParam().status) {
      EXPECT_EQ(status_of(r), GetParam().status) << r;
    } else {
      EXPECT_TRUE(r.empty() || status_of(r) >= 400) << r;
    }
    EXPECT_TRUE(c.closed_by_peer()) << "the connection must not be reused after a bad request";
  }
  EXPECT_EQ(up_.hits.load(), 0);
  auto res = n.client().Get("/still-serving");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

INSTANTIATE_TEST_SUITE_P(
    rfc9112, smuggling,
    ::testing::Values(
        smuggling_case{"cl_and_te",
                       "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: "
                       "chunked\r\n\r\n0\r\n\r\n",
                       400},
        smuggling_case{"te_and_cl",
                       "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: "
                       "chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
                       400},
        smuggling_case{
            "duplicate_cl",
            "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
            400},
        smuggling_case{"cl_list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nabcd",
                       400},
        smuggling_case{"cl_sign", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd",
                       400},
        smuggling_case{"te_unknown",
                       "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", 501},
        smuggling_case{
            "te_list",
            "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501},
        smuggling_case{"te_obfuscated",
                       "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
                       501},
        smuggling_case{"te_duplicate",
                       "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: "
                       "chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                       400},
        smuggling_case{"te_space_before_colon",
                       "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
                       400},
        smuggling_case{"te_in_http10",
                       "POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
                       400},
        smuggling_case{"bad_chunk_size",
                       "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: "
                       "chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
                       400},
        smuggling_case{"chunk_size_overflow",
                       "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: "
                       "chunked\r\n\r\nffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
                       400},
        smuggling_case{"obs_fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n", 400},
        smuggling_case{"obs_fold_empty_first_line",
                       "GET / HTTP/1.1\r\nHost: a\r\nX-A:\r\n two\r\n\r\n", 400},
        smuggling_case{"control_char_in_value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x01z\r\n\r\n",
                       400},
        smuggling_case{"del_in_value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x7fz\r\n\r\n", 400},
        smuggling_case{"bare_cr_in_value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rz\r\n\r\n", 400},
        smuggling_case{"nul_in_value",
                       std::string("GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0z\r\n\r\n", 37), 400},
        smuggling_case{"bare_lf", "GET / HTTP/1.1\nHost: a\n\n", 400},
        smuggling_case{"missing_host", "GET / HTTP/1.1\r\nX-A: b\r\n\r\n", 400},
        smuggling_case{"two_hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400},
        smuggling_case{"bad_version", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 0},
        smuggling_case{"space_in_target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400},
        smuggling_case{"bad_method_token", "G(T / HTTP/1.1\r\nHost: a\r\n\r\n", 400}),
    [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace meridian::testing

namespace meridian::testing {
namespace {

// Mutations of valid requests (flipped, inserted and deleted bytes, truncations): whatever
// the proxy answers, it must not crash and must keep serving well-formed requests.
TEST_F(proxy, random_mutations_of_requests_never_break_the_node) {
  running_node n(simple_config(up_.address()));
  ASSERT_TRUE(n.ok());
  const std::string seeds[] = {
      "GET /a?b=c HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n\r\n",
      "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello",
      "POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
  };
  std::mt19937 rng(12345);
  for (int i = 0; i < 150; ++i) {
    std::string req = seeds[i % 3];
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits && !req.empty(); ++e) {
      size_t at = rng() % req.size();
      switch (rng() % 4) {
        case 0:
          req[at] = static_cast<char>(rng());
          break;
        case 1:
          req.insert(at, 1, static_cast<char>(rng()));
          break;
        case 2:
          req.erase(at, 1);
          break;
        case 3:
          req.resize(at);
          break;
      }
    }
    raw_client c(n.port());
    c.send(req);
    c.read([](const std::string& b) { return b.find("\r\n\r\n") != std::string::npos; }, 50ms);
  }
  auto res = n.client().Get("/after-fuzz");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

}  // namespace
}  // namespace meridian::testing
