// The circuit breaker's state machine: when it trips, how long it stays open, how many probes
// pass when half-open, and what an adopted state does.
#include "meridian/traffic/breaker.h"

#include <gtest/gtest.h>

namespace meridian::node {
namespace {

using namespace std::chrono_literals;

circuit_breaker_config config() {
  circuit_breaker_config c;
  c.enabled = true;
  c.failure_rate = 0.5;
  c.min_requests = 4;
  c.window = 10s;
  c.open_for = 1s;
  c.half_open_probes = 2;
  return c;
}

constexpr int64_t t0 = 1'800'000'000'000;

TEST(breaker, trips_when_the_failure_rate_reaches_the_threshold_with_enough_requests) {
  circuit_breaker b;
  auto cfg = config();
  EXPECT_FALSE(b.record(false, false, t0, cfg, "n1"));  // 1 of 1 failed: below min_requests
  EXPECT_FALSE(b.record(true, false, t0 + 1, cfg, "n1"));
  EXPECT_FALSE(b.record(true, false, t0 + 2, cfg, "n1"));
  EXPECT_TRUE(b.allow(t0 + 3, cfg, true));
  EXPECT_TRUE(b.record(false, false, t0 + 3, cfg, "n1"));  // 2 of 4: 50 %
  auto v = b.view();
  EXPECT_EQ(v.state, breaker_state::open);
  EXPECT_EQ(v.origin, "n1");
  EXPECT_EQ(v.until_ms, t0 + 3 + 1000);
  EXPECT_FALSE(b.allow(t0 + 500, cfg, true));
}

TEST(breaker, outcomes_older_than_the_window_do_not_count) {
  circuit_breaker b;
  auto cfg = config();
  for (int i = 0; i < 3; ++i) b.record(false, false, t0 + i, cfg, "n1");
  // Eleven seconds later the three failures have left the window: one more is 1 of 1.
  EXPECT_FALSE(b.record(false, false, t0 + 11'000, cfg, "n1"));
  EXPECT_EQ(b.view().state, breaker_state::closed);
}

TEST(breaker, half_open_lets_exactly_the_configured_probes_through) {
  circuit_breaker b;
  auto cfg = config();
  for (int i = 0; i < 4; ++i) b.record(false, false, t0, cfg, "n1");
  int64_t later = t0 + 1000;
  bool probe = false;
  EXPECT_TRUE(b.allow(later, cfg, true));
  EXPECT_TRUE(b.on_dispatch(later, cfg, true, &probe));
  EXPECT_TRUE(probe);
  EXPECT_TRUE(b.on_dispatch(later, cfg, true, &probe));
  EXPECT_FALSE(b.on_dispatch(later, cfg, true, &probe));  // two probes, no more
  EXPECT_FALSE(b.allow(later, cfg, true));
  EXPECT_EQ(b.view().state, breaker_state::half_open);
}

TEST(breaker, only_the_probe_owner_probes_until_it_is_overdue) {
  circuit_breaker b;
  auto cfg = config();
  for (int i = 0; i < 4; ++i) b.record(false, false, t0, cfg, "n1");
  bool probe = false;
  EXPECT_FALSE(b.allow(t0 + 1000, cfg, false));
  EXPECT_FALSE(b.on_dispatch(t0 + 1000, cfg, false, &probe));
  EXPECT_TRUE(b.allow(t0 + 2000, cfg, false));  // one more open period without a verdict
}

TEST(breaker, a_good_probe_closes_and_a_bad_one_reopens_for_longer) {
  circuit_breaker b;
  auto cfg = config();
  for (int i = 0; i < 4; ++i) b.record(false, false, t0, cfg, "n1");
  bool probe = false;
  ASSERT_TRUE(b.on_dispatch(t0 + 1000, cfg, true, &probe));
  EXPECT_TRUE(b.record(false, true, t0 + 1001, cfg, "n2"));  // the probe failed
  auto v = b.view();
  EXPECT_EQ(v.state, breaker_state::open);
  EXPECT_EQ(v.until_ms, t0 + 1001 + 2000);  // the second trip: twice open_for
  EXPECT_EQ(v.origin, "n2");
  ASSERT_TRUE(b.on_dispatch(t0 + 3001, cfg, true, &probe));
  EXPECT_FALSE(b.record(false, false, t0 + 3002, cfg, "n2"));  // not the probe: ignored
  EXPECT_TRUE(b.record(true, true, t0 + 3003, cfg, "n2"));
  EXPECT_EQ(b.view().state, breaker_state::closed);
  EXPECT_TRUE(b.allow(t0 + 3004, cfg, false));
}

TEST(breaker, an_adopted_state_applies_once_and_only_when_newer) {
  circuit_breaker b;
  auto cfg = config();
  breaker_view open{breaker_state::open, t0, t0 + 5000, "eu-1", 1};
  b.adopt(open, 10);
  EXPECT_FALSE(b.allow(t0 + 100, cfg, true));
  EXPECT_EQ(b.view().origin, "eu-1");
  b.adopt(breaker_view{breaker_state::closed, t0, 0, "us-1", 0}, 9);  // older: ignored
  EXPECT_FALSE(b.allow(t0 + 100, cfg, true));
  b.adopt(breaker_view{breaker_state::closed, t0 + 200, 0, "us-1", 0}, 11);
  EXPECT_TRUE(b.allow(t0 + 300, cfg, true));
}

TEST(breaker, consecutive_failures_open_it_before_the_rate_has_enough_requests) {
  circuit_breaker b;
  auto cfg = config();
  cfg.min_requests = 100;
  cfg.consecutive_failures = 3;
  EXPECT_FALSE(b.record(false, false, t0, cfg, "n1"));
  EXPECT_FALSE(b.record(true, false, t0, cfg, "n1"));  // a success resets the run
  EXPECT_FALSE(b.record(false, false, t0, cfg, "n1"));
  EXPECT_FALSE(b.record(false, false, t0, cfg, "n1"));
  EXPECT_TRUE(b.record(false, false, t0, cfg, "n1"));
  EXPECT_EQ(b.view().state, breaker_state::open);
}

TEST(breaker, a_health_check_verdict_opens_and_closes_it) {
  circuit_breaker b;
  auto cfg = config();
  EXPECT_TRUE(b.force(false, t0, cfg, "n1"));
  EXPECT_FALSE(b.force(false, t0 + 1, cfg, "n1"));  // already open
  EXPECT_FALSE(b.allow(t0 + 10, cfg, true));
  EXPECT_TRUE(b.force(true, t0 + 20, cfg, "n1"));
  EXPECT_TRUE(b.allow(t0 + 21, cfg, false));
}

TEST(breaker, a_disabled_breaker_never_blocks) {
  circuit_breaker b;
  circuit_breaker_config off;
  for (int i = 0; i < 100; ++i) EXPECT_FALSE(b.record(false, false, t0, off, "n1"));
  EXPECT_TRUE(b.allow(t0, off, false));
}

}  // namespace
}  // namespace meridian::node
