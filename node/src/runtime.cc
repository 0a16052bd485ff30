#include "runtime.h"

#include "tls.h"

#include <httplib.h>
#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <fstream>
#include <numeric>
#include <sstream>

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

std::string lower(std::string s) {
  for (auto& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
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

// Reads a JWKS document from a file or an http(s) URL. Returns "" and sets *error on failure.
std::string fetch_jwks(const jwt_config& jc, std::string* error) {
  if (!jc.jwks_file.empty()) {
    std::ifstream in(jc.jwks_file);
    if (!in) {
      *error = "jwt " + jc.name + ": cannot read jwks_file " + jc.jwks_file;
      return {};
    }
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  // jwks_url: scheme://host[:port]/path
  const std::string& url = jc.jwks_url;
  auto scheme_end = url.find("://");
  auto path_start = url.find('/', scheme_end == std::string::npos ? 0 : scheme_end + 3);
  std::string base = url.substr(0, path_start);
  std::string path = path_start == std::string::npos ? "/" : url.substr(path_start);
  httplib::Client client(base);
  client.set_connection_timeout(3, 0);
  client.set_read_timeout(5, 0);
  auto res = client.Get(path);
  if (!res || res->status != 200) {
    *error = "jwt " + jc.name + ": cannot fetch jwks_url " + url +
             (res ? " (status " + std::to_string(res->status) + ")" : "");
    return {};
  }
  return res->body;
}

}  // namespace

bool refresh_jwks(jwt_provider& p, std::string* error) {
  std::string fetch_error, parse_error;
  auto text = fetch_jwks(*p.cfg, &fetch_error);
  p.fetched_ms = now_ms();
  if (!fetch_error.empty()) {
    *error = fetch_error;
    return false;
  }
  auto keys = jwks::parse(text, &parse_error);
  if (!keys) {
    *error = "jwt " + p.cfg->name + ": " + parse_error;
    return false;
  }
  p.keys.store(std::move(keys));
  return true;
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

std::shared_ptr<const snapshot> build_snapshot(config cfg, uint64_t version, unsigned workers,
                                               target_registry& targets, metrics_registry& metrics,
                                               std::string* error, rate_limiter* limiter,
                                               std::shared_ptr<const api_key_table> keys,
                                               const oauth_authority* oauth) {
  auto snap = std::make_shared<snapshot>();
  snap->limiter = limiter;
  snap->api_keys = std::move(keys);
  snap->registry = &targets;
  snap->cfg = std::move(cfg);
  snap->version = version;
  snap->paths.merge_slashes = snap->cfg.path_normalization.merge_slashes;
  const auto& escaped = snap->cfg.path_normalization.escaped_slashes;
  snap->paths.escaped_slashes = escaped == "keep"     ? escaped_slash_action::keep
                                : escaped == "decode" ? escaped_slash_action::decode
                                                      : escaped_slash_action::reject;
  std::string router_error;
  snap->routes_index = router::build(snap->cfg.routes, &router_error);
  if (!snap->routes_index) {
    *error = router_error;
    return nullptr;
  }

  boost::asio::io_context ioc;
  boost::asio::ip::tcp::resolver resolver(ioc);
  std::map<std::string, upstream_runtime*> by_name;
  for (const auto& uc : snap->cfg.upstreams) {
    auto up = std::make_unique<upstream_runtime>();
    up->cfg = &uc;
    up->cursors.resize(std::max(1u, workers));
    for (size_t w = 0; w < up->cursors.size(); ++w) {
      up->cursors[w].rng = mix64(0x9e3779b97f4a7c15ULL * (w + 1) + version);
      up->cursors[w].next = w;  // workers start at different targets
    }
    up->budget.ratio = uc.retries.budget_ratio;
    up->budget.min_per_s = uc.retries.budget_min_per_s;
    if (uc.hash_on.rfind("header:", 0) == 0) up->hash_header = lower(uc.hash_on.substr(7));
    for (const auto& tc : uc.targets) {
      upstream_target t;
      t.state = targets.get(uc.name, tc.addr);
      t.region = tc.region;
      t.zone = tc.zone;
      t.weight = tc.weight;
      t.local_tier = tc.region.empty() || tc.region == snap->cfg.node.region;
      boost::system::error_code ec;
      auto results = resolver.resolve(tc.addr.host, std::to_string(tc.addr.port),
                                      boost::asio::ip::tcp::resolver::numeric_service, ec);
      if (!ec && !results.empty()) {
        t.endpoint = results.begin()->endpoint();
        t.resolved = true;
      } else {
        snap->warnings.push_back("upstream " + uc.name + ": cannot resolve " + tc.addr.to_string() +
                                 ": " + ec.message());
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
    by_name[uc.name] = up.get();
    snap->upstreams.push_back(std::move(up));
  }

  std::map<std::string, const jwt_provider*> providers;
  for (const auto& jc : snap->cfg.jwt) {
    auto p = std::make_unique<jwt_provider>();
    p->cfg = &jc;
    p->rules.issuer = jc.issuer;
    p->rules.audience = jc.audience;
    std::string fetch_error, parse_error;
    auto text = fetch_jwks(jc, &fetch_error);
    if (!fetch_error.empty()) {
      *error = fetch_error;
      return nullptr;
    }
    auto keys = jwks::parse(text, &parse_error);
    if (!keys) {
      *error = "jwt " + jc.name + ": " + parse_error;
      return nullptr;
    }
    p->keys.store(std::move(keys));
    p->fetched_ms = now_ms();
    providers[jc.name] = p.get();
    snap->jwt_providers.push_back(std::move(p));
  }

  if (snap->cfg.tls) {
    snap->tls = tls_store::load(*snap->cfg.tls, error);
    if (!snap->tls) return nullptr;
  }
  if (snap->cfg.oauth && oauth) {
    snap->oauth = oauth;
    snap->oauth_jwt.name = "oauth";
    snap->oauth_jwt.issuer = snap->cfg.oauth->issuer;
    snap->oauth_jwt.audience = snap->cfg.oauth->audience;
    snap->oauth_provider = std::make_unique<jwt_provider>();
    snap->oauth_provider->cfg = &snap->oauth_jwt;
    snap->oauth_provider->authority = oauth;
    snap->oauth_provider->rules.issuer = snap->oauth_jwt.issuer;
    snap->oauth_provider->rules.audience = snap->oauth_jwt.audience;
    snap->oauth_provider->rules.require_exp = true;
  }

  for (const auto& c : snap->cfg.consumers) snap->consumer_groups[c.id] = c.groups;
  for (auto& up : snap->upstreams) {
    for (const auto& name : up->cfg->failover) {
      auto it = by_name.find(name);
      if (it != by_name.end() && it->second != up.get()) up->failover_chain.push_back(it->second);
    }
  }
  for (const auto& rc : snap->cfg.routes) {
    route_runtime rt;
    rt.cfg = &rc;
    rt.upstream = by_name.at(rc.upstream);  // the loader checked that it exists
    rt.metrics = metrics.route(rc.name);
    if (limiter && !rc.rate_limits.empty()) {
      rt.limit_stats = &limiter->stats_for(rc.name);
      for (size_t i = 0; i < rc.rate_limits.size(); ++i)
        rt.limits.push_back(limiter->compile(rc.name, i, rc.rate_limits[i]));
    }
    rt.max_body_bytes = rc.max_body_bytes.value_or(snap->cfg.limits.max_body_bytes);
    rt.preserve_host = rc.preserve_host.value_or(true);
    if (rc.rewrite) {
      try {
        rt.rewrite.emplace(rc.rewrite->regex, boost::regex::ECMAScript);
      } catch (const boost::regex_error& e) {
        *error = "route " + rc.name + ": bad rewrite regex: " + e.what();
        return nullptr;
      }
    }
    for (const auto& name : rc.request_headers.remove) rt.request_drop.push_back(lower(name));
    for (const auto& [name, value] : rc.request_headers.set) rt.request_drop.push_back(lower(name));
    if (rc.auth) {
      rt.auth_api_key = std::find(rc.auth->methods.begin(), rc.auth->methods.end(), "api_key") !=
                        rc.auth->methods.end();
      // Identity headers come from the gateway only; the key itself ends here unless the route
      // passes credentials on.
      for (const char* h : {"x-consumer-id", "x-consumer-groups"}) rt.request_drop.push_back(h);
      if (rc.auth->strip_credentials) rt.request_drop.push_back("x-api-key");
    }
    if (rc.auth && std::find(rc.auth->methods.begin(), rc.auth->methods.end(), "jwt") !=
                       rc.auth->methods.end()) {
      if (!rc.auth->jwt.empty()) {
        rt.jwt_providers.push_back(providers.at(rc.auth->jwt));  // the loader checked the name
      } else {
        for (const auto& p : snap->jwt_providers) rt.jwt_providers.push_back(p.get());
      }
      // Clients must not be able to forge the headers that carry verified claims.
      for (const auto& [claim, header] : rc.auth->claims_to_headers) {
        rt.request_drop.push_back(lower(header));
      }
    }
    if (rc.auth && snap->oauth_provider &&
        std::find(rc.auth->methods.begin(), rc.auth->methods.end(), "oauth") !=
            rc.auth->methods.end()) {
      rt.jwt_providers.push_back(snap->oauth_provider.get());
      for (const auto& [claim, header] : rc.auth->claims_to_headers) {
        rt.request_drop.push_back(lower(header));
      }
    }
    for (const auto& name : rc.response_headers.remove) rt.response_drop.push_back(lower(name));
    for (const auto& [name, value] : rc.response_headers.set) {
      rt.response_drop.push_back(lower(name));
    }
    snap->routes.push_back(std::move(rt));
  }
  return snap;
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
