#pragma once
// Cluster-wide rate limiting, decided locally: no network call on the request path.
//
// Every limit of every route counts per key (consumer, ip, route, header value or global) in
// windows of the limit's length. This node's admissions go into a local table (check) and, with
// scope global or region, into the replicated window-slot counters (flush, every sync_interval,
// keys near their limit first); the other nodes' counts come back from the replicated state
// (on_remote). A decision adds what this node knows:
//
//   sliding_window  previous window weighted by how much of it still overlaps + current window
//   fixed_window    current window
//   token_bucket    rate limit/window with capacity `burst` (default limit): a sliding window of
//                   burst requests over window*burst/limit (GCRA's steady state)
//   leaky_bucket    the same with capacity `burst` default 1: requests evenly spaced, excess
//                   rejected (no queueing)
//
// Accuracy beyond "sum what you know": each node leases itself a share of the remaining quota
// in proportion to its share of the recent admissions, renewed every lease period or when a
// remote count arrives; a node that used its lease waits for fresher counts. So nodes that
// each see a stale view cannot all spend the same remainder (docs/architecture.md has the bound).
//
// Under partition (set_view: members of the limit's scope unreachable) each limit follows its
// `on_partition`: local_share (the reachable nodes' share of the limit), fail_open or
// fail_closed.
//
// Thread-safety: check() from any worker concurrently (per-bucket spin locks in a fixed-size,
// set-associative table: lookups touch one bucket, a full bucket evicts its least recently used
// entry, memory is bounded by max_keys); flush() and on_remote() from the gossip thread.

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "meridian/common/calendar.h"
#include "meridian/config/config.h"

namespace meridian::cluster {
class replicated_state;
}

namespace meridian::node {

class strict_limiter;

// One limit of one route, compiled once per config (string settings turned into numbers).
struct limit_spec {
  enum class scope_kind : uint8_t { local, region, global };
  enum class partition_policy : uint8_t { local_share, fail_open, fail_closed };
  enum class key_kind : uint8_t { consumer, ip, route, global, header };
  uint64_t seed = 0;       // hash of route, limit index, algorithm, window and scope
  uint64_t limit = 0;      // what the algorithm counts to (burst for the buckets)
  uint64_t window_ms = 1;  // the window it counts in
  bool sliding = true;
  uint64_t max_delay_ms = 0;  // > 0: admit with a delay instead of refusing, up to this long
  scope_kind scope = scope_kind::global;
  partition_policy on_partition = partition_policy::local_share;
  key_kind key = key_kind::consumer;
  std::string header;  // key_kind::header: the lower-cased header name
  // The header carries credentials (authorization, cookie, an API key): its values are never
  // shown (GET /ratelimits/{route} lists them as "redacted:<counter key>").
  bool sensitive_key = false;
  // window 1mo: calendar months (window_ms is then 31 days, the counters' window length; the
  // month's real bounds come from the calendar). Null for every other window.
  std::shared_ptr<const month_calendar> calendar;
  std::string timezone;  // the configured zone of a month window (strict asks carry it)
  // mode: strict: decided by the key's owner (strict_limiter.h). check() on a strict spec is the
  // owner's decision: exact (no leases), never the on_partition policy, and an admission is sent
  // to the others at once.
  bool strict = false;
  uint64_t strict_timeout_ms = 500;  // how long an ask waits for the owner

  // The window holding Unix ms now: its number (the counters' window index), its length and
  // how far into it now is.
  struct window_at {
    uint32_t index = 0;
    uint64_t length_ms = 1;
    uint64_t into_ms = 0;
    int64_t start_ms = 0;  // Unix ms
  };
  window_at window_of(int64_t now_ms) const;
};

struct limit_decision {
  bool allowed = true;
  uint64_t limit = 0;
  uint64_t remaining = 0;
  uint64_t reset_s = 0;        // seconds until the current window ends
  uint64_t retry_after_s = 0;  // when rejected
  uint64_t delay_ms = 0;       // when admitted on condition of waiting this long (max_delay)
  uint64_t own_count = 0;      // this node's admissions of the key in `window`, after this one
  uint32_t window = 0;         // the window number decided in
};

// The keys a node saw most on one route's limits: candidates for GET /ratelimits/{route}'s top
// keys (whose counts then come from the cluster-wide counters, not from here). Per limit, a
// Space-Saving summary (Metwally et al.) of at most `capacity` entries: a key that makes more
// than 1 in capacity of the noted requests is always in it. A note is a hash lookup; only a new
// key in a full summary scans it for the lightest entry to replace.
// Thread-safe (one mutex per limit).
class key_tracker {
 public:
  static constexpr size_t capacity = 64;
  static constexpr size_t max_key_bytes = 256;  // longer header values are cut (for display)
  struct entry {
    uint64_t hash = 0;      // the counter key (rate_limiter::key_of): counts are looked up by it
    std::string key;        // the value counted, for people: cut, or "redacted:…" (see note)
    uint64_t weight = 0;    // noted requests (an over-estimate after a replacement)
    uint64_t window = 0;    // window number (limit_spec::window_of) of the last note
    uint64_t rejected = 0;  // refused requests noted in that window
    int64_t last_ms = 0;
  };
  // Notes one request of limit limit_index for the key whose counter key is hash and whose value
  // is key (shown as "redacted:<hash>" with redact: a credential-bearing header's value).
  void note(size_t limit_index, uint64_t hash, std::string_view key, bool redact, bool rejected,
            uint64_t window, int64_t now_ms);
  // Returns the entries of limit_index noted at or after since_ms, heaviest first.
  std::vector<entry> candidates(size_t limit_index, int64_t since_ms) const;

 private:
  struct summary {
    mutable std::mutex mu;
    std::vector<entry> entries;
    std::unordered_map<uint64_t, size_t> index;  // hash -> entries slot
  };
  std::array<summary, max_rate_limits_per_route> limits_;
};

// Per-route decision counters, read by the metrics endpoint, and the route's busiest keys.
struct rate_limit_stats {
  std::atomic<uint64_t> allowed{0};
  std::atomic<uint64_t> rejected{0};
  std::atomic<uint64_t> overshoot{0};  // admissions found beyond the limit once remote counts came
  key_tracker keys;
};

class rate_limiter {
 public:
  struct options {
    std::string node_id{};
    std::string region{};
    size_t max_keys = 1 << 20;  // entries in the local table (LRU within a bucket beyond)
    int64_t lease_ms = 250;     // how long a share of the remaining quota is good for; 0: no leases
    // After a partition heals, how long local_share limits keep the share of the side this node
    // was on: the other side's counts of the partition are still on their way, and until they
    // arrive the whole limit would look unspent.
    int64_t heal_grace_ms = 1000;
    bool clustered = true;  // false: the state only persists counts (a node without a cluster)
  };
  // state may be null: limits are then per node whatever their scope.
  rate_limiter(options o, cluster::replicated_state* state);
  ~rate_limiter();
  rate_limiter(const rate_limiter&) = delete;
  rate_limiter& operator=(const rate_limiter&) = delete;

  // Compiles limit number `index` of route.
  limit_spec compile(const std::string& route, size_t index, const rate_limit_config& cfg) const;
  // Returns the counter key of a limit for key_value: the same on every node and across
  // restarts (region-scoped limits include the region, local ones the node id).
  static uint64_t key_of(const limit_spec& spec, std::string_view key_value);

  // Decides one request against one limit at Unix ms now. With commit, an admitted request is
  // counted; without, nothing changes (several limits: check all, then commit all).
  limit_decision check(uint64_t key, const limit_spec& spec, int64_t now_ms, bool commit,
                       unsigned worker = 0);
  // Decides a strict limit's request that its owner could not decide (no majority in sight, no
  // answer in time, a handover), by the limit's on_partition: fail_closed refuses, fail_open
  // admits, local_share admits within this node's share (the reachable members' share of the
  // limit; 1/N of it when every member looks reachable). Admissions are counted here.
  limit_decision check_without_owner(uint64_t key, const limit_spec& spec, int64_t now_ms,
                                     unsigned worker = 0);

  // Returns what this node knows of the key's count in the window holding now (its own and the
  // others'), and sets *window to that window's number.
  uint64_t known_total(uint64_t key, const limit_spec& spec, int64_t now_ms, uint32_t* window);

  // Raises this node's own count of key in window to at least count: its admissions of an
  // earlier life that the others hold but its store lost (a strict key taken over after a
  // restart). Nothing when the key has no entry (a new entry reads the replicated slot).
  void raise_own(uint64_t key, uint32_t window, uint64_t count);

  // Hands this node's new admissions to the replicated state. Called by the state's flush hook.
  void flush();
  // Sets what check() calls (throttled: at most once a millisecond) when an admission leaves a
  // replicated key in the last half of its limit with so little left that, at the window's pace
  // so far, it would be spent before the counts reach the others: the node sends them at once.
  // Call before the first check.
  void set_urgent_hook(std::function<void()> hook);
  // A remote count changed: others = the other nodes' total for key in window.
  void on_remote(uint64_t key, uint32_t window, uint64_t others);

  // The cluster as the limiter should see it, at now_ms (check's clock): members per scope, how
  // many are down (suspect or dead: every on_partition policy applies) and how many are alive
  // but unconfirmed (cluster::member::unconfirmed: they shrink local_share limits' share only).
  // When members come back, local_share limits keep the share of the smallest side seen until
  // heal_grace_ms after the latest return.
  void set_view(size_t global_total, size_t global_down, size_t region_total, size_t region_down,
                int64_t now_ms, size_t global_unconfirmed = 0, size_t region_unconfirmed = 0);

  // The cluster-wide view of one key: count in the current window and per node.
  struct key_view {
    uint64_t limit = 0;
    uint64_t window_ms = 0;
    uint64_t count = 0;
    std::map<std::string, uint64_t> by_node;
  };
  key_view view(uint64_t key, const limit_spec& spec, int64_t now_ms);

  // The node's strict_limiter, which decides the limits with mode: strict (null: none, and
  // strict limits are decided here as if this node owned every key). Set before the first check.
  void set_strict(strict_limiter* s) { strict_ = s; }
  strict_limiter* strict() const { return strict_; }

  rate_limit_stats& stats_for(const std::string& route);
  // Prometheus lines: decisions by route and result, overshoot, sync lag, table size.
  std::string metrics_text() const;
  size_t size() const;

 private:
  limit_decision decide(uint64_t key, const limit_spec& spec, int64_t now_ms, bool commit,
                        unsigned worker, bool without_owner);
  struct impl;
  std::unique_ptr<impl> impl_;
  strict_limiter* strict_ = nullptr;
};

}  // namespace meridian::node
