#pragma once
// A cluster member on real sockets: the SWIM membership (membership.h) driven by its own thread
// and io_context, speaking sealed packets (wire.h) over UDP and push-pull over TCP on the same
// port. The node's incarnation is persisted in storage so a restart refutes its old death.
//
// Usage: fill gossip_options, start(), read members() from any thread, stop(true) to leave the
// cluster gracefully (others see `left`, not `dead`). All public methods are thread-safe.

#include <atomic>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "meridian/cluster/keyring.h"
#include "meridian/cluster/membership.h"

namespace meridian::storage {
class store;
}

namespace meridian::cluster {

struct gossip_options {
  member_info self;  // self.address is the advertised "host:port"
  std::string bind_host = "127.0.0.1";
  uint16_t bind_port = 7946;  // 0: any free port (advertised address then uses it)
  std::vector<std::string> seeds;
  std::vector<cluster_key> keys;  // primary first
  std::string label = "meridian";
  swim_config swim;
  // The node's wall clock (Unix ms) for clock-offset measurement; unset: the system clock.
  std::function<int64_t()> wall_ms;
  // Application state riding the gossip (replicated_state); must outlive the gossip_node.
  gossip_application* app = nullptr;
  // Inbound push-pull streams (TCP), all bounded: at most this many at once (beyond it the
  // oldest one still waiting for its first frame is dropped, else the new one); a peer must
  // deliver its whole sealed frame within first_frame_timeout of connecting; frames over one
  // sealed message (wire.h max_encoded_size + seal_overhead) are refused from the length prefix,
  // and buffers grow only as bytes arrive, within max_inbound_bytes over all streams.
  size_t max_inbound_streams = 64;
  std::chrono::milliseconds first_frame_timeout{2000};
  size_t max_inbound_bytes = 8 * 1024 * 1024;
  // Replay protection (replay_guard.h): a message stamped further than this from the node's wall
  // clock, either way, is refused, as is one whose sequence number was seen before. Members'
  // clocks must agree within it.
  std::chrono::milliseconds replay_window{30000};
  // Receives packet.direct messages (send_direct) on the gossip thread: the sender's id and
  // advertised address, and the message. Unset: they are dropped.
  std::function<void(const std::string& from_id, const std::string& from_address,
                     std::string message)>
      on_direct;
  // Called on the gossip thread after a member's state or its `unconfirmed` changed (not for
  // self): members() then returns the new view. Must not block.
  std::function<void()> on_view_change;
};

// Counters of the transport, readable from any thread.
struct gossip_counters {
  std::atomic<uint64_t> packets_in{0};
  std::atomic<uint64_t> packets_out{0};
  std::atomic<uint64_t> bytes_in{0};
  std::atomic<uint64_t> bytes_out{0};
  std::atomic<uint64_t> auth_failures{0};    // sealed with a key we do not hold (or tampered)
  std::atomic<uint64_t> malformed{0};        // authenticated but undecodable, or wrong version
  std::atomic<uint64_t> replays_refused{0};  // authenticated, but seen before (replay_guard.h)
  std::atomic<uint64_t> stale_refused{0};    // authenticated, but unstamped or outside the window
  std::atomic<uint64_t> direct_in{0};        // packet.direct messages received (authenticated)
  std::atomic<uint64_t> direct_out{0};       // ... and sent (send_direct)
  std::atomic<uint64_t> push_pulls_in{0};
  std::atomic<uint64_t> push_pulls_out{0};
  std::atomic<uint64_t> streams_refused{0};    // inbound streams dropped at the stream cap
  std::atomic<uint64_t> streams_timed_out{0};  // inbound streams without a frame in time
  std::atomic<uint64_t> streams_oversized{0};  // frames announced over the limit, or over budget
  std::atomic<uint64_t> streams_active{0};     // inbound streams open now (a gauge)
};

class gossip_node {
 public:
  // store may be null (no persistence: incarnation starts at the wall-clock second).
  gossip_node(gossip_options options, storage::store* store);
  ~gossip_node();
  gossip_node(const gossip_node&) = delete;
  gossip_node& operator=(const gossip_node&) = delete;

  // Binds UDP and TCP, starts the thread and joins through the seeds. Returns false and sets
  // *error when the port cannot be bound.
  bool start(std::string* error);
  // Stops; with leave=true first announces `left` and gives it a moment to spread.
  void stop(bool leave);

  // Replaces the keyring (primary first): what this node sends is sealed with the new primary
  // from the next packet on; every key in the new set is tried on receive. Takes effect on the
  // gossip thread before the call returns (or within a second when the thread is busy).
  void set_keys(std::vector<cluster_key> keys);

  // Sends the application's pending deltas on the next gossip round instead of waiting for the
  // next app_delta_interval (call after a local write). Returns at once.
  void flush_application();
  // The same, and the deltas leave at once in a gossip round of their own (at most one such
  // round every 5 ms). Returns at once.
  void flush_application_now();

  // Sends message to the member at address in a datagram of its own, at once (sealed and
  // stamped like every packet; best effort: no retry). From any thread; from the gossip thread
  // (an on_direct handler, a posted job) it goes before the call returns. Messages over
  // max_direct_bytes are dropped: callers batch within it.
  void send_direct(const std::string& address, std::string message);
  static constexpr size_t max_direct_bytes = 1200;
  // Runs job on the gossip thread, after `after` (0: as soon as the thread gets to it). Jobs
  // posted once stop() began never run.
  void post(std::function<void()> job, std::chrono::microseconds after = {});

  uint16_t port() const;
  member self() const;
  std::vector<member> members() const;
  membership_stats stats() const;
  uint32_t local_health() const;
  std::map<std::string, double> region_rtt() const;     // membership::region_rtt
  std::map<std::string, double> clock_offsets() const;  // membership::clock_offsets
  const gossip_counters& counters() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace meridian::cluster
