#include "peers.h"

#include <spdlog/spdlog.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include <charconv>
#include <chrono>
#include <future>
#include <mutex>

#include "meridian/admin/admin_client.h"
#include "meridian/cluster_bridge/cluster_bridge.h"

namespace meridian::node {
namespace {

using cluster::doc_family;

admin_reply bad_request(const std::string& message) {
  return {400, {{"error", "bad_request"}, {"message", message}}};
}

// A time parameter: Unix ms, or a duration back from now ("1h", "7d"); empty: fallback.
bool parse_time(const std::string& text, int64_t now_ms, int64_t fallback, int64_t* out) {
  if (text.empty()) {
    *out = fallback;
    return true;
  }
  int64_t v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec == std::errc() && p == text.data() + text.size()) {
    *out = v;
    return v >= 0;
  }
  auto d = parse_duration(text);
  if (!d || d->count() < 0) return false;
  *out = now_ms - std::chrono::duration_cast<std::chrono::milliseconds>(*d).count();
  return true;
}

void merge_into(usage_merge& to, usage_merge&& from) {
  for (auto& [name, points] : from)
    for (auto& [t, p] : points) to[name][t].merge(p);
}

}  // namespace

namespace {
bool loopback(const std::string& host) {
  return host == "localhost" || host == "::1" || host.rfind("127.", 0) == 0;
}
}  // namespace

void publish_peer(cluster_bridge& cluster, const config& cfg, uint16_t admin_port,
                  const std::string& peer_token) {
  // Where others reach this admin API: its listen host, unless that is a wildcard, then the
  // host this node advertises to the cluster.
  std::string host = cfg.listen.admin.host;
  const auto& cc = *cfg.cluster;
  const std::string& gossip_host = cc.advertise.host.empty() ? cc.bind.host : cc.advertise.host;
  if (host == "0.0.0.0" || host == "::" || host.empty()) host = gossip_host;
  std::string error;
  const std::string key = "node/" + cfg.node.id + "/peer";
  if (loopback(host) && !loopback(gossip_host)) {
    // Other machines cannot reach a loopback admin API: publish nothing (they list this node
    // as not answering) rather than an address where each would find itself.
    spdlog::warn(
        "listen.admin {} is a loopback address while the cluster runs on {}: cluster-wide "
        "analytics, top keys and /cluster/nodes elsewhere will not include this node",
        cfg.listen.admin.to_string(), gossip_host);
    cluster.state().remove(doc_family::state, key, &error);
    return;
  }
  if (host.find(':') != std::string::npos) host = "[" + host + "]";
  const std::string scheme = cfg.admin.tls_cert.empty() ? "http" : "https";
  nlohmann::json j = {{"admin_url", scheme + "://" + host + ":" + std::to_string(admin_port)},
                      {"peer_token", peer_token}};
  cluster.state().put(doc_family::state, key, j.dump(), &error);
  cluster.flush();
}

peer_client peer_client_of(const config& cfg) {
  peer_client c;
  c.self_id = cfg.node.id;
  c.ca_file = cfg.admin.tls_peer_ca;
  c.cert_file = cfg.admin.tls_peer_cert.empty() ? cfg.admin.tls_cert : cfg.admin.tls_peer_cert;
  c.key_file = cfg.admin.tls_peer_cert.empty() ? cfg.admin.tls_key : cfg.admin.tls_peer_key;
  return c;
}

std::string peer_client_error(const peer_client& client) {
  if (client.ca_file.empty() && client.cert_file.empty()) return {};
  SSL_CTX* ctx = SSL_CTX_new(TLS_client_method());
  if (!ctx) return "admin.tls: no TLS context";
  std::string error;
  if (!client.ca_file.empty() &&
      SSL_CTX_load_verify_locations(ctx, client.ca_file.c_str(), nullptr) != 1) {
    error = "admin.tls.peer_ca: cannot use " + client.ca_file + " (unreadable or not PEM)";
  } else if (!client.cert_file.empty() &&
             (SSL_CTX_use_certificate_chain_file(ctx, client.cert_file.c_str()) != 1 ||
              SSL_CTX_use_PrivateKey_file(ctx, client.key_file.c_str(), SSL_FILETYPE_PEM) != 1 ||
              SSL_CTX_check_private_key(ctx) != 1)) {
    error = "admin.tls.peer_cert: cannot use " + client.cert_file + " / " + client.key_file +
            " (unreadable, not PEM, or the key does not match)";
  }
  ERR_clear_error();
  SSL_CTX_free(ctx);
  return error;
}

namespace {
// Says why a member did not answer, at most once a minute per member (views are polled).
void note_silent_peer(const std::string& id, const std::string& why) {
  static std::mutex mu;
  static std::map<std::string, std::chrono::steady_clock::time_point> last;
  const auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard lock(mu);
    auto [it, fresh] = last.try_emplace(id, now);
    if (!fresh && now - it->second < std::chrono::minutes(1)) return;
    it->second = now;
  }
  spdlog::warn("cluster-wide view without {}: {}", id, why);
}
}  // namespace

peer_answers ask_peers(cluster_bridge& cluster, const peer_client& client,
                       const std::string& path) {
  peer_answers out;
  std::vector<std::pair<std::string, std::future<admin_response>>> calls;
  std::map<std::string, std::string> urls;
  for (const auto& [id, region] : cluster.live_members()) {
    if (id == client.self_id) continue;
    auto e = cluster.state().get(doc_family::state, "node/" + id + "/peer");
    auto j = e && !e->deleted ? nlohmann::json::parse(e->value, nullptr, false) : nlohmann::json();
    if (!j.is_object() || !j.contains("admin_url") || !j["admin_url"].is_string() ||
        !j.contains("peer_token") || !j["peer_token"].is_string()) {
      out.missing.push_back(id);
      continue;
    }
    admin_endpoint ep;
    ep.url = j["admin_url"].get<std::string>();
    ep.token = j["peer_token"].get<std::string>();
    ep.timeout_ms = 2000;
    if (ep.url.rfind("https:", 0) == 0) {
      ep.ca_file = client.ca_file;
      ep.cert_file = client.cert_file;
      ep.key_file = client.key_file;
    }
    urls[id] = ep.url;
    calls.emplace_back(
        id, std::async(std::launch::async, [ep, path] { return admin_call(ep, "GET", path); }));
  }
  for (auto& [id, call] : calls) {
    auto r = call.get();
    auto j = r.status == 200 ? nlohmann::json::parse(r.body, nullptr, false) : nlohmann::json();
    if (j.is_object()) {
      out.answers.emplace(id, std::move(j));
    } else {
      out.missing.push_back(id);
      note_silent_peer(
          id, r.status == 0 ? r.error : urls[id] + " answered " + std::to_string(r.status));
    }
  }
  return out;
}

nlohmann::json cluster_nodes(cluster_bridge& cluster, const peer_client& client) {
  const std::string& self_id = client.self_id;
  auto answers = ask_peers(cluster, client, "/peer/health");
  answers.answers.emplace(self_id, cluster.health_json());
  auto list = nlohmann::json::array();
  auto members = cluster.members_json();
  for (const auto& m : members.value("members", nlohmann::json::array())) {
    const std::string id = m.value("id", "");
    nlohmann::json row = {{"id", id},
                          {"region", m.value("region", "")},
                          {"state", m.value("state", "")},
                          {"answered", false}};
    if (auto it = answers.answers.find(id); it != answers.answers.end()) {
      const auto& h = it->second;
      row["answered"] = true;
      for (const char* k : {"config_version", "config_digest", "converged", "local_health"})
        if (h.contains(k)) row[k] = h[k];
    }
    list.push_back(std::move(row));
  }
  return {{"self", self_id}, {"nodes", std::move(list)}};
}

admin_reply analytics_reply(const std::map<std::string, std::string>& q, bool peer,
                            usage_store& store, cluster_bridge* cluster, const peer_client& client,
                            int64_t now_ms) {
  const std::string& self_id = client.self_id;
  auto get = [&](const char* k) {
    auto it = q.find(k);
    return it == q.end() ? std::string() : it->second;
  };
  usage_dimension dim;
  if (!parse_usage_dimension(get("by"), &dim))
    return bad_request("by must be consumer, key, route or version");
  int64_t since = 0, until = 0;
  if (!parse_time(get("since"), now_ms, now_ms - usage_store::hour_ms, &since))
    return bad_request("since must be Unix milliseconds or a duration back from now (\"1h\")");
  if (!parse_time(get("until"), now_ms, now_ms + 1, &until))
    return bad_request("until must be Unix milliseconds or a duration back from now");
  if (until <= since) return bad_request("until must be after since");
  const std::string step_text = get("step");
  int64_t step = 0;
  if (step_text == "1m" || step_text == "minute") {
    step = usage_store::minute_ms;
  } else if (step_text == "1h" || step_text == "hour") {
    step = usage_store::hour_ms;
  } else if (step_text == "1d" || step_text == "day") {
    step = usage_store::day_ms;
  } else if (step_text.empty()) {
    // Minutes are kept for a day: older ranges come by the hour, beyond a week by the day.
    step = since >= now_ms - usage_store::day_ms       ? usage_store::minute_ms
           : since >= now_ms - 7 * usage_store::day_ms ? usage_store::hour_ms
                                                       : usage_store::day_ms;
  } else {
    return bad_request("step must be 1m, 1h or 1d");
  }
  size_t limit = 50;
  if (auto l = get("limit"); !l.empty()) {
    auto [p, ec] = std::from_chars(l.data(), l.data() + l.size(), limit);
    if (ec != std::errc() || p != l.data() + l.size() || limit == 0 || limit > 10000)
      return bad_request("limit must be 1..10000");
  }
  auto local = store.query(dim, since, until, step);
  if (peer) return {200, {{"series", usage_series_json(local, true)}}};

  usage_merge merged;
  merge_usage_series(local, merged);
  auto answered = nlohmann::json::array({self_id});
  auto missing = nlohmann::json::array();
  if (cluster) {
    const std::string path = "/peer/analytics?by=" + std::string(to_string(dim)) +
                             "&since=" + std::to_string(since) + "&until=" + std::to_string(until) +
                             "&step=" +
                             (step == usage_store::day_ms    ? "1d"
                              : step == usage_store::hour_ms ? "1h"
                                                             : "1m");
    auto r = ask_peers(*cluster, client, path);
    for (auto& id : r.missing) missing.push_back(id);
    for (auto& [id, j] : r.answers) {
      usage_merge one;
      if (!j.contains("series") || !merge_raw_usage_series(j["series"], one)) {
        missing.push_back(id);
        continue;
      }
      merge_into(merged, std::move(one));
      answered.push_back(id);
    }
  }
  usage_merge total;
  for (const auto& [name, points] : merged)
    for (const auto& [t, p] : points) total["(total)"][t].merge(p);
  auto series = finish_usage_merge(std::move(merged));
  const size_t truncated = series.size() > limit ? series.size() - limit : 0;
  if (truncated) series.resize(limit);
  auto total_json = usage_series_json(finish_usage_merge(std::move(total)), false);
  return {200,
          {{"by", to_string(dim)},
           {"since", since},
           {"until", until},
           {"step_ms", step},
           {"series", usage_series_json(series, false)},
           {"total", total_json.empty() ? nlohmann::json::array() : total_json[0]["points"]},
           {"truncated", truncated},
           {"nodes", {{"answered", std::move(answered)}, {"missing", std::move(missing)}}}}};
}

}  // namespace meridian::node
