#pragma once
// Strict rate limits (`mode: strict`): exact across the cluster, at the price of asking.
//
// Every key of a strict limit has one owner: the member of the limit's scope (all members, or
// the node's region) with the highest rendezvous score for the key among the live ones. The
// owner decides with its own table (rate_limiter::check on a strict spec: no leases) and is final;
// its admissions count in its slot of the replicated counters, so whoever owns a key next starts
// from them. Any other node asks the owner (ask): requests for the same owner wait for the
// gossip thread, which sends whatever has gathered meanwhile as one message (at most max_batch
// requests; the window is the time the thread takes to get to it: nothing under light load, tens
// of microseconds under heavy load), sealed like every gossip packet (gossip_node::send_direct).
//
// No decision (the caller applies the limit's on_partition) when
//   * this node sees no majority of the scope's members alive (a partition's minority side, or a
//     node whose process stood still: see tick) — so two sides of a partition never both decide;
//   * the owner does not answer within the limit's strict_timeout;
//   * the owner answers that it is not the owner (the two views differ for a moment) or that it is
//     taking the key over: a node that becomes a key's owner (a member joined, left, died or came
//     back) waits `handover_ms` before deciding it, so that the previous owner's admissions
//     (flushed at once: the urgent gossip round) have reached it.
//
// Thread-safety: locate, decide_here and ask from any worker; on_message, tick and the jobs
// handed to `post` on the host's gossip thread; set_members from any thread.

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
  // A member of the cluster that has not left (alive or not).
  struct member_view {
    std::string id;
    std::string address;  // gossip address, where asks go
    std::string region;
    bool alive = true;
  };
  struct options {
    std::string self_id;
    std::string region;
    int64_t handover_ms = 1000;    // a new owner waits this long before deciding a key
    size_t max_batch = 32;         // requests per message (within gossip_node::max_direct_bytes)
    size_t max_pending = 1 << 16;  // asks in flight; beyond, asks fail at once (on_partition)
    // The process stood still (SIGSTOP, a stalled host) when ticks are this far apart: its view
    // is old, so it decides nothing until ticks resume and then hands every key over.
    int64_t stall_ms = 1000;
    std::function<int64_t()> steady_ms;  // unset: std::chrono::steady_clock
    std::function<int64_t()> unix_ms;    // the owner's clock for asks; unset: the system clock
  };
  // Sends message to the member at a gossip address (any thread; best effort).
  using send_fn = std::function<void(const std::string& address, std::string message)>;
  // Runs job on the gossip thread after `after`.
  using post_fn = std::function<void(std::function<void()> job, std::chrono::microseconds after)>;

  // What the owner said: a decision, or none (the caller applies on_partition).
  struct outcome {
    bool decided = false;
    limit_decision decision;
  };
  using done_fn = std::function<void(const outcome&)>;

  strict_limiter(options o, rate_limiter& limiter, send_fn send, post_fn post);
  ~strict_limiter();
  strict_limiter(const strict_limiter&) = delete;
  strict_limiter& operator=(const strict_limiter&) = delete;

  // Replaces the view of the cluster: every member that has not left, this node included.
  void set_members(std::vector<member_view> members);
  // Called every few tens of ms on the gossip thread: a gap over stall_ms means the process stood
  // still (its view and counts are old), which counts as a view change.
  void tick();

  // Where a key's decision is made: here, at the owner's address, or nowhere (no quorum).
  struct location {
    enum kind_t { here, remote, none } kind = none;
    std::string address;
  };
  location locate(uint64_t key, const limit_spec& spec) const;
  // Decides a key this node owns (locate said here) and counts an admission. No decision while
  // the key is being handed over to this node.
  outcome decide_here(uint64_t key, const limit_spec& spec, int64_t now_ms, unsigned worker);
  // Asks the owner at address; done runs once, on the gossip thread (or inline when the ask
  // cannot be sent), with the answer or with no decision after spec.strict_timeout_ms.
  void ask(const std::string& address, uint64_t key, const limit_spec& spec, done_fn done);

  // A packet.direct message from a member (gossip thread): asks to decide, or answers.
  void on_message(const std::string& from_address, std::string_view message);

  struct counters {
    std::atomic<uint64_t> decided_here{0};  // decisions made here as the owner (all askers)
    std::atomic<uint64_t> decided_for_others{0};
    std::atomic<uint64_t> asked{0};         // requests sent to owners
    std::atomic<uint64_t> answered{0};      // ... answered with a decision
    std::atomic<uint64_t> timed_out{0};     // ... not answered in time
    std::atomic<uint64_t> not_owner{0};     // ... answered "not the owner" or "handing over"
    std::atomic<uint64_t> no_quorum{0};     // requests with no majority in sight
    std::atomic<uint64_t> messages_out{0};  // batches sent (asks and answers)
    std::atomic<uint64_t> malformed{0};     // messages that did not decode
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
  struct queued {  // an ask waiting for the gossip thread (a strict_request on the wire)
    uint32_t id = 0;
    uint64_t key = 0, limit = 0, window_ms = 0;
    uint8_t flags = 0;
    std::string timezone;
  };
  std::shared_ptr<const view> current() const;
  int64_t steady_now() const;
  void flush();
  void sweep();
  void send_requests(const std::string& address, std::vector<queued> requests);

  options opt_;
  rate_limiter& limiter_;
  send_fn send_;
  post_fn post_;
  mutable counters counters_;

  mutable std::mutex view_mu_;
  std::shared_ptr<const view> view_;
  std::atomic<int64_t> last_tick_{0};

  std::mutex mu_;  // the asking side
  uint32_t next_id_ = 1;
  std::unordered_map<uint32_t, pending> pending_;
  std::multimap<int64_t, uint32_t> deadlines_;
  std::map<std::string, std::vector<queued>> queued_;  // by the owner's address
  bool flush_posted_ = false;
  bool sweep_posted_ = false;

  std::mutex zones_mu_;  // calendars of requests for month windows, by time zone
  std::map<std::string, std::shared_ptr<const month_calendar>> zones_;
};

}  // namespace meridian::node
