#pragma once
// Operational counters of one node, rendered in Prometheus text format by the admin API.
//
// Hot-path counters are per worker (one writer each, relaxed atomics, no sharing of cache lines
// between workers); the admin thread sums them when rendering. Objects handed out by the
// registry live as long as the registry, so data-path code keeps plain pointers to them.

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

namespace meridian::node {

// A counter written by a single thread and read by any: increments are a plain load and store.
struct counter {
  std::atomic<uint64_t> value{0};
  void add(uint64_t n = 1) {
    value.store(value.load(std::memory_order_relaxed) + n, std::memory_order_relaxed);
  }
  uint64_t get() const { return value.load(std::memory_order_relaxed); }
};

// Latency buckets in microseconds (upper bounds); the last bucket is +Inf.
inline constexpr std::array<uint64_t, 14> latency_bounds_us = {
    500,    1000,   2500,   5000,    10000,   25000,   50000,
    100000, 250000, 500000, 1000000, 2500000, 5000000, 10000000};

// Status codes that get their own series; others are counted per class ("1xx".."5xx").
inline constexpr std::array<int, 28> tracked_status_codes = {
    200, 201, 202, 204, 206, 301, 302, 303, 304, 307, 308, 400, 401, 403,
    404, 405, 408, 413, 414, 429, 431, 499, 500, 501, 502, 503, 504, 505};

// Returns the slot of code in route_stats::status: tracked codes first, then one per class.
size_t status_slot(int code);

// Requests through one route, as seen by one worker.
struct alignas(64) route_stats {
  std::array<counter, tracked_status_codes.size() + 5> status;
  std::array<counter, latency_bounds_us.size() + 1> latency;  // non-cumulative; +Inf last
  counter latency_sum_us;
  counter request_bytes;
  counter response_bytes;
  std::array<counter, 17> grpc_status;  // gRPC calls by grpc-status (0 OK .. 16 UNAUTHENTICATED)

  void record(int code, uint64_t latency_us) {
    status[status_slot(code)].add();
    size_t b = 0;
    while (b < latency_bounds_us.size() && latency_us > latency_bounds_us[b]) ++b;
    latency[b].add();
    latency_sum_us.add(latency_us);
  }
};

// Per-route metrics: one route_stats per worker.
struct route_metrics {
  explicit route_metrics(std::string route_name, unsigned workers)
      : name(std::move(route_name)), per_worker(workers) {}
  std::string name;
  std::vector<route_stats> per_worker;
};

// Node-wide counters per worker (connections, rejects, upstream events).
struct alignas(64) worker_stats {
  counter connections_accepted;
  counter connections_rejected;  // over max_connections
  counter tls_handshake_failures;
  std::atomic<int64_t> connections_active{0};
  counter requests_total;
  counter bad_requests;     // malformed, smuggling attempts: answered 4xx/501 or closed
  counter header_timeouts;  // slowloris defence fired
  counter idle_timeouts;
  counter no_route;  // 404 from the router
  counter upstream_connect_failures;
  counter upstream_timeouts;
  counter upstream_resets;        // connection broke before a full response
  counter upstream_malformed;     // responses refused as malformed (502)
  counter upstream_tls_failures;  // TLS handshakes with targets that failed (or no h2 by ALPN)
  counter upstream_connections_opened;
  counter upstream_connections_reused;
  counter retries;
  counter retries_budget_exhausted;
  counter ejections;
  counter upstream_overflows;  // refused: max_connections_per_target reached
  counter fallbacks;           // answered with a route's static fallback
  counter websocket_upgrades;  // tunnels opened (the upstream answered 101)
  counter websocket_refused;   // upgrades refused: max_websocket_tunnels reached
  counter websocket_bytes_to_upstream;
  counter websocket_bytes_to_client;
  std::atomic<int64_t> websocket_tunnels{0};  // open now
  counter http2_connections;                  // client connections that speak HTTP/2
  counter http2_streams;                      // streams (requests) they opened
  counter http2_rapid_resets;                 // cut off: reset_burst / resets_per_second
  counter http2_control_floods;               // cut off: control-frame limits
  counter http2_continuation_floods;          // cut off: max_continuations
  counter http2_protocol_errors;              // cut off: a protocol error (GOAWAY from nghttp2)
  std::atomic<int64_t> http2_streams_open{0};
};

// Per-target gauges, shared by all workers.
struct target_metrics {
  std::string upstream;
  std::string address;
  std::atomic<int64_t> active_requests{0};
  std::atomic<int64_t> pool_idle{0};
  std::atomic<int64_t> pool_open{0};
  std::atomic<int> healthy{1};  // active health check verdict
  std::atomic<int> ejected{0};  // passive outlier ejection
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> failures{0};
};

class metrics_registry {
 public:
  explicit metrics_registry(unsigned workers);

  unsigned workers() const { return static_cast<unsigned>(workers_.size()); }
  worker_stats& worker(unsigned index) { return *workers_[index]; }

  // Returns the metrics of a route, creating them on first use. Thread-safe.
  route_metrics* route(const std::string& name);
  // Returns the gauges of an upstream target, creating them on first use. Thread-safe.
  target_metrics* target(const std::string& upstream, const std::string& address);

  // Renders every metric in Prometheus text exposition format 0.0.4.
  std::string render_prometheus() const;

 private:
  std::vector<std::unique_ptr<worker_stats>> workers_;
  mutable std::mutex mutex_;
  std::unordered_map<std::string, std::unique_ptr<route_metrics>> routes_;  // by name
  std::map<std::string, std::unique_ptr<target_metrics>> targets_;
};

}  // namespace meridian::node
