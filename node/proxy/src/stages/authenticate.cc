// Stage: authentication and authorization of a route (auth: methods api_key, jwt, oauth; any
// one suffices), then its group ACL and required scopes and claims. Answers 401 (no or bad
// credentials, with WWW-Authenticate), 403 (known consumer, not allowed) or 429 (an address
// that keeps presenting wrong keys). On success the consumer's identity headers are queued for
// the upstream.
#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>

#include "meridian/auth/api_keys.h"
#include "meridian/common/http_fields.h"
#include "stage.h"

namespace meridian::node {
namespace {

// True when a scope list ("scope": "a b c" or "scp": ["a", "b"] / "a b") holds want.
bool has_scope(const nlohmann::json& claims, std::string_view want) {
  for (const char* name : {"scope", "scp"}) {
    auto it = claims.find(name);
    if (it == claims.end()) continue;
    if (it->is_array()) {
      for (const auto& s : *it)
        if (s.is_string() && s.get_ref<const std::string&>() == want) return true;
    } else if (it->is_string()) {
      std::string_view list = it->get_ref<const std::string&>();
      while (!list.empty()) {
        size_t sp = list.find(' ');
        if (list.substr(0, sp) == want) return true;
        if (sp == std::string_view::npos) break;
        list.remove_prefix(sp + 1);
      }
    }
  }
  return false;
}

// True when claim equals want (a string; numbers and booleans by their JSON text) or, for an
// array claim, contains it.
bool claim_matches(const nlohmann::json& claims, const std::string& name, const std::string& want) {
  auto it = claims.find(name);
  if (it == claims.end()) return false;
  auto one = [&](const nlohmann::json& v) {
    return v.is_string() ? v.get_ref<const std::string&>() == want : v.dump() == want;
  };
  if (!it->is_array()) return one(*it);
  for (const auto& v : *it)
    if (one(v)) return true;
  return false;
}

// Checks the verified token against the route's scopes and claims; sets the message when it
// falls short.
bool token_meets(exchange& ex, const auth_config& auth) {
  if (!ex.verified_jwt) {
    ex.local_message_storage = "this route needs a token with the required scopes or claims";
    return false;
  }
  const auto& claims = ex.verified_jwt->claims;
  for (const auto& want : auth.scopes) {
    if (!has_scope(claims, want)) {
      ex.local_message_storage = "token lacks scope " + want;
      return false;
    }
  }
  for (const auto& [name, want] : auth.claims) {
    if (!claim_matches(claims, name, want)) {
      ex.local_message_storage = "token claim " + name + " is not " + want;
      return false;
    }
  }
  return true;
}

// Checks the route's JWT providers against the bearer token. On failure sets up a 401 answer
// and returns false; on success records the consumer and the claim headers to forward.
bool authenticate_jwt(exchange& ex) {
  std::string_view token;
  for (auto& f : ex.fields) {
    if (f.f != http::field::authorization) continue;
    auto v = trim(f.value);
    if (v.size() > 7 && iequals(v.substr(0, 7), "bearer ")) token = trim(v.substr(7));
    break;
  }
  ex.local_status = 401;
  if (token.empty()) {
    ex.local_code = "unauthorized";
    ex.local_message = "this route requires a bearer token";
    ex.www_authenticate = "Bearer realm=\"meridian\"";
    return false;
  }
  std::shared_ptr<const jwt_result> verified;
  const jwt_provider* verified_by = nullptr;
  auto now = std::chrono::system_clock::now();
  for (const auto* p : ex.route->jwt_providers) {
    verified_by = p;
    auto keys = p->authority ? p->authority->keys() : p->keys.load();
    verified = p->cache.verify(token, keys, p->rules, now);
    if (verified->ok && p->authority && p->authority->token_revoked(verified->claims)) {
      static const auto revoked = std::make_shared<const jwt_result>(
          jwt_result{false, "revoked", "token has been revoked", {}});
      verified = revoked;
    }
    if (verified->ok) break;
    // A kid these keys lack: maybe the issuer rotated. Ask the refresher (jwks_url only).
    if (verified->error == "unknown_kid" && !p->authority && !p->cfg->jwks_url.empty())
      const_cast<jwt_provider*>(p)->refresh_wanted.store(true, std::memory_order_relaxed);
  }
  if (!verified || !verified->ok) {
    ex.local_code = "invalid_token";
    ex.local_message_storage = !verified ? std::string("no key set verifies tokens")
                               : verified->message.empty() ? verified->error
                                                           : verified->message;
    ex.local_message = ex.local_message_storage.c_str();
    ex.www_authenticate = "Bearer realm=\"meridian\", error=\"invalid_token\"";
    return false;
  }
  ex.local_status = 0;
  ex.verified_jwt = verified;
  const auto& claims = verified->claims;
  // Claims become header values (the consumer id, claims_to_headers): a signed token may still
  // carry CR, LF or NUL in them, which would inject headers or a request. Refuse such a token.
  auto unforwardable = [&](const std::string& claim) {
    ex.local_status = 401;
    ex.local_code = "invalid_token";
    ex.local_message_storage = "claim '" + claim + "' holds characters a header cannot carry";
    ex.local_message = ex.local_message_storage.c_str();
    ex.www_authenticate = "Bearer realm=\"meridian\", error=\"invalid_token\"";
    ex.verified_jwt.reset();
    return false;
  };
  const std::string& consumer_claim = verified_by->cfg->consumer_claim;
  if (auto c = claims.find(consumer_claim); c != claims.end() && c->is_string()) {
    ex.consumer = c->get<std::string>();
    if (!valid_field_value(ex.consumer)) {
      ex.consumer.clear();
      return unforwardable(consumer_claim);
    }
  }
  for (const auto& [claim, header] : ex.route->cfg->auth->claims_to_headers) {
    auto it = claims.find(claim);
    if (it == claims.end() || it->is_null()) continue;
    std::string value = it->is_string()
                            ? it->get<std::string>()
                            : it->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (!valid_field_value(value)) return unforwardable(claim);
    ex.identity_headers.emplace_back(header, std::move(value));
  }
  // Credentials end at the gateway, unless the route passes them on.
  ex.strip_authorization = ex.route->cfg->auth->strip_credentials;
  return true;
}

// Checks the X-API-Key (or ?apikey=) against the key table. *presented_any: a key came with
// the request (so a wrong one counts against the address).
bool authenticate_api_key(exchange& ex, stage_context& ctx, bool* presented_any) {
  std::string_view query = ex.query;
  std::string_view presented;
  for (auto& f : ex.fields) {
    if (iequals(f.name, "x-api-key")) {
      presented = trim(f.value);
      break;
    }
  }
  if (presented.empty() && ex.route->cfg->auth->query_key) {
    // ?apikey=... (only when the route allows it: query strings end up in logs)
    size_t pos = 0;
    while (pos <= query.size()) {
      size_t amp = query.find('&', pos);
      std::string_view part =
          query.substr(pos, amp == std::string_view::npos ? query.npos : amp - pos);
      if (part.substr(0, 7) == "apikey=") {
        presented = part.substr(7);
        break;
      }
      if (amp == std::string_view::npos) break;
      pos = amp + 1;
    }
  }
  *presented_any = !presented.empty();
  std::string_view key_id, secret;
  if (presented.empty() || !ctx.snap.api_keys || !split_api_key(presented, &key_id, &secret))
    return false;
  auto it = ctx.snap.api_keys->find(std::string(key_id));
  if (it == ctx.snap.api_keys->end()) return false;
  const auto& rec = it->second;
  int64_t wall = unix_now_ms();
  if (rec.expires_ms && wall >= rec.expires_ms) return false;
  if (!verify_api_key(rec, secret)) return false;
  ex.consumer = rec.consumer;
  ex.api_key_id = it->first;
  if (rec.usage) {
    rec.usage->requests.fetch_add(1, std::memory_order_relaxed);
    rec.usage->last_used_ms.store(wall, std::memory_order_relaxed);
  }
  return true;
}

bool authenticate(exchange& ex, stage_context& ctx) {
  const auto& auth = *ex.route->cfg->auth;
  // An address that keeps presenting wrong keys waits, growing with each failure, before its
  // next key is even looked at (other credentials are not held).
  bool presented = false;
  int64_t held_ms = 0;
  bool key_ok = false;
  if (ex.route->auth_api_key) {
    held_ms = ctx.api_key_failures.wait_ms(ex.client_ip, ctx.now);
    if (held_ms == 0) key_ok = authenticate_api_key(ex, ctx, &presented);
  }
  // A wrong key counts even when a token then authenticates the request.
  if (presented && !key_ok) ctx.api_key_failures.failed(ex.client_ip, ctx.now);
  if (key_ok) ctx.api_key_failures.succeeded(ex.client_ip);
  bool ok = key_ok;
  if (!ok && !ex.route->jwt_providers.empty()) ok = authenticate_jwt(ex);
  if (!ok && held_ms > 0 && !ex.local_status) {
    ex.local_status = 429;
    ex.local_code = "too_many_failures";
    ex.local_message = "too many invalid API keys from this address; retry later";
    ex.rate_limit_headers =
        "Retry-After: " + std::to_string(failure_delay::retry_after_s(held_ms)) + "\r\n";
    return false;
  }
  if (!ok) {
    if (!ex.local_status) {  // no JWT verdict to report: the key was missing or wrong
      ex.local_status = 401;
      ex.local_code = "unauthorized";
      ex.local_message = "a valid API key is required (X-API-Key)";
      ex.www_authenticate = "ApiKey realm=\"meridian\"";
    }
    return false;
  }
  ex.local_status = 0;
  // Group ACL: 403 (known consumer, not allowed), not 401.
  const std::vector<std::string>* groups = nullptr;
  if (auto g = ctx.snap.consumer_groups.find(ex.consumer); g != ctx.snap.consumer_groups.end())
    groups = &g->second;
  if (!auth.groups.empty()) {
    bool member = false;
    if (groups)
      for (const auto& want : auth.groups)
        member = member || std::find(groups->begin(), groups->end(), want) != groups->end();
    if (!member) {
      ex.local_status = 403;
      ex.local_code = "forbidden";
      ex.local_message = "this consumer's groups may not use this route";
      return false;
    }
  }
  if ((!auth.scopes.empty() || !auth.claims.empty()) && !token_meets(ex, auth)) {
    ex.local_status = 403;
    ex.local_code = "forbidden";
    ex.local_message = ex.local_message_storage.c_str();
    return false;
  }
  if (!ex.consumer.empty()) {
    bool mapped = false;  // claims_to_headers may already carry it
    for (const auto& [k, v] : ex.identity_headers) mapped = mapped || iequals(k, "x-consumer-id");
    if (!mapped) ex.identity_headers.emplace_back("X-Consumer-Id", ex.consumer);
    if (groups && !groups->empty()) {
      std::string list;
      for (const auto& g : *groups) list += (list.empty() ? "" : ",") + g;
      ex.identity_headers.emplace_back("X-Consumer-Groups", std::move(list));
    }
  }
  return true;
}

class authenticate_stage final : public stage {
 public:
  authenticate_stage() : stage(request_head) {}
  verdict on_request_head(exchange& ex, stage_context& ctx) const override {
    return authenticate(ex, ctx) ? verdict::next : verdict::respond;
  }
};

}  // namespace

std::unique_ptr<stage> make_authenticate() {
  return std::make_unique<authenticate_stage>();
}

}  // namespace meridian::node
