// A route's chain holds exactly the stages its config asks for, in build_chain's order, and each
// stage acts through its hooks: a plain route runs none; request_size refuses a declared or an
// announced body over the limit before a byte is forwarded; transforms change the heads.
#include "chain.h"

#include <gtest/gtest.h>

namespace meridian::node {
namespace {

struct fixture {
  metrics_registry metrics{1};
  failure_delay key_failures{5, 100};
  snapshot snap;
  stage_context ctx{snap, 0, 0, key_failures, metrics.worker(0), "127.0.0.1"};
};

TEST(chain, a_plain_route_has_no_stages_and_passes_every_hook) {
  fixture f;
  route_config rc;
  route_runtime rt;
  rt.cfg = &rc;
  auto c = build_chain(rt, f.snap);
  EXPECT_EQ(c->size(), 0u);
  EXPECT_FALSE(c->reads_request_body());
  exchange ex;
  ex.route = &rt;
  ex.content_length = 1u << 30;
  size_t at = 99;
  EXPECT_EQ(c->run_request_head(ex, f.ctx, 0, &at), verdict::next);
  EXPECT_EQ(at, 0u);
}

TEST(chain, request_size_refuses_declared_pieced_and_announced_bodies_over_the_limit) {
  fixture f;
  route_config rc;
  route_runtime rt;
  rt.cfg = &rc;
  rt.max_body_bytes = 10;
  auto c = build_chain(rt, f.snap);
  ASSERT_EQ(c->size(), 1u);
  EXPECT_TRUE(c->reads_request_body());

  exchange ex;
  ex.route = &rt;
  ex.content_length = 10;
  size_t at = 0;
  EXPECT_EQ(c->run_request_head(ex, f.ctx, 0, &at), verdict::next);
  ex.content_length = 11;
  EXPECT_EQ(c->run_request_head(ex, f.ctx, 0, &at), verdict::respond);
  EXPECT_EQ(ex.local_status, 413);
  EXPECT_STREQ(ex.local_code, "payload_too_large");
  EXPECT_EQ(f.metrics.worker(0).bad_requests.get(), 1u);

  exchange body;
  body.route = &rt;
  EXPECT_EQ(c->run_request_body(body, 6, false), verdict::next);
  body.body_bytes = 6;
  EXPECT_EQ(c->run_request_body(body, 4, false), verdict::next);
  EXPECT_EQ(c->run_request_body(body, 5, true), verdict::respond);  // a chunk announced too big
  body.body_bytes = 10;
  EXPECT_EQ(c->run_request_body(body, 0, false), verdict::next);
  EXPECT_EQ(c->run_request_body(body, 1, false), verdict::respond);
}

TEST(chain, transforms_change_the_upstream_and_response_heads) {
  fixture f;
  route_config rc;
  rc.strip_prefix = "/api";
  rc.request_headers.set = {{"X-Env", "prod"}};
  rc.query.add = {{"v", "2"}};
  rc.response_headers.add = {{"X-Served-By", "meridian"}};
  route_runtime rt;
  rt.cfg = &rc;
  auto c = build_chain(rt, f.snap);
  EXPECT_EQ(c->size(), 2u);  // request and response transforms

  exchange ex;
  ex.route = &rt;
  upstream_head h;
  h.method = "GET";
  h.path = "/api/users";
  h.host = "a";
  h.request_id = "r";
  c->run_upstream_head(ex, h);
  byte_buffer out;
  write_upstream_head(h, out);
  std::string head(out.data(), out.size());
  EXPECT_EQ(head.substr(0, head.find("\r\n")), "GET /users?v=2 HTTP/1.1");
  EXPECT_NE(head.find("\r\nX-Env: prod\r\n"), std::string::npos);

  response_head r;
  r.request_id = "r";
  c->run_response_head(ex, r);
  out.clear();
  write_response_head(r, out);
  EXPECT_NE(std::string(out.data(), out.size()).find("\r\nX-Served-By: meridian\r\n"),
            std::string::npos);
}

}  // namespace
}  // namespace meridian::node
