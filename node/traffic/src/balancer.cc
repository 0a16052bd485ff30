#include "meridian/traffic/balancer.h"
#include "meridian/common/ascii.h"

#include <netdb.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <numeric>

namespace meridian::node {
namespace {

uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

uint64_t hash_bytes(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a, then mixed
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ULL;
  }
  return mix64(h);
}

// Interleaves target indices so that each appears weight times, spread out (smooth WRR).
std::vector<uint32_t> smooth_wrr(const std::vector<upstream_target>& targets) {
  std::vector<uint32_t> seq;
  uint64_t total = 0;
  for (auto& t : targets) total += t.weight;
  if (total == 0) return seq;
  // Cap the sequence length; weights are reduced by their gcd first.
  uint64_t g = 0;
  for (auto& t : targets) g = std::gcd(g, static_cast<uint64_t>(t.weight));
  total /= g;
  total = std::min<uint64_t>(total, 10000);
  std::vector<int64_t> current(targets.size(), 0);
  int64_t sum = 0;
  for (auto& t : targets) sum += t.weight / g;
  for (uint64_t i = 0; i < total; ++i) {
    size_t best = 0;
    for (size_t j = 0; j < targets.size(); ++j) {
      current[j] += targets[j].weight / g;
      if (current[j] > current[best]) best = j;
    }
    current[best] -= sum;
    seq.push_back(static_cast<uint32_t>(best));
  }
  return seq;
}

// Resolves addr (blocking, getaddrinfo). Returns false and sets *why when it cannot.
bool resolve(const address& addr, socket_address* out, std::string* why) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* found = nullptr;
  std::string port = std::to_string(addr.port);
  int rc = ::getaddrinfo(addr.host.c_str(), port.c_str(), &hints, &found);
  if (rc != 0 || !found) {
    *why = rc == EAI_SYSTEM ? std::strerror(errno) : ::gai_strerror(rc);
    return false;
  }
  std::memcpy(&out->storage, found->ai_addr, found->ai_addrlen);
  out->size = found->ai_addrlen;
  ::freeaddrinfo(found);
  return true;
}

}  // namespace

std::unique_ptr<upstream_runtime> build_upstream(const upstream_config& cfg,
                                                 const std::string& region, unsigned workers,
                                                 uint64_t version, target_registry& registry,
                                                 std::vector<std::string>* warnings) {
  auto up = std::make_unique<upstream_runtime>();
  up->cfg = &cfg;
  up->cursors.resize(std::max(1u, workers));
  for (size_t w = 0; w < up->cursors.size(); ++w) {
    up->cursors[w].rng = mix64(0x9e3779b97f4a7c15ULL * (w + 1) + version);
    up->cursors[w].next = w;  // workers start at different targets
  }
  up->budget.ratio = cfg.retries.budget_ratio;
  up->budget.min_per_s = cfg.retries.budget_min_per_s;
  if (cfg.hash_on.rfind("header:", 0) == 0) up->hash_header = to_lower(cfg.hash_on.substr(7));
  for (const auto& tc : cfg.targets) {
    upstream_target t;
    t.state = registry.get(cfg.name, tc.addr);
    t.region = tc.region;
    t.zone = tc.zone;
    t.weight = tc.weight;
    t.local_tier = tc.region.empty() || tc.region == region;
    std::string why;
    t.resolved = resolve(tc.addr, &t.endpoint, &why);
    if (!t.resolved) {
      warnings->push_back("upstream " + cfg.name + ": cannot resolve " + tc.addr.to_string() +
                          ": " + why);
    }
    up->targets.push_back(std::move(t));
  }
  up->has_local_tier = std::any_of(up->targets.begin(), up->targets.end(),
                                   [](const auto& t) { return t.local_tier; });
  for (const auto& t : up->targets) {
    if (t.local_tier) continue;
    if (std::find(up->remote_regions.begin(), up->remote_regions.end(), t.region) ==
        up->remote_regions.end())
      up->remote_regions.push_back(t.region);
  }
  up->wrr_sequence = smooth_wrr(up->targets);
  for (uint32_t i = 0; i < up->targets.size(); ++i) {
    auto key = up->targets[i].state->addr.to_string();
    for (uint32_t v = 0; v < 100 * up->targets[i].weight && v < 10000; ++v) {
      up->hash_ring.emplace_back(hash_bytes(key + "#" + std::to_string(v)), i);
    }
  }
  std::sort(up->hash_ring.begin(), up->hash_ring.end());
  return up;
}

std::shared_ptr<target_state> target_registry::get(const std::string& upstream,
                                                   const address& addr) {
  std::lock_guard lock(mutex_);
  auto key = upstream + "/" + addr.to_string();
  auto& slot = targets_[key];
  if (!slot) {
    slot = std::make_shared<target_state>();
    slot->upstream = upstream;
    slot->addr = addr;
    slot->id = targets_.size() - 1;
    slot->metrics = metrics_.target(upstream, addr.to_string());
    slot->key = key;
  }
  return slot;
}

std::shared_ptr<target_state> target_registry::find(const std::string& key) const {
  std::lock_guard lock(mutex_);
  auto it = targets_.find(key);
  return it == targets_.end() ? nullptr : it->second;
}

void target_registry::for_each(const std::function<void(target_state&)>& f) const {
  std::vector<std::shared_ptr<target_state>> all;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [k, t] : targets_) all.push_back(t);
  }
  for (auto& t : all) f(*t);
}

void target_registry::queue_publish(const std::string& key) {
  {
    std::lock_guard lock(publish_mutex_);
    if (publish_.size() < 65536) publish_.push_back(key);
  }
  publish_cv_.notify_one();
}

std::vector<std::string> target_registry::wait_published(std::chrono::milliseconds timeout) {
  std::unique_lock lock(publish_mutex_);
  publish_cv_.wait_for(lock, timeout, [&] { return publish_stop_ || !publish_.empty(); });
  std::vector<std::string> out;
  out.swap(publish_);
  return out;
}

void target_registry::stop_publishing() {
  {
    std::lock_guard lock(publish_mutex_);
    publish_stop_ = true;
  }
  publish_cv_.notify_all();
}

size_t target_registry::size() const {
  std::lock_guard lock(mutex_);
  return targets_.size();
}

void retry_budget::on_request(int64_t now) {
  if (now - window_start_ms.load(std::memory_order_relaxed) >= 1000) {
    window_start_ms.store(now, std::memory_order_relaxed);
    requests.store(0, std::memory_order_relaxed);
    retries.store(0, std::memory_order_relaxed);
  }
  requests.fetch_add(1, std::memory_order_relaxed);
}

bool retry_budget::try_retry(int64_t now) {
  uint64_t allowed = std::max<uint64_t>(
      min_per_s, static_cast<uint64_t>(ratio * requests.load(std::memory_order_relaxed)));
  if (retries.load(std::memory_order_relaxed) >= allowed) return false;
  retries.fetch_add(1, std::memory_order_relaxed);
  return true;
}

namespace {
const upstream_target* pick_in_tier(const upstream_runtime& up, unsigned worker,
                                    std::string_view hash_key, const target_state* exclude,
                                    int64_t now, int64_t wall_now, int tier,
                                    const std::string* region = nullptr);

// Every target is down, ejected or behind an open breaker. Passive ejection never takes out the
// last healthy targets (like Envoy's max_ejection_percent): fall back to those that pass active
// health checks and whose breaker lets them through, this region's first.
const upstream_target* pick_ejected(const upstream_runtime& up, unsigned worker,
                                    const target_state* exclude, int64_t wall_now) {
  const size_t n = up.targets.size();
  auto& cursor = up.cursors[worker % up.cursors.size()];
  for (int tier : {1, 0}) {
    for (size_t i = 0; i < n; ++i) {
      const auto& t = up.targets[(cursor.next++) % n];
      if (up.has_local_tier && t.local_tier != (tier == 1)) continue;
      const target_state& s = *t.state;
      if (&s != exclude && t.resolved && s.healthy.load(std::memory_order_relaxed) &&
          s.breaker.allow(wall_now, up.cfg->circuit_breaker,
                          s.may_probe.load(std::memory_order_relaxed)))
        return &t;
    }
  }
  return nullptr;
}
}  // namespace

const upstream_target* pick_target(const upstream_runtime& up, unsigned worker,
                                   std::string_view hash_key, const target_state* exclude,
                                   int64_t now, int64_t wall_now) {
  if (up.targets.empty()) return nullptr;
  if (!up.has_local_tier) {
    if (auto* t = pick_in_tier(up, worker, hash_key, exclude, now, wall_now, -1)) return t;
    return pick_ejected(up, worker, exclude, wall_now);
  }
  if (auto* t = pick_in_tier(up, worker, hash_key, exclude, now, wall_now, 1)) return t;
  // Other regions in the order the targets name them (the configured preference).
  for (const auto& region : up.remote_regions) {
    if (auto* t = pick_in_tier(up, worker, hash_key, exclude, now, wall_now, 0, &region)) {
      up.failovers.fetch_add(1, std::memory_order_relaxed);
      return t;
    }
  }
  return pick_ejected(up, worker, exclude, wall_now);
}

namespace {
// tier 1: this region's targets only; 0: the others only; -1: any.
const upstream_target* pick_in_tier(const upstream_runtime& up, unsigned worker,
                                    std::string_view hash_key, const target_state* exclude,
                                    int64_t now, int64_t wall_now, int tier,
                                    const std::string* region) {
  const auto& cb = up.cfg->circuit_breaker;
  auto usable = [&](const upstream_target& t) {
    if (tier >= 0 && t.local_tier != (tier == 1)) return false;
    if (region && t.region != *region) return false;
    const target_state& s = *t.state;
    return &s != exclude && t.resolved && s.available(now) &&
           s.breaker.allow(wall_now, cb, s.may_probe.load(std::memory_order_relaxed));
  };
  auto& cursor = up.cursors[worker % up.cursors.size()];
  switch (up.cfg->balance) {
    case balance_policy::round_robin: {
      // A retry (exclude set) looks ahead without moving the cursor, so that it does not shift
      // the rotation and send the next request back to the target that just failed.
      const size_t m = up.wrr_sequence.size();
      uint64_t at = cursor.next;
      for (size_t i = 0; i < m; ++i) {
        const auto& t = up.targets[up.wrr_sequence[at++ % m]];
        if (!exclude) cursor.next = at;
        if (usable(t)) return &t;
      }
      break;
    }
    case balance_policy::random:
    case balance_policy::least_request: {
      auto next_random = [&] {
        cursor.rng = mix64(cursor.rng + 0x9e3779b97f4a7c15ULL);
        return cursor.rng;
      };
      // Weighted random choice; for least_request, the better of two such choices.
      uint64_t total = 0;
      for (const auto& t : up.targets) total += usable(t) ? t.weight : 0;
      if (total == 0) break;
      auto choose = [&] {
        uint64_t r = next_random() % total;
        for (const auto& t : up.targets) {
          if (!usable(t)) continue;
          if (r < t.weight) return &t;
          r -= t.weight;
        }
        return &up.targets.back();
      };
      auto* a = choose();
      if (up.cfg->balance == balance_policy::random) return a;
      auto* b = choose();
      auto load = [](const upstream_target* t) {
        return t->state->metrics->active_requests.load(std::memory_order_relaxed) * 1000 /
               std::max<uint32_t>(1, t->weight);
      };
      return load(b) < load(a) ? b : a;
    }
    case balance_policy::consistent_hash: {
      uint64_t h = hash_bytes(hash_key);
      auto it = std::lower_bound(up.hash_ring.begin(), up.hash_ring.end(),
                                 std::make_pair(h, uint32_t{0}));
      for (size_t i = 0; i < up.hash_ring.size(); ++i, ++it) {
        if (it == up.hash_ring.end()) it = up.hash_ring.begin();
        const auto& t = up.targets[it->second];
        if (usable(t)) return &t;
      }
      break;
    }
  }
  return nullptr;
}
}  // namespace

}  // namespace meridian::node
