#include "meridian/common/metrics.h"

#include <algorithm>
#include <initializer_list>
#include <string_view>
#include <tuple>
#include <utility>

namespace meridian::node {

static_assert(std::is_sorted(tracked_status_codes.begin(), tracked_status_codes.end()),
              "status_slot() binary-searches tracked_status_codes");

size_t status_slot(int code) {
  auto it = std::lower_bound(tracked_status_codes.begin(), tracked_status_codes.end(), code);
  if (it != tracked_status_codes.end() && *it == code) {
    return static_cast<size_t>(it - tracked_status_codes.begin());
  }
  // Codes outside 100..599 (a broken upstream may send anything) land in the nearest class.
  int cls = std::clamp(code / 100 - 1, 0, 4);
  return tracked_status_codes.size() + static_cast<size_t>(cls);
}

metrics_registry::metrics_registry(unsigned workers) {
  workers_.reserve(workers);
  for (unsigned i = 0; i < workers; ++i) workers_.push_back(std::make_unique<worker_stats>());
}

route_metrics* metrics_registry::route(const std::string& name) {
  std::lock_guard lock(mutex_);
  auto& slot = routes_[name];
  if (!slot) slot = std::make_unique<route_metrics>(name, workers());
  return slot.get();
}

target_metrics* metrics_registry::target(const std::string& upstream, const std::string& address) {
  std::lock_guard lock(mutex_);
  auto& slot = targets_[upstream + "/" + address];
  if (!slot) {
    slot = std::make_unique<target_metrics>();
    slot->upstream = upstream;
    slot->address = address;
  }
  return slot.get();
}

namespace {

// Appends value escaped as a Prometheus label value (text format 0.0.4).
void append_escaped(std::string& out, std::string_view value) {
  for (char c : value) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
}

// Formats a microsecond count as exact decimal seconds ("0.0005", "2.5", "10").
std::string seconds_from_us(uint64_t us) {
  std::string text = std::to_string(us / 1000000);
  uint64_t frac = us % 1000000;
  if (frac != 0) {
    std::string digits = std::to_string(frac);
    digits.insert(0, 6 - digits.size(), '0');
    while (digits.back() == '0') digits.pop_back();
    text += '.';
    text += digits;
  }
  return text;
}

std::string status_label(size_t slot) {
  if (slot < tracked_status_codes.size()) return std::to_string(tracked_status_codes[slot]);
  return std::to_string(slot - tracked_status_codes.size() + 1) + "xx";
}

using label = std::pair<std::string_view, std::string_view>;

// Builds one exposition file; each metric family is written header first, then its samples.
class exposition {
 public:
  void family(std::string_view name, std::string_view type, std::string_view help) {
    out_ += "# HELP ";
    out_ += name;
    out_ += ' ';
    out_ += help;
    out_ += "\n# TYPE ";
    out_ += name;
    out_ += ' ';
    out_ += type;
    out_ += '\n';
  }

  void sample(std::string_view name, std::initializer_list<label> labels, std::string_view value) {
    out_ += name;
    if (labels.size() != 0) {
      out_ += '{';
      bool first = true;
      for (const auto& [key, val] : labels) {
        if (!first) out_ += ',';
        first = false;
        out_ += key;
        out_ += "=\"";
        append_escaped(out_, val);
        out_ += '"';
      }
      out_ += '}';
    }
    out_ += ' ';
    out_ += value;
    out_ += '\n';
  }

  template <typename Int>
  void sample(std::string_view name, std::initializer_list<label> labels, Int value) {
    sample(name, labels, std::string_view(std::to_string(value)));
  }

  std::string take() { return std::move(out_); }

 private:
  std::string out_;
};

struct worker_counter {
  const char* name;  // without the meridian_ prefix and _total suffix
  const char* help;
  counter worker_stats::*member;
};

constexpr worker_counter worker_counters[] = {
    {"connections_accepted", "Client connections accepted.", &worker_stats::connections_accepted},
    {"connections_rejected", "Client connections closed at once because of max_connections.",
     &worker_stats::connections_rejected},
    {"tls_handshake_failures", "TLS client handshakes that failed or timed out.",
     &worker_stats::tls_handshake_failures},
    {"requests", "Client requests parsed, whatever their outcome.", &worker_stats::requests_total},
    {"bad_requests", "Malformed or refused client requests (answered 4xx/501 or closed).",
     &worker_stats::bad_requests},
    {"header_timeouts", "Client connections closed because the request head was too slow.",
     &worker_stats::header_timeouts},
    {"idle_timeouts", "Keep-alive client connections closed for idleness.",
     &worker_stats::idle_timeouts},
    {"no_route", "Requests answered 404 because no route matched.", &worker_stats::no_route},
    {"upstream_connect_failures", "Failed connection attempts to upstream targets.",
     &worker_stats::upstream_connect_failures},
    {"upstream_timeouts", "Upstream requests that timed out.", &worker_stats::upstream_timeouts},
    {"upstream_resets", "Upstream connections that broke before a full response.",
     &worker_stats::upstream_resets},
    {"upstream_tls_failures",
     "TLS handshakes with upstream targets that failed (verification, or no h2 by ALPN).",
     &worker_stats::upstream_tls_failures},
    {"upstream_malformed_responses",
     "Upstream responses refused as malformed (bad framing, control characters, an unasked 101).",
     &worker_stats::upstream_malformed},
    {"upstream_connections_opened", "Upstream connections opened.",
     &worker_stats::upstream_connections_opened},
    {"upstream_connections_reused", "Upstream requests sent on a pooled connection.",
     &worker_stats::upstream_connections_reused},
    {"retries", "Upstream request retries.", &worker_stats::retries},
    {"retries_budget_exhausted", "Retries skipped because the retry budget was spent.",
     &worker_stats::retries_budget_exhausted},
    {"ejections", "Upstream targets ejected by passive outlier detection.",
     &worker_stats::ejections},
    {"fallbacks", "Requests answered with a route's static fallback response.",
     &worker_stats::fallbacks},
    {"upstream_overflows", "Requests refused because max_connections_per_target was reached.",
     &worker_stats::upstream_overflows},
    {"websocket_upgrades", "WebSocket tunnels opened (the upstream answered 101).",
     &worker_stats::websocket_upgrades},
    {"websocket_refused", "WebSocket upgrades refused because max_websocket_tunnels was reached.",
     &worker_stats::websocket_refused},
    {"websocket_bytes_to_upstream", "Bytes relayed from clients to upstreams through tunnels.",
     &worker_stats::websocket_bytes_to_upstream},
    {"websocket_bytes_to_client", "Bytes relayed from upstreams to clients through tunnels.",
     &worker_stats::websocket_bytes_to_client},
    {"http2_connections", "Client connections that speak HTTP/2 (h2 by ALPN, or h2c).",
     &worker_stats::http2_connections},
    {"http2_streams", "HTTP/2 streams clients opened.", &worker_stats::http2_streams},
    {"http2_rapid_resets",
     "HTTP/2 connections cut off for resetting streams too fast (CVE-2023-44487).",
     &worker_stats::http2_rapid_resets},
    {"http2_control_floods",
     "HTTP/2 connections cut off for a flood of SETTINGS, PING, PRIORITY or empty frames.",
     &worker_stats::http2_control_floods},
    {"http2_continuation_floods",
     "HTTP/2 connections cut off for too many CONTINUATION frames in one header block.",
     &worker_stats::http2_continuation_floods},
    {"http2_protocol_errors", "HTTP/2 connections cut off for a protocol error.",
     &worker_stats::http2_protocol_errors},
};

}  // namespace

std::string metrics_registry::render_prometheus() const {
  // Holding the lock for the whole render keeps the maps stable; it only blocks the creation of
  // new routes and targets, which is rare.
  std::lock_guard lock(mutex_);
  exposition out;
  // Routes by name, so that the exposition is in a stable order.
  std::vector<std::pair<std::string_view, const route_metrics*>> by_name;
  by_name.reserve(routes_.size());
  for (const auto& [name, route] : routes_) by_name.emplace_back(name, route.get());
  std::sort(by_name.begin(), by_name.end());

  out.family("meridian_http_requests_total", "counter",
             "Requests answered through a route, by status code or class.");
  for (const auto& [name, route] : by_name) {
    for (size_t slot = 0; slot < std::tuple_size_v<decltype(route_stats::status)>; ++slot) {
      uint64_t total = 0;
      for (const auto& stats : route->per_worker) total += stats.status[slot].get();
      if (total == 0) continue;
      std::string code = status_label(slot);
      out.sample("meridian_http_requests_total", {{"route", name}, {"code", code}}, total);
    }
  }

  out.family("meridian_grpc_responses_total", "counter",
             "gRPC calls answered through a route, by grpc-status.");
  for (const auto& [name, route] : by_name) {
    for (size_t code = 0; code < std::tuple_size_v<decltype(route_stats::grpc_status)>; ++code) {
      uint64_t total = 0;
      for (const auto& stats : route->per_worker) total += stats.grpc_status[code].get();
      if (total == 0) continue;
      out.sample("meridian_grpc_responses_total",
                 {{"route", name}, {"grpc_status", std::to_string(code)}}, total);
    }
  }

  out.family("meridian_http_request_duration_seconds", "histogram",
             "Time from the request head to the end of the response, by route.");
  for (const auto& [name, route] : by_name) {
    // The count is taken from the same bucket snapshot so that +Inf and _count always agree.
    std::array<uint64_t, latency_bounds_us.size() + 1> buckets{};
    uint64_t sum_us = 0;
    for (const auto& stats : route->per_worker) {
      for (size_t b = 0; b < buckets.size(); ++b) buckets[b] += stats.latency[b].get();
      sum_us += stats.latency_sum_us.get();
    }
    uint64_t cumulative = 0;
    for (size_t b = 0; b < buckets.size(); ++b) {
      cumulative += buckets[b];
      std::string le =
          b < latency_bounds_us.size() ? seconds_from_us(latency_bounds_us[b]) : "+Inf";
      out.sample("meridian_http_request_duration_seconds_bucket", {{"route", name}, {"le", le}},
                 cumulative);
    }
    out.sample("meridian_http_request_duration_seconds_sum", {{"route", name}},
               std::string_view(seconds_from_us(sum_us)));
    out.sample("meridian_http_request_duration_seconds_count", {{"route", name}}, cumulative);
  }

  out.family("meridian_http_request_bytes_total", "counter",
             "Request body bytes received from clients, by route.");
  for (const auto& [name, route] : by_name) {
    uint64_t total = 0;
    for (const auto& stats : route->per_worker) total += stats.request_bytes.get();
    out.sample("meridian_http_request_bytes_total", {{"route", name}}, total);
  }

  out.family("meridian_http_response_bytes_total", "counter",
             "Response body bytes sent to clients, by route.");
  for (const auto& [name, route] : by_name) {
    uint64_t total = 0;
    for (const auto& stats : route->per_worker) total += stats.response_bytes.get();
    out.sample("meridian_http_response_bytes_total", {{"route", name}}, total);
  }

  for (const auto& wc : worker_counters) {
    std::string name = std::string("meridian_") + wc.name + "_total";
    uint64_t total = 0;
    for (const auto& w : workers_) total += ((*w).*(wc.member)).get();
    out.family(name, "counter", wc.help);
    out.sample(name, {}, total);
  }

  out.family("meridian_connections_active", "gauge", "Open client connections.");
  int64_t active = 0;
  for (const auto& w : workers_) active += w->connections_active.load(std::memory_order_relaxed);
  out.sample("meridian_connections_active", {}, active);
  out.family("meridian_websocket_tunnels_open", "gauge", "Open WebSocket tunnels.");
  int64_t tunnels = 0;
  for (const auto& w : workers_) tunnels += w->websocket_tunnels.load(std::memory_order_relaxed);
  out.sample("meridian_websocket_tunnels_open", {}, tunnels);
  out.family("meridian_http2_streams_open", "gauge", "Open HTTP/2 client streams.");
  int64_t streams = 0;
  for (const auto& w : workers_) streams += w->http2_streams_open.load(std::memory_order_relaxed);
  out.sample("meridian_http2_streams_open", {}, streams);

  struct target_family {
    const char* name;
    const char* type;
    const char* help;
    int64_t (*read)(const target_metrics&);
  };
  static constexpr target_family target_families[] = {
      {"meridian_upstream_active_requests", "gauge", "Requests in flight to an upstream target.",
       [](const target_metrics& t) -> int64_t { return t.active_requests.load(); }},
      {"meridian_upstream_pool_idle_connections", "gauge",
       "Idle pooled connections to an upstream target.",
       [](const target_metrics& t) -> int64_t { return t.pool_idle.load(); }},
      {"meridian_upstream_pool_open_connections", "gauge",
       "Open connections to an upstream target.",
       [](const target_metrics& t) -> int64_t { return t.pool_open.load(); }},
      {"meridian_upstream_healthy", "gauge",
       "1 when active health checks consider the target healthy, else 0.",
       [](const target_metrics& t) -> int64_t { return t.healthy.load() != 0 ? 1 : 0; }},
      {"meridian_upstream_ejected", "gauge",
       "1 when passive outlier detection has ejected the target, else 0.",
       [](const target_metrics& t) -> int64_t { return t.ejected.load() != 0 ? 1 : 0; }},
      {"meridian_upstream_requests_total", "counter", "Requests sent to an upstream target.",
       [](const target_metrics& t) -> int64_t { return static_cast<int64_t>(t.requests.load()); }},
      {"meridian_upstream_failures_total", "counter", "Failed requests to an upstream target.",
       [](const target_metrics& t) -> int64_t { return static_cast<int64_t>(t.failures.load()); }},
  };
  for (const auto& family : target_families) {
    out.family(family.name, family.type, family.help);
    for (const auto& [key, target] : targets_) {
      out.sample(family.name, {{"upstream", target->upstream}, {"target", target->address}},
                 family.read(*target));
    }
  }

  return out.take();
}

}  // namespace meridian::node
