#include "meridian/traffic/rate_limiter.h"

#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <limits>
#include <tuple>

#include "hash.h"
#include "meridian/cluster/hlc.h"
#include "meridian/cluster/replicated_state.h"

namespace meridian::node {
namespace {

constexpr int ways = 8;  // slots a key may live in: one group of 8 cache lines
constexpr size_t dirty_lists = 64;

// What one key looks like to this node, in one cache line: its own admissions, the others' (as
// last reported), admissions not yet handed to the replicated state, and its lease.
struct alignas(64) entry {
  std::atomic<uint64_t> key;  // 0: empty. Read without the lock, then re-checked under it
  uint32_t window_ms;
  uint32_t window;  // index of the current window; previous is window - 1
  uint32_t local_cur, local_prev;
  uint32_t remote_cur, remote_prev;
  uint32_t unflushed_cur, unflushed_prev;
  uint32_t attempts_cur, attempts_prev;  // local demand, refused requests included
  uint32_t limit;                        // effective limit at the last decision
  uint32_t lease_left;
  uint32_t lease_until;  // ms into the current window; 0: no lease
  uint16_t last_used;    // seconds, modulo 2^16 (for eviction)
  std::atomic<uint8_t> lock;
  uint8_t flags;  // replicated_flag | dirty_flag
};
static_assert(sizeof(entry) == 64);
constexpr uint8_t replicated_flag = 1, dirty_flag = 2;

void spin(std::atomic<uint8_t>& l) {
  while (l.exchange(1, std::memory_order_acquire)) {
    while (l.load(std::memory_order_relaxed)) __builtin_ia32_pause();
  }
}

class spin_lock {
 public:
  explicit spin_lock(std::atomic<uint8_t>& l) : l_(l) { spin(l_); }
  ~spin_lock() { l_.store(0, std::memory_order_release); }
  spin_lock(const spin_lock&) = delete;
  spin_lock& operator=(const spin_lock&) = delete;

 private:
  std::atomic<uint8_t>& l_;
};

uint64_t fnv1a(uint64_t h, std::string_view s) {
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  h ^= 0x1f;  // a separator, so ("ab","c") and ("a","bc") differ
  return h * 0x100000001b3ull;
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

// A scope's view in one word: members, down and unconfirmed, 21 bits each (saturating).
constexpr uint64_t view_field_max = (1u << 21) - 1;
constexpr uint64_t pack_view(size_t total, size_t down, size_t unconfirmed) {
  auto field = [](size_t v) { return std::min<uint64_t>(v, view_field_max); };
  return field(total) | field(down) << 21 | field(unconfirmed) << 42;
}
constexpr uint32_t view_total(uint64_t v) {
  return static_cast<uint32_t>(std::max<uint64_t>(v & view_field_max, 1));
}
constexpr uint32_t view_down(uint64_t v) {
  return static_cast<uint32_t>(v >> 21 & view_field_max);
}
constexpr uint32_t view_unconfirmed(uint64_t v) {
  return static_cast<uint32_t>(v >> 42 & view_field_max);
}

uint32_t clamp32(uint64_t v) {
  return static_cast<uint32_t>(std::min<uint64_t>(v, std::numeric_limits<uint32_t>::max()));
}

}  // namespace

struct rate_limiter::impl {
  // Sends the replicated counts at once (set before any check; see set_urgent_hook).
  std::function<void()> urgent;
  std::atomic<int64_t> last_urgent_ms{0};

  impl(options o, cluster::replicated_state* s) : opt(std::move(o)), state(s) {
    size_t want = std::max<size_t>(opt.max_keys / ways, 64);
    ngroups = 1;
    while (ngroups < want) ngroups <<= 1;
    bytes = ngroups * ways * sizeof(entry);
    // Anonymous memory reads as zeros (empty, unlocked) and is backed by pages only as entries
    // are first written, so a large cap costs nothing until keys arrive.
    void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    // Huge pages where the kernel allows them: a decision touches one random cache line of a
    // large table, and with 4 KiB pages the TLB miss would cost as much as the cache miss.
    ::madvise(p, bytes, MADV_HUGEPAGE);
    entries = static_cast<entry*>(p);
    group_locks = std::make_unique<std::atomic<uint8_t>[]>(ngroups);
  }
  ~impl() { ::munmap(entries, bytes); }

  options opt;
  cluster::replicated_state* state;
  entry* entries = nullptr;
  std::unique_ptr<std::atomic<uint8_t>[]> group_locks;  // held while a key is placed
  size_t ngroups = 0;
  size_t bytes = 0;
  std::atomic<size_t> used{0};

  struct alignas(64) dirty_list {
    std::mutex mu;
    std::vector<uint64_t> keys;
  };
  dirty_list dirty[dirty_lists];

  // Each scope's view, packed (pack_view) so that a decision reads one consistent view: members,
  // members down (suspect or dead) and members unconfirmed (alive, silent to a confirmation
  // ping: counted unreachable by local_share only, see set_view).
  std::atomic<uint64_t> global_view{pack_view(1, 0, 0)}, region_view{pack_view(1, 0, 0)};
  // A healed partition (set_view): until *_healed_until (check's clock), local_share limits keep
  // the share of *_healed_reachable members.
  std::atomic<int64_t> global_healed_until{0}, region_healed_until{0};
  std::atomic<uint32_t> global_healed_reachable{1}, region_healed_reachable{1};
  std::atomic<uint64_t> overshoot{0};

  mutable std::mutex stats_mu;
  std::map<std::string, std::unique_ptr<rate_limit_stats>> stats;

  size_t group_of(uint64_t key) const { return (key >> 3) & (ngroups - 1); }

  // Returns key's entry, locked; a key new to this node starts from what the others have
  // counted, and from this node's own earlier count (restored from the store after a restart,
  // or evicted from this table). The state is asked before taking any lock of ours: its
  // observer takes entry locks under its own.
  entry* acquire(uint64_t key, const limit_spec& spec, uint32_t window, uint16_t now_s,
                 bool replicated) {
    if (entry* e = find_locked(key)) return e;
    cluster::window_counters::split_counts known;
    if (state) known = state->counter_split(key, window);
    if (!replicated) known.others_cur = known.others_prev = 0;
    return insert_locked(key, now_s, [&](entry& n) {
      uint64_t k = n.key.load(std::memory_order_relaxed);
      std::memset(static_cast<void*>(&n), 0, offsetof(entry, lock));
      n.key.store(k, std::memory_order_relaxed);
      n.flags = replicated ? replicated_flag : 0;
      n.window_ms = static_cast<uint32_t>(spec.window_ms);
      n.window = window;
      n.remote_cur = clamp32(known.others_cur);
      n.remote_prev = clamp32(known.others_prev);
      n.local_cur = known.own_cur;
      n.local_prev = known.own_prev;
    });
  }

  // Returns key's entry, locked, or nullptr. A key sits in its group, starting at slot key % 8,
  // so a hit usually costs one cache line.
  entry* find_locked(uint64_t key) {
    entry* g = entries + group_of(key) * ways;
    for (int probe = 0; probe < ways; ++probe) {
      entry& e = g[(key + static_cast<uint64_t>(probe)) & (ways - 1)];
      if (e.key.load(std::memory_order_relaxed) != key) continue;
      spin(e.lock);
      if (e.key.load(std::memory_order_relaxed) == key) return &e;
      e.lock.store(0, std::memory_order_release);  // replaced meanwhile
    }
    return nullptr;
  }

  // Places key (initialised by init) and returns its entry, locked. Under the group lock, so two
  // workers seeing a new key at once place it once; a full group evicts its least recently used.
  template <class Init>
  entry* insert_locked(uint64_t key, uint16_t now_s, Init&& init) {
    size_t group = group_of(key);
    spin_lock lock(group_locks[group]);
    if (entry* e = find_locked(key)) return e;
    entry* g = entries + group * ways;
    entry* victim = nullptr;
    uint16_t oldest_age = 0;
    for (int probe = 0; probe < ways; ++probe) {
      entry& e = g[(key + static_cast<uint64_t>(probe)) & (ways - 1)];
      if (e.key.load(std::memory_order_relaxed) == 0) {
        victim = &e;
        used.fetch_add(1, std::memory_order_relaxed);
        break;
      }
      auto age = static_cast<uint16_t>(now_s - e.last_used);
      if (!victim || age > oldest_age) {
        victim = &e;
        oldest_age = age;
      }
    }
    spin(victim->lock);
    victim->key.store(key, std::memory_order_relaxed);
    init(*victim);
    return victim;
  }
};

rate_limiter::rate_limiter(options o, cluster::replicated_state* state)
    : impl_(std::make_unique<impl>(std::move(o), state)) {}

rate_limiter::~rate_limiter() = default;

limit_spec rate_limiter::compile(const std::string& route, size_t index,
                                 const rate_limit_config& cfg) const {
  limit_spec spec;
  uint64_t window_ms = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(cfg.window).count());
  spec.limit = cfg.limit;
  spec.window_ms = std::max<uint64_t>(window_ms, 1);
  spec.sliding = cfg.algorithm != "fixed_window";
  if (cfg.algorithm == "token_bucket" || cfg.algorithm == "leaky_bucket") {
    uint64_t burst = cfg.burst ? cfg.burst : (cfg.algorithm == "token_bucket" ? cfg.limit : 1);
    burst = std::min<uint64_t>(burst, cfg.limit);
    // `burst` requests over the time the bucket takes to refill them (GCRA's steady state).
    spec.limit = burst;
    spec.window_ms = std::max<uint64_t>(window_ms * burst / std::max<uint64_t>(cfg.limit, 1), 10);
  }
  if (cfg.calendar_month) {
    std::string error;
    spec.calendar = month_calendar::make(cfg.timezone, &error);
    if (!spec.calendar) spec.calendar = month_calendar::make("UTC", &error);  // checked at load
    spec.sliding = false;  // a month's quota starts afresh on the 1st
  }
  if (cfg.calendar_month) spec.timezone = cfg.timezone;
  spec.strict = cfg.mode == "strict";
  spec.strict_timeout_ms = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(cfg.strict_timeout).count());
  spec.max_delay_ms = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(cfg.max_delay).count());
  spec.scope = cfg.scope == "local"    ? limit_spec::scope_kind::local
               : cfg.scope == "region" ? limit_spec::scope_kind::region
                                       : limit_spec::scope_kind::global;
  spec.on_partition = cfg.on_partition == "fail_open" ? limit_spec::partition_policy::fail_open
                      : cfg.on_partition == "fail_closed"
                          ? limit_spec::partition_policy::fail_closed
                          : limit_spec::partition_policy::local_share;
  if (cfg.key == "ip") {
    spec.key = limit_spec::key_kind::ip;
  } else if (cfg.key == "route") {
    spec.key = limit_spec::key_kind::route;
  } else if (cfg.key == "global") {
    spec.key = limit_spec::key_kind::global;
  } else if (cfg.key.rfind("header:", 0) == 0) {
    spec.key = limit_spec::key_kind::header;
    spec.header = cfg.key.substr(7);
    for (const char* secret : {"authorization", "proxy-authorization", "cookie", "x-api-key",
                               "api-key", "apikey", "x-auth-token", "x-access-token"}) {
      spec.sensitive_key = spec.sensitive_key || spec.header == secret;
    }
  } else {
    spec.key = limit_spec::key_kind::consumer;
  }
  uint64_t h = 0xcbf29ce484222325ull;
  h = fnv1a(h, route);
  h = fnv1a(h, std::to_string(index));
  h = fnv1a(h, cfg.algorithm);
  h = fnv1a(h, std::to_string(spec.window_ms));
  // The configured zone, not the one in use: a node whose zoneinfo lacks it (it fell back to UTC
  // above; the config was checked where it was written) still counts on the same keys.
  if (cfg.calendar_month) h = fnv1a(h, "1mo " + cfg.timezone);
  if (spec.scope == limit_spec::scope_kind::region) h = fnv1a(h, impl_->opt.region);
  if (spec.scope == limit_spec::scope_kind::local) h = fnv1a(h, impl_->opt.node_id);
  spec.seed = h;
  return spec;
}

limit_spec::window_at limit_spec::window_of(int64_t now_ms) const {
  window_at out;
  if (calendar) {
    const auto m = calendar->at(now_ms);
    out.index = m.index;
    out.start_ms = m.start_ms;
    out.length_ms = static_cast<uint64_t>(m.end_ms - m.start_ms);
    out.into_ms = static_cast<uint64_t>(std::max<int64_t>(now_ms - m.start_ms, 0));
    return out;
  }
  const auto since =
      static_cast<uint64_t>(std::max<int64_t>(now_ms - cluster::hlc_epoch_unix_ms, 0));
  out.index = static_cast<uint32_t>(since / window_ms);
  out.length_ms = window_ms;
  out.into_ms = since % window_ms;
  out.start_ms = now_ms - static_cast<int64_t>(out.into_ms);
  return out;
}

uint64_t rate_limiter::key_of(const limit_spec& spec, std::string_view key_value) {
  uint64_t h = mix(fnv1a(spec.seed, key_value));
  return h ? h : 1;
}

limit_decision rate_limiter::check_without_owner(uint64_t key, const limit_spec& spec,
                                                 int64_t now_ms, unsigned worker) {
  limit_spec eventual = spec;
  eventual.strict = false;
  eventual.max_delay_ms = 0;
  return decide(key, eventual, now_ms, true, worker, true);
}

limit_decision rate_limiter::check(uint64_t key, const limit_spec& spec, int64_t now_ms,
                                   bool commit, unsigned worker) {
  return decide(key, spec, now_ms, commit, worker, false);
}

limit_decision rate_limiter::decide(uint64_t key, const limit_spec& spec, int64_t now_ms,
                                    bool commit, unsigned worker, bool without_owner) {
  auto& d = *impl_;
  const auto since =
      static_cast<uint64_t>(std::max<int64_t>(now_ms - cluster::hlc_epoch_unix_ms, 0));
  uint64_t w = spec.window_ms;
  const uint64_t window64 = since / w;  // one division: `into` follows from it
  auto window = static_cast<uint32_t>(window64);
  auto into = static_cast<uint32_t>(since - window64 * w);
  if (spec.calendar) {
    const auto month = spec.window_of(now_ms);
    window = month.index;
    w = month.length_ms;
    into = static_cast<uint32_t>(month.into_ms);
  }
  const bool replicated = spec.scope != limit_spec::scope_kind::local && d.state && d.opt.clustered;
  const auto now_s = static_cast<uint16_t>(since / 1000);

  // Under partition the limit's on_partition decides.
  uint64_t packed = pack_view(1, 0, 0);
  int64_t healed_until = 0;
  if (spec.scope == limit_spec::scope_kind::global) {
    packed = d.global_view.load(std::memory_order_relaxed);
    healed_until = d.global_healed_until.load(std::memory_order_relaxed);
  } else if (spec.scope == limit_spec::scope_kind::region) {
    packed = d.region_view.load(std::memory_order_relaxed);
    healed_until = d.region_healed_until.load(std::memory_order_relaxed);
  }
  const uint32_t total = view_total(packed);
  // Unconfirmed members shrink a local_share limit's share only: a missed ping must not refuse
  // every request of a fail_closed limit (or lift a fail_open one).
  const uint32_t unreachable =
      std::min(total - 1, spec.on_partition == limit_spec::partition_policy::local_share
                              ? view_down(packed) + view_unconfirmed(packed)
                              : view_down(packed));
  // A strict limit's owner decides on its own table whatever the view (strict_limiter.h says
  // when there is an owner); without one, the strict limit is treated as partitioned.
  const bool partitioned = replicated && !spec.strict && (unreachable > 0 || without_owner);
  uint64_t effective = spec.limit;
  if (replicated && !spec.strict &&
      spec.on_partition == limit_spec::partition_policy::local_share &&
      (partitioned || now_ms < healed_until)) {
    // The reachable members' share; nobody unreachable but no owner either (it did not answer in
    // time): an even share.
    uint32_t reachable = !partitioned ? total : unreachable > 0 ? total - unreachable : 1;
    // Just healed: the returning members' admissions during the partition are not counted here
    // yet, so the share of the side this node was on holds for the grace.
    if (now_ms < healed_until)
      reachable = std::min(
          reachable, (spec.scope == limit_spec::scope_kind::region ? d.region_healed_reachable
                                                                   : d.global_healed_reachable)
                         .load(std::memory_order_relaxed));
    effective = std::max<uint64_t>(1, effective * std::min(reachable, total) / total);
  }

  entry* e = d.acquire(key, spec, window, now_s, replicated);
  limit_decision out;
  out.limit = spec.limit;
  bool newly_dirty = false;
  bool near_limit = false;  // what remains would go within about one delay of the counts
  {
    entry& en = *e;
    advance(en, window);
    en.last_used = now_s;
    en.limit = clamp32(effective);

    // Everything in ms-weighted requests (count x window length), in integers: the sliding
    // estimate is prev * (w - into) / w + cur, and dividing only at the end keeps it exact.
    using u128 = unsigned __int128;
    const uint64_t prev = static_cast<uint64_t>(en.local_prev) + en.remote_prev;
    const uint64_t cur = static_cast<uint64_t>(en.local_cur) + en.remote_cur;
    const u128 known = (spec.sliding ? u128(prev) * (w - into) : 0) + u128(cur) * w;
    const u128 cap = u128(effective) * w;
    bool allowed = known + w <= cap;

    if (allowed && replicated && !partitioned && !spec.strict && d.opt.lease_ms > 0) {
      // The lease: this node's share of what remains, by its share of recent demand.
      if (en.lease_until == 0 || into >= en.lease_until) {
        double remaining = static_cast<double>(cap - known) / static_cast<double>(w);
        double mine = static_cast<double>(en.attempts_cur) + en.attempts_prev + 1;
        double theirs = static_cast<double>(en.remote_cur) + en.remote_prev;
        double share = mine / (mine + theirs);
        // A key nothing has been heard of from the others (a cold key: a new client address,
        // the first burst of a window): every node may be starting on it at once, each seeing
        // the whole remainder. Until counts arrive, take no more than an even share of it, so
        // the first leases of all nodes together stay within what remains.
        if (theirs == 0 && total > 1) share = std::min(share, 1.0 / total);
        // The end of a key's quota, where the others' admissions still on their way decide the
        // overshoot: at the window's pace so far, what remains goes within one count delay
        // (~300 ms). Lease half a share then, so that fresher counts arrive before it is spent.
        {
          const double spent = static_cast<double>(known / w);
          const double per_ms = spent / static_cast<double>(std::max<uint32_t>(into, 1));
          if (remaining <= per_ms * 300.0 + 1.0) share *= 0.5;
        }
        en.lease_left = clamp32(static_cast<uint64_t>(std::max(1.0, std::ceil(remaining * share))));
        en.lease_until = static_cast<uint32_t>(
            std::min<uint64_t>(into + static_cast<uint64_t>(d.opt.lease_ms), UINT32_MAX));
      }
      if (en.lease_left == 0) allowed = false;
    }
    if (partitioned && spec.on_partition == limit_spec::partition_policy::fail_open) allowed = true;
    if (partitioned && spec.on_partition == limit_spec::partition_policy::fail_closed)
      allowed = false;
    uint64_t delay_ms = 0;
    if (!allowed && spec.max_delay_ms &&
        !(partitioned && spec.on_partition == limit_spec::partition_policy::fail_closed)) {
      // Leaky-bucket queueing: the excess drains at limit per window, so the request may pass
      // after excess * window / limit ms. It is counted now (its place in the queue), which
      // makes the next one wait longer.
      const u128 excess = known + w > cap ? known + w - cap : 0;
      delay_ms = static_cast<uint64_t>((excess + effective - 1) / std::max<uint64_t>(effective, 1));
      // No excess means the refusal came from the lease: a delay would not make room.
      if (excess > 0 && delay_ms <= spec.max_delay_ms) {
        allowed = true;
      } else {
        delay_ms = 0;
      }
    }
    out.delay_ms = delay_ms;

    if (commit) {
      if (en.attempts_cur != UINT32_MAX) ++en.attempts_cur;
      if (allowed) {
        ++en.local_cur;
        if (en.lease_left) --en.lease_left;
        if (d.state) {  // every count reaches the store; replicated ones the cluster too
          ++en.unflushed_cur;
          if (!(en.flags & dirty_flag)) {
            en.flags |= dirty_flag;
            newly_dirty = true;
          }
        }
      }
    }
    const u128 after = known + (allowed && commit ? w : 0);
    out.allowed = allowed;
    out.own_count = en.local_cur;
    out.window = window;
    out.remaining = after >= cap ? 0 : static_cast<uint64_t>((cap - after) / w);
    if (replicated && commit && allowed && spec.strict) {
      // The owner's admissions are what the next owner starts from: they leave at once.
      near_limit = true;
    } else if (replicated && commit && allowed && out.remaining * 2 <= effective) {
      // At the pace of the window so far, would the rest go before the others hear of these
      // admissions (a delta round plus a gossip round, ~300 ms)? Then they should hear now.
      // Keys far from running out, and long windows spent slowly, wait for the usual rounds.
      const double spent = static_cast<double>(after / w);
      const double per_ms = spent / static_cast<double>(std::max<uint32_t>(into, 1));
      near_limit = static_cast<double>(out.remaining) <= per_ms * 300.0 + 1.0;
    }
    uint64_t left_ms = w - into;
    out.reset_s = (left_ms + 999) / 1000;
    if (!allowed) {
      // When enough of the previous window has slid out (sliding), or at the window's end:
      // each ms removes prev/w requests of the previous window's weight.
      uint64_t wait_ms = left_ms;
      if (spec.sliding && cur + 1 <= effective && prev > 0 && known + w > cap) {
        wait_ms =
            std::min<uint64_t>(left_ms, static_cast<uint64_t>((known + w - cap + prev - 1) / prev));
      }
      out.retry_after_s = std::max<uint64_t>(1, (wait_ms + 999) / 1000);
    }
    en.lock.store(0, std::memory_order_release);
  }
  if (newly_dirty) {
    auto& list = d.dirty[worker % dirty_lists];
    std::lock_guard lock(list.mu);
    list.keys.push_back(key);
  }
  // Near the end of a key's limit the others should hear of this admission now, not on the next
  // gossip round: their stale counts are what a burst overshoots by. The hook is called at most
  // once a millisecond per node (a clock stepping back does not silence it); the gossip layer
  // sends at most one round per 5 ms and a trailing one after it, which takes the admissions
  // this throttle did not report.
  if (d.urgent && near_limit) {
    int64_t last = d.last_urgent_ms.load(std::memory_order_relaxed);
    if ((now_ms - last >= 1 || now_ms < last) &&
        d.last_urgent_ms.compare_exchange_strong(last, now_ms, std::memory_order_relaxed)) {
      d.urgent();
    }
  }
  return out;
}

uint64_t rate_limiter::known_total(uint64_t key, const limit_spec& spec, int64_t now_ms,
                                   uint32_t* window_out) {
  auto& d = *impl_;
  const auto at = spec.window_of(now_ms);
  *window_out = at.index;
  if (entry* e = d.find_locked(key)) {
    advance(*e, at.index);
    uint64_t total = static_cast<uint64_t>(e->local_cur) + e->remote_cur;
    e->lock.store(0, std::memory_order_release);
    return total;
  }
  if (!d.state) return 0;
  auto known = d.state->counter_split(key, at.index);
  return known.own_cur + known.others_cur;
}

void rate_limiter::raise_own(uint64_t key, uint32_t window, uint64_t count) {
  auto& d = *impl_;
  entry* e = d.find_locked(key);
  if (!e) return;
  if (window > e->window) advance(*e, window);
  if (window == e->window && count > e->local_cur) e->local_cur = clamp32(count);
  e->lock.store(0, std::memory_order_release);
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
    entry* e = d.find_locked(key);
    if (!e) continue;  // evicted meanwhile
    if (e->flags & dirty_flag) {
      e->flags &= static_cast<uint8_t>(~dirty_flag);
      // Near its limit: ahead of the others in the delta queue.
      bool urgent = static_cast<uint64_t>(e->local_cur) + e->remote_cur >= e->limit * 8ull / 10;
      bool replicate = e->flags & replicated_flag;
      if (e->unflushed_cur)
        adds.push_back({key, e->window_ms, e->window, e->unflushed_cur, urgent, replicate});
      if (e->unflushed_prev && e->window > 0)
        adds.push_back({key, e->window_ms, e->window - 1, e->unflushed_prev, urgent, replicate});
      e->unflushed_cur = e->unflushed_prev = 0;
    }
    e->lock.store(0, std::memory_order_release);
  }
  d.state->count_batch(adds);
}

void rate_limiter::set_urgent_hook(std::function<void()> hook) {
  impl_->urgent = std::move(hook);
}

void rate_limiter::on_remote(uint64_t key, uint32_t window, uint64_t others) {
  auto& d = *impl_;
  entry* e = d.find_locked(key);
  if (!e) return;  // no local traffic: counted when it starts
  if (window > e->window) advance(*e, window);
  uint32_t value = clamp32(others);
  if (window == e->window && value > e->remote_cur) {
    uint64_t before = static_cast<uint64_t>(e->local_cur) + e->remote_cur;
    e->remote_cur = value;
    uint64_t after = static_cast<uint64_t>(e->local_cur) + e->remote_cur;
    if (after > e->limit) d.overshoot.fetch_add(after - std::max<uint64_t>(e->limit, before));
    e->lease_until = 0;  // fresher counts: re-derive the lease
  } else if (window + 1 == e->window && value > e->remote_prev) {
    e->remote_prev = value;
    e->lease_until = 0;
  }
  e->lock.store(0, std::memory_order_release);
}

void rate_limiter::set_view(size_t global_total, size_t global_down, size_t region_total,
                            size_t region_down, int64_t now_ms, size_t global_unconfirmed,
                            size_t region_unconfirmed) {
  auto& d = *impl_;
  auto update = [&](std::atomic<uint64_t>& view, size_t total, size_t down, size_t unconfirmed,
                    std::atomic<int64_t>& until, std::atomic<uint32_t>& reachable) {
    const uint64_t old = view.load(std::memory_order_relaxed);
    const uint64_t now = pack_view(std::max<size_t>(total, 1), down, unconfirmed);
    // Members came back (all, or some: views heal one member at a time). A local_share limit
    // keeps the share of the smallest side seen within the grace, which runs from the latest
    // return.
    const uint32_t was = view_down(old) + view_unconfirmed(old);
    if (view_down(now) + view_unconfirmed(now) < was) {
      uint32_t before = view_total(old) - std::min(was, view_total(old) - 1);
      if (now_ms < until.load(std::memory_order_relaxed))
        before = std::min(before, reachable.load(std::memory_order_relaxed));
      reachable.store(before, std::memory_order_relaxed);
      until.store(now_ms + d.opt.heal_grace_ms, std::memory_order_relaxed);
    }
    view.store(now, std::memory_order_relaxed);
  };
  update(d.global_view, global_total, global_down, global_unconfirmed, d.global_healed_until,
         d.global_healed_reachable);
  update(d.region_view, region_total, region_down, region_unconfirmed, d.region_healed_until,
         d.region_healed_reachable);
}

rate_limiter::key_view rate_limiter::view(uint64_t key, const limit_spec& spec, int64_t now_ms) {
  auto& d = *impl_;
  const auto at = spec.window_of(now_ms);
  const auto window = at.index;
  key_view v;
  v.limit = spec.limit;
  v.window_ms = at.length_ms;
  if (d.state) v.by_node = d.state->counter_by_node(key, window);
  if (entry* e = d.find_locked(key)) {
    if (e->window == window) {
      if (d.state) {
        v.by_node[d.opt.node_id] += e->unflushed_cur;  // not yet in the replicated counters
      } else {
        v.by_node[d.opt.node_id] = e->local_cur;
      }
    }
    e->lock.store(0, std::memory_order_release);
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
  out +=
      "# HELP meridian_ratelimit_overshoot_total Admissions found beyond a limit once the "
      "other nodes' counts arrived (the cost of deciding locally).\n"
      "# TYPE meridian_ratelimit_overshoot_total counter\nmeridian_ratelimit_overshoot_total " +
      std::to_string(d.overshoot.load()) + "\n";
  out +=
      "# HELP meridian_ratelimit_keys Keys in the local rate-limit table.\n"
      "# TYPE meridian_ratelimit_keys gauge\nmeridian_ratelimit_keys " +
      std::to_string(d.used.load()) + "\n";
  if (d.state) {
    char lag[32];
    std::snprintf(lag, sizeof lag, "%.4f", d.state->stats().counter_sync_lag_ms / 1000.0);
    out +=
        "# HELP meridian_ratelimit_sync_lag_seconds Age of remote counts when they arrive "
        "(EWMA).\n"
        "# TYPE meridian_ratelimit_sync_lag_seconds gauge\nmeridian_ratelimit_sync_lag_seconds " +
        std::string(lag) + "\n";
  }
  return out;
}

}  // namespace meridian::node

namespace meridian::node {

void key_tracker::note(size_t limit_index, uint64_t hash, std::string_view key, bool redact,
                       bool rejected, uint64_t window, int64_t now_ms) {
  if (limit_index >= limits_.size()) return;
  summary& s = limits_[limit_index];
  auto label = [&](std::string& out) {
    if (redact) {
      char hex[32];
      std::snprintf(hex, sizeof hex, "redacted:%016llx", static_cast<unsigned long long>(hash));
      out.assign(hex);
    } else {
      out.assign(key.substr(0, max_key_bytes));
    }
  };
  std::lock_guard lock(s.mu);
  entry* e = nullptr;
  if (auto it = s.index.find(hash); it != s.index.end()) {
    e = &s.entries[it->second];
    ++e->weight;
  } else if (s.entries.size() < capacity) {
    s.index.emplace(hash, s.entries.size());
    e = &s.entries.emplace_back();
    e->hash = hash;
    label(e->key);
    e->weight = 1;
    e->window = window;
  } else {
    // Space-Saving: the new key takes the lightest entry's place and inherits its weight.
    size_t least = 0;
    for (size_t i = 1; i < s.entries.size(); ++i)
      if (s.entries[i].weight < s.entries[least].weight) least = i;
    e = &s.entries[least];
    s.index.erase(e->hash);
    s.index.emplace(hash, least);
    e->hash = hash;
    label(e->key);
    e->weight += 1;
    e->rejected = 0;
    e->window = window;
  }
  if (e->window != window) {
    e->window = window;
    e->rejected = 0;
  }
  e->rejected += rejected;
  e->last_ms = now_ms;
}

std::vector<key_tracker::entry> key_tracker::candidates(size_t limit_index,
                                                        int64_t since_ms) const {
  std::vector<entry> out;
  if (limit_index >= limits_.size()) return out;
  const summary& s = limits_[limit_index];
  {
    std::lock_guard lock(s.mu);
    for (const auto& e : s.entries)
      if (e.last_ms >= since_ms) out.push_back(e);
  }
  std::sort(out.begin(), out.end(),
            [](const entry& a, const entry& b) { return a.weight > b.weight; });
  return out;
}

}  // namespace meridian::node
