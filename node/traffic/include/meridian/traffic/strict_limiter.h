#pragma once
// Strict rate limits (`mode: strict`): exact across the cluster, at the price of asking.
//
// Every key of a strict limit has one owner: the member of the limit's scope (all members, or
// the node's region) with the highest rendezvous score for the key among the live ones. The
// owner decides, on its gossip thread, every request for the key — its own node's too — with its
// own table (rate_limiter::check on a strict spec: no leases). Its admissions count in its slot of
// the replicated window counters, and no admission goes on (no answer leaves, no local request
// resumes) before the owner's new counts have been acknowledged by a majority of the scope's
// members (this node included): whoever takes the key over asks a majority what they hold, and
// two majorities always share a member. So an owner cut off from the others (a partition, a
// process that stood still) cannot admit at all, and one that dies has lost nothing admitted.
//
// Asking: other nodes queue requests per owner; the first request into an empty queue posts a
// flush to the gossip thread, which sends whatever gathered meanwhile as one message (at most
// max_batch requests: nothing under light load, tens of microseconds of requests under heavy
// load), sealed like every gossip packet (gossip_node::send_direct). The owner decides a message's
// requests together and has their counts acknowledged in one round.
//
// Taking a key over: a node deciding a key for the first time in a view of the cluster that
// began after the key's current window did (a member joined, left, died, came back, or this node
// stood still) first asks every other live member for its slots of the key's counters in that
// window and merges them; it decides once a majority (itself included) has answered. A member
// that answers is fenced for the key: for fence_ms it acknowledges counts for it from the asker
// only, and decides it for nobody, so an old owner that has not noticed the change cannot admit
// past the new one.
//
// Who the majority is of: the scope's members as this node counts them (the "base"), not only
// those the membership lists now. Each scope's count (global; this node's region) changes only
// while this node sees a majority of it alive, as it stands: a member the membership forgot (dead
// longer than dead_reap_after) is dropped, and a member that joins is added, only then — so the
// minority side of a partition neither counts itself a majority once the others are reaped nor
// becomes one with nodes started on its side. Members that left on purpose are dropped at once;
// members an operator declared gone (set_forgotten) while they are not alive. The base is kept
// across restarts (options::remembered / remember): a node that restarts counts every member it
// knew as dead until it sees them alive, and a node configured with seeds counts itself no
// majority before it has heard of any other member. Counts are acknowledged, and count queries
// answered, only for members this node counts.
//
// No decision (the caller applies the limit's on_partition) when
//   * this node sees no majority of the scope's members alive (a partition's minority side, a
//     node that has not joined yet, or a process that stood still: see tick);
//   * the owner does not answer within the limit's strict_timeout (the owner waits as long for
//     acknowledgements, and for the answers to a take-over's count queries);
//   * the owner answers that it is not the owner (views differ for a moment, or it is fenced).
//
// Thread-safety: locate and ask from any thread; on_message, tick and the jobs handed to `post`
// on the host's gossip thread (the owner's side runs only there); set_members from any one thread.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "meridian/traffic/rate_limiter.h"

namespace meridian::node {

class strict_limiter {
 public:
  // A member of the cluster as the membership lists it.
  struct member_view {
    std::string id;
    std::string address;  // gossip address, where asks go
    std::string region;
    bool alive = true;
    bool left = false;  // left on purpose: no longer counted
  };
  // A member counted for majorities: for global-scope limits, and (a member of this node's
  // region) for region-scope ones. Each scope's count changes only with that scope's majority.
  struct counted_member {
    std::string id, address, region;
    bool global = true;
    bool regional = false;
    bool alive = false;  // counted_members(): seen alive now
    bool operator==(const counted_member&) const = default;
  };
  struct options {
    std::string self_id;
    std::string region;
    int64_t fence_ms = 10000;      // how long a count query fences the key for the asker
    size_t max_batch = 32;         // requests per message (within gossip_node::max_direct_bytes)
    size_t max_pending = 1 << 16;  // asks in flight; beyond, asks get no decision at once
    // The process stood still (SIGSTOP, a stalled host) when ticks are this far apart: its view
    // is old, so it decides nothing until ticks resume and then takes every key over again.
    int64_t stall_ms = 1000;
    std::function<int64_t()> steady_ms;  // unset: std::chrono::steady_clock
    std::function<int64_t()> unix_ms;    // the owner's clock; unset: the system clock
    // The base as remember() last saw it (a restart): counted, as dead, until seen alive.
    std::vector<counted_member> remembered;
    // Called with the base (every member counted, this node included) whenever it changes
    // (members, their addresses or regions), to be kept for the next start. Called from
    // set_members' thread after the change: set_members must be called from one thread for the
    // calls to come in order.
    std::function<void(const std::vector<counted_member>&)> remember;
    // Seeds are configured: until another member is known, this node is no majority (it has
    // not joined; for all it knows the cluster has many members).
    bool expect_peers = false;
  };
  // Sends message to the member at a gossip address (any thread; best effort).
  using send_fn = std::function<void(const std::string& address, std::string message)>;
  // Runs job on the gossip thread after `after`.
  using post_fn = std::function<void(std::function<void()> job, std::chrono::microseconds after)>;
  // A node's slot of the window counters for a key (rate_limiter's counter key and window).
  struct owner_count {
    uint64_t key = 0;
    uint32_t window_ms = 0;
    uint32_t window = 0;
    uint32_t count = 0;
  };
  // Merges a node's slots into the replicated state (replicated_state::merge_counts).
  using counts_fn = std::function<void(const std::string& node, std::vector<owner_count>)>;

  // What the owner said: a decision, or none (the caller applies on_partition).
  struct outcome {
    bool decided = false;
    limit_decision decision;
  };
  using done_fn = std::function<void(const outcome&)>;

  strict_limiter(options o, rate_limiter& limiter, send_fn send, post_fn post, counts_fn counts);
  ~strict_limiter();
  strict_limiter(const strict_limiter&) = delete;
  strict_limiter& operator=(const strict_limiter&) = delete;

  // Replaces the view of the cluster: every member the membership lists (left ones too), this
  // node included.
  void set_members(std::vector<member_view> members);
  // The members counted for majorities (the base), this node included.
  std::vector<counted_member> counted_members() const;
  // Members an operator declared gone for good (DELETE /cluster/members/{id}), by id with the
  // record's time: not counted while not alive, whatever the majority — the way out when more
  // than half of the counted members will never come back. A forgotten member seen alive counts
  // again (and that record is not applied again). Takes effect at the next set_members.
  void set_forgotten(std::map<std::string, int64_t> forgotten);
  // Called every few tens of ms on the gossip thread: a gap over stall_ms means the process stood
  // still (its view and counts are old), which counts as a view change.
  void tick();

  // Where a key's decision is made: here, at the owner's address, or nowhere (no majority).
  struct location {
    enum kind_t { here, remote, none } kind = none;
    std::string address;
  };
  location locate(uint64_t key, const limit_spec& spec) const;
  // Has the decision made where locate said (here: on this node's gossip thread). done runs
  // once: on the gossip thread, or at once (no decision) when nowhere or too many are waiting.
  void ask(const location& where, uint64_t key, const limit_spec& spec, done_fn done);

  // Stops asking (the node leaves the cluster): asks waiting for an answer, and every ask from
  // now on, end at once with no decision (on_partition decides them). Any thread; idempotent.
  void stop();

  // A packet.direct message from a member (gossip thread): requests, answers or counts.
  void on_message(const std::string& from_id, const std::string& from_address,
                  std::string_view message);

  struct counters {
    std::atomic<uint64_t> decided_here{0};  // decisions made here as the owner (all askers)
    std::atomic<uint64_t> decided_for_others{0};
    std::atomic<uint64_t> asked{0};           // requests sent to other owners
    std::atomic<uint64_t> answered{0};        // ... answered with a decision
    std::atomic<uint64_t> timed_out{0};       // ... not answered in time (or too many waiting)
    std::atomic<uint64_t> not_owner{0};       // ... answered "not the owner" or "handing over"
    std::atomic<uint64_t> no_quorum{0};       // requests with no majority in sight
    std::atomic<uint64_t> takeovers{0};       // keys taken over (count queries sent)
    std::atomic<uint64_t> unacknowledged{0};  // admissions no majority acknowledged in time
    std::atomic<uint64_t> fenced{0};          // counts not acknowledged: the key is fenced
    std::atomic<uint64_t> not_counted{0};     // counts or queries from a member not counted here
    std::atomic<uint64_t> messages_out{0};    // messages sent (asks, answers, counts)
    std::atomic<uint64_t> malformed{0};       // messages that did not decode
  };
  const counters& stats() const { return counters_; }
  // Prometheus lines.
  std::string metrics_text() const;

 private:
  struct view;
  struct pending {
    done_fn done;
    int64_t deadline = 0;
    uint64_t limit = 0;  // for the decision's RateLimit-Limit
  };
  // A request waiting for the gossip thread (a strict_request on the wire).
  struct queued {
    uint32_t id = 0;
    uint64_t key = 0, limit = 0, window_ms = 0;
    uint8_t flags = 0;
    std::string timezone;
    uint32_t timeout_ms = 0;
  };
  // A decision the owner is to make: the asker's id, and where the answer goes ("": here).
  struct owner_request {
    uint32_t id = 0;
    uint64_t key = 0;
    limit_spec spec;
    std::string reply_to;
  };
  struct answer_out;
  struct takeover;
  struct held;
  struct fence {
    std::string owner;  // the node taking the key over
    int64_t until = 0;  // steady ms
  };

  std::shared_ptr<const view> current() const;
  int64_t steady_now() const;
  int64_t unix_now() const;
  bool enqueue(const std::string& address, queued q, pending p);
  void flush();
  void sweep();
  void send_requests(const std::string& address, std::vector<queued> requests);
  limit_spec spec_of(const queued& q);
  void decide_batch(std::vector<owner_request> requests);
  bool taking_over(const owner_request& r, const view& v, int64_t now_ms, int64_t steady);
  void release(std::vector<answer_out> answers);
  void complete(const std::vector<answer_out>& answers);
  void expire_held();
  bool fenced_for(uint64_t key, const std::string& node, int64_t steady);

  options opt_;
  rate_limiter& limiter_;
  send_fn send_;
  post_fn post_;
  counts_fn counts_;
  mutable counters counters_;

  struct base_member {
    std::string address, region;
    bool global = false, regional = false;  // counted for either scope's majorities
    bool operator==(const base_member&) const = default;
  };
  // Rebuilds view_'s scopes from base_ and live_ (view_mu_ held); the first view is a change.
  void rebuild_view(int64_t now, bool first);
  std::vector<counted_member> counted_locked() const;
  // Whether this node sees a majority of the scope's count alive (view_mu_ held).
  bool majority_locked(bool region_only) const;
  // Whether id is counted for some scope (its counts are acknowledged, its queries answered).
  bool counts_member(const std::string& id) const;

  mutable std::mutex view_mu_;
  std::shared_ptr<const view> view_;
  std::map<std::string, base_member> base_;                // by id, this node included
  std::vector<std::pair<std::string, std::string>> live_;  // (id, address; "" for this node)
  bool heard_of_peers_ = false;
  std::map<std::string, int64_t> forgotten_, revived_;  // operator's records; those seen alive
  std::atomic<int64_t> last_tick_{0};

  std::mutex mu_;  // the asking side
  bool stopped_ = false;
  uint32_t next_id_ = 1;
  std::unordered_map<uint32_t, pending> pending_;
  std::multimap<int64_t, uint32_t> deadlines_;
  std::map<std::string, std::vector<queued>> queued_;  // by the owner's address ("": here)
  bool flush_posted_ = false;
  bool sweep_posted_ = false;

  // The owner's side: gossip thread only.
  std::unordered_map<uint64_t, std::unique_ptr<takeover>> takeovers_;
  std::map<uint64_t, std::unique_ptr<held>> held_;  // by ack_seq: admissions awaiting a majority
  uint64_t next_ack_seq_ = 1;
  std::unordered_map<uint64_t, fence> fences_;
  std::map<std::string, std::shared_ptr<const month_calendar>> zones_;  // by time zone
};

}  // namespace meridian::node
