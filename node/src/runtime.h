#pragma once
// The runtime form of a config: what the data plane reads on every request.
//
// A snapshot is immutable once built and shared by all workers through shared_ptr; a reload
// builds a new one and hands it to each worker, while requests in flight keep the old one alive.
// Per-target state that must survive reloads (health, ejection, gauges) lives in target_state
// objects owned by a target_registry and shared between consecutive snapshots.

#include <atomic>
#include <boost/asio/ip/tcp.hpp>
#include <boost/regex.hpp>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "api_keys.h"
#include "breaker.h"
#include "jwt.h"
#include "meridian/node/config.h"
#include "meridian/node/router.h"
#include "metrics.h"
#include "path_normalize.h"
#include "rate_limiter.h"

namespace meridian::node {

using steady_clock = std::chrono::steady_clock;

// Returns steady-clock milliseconds (for atomics that store time points).
inline int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             steady_clock::now().time_since_epoch())
      .count();
}

// This node's own wall clock in Unix milliseconds: the system clock shifted by
// node.clock_offset. Gossip compares it with the other members' to measure clock offsets.
inline std::atomic<int64_t> wall_clock_offset_ms{0};  // set once at startup (node.clock_offset)
inline int64_t raw_unix_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
             .count() +
         wall_clock_offset_ms.load(std::memory_order_relaxed);
}

// The cluster's time in Unix milliseconds: this node's clock plus the correction to the median
// of the members' clocks (cluster.clock_correction; 0 without a cluster). What nodes compare
// across the cluster uses it: rate-limit windows, breaker deadlines, hybrid-clock timestamps.
inline std::atomic<int64_t> cluster_clock_correction_ms{0};
inline int64_t unix_now_ms() {
  return raw_unix_now_ms() + cluster_clock_correction_ms.load(std::memory_order_relaxed);
}

// One upstream target's state that outlives snapshots: health, ejection, breaker, gauges.
// Written by workers (passive health), the health checker (active health) and the breaker
// publisher; read by every worker when balancing. What the config says of a target (region,
// weight, resolved endpoint) is per snapshot, in upstream_target: a reload must not write
// memory that workers of the previous snapshot read.
struct target_state {
  std::string upstream;
  address addr;
  size_t id = 0;  // dense index, unique per registry, for per-worker pool arrays

  std::atomic<bool> healthy{true};           // active health checks' verdict
  std::atomic<uint32_t> health_streak{0};    // consecutive checks agreeing with a flip
  std::atomic<int64_t> ejected_until_ms{0};  // passive outlier ejection
  std::atomic<uint32_t> consecutive_failures{0};
  target_metrics* metrics = nullptr;
  std::string key;  // "upstream/host:port": the breaker's name in the replicated state
  circuit_breaker breaker;
  std::atomic<bool> may_probe{true};  // this node sends the half-open probes (owner)

  // Returns true when the balancer may send to this target now.
  bool available(int64_t now) const {
    return healthy.load(std::memory_order_relaxed) &&
           ejected_until_ms.load(std::memory_order_relaxed) <= now;
  }
};

// A target as one snapshot configures it; immutable once the snapshot is built.
struct upstream_target {
  std::shared_ptr<target_state> state;
  std::string region;
  std::string zone;
  uint32_t weight = 1;
  boost::asio::ip::tcp::endpoint endpoint;  // resolved when the snapshot was built
  bool resolved = false;
  bool local_tier = true;  // in this node's region (or in none): tried first
};

// Keeps target_state objects across reloads, keyed by upstream name and address.
class target_registry {
 public:
  explicit target_registry(metrics_registry& metrics) : metrics_(metrics) {}
  // Returns the state for (upstream, address), creating it on first use. Thread-safe.
  std::shared_ptr<target_state> get(const std::string& upstream, const address& addr);
  // The number of ids handed out so far (bounds per-worker arrays).
  size_t size() const;
  // Returns the state for a key "upstream/host:port", or null.
  std::shared_ptr<target_state> find(const std::string& key) const;
  // Calls f for every target ever registered.
  void for_each(const std::function<void(target_state&)>& f) const;

  // Breaker transitions to publish (scope region or cluster): workers queue, a publisher
  // thread takes them (wait_published returns at once when stopping).
  void queue_publish(const std::string& key);
  std::vector<std::string> wait_published(std::chrono::milliseconds timeout);
  void stop_publishing();
  uint64_t breaker_transitions() const { return transitions_.load(std::memory_order_relaxed); }
  void count_transition() { transitions_.fetch_add(1, std::memory_order_relaxed); }

 private:
  metrics_registry& metrics_;
  mutable std::mutex mutex_;
  std::map<std::string, std::shared_ptr<target_state>> targets_;
  std::mutex publish_mutex_;
  std::condition_variable publish_cv_;
  std::vector<std::string> publish_;
  bool publish_stop_ = false;
  std::atomic<uint64_t> transitions_{0};
};

// Counts requests and retries over a rolling second to cap retries at a share of traffic.
struct retry_budget {
  std::atomic<int64_t> window_start_ms{0};
  std::atomic<uint64_t> requests{0};
  std::atomic<uint64_t> retries{0};
  double ratio = 0.2;
  uint64_t min_per_s = 10;

  void on_request(int64_t now);
  // Returns true and counts a retry when the budget allows one.
  bool try_retry(int64_t now);
};

struct upstream_runtime {
  const upstream_config* cfg = nullptr;
  std::vector<upstream_target> targets;
  std::vector<uint32_t> wrr_sequence;                    // target indices interleaved by weight
  std::vector<std::pair<uint64_t, uint32_t>> hash_ring;  // (point, target index), sorted
  std::string hash_header;  // consistent_hash on a header; empty: client ip
  mutable retry_budget budget;
  // Per-worker balancing state, one cache line each.
  struct alignas(64) worker_cursor {
    uint64_t next = 0;
    uint64_t rng = 0;
  };
  mutable std::vector<worker_cursor> cursors;
  bool has_local_tier = true;  // some target is in this node's region (or in none)
  std::vector<upstream_runtime*> failover_chain;  // cfg->failover, resolved
  std::vector<std::string> remote_regions;        // other regions, in the order targets name them
  mutable std::atomic<uint64_t> failovers{0};     // requests sent to another region's target
};

// A JWT issuer and the keys that verify its tokens (loaded from jwks_file or jwks_url when the
// snapshot is built).
class oauth_authority;
class tls_store;

struct jwt_provider {
  const jwt_config* cfg = nullptr;
  // Set for the provider of `auth: {methods: [oauth]}`: keys and revocations come from it.
  const oauth_authority* authority = nullptr;
  // Replaced whole when a jwks_url is re-fetched; workers load it once per verification.
  std::atomic<std::shared_ptr<const jwks>> keys;
  jwt_rules rules;
  mutable verified_jwt_cache cache;         // tokens verified before (per key set)
  std::atomic<bool> refresh_wanted{false};  // a token named a kid these keys lack
  std::atomic<int64_t> fetched_ms{0};       // steady ms of the last fetch
  std::atomic<int64_t> last_wanted_ms{0};   // steady ms of the last kid-miss refresh
};

// Re-fetches provider p's jwks_url now. Returns false and sets *error when it cannot (the old
// keys stay).
bool refresh_jwks(jwt_provider& p, std::string* error);

struct route_runtime {
  const route_config* cfg = nullptr;
  upstream_runtime* upstream = nullptr;
  std::optional<boost::regex> rewrite;  // Boost: no recursion on long input, unlike std::regex
  route_metrics* metrics = nullptr;
  uint64_t max_body_bytes = 0;  // 0 = unlimited
  bool preserve_host = true;
  // Lower-cased names of request headers removed or set (so the client's copy is dropped).
  std::vector<std::string> request_drop;
  std::vector<std::string> response_drop;
  // auth: {methods: [jwt]}: the providers that may vouch for a request (any one suffices).
  std::vector<const jwt_provider*> jwt_providers;
  rate_limit_stats* limit_stats = nullptr;  // set when the route has limits and a limiter
  std::vector<limit_spec> limits;           // the route's rate limits, compiled
  bool auth_api_key = false;                // auth methods include api_key
};

struct snapshot {
  config cfg;
  uint64_t version = 0;
  std::unique_ptr<router> routes_index;
  path_policy paths;  // how request paths are normalized before routing
  std::vector<route_runtime> routes;
  std::vector<std::unique_ptr<upstream_runtime>> upstreams;
  std::vector<std::unique_ptr<jwt_provider>> jwt_providers;
  std::vector<std::string> warnings;    // e.g. targets that could not be resolved
  rate_limiter* limiter = nullptr;      // the node's (outlives every snapshot); null: no limits
  target_registry* registry = nullptr;  // the node's (outlives every snapshot)
  std::shared_ptr<const api_key_table> api_keys;  // by key id; null: none
  const oauth_authority* oauth = nullptr;  // the node's (outlives every snapshot); null: no oauth
  jwt_config oauth_jwt;                    // the oauth provider's settings (issuer, audience)
  std::unique_ptr<jwt_provider> oauth_provider;
  std::shared_ptr<const tls_store> tls;  // certificates of the TLS listener; null: none
  std::unordered_map<std::string, std::vector<std::string>> consumer_groups;  // by consumer id
};

// Builds a snapshot from a validated config. Resolves target host names (blocking). Returns
// nullptr and sets *error when the config cannot be compiled (a bad regex).
std::shared_ptr<const snapshot> build_snapshot(config cfg, uint64_t version, unsigned workers,
                                               target_registry& targets, metrics_registry& metrics,
                                               std::string* error, rate_limiter* limiter = nullptr,
                                               std::shared_ptr<const api_key_table> keys = nullptr,
                                               const oauth_authority* oauth = nullptr);

// Picks a target for a request, skipping unavailable ones (unhealthy, ejected, or with an open
// breaker); targets in this node's region first, the others only when none of those is usable.
// Returns nullptr when none is available. `exclude` (may be null) is a target to avoid (the one
// that just failed). hash_key is the consistent-hash input; now is steady ms, wall_now Unix ms
// (breakers). Called on worker `worker` only.
const upstream_target* pick_target(const upstream_runtime& up, unsigned worker,
                                   std::string_view hash_key, const target_state* exclude,
                                   int64_t now, int64_t wall_now);

}  // namespace meridian::node
