#pragma once
// Growing delays after failed logins, per key (a client address): the first `free_failures`
// cost nothing; after that the k-th further failure makes the key wait 2^(k-1) s (1 s, 2 s,
// 4 s, ... at most 15 minutes) before its next attempt is looked at. A success clears the key; a
// quiet hour forgives it. Unlike a lockout, a legitimate client that mistyped waits seconds,
// while guessing slows down exponentially.
//
// Bounded without ever being cleared (clearing let an attacker that rotates addresses reset its
// own count): at max_entries the key that entered first makes room.
//
// Not thread-safe: the admin API wraps it in a mutex, a proxy worker keeps its own.

#include <algorithm>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>

namespace meridian::node {

class failure_delay {
 public:
  static constexpr int64_t max_delay_ms = 15 * 60'000;
  static constexpr int64_t forgive_after_ms = 3'600'000;

  failure_delay(int free_failures, size_t max_entries)
      : free_(free_failures), max_entries_(max_entries) {}

  // Milliseconds key must still wait before its next attempt counts; 0: it may try now.
  int64_t wait_ms(std::string_view key, int64_t now_ms) const {
    auto it = entries_.find(std::string(key));
    if (it == entries_.end()) return 0;
    const entry& e = it->second;
    if (now_ms - e.last_ms > forgive_after_ms) return 0;
    const int64_t ready = e.last_ms + delay_after(e.count);
    return ready > now_ms ? ready - now_ms : 0;
  }
  // Seconds to announce in Retry-After for a wait (rounded up, at least 1).
  static int64_t retry_after_s(int64_t wait_ms) {
    return wait_ms <= 0 ? 1 : (wait_ms + 999) / 1000;
  }

  void failed(std::string_view key, int64_t now_ms) {
    auto it = entries_.find(std::string(key));
    if (it == entries_.end()) {
      while (entries_.size() >= max_entries_ && !order_.empty()) {
        auto [old, generation] = std::move(order_.front());
        order_.pop_front();
        auto o = entries_.find(old);
        if (o != entries_.end() && o->second.generation == generation) entries_.erase(o);
      }
      it = entries_.emplace(std::string(key), entry{}).first;
      it->second.generation = ++generation_;
      order_.emplace_back(it->first, it->second.generation);
      if (order_.size() > 2 * max_entries_ + 16) compact();  // cleared keys left entries behind
    }
    entry& e = it->second;
    if (e.count > 0 && now_ms - e.last_ms > forgive_after_ms) e.count = 0;
    e.last_ms = now_ms;
    if (e.count < 1000) ++e.count;
  }
  void succeeded(std::string_view key) { entries_.erase(std::string(key)); }
  size_t size() const { return entries_.size(); }

 private:
  struct entry {
    int64_t last_ms = 0;
    int count = 0;
    uint64_t generation = 0;  // which order_ entry is this key's (a key may re-enter)
  };
  int64_t delay_after(int count) const {
    if (count <= free_) return 0;
    const int k = count - free_;  // 1, 2, ...
    return k > 20 ? max_delay_ms : std::min<int64_t>(int64_t{1000} << (k - 1), max_delay_ms);
  }

  void compact() {
    std::deque<std::pair<std::string, uint64_t>> live;
    for (auto& [k, g] : order_) {
      auto it = entries_.find(k);
      if (it != entries_.end() && it->second.generation == g) live.emplace_back(std::move(k), g);
    }
    order_.swap(live);
  }

  int free_;
  size_t max_entries_;
  uint64_t generation_ = 0;
  std::unordered_map<std::string, entry> entries_;
  std::deque<std::pair<std::string, uint64_t>> order_;  // keys by first failure, oldest first
};

}  // namespace meridian::node
