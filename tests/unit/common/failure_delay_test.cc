#include "meridian/common/failure_delay.h"

#include <gtest/gtest.h>

#include <string>

namespace meridian::node {
namespace {

constexpr int64_t t0 = 1'000'000;

TEST(failure_delay, free_failures_cost_nothing_then_the_wait_doubles) {
  failure_delay d(5, 100);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(d.wait_ms("a", t0), 0) << i;
    d.failed("a", t0);
  }
  EXPECT_EQ(d.wait_ms("a", t0), 0) << "five failures are free";
  int64_t now = t0;
  for (int64_t expect : {1000, 2000, 4000, 8000, 16000}) {
    d.failed("a", now);
    EXPECT_EQ(d.wait_ms("a", now), expect);
    EXPECT_EQ(d.wait_ms("a", now + expect - 1), 1);
    EXPECT_EQ(d.wait_ms("a", now + expect), 0);
    now += expect;
  }
  EXPECT_EQ(failure_delay::retry_after_s(1), 1);
  EXPECT_EQ(failure_delay::retry_after_s(1000), 1);
  EXPECT_EQ(failure_delay::retry_after_s(1001), 2);
}

TEST(failure_delay, the_wait_is_capped_and_a_quiet_hour_or_a_success_forgives) {
  failure_delay d(0, 100);
  for (int i = 0; i < 40; ++i) d.failed("a", t0);
  EXPECT_EQ(d.wait_ms("a", t0), failure_delay::max_delay_ms);
  // A quiet hour: the next failure starts over.
  int64_t later = t0 + failure_delay::forgive_after_ms + 1;
  EXPECT_EQ(d.wait_ms("a", later), 0);
  d.failed("a", later);
  EXPECT_EQ(d.wait_ms("a", later), 1000);
  d.succeeded("a");
  EXPECT_EQ(d.wait_ms("a", later), 0);
  d.failed("a", later);
  EXPECT_EQ(d.wait_ms("a", later), 1000) << "a success cleared the count";
}

TEST(failure_delay, keys_are_independent_and_the_table_is_bounded_without_a_reset) {
  failure_delay d(0, 3);
  d.failed("a", t0);
  d.failed("a", t0);  // a waits 2 s
  d.failed("b", t0);
  d.failed("c", t0);
  EXPECT_EQ(d.wait_ms("a", t0), 2000);
  EXPECT_EQ(d.wait_ms("b", t0), 1000);
  EXPECT_EQ(d.wait_ms("zz", t0), 0);
  // A fourth key: the one that entered first (a) makes room; b and c keep their counts.
  d.failed("d", t0);
  EXPECT_EQ(d.size(), 3u);
  EXPECT_EQ(d.wait_ms("a", t0), 0);
  EXPECT_EQ(d.wait_ms("b", t0), 1000);
  EXPECT_EQ(d.wait_ms("c", t0), 1000);
  // Keys that come and go (failure, then success) never grow the table's bookkeeping past it.
  for (int i = 0; i < 10'000; ++i) {
    std::string k = "k" + std::to_string(i);
    d.failed(k, t0);
    d.succeeded(k);
  }
  EXPECT_LE(d.size(), 3u);
  EXPECT_EQ(d.wait_ms("c", t0), 1000);
}

}  // namespace
}  // namespace meridian::node
