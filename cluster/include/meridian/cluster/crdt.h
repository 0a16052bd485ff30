#pragma once
// The convergent data types that replicated_state spreads over gossip. Each is a join
// semilattice: merging is commutative, associative and idempotent, so nodes that have seen the
// same updates hold the same state whatever the order, duplication or batching of delivery
// (tests/unit/cluster/crdt_test.cc checks this over random histories).
//
//   lww_map          documents (config, breaker and health states) by key; the entry with the
//                    highest (version, origin) wins; deletion is a tombstone entry.
//   window_counters  per (key, window) a G-counter with one slot per node: merge takes the
//                    maximum of each slot, a read sums them; only the current and the previous
//                    window of a key are kept (a sliding window needs both), older ones expire.
//
// Not thread-safe: replicated_state holds them under its mutex.

#include <boost/container/small_vector.hpp>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "meridian/cluster/hlc.h"

namespace meridian::cluster {

// One version of a document. A given (version, origin) always names the same content: a node
// never reuses a timestamp, and documents seeded from a config file (version 0) carry an
// origin derived from their content ("seed:<hash>").
struct lww_entry {
  hlc_time version = 0;
  std::string origin;
  bool deleted = false;
  std::string value;
  bool operator==(const lww_entry&) const = default;
};

// Returns true when a wins over b: higher version, then higher origin; a tombstone beats a
// write with the same stamp, then the larger value (so that merge is a total order even for
// inputs that break the uniqueness rule above).
bool wins_over(const lww_entry& a, const lww_entry& b);

class lww_map {
 public:
  // Merges one entry; returns true when the map changed.
  bool merge(const std::string& key, const lww_entry& e);
  // Returns the entry for key (tombstones included), or nullptr.
  const lww_entry* find(const std::string& key) const;
  // Every entry in key order, tombstones included.
  const std::map<std::string, lww_entry>& entries() const { return entries_; }
  size_t live_size() const { return entries_.size() - tombstones_; }

  // An order-independent 64-bit hash of the live entries' (key, version, origin). Tombstones are
  // left out: a node that deleted a key and a node that never had it hold the same documents.
  uint64_t digest() const { return digest_; }
  // The highest version of any entry, tombstones included (0 when empty).
  hlc_time max_version() const { return max_version_; }

  // Forgets tombstones with a version below `before`; returns how many. Callers do this only
  // when every live member holds the same digest (so all of them have seen the deletions).
  size_t collect_tombstones(hlc_time before);

 private:
  std::map<std::string, lww_entry> entries_;
  size_t tombstones_ = 0;
  uint64_t digest_ = 0;
  hlc_time max_version_ = 0;
};

// Returns the hash that lww_map::digest() sums for a live entry.
uint64_t entry_hash(std::string_view key, const lww_entry& e);

// One node's slot of one counter: "node has counted `count` in window `window` of key".
// key is the caller's 64-bit hash of what is counted (it includes the window length);
// window is the window's index: (Unix ms - hlc_epoch_unix_ms) / window_ms.
struct counter_update {
  uint64_t key = 0;
  uint32_t window_ms = 0;
  uint32_t window = 0;
  uint32_t count = 0;
  bool operator==(const counter_update&) const = default;
};

class window_counters {
 public:
  // max_keys caps the number of counters held: beyond it the least recently active ones (by the
  // CLOCK approximation of LRU) are evicted, so a flood of distinct keys cannot exhaust memory.
  // max_cold_backlog bounds the keys waiting to be sent that changed only once since they were
  // last taken (take_dirty): beyond it the oldest such key leaves the queue (counted in
  // dropped(); its next change queues it again).
  explicit window_counters(size_t max_keys, size_t max_cold_backlog = 16384);

  // Returns the small index this node uses for a node id (index 0 is the local node, interned
  // first by the owner). Returns UINT16_MAX when 65,535 nodes are already known.
  uint16_t node_index(std::string_view id);
  const std::string& node_id(uint16_t index) const { return nodes_[index]; }

  // Adds n to the local node's slot (index 0) of key in window and returns the slot's new value.
  // The key becomes dirty (take_dirty); urgent keys are taken first. With replicate false the
  // count stays on this node (persisted by the owner, never taken as a delta).
  uint32_t add(uint64_t key, uint32_t window_ms, uint32_t window, uint32_t n, bool urgent = false,
               bool replicate = true);
  // Merges node's slot value; returns true when state changed.
  bool merge(uint16_t node, const counter_update& u);

  // Returns the sum of all slots of key in window (0 when unknown or expired).
  uint64_t sum(uint64_t key, uint32_t window) const;
  // Calls f(node index, count) for every slot of key in window.
  void for_each_slot(uint64_t key, uint32_t window,
                     const std::function<void(uint16_t, uint32_t)>& f) const;
  // What a rate limiter seeing a key for the first time needs, in one lookup: the other nodes'
  // sums and the local slot, in window and window - 1.
  struct split_counts {
    uint64_t others_cur = 0, others_prev = 0;
    uint32_t own_cur = 0, own_prev = 0;
  };
  split_counts split(uint64_t key, uint32_t window) const;
  // Calls f(node index, update) for every slot held (both windows of every key).
  void for_each(const std::function<void(uint16_t, const counter_update&)>& f) const;

  // Takes up to max keys whose local slot changed since they were last taken, as the local
  // node's current slot values, by activity: urgent keys (near their limit) first, then hot ones
  // (changed at least twice since last taken), then the rest, each oldest first. A key moves up
  // as it becomes urgent or hot, so a busy key is never stuck behind a churn of one-off keys.
  std::vector<counter_update> take_dirty(size_t max);
  size_t dirty() const { return queued_[0] + queued_[1] + queued_[2]; }
  // Queues again (hot) the replicated keys this node counted in the window holding now_ms or the
  // one before, at most max of them, the largest own counts first: members that could not hear
  // of those counts (a healed partition) get them on the next rounds, where a key no longer
  // admitting anything would never be sent again. The keys come from a table of the heaviest
  // own counts lately (4,096 slots, kept by add and expire), not from a pass over every key: a
  // pass over 2 M keys took 200 ms under the state's lock. Returns how many.
  size_t requeue_own(int64_t now_ms, size_t max = 1024);
  // Keys that left the cold queue at max_cold_backlog without being sent.
  uint64_t dropped() const { return dropped_; }

  // Drops counters whose newest window ended more than one window before now_ms (Unix ms), so
  // neither it nor a sliding window's "previous" needs it. Returns how many were dropped.
  size_t expire(int64_t now_ms);

  size_t size() const { return cells_.size(); }
  uint64_t evictions() const { return evictions_; }

 private:
  struct slot {
    uint16_t node;
    uint32_t count;
  };
  using slots = boost::container::small_vector<slot, 3>;
  struct cell {
    uint32_t window_ms = 0;
    uint32_t window = 0;      // index of `cur`; `prev` is window - 1
    uint8_t queued = 0;       // 0: not waiting to be sent; else 1 + the queue it waits in
    bool referenced = false;  // touched since the eviction hand last passed (CLOCK)
    uint16_t changes = 0;     // local changes since last taken (saturating)
    bool replicated = false;  // counted here with replicate (requeue_own)
    slots cur, prev;
  };
  enum queue_level : uint8_t { cold = 0, hot = 1, urgent = 2 };
  cell* find_or_insert(uint64_t key, uint32_t window_ms);
  static bool set_max(slots& s, uint16_t node, uint32_t count);
  static uint32_t get(const slots& s, uint16_t node);
  // Moves c forward to window (dropping windows that fall out); returns false when window is
  // older than c's previous window.
  static bool advance(cell& c, uint32_t window);
  void evict_one();
  void erase(std::unordered_map<uint64_t, cell>::iterator it);
  void enqueue(uint64_t key, cell& c, queue_level level);

  size_t max_keys_;
  size_t max_cold_backlog_;
  std::unordered_map<uint64_t, cell> cells_;
  // Keys waiting to be sent, per level, oldest first. A key that moved up leaves a stale entry
  // behind (skipped: its cell's `queued` names another level); queued_ counts the live ones.
  std::deque<uint64_t> queues_[3];
  size_t queued_[3] = {0, 0, 0};
  uint64_t dropped_ = 0;
  std::vector<std::string> nodes_;
  std::unordered_map<std::string, uint16_t> node_index_;
  uint64_t evictions_ = 0;
  std::deque<uint64_t> clock_;  // keys in insertion order, for the eviction hand
  void compact_queues();

  // The heaviest own counts lately (requeue_own): two candidate slots per key, the lighter one
  // gives way to a heavier count; expire() frees slots whose windows are over.
  struct heavy_slot {
    uint64_t key = 0;
    uint32_t window_ms = 0;
    uint32_t window = 0;
    uint32_t own = 0;  // 0: free
  };
  static constexpr size_t heavy_bits = 12;
  std::vector<heavy_slot> heavy_ = std::vector<heavy_slot>(size_t{1} << heavy_bits);
  void note_heavy(uint64_t key, uint32_t window_ms, uint32_t window, uint32_t own);
};

// Packs counter updates for the wire: per update the key as 8 bytes little-endian, then
// window_ms, window and count as unsigned LEB128 varints (about 16 bytes an update).
std::string pack_counter_updates(const std::vector<counter_update>& updates);
// Unpacks; returns false (and what decoded so far) on truncated or overlong input.
bool unpack_counter_updates(std::string_view bytes, std::vector<counter_update>* out);

}  // namespace meridian::cluster
