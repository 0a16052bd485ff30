#include "meridian/analytics/usage.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <random>
#include <thread>

#include "meridian/storage/store.h"

namespace meridian::node {
namespace {

class temp_dir {
 public:
  temp_dir() {
    path_ = std::filesystem::temp_directory_path() /
            ("meridian-usage-" + std::to_string(std::random_device{}()));
  }
  ~temp_dir() { std::filesystem::remove_all(path_); }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
};

constexpr int64_t minute = usage_store::minute_ms;
constexpr int64_t hour = usage_store::hour_ms;
// A fixed hour boundary, so tests choose which minute and hour a batch falls in.
constexpr int64_t t0 = 1'796'000'400'000 - 1'796'000'400'000 % hour;

usage_event event(std::string_view consumer, int status = 200, uint64_t latency_us = 1000) {
  usage_event e;
  e.route = "users";
  e.consumer = consumer;
  e.key_id = consumer.empty() ? "" : "k1";
  e.version = "v1";
  e.status = status;
  e.bytes = 10;
  e.latency_us = latency_us;
  return e;
}

usage_batch drained(usage_recorder& r) {
  usage_batch b;
  r.drain(b);
  return b;
}

uint64_t requests_of(const std::vector<usage_series>& s, const std::string& key) {
  for (const auto& x : s)
    if (x.key == key) return x.total_requests();
  return 0;
}

TEST(usage_point, percentiles_come_from_the_histogram_within_a_bucket_width) {
  usage_point p;
  for (int i = 0; i < 90; ++i) ++p.latency[usage_point::bucket_of(2000)];   // 2 ms
  for (int i = 0; i < 10; ++i) ++p.latency[usage_point::bucket_of(80000)];  // 80 ms
  EXPECT_NEAR(p.percentile_ms(0.5), 2.0, 2.0 * 0.35);
  EXPECT_NEAR(p.percentile_ms(0.99), 80.0, 80.0 * 0.35);
  EXPECT_EQ(usage_point{}.percentile_ms(0.5), 0);
}

TEST(usage_point, json_round_trips_and_refuses_other_shapes) {
  usage_point p;
  p.requests = 3;
  p.errors = 1;
  p.bytes = 99;
  p.latency[4] = 2;
  p.latency[usage_point::buckets - 1] = 1;
  usage_point back;
  ASSERT_TRUE(usage_point::from_json(p.to_json(), &back));
  EXPECT_EQ(back.requests, 3u);
  EXPECT_EQ(back.latency, p.latency);
  for (const char* bad : {R"({"r":1,"e":0,"b":0,"l":[[48,1]]})", R"({"r":-1,"e":0,"b":0,"l":[]})",
                          R"({"r":1,"e":0,"b":0})", R"({"r":1,"e":0,"b":0,"l":[[1]]})", "[]"}) {
    EXPECT_FALSE(usage_point::from_json(nlohmann::json::parse(bad), &back)) << bad;
  }
}

TEST(usage_recorder, every_dimension_counts_every_request_and_empty_names_as_none) {
  usage_recorder r(2, 100);
  r.record(0, event("acme"));
  r.record(1, event("acme", 503));
  r.record(1, event(""));
  auto b = drained(r);
  EXPECT_EQ(b[size_t(usage_dimension::consumer)]["acme"].requests, 2u);
  EXPECT_EQ(b[size_t(usage_dimension::consumer)]["acme"].errors, 1u);
  EXPECT_EQ(b[size_t(usage_dimension::consumer)][std::string(usage_none)].requests, 1u);
  EXPECT_EQ(b[size_t(usage_dimension::key)][std::string(usage_none)].requests, 1u);
  EXPECT_EQ(b[size_t(usage_dimension::route)]["users"].requests, 3u);
  EXPECT_EQ(b[size_t(usage_dimension::route)]["users"].bytes, 30u);
  EXPECT_EQ(b[size_t(usage_dimension::version)]["v1"].requests, 3u);
  EXPECT_TRUE(drained(r)[0].empty()) << "a drain takes everything";
}

TEST(usage_recorder, names_beyond_the_cap_count_as_other_and_the_sum_stays_whole) {
  usage_recorder r(1, 3);
  std::vector<std::string> names;
  for (int i = 0; i < 50; ++i) names.push_back("c" + std::to_string(i));
  for (const auto& n : names) r.record(0, event(n));
  auto b = drained(r);
  const auto& consumers = b[size_t(usage_dimension::consumer)];
  EXPECT_LE(consumers.size(), 4u);
  uint64_t sum = 0;
  for (const auto& [n, p] : consumers) sum += p.requests;
  EXPECT_EQ(sum, 50u);
  EXPECT_EQ(consumers.at(std::string(usage_other)).requests, 47u);
}

TEST(usage_recorder, concurrent_workers_and_drains_lose_no_request) {
  usage_recorder r(2, 100);
  usage_batch total;
  std::atomic<bool> done{false};
  std::thread drainer([&] {
    while (!done) r.drain(total);
  });
  std::vector<std::thread> workers;
  for (unsigned w = 0; w < 2; ++w)
    workers.emplace_back([&, w] {
      for (int i = 0; i < 20000; ++i) r.record(w, event("acme"));
    });
  for (auto& t : workers) t.join();
  done = true;
  drainer.join();
  r.drain(total);
  EXPECT_EQ(total[size_t(usage_dimension::consumer)]["acme"].requests, 40000u);
}

TEST(usage_store, minutes_and_hours_hold_the_same_totals_and_survive_reopen) {
  temp_dir dir;
  std::string error;
  auto db = storage::store::open(dir.str(), &error);
  ASSERT_TRUE(db) << error;
  usage_recorder r(1, 100);
  {
    usage_store s({}, db.get(), t0);
    for (int m = 0; m < 3; ++m) {  // three minutes of one hour: 1, 2, 3 requests
      for (int i = 0; i <= m; ++i) r.record(0, event("acme"));
      s.add(drained(r), t0 + m * minute + 5000);
      ASSERT_TRUE(s.persist(t0 + m * minute + 6000, &error)) << error;
    }
    auto minutes = s.query(usage_dimension::consumer, t0, t0 + hour, minute);
    ASSERT_EQ(minutes.size(), 1u);
    ASSERT_EQ(minutes[0].points.size(), 3u);
    EXPECT_EQ(minutes[0].points[1].first, t0 + minute);
    EXPECT_EQ(minutes[0].points[2].second.requests, 3u);
    auto hours = s.query(usage_dimension::consumer, t0, t0 + hour, hour);
    ASSERT_EQ(hours.size(), 1u);
    ASSERT_EQ(hours[0].points.size(), 1u);
    EXPECT_EQ(hours[0].points[0].second.requests, 6u);
  }
  // A restart within the same minute and hour goes on counting where it stopped.
  usage_store again({}, db.get(), t0 + 2 * minute + 7000);
  r.record(0, event("acme"));
  again.add(drained(r), t0 + 2 * minute + 8000);
  EXPECT_EQ(requests_of(again.query(usage_dimension::consumer, t0, t0 + hour, minute), "acme"), 7u);
  EXPECT_EQ(requests_of(again.query(usage_dimension::consumer, t0, t0 + hour, hour), "acme"), 7u);
  // Only buckets overlapping the range come back.
  EXPECT_EQ(
      requests_of(again.query(usage_dimension::consumer, t0 + minute, t0 + 2 * minute, minute),
                  "acme"),
      2u);
}

TEST(usage_store, minutes_expire_after_a_day_and_hours_after_their_retention) {
  temp_dir dir;
  std::string error;
  auto db = storage::store::open(dir.str(), &error);
  ASSERT_TRUE(db) << error;
  usage_store::options o;
  o.hour_retention_ms = 48 * hour;
  usage_recorder r(1, 100);
  usage_store s(o, db.get(), t0);
  r.record(0, event("acme"));
  s.add(drained(r), t0);
  ASSERT_TRUE(s.persist(t0, &error));
  // 25 hours on: the minute is gone, the hour is kept.
  ASSERT_TRUE(s.persist(t0 + 25 * hour, &error));
  EXPECT_EQ(requests_of(s.query(usage_dimension::consumer, t0, t0 + hour, minute), "acme"), 0u);
  EXPECT_EQ(requests_of(s.query(usage_dimension::consumer, t0, t0 + hour, hour), "acme"), 1u);
  // 49 hours on: the hour is gone too.
  ASSERT_TRUE(s.persist(t0 + 49 * hour, &error));
  EXPECT_EQ(requests_of(s.query(usage_dimension::consumer, t0, t0 + hour, hour), "acme"), 0u);
}

TEST(usage_store, a_bucket_keeps_at_most_max_names_per_dimension) {
  usage_store::options o;
  o.max_names = 5;
  usage_store s(o, nullptr, t0);
  for (int batch = 0; batch < 4; ++batch) {
    usage_recorder r(1, 100);
    for (int i = 0; i < 10; ++i) r.record(0, event("c" + std::to_string(batch * 10 + i)));
    s.add(drained(r), t0 + 1000);
  }
  auto got = s.query(usage_dimension::consumer, t0, t0 + minute, minute);
  EXPECT_LE(got.size(), 6u);
  uint64_t sum = 0;
  for (const auto& x : got) sum += x.total_requests();
  EXPECT_EQ(sum, 40u);
  EXPECT_EQ(requests_of(got, std::string(usage_other)), 35u);
}

TEST(usage_merge, raw_series_from_peers_sum_point_by_point_busiest_first) {
  usage_recorder a(1, 100), b(1, 100);
  usage_store sa({}, nullptr, t0), sb({}, nullptr, t0);
  for (int i = 0; i < 2; ++i) a.record(0, event("acme"));
  for (int i = 0; i < 5; ++i) b.record(0, event("globex"));
  b.record(0, event("acme"));
  sa.add(drained(a), t0 + 1);
  sb.add(drained(b), t0 + 2);
  usage_merge m;
  merge_usage_series(sa.query(usage_dimension::consumer, t0, t0 + minute, minute), m);
  auto raw = usage_series_json(sb.query(usage_dimension::consumer, t0, t0 + minute, minute), true);
  ASSERT_TRUE(merge_raw_usage_series(raw, m));
  auto merged = finish_usage_merge(std::move(m));
  ASSERT_EQ(merged.size(), 2u);
  EXPECT_EQ(merged[0].key, "globex");
  EXPECT_EQ(merged[1].total_requests(), 3u);
  EXPECT_EQ(merged[1].points.size(), 1u) << "the same minute from two nodes is one point";
  usage_merge junk;
  EXPECT_FALSE(merge_raw_usage_series(nlohmann::json::parse(R"([{"key":"x"}])"), junk));
  EXPECT_FALSE(merge_raw_usage_series(nlohmann::json::parse(R"({"series":[]})"), junk));
  EXPECT_FALSE(merge_raw_usage_series(
      nlohmann::json::parse(R"([{"key":"x","points":[{"t":"soon","r":1,"e":0,"b":0,"l":[]}]}])"),
      junk));
}

}  // namespace
}  // namespace meridian::node
