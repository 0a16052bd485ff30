#pragma once
// Cluster-wide state that every node holds a copy of, spread over the gossip layer and kept in
// the node's store: config documents and breaker/health states (LWW maps versioned by a hybrid
// logical clock) and rate-limit counters (window-slot G-counters). See crdt.h for the types and
// docs/architecture.md for how a change travels.
//
// How state moves:
//   * a local write is durable in the store (synced) before put()/remove() return, then leaves
//     as a delta on the next gossip round (take_deltas), piggybacked on membership packets and
//     re-gossiped by every receiver (infection style, like member updates);
//   * counters leave in batches every counter_sync_interval, urgent keys (near their limit)
//     first, within a per-round byte budget;
//   * every packet carries a 16-byte summary (the two documents digests); a node that sees a
//     different summary for a while, or hears of a document too large to piggyback, starts a
//     push-pull with that member: it sends which versions it holds (small states) or a digest
//     per hash bucket of its keys (any size), the other sends back what it lacks and the
//     versions of differing buckets, and the exchange repeats at once in bounded steps until
//     the buckets agree (digest-based anti-entropy, never a full transfer in one message);
//   * remote states are adopted only from nodes whose clocks are within max_clock_skew.
//
// Thread-safety: every public method may be called from any thread (one internal mutex). The
// gossip_application methods are called by the membership on its thread. The change handler
// runs on the thread that made the change, after the mutex is released.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "meridian/cluster/crdt.h"
#include "meridian/cluster/hlc.h"
#include "meridian/cluster/membership.h"

namespace meridian::storage {
class store;
}

namespace meridian::cluster {

// config: what operators set (routes, upstreams, consumers, keys...); state: what nodes record
// and share (breaker states, OAuth keys and revocations, the audit log, keyrings, node info).
// The values are on the wire (gossip.thrift): never reassign one.
enum class doc_family : uint8_t { config = 0, state = 1 };

struct state_options {
  std::string self_id;
  int64_t max_clock_skew_ms = 30000;  // remote clocks further ahead are refused (and counted)
  size_t max_counter_keys = 2'000'000;
  millis counter_sync_interval{100};
  size_t max_payload_bytes = 900;      // one delta payload; leaves room in a 1,200-byte datagram
  size_t max_payloads_per_round = 16;  // bandwidth bound per take_deltas call
  size_t max_document_bytes = 32 * 1024;
  size_t max_sync_bytes = 48 * 1024;  // documents in one push-pull reply
  millis sync_grace{300};          // local state quiet this long before a differing summary syncs
  millis min_sync_interval{1000};  // per peer, for summary-triggered push-pulls
  millis summary_fresh{15000};     // a peer's summary counts towards `converged` this long
  int64_t tombstone_grace_ms = 24LL * 3600 * 1000;
};

struct state_stats {
  uint64_t deltas_sent = 0;
  uint64_t deltas_received = 0;
  uint64_t docs_applied = 0;  // remote document versions that changed local state
  uint64_t counter_updates_sent = 0;
  uint64_t counter_updates_applied = 0;
  uint64_t syncs_requested = 0;  // push-pulls started because summaries differed
  uint64_t syncs_served = 0;
  uint64_t sync_docs_received = 0;  // documents merged from push-pulls (either direction)
  uint64_t sync_docs_sent = 0;      // documents sent in replies to bucketed push-pulls
  uint64_t sync_docs_pushed = 0;    // documents handed over in this node's own requests
  uint64_t sync_followups = 0;      // push-pulls chained at once because a reply left work
  uint64_t clock_rejected = 0;      // deltas or syncs refused: sender's clock too far ahead
  uint64_t malformed = 0;           // undecodable deltas or sync state
  uint64_t tombstones_collected = 0;
  uint64_t persist_errors = 0;
  uint64_t counter_evictions = 0;
  uint64_t counter_updates_dropped = 0;  // one-off keys that left the send backlog unsent
  size_t counter_backlog = 0;            // keys waiting to be sent
  int64_t max_clock_skew_ms = 0;
  double counter_sync_lag_ms = 0;  // EWMA: a remote count's age when it arrives here
  size_t documents = 0;            // live config documents
  size_t counters = 0;
};

class replicated_state final : public gossip_application {
 public:
  // wall_ms: Unix milliseconds (injected). store may be null (nothing persisted).
  replicated_state(state_options options, std::function<int64_t()> wall_ms, storage::store* store);
  ~replicated_state() override;
  replicated_state(const replicated_state&) = delete;
  replicated_state& operator=(const replicated_state&) = delete;

  // Loads documents and counters from the store. Returns false and sets *error when the store
  // fails or holds undecodable entries.
  bool load(std::string* error);

  // ---- documents ----
  // Writes key's value (a new version stamped by the clock). Returns the version once it is
  // durable, or 0 with *error set (too large, or the store failed: then nothing changed).
  // sync false: written to the store without waiting for the disk (breaker states: the next
  // observation republishes them anyway).
  hlc_time put(doc_family f, const std::string& key, std::string value, std::string* error,
               bool sync = true);
  // Deletes key everywhere (a tombstone). Returns the version, or 0 with *error set.
  hlc_time remove(doc_family f, const std::string& key, std::string* error);
  // Adds key at version 0, with an origin derived from the value, unless key is present
  // (a document seeded from a config file loses to any real write, and identical seeds on
  // different nodes are identical entries). Not spread as a delta: every node seeds its own.
  void seed(doc_family f, const std::string& key, std::string value);
  std::optional<lww_entry> get(doc_family f, const std::string& key) const;
  // Every live document of f (with include_deleted, tombstones too) whose key starts with
  // prefix, in key order. A prefix reads only its own range of keys.
  std::vector<std::pair<std::string, lww_entry>> documents(doc_family f,
                                                           bool include_deleted = false,
                                                           std::string_view prefix = {}) const;
  uint64_t digest(doc_family f) const;
  hlc_time version(doc_family f) const;  // highest version of f (0 when empty)
  bool empty(doc_family f) const;

  // Called with the family after documents changed (local or remote).
  void set_change_handler(std::function<void(doc_family)> handler);

  // ---- counters ----
  // Adds n to this node's slot of key in window; returns the slot's new value.
  uint32_t count(uint64_t key, uint32_t window_ms, uint32_t window, uint32_t n,
                 bool urgent = false);
  // Adds many at once (one lock). replicate false: kept and persisted here, never sent.
  struct counter_add {
    uint64_t key;
    uint32_t window_ms;
    uint32_t window;
    uint32_t n;
    bool urgent;
    bool replicate = true;
  };
  void count_batch(const std::vector<counter_add>& adds);
  uint64_t counter_sum(uint64_t key, uint32_t window) const;
  // The other nodes' sums and this node's slot of key, in window and window - 1.
  window_counters::split_counts counter_split(uint64_t key, uint32_t window) const;
  // Called, after a remote delta changed counters and outside the lock, with (key, window,
  // the other nodes' new sum) for each changed one: the rate limiter's view of remote counts.
  void set_counter_observer(std::function<void(uint64_t, uint32_t, uint64_t)> observer);
  // Called at the start of every take_deltas, outside the lock: the rate limiter hands over
  // its local counts there (count_batch), so they leave on the same round.
  void set_flush_hook(std::function<void()> hook);
  std::map<std::string, uint64_t> counter_by_node(uint64_t key, uint32_t window) const;
  // Writes changed counters to the store (write-behind) and drops expired ones. Call about
  // once a second.
  void persist_counters();
  // Queues this node's counts of the current windows to leave again (window_counters::
  // requeue_own): call when members this node could not reach are back, since counts that
  // stopped changing during a partition would otherwise never reach them. Returns the keys.
  size_t resend_counters();

  // ---- cluster view ----
  // Returns true when every member in peers reported (within summary_fresh of now) the same
  // config digest as this node's.
  bool converged(const std::vector<std::string>& peers, millis now) const;
  // Forgets tombstones older than tombstone_grace when converged(peers, now).
  void collect_garbage(const std::vector<std::string>& peers, millis now);
  state_stats stats() const;

  // ---- gossip_application ----
  std::string summary() override;
  bool on_summary(const std::string& from, const std::string& summary, millis now) override;
  // Documents always; counters up to min(room, max_payloads_per_round) payloads, by activity
  // (window_counters::take_dirty).
  std::vector<std::string> take_deltas(millis now, size_t room) override;
  // Counters leave on the next take_deltas, not at the next counter_sync_interval.
  void expedite() override;
  std::vector<std::string> take_deltas(millis now) { return take_deltas(now, SIZE_MAX); }
  void on_payload(const std::string& from, const std::string& payload) override;
  // Merges slot values of origin's window counters that came outside the gossip (a strict rate
  // limit's owner sends its counts to every member before an admission goes on): the same as a
  // delta from origin carrying them. Origin may be this node: its slot as the others hold it
  // (a restart that lost what the store had not written yet) raises its own.
  void merge_counts(const std::string& origin, const std::vector<counter_update>& updates);
  std::string sync_request() override;
  std::string on_sync_request(const std::string& from, const std::string& app_state) override;
  bool on_sync_reply(const std::string& from, const std::string& app_state) override;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace meridian::cluster
