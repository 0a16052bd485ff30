#include "rate_limiter.h"

#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "meridian/cluster/hlc.h"
#include "meridian/cluster/replicated_state.h"

namespace meridian::node {
namespace {

constexpr int ways = 8;
constexpr size_t dirty_lists = 64;

// What one key looks like to this node: its own admissions, the others' (as last reported) and
// the admissions not yet handed to the replicated state.
struct entry {
  uint32_t window_ms;
  uint32_t window;  // index of the current window; previous is window - 1
  uint32_t local_cur, local_prev;
  uint32_t remote_cur, remote_prev;
  uint32_t unflushed_cur, unflushed_prev;
  uint32_t attempts_cur, attempts_prev;  // local demand, rejected requests included
  uint32_t limit;                        // effective limit at the last decision
  uint32_t lease_left;
  int64_t lease_until;
  uint32_t last_used_s;
  bool replicated;
  bool dirty;
};

struct alignas(64) bucket {
  std::atomic<uint8_t> lock;
  uint64_t keys[ways];  // 0: empty
  entry e[ways];
};

class bucket_lock {
 public:
  explicit bucket_lock(bucket& b) : b_(b) {
    while (b_.lock.exchange(1, std::memory_order_acquire)) {
      while (b_.lock.load(std::memory_order_relaxed)) __builtin_ia32_pause();
    }
  }
  ~bucket_lock() { b_.lock.store(0, std::memory_order_release); }

 private:
  bucket& b_;
};

uint64_t mix(uint64_t x) {  // splitmix64's finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t fnv1a(uint64_t h, std::string_view s) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  h ^= 0x1f;  // a separator, so ("ab","c") and ("a","bc") differ
  return h * 0x100000001b3ull;
}

// The window length and capacity an algorithm counts with.
struct shape {
  uint64_t limit;
  uint64_t window_ms;
  bool sliding;
};

shape shape_of(const rate_limit_config& cfg) {
  uint64_t window_ms =
      static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::milliseconds>(cfg.window).count());
  if (cfg.algorithm == "token_bucket" || cfg.algorithm == "leaky_bucket") {
    uint64_t burst = cfg.burst ? cfg.burst : (cfg.algorithm == "token_bucket" ? cfg.limit : 1);
    burst = std::min<uint64_t>(burst, cfg.limit);
    // `burst` requests over the time the bucket takes to refill them.
    uint64_t w = std::max<uint64_t>(window_ms * burst / std::max<uint64_t>(cfg.limit, 1), 10);
    return {burst, w, true};
  }
  return {cfg.limit, std::max<uint64_t>(window_ms, 1), cfg.algorithm != "fixed_window"};
}

void advance(entry& e, uint32_t window) {
  if (window <= e.window) return;
  if (window == e.window + 1) {
    e.local_prev = e.local_cur;
    e.remote_prev = e.remote_cur;
    e.unflushed_prev = e.unflushed_cur;
    e.attempts_prev = e.attempts_cur;
  } else {
    e.local_prev = e.remote_prev = e.unflushed_prev = e.attempts_prev = 0;
  }
  e.local_cur = e.remote_cur = e.unflushed_cur = e.attempts_cur = 0;
  e.window = window;
  e.lease_until = 0;
}

uint32_t clamp32(uint64_t v) {
  return static_cast<uint32_t>(std::min<uint64_t>(v, std::numeric_limits<uint32_t>::max()));
}

}  // namespace

struct rate_limiter::impl {
  impl(options o, cluster::replicated_state* s) : opt(std::move(o)), state(s) {
    size_t want = std::max<size_t>(opt.max_keys / ways, 64);
    nbuckets = 1;
    while (nbuckets < want) nbuckets <<= 1;
    bytes = nbuckets * sizeof(bucket);
    // Anonymous memory reads as zeros (empty buckets, unlocked) and is backed by pages only as
    // buckets are first written, so a large cap costs nothing until keys arrive.
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    buckets = static_cast<bucket*>(p);
  }
  ~impl() { ::munmap(buckets, bytes); }

  options opt;
  cluster::replicated_state* state;
  bucket* buckets = nullptr;
  size_t nbuckets = 0;
  size_t bytes = 0;
  std::atomic<size_t> used{0};

  struct alignas(64) dirty_list {
    std::mutex mu;
    std::vector<uint64_t> keys;
  };
  dirty_list dirty[dirty_lists];

  std::atomic<uint32_t> global_total{1}, global_unreachable{0}, region_total{1},
      region_unreachable{0};
  std::atomic<uint64_t> overshoot{0};

  mutable std::mutex stats_mu;
  std::map<std::string, std::unique_ptr<rate_limit_stats>> stats;

  bucket& bucket_of(uint64_t key) { return buckets[(key >> 3) & (nbuckets - 1)]; }

  // Returns the slot of key in b, or -1. Called with b locked.
  static int find(const bucket& b, uint64_t key) {
    for (int i = 0; i < ways; ++i)
      if (b.keys[i] == key) return i;
    return -1;
  }
  // Returns a slot for a new key: an empty one, else the least recently used (evicted).
  int claim(bucket& b) {
    int victim = 0;
    for (int i = 0; i < ways; ++i) {
      if (b.keys[i] == 0) {
        used.fetch_add(1, std::memory_order_relaxed);
        return i;
      }
      if (b.e[i].last_used_s < b.e[victim].last_used_s) victim = i;
    }
    return victim;
  }
};

rate_limiter::rate_limiter(options o, cluster::replicated_state* state)
    : impl_(std::make_unique<impl>(std::move(o), state)) {}

rate_limiter::~rate_limiter() = default;

uint64_t rate_limiter::key_of(const std::string& route, size_t index, const rate_limit_config& cfg,
                              std::string_view key_value) const {
  uint64_t h = 0xcbf29ce484222325ull;
  h = fnv1a(h, route);
  h = fnv1a(h, std::to_string(index));
  h = fnv1a(h, cfg.algorithm);
  h = fnv1a(h, std::to_string(shape_of(cfg).window_ms));
  if (cfg.scope == "region") h = fnv1a(h, impl_->opt.region);
  if (cfg.scope == "local") h = fnv1a(h, impl_->opt.node_id);
  h = fnv1a(h, key_value);
  h = mix(h);
  return h ? h : 1;
}

limit_decision rate_limiter::check(uint64_t key, const rate_limit_config& cfg, int64_t now_ms,
                                   bool commit, unsigned worker) {
  auto& d = *impl_;
  const shape sh = shape_of(cfg);
  const int64_t since = std::max<int64_t>(now_ms - cluster::hlc_epoch_unix_ms, 0);
  const auto window = static_cast<uint32_t>(static_cast<uint64_t>(since) / sh.window_ms);
  const uint64_t into = static_cast<uint64_t>(since) % sh.window_ms;
  const double frac = static_cast<double>(into) / static_cast<double>(sh.window_ms);
  const bool replicated = cfg.scope != "local" && d.state;

  // Under partition the limit's on_partition decides.
  uint32_t total = 1, unreachable = 0;
  if (cfg.scope == "global") {
    total = d.global_total.load(std::memory_order_relaxed);
    unreachable = d.global_unreachable.load(std::memory_order_relaxed);
  } else if (cfg.scope == "region") {
    total = d.region_total.load(std::memory_order_relaxed);
    unreachable = d.region_unreachable.load(std::memory_order_relaxed);
  }
  bool partitioned = replicated && unreachable > 0 && total > 0;
  double effective = static_cast<double>(sh.limit);
  if (partitioned && cfg.on_partition == "local_share") {
    effective = std::max(1.0, std::floor(effective * (total - unreachable) / total));
  }

  bucket& b = d.bucket_of(key);
  int slot;
  {
    bucket_lock lock(b);
    slot = impl::find(b, key);
  }
  uint64_t remote_cur = 0, remote_prev = 0;
  if (slot < 0 && replicated) {
    // A key new to this node: start from what the others have counted (outside the bucket lock:
    // the state's observer takes bucket locks under its own).
    remote_cur = d.state->counter_others(key, window);
    if (window > 0) remote_prev = d.state->counter_others(key, window - 1);
  }

  limit_decision out;
  out.limit = sh.limit;
  bool newly_dirty = false;
  {
    bucket_lock lock(b);
    slot = impl::find(b, key);
    if (slot < 0) {
      slot = d.claim(b);
      b.keys[slot] = key;
      entry& e = b.e[slot];
      e = entry{};
      e.window_ms = static_cast<uint32_t>(sh.window_ms);
      e.window = window;
      e.remote_cur = clamp32(remote_cur);
      e.remote_prev = clamp32(remote_prev);
      e.replicated = replicated;
    }
    entry& e = b.e[slot];
    advance(e, window);
    e.last_used_s = static_cast<uint32_t>(since / 1000);
    e.limit = clamp32(static_cast<uint64_t>(effective));

    const double prev = static_cast<double>(e.local_prev) + e.remote_prev;
    const double cur = static_cast<double>(e.local_cur) + e.remote_cur;
    const double known = (sh.sliding ? prev * (1.0 - frac) : 0.0) + cur;
    bool allowed = known + 1.0 <= effective + 1e-9;

    if (allowed && replicated && !partitioned && d.opt.lease_ms > 0) {
      // The lease: this node's share of what remains, by its share of recent demand.
      if (now_ms >= e.lease_until) {
        double remaining = effective - known;
        double mine = static_cast<double>(e.attempts_cur) + e.attempts_prev + 1;
        double theirs = static_cast<double>(e.remote_cur) + e.remote_prev;
        double share = mine / (mine + theirs);
        e.lease_left = clamp32(static_cast<uint64_t>(std::max(1.0, std::ceil(remaining * share))));
        e.lease_until = now_ms + d.opt.lease_ms;
      }
      if (e.lease_left == 0) allowed = false;
    }
    if (partitioned && cfg.on_partition == "fail_open") allowed = true;
    if (partitioned && cfg.on_partition == "fail_closed") allowed = false;

    if (commit) {
      e.attempts_cur = e.attempts_cur == UINT32_MAX ? e.attempts_cur : e.attempts_cur + 1;
      if (allowed) {
        ++e.local_cur;
        if (e.lease_left) --e.lease_left;
        if (e.replicated) {
          ++e.unflushed_cur;
          if (!e.dirty) newly_dirty = e.dirty = true;
        }
      }
    }
    double after = known + (allowed && commit ? 1.0 : 0.0);
    out.allowed = allowed;
    out.remaining = static_cast<uint64_t>(std::max(0.0, std::floor(effective - after)));
    uint64_t left_ms = sh.window_ms - into;
    out.reset_s = (left_ms + 999) / 1000;
    if (!allowed) {
      // When enough of the previous window has slid out (sliding), or at the window's end.
      uint64_t wait_ms = left_ms;
      if (sh.sliding && cur + 1.0 <= effective && prev > 0) {
        double excess = known + 1.0 - effective;
        wait_ms = std::min<uint64_t>(
            left_ms, static_cast<uint64_t>(std::ceil(excess / prev * static_cast<double>(sh.window_ms))));
      }
      out.retry_after_s = std::max<uint64_t>(1, (wait_ms + 999) / 1000);
    }
  }
  if (newly_dirty) {
    auto& list = d.dirty[worker % dirty_lists];
    std::lock_guard lock(list.mu);
    list.keys.push_back(key);
  }
  return out;
}

void rate_limiter::flush() {
  auto& d = *impl_;
  if (!d.state) return;
  std::vector<uint64_t> keys;
  for (auto& list : d.dirty) {
    std::lock_guard lock(list.mu);
    if (keys.empty()) {
      keys.swap(list.keys);
    } else {
      keys.insert(keys.end(), list.keys.begin(), list.keys.end());
      list.keys.clear();
    }
  }
  if (keys.empty()) return;
  std::vector<cluster::replicated_state::counter_add> adds;
  adds.reserve(keys.size());
  for (uint64_t key : keys) {
    bucket& b = d.bucket_of(key);
    bucket_lock lock(b);
    int slot = impl::find(b, key);
    if (slot < 0) continue;  // evicted meanwhile
    entry& e = b.e[slot];
    if (!e.dirty) continue;
    e.dirty = false;
    // Near its limit: ahead of the others in the delta queue.
    bool urgent = static_cast<uint64_t>(e.local_cur) + e.remote_cur >= e.limit * 8ull / 10;
    if (e.unflushed_cur) adds.push_back({key, e.window_ms, e.window, e.unflushed_cur, urgent});
    if (e.unflushed_prev && e.window > 0)
      adds.push_back({key, e.window_ms, e.window - 1, e.unflushed_prev, urgent});
    e.unflushed_cur = e.unflushed_prev = 0;
  }
  d.state->count_batch(adds);
}

void rate_limiter::on_remote(uint64_t key, uint32_t window, uint64_t others) {
  auto& d = *impl_;
  bucket& b = d.bucket_of(key);
  bucket_lock lock(b);
  int slot = impl::find(b, key);
  if (slot < 0) return;  // no local traffic: counted when it starts
  entry& e = b.e[slot];
  if (window > e.window) advance(e, window);
  uint32_t value = clamp32(others);
  if (window == e.window) {
    uint64_t before = static_cast<uint64_t>(e.local_cur) + e.remote_cur;
    if (value <= e.remote_cur) return;
    e.remote_cur = value;
    uint64_t after = static_cast<uint64_t>(e.local_cur) + e.remote_cur;
    if (after > e.limit) d.overshoot.fetch_add(after - std::max<uint64_t>(e.limit, before));
  } else if (window + 1 == e.window) {
    e.remote_prev = std::max(e.remote_prev, value);
  } else {
    return;
  }
  e.lease_until = 0;  // fresher counts: re-derive the lease
}

void rate_limiter::set_view(size_t global_total, size_t global_unreachable, size_t region_total,
                            size_t region_unreachable) {
  auto& d = *impl_;
  d.global_total = static_cast<uint32_t>(std::max<size_t>(global_total, 1));
  d.global_unreachable = static_cast<uint32_t>(global_unreachable);
  d.region_total = static_cast<uint32_t>(std::max<size_t>(region_total, 1));
  d.region_unreachable = static_cast<uint32_t>(region_unreachable);
}

rate_limiter::key_view rate_limiter::view(uint64_t key, const rate_limit_config& cfg,
                                          int64_t now_ms) {
  auto& d = *impl_;
  const shape sh = shape_of(cfg);
  const int64_t since = std::max<int64_t>(now_ms - cluster::hlc_epoch_unix_ms, 0);
  const auto window = static_cast<uint32_t>(static_cast<uint64_t>(since) / sh.window_ms);
  key_view v;
  v.limit = sh.limit;
  v.window_ms = sh.window_ms;
  if (cfg.scope != "local" && d.state) v.by_node = d.state->counter_by_node(key, window);
  {
    bucket& b = d.bucket_of(key);
    bucket_lock lock(b);
    int slot = impl::find(b, key);
    if (slot >= 0 && b.e[slot].window == window) {
      const entry& e = b.e[slot];
      if (cfg.scope == "local" || !d.state) {
        v.by_node[d.opt.node_id] = e.local_cur;
      } else {
        v.by_node[d.opt.node_id] += e.unflushed_cur;  // not yet in the replicated counters
      }
    }
  }
  for (const auto& [node, n] : v.by_node) v.count += n;
  return v;
}

rate_limit_stats& rate_limiter::stats_for(const std::string& route) {
  std::lock_guard lock(impl_->stats_mu);
  auto& s = impl_->stats[route];
  if (!s) s = std::make_unique<rate_limit_stats>();
  return *s;
}

size_t rate_limiter::size() const {
  return impl_->used.load(std::memory_order_relaxed);
}

std::string rate_limiter::metrics_text() const {
  auto& d = *impl_;
  std::string out =
      "# HELP meridian_ratelimit_decisions_total Rate-limit decisions by route and result.\n"
      "# TYPE meridian_ratelimit_decisions_total counter\n";
  {
    std::lock_guard lock(d.stats_mu);
    for (const auto& [route, s] : d.stats) {
      out += "meridian_ratelimit_decisions_total{route=\"" + route + "\",result=\"allowed\"} " +
             std::to_string(s->allowed.load()) + "\n";
      out += "meridian_ratelimit_decisions_total{route=\"" + route + "\",result=\"rejected\"} " +
             std::to_string(s->rejected.load()) + "\n";
    }
  }
  out += "# HELP meridian_ratelimit_overshoot_total Admissions found beyond a limit once the "
         "other nodes' counts arrived (the cost of deciding locally).\n"
         "# TYPE meridian_ratelimit_overshoot_total counter\nmeridian_ratelimit_overshoot_total " +
         std::to_string(d.overshoot.load()) + "\n";
  out += "# HELP meridian_ratelimit_keys Keys in the local rate-limit table.\n"
         "# TYPE meridian_ratelimit_keys gauge\nmeridian_ratelimit_keys " +
         std::to_string(d.used.load()) + "\n";
  if (d.state) {
    char lag[32];
    std::snprintf(lag, sizeof lag, "%.1f", d.state->stats().counter_sync_lag_ms);
    out += "# HELP meridian_ratelimit_sync_lag_ms Age of remote counts when they arrive (EWMA).\n"
           "# TYPE meridian_ratelimit_sync_lag_ms gauge\nmeridian_ratelimit_sync_lag_ms " +
           std::string(lag) + "\n";
  }
  return out;
}

}  // namespace meridian::node
