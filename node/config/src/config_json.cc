#include "meridian/config/config_json.h"
#include "meridian/common/base64.h"

#include <cstdint>
#include <string_view>
#include <utility>

namespace meridian::node {

std::string format_duration(duration d) {
  int64_t ms = d.count();
  if (ms == 0) return "0s";
  if (ms < 0) return "-" + format_duration(duration(-ms));
  static constexpr std::pair<int64_t, const char*> units[] = {
      {86'400'000, "d"}, {3'600'000, "h"}, {60'000, "m"}, {1'000, "s"}};
  for (const auto& [size, suffix] : units) {
    if (ms % size == 0) return std::to_string(ms / size) + suffix;
  }
  return std::to_string(ms) + "ms";
}

std::string_view balance_name(balance_policy policy) {
  switch (policy) {
    case balance_policy::round_robin:
      return "round_robin";
    case balance_policy::least_request:
      return "least_request";
    case balance_policy::consistent_hash:
      return "consistent_hash";
    case balance_policy::random:
      return "random";
  }
  return "round_robin";
}

namespace {

using json = nlohmann::json;

json map_of(const header_list& pairs) {
  json out = json::object();
  for (const auto& [name, value] : pairs) out[name] = value;
  return out;
}

// Sets out[key] only when the list is not empty, so the JSON mirrors what the YAML would say.
void put_if(json& out, const char* key, const header_list& pairs) {
  if (!pairs.empty()) out[key] = map_of(pairs);
}
void put_if(json& out, const char* key, const std::vector<std::string>& values) {
  if (!values.empty()) out[key] = values;
}
void put_if(json& out, const char* key, const std::string& value) {
  if (!value.empty()) out[key] = value;
}
void put_if(json& out, const char* key, const std::optional<std::string>& value) {
  if (value) out[key] = *value;
}

json target_to_json(const target_config& t) {
  json out = {{"address", t.addr.to_string()}, {"weight", t.weight}};
  put_if(out, "region", t.region);
  put_if(out, "zone", t.zone);
  return out;
}

json retries_to_json(const retries_config& r) {
  json on = json::array();
  if (r.on_connect_failure) on.push_back("connect_failure");
  if (r.on_timeout) on.push_back("timeout");
  for (int status : r.on_status) on.push_back(status);
  return {{"attempts", r.attempts},
          {"on", std::move(on)},
          {"budget_ratio", r.budget_ratio},
          {"budget_min_per_s", r.budget_min_per_s}};
}

json upstream_to_json(const upstream_config& u) {
  json targets = json::array();
  for (const auto& t : u.targets) targets.push_back(target_to_json(t));
  json out = {
      {"name", u.name}, {"targets", std::move(targets)}, {"balance", balance_name(u.balance)}};
  if (u.balance == balance_policy::consistent_hash) out["hash_on"] = u.hash_on;
  if (u.health_check.enabled) {
    const auto& h = u.health_check;
    out["health_check"] = {{"path", h.path},
                           {"interval", format_duration(h.interval)},
                           {"timeout", format_duration(h.timeout)},
                           {"unhealthy_after", h.unhealthy_after},
                           {"healthy_after", h.healthy_after}};
    if (!h.expect_status.empty()) out["health_check"]["expect_status"] = h.expect_status;
    if (h.grpc) {
      out["health_check"]["grpc"] = true;
      out["health_check"]["grpc_service"] = h.grpc_service;
    }
  }
  out["outlier"] = {{"consecutive_failures", u.outlier.consecutive_failures},
                    {"eject_for", format_duration(u.outlier.eject_for)}};
  if (!u.failover.empty()) out["failover"] = u.failover;
  if (u.circuit_breaker.enabled) {
    const auto& b = u.circuit_breaker;
    out["circuit_breaker"] = {
        {"failure_rate", b.failure_rate},         {"min_requests", b.min_requests},
        {"window", format_duration(b.window)},    {"open_for", format_duration(b.open_for)},
        {"half_open_probes", b.half_open_probes}, {"scope", b.scope}};
    if (b.consecutive_failures)
      out["circuit_breaker"]["consecutive_failures"] = b.consecutive_failures;
    if (b.slow_call.count()) out["circuit_breaker"]["slow_call"] = format_duration(b.slow_call);
  }
  out["timeouts"] = {{"connect", format_duration(u.timeouts.connect)},
                     {"request", format_duration(u.timeouts.request)},
                     {"idle", format_duration(u.timeouts.idle)}};
  out["retries"] = retries_to_json(u.retries);
  out["pool"] = {{"max_idle_per_target", u.pool.max_idle_per_target},
                 {"max_connections_per_target", u.pool.max_connections_per_target},
                 {"max_streams_per_connection", u.pool.max_streams_per_connection}};
  out["protocol"] = u.protocol == upstream_protocol::h2c  ? "h2c"
                    : u.protocol == upstream_protocol::h2 ? "h2"
                                                          : "http1";
  if (u.tls) {
    json t = {{"verify", u.tls->verify}};
    if (!u.tls->ca_file.empty()) t["ca_file"] = u.tls->ca_file;
    if (!u.tls->server_name.empty()) t["server_name"] = u.tls->server_name;
    if (!u.tls->cert_file.empty()) t["cert"] = u.tls->cert_file;
    if (!u.tls->key_file.empty()) t["key"] = u.tls->key_file;
    out["tls"] = std::move(t);
  }
  return out;
}

json match_to_json(const match_config& m) {
  json out = json::object();
  put_if(out, "path", m.path);
  put_if(out, "path_prefix", m.path_prefix);
  put_if(out, "path_regex", m.path_regex);
  put_if(out, "host", m.host);
  put_if(out, "methods", m.methods);
  put_if(out, "headers", m.headers);
  put_if(out, "query", m.query);
  return out;
}

json rate_limit_to_json(const rate_limit_config& r) {
  json out = {{"limit", r.limit},
              {"window", r.calendar_month ? std::string("1mo") : format_duration(r.window)},
              {"key", r.key},
              {"algorithm", r.algorithm},
              {"scope", r.scope},
              {"on_partition", r.on_partition}};
  if (r.burst) out["burst"] = r.burst;
  if (r.max_delay.count()) out["max_delay"] = format_duration(r.max_delay);
  if (r.mode != "eventual") {
    out["mode"] = r.mode;
    out["strict_timeout"] = format_duration(r.strict_timeout);
  }
  if (!r.timezone.empty()) out["timezone"] = r.timezone;
  return out;
}

json route_to_json(const route_config& r) {
  json out = {{"name", r.name}, {"match", match_to_json(r.match)}, {"upstream", r.upstream}};
  put_if(out, "strip_prefix", r.strip_prefix);
  if (r.rewrite)
    out["rewrite"] = {{"regex", r.rewrite->regex}, {"replacement", r.rewrite->replacement}};
  for (auto [key, transform] : {std::pair{"request_headers", &r.request_headers},
                                std::pair{"response_headers", &r.response_headers}}) {
    json t = json::object();
    put_if(t, "add", transform->add);
    put_if(t, "set", transform->set);
    put_if(t, "remove", transform->remove);
    if (!t.empty()) out[key] = std::move(t);
  }
  json query = json::object();
  put_if(query, "add", r.query.add);
  put_if(query, "remove", r.query.remove);
  put_if(query, "rename", r.query.rename);
  if (!query.empty()) out["query"] = std::move(query);
  if (r.auth) {
    json auth = {{"methods", r.auth->methods}};
    put_if(auth, "jwt", r.auth->jwt);
    put_if(auth, "claims_to_headers", r.auth->claims_to_headers);
    if (!r.auth->groups.empty()) auth["groups"] = r.auth->groups;
    if (r.auth->query_key) auth["query_key"] = true;
    if (!r.auth->strip_credentials) auth["strip_credentials"] = false;
    if (!r.auth->scopes.empty()) auth["scopes"] = r.auth->scopes;
    put_if(auth, "claims", r.auth->claims);
    out["auth"] = std::move(auth);
  }
  if (r.fallback) {
    json fb = {{"status", r.fallback->status},
               {"body", r.fallback->body},
               {"content_type", r.fallback->content_type}};
    if (!r.fallback->headers.empty()) {
      json h = json::object();
      for (const auto& [k, v] : r.fallback->headers) h[k] = v;
      fb["headers"] = h;
    }
    out["fallback"] = fb;
  }
  // `rate_limit` is a map for one limit and a list for several, as in the YAML.
  if (r.rate_limits.size() == 1) {
    out["rate_limit"] = rate_limit_to_json(r.rate_limits.front());
  } else if (!r.rate_limits.empty()) {
    json limits = json::array();
    for (const auto& limit : r.rate_limits) limits.push_back(rate_limit_to_json(limit));
    out["rate_limit"] = std::move(limits);
  }
  if (r.max_body_bytes) out["max_body_bytes"] = *r.max_body_bytes;
  if (r.preserve_host) out["preserve_host"] = *r.preserve_host;
  if (r.websocket) out["websocket"] = true;
  if (!r.api_version.empty()) out["api_version"] = r.api_version;
  if (r.grpc_transcode) {
    json t = {{"descriptor_set_base64", encode_base64(r.grpc_transcode->descriptor_bytes)},
              {"services", r.grpc_transcode->services}};
    if (!r.grpc_transcode->descriptor_set.empty())
      t["descriptor_set"] = r.grpc_transcode->descriptor_set;
    out["grpc_transcode"] = std::move(t);
  }
  return out;
}

json consumer_to_json(const consumer_config& c) {
  json out = {{"id", c.id}};
  put_if(out, "groups", c.groups);
  put_if(out, "redirect_uris", c.redirect_uris);
  if (c.public_client) out["public_client"] = true;
  return out;
}

json jwt_to_json(const jwt_config& j) {
  json out = {{"name", j.name}};
  put_if(out, "issuer", j.issuer);
  put_if(out, "audience", j.audience);
  put_if(out, "jwks_file", j.jwks_file);  // a path, not key material
  put_if(out, "jwks_url", j.jwks_url);
  if (j.consumer_claim != "sub") out["consumer_claim"] = j.consumer_claim;
  return out;
}

}  // namespace

nlohmann::json config_to_json(const config& c) {
  json routes = json::array();
  for (const auto& r : c.routes) routes.push_back(route_to_json(r));
  json upstreams = json::array();
  for (const auto& u : c.upstreams) upstreams.push_back(upstream_to_json(u));
  json consumers = json::array();
  for (const auto& consumer : c.consumers) consumers.push_back(consumer_to_json(consumer));
  json jwt = json::array();
  for (const auto& j : c.jwt) jwt.push_back(jwt_to_json(j));
  json out = {{"routes", std::move(routes)},
              {"upstreams", std::move(upstreams)},
              {"consumers", std::move(consumers)},
              {"jwt", std::move(jwt)}};
  if (c.oauth) {
    const auto& o = *c.oauth;
    out["oauth"] = {
        {"issuer", o.issuer},
        {"audience", o.audience},
        {"token_path", o.token_path},
        {"introspect_path", o.introspect_path},
        {"revoke_path", o.revoke_path},
        {"authorize_path", o.authorize_path},
        {"access_token_ttl", std::to_string(o.access_token_ttl.count()) + "ms"},
        {"refresh_token_ttl", std::to_string(o.refresh_token_ttl.count()) + "ms"},
        {"password_check_timeout", std::to_string(o.password_check_timeout.count()) + "ms"},
        {"grants", o.grants},
        {"scopes", o.scopes}};
  }
  return out;
}

}  // namespace meridian::node
