// The rate limiter: local decisions (algorithms, leases, partitions, the table's cap), then the
// accuracy harness of issue 5 on the deterministic simulator: three nodes in three regions with
// 50 ms between regions, the real membership and replicated state underneath, load at 3x the
// limit, admissions counted per window.
#include "meridian/traffic/rate_limiter.h"

#include <gtest/gtest.h>

#include <cmath>
#include <ctime>
#include <filesystem>
#include <random>

#include "meridian/cluster/hlc.h"
#include "meridian/cluster/replicated_state.h"
#include "meridian/sim/scenarios.h"
#include "meridian/sim/simulator.h"
#include "meridian/storage/store.h"
#include "utc_ms.h"

namespace meridian::node {
namespace {

using namespace std::chrono_literals;
using cluster::millis;

constexpr int64_t t0 = cluster::hlc_epoch_unix_ms + 1'000'000'000'000;  // window-aligned

rate_limit_config limit_of(uint64_t limit, duration window,
                           std::string algorithm = "sliding_window", std::string scope = "global") {
  rate_limit_config c;
  c.limit = limit;
  c.window = window;
  c.algorithm = std::move(algorithm);
  c.scope = std::move(scope);
  c.key = "global";
  return c;
}

// Compiles cfg as limit 0 of route on rl and returns (spec, key of key_value).
std::pair<limit_spec, uint64_t> spec_key(const rate_limiter& rl, const std::string& route,
                                         size_t index, const rate_limit_config& cfg,
                                         std::string_view key_value = "") {
  auto spec = rl.compile(route, index, cfg);
  return {spec, rate_limiter::key_of(spec, key_value)};
}

TEST(rate_limiter, fixed_window_admits_the_limit_per_window_and_resets) {
  rate_limiter rl({.node_id = "a"}, nullptr);
  auto [cfg, k] = spec_key(rl, "r", 0, limit_of(3, 1s, "fixed_window"));
  int ok = 0;
  for (int i = 0; i < 5; ++i) ok += rl.check(k, cfg, t0 + 100, true).allowed;
  EXPECT_EQ(ok, 3);
  auto d = rl.check(k, cfg, t0 + 100, true);
  EXPECT_FALSE(d.allowed);
  EXPECT_EQ(d.retry_after_s, 1u);
  EXPECT_TRUE(rl.check(k, cfg, t0 + 1000, true).allowed);  // the next window
}

TEST(rate_limiter, sliding_window_weighs_the_previous_window_by_its_overlap) {
  rate_limiter rl({.node_id = "a"}, nullptr);
  auto [cfg, k] = spec_key(rl, "r", 0, limit_of(10, 1s));
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(rl.check(k, cfg, t0 + 500, true).allowed);
  // 25% into the next window, 75% of the previous 10 still count: 2 more fit (7.5 + 2 <= 10).
  int ok = 0;
  for (int i = 0; i < 5; ++i) ok += rl.check(k, cfg, t0 + 1250, true).allowed;
  EXPECT_EQ(ok, 2);
}

TEST(rate_limiter, checking_without_commit_counts_nothing) {
  rate_limiter rl({.node_id = "a"}, nullptr);
  auto [cfg, k] = spec_key(rl, "r", 0, limit_of(1, 1s));
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(rl.check(k, cfg, t0, false).allowed);
  EXPECT_TRUE(rl.check(k, cfg, t0, true).allowed);
  EXPECT_FALSE(rl.check(k, cfg, t0, true).allowed);
}

TEST(rate_limiter, keys_differ_by_route_limit_key_and_region_scope) {
  rate_limiter eu({.node_id = "a", .region = "eu-west"}, nullptr);
  rate_limiter us({.node_id = "b", .region = "us-east"}, nullptr);
  auto global = limit_of(1, 1s);
  auto region = limit_of(1, 1s, "sliding_window", "region");
  auto key = [](const rate_limiter& rl, const char* route, size_t i, const rate_limit_config& c,
                const char* v) { return spec_key(rl, route, i, c, v).second; };
  EXPECT_EQ(key(eu, "r", 0, global, "k"), key(us, "r", 0, global, "k"));
  EXPECT_NE(key(eu, "r", 0, global, "k"), key(eu, "r", 1, global, "k"));
  EXPECT_NE(key(eu, "r", 0, global, "k"), key(eu, "s", 0, global, "k"));
  EXPECT_NE(key(eu, "r", 0, global, "k"), key(eu, "r", 0, global, "j"));
  EXPECT_NE(key(eu, "r", 0, region, "k"), key(us, "r", 0, region, "k"));
}

// Offers n requests of key at now_ms; returns how many were admitted.
int admitted(rate_limiter& rl, uint64_t key, const limit_spec& spec, int n, int64_t now_ms = t0) {
  int yes = 0;
  for (int i = 0; i < n; ++i) yes += rl.check(key, spec, now_ms, true).allowed;
  return yes;
}

// One limit of 10 an hour per on_partition policy: local_share, fail_open, fail_closed.
struct policy_limits {
  std::pair<limit_spec, uint64_t> share, open, closed;
  explicit policy_limits(const rate_limiter& rl) {
    auto cfg = limit_of(10, 1h);
    share = spec_key(rl, "s", 0, cfg);
    cfg.on_partition = "fail_open";
    open = spec_key(rl, "o", 0, cfg);
    cfg.on_partition = "fail_closed";
    closed = spec_key(rl, "c", 0, cfg);
  }
};

TEST(rate_limiter, under_partition_each_limit_follows_its_policy) {
  cluster::replicated_state state(
      {.self_id = "a"}, [] { return t0; }, nullptr);
  rate_limiter rl({.node_id = "a"}, &state);
  rl.set_view(4, 2, 1, 0, t0);  // half of the cluster unreachable
  policy_limits l(rl);
  EXPECT_EQ(admitted(rl, l.share.second, l.share.first, 20), 5);  // the reachable half's share
  EXPECT_EQ(admitted(rl, l.open.second, l.open.first, 20), 20);
  EXPECT_EQ(admitted(rl, l.closed.second, l.closed.first, 20), 0);
  // Healed: the other half's counts of the partition are still on their way, so for a grace
  // the share holds; then the full limit again.
  rl.set_view(4, 0, 1, 0, t0);
  EXPECT_EQ(admitted(rl, l.share.second, l.share.first, 1, t0 + 999), 0);
  EXPECT_EQ(admitted(rl, l.share.second, l.share.first, 1, t0 + 1000), 1);
}

TEST(rate_limiter, unconfirmed_members_shrink_only_the_local_share) {
  // Members alive but unconfirmed (silent to a confirmation ping): fail_closed keeps deciding by
  // the limit, fail_open does not lift it. (No leases: the full limit on one node.)
  cluster::replicated_state state(
      {.self_id = "a"}, [] { return t0; }, nullptr);
  rate_limiter rl({.node_id = "a", .lease_ms = 0}, &state);
  rl.set_view(4, 0, 1, 0, t0, 2, 0);
  policy_limits l(rl);
  EXPECT_EQ(admitted(rl, l.share.second, l.share.first, 20), 5);
  EXPECT_EQ(admitted(rl, l.open.second, l.open.first, 20), 10);
  EXPECT_EQ(admitted(rl, l.closed.second, l.closed.first, 20), 10);
}

TEST(rate_limiter, a_view_healing_one_member_at_a_time_keeps_the_smallest_share) {
  // Each SWIM refutation is its own change: the share stays the smallest side's for a grace
  // after the last member returned.
  cluster::replicated_state state(
      {.self_id = "a"}, [] { return t0; }, nullptr);
  rate_limiter rl({.node_id = "a"}, &state);
  auto [spec, key] = spec_key(rl, "s", 0, limit_of(12, 1h));
  rl.set_view(4, 3, 1, 0, t0);  // cut off from three of four: a quarter
  EXPECT_EQ(admitted(rl, key, spec, 20), 3);
  rl.set_view(4, 2, 1, 0, t0 + 100);  // one back: still a quarter
  EXPECT_EQ(admitted(rl, key, spec, 1, t0 + 100), 0);
  rl.set_view(4, 0, 1, 0, t0 + 600);  // the rest back: a quarter until t0 + 1600
  EXPECT_EQ(admitted(rl, key, spec, 1, t0 + 1599), 0);
  EXPECT_EQ(admitted(rl, key, spec, 1, t0 + 1600), 1);
}

TEST(rate_limiter, a_cold_key_takes_no_more_than_an_even_share_before_counts_arrive) {
  // Three members and a key nobody has counted yet: every node may be starting on it in the
  // same instant. Until the others' counts arrive (or the lease runs out), one node admits at
  // most a third of the limit, so the first leases of all three cannot add up beyond it.
  cluster::replicated_state state(
      cluster::state_options{.self_id = "n0"}, [] { return t0; }, nullptr);
  rate_limiter l(rate_limiter::options{.node_id = "n0", .region = "r"}, &state);
  l.set_view(3, 0, 1, 0, t0);
  auto spec = l.compile("api", 0, limit_of(200, 10s, "sliding_window", "global"));
  uint64_t key = rate_limiter::key_of(spec, "new-client");
  int admitted = 0;
  for (int i = 0; i < 300; ++i) admitted += l.check(key, spec, t0 + 10, true).allowed;
  EXPECT_EQ(admitted, 67);  // ceil(200 / 3)
  // A node alone in its cluster takes the whole remainder.
  rate_limiter alone(rate_limiter::options{.node_id = "n0", .region = "r"}, &state);
  alone.set_view(1, 0, 1, 0, t0);
  uint64_t other = rate_limiter::key_of(spec, "another-client");
  admitted = 0;
  for (int i = 0; i < 300; ++i) admitted += alone.check(other, spec, t0 + 10, true).allowed;
  EXPECT_EQ(admitted, 200);
}

TEST(rate_limiter, a_flood_of_distinct_keys_stays_within_the_table) {
  rate_limiter rl({.node_id = "a", .max_keys = 4096}, nullptr);
  auto cfg = rl.compile("r", 0, limit_of(5, 1s));
  for (uint64_t i = 0; i < 1'000'000; ++i) rl.check(i * 0x9E3779B97F4A7C15ull + 1, cfg, t0, true);
  EXPECT_LE(rl.size(), 4096u);
  // A key used again and again is not the one evicted.
  uint64_t hot = 42;
  for (int i = 0; i < 5; ++i) rl.check(hot, cfg, t0 + 1, true);
  EXPECT_FALSE(rl.check(hot, cfg, t0 + 1, true).allowed);
}

TEST(rate_limiter, counts_of_every_scope_survive_a_restart) {
  auto dir = std::filesystem::temp_directory_path() /
             ("meridian-rl-" + std::to_string(std::random_device{}()));
  std::string error;
  auto local = limit_of(5, 24h, "fixed_window", "local");  // a daily quota
  auto global = limit_of(5, 24h, "fixed_window", "global");
  for (int life = 0; life < 2; ++life) {
    auto store = storage::store::open(dir.string(), &error);
    ASSERT_TRUE(store) << error;
    cluster::replicated_state state(
        {.self_id = "a"}, [] { return t0; }, store.get());
    ASSERT_TRUE(state.load(&error)) << error;
    rate_limiter rl({.node_id = "a"}, &state);
    auto [ls, lk] = spec_key(rl, "r", 0, local);
    auto [gs, gk] = spec_key(rl, "r", 1, global);
    int l = 0, g = 0;
    for (int i = 0; i < 3; ++i) {
      l += rl.check(lk, ls, t0, true).allowed;
      g += rl.check(gk, gs, t0, true).allowed;
    }
    EXPECT_EQ(l, life == 0 ? 3 : 2) << "life " << life;
    EXPECT_EQ(g, life == 0 ? 3 : 2) << "life " << life;
    rl.flush();                // the delta round hands the counts over
    state.persist_counters();  // the write-behind
    // Only the global limit's count is offered to the cluster; the local one stays here.
    state.take_deltas(millis(1'000'000));
    EXPECT_EQ(state.stats().counter_updates_sent, 1u);
  }
  std::filesystem::remove_all(dir);
}

// ---- the accuracy harness ----

struct harness_result {
  std::vector<double> errors;  // |admitted - limit| / limit per measured window
  double mean_admitted = 0;
};

// Three nodes (eu-west, us-east, ap-south; 50 ms + U[0,5] ms one way between regions, 1 ms
// inside) on the simulator, each with its replicated state and rate limiter wired as node.cc
// wires them.
struct three_regions {
  three_regions(uint64_t seed, int64_t lease_ms) : sim(seed) {
    cluster::swim_config swim = sim::recommended_config();
    sim.set_default_links({0, millis(1), millis(1), false}, {0, millis(50), millis(5), false});
    const char* regions[] = {"eu-west", "us-east", "ap-south"};
    for (int i = 0; i < 3; ++i) {
      std::string id = "n" + std::to_string(i);
      sim.add_node({id, "10.0.0." + std::to_string(i + 1) + ":7946", regions[i], ""}, 1, swim);
      states.push_back(std::make_unique<cluster::replicated_state>(
          cluster::state_options{.self_id = id}, [this] { return wall(); }, nullptr));
      limiters.push_back(std::make_unique<rate_limiter>(
          rate_limiter::options{.node_id = id, .region = regions[i], .lease_ms = lease_ms},
          states.back().get()));
      auto* l = limiters.back().get();
      states.back()->set_counter_observer(
          [l](uint64_t k, uint32_t w, uint64_t others) { l->on_remote(k, w, others); });
      states.back()->set_flush_hook([l] { l->flush(); });
      l->set_view(3, 0, 1, 0, wall());
    }
    sim.bootstrap();
    for (int i = 0; i < 3; ++i) {
      sim.node(i).set_application(states[i].get());
      sim.touch(i);
    }
  }
  int64_t wall() const { return t0 + sim.now().count(); }
  int64_t window_of(int64_t wall_ms, millis window) const {
    return (wall_ms - cluster::hlc_epoch_unix_ms) / window.count();
  }
  // Offers Poisson arrivals from `from` to `until` at total_rate (per ms) split by share(node);
  // calls admitted(node) for each admission.
  void offer(millis from, millis until, double total_rate, std::function<double(int)> share,
             std::vector<limit_spec> specs, std::function<void(int)> admitted) {
    for (int node = 0; node < 3; ++node) {
      // The loop re-schedules itself through a pointer to it (held in loops_, not by itself: a
      // function holding its own shared_ptr is a cycle that never frees).
      auto* next = loops_.emplace_back(std::make_unique<std::function<void()>>()).get();
      *next = [=, this] {
        millis now = sim.now();
        if (now >= until) return;
        uint64_t k = rate_limiter::key_of(specs[node], "");
        if (limiters[node]->check(k, specs[node], wall(), true).allowed) admitted(node);
        double rate = total_rate * share(node);
        double gap = -std::log(1.0 - sim.random().uniform()) / std::max(rate, 1e-9);
        sim.at(now + millis(std::max<int64_t>(1, static_cast<int64_t>(gap))), *next);
      };
      sim.at(from, *next);
    }
  }
  // Tells each limiter which members its membership sees as unreachable, as the glue does.
  void publish_views_every(millis period, millis until) {
    auto* tick = loops_.emplace_back(std::make_unique<std::function<void()>>()).get();
    *tick = [=, this] {
      for (int i = 0; i < 3; ++i) {
        size_t down = 0, unconfirmed = 0;
        for (const auto& m : sim.node(i).members()) {
          const bool gone =
              m.state == cluster::member_state::suspect || m.state == cluster::member_state::dead;
          down += gone;
          unconfirmed += !gone && m.unconfirmed;
        }
        limiters[i]->set_view(3, down, 1, 0, wall(), unconfirmed, 0);
        // Members are back (a count that fell is enough here: nobody is reaped or leaves).
        if (down + unconfirmed < published_down_[i]) states[i]->resend_counters();
        published_down_[i] = down + unconfirmed;
      }
      if (sim.now() + period < until) sim.at(sim.now() + period, *tick);
    };
    sim.at(sim.now(), *tick);
  }
  sim::simulator sim;
  std::vector<std::unique_ptr<cluster::replicated_state>> states;
  std::vector<std::unique_ptr<rate_limiter>> limiters;
  std::vector<std::unique_ptr<std::function<void()>>> loops_;
  size_t published_down_[3] = {0, 0, 0};
};

// One key limited to 1,000 per 10 s, offered 3x the limit split by `split` for `windows`
// windows after one warm-up window, then (if `moved` is set) the moved split for as many more.
// Returns per-window errors of each phase.
std::pair<harness_result, harness_result> run_harness(const std::string& scope, double split[3],
                                                      double moved[3], int windows, uint64_t seed,
                                                      int64_t lease_ms = 250) {
  const uint64_t limit = 1000;
  const millis window(10'000);
  three_regions c(seed, lease_ms);
  std::vector<limit_spec> specs;
  for (auto& l : c.limiters)
    specs.push_back(l->compile("api", 0, limit_of(limit, 10s, "sliding_window", scope)));
  std::map<int64_t, uint64_t> admitted;  // per window index, all nodes together
  const double total_rate = 3.0 * static_cast<double>(limit) / 10'000.0;  // requests per ms
  const millis start = window;                                            // align phases to windows
  const millis phase = window * (windows + 1);
  auto count = [&](int) { ++admitted[c.window_of(c.wall(), window)]; };
  c.offer(
      start, start + phase, total_rate, [&](int n) { return split[n]; }, specs, count);
  if (moved)
    c.offer(
        start + phase, start + 2 * phase, total_rate, [&](int n) { return moved[n]; }, specs,
        count);
  c.sim.run_until(start + (moved ? 2 : 1) * phase);

  std::pair<harness_result, harness_result> out;
  int64_t first = c.window_of(t0 + start.count(), window);
  for (int p = 0; p < (moved ? 2 : 1); ++p) {
    auto& r = p == 0 ? out.first : out.second;
    double sum = 0;
    // Skip the first window of each phase: it starts from empty counts, or from a moved load.
    for (int w = 1; w <= windows; ++w) {
      uint64_t n = admitted[first + p * (windows + 1) + w];
      r.errors.push_back(std::abs(static_cast<double>(n) - limit) / limit);
      sum += static_cast<double>(n);
    }
    r.mean_admitted = sum / windows;
  }
  return out;
}

TEST(rate_limiter_sim, three_regions_at_3x_the_limit_admit_within_5_percent_per_window) {
  double split[3] = {0.6, 0.3, 0.1};
  double moved[3] = {0.1, 0.3, 0.6};
  auto [steady, shifted] = run_harness("global", split, moved, 20, 7);
  double p99 = sim::percentile(steady.errors, 99);
  double p99_moved = sim::percentile(shifted.errors, 99);
  std::printf("global, 60/30/10: mean %.1f admitted per window, p99 error %.2f%%\n",
              steady.mean_admitted, p99 * 100);
  std::printf("global, load moved to 10/30/60: mean %.1f, p99 error %.2f%%\n",
              shifted.mean_admitted, p99_moved * 100);
  EXPECT_LE(p99, 0.05);
  EXPECT_LE(p99_moved, 0.10);
}

TEST(rate_limiter_sim, cold_bursts_across_regions_50_ms_apart_stay_within_6_percent) {
  // Issue 18's cold burst on the simulator, with the delay the loopback benchmark cannot add:
  // 50 ms + U[0,5] ms one way between regions. Each run a key nobody has seen gets 600 requests
  // over 4 s split 60/30/10 (Poisson), limit 200 per 10 s, inside one window; the nodes send
  // counts at once near the limit (the urgent hook, wired as the node wires it). Measured
  // 2026-12-07: +1 % to +5.5 % (issue 18 asks ±3 %: not met; docs/benchmarks.md); without the
  // urgent sends and the half lease near the end +5 % to +15 %.
  three_regions c(31, 250);
  for (int i = 0; i < 3; ++i) {
    c.limiters[static_cast<size_t>(i)]->set_urgent_hook([&c, i] {
      c.sim.node(static_cast<size_t>(i)).urgent_application_round(millis(5));
      c.sim.touch(static_cast<size_t>(i));
    });
  }
  const uint64_t limit = 200;
  const millis window(10'000);
  std::vector<limit_spec> specs;
  for (auto& l : c.limiters) specs.push_back(l->compile("api", 0, limit_of(limit, 10s)));
  const int runs = 20;
  std::vector<uint64_t> admitted(runs, 0);
  const double split[3] = {0.6, 0.3, 0.1};
  const double rate = 600.0 / 4000.0;  // per ms, all nodes
  for (int r = 0; r < runs; ++r) {
    // Window r + 1 starts at a multiple of the window after the epoch (t0 is aligned).
    const millis from = window * (r + 1) + millis(100), until = from + millis(4000);
    for (int node = 0; node < 3; ++node) {
      auto* next = c.loops_.emplace_back(std::make_unique<std::function<void()>>()).get();
      *next = [&, r, node, until, next] {
        const millis now = c.sim.now();
        if (now >= until) return;
        const auto& spec = specs[static_cast<size_t>(node)];
        const uint64_t k = rate_limiter::key_of(spec, "cold-" + std::to_string(r));
        admitted[static_cast<size_t>(r)] +=
            c.limiters[static_cast<size_t>(node)]->check(k, spec, c.wall(), true).allowed;
        const double gap = -std::log(1.0 - c.sim.random().uniform()) / (rate * split[node]);
        c.sim.at(now + millis(std::max<int64_t>(1, static_cast<int64_t>(gap))), *next);
      };
      c.sim.at(from, *next);
    }
  }
  c.sim.run_until(window * (runs + 2));
  double worst = 0;
  std::string all;
  for (uint64_t n : admitted) {
    worst = std::max(worst, std::abs(static_cast<double>(n) - limit) / limit);
    all += std::to_string(n) + " ";
  }
  std::printf("cold bursts, 50 ms between regions: admitted %s(worst error %.1f%%)\n", all.c_str(),
              worst * 100);
  EXPECT_LE(worst, 0.06) << all;
}

TEST(rate_limiter_sim, leases_beat_summing_what_each_node_knows) {
  // The same load over five seeds (100 windows), with and without leases. Without them every
  // node spends the remainder it believes is left, so the cluster overshoots each window by
  // about what the other nodes admit during one sync delay.
  double split[3] = {0.6, 0.3, 0.1};
  std::vector<double> with, without;
  double mean_with = 0, mean_without = 0;
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    auto a = run_harness("global", split, nullptr, 20, seed).first;
    auto b = run_harness("global", split, nullptr, 20, seed, 0).first;
    with.insert(with.end(), a.errors.begin(), a.errors.end());
    without.insert(without.end(), b.errors.begin(), b.errors.end());
    mean_with += a.mean_admitted / 5;
    mean_without += b.mean_admitted / 5;
  }
  std::printf(
      "leases: mean %.1f, p99 error %.2f%%; sum-what-you-know: mean %.1f, p99 error %.2f%%\n",
      mean_with, sim::percentile(with, 99) * 100, mean_without, sim::percentile(without, 99) * 100);
  EXPECT_LE(sim::percentile(with, 99), 0.05);
  EXPECT_LT(std::abs(mean_with - 1000), std::abs(mean_without - 1000));
}

TEST(rate_limiter_sim, under_partition_each_side_takes_its_share_and_counts_merge_after) {
  // ap-south (n2) is cut off from 12 s to 45 s. With local_share each side may use its share
  // of the limit (2/3 and 1/3) while members are unreachable; the window 30-40 s lies wholly
  // inside the partition, after detection. Then the heal: the windows' counts merge.
  const millis window(10'000);
  three_regions c(3, 250);
  std::vector<limit_spec> share, open;
  for (auto& l : c.limiters) {
    share.push_back(l->compile("api", 0, limit_of(1000, 10s)));
    auto o = limit_of(1000, 10s);
    o.on_partition = "fail_open";
    open.push_back(l->compile("open", 0, o));
  }
  std::map<std::pair<int64_t, int>, uint64_t> by_side, by_side_open;  // (window, side) -> n
  const double rate = 0.3;                                            // 3x the limit, per ms
  auto split = [](int n) { return n == 0 ? 0.6 : n == 1 ? 0.3 : 0.1; };
  // The load goes on for 5 s after the heal, then stops so the last counts can settle before
  // the check.
  c.offer(millis(10'000), millis(50'000), rate, split, share, [&](int n) {
    ++by_side[{c.window_of(c.wall(), window), n == 2}];
  });
  c.offer(millis(10'000), millis(50'000), rate, split, open, [&](int n) {
    ++by_side_open[{c.window_of(c.wall(), window), n == 2}];
  });
  c.publish_views_every(millis(250), millis(60'000));
  c.sim.at(millis(12'000), [&] { c.sim.partition({2}); });
  c.sim.at(millis(45'000), [&] { c.sim.heal(); });
  c.sim.run_until(millis(53'000));
  int64_t inside = c.window_of(t0 + 30'000, window);
  uint64_t a = by_side[std::make_pair(inside, false)], b = by_side[std::make_pair(inside, true)];
  std::printf(
      "partitioned window, local_share: eu+us admitted %llu (share 666), ap %llu (share "
      "333, offered ~300); fail_open: %llu and %llu\n",
      static_cast<unsigned long long>(a), static_cast<unsigned long long>(b),
      static_cast<unsigned long long>(by_side_open[std::make_pair(inside, false)]),
      static_cast<unsigned long long>(by_side_open[std::make_pair(inside, true)]));
  EXPECT_LE(a, 666u + 10);
  EXPECT_GE(a, 600u);
  EXPECT_LE(b, 333u);
  EXPECT_LE(a + b, 1000u + 10);
  // The window of the heal (40-50 s, healed at 45 s): its partition-time counts reach the other
  // side within the heal grace (sent again as members return), so the two sides' admissions
  // add up to the limit.
  int64_t healed = c.window_of(t0 + 45'000, window);
  uint64_t ha = by_side[std::make_pair(healed, false)], hb = by_side[std::make_pair(healed, true)];
  std::printf("window of the heal: eu+us admitted %llu, ap %llu\n",
              static_cast<unsigned long long>(ha), static_cast<unsigned long long>(hb));
  EXPECT_LE(ha + hb, 1000u + 10);
  uint64_t open_majority = by_side_open[std::make_pair(inside, false)];
  EXPECT_GT(open_majority, 1500u);  // fail_open: no limit while partitioned
  // After the heal the majority side learns what ap-south admitted in the window of the heal.
  uint64_t key = rate_limiter::key_of(share[0], "");
  auto seen_by_n0 = c.states[0]->counter_by_node(key, static_cast<uint32_t>(healed));
  auto own_of_n2 = c.states[2]->counter_by_node(key, static_cast<uint32_t>(healed));
  EXPECT_GT(own_of_n2["n2"], 0u);
  EXPECT_EQ(seen_by_n0["n2"], own_of_n2["n2"]);
}

TEST(rate_limiter_sim, a_churn_of_distinct_keys_does_not_starve_a_busy_global_key) {
  // Issue 15 (9): 2 M distinct keys on one node pushed the others' sync lag to minutes, and one
  // key limited on two nodes was admitted in full on both. Here node 0 (and node 1, at half the
  // rate) also see 4,000 new keys a second (a per-IP limit under a scan: 360,000 keys over the
  // run, far more than the gossip can carry), while one key takes 3x its limit split 60/30/10.
  // The busy key's count still reaches the others each round: every window within 5 %.
  const uint64_t limit = 1000;
  const millis window(10'000);
  three_regions c(11, 250);
  std::vector<limit_spec> specs, per_ip;
  for (auto& l : c.limiters) {
    specs.push_back(l->compile("api", 0, limit_of(limit, 10s, "sliding_window", "global")));
    per_ip.push_back(l->compile("scan", 1, limit_of(100, 10s, "sliding_window", "global")));
  }
  std::map<int64_t, uint64_t> admitted;
  const millis start = window, until = window * 7;
  c.offer(
      start, until, 0.3, [](int n) { return n == 0   ? 0.6
                                            : n == 1 ? 0.3
                                                     : 0.1; }, specs,
      [&](int) { ++admitted[c.window_of(c.wall(), window)]; });
  uint64_t ip = 0;
  for (int node : {0, 1}) {
    auto* churn = c.loops_.emplace_back(std::make_unique<std::function<void()>>()).get();
    *churn = [&, node, churn] {
      if (c.sim.now() >= until) return;
      for (int i = 0; i < (node == 0 ? 4 : 2); ++i) {  // 4 (or 2) new keys every millisecond
        std::string addr = "10." + std::to_string(++ip);
        c.limiters[node]->check(rate_limiter::key_of(per_ip[node], addr), per_ip[node], c.wall(),
                                true);
      }
      c.sim.at(c.sim.now() + millis(1), *churn);
    };
    c.sim.at(start, *churn);
  }
  c.sim.run_until(until);
  std::vector<double> errors;
  const int64_t first = c.window_of(t0 + start.count(), window);
  for (int64_t w = first + 1; w < first + 6; ++w)
    errors.push_back(std::abs(static_cast<double>(admitted[w]) - limit) / limit);
  auto s0 = c.states[0]->stats();
  std::printf(
      "busy key under a churn of %llu keys: worst window error %.2f%%; node 0 sent %llu count "
      "updates, dropped %llu one-off keys from its backlog\n",
      static_cast<unsigned long long>(ip), sim::percentile(errors, 100) * 100,
      static_cast<unsigned long long>(s0.counter_updates_sent),
      static_cast<unsigned long long>(s0.counter_updates_dropped));
  EXPECT_LE(sim::percentile(errors, 100), 0.05);
  EXPECT_GT(s0.counter_updates_dropped, 0u) << "the churn outran the gossip: the backlog bound";
}

TEST(rate_limiter_sim, per_node_limits_overshoot_the_cluster_limit) {
  double split[3] = {0.6, 0.3, 0.1};
  auto [local, unused] = run_harness("local", split, nullptr, 20, 7);
  std::printf("local, 60/30/10: mean %.1f admitted per window (limit 1000)\n", local.mean_admitted);
  // 1,800, 900 and 300 offered per window: 1,000 + 900 + 300 admitted.
  EXPECT_GT(local.mean_admitted, 2000);
}

}  // namespace
}  // namespace meridian::node

namespace meridian::node {
namespace {

// Notes key as the stage does: its counter key is a hash of the value.
void note(key_tracker& t, size_t limit, const std::string& key, bool rejected, uint64_t window,
          int64_t now, bool redact = false) {
  t.note(limit, std::hash<std::string>{}(key), key, redact, rejected, window, now);
}

TEST(key_tracker, heavy_keys_stay_among_candidates_while_many_light_ones_pass) {
  key_tracker t;
  for (int round = 0; round < 50; ++round) {
    for (int i = 0; i < 5; ++i) note(t, 0, "heavy", false, 1, 1000);
    for (int i = 0; i < 10; ++i)
      note(t, 0, "light-" + std::to_string(round * 10 + i), false, 1, 1000);
  }
  auto c = t.candidates(0, 0);
  ASSERT_LE(c.size(), key_tracker::capacity);
  ASSERT_FALSE(c.empty());
  EXPECT_EQ(c.front().key, "heavy");
  EXPECT_EQ(c.front().hash, std::hash<std::string>{}("heavy"));
  EXPECT_GE(c.front().weight, 250u);
}

TEST(key_tracker, refusals_count_per_window_and_limits_are_apart) {
  key_tracker t;
  note(t, 0, "alice", true, 7, 1000);
  note(t, 0, "alice", true, 7, 1001);
  note(t, 1, "alice", false, 7, 1002);
  auto c = t.candidates(0, 0);
  ASSERT_EQ(c.size(), 1u);
  EXPECT_EQ(c[0].rejected, 2u);
  EXPECT_EQ(t.candidates(1, 0).at(0).rejected, 0u);
  note(t, 0, "alice", false, 8, 2000);  // a new window starts the refusals again
  EXPECT_EQ(t.candidates(0, 0).at(0).rejected, 0u);
  EXPECT_TRUE(t.candidates(0, 2001).empty()) << "entries not noted since are left out";
  EXPECT_TRUE(t.candidates(max_rate_limits_per_route, 0).empty());
}

TEST(key_tracker, long_values_are_cut_for_display_but_keep_their_counter_key) {
  key_tracker t;
  const std::string long_value(1000, 'x');
  note(t, 0, long_value, false, 1, 1000);
  note(t, 0, "Bearer secret-token", false, 1, 1000, /*redact=*/true);
  auto c = t.candidates(0, 0);
  ASSERT_EQ(c.size(), 2u);
  for (const auto& e : c) {
    if (e.hash == std::hash<std::string>{}(long_value)) {
      EXPECT_EQ(e.key.size(), key_tracker::max_key_bytes);
    } else {
      EXPECT_EQ(e.key.rfind("redacted:", 0), 0u) << e.key;
      EXPECT_EQ(e.key.find("secret"), std::string::npos);
    }
  }
}

TEST(rate_limiter, header_limits_on_credentials_are_marked_sensitive) {
  rate_limiter rl({.node_id = "a"}, nullptr);
  rate_limit_config c;
  c.limit = 5;
  c.key = "header:authorization";
  EXPECT_TRUE(rl.compile("r", 0, c).sensitive_key);
  c.key = "header:x-user";
  EXPECT_FALSE(rl.compile("r", 0, c).sensitive_key);
}

}  // namespace
}  // namespace meridian::node

namespace meridian::node {
namespace {

using test::utc_ms;

rate_limit_config month_quota(uint64_t limit, std::string timezone = "") {
  rate_limit_config c;
  c.limit = limit;
  c.window = std::chrono::hours(24 * 31);
  c.calendar_month = true;
  c.timezone = std::move(timezone);
  c.key = "consumer";
  return c;
}

TEST(rate_limiter, a_month_quota_resets_exactly_at_the_month_boundary) {
  rate_limiter rl({.node_id = "a"}, nullptr);
  auto spec = rl.compile("r", 0, month_quota(3));
  const uint64_t k = rate_limiter::key_of(spec, "acme");
  const int64_t late = utc_ms(2026, 1, 31, 23, 59, 58);
  int ok = 0;
  for (int i = 0; i < 5; ++i) ok += rl.check(k, spec, late, true).allowed;
  EXPECT_EQ(ok, 3);
  auto refused = rl.check(k, spec, utc_ms(2026, 1, 31, 23, 59, 59), true);
  EXPECT_FALSE(refused.allowed);
  EXPECT_EQ(refused.retry_after_s, 1u) << "until the 1st";
  EXPECT_EQ(rl.view(k, spec, late).count, 3u);
  EXPECT_EQ(rl.view(k, spec, late).window_ms, 31ULL * 86400 * 1000);
  // February: a fresh quota (no weight from January), and a 28-day window.
  const int64_t feb = utc_ms(2026, 2, 1);
  auto d = rl.check(k, spec, feb, true);
  EXPECT_TRUE(d.allowed);
  EXPECT_EQ(d.remaining, 2u);
  EXPECT_EQ(d.reset_s, 28u * 86400);
  EXPECT_EQ(rl.view(k, spec, feb).window_ms, 28ULL * 86400 * 1000);
  EXPECT_EQ(rl.view(k, spec, feb).count, 1u);
  EXPECT_EQ(spec.window_of(feb).start_ms, feb);
}

TEST(rate_limiter, a_month_quota_in_a_time_zone_resets_at_local_midnight) {
  rate_limiter rl({.node_id = "a"}, nullptr);
  auto spec = rl.compile("r", 0, month_quota(1, "+09:00"));
  const uint64_t k = rate_limiter::key_of(spec, "acme");
  EXPECT_TRUE(rl.check(k, spec, utc_ms(2026, 1, 31, 14, 59), true).allowed);
  EXPECT_FALSE(rl.check(k, spec, utc_ms(2026, 1, 31, 14, 59, 59), true).allowed);
  EXPECT_TRUE(rl.check(k, spec, utc_ms(2026, 1, 31, 15, 0), true).allowed) << "1 February in Tokyo";
  EXPECT_NE(spec.seed, rl.compile("r", 0, month_quota(1)).seed) << "zones count apart";
}

}  // namespace
}  // namespace meridian::node
