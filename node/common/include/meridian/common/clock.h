#pragma once
// Clocks the node reads: steady milliseconds for deadlines and windows, and the node's and the
// cluster's wall clock in Unix milliseconds.

#include <atomic>
#include <chrono>
#include <cstdint>

namespace meridian::node {

using steady_clock = std::chrono::steady_clock;

// Returns steady-clock milliseconds (for atomics that store time points).
inline int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             steady_clock::now().time_since_epoch())
      .count();
}

// This node's own wall clock in Unix milliseconds: the system clock shifted by
// node.clock_offset. Gossip compares it with the other members' to measure clock offsets.
inline std::atomic<int64_t> wall_clock_offset_ms{0};  // set once at startup (node.clock_offset)
inline int64_t raw_unix_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
             .count() +
         wall_clock_offset_ms.load(std::memory_order_relaxed);
}

// The cluster's time in Unix milliseconds: this node's clock plus the correction to the median
// of the members' clocks (cluster.clock_correction; 0 without a cluster). What nodes compare
// across the cluster uses it: rate-limit windows, breaker deadlines, hybrid-clock timestamps.
inline std::atomic<int64_t> cluster_clock_correction_ms{0};
inline int64_t unix_now_ms() {
  return raw_unix_now_ms() + cluster_clock_correction_ms.load(std::memory_order_relaxed);
}

}  // namespace meridian::node
