// Rate-limit decisions on one core with 1 M distinct keys (issue 5: >= 5 M decisions/s, median
// <= 100 ns). Keys are visited in a random order, so nearly every decision misses the CPU caches,
// as a flood of client addresses would. Each iteration is one decision that counts the request.
//
//   build/bin/rate_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true

#include <benchmark/benchmark.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "meridian/cluster/hlc.h"
#include "meridian/cluster/replicated_state.h"
#include "meridian/traffic/rate_limiter.h"

namespace {

using meridian::node::rate_limit_config;
using meridian::node::rate_limiter;

constexpr size_t keys = 1 << 20;
constexpr int64_t now_ms = meridian::cluster::hlc_epoch_unix_ms + 1'000'000'000;

rate_limit_config config(const char* scope) {
  rate_limit_config c;
  c.limit = 1'000'000'000;  // never refuses: every decision takes the full path, counting
  c.window = std::chrono::minutes(1);
  c.key = "ip";
  c.scope = scope;
  return c;
}

std::vector<uint64_t> shuffled_keys(const meridian::node::limit_spec& spec) {
  std::vector<uint64_t> out;
  out.reserve(keys);
  for (size_t i = 0; i < keys; ++i)
    out.push_back(rate_limiter::key_of(spec, "10." + std::to_string(i >> 16) + "." +
                                                 std::to_string((i >> 8) & 255) + "." +
                                                 std::to_string(i & 255)));
  std::shuffle(out.begin(), out.end(), std::mt19937_64(1));
  return out;
}

// A node's decision with its key already hashed (the proxy hashes once per request).
void BM_rate_decision_1M_keys_local(benchmark::State& state) {
  rate_limiter rl({.node_id = "a", .region = "eu-west", .max_keys = 2 * keys}, nullptr);
  auto cfg = rl.compile("api", 0, config("local"));
  auto ks = shuffled_keys(cfg);
  for (uint64_t k : ks) rl.check(k, cfg, now_ms, true);  // every key present
  size_t i = 0;
  for (auto _ : state) {
    auto d = rl.check(ks[i++ & (keys - 1)], cfg, now_ms, true);
    benchmark::DoNotOptimize(d);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_rate_decision_1M_keys_local);

// The same with the replicated state attached (scope global): admissions are also queued for
// the next sync round, which flushes them into the replicated counters every 1,000 decisions'
// worth of keys here, as the gossip thread would.
void BM_rate_decision_1M_keys_global(benchmark::State& state) {
  meridian::cluster::replicated_state st(
      {.self_id = "a"}, [] { return now_ms; }, nullptr);
  rate_limiter rl({.node_id = "a", .region = "eu-west", .max_keys = 2 * keys}, &st);
  auto cfg = rl.compile("api", 0, config("global"));
  auto ks = shuffled_keys(cfg);
  for (uint64_t k : ks) rl.check(k, cfg, now_ms, true);
  rl.flush();
  size_t i = 0;
  for (auto _ : state) {
    auto d = rl.check(ks[i++ & (keys - 1)], cfg, now_ms, true);
    benchmark::DoNotOptimize(d);
    if ((i & 0xffff) == 0) {
      state.PauseTiming();  // the flush runs on the gossip thread, not the request path
      rl.flush();
      state.ResumeTiming();
    }
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_rate_decision_1M_keys_global);

// Hashing the key as well: route, limit and the client address.
void BM_rate_key_and_decision(benchmark::State& state) {
  rate_limiter rl({.node_id = "a", .region = "eu-west", .max_keys = 2 * keys}, nullptr);
  auto cfg = rl.compile("api", 0, config("local"));
  std::vector<std::string> ips;
  for (size_t i = 0; i < 4096; ++i)
    ips.push_back("192.168." + std::to_string(i >> 8) + "." + std::to_string(i & 255));
  size_t i = 0;
  for (auto _ : state) {
    uint64_t k = rate_limiter::key_of(cfg, ips[i++ & 4095]);
    auto d = rl.check(k, cfg, now_ms, true);
    benchmark::DoNotOptimize(d);
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_rate_key_and_decision);

// Resident memory in bytes (from /proc/self/statm).
double rss_bytes() {
  long pages = 0, resident = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return static_cast<double>(resident) * 4096.0;
}

// A flood of 10 M distinct keys (random client addresses, each seen once) through a node with
// the replicated state attached and both caps at 1 M keys: memory must level off at the caps.
void BM_rate_flood_10M_distinct_keys(benchmark::State& state) {
  for (auto _ : state) {
    double before = rss_bytes();
    meridian::cluster::state_options so;
    so.self_id = "a";
    so.max_counter_keys = 1 << 20;
    meridian::cluster::replicated_state st(
        so, [] { return now_ms; }, nullptr);
    rate_limiter rl({.node_id = "a", .region = "eu-west", .max_keys = 1 << 20}, &st);
    auto cfg = rl.compile("api", 0, config("global"));
    std::mt19937_64 rng(7);
    double peak = 0;
    for (uint64_t i = 0; i < 10'000'000; ++i) {
      rl.check(rng() | 1, cfg, now_ms, true);
      if ((i & 0xffff) == 0) {
        rl.flush();  // as the gossip thread's delta rounds would
        st.take_deltas(meridian::cluster::millis(static_cast<int64_t>(i)));
        peak = std::max(peak, rss_bytes() - before);
      }
    }
    state.counters["rss_growth_MiB"] = peak / (1 << 20);
    state.counters["table_keys"] = static_cast<double>(rl.size());
    state.counters["replicated_keys"] = static_cast<double>(st.stats().counters);
  }
}
BENCHMARK(BM_rate_flood_10M_distinct_keys)->Iterations(1)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
