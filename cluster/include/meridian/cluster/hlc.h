#pragma once
// A hybrid logical clock (Kulkarni et al., 2014): timestamps that follow wall-clock time, never
// go backwards on one node, and order every event after the events it has seen from others, so
// last-writer-wins by timestamp respects causality even when clocks disagree a little.
//
// A timestamp packs milliseconds since 2024-01-01T00:00:00Z in the high 41 bits and a logical
// counter in the low 12: it fits in 53 bits, so JSON clients read it exactly (it is the config
// "version" of the admin API), and it lasts until 2093. When the counter is full the
// millisecond part moves ahead of the wall clock, as the HLC paper allows.
//
// Not thread-safe: the owner serialises calls (replicated_state holds it under its mutex).

#include <cstdint>
#include <functional>

namespace meridian::cluster {

using hlc_time = uint64_t;

inline constexpr int64_t hlc_epoch_unix_ms = 1704067200000;  // 2024-01-01T00:00:00Z
inline constexpr int hlc_logical_bits = 12;

// Returns the millisecond part of t, as Unix milliseconds.
inline int64_t hlc_unix_ms(hlc_time t) {
  return static_cast<int64_t>(t >> hlc_logical_bits) + hlc_epoch_unix_ms;
}
// Returns the smallest timestamp at Unix millisecond ms.
inline hlc_time hlc_from_unix_ms(int64_t ms) {
  return ms <= hlc_epoch_unix_ms
             ? 0
             : static_cast<hlc_time>(ms - hlc_epoch_unix_ms) << hlc_logical_bits;
}

class hybrid_clock {
 public:
  // wall_ms returns Unix milliseconds (injected: the simulator and tests use a fake clock).
  // A remote timestamp more than max_skew_ms ahead of the wall clock is refused by observe().
  hybrid_clock(std::function<int64_t()> wall_ms, int64_t max_skew_ms);

  // Returns a timestamp greater than every timestamp this clock has returned or observed.
  hlc_time now();
  // Moves the clock past remote (a timestamp received from another node). Returns false, and
  // leaves the clock alone, when remote is more than max_skew ahead of the local wall clock:
  // the sender's clock is wrong and adopting it would drag this node's clock along.
  bool observe(hlc_time remote);

  // Moves the clock to at least t unconditionally (timestamps this node itself persisted).
  void advance_to(hlc_time t) {
    if (t > last_) last_ = t;
  }

  // The largest amount by which an observed timestamp was ahead of the local wall clock, in ms
  // (0 when none was); what operators read as "clock skew".
  int64_t max_observed_skew_ms() const { return max_skew_seen_; }
  int64_t wall_ms() const { return wall_(); }
  hlc_time last() const { return last_; }

 private:
  std::function<int64_t()> wall_;
  int64_t max_skew_;
  hlc_time last_ = 0;
  int64_t max_skew_seen_ = 0;
};

}  // namespace meridian::cluster
