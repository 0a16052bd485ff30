#pragma once
// The membership protocol's messages as plain C++ values. The SWIM core (membership.h) speaks
// these; wire.h turns them into sealed bytes (Thrift compact protocol inside XChaCha20-Poly1305)
// and back. Keeping them free of Thrift lets the simulator run the real protocol without
// encoding every message.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace meridian::cluster {

// Bumped on any incompatible change; carried in every packet and stream and bound into the
// encryption's associated data, so a node never misreads another version's bytes.
inline constexpr uint16_t protocol_version = 1;

enum class member_state : uint8_t { alive = 0, suspect = 1, dead = 2, left = 3 };

// Returns "alive", "suspect", "dead" or "left".
const char* to_string(member_state s);

// Who a member is and where to reach it. address is "host:port" (gossip UDP and TCP).
struct member_info {
  std::string id;
  std::string address;
  std::string region;
  std::string zone;
  bool operator==(const member_info&) const = default;
};

// A claim about one member: state at an incarnation. Higher incarnation wins; at equal
// incarnation dead/left > suspect > alive. `from` names the member that made the claim.
struct member_update {
  member_info member;
  uint64_t incarnation = 0;
  member_state state = member_state::alive;
  std::string from;
  bool operator==(const member_update&) const = default;
};

// Direct probe. The target answers with an ack carrying the same seq.
struct ping_msg {
  uint64_t seq = 0;
  std::string
      target_id;  // so a node reached at a reused address can refuse a ping meant for another
  bool operator==(const ping_msg&) const = default;
};

// Indirect probe: "ping target for me and relay the answer" (SWIM ping-req).
struct ping_req_msg {
  uint64_t seq = 0;
  std::string target_id;
  std::string target_address;
  bool operator==(const ping_req_msg&) const = default;
};

struct ack_msg {
  uint64_t seq = 0;
  // The acker's wall clock (Unix ms) when it answered a direct ping; 0: not sent (relayed acks,
  // older nodes). With the probe's send and receive times it measures the clocks' offset.
  int64_t wall_ms = 0;
  bool operator==(const ack_msg&) const = default;
};

// Lifeguard: the relay of a ping-req says it got no answer, so the asker can tell a dead
// target from a bad path to the relay.
struct nack_msg {
  uint64_t seq = 0;
  bool operator==(const nack_msg&) const = default;
};

// When, in which process life and in what order a sender sent a message (replay_guard.h). The
// transport (gossip_node) stamps every packet and state_sync it sends and refuses replays; all
// zero: unstamped (the simulator and the SWIM core leave it so).
struct send_stamp {
  int64_t sent_ms = 0;  // sender's wall clock, Unix ms
  uint64_t boot = 0;    // random per process start, never 0
  uint64_t seq = 0;     // 1, 2, 3, ... per boot and channel (UDP and TCP count separately)
  bool operator==(const send_stamp&) const = default;
};

// One datagram: the sender, any control messages, and piggybacked member updates. `payloads`
// carries opaque application messages (replicated state deltas) that ride the same packets.
struct packet {
  uint16_t version = protocol_version;
  std::string sender_id;
  std::string sender_address;
  std::vector<ping_msg> pings;
  std::vector<ping_req_msg> ping_reqs;
  std::vector<ack_msg> acks;
  std::vector<nack_msg> nacks;
  std::vector<member_update> updates;
  std::vector<std::string> payloads;
  std::string summary;  // the sender's application summary (gossip_application), may be empty
  send_stamp stamp;
  // Application messages for the receiver alone, sent at once (gossip_node::send_direct): never
  // relayed or deduplicated, unlike payloads.
  std::vector<std::string> direct;
  bool operator==(const packet&) const = default;
};

// Push-pull anti-entropy over TCP: each side sends its full member table; `join` marks the
// first exchange of a joining node. `app_state` is opaque application state (digests, later).
struct state_sync {
  uint16_t version = protocol_version;
  std::string sender_id;
  bool join = false;
  std::vector<member_update> members;
  std::string app_state;
  send_stamp stamp;
  bool operator==(const state_sync&) const = default;
};

// Strict rate limits (strict_limiter.h): a node asks a key's owner to decide, in batches; the
// owner answers in a batch of its own. Travels as one packet.direct entry.
struct strict_request {
  uint32_t id = 0;  // the asker's, echoed in the answer
  uint64_t key = 0;
  uint64_t limit = 0;
  uint64_t window_ms = 0;
  uint8_t flags = 0;        // strict_flag_*
  std::string timezone;     // calendar months only
  uint32_t timeout_ms = 0;  // how long the asker waits; 0: not said
  bool operator==(const strict_request&) const = default;
};
inline constexpr uint8_t strict_flag_sliding = 1, strict_flag_region = 2, strict_flag_month = 4,
                         strict_flag_count = 8;

enum class strict_result : uint8_t {
  admitted = 0,
  refused = 1,
  not_owner = 2,
  handing_over = 3,
  counted = 4,  // the answer to a count query: count and window are set
};

struct strict_answer {
  uint32_t id = 0;
  strict_result result = strict_result::refused;
  uint64_t remaining = 0;
  uint64_t reset_ms = 0;
  uint64_t retry_after_ms = 0;
  uint64_t count = 0;   // counted only
  uint32_t window = 0;  // counted only
  bool operator==(const strict_answer&) const = default;
};

// A node's slot of the window counters for a key: an owner's after it admitted, or any node's
// in the answer to a count query.
struct strict_count {
  uint64_t key = 0;
  uint32_t window_ms = 0;
  uint32_t window = 0;
  uint32_t count = 0;
  std::string origin;  // whose slot; empty: the sender's
  bool operator==(const strict_count&) const = default;
};

struct strict_batch {
  uint16_t version = protocol_version;
  std::vector<strict_request> requests;
  std::vector<strict_answer> answers;
  std::vector<strict_count> counts;
  uint64_t ack_seq = 0;  // set: the receiver acknowledges the counts with it
  std::vector<uint64_t> acks;
  bool operator==(const strict_batch&) const = default;
};

}  // namespace meridian::cluster
