#include "meridian/cluster/replay_guard.h"

#include <algorithm>
#include <cstring>

namespace meridian::cluster {
namespace {

constexpr size_t words = replay_guard::seq_window / 64;

// Moves every bit d places up (bit i becomes bit i + d); bits past the window fall off.
void shift_up(std::array<uint64_t, words>& bits, uint64_t d) {
  if (d >= replay_guard::seq_window) {
    bits.fill(0);
    return;
  }
  const size_t whole = static_cast<size_t>(d / 64);
  const unsigned part = static_cast<unsigned>(d % 64);
  for (size_t w = words; w-- > 0;) {
    uint64_t v = 0;
    if (w >= whole) {
      v = bits[w - whole] << part;
      if (part != 0 && w > whole) v |= bits[w - whole - 1] >> (64 - part);
    }
    bits[w] = v;
  }
}

bool test_and_set(std::array<uint64_t, words>& bits, uint64_t i) {
  const uint64_t mask = uint64_t{1} << (i % 64);
  uint64_t& word = bits[static_cast<size_t>(i / 64)];
  const bool was = (word & mask) != 0;
  word |= mask;
  return was;
}

}  // namespace

const char* to_string(replay_verdict v) {
  switch (v) {
    case replay_verdict::fresh:
      return "fresh";
    case replay_verdict::unstamped:
      return "unstamped";
    case replay_verdict::stale:
      return "stale";
    case replay_verdict::repeated:
      return "repeated";
    case replay_verdict::too_old:
      return "too_old";
    case replay_verdict::table_full:
      return "table_full";
  }
  return "unknown";
}

replay_guard::replay_guard(std::chrono::milliseconds window, size_t max_entries)
    : window_(window), max_entries_(max_entries) {}

void replay_guard::purge(int64_t now_ms) {
  const int64_t horizon = now_ms - window_.count();
  std::erase_if(entries_, [horizon](const auto& kv) { return kv.second.newest_ms < horizon; });
}

replay_verdict replay_guard::check(const std::string& sender, const send_stamp& s, int64_t now_ms) {
  if (s.sent_ms == 0 || s.boot == 0 || s.seq == 0) return replay_verdict::unstamped;
  const int64_t skew = s.sent_ms > now_ms ? s.sent_ms - now_ms : now_ms - s.sent_ms;
  if (skew > window_.count()) return replay_verdict::stale;

  std::string key;
  key.reserve(sender.size() + 1 + sizeof(s.boot));
  key.append(sender);
  key.push_back('\0');
  char boot[sizeof(s.boot)];
  std::memcpy(boot, &s.boot, sizeof(boot));
  key.append(boot, sizeof(boot));

  auto it = entries_.find(key);
  if (it == entries_.end()) {
    if (entries_.size() >= max_entries_) purge(now_ms);
    if (entries_.size() >= max_entries_) return replay_verdict::table_full;
    it = entries_.emplace(std::move(key), entry{}).first;
    it->second.highest = s.seq;
    it->second.newest_ms = s.sent_ms;
    it->second.seen[0] = 1;
    return replay_verdict::fresh;
  }
  entry& e = it->second;
  if (s.seq > e.highest) {
    shift_up(e.seen, s.seq - e.highest);
    e.highest = s.seq;
    e.seen[0] |= 1;
  } else {
    const uint64_t behind = e.highest - s.seq;
    if (behind >= seq_window) return replay_verdict::too_old;
    if (test_and_set(e.seen, behind)) return replay_verdict::repeated;
  }
  e.newest_ms = std::max(e.newest_ms, s.sent_ms);
  return replay_verdict::fresh;
}

}  // namespace meridian::cluster
