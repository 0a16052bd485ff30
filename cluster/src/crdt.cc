#include "meridian/cluster/crdt.h"

#include <sodium.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <tuple>
#include <unordered_set>

namespace meridian::cluster {
namespace {

// SipHash-2-4 under a fixed, public key: the digest must be the same on every node, and it only
// detects differences (it authenticates nothing; the gossip layer does that).
uint64_t siphash(std::string_view bytes) {
  static const bool ready = sodium_init() >= 0;
  if (!ready) std::abort();
  static const unsigned char key[crypto_shorthash_KEYBYTES] = {
      'm', 'e', 'r', 'i', 'd', 'i', 'a', 'n', '-', 'd', 'i', 'g', 'e', 's', 't', '1'};
  unsigned char out[crypto_shorthash_BYTES];
  crypto_shorthash(out, reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(), key);
  uint64_t h;
  std::memcpy(&h, out, sizeof h);
  return h;
}

void put_varint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

bool get_varint(std::string_view& in, uint64_t* v) {
  uint64_t result = 0;
  for (int shift = 0; shift < 64 && !in.empty(); shift += 7) {
    auto byte = static_cast<uint8_t>(in.front());
    in.remove_prefix(1);
    result |= static_cast<uint64_t>(byte & 0x7f) << shift;
    if (!(byte & 0x80)) {
      *v = result;
      return true;
    }
  }
  return false;
}

}  // namespace

bool wins_over(const lww_entry& a, const lww_entry& b) {
  return std::tie(a.version, a.origin, a.deleted, a.value) >
         std::tie(b.version, b.origin, b.deleted, b.value);
}

uint64_t entry_hash(std::string_view key, const lww_entry& e) {
  std::string buf;
  buf.reserve(key.size() + e.origin.size() + 10);
  put_varint(buf, key.size());
  buf.append(key);
  put_varint(buf, e.version);
  buf.append(e.origin);
  return siphash(buf);
}

bool lww_map::merge(const std::string& key, const lww_entry& e) {
  auto it = entries_.find(key);
  if (it != entries_.end()) {
    if (!wins_over(e, it->second)) return false;
    if (it->second.deleted) {
      --tombstones_;
    } else {
      digest_ -= entry_hash(key, it->second);
    }
    it->second = e;
  } else {
    it = entries_.emplace(key, e).first;
  }
  if (e.deleted) {
    ++tombstones_;
  } else {
    digest_ += entry_hash(key, e);
  }
  max_version_ = std::max(max_version_, e.version);
  return true;
}

const lww_entry* lww_map::find(const std::string& key) const {
  auto it = entries_.find(key);
  return it == entries_.end() ? nullptr : &it->second;
}

size_t lww_map::collect_tombstones(hlc_time before) {
  size_t n = 0;
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (it->second.deleted && it->second.version < before) {
      it = entries_.erase(it);
      --tombstones_;
      ++n;
    } else {
      ++it;
    }
  }
  return n;
}

// ---- window_counters ----

window_counters::window_counters(size_t max_keys, size_t max_cold_backlog)
    : max_keys_(std::max<size_t>(max_keys, 1)),
      max_cold_backlog_(std::max<size_t>(max_cold_backlog, 1)) {}

void window_counters::erase(std::unordered_map<uint64_t, cell>::iterator it) {
  if (it->second.queued) --queued_[it->second.queued - 1];
  cells_.erase(it);
}

void window_counters::enqueue(uint64_t key, cell& c, queue_level level) {
  if (c.queued > level) return;  // already waiting at this level or above (queued is 1 + level)
  if (c.queued) --queued_[c.queued - 1];
  c.queued = static_cast<uint8_t>(level + 1);
  ++queued_[level];
  queues_[level].push_back(key);
  // Bounded backlog of one-off keys: the oldest one waiting gives way.
  while (queued_[cold] > max_cold_backlog_ && !queues_[cold].empty()) {
    uint64_t old = queues_[cold].front();
    queues_[cold].pop_front();
    auto it = cells_.find(old);
    if (it == cells_.end() || it->second.queued != cold + 1) continue;  // stale entry
    it->second.queued = 0;  // `changes` stays: its next change makes it hot
    --queued_[cold];
    ++dropped_;
  }
  // Keys that moved up, were taken or are gone leave entries behind; keep the queues bounded.
  if (queues_[0].size() + queues_[1].size() + queues_[2].size() > 2 * max_keys_ + 1024)
    compact_queues();
}

uint16_t window_counters::node_index(std::string_view id) {
  auto it = node_index_.find(std::string(id));
  if (it != node_index_.end()) return it->second;
  if (nodes_.size() >= std::numeric_limits<uint16_t>::max()) {
    return std::numeric_limits<uint16_t>::max();
  }
  auto index = static_cast<uint16_t>(nodes_.size());
  nodes_.emplace_back(id);
  node_index_.emplace(std::string(id), index);
  return index;
}

bool window_counters::set_max(slots& s, uint16_t node, uint32_t count) {
  for (auto& x : s) {
    if (x.node == node) {
      if (count <= x.count) return false;
      x.count = count;
      return true;
    }
  }
  if (count == 0) return false;
  s.push_back(slot{node, count});
  return true;
}

uint32_t window_counters::get(const slots& s, uint16_t node) {
  for (const auto& x : s)
    if (x.node == node) return x.count;
  return 0;
}

bool window_counters::advance(cell& c, uint32_t window) {
  if (window == c.window) return true;
  if (window > c.window) {
    if (window == c.window + 1) {
      c.prev = std::move(c.cur);
    } else {
      c.prev.clear();
    }
    c.cur.clear();
    c.window = window;
    return true;
  }
  return window + 1 == c.window;
}

window_counters::cell* window_counters::find_or_insert(uint64_t key, uint32_t window_ms) {
  auto it = cells_.find(key);
  if (it != cells_.end()) {
    // A different window length under the same key is a hash collision between two limits;
    // keeping the first is the only safe answer.
    if (it->second.window_ms != window_ms) return nullptr;
    it->second.referenced = true;
    return &it->second;
  }
  if (cells_.size() >= max_keys_) evict_one();
  cell& c = cells_[key];
  c.window_ms = window_ms;
  clock_.push_back(key);
  if (clock_.size() > 2 * max_keys_ + 1024) compact_queues();
  return &c;
}

void window_counters::evict_one() {
  // CLOCK: the hand walks the keys in insertion order; a key touched since the hand last passed
  // gets a second chance (and goes to the back), the first untouched one is evicted. A bounded
  // number of second chances keeps one insertion O(1) even when everything is hot.
  for (int chances = 0; !clock_.empty(); ++chances) {
    uint64_t key = clock_.front();
    clock_.pop_front();
    auto it = cells_.find(key);
    if (it == cells_.end()) continue;  // expired meanwhile
    if (it->second.referenced && chances < 16) {
      it->second.referenced = false;
      clock_.push_back(key);
      continue;
    }
    erase(it);
    ++evictions_;
    return;
  }
  if (!cells_.empty()) {
    erase(cells_.begin());
    ++evictions_;
  }
}

void window_counters::compact_queues() {
  // Drop the keys that are gone (expired or evicted) from the hand's queue and the dirty lists.
  std::deque<uint64_t> live;
  for (uint64_t k : clock_)
    if (cells_.count(k)) live.push_back(k);
  clock_.swap(live);
  for (uint8_t level = 0; level < 3; ++level) {
    // A key waits in one queue at most, once: keep its newest entry there (an older one of the
    // same key is left from before it moved up and was taken).
    std::unordered_set<uint64_t> kept;
    std::deque<uint64_t> keep;
    for (auto k = queues_[level].rbegin(); k != queues_[level].rend(); ++k) {
      auto it = cells_.find(*k);
      if (it != cells_.end() && it->second.queued == level + 1 && kept.insert(*k).second)
        keep.push_front(*k);
    }
    queues_[level].swap(keep);
  }
}

window_counters::split_counts window_counters::split(uint64_t key, uint32_t window) const {
  split_counts out;
  auto it = cells_.find(key);
  if (it == cells_.end()) return out;
  const cell& c = it->second;
  auto sum = [](const slots& s) {
    uint64_t n = 0;
    for (const auto& x : s)
      if (x.node != 0) n += x.count;
    return n;
  };
  if (window == c.window) {
    out = {sum(c.cur), sum(c.prev), get(c.cur, 0), get(c.prev, 0)};
  } else if (window == c.window + 1) {
    out.others_prev = sum(c.cur);
    out.own_prev = get(c.cur, 0);
  }
  return out;
}

uint32_t window_counters::add(uint64_t key, uint32_t window_ms, uint32_t window, uint32_t n,
                              bool urgent, bool replicate) {
  cell* c = find_or_insert(key, window_ms);
  if (!c) return 0;
  if (!advance(*c, window)) return 0;
  slots& s = window == c->window ? c->cur : c->prev;
  uint32_t value = get(s, 0);
  value = n > std::numeric_limits<uint32_t>::max() - value ? std::numeric_limits<uint32_t>::max()
                                                           : value + n;
  set_max(s, 0, value);
  if (replicate) {
    c->replicated = true;
    note_heavy(key, window_ms, window, value);
    if (c->changes < std::numeric_limits<uint16_t>::max()) ++c->changes;
    enqueue(key, *c, urgent ? queue_level::urgent : c->changes >= 2 ? queue_level::hot : cold);
  }
  return value;
}

bool window_counters::merge(uint16_t node, const counter_update& u) {
  if (u.window_ms == 0 || node == std::numeric_limits<uint16_t>::max()) return false;
  cell* c = find_or_insert(u.key, u.window_ms);
  if (!c) return false;
  bool moved = u.window > c->window;
  if (!advance(*c, u.window)) return false;
  slots& s = u.window == c->window ? c->cur : c->prev;
  return set_max(s, node, u.count) || moved;
}

uint64_t window_counters::sum(uint64_t key, uint32_t window) const {
  uint64_t total = 0;
  for_each_slot(key, window, [&](uint16_t, uint32_t n) { total += n; });
  return total;
}

void window_counters::for_each_slot(uint64_t key, uint32_t window,
                                    const std::function<void(uint16_t, uint32_t)>& f) const {
  auto it = cells_.find(key);
  if (it == cells_.end()) return;
  const cell& c = it->second;
  const slots* s = window == c.window ? &c.cur : window + 1 == c.window ? &c.prev : nullptr;
  if (!s) return;
  for (const auto& x : *s) f(x.node, x.count);
}

void window_counters::for_each(
    const std::function<void(uint16_t, const counter_update&)>& f) const {
  for (const auto& [key, c] : cells_) {
    for (const auto& x : c.cur) f(x.node, counter_update{key, c.window_ms, c.window, x.count});
    if (c.window > 0)
      for (const auto& x : c.prev)
        f(x.node, counter_update{key, c.window_ms, c.window - 1, x.count});
  }
}

std::vector<counter_update> window_counters::take_dirty(size_t max) {
  std::vector<counter_update> out;
  auto drain = [&](uint8_t level) {
    auto& from = queues_[level];
    while (!from.empty() && out.size() < max) {
      uint64_t key = from.front();
      from.pop_front();
      auto it = cells_.find(key);
      if (it == cells_.end() || it->second.queued != level + 1) continue;  // stale entry
      cell& c = it->second;
      c.queued = 0;
      c.changes = 0;
      --queued_[level];
      uint32_t own = get(c.cur, 0);
      if (own) out.push_back(counter_update{key, c.window_ms, c.window, own});
      uint32_t own_prev = get(c.prev, 0);
      if (own_prev && c.window > 0)
        out.push_back(counter_update{key, c.window_ms, c.window - 1, own_prev});
    }
  };
  drain(urgent);
  drain(hot);
  drain(cold);
  return out;
}

void window_counters::note_heavy(uint64_t key, uint32_t window_ms, uint32_t window, uint32_t own) {
  const size_t a = static_cast<size_t>((key * 0x9E3779B97F4A7C15ull) >> (64 - heavy_bits));
  const size_t b =
      static_cast<size_t>(((key ^ (key >> 31)) * 0xBF58476D1CE4E5B9ull) >> (64 - heavy_bits));
  for (size_t i : {a, b}) {
    if (heavy_[i].own != 0 && heavy_[i].key == key) {
      heavy_[i] = heavy_slot{key, window_ms, window, own};
      return;
    }
  }
  heavy_slot& lighter = heavy_[a].own <= heavy_[b].own ? heavy_[a] : heavy_[b];
  if (own >= lighter.own) lighter = heavy_slot{key, window_ms, window, own};
}

size_t window_counters::requeue_own(int64_t now_ms, size_t max) {
  const int64_t since_epoch = std::max<int64_t>(now_ms - hlc_epoch_unix_ms, 0);
  std::vector<std::pair<uint32_t, uint64_t>> found;  // (own count, key)
  for (const heavy_slot& h : heavy_) {
    if (h.own == 0) continue;
    auto it = cells_.find(h.key);
    if (it == cells_.end()) continue;
    const cell& c = it->second;
    if (!c.replicated || c.window_ms == 0) continue;
    if (static_cast<int64_t>(c.window) + 1 < since_epoch / c.window_ms) continue;  // over
    const uint32_t own = std::max(get(c.cur, 0), get(c.prev, 0));
    if (own > 0) found.emplace_back(own, h.key);
  }
  std::sort(found.begin(), found.end(), std::greater<>());
  found.erase(std::unique(found.begin(), found.end()), found.end());  // a key in both its slots
  if (found.size() > max) found.resize(max);
  for (const auto& [own, key] : found) enqueue(key, cells_.at(key), hot);
  return found.size();
}

size_t window_counters::expire(int64_t now_ms) {
  int64_t since_epoch = now_ms - hlc_epoch_unix_ms;
  for (heavy_slot& h : heavy_) {
    if (h.own != 0 && since_epoch >= (static_cast<int64_t>(h.window) + 2) * h.window_ms)
      h = heavy_slot{};
  }
  size_t n = 0;
  for (auto it = cells_.begin(); it != cells_.end();) {
    const cell& c = it->second;
    // The current window ends at (window + 1) * window_ms; it stops mattering one window later.
    int64_t useless_after = (static_cast<int64_t>(c.window) + 2) * c.window_ms;
    if (since_epoch >= useless_after) {
      if (it->second.queued) --queued_[it->second.queued - 1];
      it = cells_.erase(it);
      ++n;
    } else {
      ++it;
    }
  }
  return n;
}

std::string pack_counter_updates(const std::vector<counter_update>& updates) {
  std::string out;
  out.reserve(updates.size() * 16);
  for (const auto& u : updates) {
    for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(u.key >> (8 * i)));
    put_varint(out, u.window_ms);
    put_varint(out, u.window);
    put_varint(out, u.count);
  }
  return out;
}

bool unpack_counter_updates(std::string_view in, std::vector<counter_update>* out) {
  while (!in.empty()) {
    if (in.size() < 8) return false;
    counter_update u;
    for (int i = 0; i < 8; ++i)
      u.key |= static_cast<uint64_t>(static_cast<uint8_t>(in[i])) << (8 * i);
    in.remove_prefix(8);
    uint64_t window_ms, window, count;
    if (!get_varint(in, &window_ms) || !get_varint(in, &window) || !get_varint(in, &count))
      return false;
    if (window_ms > UINT32_MAX || window > UINT32_MAX || count > UINT32_MAX) return false;
    u.window_ms = static_cast<uint32_t>(window_ms);
    u.window = static_cast<uint32_t>(window);
    u.count = static_cast<uint32_t>(count);
    out->push_back(u);
  }
  return true;
}

}  // namespace meridian::cluster
