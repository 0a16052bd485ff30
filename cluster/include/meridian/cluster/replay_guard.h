#pragma once
// Replay protection for authenticated gossip. Sealing (wire.h) proves a packet came from a key
// holder, not that it is new: without this, a datagram or push-pull frame recorded 15 minutes ago
// (a member's old "alive", a stale config delta) is acted on again when an attacker resends it.
//
// Every packet and state_sync carries a send_stamp (messages.h): the sender's wall clock, a
// random id of the sender's process life (boot) and a sequence number that the sender increases
// by one per message. A message is accepted once, and only when
//   * its stamp is set (unstamped messages come only from a replay of a pre-stamp version or a
//     broken sender);
//   * its wall clock is within `window` of this node's (both ways: also bounds clock skew);
//   * its sequence number was not seen before for that sender and boot and is within the last
//     `seq_window` numbers the sender used (IPsec-style sliding bitmap, RFC 4303 §3.4.3), so
//     reordered datagrams still pass.
// A (sender, boot) entry is forgotten only once its newest stamp is older than the window, when
// every message it could have covered is refused by the clock check anyway; the table holds at
// most `max_entries` (only authenticated senders create entries) and refuses a new one when full.
//
// Not thread-safe: the gossip thread owns it.

#include <array>
#include <chrono>
#include <cstdint>
#include <string>
#include <unordered_map>

#include "meridian/cluster/messages.h"

namespace meridian::cluster {

enum class replay_verdict {
  fresh,       // accept (and now remembered)
  unstamped,   // no stamp
  stale,       // sent too long ago, or in the future, by this node's clock
  repeated,    // this sender and boot already used that sequence number
  too_old,     // behind the sender's newest sequence number by more than the window
  table_full,  // a new sender or boot while max_entries are live
};
const char* to_string(replay_verdict v);

class replay_guard {
 public:
  static constexpr uint64_t seq_window = 1024;

  explicit replay_guard(std::chrono::milliseconds window = std::chrono::seconds(30),
                        size_t max_entries = 4096);

  // Checks (and, when fresh, records) one message from sender at now_ms (Unix ms).
  replay_verdict check(const std::string& sender, const send_stamp& s, int64_t now_ms);

  size_t entries() const { return entries_.size(); }
  std::chrono::milliseconds window() const { return window_; }

 private:
  struct entry {
    uint64_t highest = 0;                          // newest sequence number seen
    int64_t newest_ms = 0;                         // newest sent_ms seen
    std::array<uint64_t, seq_window / 64> seen{};  // bit i: highest - i seen
  };
  void purge(int64_t now_ms);

  std::chrono::milliseconds window_;
  size_t max_entries_;
  std::unordered_map<std::string, entry> entries_;  // key: sender id, '\0', boot (8 bytes)
};

}  // namespace meridian::cluster
