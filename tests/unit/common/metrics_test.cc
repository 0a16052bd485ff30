#include "meridian/common/metrics.h"

#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

namespace meridian::node {
namespace {

bool has_line(const std::string& text, const std::string& line) {
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) {
    if (l == line) return true;
  }
  return false;
}

std::vector<std::string> lines_starting_with(const std::string& text, const std::string& prefix) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) {
    if (l.rfind(prefix, 0) == 0) out.push_back(l);
  }
  return out;
}

TEST(metrics, tracked_codes_get_their_own_slot) {
  for (size_t i = 0; i < tracked_status_codes.size(); ++i) {
    EXPECT_EQ(status_slot(tracked_status_codes[i]), i) << tracked_status_codes[i];
  }
}

TEST(metrics, untracked_codes_fall_into_their_class_slot) {
  const size_t base = tracked_status_codes.size();
  EXPECT_EQ(status_slot(100), base + 0);
  EXPECT_EQ(status_slot(203), base + 1);
  EXPECT_EQ(status_slot(399), base + 2);
  EXPECT_EQ(status_slot(418), base + 3);
  EXPECT_EQ(status_slot(599), base + 4);
}

TEST(metrics, out_of_range_codes_clamp_to_the_nearest_class) {
  const size_t base = tracked_status_codes.size();
  EXPECT_EQ(status_slot(0), base + 0);
  EXPECT_EQ(status_slot(-5), base + 0);
  EXPECT_EQ(status_slot(99), base + 0);
  EXPECT_EQ(status_slot(600), base + 4);
  EXPECT_EQ(status_slot(999), base + 4);
  route_stats stats;
  stats.record(12345, 1);  // must not index out of bounds
  EXPECT_EQ(stats.status[base + 4].get(), 1u);
}

TEST(metrics, route_and_target_are_created_once_and_reused) {
  metrics_registry registry(2);
  auto* a = registry.route("users");
  EXPECT_EQ(registry.route("users"), a);
  EXPECT_NE(registry.route("orders"), a);
  EXPECT_EQ(a->per_worker.size(), 2u);
  auto* t = registry.target("users", "127.0.0.1:9001");
  EXPECT_EQ(registry.target("users", "127.0.0.1:9001"), t);
  EXPECT_NE(registry.target("orders", "127.0.0.1:9001"), t);
  EXPECT_EQ(t->upstream, "users");
  EXPECT_EQ(t->address, "127.0.0.1:9001");
}

TEST(metrics, request_counts_are_summed_over_workers_and_zero_series_omitted) {
  metrics_registry registry(2);
  auto* r = registry.route("users");
  r->per_worker[0].record(200, 100);
  r->per_worker[1].record(200, 100);
  r->per_worker[1].record(200, 100);
  r->per_worker[0].record(418, 100);
  r->per_worker[1].record(503, 100);
  auto text = registry.render_prometheus();

  EXPECT_TRUE(has_line(text, "# TYPE meridian_http_requests_total counter")) << text;
  EXPECT_TRUE(has_line(text, "meridian_http_requests_total{route=\"users\",code=\"200\"} 3"))
      << text;
  EXPECT_TRUE(has_line(text, "meridian_http_requests_total{route=\"users\",code=\"4xx\"} 1"))
      << text;
  EXPECT_TRUE(has_line(text, "meridian_http_requests_total{route=\"users\",code=\"503\"} 1"))
      << text;
  EXPECT_EQ(lines_starting_with(text, "meridian_http_requests_total{").size(), 3u) << text;
}

TEST(metrics, histogram_buckets_are_cumulative_in_seconds) {
  metrics_registry registry(2);
  auto* r = registry.route("users");
  r->per_worker[0].record(200, 400);       // <= 0.0005
  r->per_worker[1].record(200, 500);       // <= 0.0005 (bounds are inclusive)
  r->per_worker[0].record(200, 2000);      // <= 0.0025
  r->per_worker[1].record(200, 20000000);  // beyond 10 s: +Inf only
  auto text = registry.render_prometheus();

  const std::string p = "meridian_http_request_duration_seconds";
  EXPECT_TRUE(has_line(text, "# TYPE " + p + " histogram")) << text;
  EXPECT_TRUE(has_line(text, p + "_bucket{route=\"users\",le=\"0.0005\"} 2")) << text;
  EXPECT_TRUE(has_line(text, p + "_bucket{route=\"users\",le=\"0.001\"} 2")) << text;
  EXPECT_TRUE(has_line(text, p + "_bucket{route=\"users\",le=\"0.0025\"} 3")) << text;
  EXPECT_TRUE(has_line(text, p + "_bucket{route=\"users\",le=\"10\"} 3")) << text;
  EXPECT_TRUE(has_line(text, p + "_bucket{route=\"users\",le=\"+Inf\"} 4")) << text;
  EXPECT_TRUE(has_line(text, p + "_sum{route=\"users\"} 20.0029")) << text;
  EXPECT_TRUE(has_line(text, p + "_count{route=\"users\"} 4")) << text;
  EXPECT_EQ(lines_starting_with(text, p + "_bucket{").size(), latency_bounds_us.size() + 1);
}

TEST(metrics, byte_counters_and_worker_counters_are_summed) {
  metrics_registry registry(3);
  auto* r = registry.route("users");
  r->per_worker[0].request_bytes.add(10);
  r->per_worker[2].request_bytes.add(5);
  r->per_worker[1].response_bytes.add(7);
  registry.worker(0).connections_accepted.add(2);
  registry.worker(2).connections_accepted.add(3);
  registry.worker(1).requests_total.add(4);
  registry.worker(0).retries_budget_exhausted.add(1);
  registry.worker(0).connections_active += 2;
  registry.worker(1).connections_active += 1;
  auto text = registry.render_prometheus();

  EXPECT_TRUE(has_line(text, "meridian_http_request_bytes_total{route=\"users\"} 15")) << text;
  EXPECT_TRUE(has_line(text, "meridian_http_response_bytes_total{route=\"users\"} 7")) << text;
  EXPECT_TRUE(has_line(text, "meridian_connections_accepted_total 5")) << text;
  EXPECT_TRUE(has_line(text, "meridian_requests_total 4")) << text;
  EXPECT_TRUE(has_line(text, "meridian_retries_budget_exhausted_total 1")) << text;
  EXPECT_TRUE(has_line(text, "meridian_ejections_total 0")) << text;
  EXPECT_TRUE(has_line(text, "# TYPE meridian_connections_active gauge")) << text;
  EXPECT_TRUE(has_line(text, "meridian_connections_active 3")) << text;
}

TEST(metrics, target_gauges_carry_upstream_and_target_labels) {
  metrics_registry registry(1);
  auto* t = registry.target("users", "127.0.0.1:9001");
  t->active_requests = 3;
  t->pool_idle = 2;
  t->pool_open = 5;
  t->healthy = 0;
  t->ejected = 1;
  t->requests = 42;
  t->failures = 7;
  auto text = registry.render_prometheus();

  const std::string labels = "{upstream=\"users\",target=\"127.0.0.1:9001\"}";
  EXPECT_TRUE(has_line(text, "meridian_upstream_active_requests" + labels + " 3")) << text;
  EXPECT_TRUE(has_line(text, "meridian_upstream_pool_idle_connections" + labels + " 2")) << text;
  EXPECT_TRUE(has_line(text, "meridian_upstream_pool_open_connections" + labels + " 5")) << text;
  EXPECT_TRUE(has_line(text, "meridian_upstream_healthy" + labels + " 0")) << text;
  EXPECT_TRUE(has_line(text, "meridian_upstream_ejected" + labels + " 1")) << text;
  EXPECT_TRUE(has_line(text, "meridian_upstream_requests_total" + labels + " 42")) << text;
  EXPECT_TRUE(has_line(text, "meridian_upstream_failures_total" + labels + " 7")) << text;
  EXPECT_TRUE(has_line(text, "# TYPE meridian_upstream_failures_total counter")) << text;
}

TEST(metrics, label_values_are_escaped) {
  metrics_registry registry(1);
  registry.route("a\"b\\c\nd")->per_worker[0].record(200, 1);
  auto text = registry.render_prometheus();
  EXPECT_TRUE(
      has_line(text, "meridian_http_requests_total{route=\"a\\\"b\\\\c\\nd\",code=\"200\"} 1"))
      << text;
}

TEST(metrics, every_family_has_help_and_type_before_its_samples) {
  metrics_registry registry(1);
  registry.route("users")->per_worker[0].record(200, 1);
  registry.target("users", "127.0.0.1:9001");
  auto text = registry.render_prometheus();
  std::istringstream in(text);
  std::string declared;  // family of the last # TYPE line
  bool help_seen = false;
  for (std::string l; std::getline(in, l);) {
    ASSERT_FALSE(l.empty());
    if (l.rfind("# HELP ", 0) == 0) {
      help_seen = true;
      continue;
    }
    if (l.rfind("# TYPE ", 0) == 0) {
      ASSERT_TRUE(help_seen) << l;
      help_seen = false;
      declared = l.substr(7, l.find(' ', 7) - 7);
      continue;
    }
    ASSERT_EQ(l.rfind("meridian_", 0), 0u) << l;
    ASSERT_EQ(l.rfind(declared, 0), 0u) << l << " outside family " << declared;
  }
  EXPECT_EQ(text.back(), '\n');
}

}  // namespace
}  // namespace meridian::node
