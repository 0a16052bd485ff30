#include "meridian/node/node.h"

#include <signal.h>
#include <sodium.h>
#include <spdlog/async.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <charconv>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <unordered_set>

#include "meridian/admin/admin_server.h"
#include "meridian/admin/otlp_exporter.h"
#include "meridian/analytics/usage.h"
#include "meridian/auth/api_keys.h"
#include "meridian/auth/oauth.h"
#include "meridian/cluster_bridge/cluster_bridge.h"
#include "meridian/common/periodic_thread.h"
#include "meridian/config/config_json.h"
#include "meridian/proxy/health_checker.h"
#include "meridian/proxy/http_proxy.h"
#include "meridian/proxy/snapshot.h"
#include "meridian/storage/store.h"
#include "meridian/traffic/rate_limiter.h"
#include "meridian/traffic/strict_limiter.h"
#include "peers.h"

namespace meridian::node {
namespace {

std::shared_ptr<spdlog::logger> log() {
  auto l = spdlog::get("node");
  return l ? l : spdlog::default_logger();
}

std::string random_token() {
  if (sodium_init() < 0) std::abort();
  unsigned char raw[24];
  randombytes_buf(raw, sizeof raw);
  char hex[sizeof raw * 2 + 1];
  sodium_bin2hex(hex, sizeof hex, raw, sizeof raw);
  return hex;
}

// Reads the admin token from path, creating the file with a fresh token (mode 0600) when it does
// not exist. Returns false and sets *error when the file exists but is unusable.
bool load_or_create_token(const std::string& path, std::string* token, std::string* error) {
  std::error_code fec;
  if (std::filesystem::exists(path, fec)) {
    std::ifstream in(path);
    std::getline(in, *token);
    while (!token->empty() && std::isspace(static_cast<unsigned char>(token->back()))) {
      token->pop_back();
    }
    if (token->size() < 16) {
      *error = "admin.token_file " + path + ": token must be at least 16 characters";
      return false;
    }
    return true;
  }
  auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, fec);
  *token = random_token();
  {
    std::ofstream out(path);
    out << *token << "\n";
    if (!out) {
      *error = "admin.token_file " + path + ": cannot write";
      return false;
    }
  }
  ::chmod(path.c_str(), 0600);
  log()->info("wrote a new admin token to {}", path);
  return true;
}

std::shared_ptr<spdlog::logger> make_access_log(const access_log_section& cfg) {
  if (!cfg.enabled) return nullptr;
  spdlog::init_thread_pool(8192, 1);
  std::shared_ptr<spdlog::sinks::sink> sink;
  if (cfg.path == "stdout") {
    sink = std::make_shared<spdlog::sinks::stdout_sink_mt>();
  } else if (cfg.path == "stderr") {
    sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  } else {
    sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(cfg.path);
  }
  auto logger = std::make_shared<spdlog::async_logger>(
      "access", sink, spdlog::thread_pool(), spdlog::async_overflow_policy::overrun_oldest);
  logger->set_pattern("%v");
  logger->set_level(spdlog::level::info);
  // Registered so that the periodic flush reaches it: lines hit the file within a second.
  spdlog::drop("access");
  spdlog::register_logger(logger);
  spdlog::flush_every(std::chrono::seconds(1));
  return logger;
}

// The members strict rate limits count majorities over (strict_limiter::options::remembered),
// as a JSON array of {id, address, region, global, regional} in the store's meta family.
constexpr std::string_view strict_members_key = "strict_members";

// Returns false when a record exists but cannot be read.
bool read_strict_members(storage::store& db, std::vector<strict_limiter::counted_member>* out) {
  std::string value;
  auto st = db.get(storage::family::meta, strict_members_key, &value);
  if (st.is_not_found()) return true;
  auto j = st.is_ok() ? nlohmann::json::parse(value, nullptr, false) : nlohmann::json();
  if (!j.is_array()) {
    // Without the list a restarted node could count itself a majority of too few members: it
    // decides nothing strict before it has heard of another member.
    log()->error(
        "strict rate limits: the members counted before this start are unreadable ({}); no "
        "strict decision before this node has joined",
        st.is_ok() ? "not a JSON array" : st.message());
    return false;
  }
  for (const auto& m : j) {
    auto text = [&m](const char* name) {
      auto it = m.is_object() ? m.find(name) : m.end();
      return it != m.end() && it->is_string() ? it->get<std::string>() : std::string();
    };
    auto flag = [&m](const char* name) {
      auto it = m.is_object() ? m.find(name) : m.end();
      return it != m.end() && it->is_boolean() && it->get<bool>();
    };
    if (!text("id").empty())
      out->push_back(
          {text("id"), text("address"), text("region"), flag("global"), flag("regional")});
  }
  return true;
}

// Members an operator declared gone for good (DELETE /cluster/members/{id}): registers
// "strict/forget/<id>" = {"at": unix ms, "by": node} in the replicated state (two slashes, like
// the audit log's, so no breaker register "<upstream>/<host:port>" falls in the range).
constexpr std::string_view strict_forget_prefix = "strict/forget/";

std::map<std::string, int64_t> strict_forgets(const cluster::replicated_state& st) {
  std::map<std::string, int64_t> out;
  for (const auto& [key, e] :
       st.documents(cluster::doc_family::state, false, strict_forget_prefix)) {
    auto j = nlohmann::json::parse(e.value, nullptr, false);
    auto at = j.is_object() ? j.find("at") : j.end();
    if (key.size() > strict_forget_prefix.size() && at != j.end() && at->is_number_integer())
      out[key.substr(strict_forget_prefix.size())] = at->get<int64_t>();
  }
  return out;
}

void write_strict_members(storage::store& db,
                          const std::vector<strict_limiter::counted_member>& members) {
  nlohmann::json j = nlohmann::json::array();
  for (const auto& m : members)
    j.push_back({{"id", m.id},
                 {"address", m.address},
                 {"region", m.region},
                 {"global", m.global},
                 {"regional", m.regional}});
  // Synced: an older base could be smaller (members forgotten since added back) and make a
  // majority of too few after a crash.
  auto st =
      db.put(storage::family::meta, strict_members_key,
             j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), {.sync = true});
  if (!st.is_ok()) log()->warn("strict rate limits: cannot keep the members: {}", st.message());
}

}  // namespace

void setup_logging(const std::string& level) {
  auto lvl = spdlog::level::from_str(level);
  // Diagnostics go to stderr (SPEC): stdout belongs to the access log by default. spdlog's own
  // default logger writes to stdout, and every component logger copies its sinks.
  static const bool on_stderr = [] {
    auto l = std::make_shared<spdlog::logger>(
        "", std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
    spdlog::set_default_logger(l);
    return true;
  }();
  (void)on_stderr;
  for (const char* name : {"node", "node.http", "node.admin", "node.health", "node.config"}) {
    auto l = spdlog::get(name);
    if (!l) {
      auto sink = spdlog::default_logger()->sinks();
      l = std::make_shared<spdlog::logger>(name, sink.begin(), sink.end());
      spdlog::register_logger(l);
    }
    l->set_level(lvl);
  }
  spdlog::set_level(lvl);
}

using cluster::doc_family;

// The cluster config documents as compose_config wants them: store key "routes/users" holds
// the route named users, as JSON.
std::vector<config_document> documents_of(const cluster::replicated_state& state) {
  std::vector<config_document> docs;
  for (auto& [key, e] : state.documents(doc_family::config)) {
    auto slash = key.find('/');
    if (slash == std::string::npos) continue;
    auto kind = document_kind_from_path(std::string_view(key.data(), slash));
    if (!kind) continue;  // keys/..., not a config object
    config_document d;
    d.kind = *kind;
    d.name = key.substr(slash + 1);
    d.body = std::move(e.value);
    docs.push_back(std::move(d));
  }
  return docs;
}

admin_reply error_reply(int status, const std::string& code, const std::string& message) {
  return {status, {{"error", code}, {"message", message}}};
}

struct node::impl {
  explicit impl(config c) : cfg(std::move(c)), metrics(cfg.node.workers), targets(metrics) {
    wall_clock_offset_ms.store(cfg.node.clock_offset.count(), std::memory_order_relaxed);
  }

  // The config file as last read: node-local settings, and (without a cluster) the routes,
  // upstreams and consumers too. With a cluster those come from the replicated documents.
  config cfg;
  metrics_registry metrics;
  target_registry targets;
  // Without a cluster: a store and state that only keep rate-limit counts across restarts.
  std::unique_ptr<storage::store> local_store;
  std::unique_ptr<cluster::replicated_state> local_state;
  // Before proxy and cluster: snapshots and the replicated state's hooks point at it.
  std::unique_ptr<rate_limiter> limiter;
  // mode: strict limits' owners and asks (with a cluster). Before cluster too: the gossip
  // thread calls it until the cluster stops.
  std::unique_ptr<strict_limiter> strict;
  key_usage_registry key_usage;
  std::unique_ptr<oauth_authority> oauth;  // with an `oauth:` section; snapshots point at it
  std::mutex adopt_oauth_mutex;
  std::atomic<uint64_t> audit_seq{0};
  static constexpr int64_t audit_retention_ms = 30LL * 24 * 3600 * 1000;  // 30 days
  static constexpr size_t max_audit_entries = 10000;                      // cluster-wide
  static constexpr int64_t oauth_leeway_s = 60;  // jwt_rules' default leeway
  std::mutex redemptions_mutex;
  // Codes and refresh tokens this node redeemed in the last minute: id -> (register value,
  // until when to watch it).
  std::unordered_map<std::string, std::pair<std::string, int64_t>> my_redemptions;
  std::thread breaker_sync;        // with a cluster: publishes breaker transitions, assigns probing
  periodic_thread persister;       // without a cluster: hands counts to local_state, persists them
  periodic_thread jwks_refresher;  // re-fetches jwks_url keys (periodically, on unknown kids)

  // One tick (every 200 ms, so kid misses are picked up quickly) of the JWKS refresher.
  void refresh_jwks_due() {
    auto snap = current();
    if (!snap) return;
    int64_t now = now_ms();
    for (const auto& p : snap->jwt_providers) {
      if (p->cfg->jwks_url.empty()) continue;
      int64_t every =
          std::chrono::duration_cast<std::chrono::milliseconds>(p->cfg->jwks_refresh).count();
      bool due = now - p->fetched_ms.load() >= every;
      // On an unknown kid, at most once every 10 s: a flood of bad tokens cannot hammer the
      // issuer.
      bool wanted = p->refresh_wanted.exchange(false) && now - p->last_wanted_ms.load() >= 10'000;
      if (!due && !wanted) continue;
      if (wanted) p->last_wanted_ms = now;
      std::string error;
      if (refresh_jwks(*p, &error)) {
        log()->info("jwt {}: keys re-fetched from {}", p->cfg->name, p->cfg->jwks_url);
      } else {
        log()->warn("{} (keeping the previous keys)", error);
      }
    }
  }

  // Creates the OAuth authority the first time a config has an `oauth` section: loads or creates
  // the node's signing key, publishes its public half and hooks revocations.
  bool ensure_oauth(const config& c, std::string* error, bool starting = true) {
    if (!c.oauth || oauth) return true;
    if (!starting) {  // the gossip thread reads `oauth` without a lock once the node runs
      *error = "an oauth section added by a reload takes effect after a restart";
      return false;
    }
    oauth = oauth_authority::open(cfg.node.data_dir, cfg.node.id, error);
    if (!oauth) return false;
    oauth->on_revoke = [this](const std::string& jti, int64_t exp_s, std::string* err) {
      return revoke_token(jti, exp_s, err);
    };
    oauth->used = [this](const std::string& id) { return code_use(id); };
    oauth->mark_used = [this](const std::string& id, const std::string& value, int64_t exp_s,
                              std::string* err) { return record_code_use(id, value, exp_s, err); };
    // Failed logins per minute (by user, and by user and address) are counters every node adds
    // to, so spreading guesses over the nodes gains nothing (within gossip's ~100 ms).
    oauth->login_failures = [this](const std::string& name, int64_t now_ms, bool add) {
      unsigned char h[8];
      std::string input = "oauth login failures\n" + name;
      crypto_generichash(h, sizeof h, reinterpret_cast<const unsigned char*>(input.data()),
                         input.size(), nullptr, 0);
      uint64_t key;
      std::memcpy(&key, h, sizeof key);
      const auto window = static_cast<uint32_t>(now_ms / 60'000);
      auto* st = registers();
      if (add) st->count(key, 60'000, window, 1, /*urgent=*/true);
      // This minute and the previous one: a guesser gains nothing at a minute's boundary.
      return st->counter_sum(key, window) + st->counter_sum(key, window - 1);
    };
    oauth->password_hash =
        [this](const std::string& consumer) -> std::optional<oauth_authority::password_record> {
      auto e = registers()->get(doc_family::config, "passwords/" + consumer);
      if (!e || e->deleted) return std::nullopt;
      auto j = nlohmann::json::parse(e->value, nullptr, false);
      if (!j.is_object() || !j.contains("hash") || !j["hash"].is_string()) return std::nullopt;
      oauth_authority::password_record r;
      r.hash = j["hash"].get<std::string>();
      if (j.contains("updated") && j["updated"].is_number_integer())
        r.updated_ms = j["updated"].get<int64_t>();
      return r;
    };
    std::string e;
    if (!registers()->put(doc_family::state, "oauth/key/" + cfg.node.id, oauth->public_jwk(), &e)) {
      *error = "cannot publish the OAuth signing key: " + e;
      return false;
    }
    if (cluster) cluster->flush();
    adopt_oauth();
    log()->info("oauth: tokens signed with key {}", oauth->kid());
    return true;
  }

  // Records a revoked access token everywhere (a register kept until the token expires).
  bool revoke_token(const std::string& jti, int64_t exp_s, std::string* error) {
    nlohmann::json j = {{"exp", exp_s}};
    // With a cluster not synced to disk (this runs on a proxy worker, and the register spreads
    // by gossip to nodes that keep it); alone, synced, or a crash could forget it. The change
    // handler adopts it.
    if (!registers()->put(doc_family::state, "oauth/revoked/" + jti, j.dump(), error,
                          /*sync=*/!cluster))
      return false;
    if (cluster) cluster->flush();
    return true;
  }

  // The single-use record of an authorization code or refresh token id, if it was redeemed.
  std::optional<std::string> code_use(const std::string& id) {
    auto e = registers()->get(doc_family::state, "oauth/used/" + id);
    if (!e || e->deleted) return std::nullopt;
    return e->value;
  }

  // Records a redemption as a register kept until the code or token expires. This node
  // remembers what it wrote for a minute: if another node redeemed the same id before the two
  // registers met, one write loses, and adopt_oauth() revokes both grants.
  bool record_code_use(const std::string& id, const std::string& value, int64_t exp_s,
                       std::string* error) {
    auto j = nlohmann::json::parse(value, nullptr, false);
    if (!j.is_object()) j = nlohmann::json::object();
    j["exp"] = exp_s;
    j["node"] = cfg.node.id;
    std::string v = j.dump();
    if (cluster) {
      std::lock_guard lock(redemptions_mutex);
      my_redemptions[id] = {v, unix_now_ms() + 60'000};
    }
    if (!registers()->put(doc_family::state, "oauth/used/" + id, v, error,
                          /*sync=*/!cluster))
      return false;
    if (cluster) cluster->flush();
    return true;
  }

  // A code or refresh token this node redeemed whose register now holds another node's
  // redemption was redeemed twice: revoke both grant families (RFC 6749 section 4.1.2).
  void check_double_redemptions() {
    std::vector<std::pair<std::string, std::string>> clashes;  // (mine, theirs)
    {
      std::lock_guard lock(redemptions_mutex);
      if (my_redemptions.empty()) return;
      const int64_t now = unix_now_ms();
      for (auto it = my_redemptions.begin(); it != my_redemptions.end();) {
        auto e = cluster->state().get(doc_family::state, "oauth/used/" + it->first);
        if (e && !e->deleted && e->value != it->second.first) {
          clashes.emplace_back(it->second.first, e->value);
          it = my_redemptions.erase(it);
        } else if (now >= it->second.second) {
          it = my_redemptions.erase(it);
        } else {
          ++it;
        }
      }
    }
    for (const auto& [mine, theirs] : clashes) {
      for (const auto& text : {mine, theirs}) {
        auto j = nlohmann::json::parse(text, nullptr, false);
        if (!j.is_object() || !j.contains("fid") || !j["fid"].is_string()) continue;
        std::string error;
        auto snap = current();
        const oauth_config fallback;  // the defaults, should the section be gone by now
        int64_t until = unix_now_ms() / 1000 +
                        oauth_authority::grant_lifetime_s(snap && snap->cfg.oauth ? *snap->cfg.oauth
                                                                                  : fallback);
        log()->warn(
            "oauth: a code or refresh token was redeemed on two nodes at once; revoking "
            "grant {}",
            j["fid"].get<std::string>());
        if (!revoke_token(j["fid"].get<std::string>(), until, &error))
          log()->warn("oauth: revocation not stored: {}", error);
      }
    }
  }

  // Rebuilds the OAuth verification keys (every node's published key) and revoked token ids
  // (unexpired ones) from the cluster registers.
  void adopt_oauth() {
    if (!oauth || !registers()) return;
    adopt_oauth_registers();
    if (cluster) check_double_redemptions();  // outside the lock: it may revoke, which adopts
  }

  void adopt_oauth_registers() {
    // One reader at a time, so an older view read first cannot be stored last.
    std::lock_guard lock(adopt_oauth_mutex);
    std::vector<std::string> keys;
    std::unordered_set<std::string> revoked;
    const int64_t now_s = unix_now_ms() / 1000;
    for (const auto& [key, e] : registers()->documents(doc_family::state, false, "oauth/key/")) {
      keys.push_back(e.value);
    }
    for (const auto& [key, e] :
         registers()->documents(doc_family::state, false, "oauth/revoked/")) {
      auto j = nlohmann::json::parse(e.value, nullptr, false);
      int64_t exp = j.is_object() ? j.value("exp", int64_t{0}) : 0;
      // Kept while the verifier's clock leeway could still accept the token.
      if (exp + oauth_leeway_s >= now_s) revoked.insert(key.substr(14));
    }
    oauth->set_published(keys);
    oauth->set_revoked(std::move(revoked));
  }

  // Appends one admin change to the cluster's audit trail: a register per change
  // ("audit/log/<unix ms>-<node>-<seq>": two slashes, so no breaker register
  // "<upstream>/<host:port>" of an upstream named "audit" falls in its range), spread by gossip
  // like breaker states.
  // Where registers live: the cluster's replicated state, or, on a node without a cluster, its
  // local state (kept in its own store, never gossiped).
  cluster::replicated_state* registers() { return cluster ? &cluster->state() : local_state.get(); }

  void record_audit(const std::string& method, const std::string& path, const std::string& from,
                    const std::string& client_cert, int status) {
    auto* st = registers();
    if (!st) return;
    int64_t at = unix_now_ms();
    char key[96];
    std::snprintf(key, sizeof key, "audit/log/%013lld-%s-%llu", static_cast<long long>(at),
                  cfg.node.id.c_str(), static_cast<unsigned long long>(++audit_seq));
    // The path comes from the client: bounded, and invalid UTF-8 replaced rather than thrown.
    nlohmann::json j = {{"at", at},         {"node", cfg.node.id},
                        {"method", method}, {"path", path.substr(0, 2048)},
                        {"from", from},     {"status", status}};
    if (!client_cert.empty()) j["client_cert"] = client_cert;
    std::string error;
    const std::string record = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (!st->put(doc_family::state, key, record, &error, /*sync=*/false))
      log()->warn("audit record not stored: {}", error);
    if (cluster) cluster->flush();
  }

  // The trail, newest first: entries at or after since_ms, at most limit.
  nlohmann::json audit_view(int64_t since_ms, size_t limit) {
    nlohmann::json out = nlohmann::json::array();
    if (auto* st = registers()) {
      auto docs = st->documents(doc_family::state, false, "audit/log/");
      for (auto it = docs.rbegin(); it != docs.rend() && out.size() < limit; ++it) {
        auto j = nlohmann::json::parse(it->second.value, nullptr, false);
        if (!j.is_object() || j.value("at", int64_t{0}) < since_ms) continue;
        out.push_back(std::move(j));
      }
    }
    return {{"entries", std::move(out)}, {"replicated", cluster != nullptr}};
  }

  // Forgets audit entries older than audit_retention, and the oldest beyond max_audit_entries.
  void collect_audit() {
    auto* st = registers();
    if (!st) return;
    const int64_t cutoff = unix_now_ms() - audit_retention_ms;
    auto docs = st->documents(doc_family::state, false, "audit/log/");
    size_t kept = 0;
    for (auto it = docs.rbegin(); it != docs.rend(); ++it) {
      auto j = nlohmann::json::parse(it->second.value, nullptr, false);
      bool old = !j.is_object() || j.value("at", int64_t{0}) < cutoff;
      if (old || ++kept > max_audit_entries) {
        std::string error;
        st->remove(doc_family::state, it->first, &error);
      }
    }
  }

  // DELETE /cluster/members/{id}: a member that is not alive is declared gone for good; every
  // node stops counting it for strict majorities (a register "strict/forget/<id>", read by the
  // strict view's refresh). Refused for this node, an alive or suspect member, or an unknown one.
  admin_reply forget_member(const std::string& id) {
    std::optional<cluster::member_state> state;
    for (const auto& m : cluster->members())
      if (m.info.id == id) state = m.state;
    bool counted = false;
    for (const auto& m : strict->counted_members()) counted |= m.id == id;
    if (id == cfg.node.id)
      return {409, {{"error", "conflict"}, {"message", "a node does not forget itself"}}};
    if (!state && !counted)
      return {404, {{"error", "not_found"}, {"message", "no member " + id + " is known here"}}};
    if (state == cluster::member_state::alive || state == cluster::member_state::suspect)
      return {
          409,
          {{"error", "conflict"},
           {"message", id + " is " + (state == cluster::member_state::alive ? "alive" : "suspect") +
                           ": stop it first (SIGTERM makes it leave the cluster)"}}};
    std::string error;
    nlohmann::json j = {{"at", unix_now_ms()}, {"by", cfg.node.id}};
    if (!cluster->state().put(doc_family::state, std::string(strict_forget_prefix) + id, j.dump(),
                              &error))
      return {500, {{"error", "internal"}, {"message", error}}};
    cluster->flush();
    log()->warn("member {} forgotten by an operator: strict rate limits no longer count it", id);
    return {200, {{"forgotten", id}}};
  }

  // Deletes forget records of members seen alive since (the forget is over: if they die again
  // they count until forgotten again) and records older than a week (the membership reaped the
  // member long before).
  void collect_strict_forgets() {
    if (!strict) return;
    std::set<std::string> alive;
    for (const auto& m : cluster->members())
      if (m.state == cluster::member_state::alive) alive.insert(m.info.id);
    const int64_t cutoff = unix_now_ms() - 7LL * 24 * 3600 * 1000;
    auto& st = cluster->state();
    for (const auto& [id, at] : strict_forgets(st)) {
      std::string error;
      if (alive.count(id) || at < cutoff)
        st.remove(doc_family::state, std::string(strict_forget_prefix) + id, &error);
    }
  }

  // Deletes revocation registers of tokens that expired (past the leeway): they can no longer
  // be presented, so the set every node holds stays the size of the live revocations.
  // Single-use records go the same way once their code or refresh token expired.
  void collect_revocations() {
    if (!oauth) return;
    const int64_t now_s = unix_now_ms() / 1000;
    auto* st = registers();
    for (const char* prefix : {"oauth/revoked/", "oauth/used/"}) {
      for (const auto& [key, e] : st->documents(doc_family::state, false, prefix)) {
        auto j = nlohmann::json::parse(e.value, nullptr, false);
        int64_t exp = j.is_object() ? j.value("exp", int64_t{0}) : 0;
        std::string error;
        if (exp + oauth_leeway_s < now_s) st->remove(doc_family::state, key, &error);
      }
    }
  }

  // Publishes queued breaker transitions and, once a second, decides which targets this node
  // probes when half-open (rendezvous hashing over the live members of the breaker's scope).
  void run_breaker_sync() {
    auto last_owners = std::chrono::steady_clock::time_point{};
    auto last_oauth_gc = std::chrono::steady_clock::now();
    for (;;) {
      auto keys = targets.wait_published(std::chrono::milliseconds(250));
      if (breaker_sync_stop.load()) return;
      keep_strict_members();
      auto snap = current();
      for (const auto& key : keys) publish_breaker(key);
      if (!keys.empty()) cluster->flush();
      if (std::chrono::steady_clock::now() - last_owners >= std::chrono::seconds(1)) {
        assign_probe_owners(*snap);
        last_owners = std::chrono::steady_clock::now();
      }
      if (std::chrono::steady_clock::now() - last_oauth_gc >= std::chrono::minutes(1)) {
        collect_revocations();
        collect_audit();
        collect_strict_forgets();
        last_oauth_gc = std::chrono::steady_clock::now();
      }
    }
  }

  void publish_breaker(const std::string& key) {
    auto t = targets.find(key);
    if (!t) return;
    auto v = t->breaker.view();
    nlohmann::json j = {
        {"state", to_string(v.state)}, {"since", v.since_ms}, {"until", v.until_ms},
        {"origin", v.origin},          {"trips", v.trips},    {"region", cfg.node.region}};
    std::string error;
    auto version = cluster->state().put(doc_family::state, key, j.dump(), &error, /*sync=*/false);
    if (version) t->breaker.set_applied_version(version);
  }

  static uint64_t rendezvous(const std::string& member, const std::string& key) {
    uint64_t h = 1469598103934665603ull;
    for (unsigned char c : member + "\x1f" + key) h = (h ^ c) * 1099511628211ull;
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    return h ^ (h >> 33);
  }

  void assign_probe_owners(const snapshot& snap) {
    auto live = cluster->live_members();
    const std::string& self = cluster->self_id();
    for (const auto& up : snap.upstreams) {
      const auto& cb = up->cfg->circuit_breaker;
      for (const auto& target : up->targets) {
        target_state* t = target.state.get();
        if (!cb.enabled || cb.scope == "local") {
          t->may_probe = true;
          continue;
        }
        std::string best;
        uint64_t best_score = 0;
        for (const auto& [id, region] : live) {
          if (cb.scope == "region" && region != cfg.node.region) continue;
          uint64_t score = rendezvous(id, t->key);
          if (best.empty() || score > best_score) {
            best = id;
            best_score = score;
          }
        }
        t->may_probe = best.empty() || best == self;
      }
    }
  }

  // Adopts the breaker states other nodes published (called after the replicated state merged
  // some). Region scope: only states published from this node's region.
  void adopt_breakers() {
    auto snap = current();
    std::map<std::string, const circuit_breaker_config*> scope_of;
    for (const auto& up : snap->upstreams) scope_of[up->cfg->name] = &up->cfg->circuit_breaker;
    // Breaker registers are "<upstream>/<host:port>": read each upstream's range only, not the
    // other registers of the family (keyrings, OAuth keys, the audit trail).
    std::vector<std::pair<std::string, cluster::lww_entry>> docs;
    for (const auto& [name, cb] : scope_of) {
      if (!cb->enabled || cb->scope == "local") continue;
      auto some = cluster->state().documents(doc_family::state, false, name + "/");
      docs.insert(docs.end(), std::make_move_iterator(some.begin()),
                  std::make_move_iterator(some.end()));
    }
    for (const auto& [key, e] : docs) {
      auto t = targets.find(key);
      if (!t) continue;
      auto it = scope_of.find(t->upstream);
      if (it == scope_of.end() || !it->second->enabled || it->second->scope == "local") continue;
      if (e.version <= t->breaker.applied_version()) continue;
      auto j = nlohmann::json::parse(e.value, nullptr, false);
      if (!j.is_object()) continue;
      if (it->second->scope == "region" && j.value("region", "") != cfg.node.region) continue;
      // Our own publication coming back through the state: already applied here.
      if (j.value("origin", "") == cfg.node.id) {
        t->breaker.set_applied_version(e.version);
        continue;
      }
      breaker_view v;
      if (!breaker_state_from(j.value("state", ""), &v.state)) continue;
      v.since_ms = j.value("since", int64_t{0});
      v.until_ms = j.value("until", int64_t{0});
      v.origin = j.value("origin", "");
      v.trips = j.value("trips", 0u);
      t->breaker.adopt(v, e.version);
      targets.count_transition();
    }
  }

  void stop_breaker_sync() {
    if (!breaker_sync.joinable()) return;
    breaker_sync_stop = true;
    targets.stop_publishing();
    breaker_sync.join();
    keep_strict_members();
  }

  // The members strict majorities are counted over, handed over by the strict limiter on the
  // gossip thread and written (synced) here, on the maintenance thread: an fsync must not hold
  // up probes. Only the latest list is written.
  void keep_strict_members() {
    std::optional<std::vector<strict_limiter::counted_member>> members;
    {
      std::lock_guard lock(strict_members_mu);
      members.swap(strict_members_pending);
    }
    if (members) write_strict_members(cluster->store(), *members);
  }
  std::mutex strict_members_mu;
  std::optional<std::vector<strict_limiter::counted_member>> strict_members_pending;
  std::atomic<bool> breaker_sync_stop{false};

  void stop_persister() {
    if (!persister.running()) return;
    persister.stop();
    limiter->flush();
    local_state->persist_counters();
  }
  std::string token;
  std::atomic<uint64_t> version{0};
  mutable std::mutex snap_mutex;
  std::shared_ptr<const snapshot> snap;
  // Declared before the proxy: the workers' tracing stages submit to it until they stop.
  std::unique_ptr<otlp_exporter> tracer;  // null without a `tracing` section
  // Usage analytics (null with analytics.enabled false); before the proxy for the same reason.
  std::unique_ptr<usage_recorder> usage;
  std::unique_ptr<usage_store> usage_db;
  periodic_thread usage_collector;  // drains the workers' counts into usage_db, persists them
  std::string peer_token;           // what other nodes present to /peer/... (peers.h)
  peer_client peers;                // how this node calls theirs (set at start, then read-only)

  // Moves the workers' counts into the store's open minute and hour; with persist, writes them.
  // One at a time (collector and admin threads), so a batch never lands after a newer one.
  std::mutex usage_collect_mutex;
  void collect_usage(bool persist) {
    if (!usage) return;
    std::lock_guard lock(usage_collect_mutex);
    usage_batch batch;
    usage->drain(batch);
    const int64_t now = unix_now_ms();
    usage_db->add(batch, now);
    std::string error;
    if (persist && !usage_db->persist(now, &error))
      log()->warn("usage analytics not stored: {}", error);
  }
  void stop_usage() {
    usage_collector.stop();
    collect_usage(true);
  }
  std::unique_ptr<proxy_server> proxy;
  std::unique_ptr<admin_server> admin;
  std::unique_ptr<health_checker> health;
  std::unique_ptr<cluster_bridge> cluster;                // null without a `cluster` section
  std::shared_ptr<std::function<void()>> strict_refresh;  // the strict view's refresh job

  // Serialises building and installing snapshots (SIGHUP, admin writes, remote changes).
  std::mutex apply_mutex;
  std::mutex install_mutex;  // taken after apply_mutex when both are held
  std::atomic<uint64_t> installs_started{0};
  std::mutex installs_mutex;  // guards installs_done
  std::condition_variable installs_cv;
  uint64_t installs_done = 0;     // the newest install (by start order) that finished
  uint64_t installed_digest = 0;  // config digest of the installed snapshot (install_mutex)
  // Snapshots install() replaced, kept until nothing else holds them, so that the last reference
  // is dropped here and not on a worker: freeing a snapshot of 10,000 routes takes milliseconds
  // that a worker would stall for. Under install_mutex; install() and the applier reap them.
  std::vector<std::shared_ptr<const snapshot>> retired;
  void reap_retired() {
    std::erase_if(retired, [](const auto& s) { return s.use_count() == 1; });
  }
  std::mutex reported_mutex;
  std::set<std::string> reported_problems;  // under reported_mutex
  // Applies remote config changes off the gossip thread.
  std::thread applier;
  std::mutex applier_mutex;
  std::condition_variable applier_cv;
  bool config_dirty = false;
  bool applier_stop = false;
  document_cache doc_cache;  // parsed cluster config documents, for compose_config
  // The problems of the documents as of the last admin write, and the digest they belong to.
  std::vector<std::string> last_errors;
  uint64_t last_errors_digest = 0;

  std::shared_ptr<const snapshot> current() const {
    std::lock_guard lock(snap_mutex);
    return snap;
  }

  // Returns the config to serve: the file's, with the cluster documents in place of its
  // routes, upstreams and consumers when clustered. Problems are logged once each.
  config effective(const config& base) {
    if (!cluster) return base;
    auto composed = compose_config(base, documents_of(cluster->state()), false, &doc_cache);
    std::lock_guard lock(reported_mutex);
    for (const auto& e : composed.errors) {
      if (reported_problems.insert(e).second)
        log()->warn("cluster config document left out: {}", e);
    }
    return std::move(composed.cfg);
  }

  // Builds and installs a snapshot of base (plus the cluster documents). Called under
  // apply_mutex.
  // The API keys among the cluster documents ("keys/<key_id>"), for the data plane; keys of
  // consumers that no longer exist are left out (deleting a consumer revokes its keys).
  std::shared_ptr<const api_key_table> key_table(const config& eff) {
    auto* st = registers();
    if (!st) return nullptr;
    auto table = std::make_shared<api_key_table>();
    for (auto& [key, e] : st->documents(doc_family::config, false, "keys/")) {
      std::string id = key.substr(5);
      auto rec = parse_api_key_document(id, e.value);
      if (!rec) continue;
      bool consumer_known =
          std::any_of(eff.consumers.begin(), eff.consumers.end(),
                      [&](const consumer_config& c) { return c.id == rec->consumer; });
      if (!consumer_known) continue;
      rec->usage = key_usage.get(id);
      table->emplace(id, std::move(*rec));
    }
    return table;
  }

  // Builds and installs a snapshot of base; only_if_changed: unless the installed one already
  // holds every cluster document. Any thread; installs are serialized by install_mutex.
  bool install(const config& base, std::string* error, bool only_if_changed = false) {
    std::lock_guard installing(install_mutex);
    const uint64_t generation = ++installs_started;
    struct mark_done {  // however this ends, writes before it began are now served (or failed)
      impl& d;
      uint64_t generation;
      ~mark_done() {
        {
          std::lock_guard lock(d.installs_mutex);
          d.installs_done = std::max(d.installs_done, generation);
        }
        d.installs_cv.notify_all();
      }
    } done{*this, generation};
    uint64_t digest = registers() ? registers()->digest(doc_family::config) : 0;
    if (only_if_changed && digest == installed_digest) return true;
    const auto start = steady_clock::now();
    config eff = effective(base);
    const auto composed = steady_clock::now();
    auto keys = key_table(eff);
    const auto keyed = steady_clock::now();
    auto next =
        build_snapshot(std::move(eff), version + 1, cfg.node.workers, targets, metrics, error,
                       limiter.get(), std::move(keys), oauth.get(), tracer.get(), usage.get());
    const auto built = steady_clock::now();
    if (!next) return false;
    for (const auto& w : next->warnings) log()->warn("{}", w);
    ++version;
    std::shared_ptr<const snapshot> previous;
    {
      std::lock_guard lock(snap_mutex);
      previous = std::exchange(snap, next);
    }
    installed_digest = digest;
    if (proxy) proxy->update(next);
    if (health) health->update(next);
    if (previous) retired.push_back(std::move(previous));
    reap_retired();
    auto ms = [](auto from, auto to) {
      return std::chrono::duration<double, std::milli>(to - from).count();
    };
    log()->info(
        "config version {} applied: {} routes, {} upstreams in {:.1f} ms (compose {:.1f}, "
        "snapshot {:.1f})",
        next->version, next->routes.size(), next->upstreams.size(), ms(start, steady_clock::now()),
        ms(start, composed), ms(keyed, built));
    return true;
  }

  void run_applier() {
    std::unique_lock lock(applier_mutex);
    steady_clock::time_point rested;  // when the next build may start
    for (;;) {
      if (!applier_cv.wait_for(lock, std::chrono::seconds(1),
                               [&] { return config_dirty || applier_stop; })) {
        lock.unlock();
        {
          std::lock_guard installing(install_mutex);
          reap_retired();
        }
        lock.lock();
        continue;
      }
      // A build is linear in the number of documents, so back-to-back builds during a bulk load
      // or a burst of gossip would spend a core on rebuilding: after a build that took T, the
      // next starts T after it ended at the earliest (half a core at most), and takes every
      // change that arrived meanwhile. A change after a quiet spell is built at once.
      applier_cv.wait_until(lock, rested, [&] { return applier_stop; });
      if (applier_stop) return;
      config_dirty = false;
      lock.unlock();
      {
        // The base config under apply_mutex (a reload replaces it), the build outside it, so
        // that admin writes are not held up by a snapshot being built.
        config base;
        {
          std::lock_guard apply(apply_mutex);
          base = cfg;
        }
        std::string error;
        const auto start = steady_clock::now();
        if (!install(base, &error, /*only_if_changed=*/true))
          log()->error("cluster config change not applied: {}", error);
        const auto end = steady_clock::now();
        rested = end + (end - start);
      }
      lock.lock();
    }
  }

  void stop_applier() {
    if (!applier.joinable()) return;
    {
      std::lock_guard lock(applier_mutex);
      applier_stop = true;
    }
    applier_cv.notify_all();
    applier.join();
  }

  // Seeds the cluster config from the file at the node's first start.
  void seed_from_file() {
    if (!cluster->needs_seed()) return;
    auto j = config_to_json(cfg);
    auto& st = cluster->state();
    for (const char* kind : {"routes", "upstreams", "consumers"}) {
      const char* name_key = std::string_view(kind) == "consumers" ? "id" : "name";
      for (const auto& item : j[kind]) {
        st.seed(doc_family::config, std::string(kind) + "/" + item[name_key].get<std::string>(),
                item.dump());
      }
    }
    cluster->mark_seeded();
  }

  // GET /breakers: every target of an upstream with a circuit breaker.
  nlohmann::json breakers_json() {
    auto snap = current();
    auto list = nlohmann::json::array();
    for (const auto& up : snap->upstreams) {
      if (!up->cfg->circuit_breaker.enabled) continue;
      for (const auto& target : up->targets) {
        const target_state* t = target.state.get();
        auto v = t->breaker.view();
        nlohmann::json b = {{"upstream", up->cfg->name},
                            {"target", t->addr.to_string()},
                            {"region", target.region},
                            {"state", to_string(v.state)},
                            {"since", v.since_ms},
                            {"origin", v.origin},
                            {"trips", v.trips},
                            {"scope", up->cfg->circuit_breaker.scope},
                            {"probes_here", t->may_probe.load()}};
        if (v.state == breaker_state::open) b["until"] = v.until_ms;
        list.push_back(std::move(b));
      }
    }
    return {{"breakers", list}};
  }

  // Prometheus lines for breakers and failover.
  std::string breaker_metrics() {
    auto snap = current();
    std::string out =
        "# HELP meridian_breaker_state Circuit breaker state per target (0 closed, 1 open, 2 "
        "half_open).\n# TYPE meridian_breaker_state gauge\n";
    std::string failovers =
        "# HELP meridian_upstream_failovers_total Requests sent to a target in another region "
        "because none in this one was usable.\n# TYPE meridian_upstream_failovers_total counter\n";
    for (const auto& up : snap->upstreams) {
      failovers += "meridian_upstream_failovers_total{upstream=\"" + up->cfg->name + "\"} " +
                   std::to_string(up->failovers.load()) + "\n";
      if (!up->cfg->circuit_breaker.enabled) continue;
      for (const auto& t : up->targets) {
        out += "meridian_breaker_state{upstream=\"" + up->cfg->name + "\",target=\"" +
               t.state->addr.to_string() + "\"} " +
               std::to_string(static_cast<int>(t.state->breaker.view().state)) + "\n";
      }
    }
    out += failovers;
    out +=
        "# HELP meridian_breaker_transitions_total Breaker state changes, observed here or "
        "adopted.\n# TYPE meridian_breaker_transitions_total counter\n"
        "meridian_breaker_transitions_total " +
        std::to_string(targets.breaker_transitions()) + "\n";
    if (tracer) {
      out +=
          "# HELP meridian_tracing_spans_exported_total Spans sent to the OTLP endpoint.\n"
          "# TYPE meridian_tracing_spans_exported_total counter\n"
          "meridian_tracing_spans_exported_total " +
          std::to_string(tracer->exported()) +
          "\n# HELP meridian_tracing_spans_dropped_total Spans dropped: the export queue was full "
          "or the endpoint failed twice.\n# TYPE meridian_tracing_spans_dropped_total counter\n"
          "meridian_tracing_spans_dropped_total " +
          std::to_string(tracer->dropped()) + "\n";
    }
    return out;
  }

  // The route named route and its limit number `limit` (empty: 0), or an error reply.
  struct limit_ref {
    std::shared_ptr<const snapshot> snap;
    const route_config* route = nullptr;
    size_t index = 0;
  };
  std::optional<admin_reply> find_limit(const std::string& route, const std::string& limit,
                                        limit_ref* out) {
    out->snap = current();
    for (const auto& r : out->snap->cfg.routes)
      if (r.name == route) out->route = &r;
    if (!out->route) return error_reply(404, "not_found", "no route '" + route + "'");
    const auto& limits = out->route->rate_limits;
    if (limits.empty())
      return error_reply(404, "not_found", "route '" + route + "' has no rate limit");
    if (!limit.empty()) {
      auto [p, ec] = std::from_chars(limit.data(), limit.data() + limit.size(), out->index);
      if (ec != std::errc() || p != limit.data() + limit.size() || out->index >= limits.size())
        return error_reply(400, "bad_request",
                           "limit must be 0.." + std::to_string(limits.size() - 1));
    }
    return std::nullopt;
  }

  // GET /ratelimits/{route}?key=K[&limit=I]: the cluster-wide count of one key of one limit;
  // without ?key= (for a limit keyed per consumer, address or header), the busiest keys.
  admin_reply ratelimit_view(const std::string& route, const std::string& key,
                             const std::string& limit, const std::string& top) {
    limit_ref ref;
    if (auto e = find_limit(route, limit, &ref)) return *e;
    const auto& lc = ref.route->rate_limits[ref.index];
    auto spec = limiter->compile(ref.route->name, ref.index, lc);
    int64_t now = unix_now_ms();
    // route and global limits count one key whatever the request: ?key= names nothing there.
    const bool keyless =
        spec.key == limit_spec::key_kind::route || spec.key == limit_spec::key_kind::global;
    nlohmann::json out = {{"key", lc.key}, {"scope", lc.scope}, {"algorithm", lc.algorithm}};
    if (keyless || !key.empty()) {
      auto v = limiter->view(rate_limiter::key_of(spec, keyless ? std::string() : key), spec, now);
      out.update({{"limit", v.limit},
                  {"window_ms", v.window_ms},
                  {"count", v.count},
                  {"by_node", v.by_node}});
      return {200, std::move(out)};
    }
    size_t top_n = 10;
    if (!top.empty()) {
      auto [p, ec] = std::from_chars(top.data(), top.data() + top.size(), top_n);
      if (ec != std::errc() || p != top.data() + top.size() || top_n == 0 || top_n > 100)
        return error_reply(400, "bad_request", "top must be 1..100");
    }
    // Candidates: the keys this node and every other saw most (their Space-Saving summaries);
    // counts: the cluster-wide counters the limit decides on.
    const uint64_t window = spec.window_of(now).index;
    struct candidate {
      std::string key;        // as shown
      uint64_t rejected = 0;  // in the current window, summed over the nodes
    };
    std::map<uint64_t, candidate> found;  // by counter key
    auto note = [&](uint64_t hash, const std::string& k, uint64_t w, uint64_t r) {
      auto& c = found[hash];
      if (c.key.empty()) c.key = k;
      if (w == window) c.rejected += r;
    };
    for (const auto& e : local_candidates(ref, now)) note(e.hash, e.key, e.window, e.rejected);
    auto answered = nlohmann::json::array({cfg.node.id});
    auto missing = nlohmann::json::array();
    if (cluster) {
      auto r = ask_peers(*cluster, peers,
                         "/peer/ratelimits/" + route + "?limit=" + std::to_string(ref.index));
      for (auto& id : r.missing) missing.push_back(id);
      for (auto& [id, j] : r.answers) {
        if (!j.contains("candidates") || !j["candidates"].is_array()) {
          missing.push_back(id);
          continue;
        }
        for (const auto& c : j["candidates"]) {
          if (!c.is_object() || !c.contains("key") || !c["key"].is_string() ||
              !c.contains("hash") || !c["hash"].is_number_unsigned())
            continue;
          note(c["hash"].get<uint64_t>(), c["key"].get<std::string>(),
               c.value("window", uint64_t{0}), c.value("rejected", uint64_t{0}));
        }
        answered.push_back(id);
      }
    }
    std::vector<std::pair<uint64_t, nlohmann::json>> rows;
    for (const auto& [hash, c] : found) {
      auto v = limiter->view(hash, spec, now);
      if (v.count == 0 && c.rejected == 0) continue;
      rows.emplace_back(v.count,
                        nlohmann::json{{"key", c.key},
                                       {"count", v.count},
                                       {"remaining", v.count >= v.limit ? 0 : v.limit - v.count},
                                       {"rejected", c.rejected},
                                       {"by_node", v.by_node}});
      out["limit"] = v.limit;
      out["window_ms"] = v.window_ms;
    }
    std::stable_sort(rows.begin(), rows.end(),
                     [](const auto& a, const auto& b) { return a.first > b.first; });
    auto list = nlohmann::json::array();
    for (size_t i = 0; i < rows.size() && i < top_n; ++i) list.push_back(std::move(rows[i].second));
    if (!out.contains("limit")) {
      out["limit"] = spec.limit;
      out["window_ms"] = spec.window_ms;
    }
    out["top"] = std::move(list);
    out["nodes"] = {{"answered", std::move(answered)}, {"missing", std::move(missing)}};
    return {200, std::move(out)};
  }

  // This node's busiest keys of one limit, noted within the last two windows.
  std::vector<key_tracker::entry> local_candidates(const limit_ref& ref, int64_t now) {
    auto spec = limiter->compile(ref.route->name, ref.index, ref.route->rate_limits[ref.index]);
    return limiter->stats_for(ref.route->name)
        .keys.candidates(ref.index, now - 2 * static_cast<int64_t>(spec.window_ms));
  }

  // GET /peer/ratelimits/{route}?limit=I: the candidates, for the node merging them.
  admin_reply peer_ratelimit_keys(const std::string& route, const std::string& limit) {
    limit_ref ref;
    if (auto e = find_limit(route, limit, &ref)) return *e;
    auto list = nlohmann::json::array();
    for (const auto& e : local_candidates(ref, unix_now_ms()))
      list.push_back(
          {{"hash", e.hash}, {"key", e.key}, {"window", e.window}, {"rejected", e.rejected}});
    return {200, {{"candidates", std::move(list)}}};
  }

  // GET /consumers/{id}/usage: for every rate limit keyed by consumer, this consumer's count in
  // the current window, summed over the cluster (the same counters the limits decide on).
  admin_reply consumer_usage(const std::string& consumer) {
    if (!consumer_known(consumer))
      return error_reply(404, "not_found", "no consumer '" + consumer + "'");
    auto snap = current();
    int64_t now = unix_now_ms();
    auto quotas = nlohmann::json::array();
    for (const auto& r : snap->cfg.routes) {
      for (size_t i = 0; i < r.rate_limits.size(); ++i) {
        const auto& cfg = r.rate_limits[i];
        if (cfg.key != "consumer") continue;
        auto spec = limiter->compile(r.name, i, cfg);
        auto v = limiter->view(rate_limiter::key_of(spec, consumer), spec, now);
        const auto window = spec.window_of(now);
        int64_t window_start = window.start_ms;
        quotas.push_back({{"route", r.name},
                          {"limit_index", i},
                          {"limit", v.limit},
                          {"window_ms", window.length_ms},
                          {"window_start", window_start},
                          {"window_end", window_start + static_cast<int64_t>(window.length_ms)},
                          {"count", v.count},
                          {"remaining", v.count >= v.limit ? 0 : v.limit - v.count},
                          {"by_node", v.by_node},
                          {"scope", cfg.scope}});
      }
    }
    return {200, {{"consumer", consumer}, {"quotas", std::move(quotas)}}};
  }

  // POST /config/consumers/{id}/keys, DELETE .../keys/{key_id}, GET .../keys.
  // Whether the current config defines consumer id.
  bool consumer_known(const std::string& id) {
    auto snap = current();
    return std::any_of(snap->cfg.consumers.begin(), snap->cfg.consumers.end(),
                       [&](const consumer_config& c) { return c.id == id; });
  }

  admin_reply keys_request(const std::string& method, const std::string& consumer,
                           const std::string& key_id, const std::string& body) {
    // Cluster documents; on a node without a cluster, documents of its local state.
    if (!consumer_known(consumer))
      return error_reply(404, "not_found", "no consumer '" + consumer + "'");
    auto& st = *registers();
    int64_t now = unix_now_ms();
    if (method == "GET") {
      auto list = nlohmann::json::array();
      for (auto& [key, e] : st.documents(doc_family::config, false, "keys/")) {
        auto rec = parse_api_key_document(key.substr(5), e.value);
        if (!rec || rec->consumer != consumer) continue;
        auto* u = key_usage.get(rec->key_id);
        list.push_back({{"key_id", rec->key_id},
                        {"created", rec->created_ms},
                        {"expires", rec->expires_ms},
                        {"expired", rec->expires_ms && now >= rec->expires_ms},
                        {"requests", u->requests.load()},
                        {"last_used", u->last_used_ms.load()}});
      }
      return {200, {{"consumer", consumer}, {"keys", list}, {"usage_on", cfg.node.id}}};
    }
    if (method == "DELETE") {
      auto e = st.get(doc_family::config, "keys/" + key_id);
      auto rec = e && !e->deleted ? parse_api_key_document(key_id, e->value) : std::nullopt;
      if (!rec || rec->consumer != consumer)
        return error_reply(404, "not_found", "consumer '" + consumer + "' has no key " + key_id);
      std::string error;
      auto v = st.remove(doc_family::config, "keys/" + key_id, &error);
      if (!v) return error_reply(503, "storage_error", error);
      if (cluster) cluster->flush();
      return {200, {{"revoked", key_id}, {"version", v}}};
    }
    // POST: optional {"expires_in": "30d"}; rotation = issue a new key, then revoke the old one.
    int64_t expires = 0;
    if (!body.empty()) {
      auto j = nlohmann::json::parse(body, nullptr, false);
      if (!j.is_object()) return error_reply(400, "invalid_json", "body must be a JSON object");
      if (j.contains("expires_in")) {
        auto d = j["expires_in"].is_string() ? parse_duration(j["expires_in"].get<std::string>())
                                             : std::nullopt;
        if (!d || d->count() <= 0)
          return error_reply(400, "invalid_config", "expires_in must be a duration like \"30d\"");
        expires = now + std::chrono::duration_cast<std::chrono::milliseconds>(*d).count();
      }
    }
    auto k = issue_api_key(consumer, now, expires);
    std::string error;
    auto v = st.put(doc_family::config, "keys/" + k.key_id, k.document, &error);
    if (!v) return error_reply(503, "storage_error", error);
    if (cluster) cluster->flush();
    return {
        201,
        {{"key_id", k.key_id}, {"key", k.plaintext}, {"consumer", consumer}, {"expires", expires}}};
  }

  // PUT {"password": "..."} sets a consumer's password (the resource owner's, for the OAuth
  // password and authorization_code grants); DELETE removes it. Only an Argon2id hash is stored,
  // as the cluster document "passwords/<consumer>".
  admin_reply password_request(const std::string& method, const std::string& consumer,
                               const std::string& body) {
    if (!consumer_known(consumer))
      return error_reply(404, "not_found", "no consumer '" + consumer + "'");
    auto& st = *registers();
    std::string error;
    if (method == "GET") {  // whether one is set, and when (never the hash)
      auto e = st.get(doc_family::config, "passwords/" + consumer);
      auto j =
          e && !e->deleted ? nlohmann::json::parse(e->value, nullptr, false) : nlohmann::json();
      if (!j.is_object()) return {200, {{"consumer", consumer}, {"password", "none"}}};
      return {200,
              {{"consumer", consumer},
               {"password", "set"},
               {"updated", j.value("updated", int64_t{0})}}};
    }
    if (method == "DELETE") {
      auto e = st.get(doc_family::config, "passwords/" + consumer);
      if (!e || e->deleted)
        return error_reply(404, "not_found", "consumer '" + consumer + "' has no password");
      auto v = st.remove(doc_family::config, "passwords/" + consumer, &error);
      if (!v) return error_reply(503, "storage_error", error);
      if (cluster) cluster->flush();
      return {200, {{"consumer", consumer}, {"password", "removed"}, {"version", v}}};
    }
    auto j = nlohmann::json::parse(body, nullptr, false);
    if (!j.is_object() || !j.contains("password") || !j["password"].is_string())
      return error_reply(400, "invalid_json", R"(body must be {"password": "..."})");
    std::string password = j["password"].get<std::string>();
    if (password.size() < min_password_length || password.size() > max_password_length) {
      sodium_memzero(password.data(), password.size());
      return error_reply(400, "invalid_config",
                         "a password has " + std::to_string(min_password_length) + " to " +
                             std::to_string(max_password_length) + " bytes");
    }
    std::string hash = hash_password(password);
    sodium_memzero(password.data(), password.size());
    if (hash.empty()) return error_reply(503, "internal", "cannot hash the password");
    nlohmann::json doc = {{"hash", hash}, {"updated", unix_now_ms()}};
    auto v = st.put(doc_family::config, "passwords/" + consumer, doc.dump(), &error);
    if (!v) return error_reply(503, "storage_error", error);
    if (cluster) cluster->flush();
    return {200, {{"consumer", consumer}, {"password", "set"}, {"version", v}}};
  }

  admin_reply write_document(const std::string& kind, const std::string& name,
                             const std::string* body) {
    if (!valid_object_name(name)) {
      return error_reply(400, "invalid_name",
                         "names are 1 to " + std::to_string(max_name_bytes) +
                             " letters, digits and - . _ ~ : @ + (and not . or ..)");
    }
    if (!cluster) {
      return error_reply(409, "not_clustered",
                         "this node runs without a cluster section: its routes, upstreams and "
                         "consumers come from the config file (edit it and send SIGHUP)");
    }
    auto parsed_kind = document_kind_from_path(kind);
    if (!parsed_kind) {
      return error_reply(404, "not_found",
                         "no config kind '" + kind + "' (routes, upstreams or consumers)");
    }
    const document_kind dk = *parsed_kind;
    const std::string key = kind + "/" + name;
    auto& st = cluster->state();
    std::string canonical;
    if (body) {
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(*body);
      } catch (const std::exception& e) {
        return error_reply(400, "invalid_json", std::string("body is not JSON: ") + e.what());
      }
      if (!j.is_object()) return error_reply(400, "invalid_json", "body must be a JSON object");
      const char* name_key = dk == document_kind::consumer ? "id" : "name";
      if (!j.contains(name_key)) j[name_key] = name;
      if (!j[name_key].is_string() || j[name_key].get<std::string>() != name) {
        return error_reply(400, "invalid_config",
                           std::string("'") + name_key + "' must match the path ('" + name + "')");
      }
      canonical = j.dump();
    }

    std::unique_lock apply(apply_mutex);
    // Most changes are checked against the few documents they touch, not all of them (a full
    // compose is a pass over every document: O(all routes) per PUT, 47 s for 10,000 routes).
    // The errors a full compose would add for a put are its document's own and those of its
    // references (a route's upstream; an upstream's failover upstreams), and none of the other
    // documents' checks can change: routes only need their upstream to exist and parse, and a
    // put whose upstream does not parse is refused for that already. Deleting a route or a
    // consumer breaks nothing (nothing refers to them). Deleting an upstream can break the routes
    // and upstreams naming it: that takes the full compose below.
    if (body || dk != document_kind::upstream) {
      auto current = st.get(doc_family::config, key);
      const bool exists = current && !current->deleted;
      if (!body && !exists) return error_reply(404, "not_found", key + " does not exist");
      if (body) {
        auto with_references = [&](const std::string& text) {
          std::vector<config_document> docs{{dk, name, text}};
          auto add_upstream = [&](const nlohmann::json& v) {
            if (!v.is_string() || (dk == document_kind::upstream && v == name)) return;
            const std::string u = v.get<std::string>();
            auto e = st.get(doc_family::config, "upstreams/" + u);
            if (e && !e->deleted) docs.push_back({document_kind::upstream, u, e->value});
          };
          auto j = nlohmann::json::parse(text, nullptr, false);
          if (j.is_object() && dk == document_kind::route && j.contains("upstream"))
            add_upstream(j["upstream"]);
          if (j.is_object() && dk == document_kind::upstream && j.contains("failover") &&
              j["failover"].is_array())
            for (const auto& f : j["failover"]) add_upstream(f);
          return docs;
        };
        // No cache here: a compose of a few documents would evict the cache's thousands.
        std::vector<std::string> before;
        if (exists) before = compose_errors(cfg, with_references(current->value), nullptr);
        auto after = compose_errors(cfg, with_references(canonical), nullptr);
        if (auto refused = refuse_introduced(before, after)) return *refused;
      }
      std::string error;
      cluster::hlc_time v = body ? st.put(doc_family::config, key, canonical, &error)
                                 : st.remove(doc_family::config, key, &error);
      if (!v) return error_reply(503, "storage_error", error);
      return served_here(v, std::move(apply));
    }

    auto docs = documents_of(st);
    auto existing = std::find_if(docs.begin(), docs.end(), [&](const config_document& d) {
      return d.kind == dk && d.name == name;
    });
    if (!body && existing == docs.end()) {
      return error_reply(404, "not_found", key + " does not exist");
    }
    // Refuse only the problems this change brings: documents merged from two nodes' concurrent
    // writes may already hold some, and they must not block every later fix.
    // The problems the documents had before this change: known from the last write here when
    // nothing arrived by gossip since (a compose costs a pass over every document).
    std::vector<std::string> before;
    if (st.digest(doc_family::config) == last_errors_digest) {
      before = last_errors;
    } else {
      before = compose_errors(cfg, docs, &doc_cache);
    }
    if (body) {
      if (existing != docs.end()) {
        existing->body = canonical;
      } else {
        docs.push_back(config_document{dk, name, canonical});
      }
    } else {
      docs.erase(existing);
    }
    auto after = compose_errors(cfg, docs, &doc_cache);
    if (auto refused = refuse_introduced(before, after)) return *refused;

    std::string error;
    cluster::hlc_time v = body ? st.put(doc_family::config, key, canonical, &error)
                               : st.remove(doc_family::config, key, &error);
    if (!v) return error_reply(503, "storage_error", error);
    last_errors = std::move(after);
    last_errors_digest = st.digest(doc_family::config);
    return served_here(v, std::move(apply));
  }

  // The 400 for the problems a change brings (in after, not in before), or nothing.
  static std::optional<admin_reply> refuse_introduced(const std::vector<std::string>& before,
                                                      const std::vector<std::string>& after) {
    std::set<std::string> old(before.begin(), before.end());
    std::vector<std::string> introduced;
    for (const auto& e : after)
      if (!old.count(e)) introduced.push_back(e);
    if (introduced.empty()) return std::nullopt;
    admin_reply r = error_reply(400, "invalid_config", introduced.front());
    r.body["errors"] = introduced;
    return r;
  }

  // After a config write (durable here, apply_mutex held): hands it to the gossip and the
  // applier, which installs it (changes arriving together become one snapshot), and answers once
  // this node serves it, so that what a client just wrote it can use here at once (a consumer's
  // keys, a route). The others get it by gossip.
  admin_reply served_here(cluster::hlc_time v, std::unique_lock<std::mutex> apply) {
    cluster->flush();
    const uint64_t after_write = installs_started.load() + 1;
    {
      std::lock_guard lock(applier_mutex);
      config_dirty = true;
    }
    applier_cv.notify_one();
    apply.unlock();
    {
      std::unique_lock lock(installs_mutex);
      installs_cv.wait_for(lock, std::chrono::seconds(5),
                           [&] { return installs_done >= after_write; });
    }
    return {200, {{"version", v}}};
  }
};

node::node(config cfg) : impl_(std::make_unique<impl>(std::move(cfg))) {}

node::~node() {
  impl_->jwks_refresher.stop();
  impl_->stop_applier();
  impl_->stop_breaker_sync();
  impl_->stop_persister();
  // Password checks still queued answer before the workers they post to stop.
  if (impl_->oauth) impl_->oauth->stop();
  if (impl_->strict) impl_->strict->stop();  // asks still waiting resume their workers first
  if (impl_->proxy) impl_->proxy->stop();
  impl_->stop_usage();  // after the workers: the last requests' counts too
  if (impl_->admin) impl_->admin->stop();
}

bool node::start(std::string* error) {
  auto& d = *impl_;
  {
    // The data directory holds the admin token, the OAuth signing key and the store: private.
    std::error_code fec;
    std::filesystem::create_directories(d.cfg.node.data_dir, fec);
    std::filesystem::permissions(d.cfg.node.data_dir, std::filesystem::perms::owner_all,
                                 std::filesystem::perm_options::replace, fec);
    if (fec) {
      *error = "node.data_dir " + d.cfg.node.data_dir + ": " + fec.message();
      return false;
    }
  }
  std::string token_file =
      d.cfg.admin.token_file.empty()
          ? (std::filesystem::path(d.cfg.node.data_dir) / "admin.token").string()
          : d.cfg.admin.token_file;
  if (auto problems = check_external(d.cfg, nullptr); !problems.empty()) {
    *error = problems.front();
    return false;
  }
  d.peers = peer_client_of(d.cfg);
  if (auto why = peer_client_error(d.peers); !why.empty()) {
    *error = why;
    return false;
  }
  if (!load_or_create_token(token_file, &d.token, error)) return false;

  if (d.cfg.cluster) {
    d.cluster = cluster_bridge::start(d.cfg, error);
    if (!d.cluster) return false;
    d.seed_from_file();
  }
  d.installed_digest = d.cluster ? d.cluster->state().digest(doc_family::config) : 0;
  rate_limiter::options lo;
  lo.node_id = d.cfg.node.id;
  lo.region = d.cfg.node.region;
  if (!d.cluster) {
    // Counts of long windows (a daily quota) must survive a restart here too.
    std::error_code fec;
    std::filesystem::create_directories(d.cfg.node.data_dir, fec);
    d.local_store =
        storage::store::open((std::filesystem::path(d.cfg.node.data_dir) / "db").string(), error);
    if (!d.local_store) return false;
    d.local_state = std::make_unique<cluster::replicated_state>(
        cluster::state_options{.self_id = d.cfg.node.id}, unix_now_ms, d.local_store.get());
    if (!d.local_state->load(error)) return false;
    lo.clustered = false;
  }
  d.limiter =
      std::make_unique<rate_limiter>(lo, d.cluster ? &d.cluster->state() : d.local_state.get());
  if (!d.cluster) {
    d.persister.start(std::chrono::seconds(1), [this, ticks = 0]() mutable {
      impl_->limiter->flush();
      impl_->local_state->persist_counters();
      if (++ticks % 60 == 0) {
        impl_->collect_audit();
        impl_->collect_revocations();
      }
    });
  }
  if (d.cluster) {
    auto* limiter = d.limiter.get();
    d.cluster->state().set_counter_observer(
        [limiter](uint64_t key, uint32_t window, uint64_t others) {
          limiter->on_remote(key, window, others);
        });
    d.cluster->state().set_flush_hook([limiter] { limiter->flush(); });
    auto* bridge = d.cluster.get();
    d.limiter->set_urgent_hook([bridge] { bridge->flush_now(); });
    d.cluster->set_view_listener([limiter](const cluster_bridge::view& v) {
      limiter->set_view(v.global_total, v.global_down, v.region_total, v.region_down, unix_now_ms(),
                        v.global_unconfirmed, v.region_unconfirmed);
    });
    strict_limiter::options so;
    so.self_id = d.cfg.node.id;
    so.region = d.cfg.node.region;
    so.unix_ms = unix_now_ms;  // the node's clock (offset, correction), as for every limit
    // The members strict majorities are counted over, kept across restarts (strict_limiter.h).
    so.expect_peers = !read_strict_members(bridge->store(), &so.remembered);
    so.expect_peers |= bridge->has_seeds();
    so.remember = [this](const std::vector<strict_limiter::counted_member>& members) {
      std::lock_guard lock(impl_->strict_members_mu);
      impl_->strict_members_pending = members;
    };
    d.strict = std::make_unique<strict_limiter>(
        so, *d.limiter,
        [bridge](const std::string& address, std::string message) {
          bridge->send_direct(address, std::move(message));
        },
        [bridge](std::function<void()> job, std::chrono::microseconds after) {
          bridge->post(std::move(job), after);
        },
        [bridge](const std::string& owner, std::vector<strict_limiter::owner_count> counts) {
          std::vector<cluster::counter_update> updates;
          updates.reserve(counts.size());
          for (const auto& c : counts) updates.push_back({c.key, c.window_ms, c.window, c.count});
          bridge->state().merge_counts(owner, updates);
        });
    d.limiter->set_strict(d.strict.get());
    auto* strict = d.strict.get();
    bridge->set_direct_handler(
        [strict](const std::string& from_id, const std::string& from, std::string message) {
          strict->on_message(from_id, from, message);
        });
    // The owners' view: members (every 50 ms, on the gossip thread, where reading them is a
    // copy without a hop) and the ticks that notice a process that stood still.
    auto refresh = std::make_shared<std::function<void()>>();
    *refresh = [bridge, strict, weak = std::weak_ptr<std::function<void()>>(refresh),
                ticks = 0]() mutable {
      if (ticks++ % 20 == 0) strict->set_forgotten(strict_forgets(bridge->state()));
      std::vector<strict_limiter::member_view> view;
      for (const auto& m : bridge->members())
        view.push_back({m.info.id, m.info.address, m.info.region,
                        m.state == cluster::member_state::alive,
                        m.state == cluster::member_state::left});
      strict->set_members(std::move(view));
      strict->tick();
      if (auto again = weak.lock())
        bridge->post([again] { (*again)(); }, std::chrono::milliseconds(50));
    };
    d.strict_refresh = refresh;
    bridge->post([refresh] { (*refresh)(); }, {});
  }
  if (!d.ensure_oauth(d.cfg, error)) return false;
  if (d.cfg.analytics.enabled) {
    d.usage = std::make_unique<usage_recorder>(d.cfg.node.workers, d.cfg.analytics.max_names);
    usage_store::options uo;
    uo.max_names = d.cfg.analytics.max_names;
    d.usage_db = std::make_unique<usage_store>(
        uo, d.cluster ? &d.cluster->store() : d.local_store.get(), unix_now_ms());
    // Drained every second (a request counts in the minute it ended in, give or take that),
    // written every ten.
    d.usage_collector.start(std::chrono::seconds(1), [this, ticks = 0]() mutable {
      impl_->collect_usage(++ticks % 10 == 0);
    });
  }
  if (d.cfg.tracing) {
    // The exporter is made once: a reload changes the sampling ratio, not where spans go.
    otlp_options o;
    o.endpoint = d.cfg.tracing->otlp_endpoint;
    o.service_name = d.cfg.tracing->service_name;
    o.node_id = d.cfg.node.id;
    o.region = d.cfg.node.region;
    o.batch_size = d.cfg.tracing->batch_size;
    o.flush_interval = d.cfg.tracing->flush_interval;
    o.max_queue = d.cfg.tracing->max_queue;
    d.tracer = std::make_unique<otlp_exporter>(std::move(o));
  }
  {
    config eff = d.effective(d.cfg);
    d.snap = build_snapshot(eff, ++d.version, d.cfg.node.workers, d.targets, d.metrics, error,
                            d.limiter.get(), d.key_table(eff), d.oauth.get(), d.tracer.get(),
                            d.usage.get());
  }
  if (!d.snap) return false;
  for (const auto& w : d.snap->warnings) log()->warn("{}", w);

  d.proxy = std::make_unique<proxy_server>(d.cfg.node.workers, d.metrics,
                                           make_access_log(d.cfg.log.access_log));
  if (!d.proxy->start(d.cfg.listen.proxy, d.snap, error)) return false;
  // Without a cluster, API keys, passwords and OAuth registers are documents of the local
  // state: a new or revoked key rebuilds the snapshot the same way.
  d.registers()->set_change_handler([this](doc_family f) {
    if (f == doc_family::state) {
      // Registers come from other nodes: a malformed one must not take this thread down.
      try {
        if (impl_->cluster) {
          impl_->adopt_breakers();
          impl_->cluster->apply_desired_keyring();
        }
        impl_->adopt_oauth();
      } catch (const std::exception& e) {
        log()->error("registers not adopted: {}", e.what());
      }
      return;
    }
    if (f != doc_family::config) return;
    {
      std::lock_guard lock(impl_->applier_mutex);
      impl_->config_dirty = true;
    }
    impl_->applier_cv.notify_one();
  });
  // A change may have landed between the snapshot above and the handler: check once.
  d.config_dirty = true;
  // Everything the applier thread touches exists before it starts (install() updates the
  // health checker: assigning it afterwards raced with that read).
  d.health = std::make_unique<health_checker>();
  d.health->update(d.snap);
  d.applier = std::thread([this] { impl_->run_applier(); });
  if (d.cluster) d.breaker_sync = std::thread([this] { impl_->run_breaker_sync(); });

  admin_handlers handlers;
  handlers.metrics_text = [this] {
    auto text = impl_->metrics.render_prometheus();
    if (impl_->limiter) text += impl_->limiter->metrics_text();
    if (impl_->strict) text += impl_->strict->metrics_text();
    text += impl_->breaker_metrics();
    if (impl_->cluster) text += impl_->cluster->metrics_text();
    return text;
  };
  if (d.cluster) {
    handlers.cluster_members = [this] { return impl_->cluster->members_json(); };
    handlers.cluster_health = [this] { return impl_->cluster->health_json(); };
    handlers.peer_health = [this] { return impl_->cluster->health_json(); };
    handlers.cluster_nodes = [this] { return cluster_nodes(*impl_->cluster, impl_->peers); };
    handlers.cluster_keys = [this] { return impl_->cluster->keys_json(); };
    handlers.cluster_keys_write = [this](const std::string& method, const std::string& fp,
                                         const std::string& body) -> admin_reply {
      auto& c = *impl_->cluster;
      std::pair<int, nlohmann::json> r;
      if (method == "POST") {
        auto j = nlohmann::json::parse(body, nullptr, false);
        if (!j.is_object() || !j.contains("key") || !j["key"].is_string()) {
          return {400,
                  {{"error", "bad_request"},
                   {"message", "expected {\"key\": \"<base64 key from meridian keygen>\"}"}}};
        }
        r = c.install_key(j["key"].get<std::string>());
      } else if (method == "PUT") {
        r = c.use_key(fp);
      } else {
        r = c.remove_key(fp);
      }
      return {r.first, std::move(r.second)};
    };
    handlers.cluster_forget = [this](const std::string& id) { return impl_->forget_member(id); };
    handlers.cluster_leave = [this] {
      impl_->cluster->leave();
      return nlohmann::json{{"status", "left"}, {"node", impl_->cfg.node.id}};
    };
  }
  handlers.effective_config = [this] {
    auto snap = impl_->current();
    auto j = config_to_json(snap->cfg);
    // Clustered: the highest document version (an HLC timestamp, the same on every node that
    // holds the same documents); alone: the count of configs applied since start.
    j["version"] =
        impl_->cluster ? impl_->cluster->state().version(doc_family::config) : snap->version;
    return j;
  };
  handlers.breakers = [this] { return impl_->breakers_json(); };
  handlers.audit = [this](const std::string& method, const std::string& path,
                          const std::string& from, const std::string& client_cert, int status) {
    impl_->record_audit(method, path, from, client_cert, status);
  };
  handlers.audit_view = [this](int64_t since, size_t limit) {
    return impl_->audit_view(since, limit);
  };
  handlers.consumer_keys = [this](const std::string& method, const std::string& consumer,
                                  const std::string& key_id, const std::string& body) {
    return impl_->keys_request(method, consumer, key_id, body);
  };
  handlers.consumer_password = [this](const std::string& method, const std::string& consumer,
                                      const std::string& body) {
    return impl_->password_request(method, consumer, body);
  };
  if (d.usage_db) {
    handlers.analytics = [this](const std::map<std::string, std::string>& q, bool peer) {
      impl_->collect_usage(false);  // what was just served counts too
      return analytics_reply(q, peer, *impl_->usage_db, impl_->cluster.get(), impl_->peers,
                             unix_now_ms());
    };
  }
  handlers.peer_ratelimit_keys = [this](const std::string& route, const std::string& limit) {
    return impl_->peer_ratelimit_keys(route, limit);
  };
  handlers.ratelimit_view = [this](const std::string& route, const std::string& key,
                                   const std::string& limit, const std::string& top) {
    return impl_->ratelimit_view(route, key, limit, top);
  };
  handlers.consumer_usage = [this](const std::string& consumer) {
    return impl_->consumer_usage(consumer);
  };
  handlers.config_write = [this](const std::string& kind, const std::string& name,
                                 const std::string* body) {
    return impl_->write_document(kind, name, body);
  };
  // Kept in the data directory, so other nodes' copy stays good across a restart.
  if (d.cluster &&
      !load_or_create_token((std::filesystem::path(d.cfg.node.data_dir) / "peer.token").string(),
                            &d.peer_token, error))
    return false;
  d.admin = std::make_unique<admin_server>(
      d.cfg.node.id, d.token, std::move(handlers),
      admin_server::tls_files{d.cfg.admin.tls_cert, d.cfg.admin.tls_key, d.cfg.admin.tls_client_ca},
      d.cluster ? d.peer_token : std::string());
  if (!d.admin->start(d.cfg.listen.admin.host, d.cfg.listen.admin.port, error)) {
    d.proxy->stop();
    return false;
  }
  if (d.cluster) publish_peer(*d.cluster, d.cfg, d.admin->port(), d.peer_token);
  d.jwks_refresher.start(std::chrono::milliseconds(200), [this] { impl_->refresh_jwks_due(); });
  log()->info("node {} (region {}) proxy on {}:{}, admin on {}:{}, {} worker(s)", d.cfg.node.id,
              d.cfg.node.region, d.cfg.listen.proxy.host, proxy_port(), d.cfg.listen.admin.host,
              admin_port(), d.cfg.node.workers);
  if (d.cfg.tls) {
    log()->info("TLS proxy on {}:{} with {} certificate(s)", d.cfg.tls->listen.host, tls_port(),
                d.cfg.tls->certificates.size());
  }
  return true;
}

uint16_t node::proxy_port() const {
  return impl_->proxy ? impl_->proxy->port() : 0;
}
uint16_t node::tls_port() const {
  return impl_->proxy ? impl_->proxy->tls_port() : 0;
}
uint16_t node::admin_port() const {
  return impl_->admin ? impl_->admin->port() : 0;
}
const std::string& node::admin_token() const {
  return impl_->token;
}
const std::string& node::id() const {
  return impl_->cfg.node.id;
}

bool node::reload(std::string* error) {
  auto result = load_config(impl_->cfg.source);
  if (!result.value) {
    error->clear();
    for (const auto& e : result.errors) *error += e.to_string() + "\n";
    return false;
  }
  return apply(std::move(*result.value), error);
}

bool node::apply(config cfg, std::string* error) {
  auto& d = *impl_;
  if (!(cfg.listen.proxy == d.cfg.listen.proxy) || !(cfg.listen.admin == d.cfg.listen.admin) ||
      cfg.node.workers != d.cfg.node.workers) {
    log()->warn("listen addresses and node.workers change only on restart; keeping the old ones");
    cfg.listen = d.cfg.listen;
    cfg.node.workers = d.cfg.node.workers;
  }
  std::lock_guard apply(d.apply_mutex);
  if (!d.ensure_oauth(cfg, error, false)) return false;
  // Check that it builds before touching anything (the keyring included).
  if (!build_snapshot(d.effective(cfg), d.version + 1, d.cfg.node.workers, d.targets, d.metrics,
                      error, d.limiter.get(), nullptr, d.oauth.get(), d.tracer.get())) {
    return false;
  }
  // The keyring is re-read on reload (key rotation: install, make primary, remove). The rest of
  // the cluster section (bind, seeds) changes only on restart.
  if (d.cluster && cfg.cluster && !d.cluster->reload_keys(cfg.cluster->keyring_file, error)) {
    return false;
  }
  if (d.cluster) {
    log()->info(
        "reload: node settings re-read from {}; routes, upstreams and consumers are "
        "cluster documents (change them through the admin API)",
        cfg.source);
  }
  if (!d.install(cfg, error)) return false;
  d.cfg = std::move(cfg);
  return true;
}

void node::drain(duration timeout) {
  auto& d = *impl_;
  log()->info("draining: {} open connection(s)", d.proxy ? d.proxy->connections() : 0);
  // Leave first, so that the others see `left` (not `dead`) while this node finishes requests.
  if (d.cluster) d.cluster->leave();
  // Gone from the cluster: strict limits are decided by on_partition for the requests left.
  if (d.strict) d.strict->stop();
  d.stop_applier();
  d.stop_breaker_sync();
  if (d.proxy) d.proxy->drain(timeout);
  d.stop_persister();  // after the drain: the last requests' counts too
  d.stop_usage();
  d.health.reset();
  if (d.admin) d.admin->stop();
  log()->info("stopped");
}

std::vector<std::string> check_external(const config& cfg, std::vector<std::string>* notes) {
  std::vector<std::string> problems;
  const auto& admin_host = cfg.listen.admin.host;
  bool loopback =
      admin_host == "localhost" || admin_host == "::1" || admin_host.rfind("127.", 0) == 0;
  std::error_code ec;
  // Reachable from other machines, the admin API must have a token someone chose and placed:
  // never one made up at start (the lesson of gateways shipped with a default admin key).
  const bool token_file_missing =
      !cfg.admin.token_file.empty() && !std::filesystem::exists(cfg.admin.token_file, ec);
  if (!loopback && token_file_missing && notes) {
    // validate on a build machine: the file is placed at deploy time; run will insist.
    notes->push_back("admin.token_file " + cfg.admin.token_file +
                     " does not exist here; the node will not start until it does");
  } else if (!loopback && (cfg.admin.token_file.empty() || token_file_missing)) {
    problems.push_back("listen.admin " + cfg.listen.admin.to_string() +
                       " is not a loopback address: set admin.token_file to an existing file "
                       "holding the admin token (at least 16 characters) before exposing the "
                       "admin API");
  }
  if (!cfg.admin.token_file.empty() && std::filesystem::exists(cfg.admin.token_file, ec)) {
    std::string token, error;
    if (!load_or_create_token(cfg.admin.token_file, &token, &error)) problems.push_back(error);
  }
  return problems;
}

int run_node(const std::string& config_path) {
  ::umask(077);  // files the node writes (store, keys, tokens, logs) are its own
  auto result = load_config(config_path);
  if (!result.value) {
    for (const auto& e : result.errors) std::fprintf(stderr, "%s\n", e.to_string().c_str());
    return 1;
  }
  setup_logging(result.value->log.level);
  // Every client and upstream connection is a descriptor: take the whole hard limit.
  rlimit files{};
  if (::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &files);
  }

  // Signals are taken synchronously by this thread; every other thread inherits the mask.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  node n(std::move(*result.value));
  std::string error;
  if (!n.start(&error)) {
    std::fprintf(stderr, "meridian: %s\n", error.c_str());
    return 1;
  }
  for (;;) {
    int sig = 0;
    sigwait(&set, &sig);
    if (sig == SIGHUP) {
      std::string reload_error;
      if (!n.reload(&reload_error)) {
        log()->error("reload of {} failed; keeping the running config:\n{}", config_path,
                     reload_error);
      }
      continue;
    }
    log()->info("received {}, draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    n.drain(std::chrono::seconds(15));
    return 0;
  }
}

}  // namespace meridian::node
