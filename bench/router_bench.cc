// Route matching cost with a 10,000-route table (target: median at most 1 us per match).
//
// The table mixes what a large gateway carries: per-service prefixes three levels deep, exact
// health endpoints, prefixes guarded by host/method/header conditions, static-asset prefixes, a
// few dozen regexes and a handful of virtual-host catch-alls. Each benchmark iteration is one
// match() call, so the reported time is the time per match.
//
//   build/bin/router_bench --benchmark_repetitions=5 --benchmark_report_aggregates_only=true

#include <array>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include <benchmark/benchmark.h>

#include "meridian/config/config.h"
#include "meridian/traffic/router.h"

namespace {

using meridian::node::header_view;
using meridian::node::request_view;
using meridian::node::route_config;
using meridian::node::router;

constexpr int services = 2000;

route_config make_route(std::string name) {
  route_config r;
  r.name = std::move(name);
  r.upstream = "svc";
  return r;
}

std::vector<route_config> make_table() {
  std::vector<route_config> routes;
  routes.reserve(10000);
  // 6,000 plain prefixes, three levels per service.
  for (int i = 0; i < services; ++i) {
    std::string base = "/api/svc" + std::to_string(i);
    for (const char* tail : {"/", "/v1/", "/v1/users/"}) {
      route_config r = make_route("svc" + std::to_string(i) + tail);
      r.match.path_prefix = base + tail;
      routes.push_back(std::move(r));
    }
  }
  // 2,000 exact health endpoints.
  for (int i = 0; i < services; ++i) {
    route_config r = make_route("health" + std::to_string(i));
    r.match.path = "/api/svc" + std::to_string(i) + "/health";
    routes.push_back(std::move(r));
  }
  // 1,000 prefixes with host, method and header conditions.
  for (int i = 0; i < 1000; ++i) {
    route_config r = make_route("cond" + std::to_string(i));
    r.match.path_prefix = "/api/svc" + std::to_string(i) + "/v2/";
    switch (i % 3) {
      case 0:
        r.match.host = "tenant" + std::to_string(i % 50) + ".example.com";
        break;
      case 1:
        r.match.host = "*.eu.example.com";
        r.match.methods = {"GET", "POST"};
        break;
      default:
        r.match.headers = {{"x-tenant", "acme" + std::to_string(i % 10)}};
        r.match.methods = {"POST"};
        break;
    }
    routes.push_back(std::move(r));
  }
  // 950 static asset prefixes.
  for (int i = 0; i < 950; ++i) {
    route_config r = make_route("static" + std::to_string(i));
    r.match.path_prefix = "/static/app" + std::to_string(i) + "/";
    routes.push_back(std::move(r));
  }
  // 40 regexes: 38 with a literal prefix, 2 that every unmatched path has to try.
  for (int i = 0; i < 38; ++i) {
    route_config r = make_route("re" + std::to_string(i));
    r.match.path_regex = "/re" + std::to_string(i) + "/v[0-9]+/items/[0-9]+(/.*)?";
    routes.push_back(std::move(r));
  }
  {
    route_config r = make_route("php_probe");
    r.match.path_regex = R"(/.*\.(php|asp))";
    routes.push_back(std::move(r));
    route_config s = make_route("dotfiles");
    s.match.path_regex = R"(/(.*/)?\.[a-z]+)";
    routes.push_back(std::move(s));
  }
  // 10 virtual-host catch-alls without a path condition.
  for (int i = 0; i < 10; ++i) {
    route_config r = make_route("vhost" + std::to_string(i));
    r.match.host = "legacy" + std::to_string(i) + ".example.com";
    routes.push_back(std::move(r));
  }
  return routes;
}

const router& table() {
  static const std::unique_ptr<router> instance = [] {
    std::string error;
    auto r = router::build(make_table(), &error);
    if (r == nullptr) {
      std::cerr << "router_bench: build failed: " << error << "\n";
      std::abort();
    }
    return r;
  }();
  return *instance;
}

// An owned request; the view borrows from it.
struct sample {
  std::string method = "GET";
  std::string host = "api.example.com";
  std::string path;
  std::string query;
  std::vector<std::pair<std::string, std::string>> headers = {
      {"user-agent", "curl/8.0"}, {"accept", "*/*"}, {"x-request-id", "0f3a9c"}};
  std::vector<header_view> header_views;

  request_view view() {
    header_views.clear();
    for (const auto& [name, value] : headers) header_views.push_back({name, value});
    return request_view{method, host, path, query, header_views};
  }
};

sample deep_prefix_hit(int service) {
  sample s;
  s.path = "/api/svc" + std::to_string(service) + "/v1/users/42/orders/17";
  s.query = "limit=10&cursor=abc";
  return s;
}

sample exact_hit(int service) {
  sample s;
  s.path = "/api/svc" + std::to_string(service) + "/health";
  return s;
}

// A v2 path under a conditional prefix; the condition holds for service % 3 == 0 only when the
// host is tenantN, otherwise the match falls back to the service's plain prefix.
sample conditional(int service, bool satisfy) {
  sample s;
  s.path = "/api/svc" + std::to_string(service) + "/v2/things/9";
  if (satisfy) {
    switch (service % 3) {
      case 0:
        s.host = "tenant" + std::to_string(service % 50) + ".example.com";
        break;
      case 1:
        s.host = "shop.eu.example.com";
        break;
      default:
        s.method = "POST";
        s.headers.emplace_back("X-Tenant", "acme" + std::to_string(service % 10));
        break;
    }
  }
  return s;
}

sample regex_hit(int i) {
  sample s;
  s.path = "/re" + std::to_string(i % 38) + "/v2/items/12345";
  return s;
}

sample miss(int i) {
  sample s;
  static const std::array<const char*, 4> paths = {"/api/svc99999/x", "/nothing/here",
                                                   "/static/other/app.js", "/favicon.ico"};
  s.path = paths[static_cast<size_t>(i) % paths.size()];
  return s;
}

void run(benchmark::State& state, std::vector<sample>& samples, bool expect_match) {
  const router& r = table();
  std::vector<request_view> views;
  for (auto& s : samples) views.push_back(s.view());
  for (const auto& v : views) {
    if ((r.match(v) >= 0) != expect_match) {
      state.SkipWithError("a sample did not match as the scenario expects");
      return;
    }
  }
  size_t i = 0;
  for (auto _ : state) {
    int found = r.match(views[i]);
    benchmark::DoNotOptimize(found);
    if (++i == views.size()) i = 0;
  }
  state.counters["matches/s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

template <typename Make>
std::vector<sample> samples_of(Make make, int count = 512) {
  std::vector<sample> out;
  std::mt19937 rng(42);
  for (int i = 0; i < count; ++i) out.push_back(make(static_cast<int>(rng() % 1000)));
  return out;
}

void BM_match_deep_prefix_hit(benchmark::State& state) {
  auto samples = samples_of(deep_prefix_hit);
  run(state, samples, true);
}

void BM_match_exact_hit(benchmark::State& state) {
  auto samples = samples_of(exact_hit);
  run(state, samples, true);
}

void BM_match_conditional_hit(benchmark::State& state) {
  auto samples = samples_of([](int i) { return conditional(i, true); });
  run(state, samples, true);
}

void BM_match_conditional_falls_back(benchmark::State& state) {
  auto samples = samples_of([](int i) { return conditional(i, false); });
  run(state, samples, true);
}

void BM_match_regex_hit(benchmark::State& state) {
  auto samples = samples_of(regex_hit);
  run(state, samples, true);
}

void BM_match_miss(benchmark::State& state) {
  auto samples = samples_of(miss);
  run(state, samples, false);
}

// A realistic blend: 70% deep prefix hits, 10% exact, 10% conditional, 5% regex, 5% misses.
void BM_match_mixed(benchmark::State& state) {
  std::mt19937 rng(7);
  std::vector<sample> samples;
  for (int i = 0; i < 1024; ++i) {
    int service = static_cast<int>(rng() % 1000);
    int roll = static_cast<int>(rng() % 100);
    if (roll < 70) {
      samples.push_back(deep_prefix_hit(service));
    } else if (roll < 80) {
      samples.push_back(exact_hit(service));
    } else if (roll < 90) {
      samples.push_back(conditional(service, roll % 2 == 0));
    } else if (roll < 95) {
      samples.push_back(regex_hit(service));
    } else {
      samples.push_back(deep_prefix_hit(service + 100000));  // unknown service: a miss
    }
  }
  const router& r = table();
  std::vector<request_view> views;
  for (auto& s : samples) views.push_back(s.view());
  size_t i = 0;
  for (auto _ : state) {
    int found = r.match(views[i]);
    benchmark::DoNotOptimize(found);
    if (++i == views.size()) i = 0;
  }
  state.counters["matches/s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

void BM_build_10k_routes(benchmark::State& state) {
  std::vector<route_config> routes = make_table();
  for (auto _ : state) {
    std::string error;
    auto r = router::build(routes, &error);
    benchmark::DoNotOptimize(r.get());
  }
}

BENCHMARK(BM_match_deep_prefix_hit);
BENCHMARK(BM_match_exact_hit);
BENCHMARK(BM_match_conditional_hit);
BENCHMARK(BM_match_conditional_falls_back);
BENCHMARK(BM_match_regex_hit);
BENCHMARK(BM_match_miss);
BENCHMARK(BM_match_mixed);
BENCHMARK(BM_build_10k_routes)->Unit(benchmark::kMillisecond);

}  // namespace

BENCHMARK_MAIN();
