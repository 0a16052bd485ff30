#include "meridian/cluster_bridge/cluster_bridge.h"

#include <sodium.h>
#include <spdlog/spdlog.h>

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <thread>
#include <unordered_set>

#include "meridian/cluster/gossip_node.h"
#include "meridian/common/clock.h"
#include "meridian/common/periodic_thread.h"
#include "meridian/storage/store.h"

namespace meridian::node {

namespace {

constexpr const char* seeded_key = "state/seeded";
// The cluster's desired keyring (state family): {"keys": [base64, ...]}, primary first.
constexpr const char* desired_keyring_key = "cluster/keyring";
constexpr size_t max_keyring_keys = 8;

// A key's public name: the first 8 bytes of its BLAKE2b hash, in hex (never the key itself).
std::string fingerprint(const cluster::cluster_key& key) {
  unsigned char h[8];
  crypto_generichash(h, sizeof h, key.data(), key.size(), nullptr, 0);
  char hex[sizeof h * 2 + 1];
  sodium_bin2hex(hex, sizeof hex, h, sizeof h);
  return hex;
}

cluster::millis steady_ms() {
  return std::chrono::duration_cast<cluster::millis>(
      std::chrono::steady_clock::now().time_since_epoch());
}

}  // namespace

struct cluster_bridge::impl {
  // Declared in destruction order's reverse: gossip (which calls into state) goes first.
  std::unique_ptr<storage::store> store;
  std::unique_ptr<cluster::replicated_state> state;
  std::unique_ptr<cluster::gossip_node> gossip;
  std::mutex leave_mutex;
  bool left = false;

  // Write-behind of counters, the membership view for the rate limiter and tombstone
  // collection, once a second off the gossip thread.
  periodic_thread maintenance;
  bool clock_correction = true;  // cluster.clock_correction
  bool has_seeds = false;        // cluster.seeds names a member other than this node
  std::chrono::steady_clock::time_point next_gc = std::chrono::steady_clock::now();
  std::mutex listener_mutex;
  std::function<void(const cluster_bridge::view&)> view_listener;  // under listener_mutex
  std::string region;
  std::string self_id;
  // packet.direct messages (strict rate limits): set once the limiter exists; read on the
  // gossip thread.
  std::mutex direct_mutex;
  std::function<void(const std::string&, const std::string&, std::string)>
      direct_handler;  // under direct_mutex

  std::string keyring_file;
  // Guards keys and applied_keyring, and is held through a whole apply so two threads cannot
  // apply out of order.
  std::mutex keys_mutex;
  // Set by the change handler (on the gossip thread, which must not wait for keys_mutex while
  // an apply calls into gossip); the maintenance thread applies.
  std::atomic<bool> keyring_dirty{false};
  std::mutex rotate_mutex;  // one install/use/remove at a time on this node (read-modify-write)
  std::vector<cluster::cluster_key> keys;  // this node's keyring, primary first
  cluster::hlc_time applied_keyring = 0;   // version of the desired keyring applied last

  static std::shared_ptr<spdlog::logger> log() {
    auto l = spdlog::get("cluster.keys");
    return l ? l : spdlog::default_logger();
  }

  // Returns the desired keyring: the replicated register when there is one, else this node's.
  std::vector<cluster::cluster_key> desired_keys() {
    if (auto e = state->get(cluster::doc_family::state, desired_keyring_key); e && !e->deleted) {
      if (auto ring = parse_ring(e->value); !ring.empty()) return ring;
    }
    std::lock_guard lock(keys_mutex);
    return keys;
  }

  static std::vector<cluster::cluster_key> parse_ring(const std::string& value) {
    std::vector<cluster::cluster_key> ring;
    auto j = nlohmann::json::parse(value, nullptr, false);
    if (!j.is_object() || !j.contains("keys") || !j["keys"].is_array()) return {};
    for (const auto& k : j["keys"]) {
      auto key = k.is_string() ? cluster::decode_key(k.get<std::string>()) : std::nullopt;
      if (!key) return {};
      ring.push_back(*key);
    }
    return ring;
  }

  // Writes ring as the desired keyring and applies it here at once. Returns (200, {}) or the
  // storage error's answer.
  std::pair<int, nlohmann::json> write_desired(const std::vector<cluster::cluster_key>& ring) {
    nlohmann::json doc = {{"keys", nlohmann::json::array()}};
    for (const auto& k : ring) doc["keys"].push_back(cluster::encode_key(k));
    std::string error;
    if (!state->put(cluster::doc_family::state, desired_keyring_key, doc.dump(), &error)) {
      return {503, {{"error", "storage_error"}, {"message", error}}};
    }
    apply_desired();
    gossip->flush_application();
    return {200, nlohmann::json::object()};
  }

  void apply_desired() {
    auto e = state->get(cluster::doc_family::state, desired_keyring_key);
    if (!e || e->deleted) return;
    std::lock_guard lock(keys_mutex);
    if (e->version <= applied_keyring) return;
    applied_keyring = e->version;
    auto ring = parse_ring(e->value);
    if (ring.empty()) {
      log()->warn("ignoring an unreadable desired keyring from {}", e->origin);
      return;
    }
    if (ring == keys) return;
    keys = ring;
    std::string error;
    if (!write_keyring_file(ring, &error)) {
      log()->warn(
          "keyring changed through the admin API but {} was not rewritten: {} (a restart "
          "would use the file's old keys)",
          keyring_file, error);
    }
    gossip->set_keys(ring);
    publish_keyring(ring);
    log()->info("keyring applied: {} key(s), primary {}", ring.size(), fingerprint(ring[0]));
  }

  // Rewrites the keyring file (0600) through a temporary file and a rename.
  bool write_keyring_file(const std::vector<cluster::cluster_key>& ring, std::string* error) {
    std::string tmp = keyring_file + ".tmp";
    std::string text = "# written by meridian: the cluster's keyring (admin API), primary first\n";
    for (const auto& k : ring) text += cluster::encode_key(k) + "\n";
    std::FILE* f = std::fopen(tmp.c_str(), "w");
    if (!f) {
      *error = std::string("cannot write ") + tmp + ": " + std::strerror(errno);
      return false;
    }
    ::fchmod(::fileno(f), 0600);
    bool ok = std::fwrite(text.data(), 1, text.size(), f) == text.size();
    ok = std::fflush(f) == 0 && ok;
    ok = ::fsync(::fileno(f)) == 0 && ok;
    ok = std::fclose(f) == 0 && ok;
    if (!ok || std::rename(tmp.c_str(), keyring_file.c_str()) != 0) {
      *error = std::string("cannot replace ") + keyring_file + ": " + std::strerror(errno);
      std::remove(tmp.c_str());
      return false;
    }
    return true;
  }

  // Tells the view listener (the rate limiter) how many members there are and how many this node
  // cannot reach: down (suspect, dead), or alive but silent to a confirmation ping
  // (member::unconfirmed). Runs on the gossip thread only: at once on every change, and once a
  // second.
  void publish_view() {
    cluster_bridge::view v;
    std::unordered_set<std::string> lost;
    bool returned = false;
    for (const auto& m : gossip->members()) {
      if (m.state == cluster::member_state::left) continue;
      const bool down = m.state != cluster::member_state::alive;
      const bool unconfirmed = !down && m.unconfirmed;
      ++v.global_total;
      v.global_down += down;
      v.global_unconfirmed += unconfirmed;
      if (m.info.region == region) {
        ++v.region_total;
        v.region_down += down;
        v.region_unconfirmed += unconfirmed;
      }
      if (down || unconfirmed) {
        lost.insert(m.info.id);
      } else {
        returned |= unreached.count(m.info.id) > 0;
      }
    }
    std::function<void(const cluster_bridge::view&)> l;
    {
      std::lock_guard lock(listener_mutex);
      l = view_listener;
    }
    if (l) l(v);
    // Members are back: this node's counts of the partition (keys that stopped changing when
    // they reached this side's share) go to them now, within the limiter's heal grace.
    if (returned && state->resend_counters() > 0) gossip->flush_application_now();
    unreached = std::move(lost);
  }
  // Members down or unconfirmed at the last publish_view (gossip thread only).
  std::unordered_set<std::string> unreached;

  // Publishes which keys this node holds (fingerprints, primary first) as the register
  // "node/<id>/keyring", so GET /cluster/keys on any node shows every node's rotation progress.
  void publish_keyring(const std::vector<cluster::cluster_key>& keys) {
    nlohmann::json fps = nlohmann::json::array();
    for (const auto& k : keys) fps.push_back(fingerprint(k));
    nlohmann::json doc = {{"primary", fps.empty() ? "" : fps[0].get<std::string>()}, {"keys", fps}};
    std::string error;
    state->put(cluster::doc_family::state, "node/" + self_id + "/keyring", doc.dump(), &error,
               false);
    if (gossip) gossip->flush_application();
  }

  std::vector<std::string> live_peers() const {
    std::vector<std::string> ids;
    std::string self = gossip->self().info.id;
    for (const auto& m : gossip->members())
      if (m.state == cluster::member_state::alive && m.info.id != self) ids.push_back(m.info.id);
    return ids;
  }

  // Sets the cluster clock correction from the measured offsets (once a second). Changes under
  // 20 ms are ignored (measurement noise; windows should not wobble); large ones are logged.
  void correct_clock() {
    if (!clock_correction) return;
    int64_t want = cluster::median_clock_correction(gossip->clock_offsets());
    int64_t have = cluster_clock_correction_ms.load(std::memory_order_relaxed);
    if (std::abs(want - have) < 20) return;
    cluster_clock_correction_ms.store(want, std::memory_order_relaxed);
    if (std::abs(want) >= 1000 || std::abs(have) >= 1000) {
      log()->warn(
          "clock: this node's clock is {} ms {} the median of the cluster's; correcting windows, "
          "deadlines and timestamps by {} ms (check NTP on this host)",
          std::abs(want), want < 0 ? "ahead of" : "behind", want);
    }
  }

  void maintain() {
    correct_clock();
    if (keyring_dirty.exchange(false)) apply_desired();
    gossip->post([this] { publish_view(); });
    state->persist_counters();
    if (std::chrono::steady_clock::now() >= next_gc) {
      state->collect_garbage(live_peers(), steady_ms());
      next_gc = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    }
  }
};

cluster_bridge::cluster_bridge() : impl_(std::make_unique<impl>()) {}
cluster_bridge::~cluster_bridge() {
  impl_->maintenance.stop();
  if (impl_->gossip) impl_->gossip->stop(false);
  if (impl_->state) impl_->state->persist_counters();
}

std::unique_ptr<cluster_bridge> cluster_bridge::start(const config& cfg, std::string* error) {
  const auto& cc = *cfg.cluster;
  std::unique_ptr<cluster_bridge> glue(new cluster_bridge());
  std::error_code fec;
  std::filesystem::create_directories(cfg.node.data_dir, fec);
  glue->impl_->store =
      storage::store::open((std::filesystem::path(cfg.node.data_dir) / "db").string(), error);
  if (!glue->impl_->store) return nullptr;

  cluster::gossip_options opt;
  if (cc.keyring_file.empty()) {
    *error = "cluster.keyring_file is required: gossip is always encrypted (meridian keygen)";
    return nullptr;
  }
  auto ring = cluster::load_keyring(cc.keyring_file);
  if (!ring.error.empty()) {
    *error = ring.error;
    return nullptr;
  }
  auto initial_keys = ring.keys;
  opt.keys = std::move(ring.keys);
  opt.self.id = cfg.node.id;
  opt.self.region = cfg.node.region;
  opt.self.zone = cfg.node.zone;
  const auto& adv = cc.advertise.host.empty() ? cc.bind : cc.advertise;
  opt.self.address = adv.to_string();
  opt.bind_host = cc.bind.host == "localhost" ? "127.0.0.1" : cc.bind.host;
  opt.bind_port = cc.bind.port;
  // The tuning measured in the simulator (docs/benchmarks.md, "Membership"): probing every
  // 500 ms with a 200 ms timeout and suspicion multiplier 2 meets the detection bounds that
  // memberlist's 1 s / 4 cannot.
  opt.swim.probe_interval = cluster::millis(500);
  opt.swim.probe_timeout = cluster::millis(200);
  opt.swim.suspicion_mult = 2;
  // Talk to a member believed dead every 2 s, so a healed partition re-forms (and its state
  // converges) within seconds; the simulator's partition_heal scenario measures it.
  opt.swim.dead_probe_interval = cluster::millis(2000);
  for (const auto& s : cc.seeds) {
    if (!(s == adv)) opt.seeds.push_back(s.to_string());  // never seed from ourselves
  }
  cluster::state_options so;
  so.self_id = cfg.node.id;
  so.counter_sync_interval = std::chrono::duration_cast<cluster::millis>(cc.sync_interval);
  so.max_clock_skew_ms = std::chrono::duration_cast<cluster::millis>(cc.max_clock_skew).count();
  // Offsets are measured against this node's own clock, never the corrected one (no feedback).
  opt.wall_ms = raw_unix_now_ms;
  // Replay protection holds members' clocks to the same bound as the hybrid clock does.
  opt.replay_window = std::chrono::duration_cast<cluster::millis>(cc.max_clock_skew);
  glue->impl_->clock_correction = cc.clock_correction;
  glue->impl_->has_seeds = !opt.seeds.empty();
  cluster_clock_correction_ms.store(0, std::memory_order_relaxed);
  so.tombstone_grace_ms = std::chrono::duration_cast<cluster::millis>(cc.tombstone_grace).count();
  so.max_counter_keys = cc.max_counter_keys;
  opt.swim.app_delta_interval = std::chrono::duration_cast<cluster::millis>(cc.sync_interval);
  glue->impl_->state =
      std::make_unique<cluster::replicated_state>(so, unix_now_ms, glue->impl_->store.get());
  if (!glue->impl_->state->load(error)) return nullptr;
  opt.app = glue->impl_->state.get();
  opt.on_direct = [d = glue->impl_.get()](const std::string& from_id,
                                          const std::string& from_address, std::string message) {
    std::function<void(const std::string&, const std::string&, std::string)> h;
    {
      std::lock_guard lock(d->direct_mutex);
      h = d->direct_handler;
    }
    if (h) h(from_id, from_address, std::move(message));
  };
  glue->impl_->region = cfg.node.region;
  glue->impl_->self_id = cfg.node.id;
  opt.on_view_change = [d = glue->impl_.get()] { d->publish_view(); };
  glue->impl_->gossip = std::make_unique<cluster::gossip_node>(opt, glue->impl_->store.get());
  if (!glue->impl_->gossip->start(error)) return nullptr;
  glue->impl_->keyring_file = cc.keyring_file;
  {
    std::lock_guard lock(glue->impl_->keys_mutex);
    glue->impl_->keys = initial_keys;
    // A desired keyring this node did not apply before it stopped (or whose file rewrite failed)
    // is applied by the first maintenance round; one equal to the file changes nothing.
    if (glue->impl_->state->get(cluster::doc_family::state, desired_keyring_key))
      glue->impl_->keyring_dirty.store(true);
  }
  glue->impl_->publish_keyring(initial_keys);
  glue->impl_->next_gc = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  glue->impl_->maintenance.start(std::chrono::seconds(1),
                                 [g = glue->impl_.get()] { g->maintain(); });
  return glue;
}

nlohmann::json cluster_bridge::members_json() const {
  auto list = nlohmann::json::array();
  for (const auto& m : impl_->gossip->members()) {
    list.push_back({{"id", m.info.id},
                    {"region", m.info.region},
                    {"zone", m.info.zone},
                    {"address", m.info.address},
                    {"state", cluster::to_string(m.state)},
                    {"incarnation", m.incarnation},
                    {"unconfirmed", m.unconfirmed}});
  }
  return {{"members", list}};
}

cluster::replicated_state& cluster_bridge::state() {
  return *impl_->state;
}

storage::store& cluster_bridge::store() {
  return *impl_->store;
}

bool cluster_bridge::needs_seed() const {
  std::string value;
  return impl_->store->get(storage::family::meta, seeded_key, &value).is_not_found();
}

void cluster_bridge::mark_seeded() {
  impl_->store->put(storage::family::meta, seeded_key, "1", storage::write_options{true});
}

std::vector<std::pair<std::string, std::string>> cluster_bridge::live_members() const {
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& m : impl_->gossip->members())
    if (m.state == cluster::member_state::alive) out.emplace_back(m.info.id, m.info.region);
  return out;
}

std::vector<cluster::member> cluster_bridge::members() const {
  return impl_->gossip->members();
}

void cluster_bridge::send_direct(const std::string& address, std::string message) {
  impl_->gossip->send_direct(address, std::move(message));
}

void cluster_bridge::set_direct_handler(
    std::function<void(const std::string& from_id, const std::string& from_address,
                       std::string message)>
        handler) {
  std::lock_guard lock(impl_->direct_mutex);
  impl_->direct_handler = std::move(handler);
}

void cluster_bridge::post(std::function<void()> job, std::chrono::microseconds after) {
  impl_->gossip->post(std::move(job), after);
}

bool cluster_bridge::has_seeds() const {
  return impl_->has_seeds;
}

const std::string& cluster_bridge::self_id() const {
  return impl_->self_id;
}

nlohmann::json cluster_bridge::keys_json() const {
  std::map<std::string, bool> live;
  for (const auto& m : impl_->gossip->members())
    if (m.state != cluster::member_state::left)
      live[m.info.id] = m.state == cluster::member_state::alive;
  nlohmann::json nodes = nlohmann::json::object();
  std::map<std::string, std::pair<int, int>> by_key;  // fingerprint -> (installed on, primary on)
  for (const auto& [key, e] : impl_->state->documents(cluster::doc_family::state, false, "node/")) {
    if (key.size() < 14 || key.substr(key.size() - 8) != "/keyring") continue;
    std::string id = key.substr(5, key.size() - 13);
    auto it = live.find(id);
    if (it == live.end()) continue;  // left or forgotten
    auto j = nlohmann::json::parse(e.value, nullptr, false);
    if (!j.is_object()) continue;
    j["alive"] = it->second;
    if (it->second) {
      for (const auto& fp : j.value("keys", nlohmann::json::array()))
        if (fp.is_string()) ++by_key[fp.get<std::string>()].first;
      ++by_key[j.value("primary", "")].second;
    }
    nodes[id] = std::move(j);
  }
  nlohmann::json keys = nlohmann::json::object();
  for (const auto& [fp, n] : by_key)
    if (!fp.empty()) keys[fp] = {{"installed_on", n.first}, {"primary_on", n.second}};
  int alive = 0;
  for (const auto& [id, a] : live) alive += a;
  return {{"nodes", nodes}, {"keys", keys}, {"alive", alive}};
}

void cluster_bridge::set_view_listener(std::function<void(const view&)> listener) {
  std::lock_guard lock(impl_->listener_mutex);
  impl_->view_listener = std::move(listener);
}

void cluster_bridge::flush() {
  impl_->gossip->flush_application();
}

void cluster_bridge::flush_now() {
  impl_->gossip->flush_application_now();
}

nlohmann::json cluster_bridge::health_json() const {
  auto members = impl_->gossip->members();
  std::map<std::string, int> totals{{"alive", 0}, {"suspect", 0}, {"dead", 0}, {"left", 0}};
  nlohmann::json regions = nlohmann::json::object();
  for (const auto& m : members) {
    const char* state = cluster::to_string(m.state);
    ++totals[state];
    auto& r = regions[m.info.region.empty() ? "unknown" : m.info.region];
    if (r.is_null()) r = {{"alive", 0}, {"suspect", 0}, {"dead", 0}, {"left", 0}};
    r[state] = r[state].get<int>() + 1;
  }
  bool healthy = totals["suspect"] == 0 && totals["dead"] == 0;
  // Converged: every member is alive or left, and every live one reported the config digest
  // this node holds (on its recent gossip packets).
  auto& st = *impl_->state;
  bool same_config = st.converged(impl_->live_peers(), steady_ms());
  auto stats = st.stats();
  nlohmann::json rtt = nlohmann::json::object();
  for (const auto& [region, ms] : impl_->gossip->region_rtt()) rtt[region] = std::lround(ms);
  nlohmann::json offsets = nlohmann::json::object();
  for (const auto& [id, ms] : impl_->gossip->clock_offsets()) offsets[id] = std::lround(ms);
  char digest[17];
  std::snprintf(digest, sizeof digest, "%016llx",
                static_cast<unsigned long long>(st.digest(cluster::doc_family::config)));
  return {{"status", healthy ? "healthy" : "degraded"},
          {"self", impl_->gossip->self().info.id},
          {"members", totals},
          {"regions", regions},
          {"config_version", st.version(cluster::doc_family::config)},
          {"config_digest", digest},
          {"config_documents", stats.documents},
          {"converged", healthy && same_config},
          {"clock_skew_ms", stats.max_clock_skew_ms},
          {"local_health", impl_->gossip->local_health()},
          {"region_rtt_ms", rtt},
          {"clock_offsets_ms", offsets},
          {"clock_correction_ms", cluster_clock_correction_ms.load(std::memory_order_relaxed)}};
}

std::string cluster_bridge::metrics_text() const {
  auto members = impl_->gossip->members();
  std::map<std::pair<std::string, std::string>, int> by;
  for (const auto& m : members) by[{m.info.region, cluster::to_string(m.state)}]++;
  std::string out =
      "# HELP meridian_cluster_members Known cluster members by region and state.\n"
      "# TYPE meridian_cluster_members gauge\n";
  for (const auto& [key, n] : by) {
    out += "meridian_cluster_members{region=\"" + key.first + "\",state=\"" + key.second + "\"} " +
           std::to_string(n) + "\n";
  }
  auto rtts = impl_->gossip->region_rtt();
  if (!rtts.empty()) {
    out +=
        "# HELP meridian_cluster_region_rtt_seconds Measured round trip to each other region "
        "(EWMA of direct probe acks); added to cross-region probe timeouts.\n"
        "# TYPE meridian_cluster_region_rtt_seconds gauge\n";
    for (const auto& [region, ms] : rtts) {
      char v[32];
      std::snprintf(v, sizeof v, "%.4f", ms / 1000.0);
      out += "meridian_cluster_region_rtt_seconds{region=\"" + region + "\"} " + v + "\n";
    }
  }
  auto st = impl_->gossip->stats();
  const auto& c = impl_->gossip->counters();
  auto counter = [&](const char* name, const char* help, uint64_t v) {
    out += std::string("# HELP meridian_cluster_") + name + " " + help +
           "\n# TYPE meridian_cluster_" + name + " counter\nmeridian_cluster_" + name + " " +
           std::to_string(v) + "\n";
  };
  counter("probes_total", "Direct probes sent.", st.probes);
  counter("indirect_probes_total", "Indirect probes (ping-req) sent.", st.indirect_probes);
  counter("suspicions_total", "Members this node started suspecting.", st.suspicions);
  counter("refutations_total", "Times this node refuted a suspicion of itself.", st.refutations);
  counter("confirm_pings_total",
          "Pings to quiet members after one of this node's probes failed (reachability).",
          st.confirm_pings);
  counter("unconfirmed_total",
          "Times an alive member did not answer a confirmation ping (counted unreachable by rate "
          "limits until heard from).",
          st.unconfirmed);
  counter("push_pulls_total", "Push-pull exchanges started.", st.push_pulls);
  counter("packets_in_total", "Gossip datagrams received.", c.packets_in.load());
  counter("packets_out_total", "Gossip datagrams sent.", c.packets_out.load());
  counter("bytes_in_total", "Gossip bytes received.", c.bytes_in.load());
  counter("bytes_out_total", "Gossip bytes sent.", c.bytes_out.load());
  counter("direct_in_total", "Direct messages received (strict rate-limit asks, answers, counts).",
          c.direct_in.load());
  counter("direct_out_total", "Direct messages sent (strict rate-limit asks, answers, counts).",
          c.direct_out.load());
  counter("auth_failures_total", "Gossip packets dropped: not sealed with an installed key.",
          c.auth_failures.load());
  counter("malformed_total", "Authenticated gossip that could not be decoded.", c.malformed.load());
  counter("replays_refused_total",
          "Authenticated gossip refused as a replay (a sequence number seen before).",
          c.replays_refused.load());
  counter("stale_refused_total",
          "Authenticated gossip refused: unstamped, or stamped outside the clock window.",
          c.stale_refused.load());
  counter("streams_refused_total",
          "Inbound push-pull streams dropped at the cap (the oldest without a frame goes first).",
          c.streams_refused.load());
  counter("streams_timed_out_total",
          "Inbound push-pull streams closed for not sending their first frame in time.",
          c.streams_timed_out.load());
  counter("streams_oversized_total",
          "Push-pull frames refused: announced over one message, or over the memory budget.",
          c.streams_oversized.load());
  out +=
      "# HELP meridian_cluster_streams_active Inbound push-pull streams open.\n"
      "# TYPE meridian_cluster_streams_active gauge\nmeridian_cluster_streams_active " +
      std::to_string(c.streams_active.load()) + "\n";
  auto ss = impl_->state->stats();
  counter("state_deltas_sent_total", "Replicated-state deltas sent.", ss.deltas_sent);
  counter("state_deltas_received_total", "Replicated-state deltas received.", ss.deltas_received);
  counter("state_docs_applied_total", "Remote document versions applied.", ss.docs_applied);
  counter("state_rate_limit_updates_sent_total", "Rate-limit count slot updates sent.",
          ss.counter_updates_sent);
  counter("state_rate_limit_updates_applied_total", "Remote rate-limit count slot updates applied.",
          ss.counter_updates_applied);
  counter("state_syncs_requested_total", "Anti-entropy push-pulls started on a digest mismatch.",
          ss.syncs_requested);
  counter("state_syncs_served_total", "Anti-entropy push-pulls served.", ss.syncs_served);
  counter("state_sync_followups_total",
          "Anti-entropy push-pulls chained at once because the last reply left work.",
          ss.sync_followups);
  counter("state_sync_docs_received_total", "Documents merged from push-pulls.",
          ss.sync_docs_received);
  counter("state_sync_docs_sent_total", "Documents sent in replies to bucketed push-pulls.",
          ss.sync_docs_sent);
  counter("state_sync_docs_pushed_total", "Documents handed over in this node's own push-pulls.",
          ss.sync_docs_pushed);
  counter("state_clock_rejected_total",
          "Deltas or syncs refused because the sender's clock was too far ahead.",
          ss.clock_rejected);
  counter("state_malformed_total", "Undecodable replicated-state messages.", ss.malformed);
  counter("state_persist_errors_total", "Failed writes of replicated state to the store.",
          ss.persist_errors);
  counter("state_tombstones_collected_total", "Deleted documents forgotten after the grace.",
          ss.tombstones_collected);
  counter("state_rate_limit_key_evictions_total", "Rate-limit keys evicted by the key cap.",
          ss.counter_evictions);
  counter("state_rate_limit_updates_dropped_total",
          "Rate-limit keys changed once that left the bounded send backlog unsent (busy and "
          "near-limit keys go first and are never dropped).",
          ss.counter_updates_dropped);
  out +=
      "# HELP meridian_cluster_state_rate_limit_backlog Rate-limit keys waiting to be sent.\n"
      "# TYPE meridian_cluster_state_rate_limit_backlog gauge\n"
      "meridian_cluster_state_rate_limit_backlog " +
      std::to_string(ss.counter_backlog) + "\n";
  out +=
      "# HELP meridian_cluster_config_documents Live cluster config documents.\n"
      "# TYPE meridian_cluster_config_documents gauge\nmeridian_cluster_config_documents " +
      std::to_string(ss.documents) + "\n";
  out +=
      "# HELP meridian_cluster_counters Rate-limit counters held.\n"
      "# TYPE meridian_cluster_counters gauge\nmeridian_cluster_counters " +
      std::to_string(ss.counters) + "\n";
  out +=
      "# HELP meridian_cluster_clock_skew_seconds Largest clock offset seen from a peer.\n"
      "# TYPE meridian_cluster_clock_skew_seconds gauge\nmeridian_cluster_clock_skew_seconds " +
      std::to_string(static_cast<double>(ss.max_clock_skew_ms) / 1000.0) + "\n";
  out +=
      "# HELP meridian_cluster_local_health Lifeguard local health score (0 is healthy).\n"
      "# TYPE meridian_cluster_local_health gauge\nmeridian_cluster_local_health " +
      std::to_string(impl_->gossip->local_health()) + "\n";
  return out;
}

bool cluster_bridge::reload_keys(const std::string& keyring_file, std::string* error) {
  auto ring = cluster::load_keyring(keyring_file);
  if (!ring.error.empty()) {
    *error = ring.error;
    return false;
  }
  {
    std::lock_guard lock(impl_->keys_mutex);
    impl_->keys = ring.keys;
  }
  impl_->publish_keyring(ring.keys);
  impl_->gossip->set_keys(std::move(ring.keys));
  return true;
}

namespace {
std::vector<cluster::cluster_key>::iterator find_key(std::vector<cluster::cluster_key>& ring,
                                                     const std::string& fp) {
  return std::find_if(ring.begin(), ring.end(),
                      [&](const cluster::cluster_key& k) { return fingerprint(k) == fp; });
}

std::pair<int, nlohmann::json> key_not_found(const std::string& fp) {
  return {404, {{"error", "not_found"}, {"message", "no key " + fp + " in the keyring"}}};
}

nlohmann::json key_error(const std::string& code, const std::string& message,
                         nlohmann::json progress) {
  return {{"error", code}, {"message", message}, {"progress", std::move(progress)}};
}
}  // namespace

std::pair<int, nlohmann::json> cluster_bridge::install_key(const std::string& base64_key) {
  std::lock_guard rotating(impl_->rotate_mutex);
  auto key = cluster::decode_key(base64_key);
  if (!key) {
    return {400,
            {{"error", "bad_request"},
             {"message", "\"key\" must be a base64 32-byte key (meridian keygen)"}}};
  }
  auto ring = impl_->desired_keys();
  if (std::find(ring.begin(), ring.end(), *key) == ring.end()) {
    if (ring.size() >= max_keyring_keys) {
      return {409, key_error("too_many_keys",
                             "the keyring holds " + std::to_string(max_keyring_keys) +
                                 " keys: remove one first",
                             keys_json())};
    }
    ring.push_back(*key);  // installed, not primary
    auto r = impl_->write_desired(ring);
    if (r.first != 200) return r;
  }
  return {200, {{"fingerprint", fingerprint(*key)}, {"progress", keys_json()}}};
}

std::pair<int, nlohmann::json> cluster_bridge::use_key(const std::string& fp) {
  std::lock_guard rotating(impl_->rotate_mutex);
  auto ring = impl_->desired_keys();
  auto it = find_key(ring, fp);
  if (it == ring.end()) return key_not_found(fp);
  auto progress = keys_json();
  auto held = progress["keys"].contains(fp) ? progress["keys"][fp].value("installed_on", 0) : 0;
  if (held < progress.value("alive", 0)) {
    return {409, key_error("not_installed_everywhere",
                           "key " + fp + " is installed on " + std::to_string(held) + " of " +
                               std::to_string(progress.value("alive", 0)) +
                               " live nodes: wait until every node holds it",
                           progress)};
  }
  std::rotate(ring.begin(), it, it + 1);  // to the front, the others keep their order
  auto r = impl_->write_desired(ring);
  if (r.first != 200) return r;
  return {200, {{"fingerprint", fp}, {"progress", keys_json()}}};
}

std::pair<int, nlohmann::json> cluster_bridge::remove_key(const std::string& fp) {
  std::lock_guard rotating(impl_->rotate_mutex);
  auto ring = impl_->desired_keys();
  auto it = find_key(ring, fp);
  if (it == ring.end()) return key_not_found(fp);
  auto progress = keys_json();
  if (it == ring.begin()) {
    return {409,
            key_error("primary", "key " + fp + " is the primary: make another key primary first",
                      progress)};
  }
  auto in_use = progress["keys"].contains(fp) ? progress["keys"][fp].value("primary_on", 0) : 0;
  if (in_use > 0) {
    return {409, key_error("in_use",
                           "key " + fp + " is still primary on " + std::to_string(in_use) +
                               " live node(s): wait until every node uses the new primary",
                           progress)};
  }
  ring.erase(it);
  auto r = impl_->write_desired(ring);
  if (r.first != 200) return r;
  return {200, {{"fingerprint", fp}, {"progress", keys_json()}}};
}

void cluster_bridge::apply_desired_keyring() {
  impl_->keyring_dirty.store(true);
}

uint16_t cluster_bridge::gossip_port() const {
  return impl_->gossip->port();
}

void cluster_bridge::leave() {
  std::lock_guard lock(impl_->leave_mutex);
  if (impl_->left) return;
  impl_->left = true;
  impl_->gossip->stop(true);
}

}  // namespace meridian::node
