#include "meridian/proxy/snapshot.h"
#include "meridian/common/ascii.h"

#include <algorithm>
#include <cctype>
#include <fstream>
#include <sstream>

#include "chain.h"
#include "http_get.h"
#include "meridian/proxy/tls.h"
#include "upstream_tls.h"

namespace meridian::node {
namespace {

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
  std::string body, why;
  if (!http_get(jc.jwks_url, &body, &why)) {
    *error = "jwt " + jc.name + ": cannot fetch jwks_url " + jc.jwks_url + ": " + why;
    return {};
  }
  return body;
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

std::shared_ptr<const snapshot> build_snapshot(config cfg, uint64_t version, unsigned workers,
                                               target_registry& targets, metrics_registry& metrics,
                                               std::string* error, rate_limiter* limiter,
                                               std::shared_ptr<const api_key_table> keys,
                                               const oauth_authority* oauth, span_sink* spans,
                                               usage_recorder* usage) {
  auto snap = std::make_shared<snapshot>();
  snap->spans = spans;
  snap->usage = usage;
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

  std::map<std::string, upstream_runtime*> by_name;
  for (const auto& uc : snap->cfg.upstreams) {
    auto up = build_upstream(uc, snap->cfg.node.region, workers, version, targets, &snap->warnings);
    std::string tls_error;
    up->client_tls = make_upstream_tls(uc, &tls_error);
    if (!tls_error.empty()) {
      *error = tls_error;
      return nullptr;
    }
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
    snap->tls = tls_store::load(*snap->cfg.tls, error, snap->cfg.http2.enabled);
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
    for (const auto& name : rc.request_headers.remove) rt.request_drop.push_back(to_lower(name));
    // With tracing the gateway writes traceparent itself (its own span as the parent).
    if (snap->cfg.tracing && spans) rt.request_drop.push_back("traceparent");
    for (const auto& [name, value] : rc.request_headers.set)
      rt.request_drop.push_back(to_lower(name));
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
        rt.request_drop.push_back(to_lower(header));
      }
    }
    if (rc.auth && snap->oauth_provider &&
        std::find(rc.auth->methods.begin(), rc.auth->methods.end(), "oauth") !=
            rc.auth->methods.end()) {
      rt.jwt_providers.push_back(snap->oauth_provider.get());
      for (const auto& [claim, header] : rc.auth->claims_to_headers) {
        rt.request_drop.push_back(to_lower(header));
      }
    }
    if (rc.grpc_transcode) {
      std::string why;
      rt.transcoder = transcode::transcoder::from_bytes(
          rc.grpc_transcode->descriptor_bytes, rc.grpc_transcode->services,
          rc.grpc_transcode->descriptor_set.empty() ? "(inline)"
                                                    : rc.grpc_transcode->descriptor_set,
          &why);
      if (!rt.transcoder) {
        *error = "route " + rc.name + ": grpc_transcode: " + why;
        return nullptr;
      }
    }
    for (const auto& name : rc.response_headers.remove) rt.response_drop.push_back(to_lower(name));
    for (const auto& [name, value] : rc.response_headers.set) {
      rt.response_drop.push_back(to_lower(name));
    }
    snap->routes.push_back(std::move(rt));
  }
  for (auto& rt : snap->routes) rt.stages = build_chain(rt, *snap);
  snap->entry = build_entry_chain(*snap);
  return snap;
}

}  // namespace meridian::node
