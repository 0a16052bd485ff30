#pragma once
// A circuit breaker for one upstream target, shared by every worker of the node.
//
// closed -> open when, over the sliding `window`, at least `min_requests` requests ended and the
// share that failed (connect errors, timeouts, resets, 5xx) reaches `failure_rate`. open lasts
// `open_for`, doubled on each consecutive trip (at most 16x). Then half_open: at most
// `half_open_probes` requests go through (only on the node that owns the probing, for region and
// cluster scope); a probe that succeeds closes the breaker, one that fails opens it again.
//
// With scope region or cluster the node publishes its transitions through the replicated state
// (docs/architecture.md, "Circuit breaking") and adopts the ones other nodes publish, so every
// node avoids a target one of them saw failing.
//
// Thread-safety: every method may be called from any thread; a closed breaker answers allow()
// with one relaxed atomic load.

#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>

#include "meridian/config/config.h"

namespace meridian::node {

enum class breaker_state : uint8_t { closed = 0, open = 1, half_open = 2 };
const char* to_string(breaker_state s);
bool breaker_state_from(std::string_view name, breaker_state* out);

// A breaker's state as published and shown by GET /breakers. Times are Unix ms.
struct breaker_view {
  breaker_state state = breaker_state::closed;
  int64_t since_ms = 0;
  int64_t until_ms = 0;  // open: when probing may start
  std::string origin;    // the node whose observation set this state
  uint32_t trips = 0;    // consecutive trips (open_for grows with them)
};

class circuit_breaker {
 public:
  // Returns true when a request may be sent to the target at now_ms. may_probe: this node may
  // send half-open probes. No side effects (a balancer may ask about several targets).
  bool allow(int64_t now_ms, const circuit_breaker_config& cfg, bool may_probe) const;
  // The chosen target is about to get a request: returns false when it may not after all (the
  // probes of this period are taken). Sets *probe when the request is a half-open probe.
  bool on_dispatch(int64_t now_ms, const circuit_breaker_config& cfg, bool may_probe, bool* probe);
  // Records a request's outcome. Returns true when the state changed (the caller publishes it).
  bool record(bool success, bool probe, int64_t now_ms, const circuit_breaker_config& cfg,
              const std::string& self);
  // Sets the state from an active health check's verdict: unhealthy opens it (as a trip),
  // healthy closes it. Returns true when the state changed.
  bool force(bool healthy, int64_t now_ms, const circuit_breaker_config& cfg,
             const std::string& self);
  // Adopts a state another node published (newer than anything this node applied).
  void adopt(const breaker_view& v, uint64_t version);
  uint64_t applied_version() const;
  void set_applied_version(uint64_t v);
  breaker_view view() const;

 private:
  static constexpr int buckets = 10;
  void trip(int64_t now_ms, const circuit_breaker_config& cfg, const std::string& self);
  void reset_window();

  std::atomic<uint8_t> state_{0};  // breaker_state, readable without the lock
  mutable std::mutex mu_;
  breaker_view view_;
  uint32_t probes_sent_ = 0;  // in the current half-open period
  uint32_t consecutive_ = 0;  // failures in a row while closed
  uint64_t applied_version_ = 0;
  struct bucket {
    int64_t start = 0;
    uint32_t ok = 0, failed = 0;
  } window_[buckets];
};

}  // namespace meridian::node
