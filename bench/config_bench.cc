// What a cluster config change costs the applier at 10,000 routes: composing the documents
// (parsed ones reused from the document_cache) and building the snapshot the data plane serves.
// A bulk load through the admin API pays both for every batch of changes
// (bench/config_propagation.py --bulk), so these two bound how fast routes can be loaded.
//
//   build/bin/config_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true

#include <cstdlib>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "meridian/common/metrics.h"
#include "meridian/config/config.h"
#include "meridian/proxy/snapshot.h"

namespace {

using namespace meridian::node;

constexpr int route_count = 10000;

config base_config() {
  auto parsed = parse_config(
      "node: {id: n0, region: eu-west}\n"
      "listen: {proxy: 127.0.0.1:0, admin: 127.0.0.1:0}\n",
      "bench.yaml");
  if (!parsed.value) std::abort();
  return *parsed.value;
}

// The documents of a bulk load: one upstream and 10,000 routes like the admin benchmark's.
std::vector<config_document> documents() {
  std::vector<config_document> docs;
  docs.push_back({document_kind::upstream, "backend",
                  R"({"name":"backend","targets":[{"address":"127.0.0.1:9"}]})"});
  for (int i = 0; i < route_count; ++i) {
    std::string name = "b" + std::to_string(i);
    docs.push_back(
        {document_kind::route, name,
         R"({"match":{"path_prefix":"/b)" + std::to_string(i) + R"("},"name":")" + name +
             R"(","request_headers":{"add":{"x-gateway":"meridian"}},"upstream":"backend"})"});
  }
  return docs;
}

// A change to one route among 10,000, composed with the others cached.
void BM_compose_10k_one_changed(benchmark::State& state) {
  config base = base_config();
  auto docs = documents();
  document_cache cache;
  compose_config(base, docs, false, &cache);
  int n = 0;
  for (auto _ : state) {
    docs[1 + n % route_count].body[0] = ' ';  // a new body: parsed again
    docs[1 + (n + 1) % route_count].body[0] = '{';
    ++n;
    auto composed = compose_config(base, docs, false, &cache);
    benchmark::DoNotOptimize(composed.cfg.routes.data());
  }
}

// The snapshot of 10,000 routes built from a composed config.
void BM_snapshot_10k(benchmark::State& state) {
  config base = base_config();
  document_cache cache;
  config cfg = compose_config(base, documents(), false, &cache).cfg;
  metrics_registry metrics(1);
  target_registry targets(metrics);
  uint64_t version = 0;
  for (auto _ : state) {
    std::string error;
    auto snap = build_snapshot(cfg, ++version, 1, targets, metrics, &error);
    if (!snap) state.SkipWithError(error.c_str());
    benchmark::DoNotOptimize(snap.get());
  }
}

// CONFIG_BENCH_ITERATIONS=N runs each benchmark exactly N times, for instruction counts:
//   valgrind --tool=callgrind --toggle-collect='meridian::node::build_snapshot*' ...
// at N=1 and N=3; half the difference is one steady-state build.
void fixed_iterations(benchmark::internal::Benchmark* b) {
  if (const char* n = std::getenv("CONFIG_BENCH_ITERATIONS")) b->Iterations(std::atoi(n));
}

BENCHMARK(BM_compose_10k_one_changed)->Unit(benchmark::kMillisecond)->Apply(fixed_iterations);
BENCHMARK(BM_snapshot_10k)->Unit(benchmark::kMillisecond)->Apply(fixed_iterations);

}  // namespace

BENCHMARK_MAIN();
