#pragma once
// A deterministic simulator for the membership protocol: a fake clock (an event queue ordered
// by time, ties broken by insertion order), a fake network (per-link loss, delay and jitter,
// one-way and full partitions, slow nodes) and node faults (pause, kill, restart), all drawing
// randomness from one seeded PRNG, so a seed reproduces a run exactly. It runs the real
// `cluster::membership` code; nodes are woken only at their next_wakeup(), so a 1,000-node
// cluster costs events, not milliseconds.
//
// Single-threaded: create it, add nodes, script faults with at(), then run_until().

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "meridian/cluster/membership.h"

namespace meridian::sim {

using cluster::millis;

// xoshiro256** seeded through splitmix64: fast, and the same sequence on every platform.
class prng {
 public:
  explicit prng(uint64_t seed);
  uint64_t next();
  // Returns a double uniform in [0, 1).
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }
  uint64_t below(uint64_t n) { return n ? next() % n : 0; }

 private:
  uint64_t s_[4];
};

// One direction of a link between two nodes.
struct link_faults {
  double loss = 0;   // probability that a datagram is dropped
  millis delay{1};   // base one-way latency
  millis jitter{0};  // plus uniform [0, jitter]
  bool blocked = false;
};

class simulator {
 public:
  enum class pause_mode { drop, queue };  // what happens to packets sent to a paused node

  explicit simulator(uint64_t seed);
  ~simulator();
  simulator(const simulator&) = delete;
  simulator& operator=(const simulator&) = delete;

  // ---- network ----
  // Sets the link used between nodes without an override; cross-region pairs use `cross`.
  void set_default_links(link_faults same_region, link_faults cross_region);
  // Overrides one direction from -> to.
  void set_link(size_t from, size_t to, link_faults l);
  // Drops everything from -> to (one-way partition).
  void block(size_t from, size_t to);
  // Splits the cluster: side and everyone else cannot talk at all.
  void partition(const std::vector<size_t>& side);
  // Removes partitions, blocks and overrides.
  void heal();
  // Makes node i slow: every packet to or from it waits an extra uniform [0, max_extra] (a
  // starved CPU or a saturated NIC); 0 makes it healthy again.
  void set_slow(size_t i, millis max_extra);
  // Sets node i's wall clock ahead (or, negative, behind) of true time by skew. Every node's
  // wall clock is the simulated time since a fixed Unix epoch plus its skew.
  void set_clock_skew(size_t i, millis skew);

  // ---- nodes ----
  // Adds a running node (not joined: call join(), or bootstrap() for a converged start).
  size_t add_node(cluster::member_info info, uint64_t incarnation, cluster::swim_config config);
  // Gives every running node the full table of running nodes as alive (a converged cluster).
  void bootstrap();
  void join(size_t i, std::vector<std::string> seeds);
  cluster::membership& node(size_t i);
  // Re-reads node i's next_wakeup() after the caller drove it directly (broadcast_payload,
  // leave, ...).
  void touch(size_t i) { reschedule(i, false); }
  const cluster::member_info& info(size_t i) const;
  size_t size() const { return nodes_.size(); }
  bool running(size_t i) const;  // not killed (paused nodes are running)
  bool paused(size_t i) const;
  bool slow(size_t i) const;
  // Stops ticking and receiving; packets to it are dropped or queued until resume().
  void pause(size_t i, pause_mode mode = pause_mode::drop);
  void resume(size_t i);
  // Crashes the node: its state is lost, packets to it vanish.
  void kill(size_t i);
  // Starts the node again with a fresh membership at `incarnation`, joining through seeds.
  void restart(size_t i, uint64_t incarnation, std::vector<std::string> seeds);

  // ---- time ----
  millis now() const { return now_; }
  // Runs f at time t (scripted faults and checks).
  void at(millis t, std::function<void()> f);
  void run_until(millis t);
  // Runs until done() holds (checked every `step` of simulated time) or deadline; returns done().
  bool run_until(const std::function<bool()>& done, millis deadline, millis step = millis(10));

  // ---- observation ----
  std::function<void(size_t observer, const cluster::member&)> on_member_change;
  std::function<void(size_t observer, const std::string& from, const std::string& payload)>
      on_payload;
  uint64_t bytes_sent(size_t i) const;
  uint64_t total_bytes_sent() const;
  uint64_t packets_delivered() const { return delivered_; }
  uint64_t events() const { return events_; }
  prng& random() { return rng_; }

 private:
  struct node_state;
  struct node_env;
  struct event;
  struct event_order {
    bool operator()(const event& a, const event& b) const;
  };

  void push(event e);
  void reschedule(size_t i, bool after_tick);
  void route_packet(size_t from, const std::string& address, const cluster::packet& p);
  void route_state(size_t from, const std::string& address, const cluster::state_sync& s);
  bool link_for(size_t from, size_t to, link_faults* out) const;
  millis latency(const link_faults& l, size_t from, size_t to);
  void deliver(event& e);
  void start_node(size_t i, uint64_t incarnation);

  prng rng_;
  millis now_{0};
  uint64_t seq_ = 0;
  uint64_t delivered_ = 0;
  uint64_t events_ = 0;
  std::vector<std::unique_ptr<node_state>> nodes_;
  std::unordered_map<std::string, size_t> by_address_;
  link_faults same_region_{};
  link_faults cross_region_{};
  std::unordered_map<uint64_t, link_faults> overrides_;
  std::vector<uint8_t> side_;
  bool partitioned_ = false;
  struct event_queue;
  std::unique_ptr<event_queue> queue_;
};

}  // namespace meridian::sim
