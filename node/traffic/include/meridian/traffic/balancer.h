#pragma once
// Upstreams as the data plane balances over them: per-target state that outlives config
// reloads (health, ejection, breaker, gauges), per-snapshot targets and balancing cursors, the
// retry budget, and the pick of a target for one request.

#include <sys/socket.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "meridian/common/clock.h"
#include "meridian/common/metrics.h"
#include "meridian/config/config.h"
#include "meridian/traffic/breaker.h"

namespace meridian::node {

// A resolved socket address as plain bytes (sockaddr_in or sockaddr_in6), so that this part
// needs no networking library; the proxy turns it into its endpoint type.
struct socket_address {
  sockaddr_storage storage{};
  socklen_t size = 0;
};

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
  socket_address endpoint;  // resolved when the snapshot was built
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
  // The proxy's TLS client context for cfg->tls (an asio::ssl::context), opaque here; null
  // without tls.
  std::shared_ptr<void> client_tls;
};

// Compiles upstream cfg for a snapshot of config version `version` in region `region`: targets
// from `registry` (their state survives reloads), names resolved (blocking; a target that does
// not resolve is never picked and adds a line to *warnings), one balancing cursor per worker.
std::unique_ptr<upstream_runtime> build_upstream(const upstream_config& cfg,
                                                 const std::string& region, unsigned workers,
                                                 uint64_t version, target_registry& registry,
                                                 std::vector<std::string>* warnings);

// Picks a target for a request, skipping unavailable ones (unhealthy, ejected, or with an open
// breaker); targets in this node's region first, the others only when none of those is usable.
// Returns nullptr when none is available. `exclude` (may be null) is a target to avoid (the one
// that just failed). hash_key is the consistent-hash input; now is steady ms, wall_now Unix ms
// (breakers). Called on worker `worker` only.
const upstream_target* pick_target(const upstream_runtime& up, unsigned worker,
                                   std::string_view hash_key, const target_state* exclude,
                                   int64_t now, int64_t wall_now);

}  // namespace meridian::node
