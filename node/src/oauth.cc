#include "oauth.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

namespace meridian::node {

namespace {

using nlohmann::json;

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool percent_decode(std::string_view in, std::string* out) {
  out->clear();
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '+') {
      out->push_back(' ');
    } else if (c == '%') {
      if (i + 2 >= in.size()) return false;
      int hi = hex_value(in[i + 1]);
      int lo = hex_value(in[i + 2]);
      if (hi < 0 || lo < 0) return false;
      out->push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else {
      out->push_back(c);
    }
  }
  return true;
}

std::string find(const std::vector<std::pair<std::string, std::string>>& form,
                 std::string_view name) {
  for (const auto& [k, v] : form)
    if (k == name) return v;
  return "";
}

oauth_authority::reply error_reply(int status, const char* code, std::string description) {
  oauth_authority::reply r;
  r.status = status;
  r.body = json{{"error", code}, {"error_description", std::move(description)}}.dump();
  r.headers = {{"Cache-Control", "no-store"}, {"Pragma", "no-cache"}};
  if (status == 401) r.headers.emplace_back("WWW-Authenticate", "Basic realm=\"meridian\"");
  return r;
}

oauth_authority::reply json_reply(const json& body) {
  oauth_authority::reply r;
  r.body = body.dump();
  r.headers = {{"Cache-Control", "no-store"}, {"Pragma", "no-cache"}};
  return r;
}

// The client's consumer when (client_id, client_secret) names a valid, unexpired API key;
// empty otherwise. Credentials come from HTTP Basic (RFC 6749 section 2.3.1: form-encoded, then
// base64) or, failing that, from the form.
std::string authenticate_client(std::string_view authorization,
                                const std::vector<std::pair<std::string, std::string>>& form,
                                const api_key_table* clients, int64_t now_ms,
                                std::string* client_id) {
  std::string id, secret;
  if (authorization.size() > 6 &&
      (authorization.substr(0, 6) == "Basic " || authorization.substr(0, 6) == "basic ")) {
    std::string_view b64 = authorization.substr(6);
    std::string raw(b64.size(), '\0');
    size_t len = 0;
    if (sodium_base642bin(reinterpret_cast<unsigned char*>(raw.data()), raw.size(), b64.data(),
                          b64.size(), nullptr, &len, nullptr, sodium_base64_VARIANT_ORIGINAL) != 0)
      return "";
    raw.resize(len);
    auto colon = raw.find(':');
    if (colon == std::string::npos) return "";
    if (!percent_decode(std::string_view(raw).substr(0, colon), &id) ||
        !percent_decode(std::string_view(raw).substr(colon + 1), &secret))
      return "";
  } else {
    id = find(form, "client_id");
    secret = find(form, "client_secret");
  }
  if (id.empty() || secret.empty() || !clients) return "";
  auto it = clients->find(id);
  if (it == clients->end()) return "";
  std::string_view key_id, key_secret;
  if (!split_api_key(secret, &key_id, &key_secret) || key_id != id) return "";
  const api_key_record& rec = it->second;
  if (rec.expires_ms && now_ms >= rec.expires_ms) return "";
  if (!verify_api_key(rec, key_secret)) return "";
  *client_id = id;
  return rec.consumer;
}

}  // namespace

bool parse_form(std::string_view body, std::vector<std::pair<std::string, std::string>>* out) {
  out->clear();
  while (!body.empty()) {
    size_t amp = body.find('&');
    std::string_view pair = body.substr(0, amp);
    body = amp == std::string_view::npos ? std::string_view() : body.substr(amp + 1);
    if (pair.empty()) continue;
    size_t eq = pair.find('=');
    std::string k, v;
    if (!percent_decode(pair.substr(0, eq), &k)) return false;
    if (eq != std::string_view::npos && !percent_decode(pair.substr(eq + 1), &v)) return false;
    out->emplace_back(std::move(k), std::move(v));
  }
  return true;
}

oauth_authority::~oauth_authority() {
  sodium_memzero(secret_.data(), secret_.size());
}

std::unique_ptr<oauth_authority> oauth_authority::open(const std::string& data_dir,
                                                       const std::string& node_id,
                                                       std::string* error) {
  if (sodium_init() < 0) {
    *error = "libsodium failed to initialize";
    return nullptr;
  }
  std::unique_ptr<oauth_authority> a(new oauth_authority());
  std::error_code ec;
  std::filesystem::create_directories(data_dir, ec);
  std::string path = (std::filesystem::path(data_dir) / "oauth_signing.key").string();
  std::error_code exists_ec;
  if (std::filesystem::exists(path, exists_ec)) {
    // An existing key that cannot be read is an error, never a reason to mint a new one: the
    // tokens this node signed would all stop verifying.
    std::ifstream in(path);
    std::string text;
    if (!in || !std::getline(in, text)) {
      *error = "cannot read " + path + " (check its owner and mode)";
      return nullptr;
    }
    size_t len = 0;
    if (sodium_base642bin(a->secret_.data(), a->secret_.size(), text.data(), text.size(), nullptr,
                          &len, nullptr, sodium_base64_VARIANT_ORIGINAL) != 0 ||
        len != a->secret_.size()) {
      *error = path + ": not a base64 Ed25519 secret key (64 bytes)";
      return nullptr;
    }
  } else if (exists_ec) {
    *error = "cannot check " + path + ": " + exists_ec.message();
    return nullptr;
  } else {
    unsigned char pk[crypto_sign_PUBLICKEYBYTES];
    crypto_sign_keypair(pk, a->secret_.data());
    char b64[sodium_base64_ENCODED_LEN(64, sodium_base64_VARIANT_ORIGINAL)];
    sodium_bin2base64(b64, sizeof b64, a->secret_.data(), a->secret_.size(),
                      sodium_base64_VARIANT_ORIGINAL);
    std::string tmp = path + ".tmp";
    ::unlink(tmp.c_str());
    int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) {
      *error = "cannot create " + tmp + ": " + std::strerror(errno);
      return nullptr;
    }
    std::string line = std::string(b64) + "\n";
    bool ok = ::write(fd, line.data(), line.size()) == static_cast<ssize_t>(line.size());
    ok = ::fsync(fd) == 0 && ok;
    ok = ::close(fd) == 0 && ok;
    sodium_memzero(b64, sizeof b64);
    if (!ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
      *error = "cannot write " + path + ": " + std::strerror(errno);
      return nullptr;
    }
    int dir = ::open(data_dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir >= 0) {
      ::fsync(dir);
      ::close(dir);
    }
  }
  std::string pk(reinterpret_cast<const char*>(a->secret_.data()) + 32, 32);
  unsigned char h[4];
  crypto_generichash(h, sizeof h, reinterpret_cast<const unsigned char*>(pk.data()), pk.size(),
                     nullptr, 0);
  char hex[9];
  sodium_bin2hex(hex, sizeof hex, h, sizeof h);
  a->kid_ = node_id + "-" + hex;
  a->own_jwk_ = json{{"kty", "OKP"},   {"crv", "Ed25519"}, {"use", "sig"},
                     {"alg", "EdDSA"}, {"kid", a->kid_},   {"x", base64url_encode(pk)}}
                    .dump();
  a->set_published({});
  a->revoked_.store(std::make_shared<const std::unordered_set<std::string>>());
  return a;
}

std::string oauth_authority::public_jwk() const {
  return own_jwk_;
}

void oauth_authority::set_published(const std::vector<std::string>& jwks_json) {
  // Each published key is checked on its own: one malformed register must not cost the others.
  json doc = {{"keys", json::array()}};
  doc["keys"].push_back(json::parse(own_jwk_));
  std::string error;
  for (const auto& text : jwks_json) {
    if (doc["keys"].size() >= jwks::max_keys) break;
    auto j = json::parse(text, nullptr, false);
    if (!j.is_object() || j.value("kid", "") == kid_) continue;
    if (!jwks::parse(json{{"keys", json::array({j})}}.dump(), &error)) continue;
    doc["keys"].push_back(std::move(j));
  }
  if (auto set = jwks::parse(doc.dump(), &error)) keys_.store(std::move(set));
}

void oauth_authority::set_revoked(std::unordered_set<std::string> jtis) {
  revoked_.store(std::make_shared<const std::unordered_set<std::string>>(std::move(jtis)));
}

bool oauth_authority::revoked(std::string_view jti) const {
  auto set = revoked_.load();
  return set && set->count(std::string(jti)) > 0;
}

std::string oauth_authority::sign(const json& claims) const {
  json header = {{"alg", "EdDSA"}, {"typ", "at+jwt"}, {"kid", kid_}};
  std::string input = base64url_encode(header.dump()) + "." + base64url_encode(claims.dump());
  unsigned char sig[crypto_sign_BYTES];
  crypto_sign_detached(sig, nullptr, reinterpret_cast<const unsigned char*>(input.data()),
                       input.size(), secret_.data());
  return input + "." + base64url_encode({reinterpret_cast<const char*>(sig), sizeof sig});
}

oauth_authority::reply oauth_authority::handle(endpoint kind, const oauth_config& cfg,
                                               std::string_view authorization,
                                               std::string_view body, const api_key_table* clients,
                                               int64_t now_ms) const {
  std::vector<std::pair<std::string, std::string>> form;
  if (!parse_form(body, &form)) return error_reply(400, "invalid_request", "malformed form body");
  std::string client_id;
  std::string consumer = authenticate_client(authorization, form, clients, now_ms, &client_id);
  if (consumer.empty()) {
    return error_reply(401, "invalid_client",
                       "client authentication failed (client_id: the API key id, client_secret: "
                       "the API key)");
  }
  const int64_t now_s = now_ms / 1000;
  if (kind == endpoint::token) {
    std::string grant = find(form, "grant_type");
    if (grant.empty()) return error_reply(400, "invalid_request", "grant_type is required");
    if (grant != "client_credentials") {
      return error_reply(400, "unsupported_grant_type", "only client_credentials is supported");
    }
    std::string scope = find(form, "scope");
    std::string granted;
    std::string_view rest = scope;
    while (!rest.empty()) {
      size_t sp = rest.find(' ');
      std::string_view one = rest.substr(0, sp);
      rest = sp == std::string_view::npos ? std::string_view() : rest.substr(sp + 1);
      if (one.empty()) continue;
      if (std::find(cfg.scopes.begin(), cfg.scopes.end(), one) == cfg.scopes.end()) {
        return error_reply(400, "invalid_scope", "scope " + std::string(one) + " is not offered");
      }
      if (!granted.empty()) granted += ' ';
      granted.append(one);
    }
    const int64_t ttl_s =
        std::chrono::duration_cast<std::chrono::seconds>(cfg.access_token_ttl).count();
    unsigned char jti_raw[16];
    randombytes_buf(jti_raw, sizeof jti_raw);
    json claims = {{"iss", cfg.issuer},
                   {"aud", cfg.audience},
                   {"sub", consumer},
                   {"client_id", client_id},
                   {"iat", now_s},
                   {"exp", now_s + ttl_s},
                   {"jti", base64url_encode({reinterpret_cast<char*>(jti_raw), sizeof jti_raw})}};
    if (!granted.empty()) claims["scope"] = granted;
    json out = {{"access_token", sign(claims)}, {"token_type", "Bearer"}, {"expires_in", ttl_s}};
    if (!granted.empty()) out["scope"] = granted;
    return json_reply(out);
  }

  std::string token = find(form, "token");
  if (token.empty()) return error_reply(400, "invalid_request", "token is required");
  jwt_rules rules;
  rules.issuer = cfg.issuer;
  rules.audience = cfg.audience;
  rules.leeway = std::chrono::seconds(0);
  auto keys = keys_.load();
  auto verified =
      verify_jwt(token, *keys, rules,
                 std::chrono::system_clock::time_point(std::chrono::milliseconds(now_ms)));
  std::string jti = verified.ok ? verified.claims.value("jti", "") : "";
  bool active = verified.ok && !jti.empty() && !revoked(jti);

  if (kind == endpoint::introspect) {
    if (!active) return json_reply({{"active", false}});
    json out = {{"active", true}, {"token_type", "Bearer"}};
    for (const char* name : {"scope", "client_id", "sub", "exp", "iat", "iss", "aud", "jti"}) {
      auto it = verified.claims.find(name);
      if (it != verified.claims.end()) out[name] = *it;
    }
    return json_reply(out);
  }

  // Revocation (RFC 7009): 200 for tokens that are invalid or already expired; a valid token
  // issued to another client is refused.
  reply ok;
  ok.headers = {{"Cache-Control", "no-store"}};
  if (!active) return ok;
  if (verified.claims.value("client_id", "") != client_id) {
    return error_reply(400, "unauthorized_client", "the token was issued to another client");
  }
  std::string error;
  int64_t exp = verified.claims.value("exp", now_s);
  if (!on_revoke || !on_revoke(jti, exp, &error)) {
    return error_reply(503, "temporarily_unavailable", "revocation not stored: " + error);
  }
  return ok;
}

}  // namespace meridian::node
