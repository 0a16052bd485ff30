#pragma once
// SWIM membership with Lifeguard's refinements, as a deterministic state machine.
//
// The class owns no threads, sockets or clocks: time, randomness and the network come from an
// `environment`, so the same code runs on real UDP/TCP (transport.h) and in the simulator
// (chaos/sim) on a fake clock and a lossy fake network. Not thread-safe: the host calls every
// method from one thread (an io_context thread, or the simulator loop).
//
// Driving it: call tick() whenever now() reaches next_wakeup() (calling more often is harmless);
// hand every authenticated packet to on_packet(); serve push-pull with on_state_request() and
// deliver replies with on_state_reply().

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "meridian/cluster/messages.h"

namespace meridian::cluster {

using millis = std::chrono::milliseconds;  // time since an arbitrary origin (steady)

struct swim_config {
  millis probe_interval{1000};
  millis probe_timeout{500};     // direct ack deadline; the round's indirect probes get the rest
  millis cross_region_extra{0};  // added to probe_timeout for members in other regions (at least:
                                 // the measured round trip to the member's region is added when
                                 // larger, see membership::region_rtt)
  uint32_t indirect_checks = 3;  // k members asked to ping-req a target
  uint32_t suspicion_mult = 4;   // suspicion timeout = mult * log10(N) * probe_interval (min)
  uint32_t suspicion_max_mult =
      6;                         // upper bound multiplier (Lifeguard), shrinks with confirmations
  uint32_t retransmit_mult = 4;  // an update is piggybacked retransmit_mult * log10(N+1) times
  millis gossip_interval{200};
  uint32_t gossip_nodes = 3;
  millis push_pull_interval{30000};
  uint32_t awareness_max = 8;       // Lifeguard local health multiplier ceiling
  millis dead_reap_after{3600000};  // dead/left members forgotten after this (tombstones)
  millis join_retry_max{30000};     // seed retry backoff ceiling
  size_t max_packet_bytes = 1200;
  bool lifeguard = true;  // off: plain SWIM (for comparisons)
  // Push-pull with one known dead member this often, so partitions heal without an operator.
  millis dead_probe_interval{30000};
  // Dead members stay gossip targets this long, so they learn they were declared dead.
  millis gossip_to_dead{30000};
  // Anti-entropy budget: the push-pull interval stretches so that sending this node's member
  // table (both ways) costs at most this many bytes per second on average.
  uint32_t push_pull_bytes_per_s = 256;
  // The member table's cap (members other than self): new members beyond it replace the oldest
  // tombstone or are refused.
  size_t max_members = 16384;
  // When the direct probe times out, also push-pull with the target over TCP (memberlist's TCP
  // fallback ping): a reply counts as an ack, so a node whose UDP is dropped is not declared dead.
  bool tcp_fallback = true;
  // How often the application (gossip_application) is asked for deltas to piggyback.
  millis app_delta_interval{100};
  // Reachability confirmation (member::unconfirmed): for this long after one of this node's own
  // probes fails, alive members not heard from for a probe interval are pinged (at most 8 per
  // probe interval, the longest silent first). 0: never.
  millis confirm_for{30000};
};

struct member {
  member_info info;
  uint64_t incarnation = 0;
  member_state state = member_state::alive;
  millis state_since{0};
  // Alive by SWIM, but a confirmation ping this node sent after one of its own probes failed went
  // unanswered, and nothing has come from the member since. SWIM suspects members one probe
  // at a time (one per pass over the table, stretched by Lifeguard when this node's own probes
  // fail), so a node cut off from several members learns of them seconds apart; this says so in
  // one probe timeout. Not gossiped and not a SWIM state: a view for rate limits that split a
  // quota by the members a node can reach.
  bool unconfirmed = false;
};

// What the membership needs from the world. Implemented by the real transport and by the
// simulator.
class environment {
 public:
  virtual ~environment() = default;
  virtual millis now() = 0;
  // The node's wall clock (Unix ms), compared across nodes to measure clock offsets; 0 when the
  // environment has none (offsets are then not measured).
  virtual int64_t wall_ms() { return 0; }
  virtual uint64_t random() = 0;
  // Sends one datagram (best effort). The packet respects max_packet_bytes when encoded.
  virtual void send_packet(const std::string& address, const packet& p) = 0;
  // Starts a push-pull exchange with address; the reply, if any, comes to on_state_reply().
  virtual void send_state(const std::string& address, const state_sync& s) = 0;
  // Told about every change of a member's state (including self refutations).
  virtual void on_member_change(const member& m) {}
  // Told when a member's `unconfirmed` changes.
  virtual void on_reachability_change(const member& m) {}
};

// Application state that rides the membership protocol: replicated_state implements it. The
// membership calls it on its own thread (see class membership), never re-entrantly.
class gossip_application {
 public:
  virtual ~gossip_application() = default;
  // Returns a short summary of the local state (a digest) for every outgoing packet; "" = none.
  virtual std::string summary() = 0;
  // A packet from member `from` carried its summary. Returns true when this node should start a
  // push-pull with that member now (the states differ, and deltas have not fixed it).
  virtual bool on_summary(const std::string& from, const std::string& summary, millis now) = 0;
  // Returns delta payloads to piggyback from now on (called every app_delta_interval). room is
  // how many more payloads the gossip can carry before the next call without queueing them
  // behind one another; payloads that can wait (counters, which coalesce) should stay within
  // it, so a backlog waits in the application, where it can be prioritised, not in the queue.
  virtual std::vector<std::string> take_deltas(millis now, size_t room) = 0;
  // The next take_deltas is for an urgent round (urgent_application_round): it should hand over
  // what it would otherwise hold back for its own cadence (counters between sync intervals).
  virtual void expedite() {}
  // A payload (another node's delta, first time seen) arrived.
  virtual void on_payload(const std::string& from, const std::string& payload) = 0;
  // Returns the app_state of a push-pull this node starts.
  virtual std::string sync_request() = 0;
  // Serves a push-pull: merges the asker's app_state and returns the reply's.
  virtual std::string on_sync_request(const std::string& from, const std::string& app_state) = 0;
  // Merges the app_state of a push-pull reply. Returns true when the exchange left work (the
  // reply was cut short by its budget, or showed documents to ask for or hand over): the
  // membership then starts another push-pull with `from` at once.
  virtual bool on_sync_reply(const std::string& from, const std::string& app_state) = 0;
};

struct membership_stats {
  uint64_t probes = 0;
  uint64_t indirect_probes = 0;
  uint64_t suspicions = 0;   // members this node started suspecting
  uint64_t refutations = 0;  // times this node refuted a suspicion of itself
  uint64_t packets_sent = 0;
  uint64_t packets_received = 0;
  uint64_t push_pulls = 0;
  uint64_t members_refused = 0;  // new members refused because the table was full
  uint64_t app_syncs = 0;        // push-pulls started because application summaries differed
  uint64_t app_followups = 0;    // push-pulls chained at once because a reply left work
  uint64_t tcp_probes = 0;       // TCP fallback probes (push-pulls with a probe's target)
  uint64_t tcp_acks = 0;         // probes answered only over TCP
  uint64_t confirm_pings = 0;    // pings to quiet members after a failed probe (confirm_for)
  uint64_t unconfirmed = 0;      // times a member became unconfirmed
};

class membership {
 public:
  // incarnation: the node's starting incarnation (persisted generation, so a restarted node
  // outranks claims about its previous life).
  membership(member_info self, uint64_t incarnation, swim_config config, environment& env);
  ~membership();
  membership(const membership&) = delete;
  membership& operator=(const membership&) = delete;

  // Starts joining through seeds (addresses); retried with backoff until one answers.
  void join(std::vector<std::string> seeds);
  // Announces `left` and stops probing.
  void leave();
  // Loads a member table (a persisted one, or a simulator's bootstrap) without gossiping it or
  // telling the environment. Entries about self are ignored.
  void restore(const std::vector<member_update>& table);

  void tick();
  millis next_wakeup() const;

  void on_packet(const packet& p);
  // Push-pull, serving side: merges the request and returns this node's table.
  state_sync on_state_request(const state_sync& request);
  // Push-pull, asking side: merges the reply.
  void on_state_reply(const state_sync& reply);

  // Attaches the application whose deltas, summaries and sync state ride this membership
  // (nullptr detaches). The application must outlive the membership or be detached first.
  void set_application(gossip_application* app);
  // Takes the application's pending deltas now (instead of at the next app_delta_interval), so
  // a change made outside the membership's thread goes out on the next gossip round.
  void pull_application_deltas();
  // Takes the application's pending deltas and, if that made any and no urgent round went in
  // the last min_gap, sends a gossip round now rather than on the next gossip_interval (rate
  // limits near their limit: every ms of delay is requests admitted on stale counts).
  void urgent_application_round(millis min_gap);

  // Queues an opaque application payload to piggyback on outgoing packets (best effort).
  void broadcast_payload(std::string payload);
  // Called for every payload received.
  void set_payload_handler(std::function<void(const std::string& from, const std::string&)> h);

  const member& self() const;
  // Every known member including self, dead and left ones until reaped.
  std::vector<member> members() const;
  // Lifeguard local health score (0 = healthy).
  uint32_t local_health() const;
  const membership_stats& stats() const;
  // The measured round trip to each other region (ms, an EWMA of direct probe acks). A probe of
  // a member in another region waits probe_timeout + max(cross_region_extra, this), so distant
  // regions are not suspected for being far away.
  std::map<std::string, double> region_rtt() const;
  // The measured offset of each member's wall clock from this node's (ms; positive: the member's
  // clock is ahead); unreachable members keep their last measurement, members that left are
  // dropped. From direct probe acks: the member's clock at its answer against
  // the midpoint of the probe's send and receive (NTP's estimate, off by at most half the round
  // trip's asymmetry), smoothed. Members not measured yet are absent.
  std::map<std::string, double> clock_offsets() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// The cluster's time as seen from one node: the median of every clock (this node's, offset 0,
// and each measured member's), as an offset from this node's clock in ms. A node whose clock is
// off agrees with the majority once it adds this; the others get about 0.
int64_t median_clock_correction(const std::map<std::string, double>& offsets);

// Returns an upper bound of the Thrift compact encoding's size (unsealed), from string sizes
// and per-field overhead; used to fill packets up to max_packet_bytes and by the simulator.
size_t estimate_size(const member_update& u);
size_t estimate_size(const packet& p);
size_t estimate_size(const state_sync& s);

}  // namespace meridian::cluster
