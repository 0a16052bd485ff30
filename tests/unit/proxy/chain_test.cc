// A route's chain holds exactly the stages its config asks for, in build_chain's order, and each
// stage acts through its hooks: a plain route runs none; request_size refuses a declared or an
// announced body over the limit before a byte is forwarded; transforms change the heads. The
// entry chain matches routes (404 otherwise), says what the forwarding headers are and counts
// every exchange; a resume_handle brings a paused exchange back exactly once, even when dropped.
#include "chain.h"

#include <gtest/gtest.h>

namespace meridian::node {
namespace {

// Records how a stage asked to be resumed.
struct recording_pause final : pause_control {
  uint64_t after_ms = 0;
  bool body = false;
  void resume_after(uint64_t ms) override { after_ms = ms; }
  void await_body() override { body = true; }
  resume_handle suspend(int64_t) override { return {}; }
};

struct fixture {
  metrics_registry metrics{1};
  failure_delay key_failures{5, 100};
  snapshot snap;
  recording_pause pause;
  std::vector<header_view> scratch;
  stage_context ctx{snap, 0, 0, key_failures, metrics.worker(0), pause, scratch};
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
  EXPECT_EQ(c->run_request_body(body, "abcdef", 6, false), verdict::next);
  body.body_bytes = 6;
  EXPECT_EQ(c->run_request_body(body, "abcd", 4, false), verdict::next);
  EXPECT_EQ(c->run_request_body(body, {}, 5, true), verdict::respond);  // a chunk announced too big
  body.body_bytes = 10;
  EXPECT_EQ(c->run_request_body(body, {}, 0, false), verdict::next);
  EXPECT_EQ(c->run_request_body(body, "x", 1, false), verdict::respond);
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

TEST(entry_chain, routes_a_request_or_answers_404_and_says_what_the_forwarding_headers_are) {
  fixture f;
  route_config rc;
  rc.name = "users";
  rc.match.path_prefix = "/users";
  f.snap.cfg.routes = {rc};
  std::string error;
  f.snap.routes_index = router::build(f.snap.cfg.routes, &error);
  ASSERT_TRUE(f.snap.routes_index) << error;
  f.snap.routes.resize(1);
  f.snap.routes[0].cfg = &f.snap.cfg.routes[0];
  auto entry = build_entry_chain(f.snap);
  EXPECT_EQ(entry->size(), 4u);  // metrics, access log, forwarding headers, route match

  exchange miss;
  miss.method = "GET";
  miss.path = "/orders";
  size_t at = 0;
  EXPECT_EQ(entry->run_request_head(miss, f.ctx, 0, &at), verdict::respond);
  EXPECT_EQ(miss.local_status, 404);
  EXPECT_EQ(f.metrics.worker(0).no_route.get(), 1u);

  exchange ex;
  ex.method = "GET";
  ex.path = "/users/7";
  ex.authority = "api.example.com";
  ex.client_ip = "10.1.2.3";
  ex.tls = true;
  ex.version = 10;
  ex.request_id.assign("req-1");
  EXPECT_EQ(entry->run_request_head(ex, f.ctx, 0, &at), verdict::next);
  EXPECT_EQ(ex.route, &f.snap.routes[0]);

  upstream_head h;
  h.method = "GET";
  h.path = ex.path;
  h.host = "backend";
  entry->run_upstream_head(ex, h);
  byte_buffer out;
  write_upstream_head(h, out);
  std::string head(out.data(), out.size());
  EXPECT_NE(head.find("\r\nX-Forwarded-For: 10.1.2.3\r\n"), std::string::npos) << head;
  EXPECT_NE(head.find("\r\nX-Forwarded-Proto: https\r\n"), std::string::npos) << head;
  EXPECT_NE(head.find("\r\nX-Forwarded-Host: api.example.com\r\n"), std::string::npos) << head;
  EXPECT_NE(head.find("\r\nVia: 1.0 meridian\r\n"), std::string::npos) << head;
  EXPECT_NE(head.find("\r\nX-Request-Id: req-1\r\n"), std::string::npos) << head;
}

TEST(entry_chain, the_log_hooks_count_every_exchange_and_time_the_routed_ones) {
  fixture f;
  route_config rc;
  route_runtime rt;
  rt.cfg = &rc;
  route_metrics rm("r", 1);
  rt.metrics = &rm;
  auto entry = build_entry_chain(f.snap);
  log_context lc{std::chrono::microseconds(1500), 0, f.metrics.worker(0), nullptr};
  exchange refused;  // no route: a bad head, a 404
  entry->run_log(refused, lc);
  exchange ex;
  ex.route = &rt;
  ex.body_bytes = 10;
  ex.response_bytes = 20;
  entry->run_log(ex, lc);
  EXPECT_EQ(f.metrics.worker(0).requests_total.get(), 2u);
  EXPECT_EQ(rm.per_worker[0].latency_sum_us.get(), 1500u);
  EXPECT_EQ(rm.per_worker[0].request_bytes.get(), 10u);
  EXPECT_EQ(rm.per_worker[0].response_bytes.get(), 20u);
}

// A stage on every hook, recording what reached it.
struct every_hook_stage final : stage {
  mutable std::string body;
  mutable int logged = 0;
  every_hook_stage() : stage(request_head | request_body | response_body_hook | log_hook) {}
  verdict on_request_head(exchange&, stage_context& ctx) const override {
    ctx.pause.resume_after(25);
    return verdict::pause;
  }
  verdict on_request_body(exchange&, std::string_view piece, uint64_t, bool) const override {
    body.append(piece);
    return verdict::next;
  }
  void on_response_body(exchange&, std::string_view piece) const override { body.append(piece); }
  void on_log(const exchange&, log_context&) const override { ++logged; }
};

TEST(chain, each_hook_reaches_the_stages_that_implement_it_and_a_pause_says_how_it_resumes) {
  fixture f;
  chain c;
  auto s = std::make_unique<every_hook_stage>();
  const every_hook_stage* seen = s.get();
  c.add(std::move(s));
  EXPECT_TRUE(c.reads_request_body());
  EXPECT_TRUE(c.reads_response_body());
  exchange ex;
  size_t at = 99;
  EXPECT_EQ(c.run_request_head(ex, f.ctx, 0, &at), verdict::pause);
  EXPECT_EQ(at, 0u);
  EXPECT_EQ(f.pause.after_ms, 25u);
  EXPECT_EQ(c.run_request_body(ex, "up", 2, false), verdict::next);
  c.run_response_body(ex, "down");
  EXPECT_EQ(seen->body, "updown");
  log_context lc{std::chrono::microseconds(1), 0, f.metrics.worker(0), nullptr};
  c.run_log(ex, lc);
  EXPECT_EQ(seen->logged, 1);

  chain plain;  // no stage: no hook reads anything
  EXPECT_FALSE(plain.reads_response_body());
}

// Counts what a session would be handed.
struct counting_target final : resumable {
  int delivered = 0;
  int with_fn = 0;
  uint64_t last_pause = 0;
  void deliver_resume(std::shared_ptr<resumable> self, uint64_t pause,
                      std::function<verdict(exchange&)> fn) override {
    ++delivered;
    last_pause = pause;
    if (fn) ++with_fn;
  }
};

TEST(resume_handle, resumes_once_and_a_dropped_handle_still_gives_the_session_back) {
  auto target = std::make_shared<counting_target>();
  {
    resume_handle h(target, 7);
    h.resume([](exchange&) { return verdict::next; });
    h.resume([](exchange&) { return verdict::next; });  // spent: nothing
  }
  EXPECT_EQ(target->delivered, 1);
  EXPECT_EQ(target->with_fn, 1);
  EXPECT_EQ(target->last_pause, 7u);
  {
    resume_handle h(target, 8);
    resume_handle moved = std::move(h);
  }  // dropped unused: handed back without a function, once
  EXPECT_EQ(target->delivered, 2);
  EXPECT_EQ(target->with_fn, 1);
  EXPECT_EQ(target->last_pause, 8u);
  EXPECT_EQ(target.use_count(), 1);  // no handle kept a reference
}

}  // namespace
}  // namespace meridian::node
