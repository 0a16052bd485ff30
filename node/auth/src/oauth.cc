#include "meridian/auth/oauth.h"

#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
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

// Domain separation for codes and refresh tokens: their signatures never verify anything else.
constexpr std::string_view seal_context = "meridian-oauth-v1 ";
constexpr int64_t code_ttl_s = 60;  // authorization codes (RFC 6749 section 4.1.2: short)

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
  // Descriptions quote client input, which may be invalid UTF-8: replaced, never thrown.
  r.body = json{{"error", code}, {"error_description", std::move(description)}}.dump(
      -1, ' ', false, json::error_handler_t::replace);
  r.headers = {{"Cache-Control", "no-store"}, {"Pragma", "no-cache"}};
  if (status == 401) r.headers.emplace_back("WWW-Authenticate", "Basic realm=\"meridian\"");
  return r;
}

oauth_authority::reply json_reply(const json& body) {
  oauth_authority::reply r;
  r.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
  r.headers = {{"Cache-Control", "no-store"}, {"Pragma", "no-cache"}};
  return r;
}

oauth_authority::reply invalid_client() {
  return error_reply(401, "invalid_client",
                     "client authentication failed (client_id: the API key id, client_secret: the "
                     "API key)");
}

// The client's consumer when (client_id, client_secret) names a valid, unexpired API key, or,
// with public_ok, when client_id alone names one whose consumer is a public client; empty
// otherwise. Credentials come from HTTP Basic (RFC 6749 section 2.3.1: form-encoded, then
// base64) or, failing that, from the form.
std::string authenticate_client(std::string_view authorization,
                                const std::vector<std::pair<std::string, std::string>>& form,
                                const oauth_authority::context& ctx, bool public_ok,
                                std::string* client_id, bool* is_public) {
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
  if (id.empty() || !ctx.clients) return "";
  auto it = ctx.clients->find(id);
  if (it == ctx.clients->end()) return "";
  const api_key_record& rec = it->second;
  if (rec.expires_ms && ctx.now_ms >= rec.expires_ms) return "";
  if (secret.empty()) {
    if (!public_ok) return "";
    bool is_public_client = false;
    if (ctx.consumers) {
      for (const auto& c : *ctx.consumers)
        if (c.id == rec.consumer) is_public_client = c.public_client;
    }
    if (!is_public_client) return "";
    *client_id = id;
    *is_public = true;
    return rec.consumer;
  }
  std::string_view key_id, key_secret;
  if (!split_api_key(secret, &key_id, &key_secret) || key_id != id) return "";
  if (!verify_api_key(rec, key_secret)) return "";
  *client_id = id;
  *is_public = false;
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
  stop();
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
    if (!j.is_object() || !j.contains("kid") || !j["kid"].is_string() || j["kid"] == kid_) continue;
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
  std::string input = base64url_encode(header.dump()) + "." +
                      base64url_encode(claims.dump(-1, ' ', false, json::error_handler_t::replace));
  unsigned char sig[crypto_sign_BYTES];
  crypto_sign_detached(sig, nullptr, reinterpret_cast<const unsigned char*>(input.data()),
                       input.size(), secret_.data());
  return input + "." + base64url_encode({reinterpret_cast<const char*>(sig), sizeof sig});
}

bool oauth_authority::token_revoked(const json& claims) const {
  auto set = revoked_.load();
  if (!set || set->empty()) return false;
  auto jti = claims.find("jti");
  if (jti != claims.end() && jti->is_string() && set->count(jti->get<std::string>())) return true;
  auto fid = claims.find("fid");
  return fid != claims.end() && fid->is_string() && set->count(fid->get<std::string>()) > 0;
}

int64_t oauth_authority::grant_lifetime_s(const oauth_config& cfg) {
  return std::chrono::duration_cast<std::chrono::seconds>(
             std::max(cfg.refresh_token_ttl, cfg.access_token_ttl))
      .count();
}

int64_t oauth_authority::family_generation(const std::string& fid) const {
  auto v = used ? used(fid) : std::nullopt;
  if (!v) return 0;
  auto j = json::parse(*v, nullptr, false);
  if (!j.is_object() || !j.contains("gen") || !j["gen"].is_number_integer()) return 0;
  return j["gen"].get<int64_t>();
}

std::mutex& oauth_authority::single_use_lock(const std::string& id) const {
  return single_use_locks_[std::hash<std::string>{}(id) % single_use_locks_.size()];
}

bool oauth_authority::admit_password_check(const std::string& address, int64_t now_ms,
                                           int64_t* retry_s) const {
  constexpr int64_t window_ms = 60'000;
  std::lock_guard lock(address_mu_);
  if (password_checks_.size() > 100'000) {
    std::erase_if(password_checks_,
                  [&](const auto& e) { return now_ms - e.second.since_ms >= window_ms; });
  }
  auto& f = password_checks_[address];
  if (now_ms - f.since_ms >= window_ms) f = {0, now_ms};
  if (f.count >= max_checks_per_address) {
    *retry_s = (window_ms - (now_ms - f.since_ms)) / 1000 + 1;
    return false;
  }
  ++f.count;
  return true;
}

std::string hash_password(std::string_view password) {
  if (sodium_init() < 0) return "";
  char out[crypto_pwhash_STRBYTES];
  if (crypto_pwhash_str_alg(out, password.data(), password.size(), 2, 19u << 20,
                            crypto_pwhash_ALG_ARGON2ID13) != 0)
    return "";
  return out;
}

std::string oauth_authority::seal(std::string_view prefix, const json& payload) const {
  std::string body = base64url_encode(payload.dump(-1, ' ', false, json::error_handler_t::replace));
  std::string input = std::string(seal_context) + std::string(prefix) + body;
  unsigned char sig[crypto_sign_BYTES];
  crypto_sign_detached(sig, nullptr, reinterpret_cast<const unsigned char*>(input.data()),
                       input.size(), secret_.data());
  return std::string(prefix) + body + "." +
         base64url_encode({reinterpret_cast<const char*>(sig), sizeof sig});
}

std::optional<json> oauth_authority::open_sealed(std::string_view prefix,
                                                 std::string_view token) const {
  if (token.size() > 4096 || token.substr(0, prefix.size()) != prefix) return std::nullopt;
  std::string_view rest = token.substr(prefix.size());
  size_t dot = rest.find('.');
  if (dot == std::string_view::npos) return std::nullopt;
  auto payload = base64url_decode(rest.substr(0, dot));
  auto sig = base64url_decode(rest.substr(dot + 1));
  if (!payload || !sig || sig->size() != crypto_sign_BYTES) return std::nullopt;
  auto j = json::parse(*payload, nullptr, false);
  if (!j.is_object() || !j.contains("kid") || !j["kid"].is_string()) return std::nullopt;
  const std::string kid = j["kid"].get<std::string>();
  std::string input =
      std::string(seal_context) + std::string(prefix) + std::string(rest.substr(0, dot));
  auto keys = keys_.load();
  for (const auto& k : keys->keys()) {
    if (k.kid != kid || k.type != jwk_type::okp || k.material.size() != crypto_sign_PUBLICKEYBYTES)
      continue;
    if (crypto_sign_verify_detached(reinterpret_cast<const unsigned char*>(sig->data()),
                                    reinterpret_cast<const unsigned char*>(input.data()),
                                    input.size(),
                                    reinterpret_cast<const unsigned char*>(k.material.data())) == 0)
      return j;
    return std::nullopt;
  }
  return std::nullopt;
}

std::optional<int64_t> oauth_authority::recent_times::get(const std::string& key) const {
  auto it = times_.find(key);
  if (it == times_.end()) return std::nullopt;
  return it->second.first;
}

void oauth_authority::recent_times::set(const std::string& key, int64_t ms) {
  times_[key] = {ms, ++generation_};
  order_.emplace_back(key, generation_);
  while (times_.size() > cap_ || order_.size() > 2 * cap_) {
    auto [k, g] = std::move(order_.front());
    order_.pop_front();
    auto it = times_.find(k);
    if (it != times_.end() && it->second.second == g) times_.erase(it);  // else set again later
  }
}

int64_t oauth_authority::throttle_wait_ms(const std::string& key, uint64_t count, uint64_t free,
                                          int64_t now_ms) const {
  if (count < free) return 0;
  const uint64_t beyond = count - free;  // 0 for the first delayed attempt: 1 s
  const int64_t delay =
      beyond >= 20 ? max_login_delay_ms : std::min<int64_t>(1000LL << beyond, max_login_delay_ms);
  // The failures may have happened on other nodes (the counts are cluster-wide): then this
  // node starts the delay when it first sees them.
  std::lock_guard lock(throttle_mu_);
  auto last = last_failure_.get(key);
  if (!last) {
    last_failure_.set(key, now_ms);
    last = now_ms;
  }
  return std::max<int64_t>(0, *last + delay - now_ms);
}

bool oauth_authority::check_password(const std::string& user, const std::string& password,
                                     const std::string& address, int64_t now_ms, std::string* why,
                                     int64_t* updated_ms) const {
  // Two throttles, both growing delays rather than lockouts: failures of this user from this
  // address (a guesser slows only itself down), and of this user from anywhere, with a higher
  // free allowance (a guesser with many addresses), which does not hold an address the user
  // logged in from recently. The counts are cluster-wide; a held attempt is not checked and
  // counts nothing.
  const std::string pair = user + '\n' + address;
  auto failures_of = [&](const std::string& key, bool add) -> uint64_t {
    return login_failures ? login_failures(key, now_ms, add) : 0;
  };
  auto retry_text = [](int64_t wait_ms) {
    return "; retry in " + std::to_string((wait_ms + 999) / 1000) + " s";
  };
  if (int64_t wait = throttle_wait_ms(pair, failures_of(pair, false), max_login_failures, now_ms);
      wait > 0) {
    *why = "too many failed attempts for this user from this address" + retry_text(wait);
    return false;
  }
  bool known = false;
  {
    std::lock_guard lock(throttle_mu_);
    auto at = logged_in_.get(pair);
    known = at && now_ms - *at < known_address_ms;
  }
  if (!known) {
    if (int64_t wait = throttle_wait_ms(user, failures_of(user, false), max_user_failures, now_ms);
        wait > 0) {
      *why = "too many failed attempts for this user" + retry_text(wait);
      return false;
    }
  }
  // An unknown user costs as much as a wrong password, so timing does not tell users apart.
  static const std::string dummy = hash_password("meridian: no such user");
  std::optional<password_record> record = password_hash ? password_hash(user) : std::nullopt;
  bool ok = false;
  if (password.size() <= max_password_length) {
    const std::string& h = record ? record->hash : dummy;
    ok = crypto_pwhash_str_verify(h.c_str(), password.data(), password.size()) == 0 && record;
  }
  *updated_ms = ok ? record->updated_ms : 0;
  if (ok) {
    std::lock_guard lock(throttle_mu_);
    logged_in_.set(pair, now_ms);
    return true;
  }
  failures_of(pair, true);
  failures_of(user, true);
  {
    std::lock_guard lock(throttle_mu_);
    last_failure_.set(pair, now_ms);
    last_failure_.set(user, now_ms);
  }
  *why = "wrong username or password";
  return false;
}

bool oauth_authority::slow(const request& req) {
  if (req.kind == endpoint::authorize) return req.post;
  if (req.kind != endpoint::token) return false;
  std::vector<std::pair<std::string, std::string>> form;
  return parse_form(req.body, &form) && find(form, "grant_type") == "password";
}

bool oauth_authority::run_slow(std::function<void()> job) const {
  std::lock_guard lock(slow_mu_);
  if (slow_stop_ || slow_jobs_.size() >= max_queued) return false;
  if (!slow_thread_.joinable()) {
    slow_thread_ = std::thread([this] {
      std::unique_lock lock(slow_mu_);
      for (;;) {
        slow_cv_.wait(lock, [this] { return slow_stop_ || !slow_jobs_.empty(); });
        if (slow_jobs_.empty()) return;  // stopping, nothing left
        auto job = std::move(slow_jobs_.front());
        slow_jobs_.pop_front();
        lock.unlock();
        try {
          job();
        } catch (const std::exception&) {
          // handle() answers errors itself; nothing may take this thread down.
        }
        job = nullptr;
        lock.lock();
      }
    });
  }
  slow_jobs_.push_back(std::move(job));
  slow_cv_.notify_one();
  return true;
}

void oauth_authority::stop() {
  {
    std::lock_guard lock(slow_mu_);
    slow_stop_ = true;
  }
  slow_cv_.notify_all();
  if (slow_thread_.joinable()) slow_thread_.join();
}

namespace {

std::string random_id() {
  unsigned char raw[16];
  randombytes_buf(raw, sizeof raw);
  return base64url_encode({reinterpret_cast<char*>(raw), sizeof raw});
}

bool has(const std::vector<std::string>& list, std::string_view v) {
  return std::find(list.begin(), list.end(), v) != list.end();
}

// The scope tokens of a space-separated scope (empty tokens dropped).
std::vector<std::string> split_scope(std::string_view scope) {
  std::vector<std::string> out;
  while (!scope.empty()) {
    size_t sp = scope.find(' ');
    if (sp != 0) out.emplace_back(scope.substr(0, sp));
    scope = sp == std::string_view::npos ? std::string_view() : scope.substr(sp + 1);
  }
  return out;
}

// Splits a space-separated scope. Returns false with the first scope not in allowed.
bool parse_scope(std::string_view scope, const std::vector<std::string>& allowed,
                 std::string* granted, std::string* bad) {
  granted->clear();
  for (const auto& one : split_scope(scope)) {
    if (!has(allowed, one)) {
      *bad = one;
      return false;
    }
    if (!granted->empty()) *granted += ' ';
    granted->append(one);
  }
  return true;
}

const consumer_config* find_consumer(const std::vector<consumer_config>* consumers,
                                     std::string_view id) {
  if (!consumers) return nullptr;
  for (const auto& c : *consumers)
    if (c.id == id) return &c;
  return nullptr;
}

std::string url_encode(std::string_view in) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : in) {
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    }
  }
  return out;
}

std::string html_escape(std::string_view in) {
  std::string out;
  for (char c : in) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&#39;";
        break;
      default:
        out.push_back(c);
    }
  }
  return out;
}

// RFC 7636 section 4.1: 43 to 128 characters of [A-Za-z0-9-._~].
bool valid_verifier(std::string_view v) {
  if (v.size() < 43 || v.size() > 128) return false;
  return std::all_of(v.begin(), v.end(), [](unsigned char c) {
    return std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~';
  });
}

std::string s256(std::string_view verifier) {
  unsigned char h[crypto_hash_sha256_BYTES];
  crypto_hash_sha256(h, reinterpret_cast<const unsigned char*>(verifier.data()), verifier.size());
  return base64url_encode({reinterpret_cast<const char*>(h), sizeof h});
}

oauth_authority::reply redirect_reply(
    const std::string& uri, const std::vector<std::pair<std::string, std::string>>& params) {
  std::string location = uri;
  char sep = uri.find('?') == std::string::npos ? '?' : '&';
  for (const auto& [k, v] : params) {
    if (v.empty()) continue;
    location += sep;
    location += k + "=" + url_encode(v);
    sep = '&';
  }
  oauth_authority::reply r;
  r.status = 302;
  r.content_type = "text/plain";
  r.headers = {{"Location", location}, {"Cache-Control", "no-store"}};
  return r;
}

std::vector<std::pair<std::string, std::string>> page_headers() {
  return {{"Cache-Control", "no-store"},
          {"X-Frame-Options", "DENY"},
          {"Referrer-Policy", "no-referrer"},
          {"Content-Security-Policy",
           "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'"}};
}

const char* page_style =
    "<style>body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;"
    "color:#222}h1{font-size:1.3rem}label{display:block;margin:.8rem 0 .2rem}"
    "input[type=text],input[type=password]{width:100%;padding:.4rem;box-sizing:border-box}"
    ".err{color:#a00}.scopes li{margin:.2rem 0}button{margin:1rem .5rem 0 0;padding:.5rem 1rem}"
    "</style>";

oauth_authority::reply error_page(int status, std::string_view message) {
  oauth_authority::reply r;
  r.status = status;
  r.content_type = "text/html; charset=utf-8";
  r.headers = page_headers();
  r.body = std::string(
               "<!doctype html><html><head><meta charset=utf-8><title>Authorization "
               "error</title>") +
           page_style + "</head><body><h1>Authorization error</h1><p class=err>" +
           html_escape(message) + "</p></body></html>";
  return r;
}

}  // namespace

oauth_authority::reply oauth_authority::issue(const context& ctx, const std::string& sub,
                                              const std::string& client_id,
                                              const std::string& scope,
                                              const std::string& grant_scope,
                                              const std::string& fid, int64_t gen,
                                              int64_t pw) const {
  const oauth_config& cfg = *ctx.cfg;
  const int64_t now_s = ctx.now_ms / 1000;
  const int64_t ttl_s =
      std::chrono::duration_cast<std::chrono::seconds>(cfg.access_token_ttl).count();
  json claims = {{"iss", cfg.issuer},      {"aud", cfg.audience}, {"sub", sub},
                 {"client_id", client_id}, {"iat", now_s},        {"exp", now_s + ttl_s},
                 {"jti", random_id()}};
  if (!scope.empty()) claims["scope"] = scope;
  if (!fid.empty()) claims["fid"] = fid;
  json out = {{"access_token", sign(claims)}, {"token_type", "Bearer"}, {"expires_in", ttl_s}};
  if (!scope.empty()) out["scope"] = scope;
  if (!fid.empty() && has(cfg.grants, "refresh_token")) {
    const int64_t rttl_s =
        std::chrono::duration_cast<std::chrono::seconds>(cfg.refresh_token_ttl).count();
    json rt = {{"kid", kid_},  {"id", random_id()},     {"fid", fid},
               {"gen", gen},   {"cid", client_id},      {"sub", sub},
               {"iat", now_s}, {"exp", now_s + rttl_s}, {"scope", grant_scope}};
    if (pw != 0) rt["pw"] = pw;  // the password's version when the grant began
    out["refresh_token"] = seal("mrt_", rt);
  }
  return json_reply(out);
}

oauth_authority::reply oauth_authority::handle(const request& req, const context& ctx) const {
  if (req.kind == endpoint::authorize) return authorize(req, ctx);
  std::vector<std::pair<std::string, std::string>> form;
  if (!parse_form(req.body, &form))
    return error_reply(400, "invalid_request", "malformed form body");
  if (req.kind == endpoint::token) return token(form, req.authorization, ctx);

  const oauth_config& cfg = *ctx.cfg;
  std::string client_id;
  bool is_public = false;
  // A public client may revoke its own tokens (logout, RFC 7009 section 5), not introspect.
  std::string consumer = authenticate_client(req.authorization, form, ctx,
                                             req.kind == endpoint::revoke, &client_id, &is_public);
  if (consumer.empty()) return invalid_client();
  const int64_t now_s = ctx.now_ms / 1000;
  std::string token = find(form, "token");
  if (token.empty()) return error_reply(400, "invalid_request", "token is required");

  if (token.starts_with("mrt_")) {
    auto rt = open_sealed("mrt_", token);
    std::string fid = rt ? rt->value("fid", "") : "";
    bool active = rt && rt->value("exp", int64_t{0}) > now_s && !fid.empty() && !revoked(fid) &&
                  family_generation(fid) == rt->value("gen", int64_t{0});
    if (req.kind == endpoint::introspect) {
      if (!active) return json_reply({{"active", false}});
      json out = {{"active", true},
                  {"token_type", "refresh_token"},
                  {"client_id", rt->value("cid", "")},
                  {"sub", rt->value("sub", "")},
                  {"exp", rt->value("exp", int64_t{0})},
                  {"iat", rt->value("iat", int64_t{0})},
                  {"iss", cfg.issuer}};
      if (!rt->value("scope", "").empty()) out["scope"] = rt->value("scope", "");
      return json_reply(out);
    }
    reply ok;
    ok.headers = {{"Cache-Control", "no-store"}};
    if (!active) return ok;
    if (rt->value("cid", "") != client_id)
      return error_reply(400, "unauthorized_client", "the token was issued to another client");
    // Revoking a refresh token revokes its grant: every refresh and access token of the family.
    std::string error;
    if (!on_revoke || !on_revoke(fid, now_s + grant_lifetime_s(cfg), &error))
      return error_reply(503, "temporarily_unavailable", "revocation not stored: " + error);
    return ok;
  }

  jwt_rules rules;
  rules.issuer = cfg.issuer;
  rules.audience = cfg.audience;
  rules.leeway = std::chrono::seconds(0);
  auto keys = keys_.load();
  auto verified =
      verify_jwt(token, *keys, rules,
                 std::chrono::system_clock::time_point(std::chrono::milliseconds(ctx.now_ms)));
  std::string jti = verified.ok ? verified.claims.value("jti", "") : "";
  bool active = verified.ok && !jti.empty() && !token_revoked(verified.claims);

  if (req.kind == endpoint::introspect) {
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

oauth_authority::reply oauth_authority::token(
    const std::vector<std::pair<std::string, std::string>>& form, std::string_view authorization,
    const context& ctx) const {
  const oauth_config& cfg = *ctx.cfg;
  std::string grant = find(form, "grant_type");
  if (grant.empty()) return error_reply(400, "invalid_request", "grant_type is required");
  static const std::vector<std::string> known = {"client_credentials", "password",
                                                 "authorization_code", "refresh_token"};
  if (!has(known, grant))
    return error_reply(400, "unsupported_grant_type", "grant type " + grant + " is not supported");
  if (!has(cfg.grants, grant))
    return error_reply(400, "unsupported_grant_type",
                       "grant type " + grant + " is not enabled (oauth.grants)");
  // Public clients redeem codes and refresh tokens with their client_id alone (PKCE binds codes).
  const bool public_ok = grant == "authorization_code" || grant == "refresh_token";
  std::string client_id;
  bool is_public = false;
  std::string consumer =
      authenticate_client(authorization, form, ctx, public_ok, &client_id, &is_public);
  if (consumer.empty()) return invalid_client();
  const int64_t now_s = ctx.now_ms / 1000;
  const int64_t family_s = grant_lifetime_s(cfg);
  std::string granted, bad;

  if (grant == "client_credentials") {
    if (!parse_scope(find(form, "scope"), cfg.scopes, &granted, &bad))
      return error_reply(400, "invalid_scope", "scope " + bad + " is not offered");
    return issue(ctx, consumer, client_id, granted, granted, "", 0, 0);
  }

  if (grant == "password") {
    std::string user = find(form, "username");
    std::string password = find(form, "password");
    if (user.empty() || password.empty())
      return error_reply(400, "invalid_request", "username and password are required");
    if (!parse_scope(find(form, "scope"), cfg.scopes, &granted, &bad))
      return error_reply(400, "invalid_scope", "scope " + bad + " is not offered");
    std::string why;
    int64_t pw = 0;
    if (!find_consumer(ctx.consumers, user) ||
        !check_password(user, password, ctx.client_address, ctx.now_ms, &why, &pw)) {
      if (why.empty())  // an unknown user: the same cost, counted the same
        check_password(user, password, ctx.client_address, ctx.now_ms, &why, &pw);
      return error_reply(400, "invalid_grant", why);
    }
    return issue(ctx, user, client_id, granted, granted, random_id(), 0, pw);
  }

  if (grant == "authorization_code") {
    std::string code = find(form, "code");
    std::string verifier = find(form, "code_verifier");
    if (code.empty()) return error_reply(400, "invalid_request", "code is required");
    if (verifier.empty())
      return error_reply(400, "invalid_request", "code_verifier is required (PKCE)");
    auto c = open_sealed("mac_", code);
    if (!c || c->value("exp", int64_t{0}) <= now_s)
      return error_reply(400, "invalid_grant", "the authorization code is invalid or expired");
    if (c->value("cid", "") != client_id)
      return error_reply(400, "invalid_grant",
                         "the authorization code was issued to another client");
    if (c->value("rg", false) && find(form, "redirect_uri") != c->value("ruri", ""))
      return error_reply(400, "invalid_grant",
                         "redirect_uri differs from the one in the authorization request");
    if (!valid_verifier(verifier) || s256(verifier) != c->value("cc", ""))
      return error_reply(400, "invalid_grant", "code_verifier does not match the code_challenge");
    std::string id = c->value("id", "");
    std::string sub = c->value("sub", "");
    if (id.empty() || !find_consumer(ctx.consumers, sub))
      return error_reply(400, "invalid_grant", "the authorization code is invalid or expired");
    std::string error;
    std::string fid = random_id();
    {
      // Check and record as one step: two workers redeeming the same code at once must not
      // both find it unused.
      std::lock_guard lock(single_use_lock(id));
      if (auto previous = used ? used(id) : std::nullopt) {
        // A code used twice: revoke what the first redemption issued (RFC 6749 section 4.1.2).
        auto p = json::parse(*previous, nullptr, false);
        if (p.is_object() && p.contains("fid") && p["fid"].is_string() && on_revoke)
          on_revoke(p["fid"].get<std::string>(), now_s + family_s, &error);
        return error_reply(400, "invalid_grant",
                           "the authorization code was already used; the tokens issued for it "
                           "are revoked");
      }
      if (!mark_used ||
          !mark_used(id, json{{"fid", fid}}.dump(), c->value("exp", now_s) + 60, &error))
        return error_reply(503, "temporarily_unavailable",
                           "cannot record the code's use: " + error);
    }
    const std::string scope = c->value("scope", "");
    return issue(ctx, sub, client_id, scope, scope, fid, 0, c->value("pw", int64_t{0}));
  }

  // refresh_token
  std::string token = find(form, "refresh_token");
  if (token.empty()) return error_reply(400, "invalid_request", "refresh_token is required");
  auto rt = open_sealed("mrt_", token);
  if (!rt || rt->value("exp", int64_t{0}) <= now_s)
    return error_reply(400, "invalid_grant", "the refresh token is invalid or expired");
  if (rt->value("cid", "") != client_id)
    return error_reply(400, "invalid_grant", "the refresh token was issued to another client");
  const std::string fid = rt->value("fid", "");
  const std::string sub = rt->value("sub", "");
  const int64_t gen = rt->value("gen", int64_t{0});
  if (fid.empty() || revoked(fid))
    return error_reply(400, "invalid_grant", "the refresh token is revoked");
  if (!find_consumer(ctx.consumers, sub))
    return error_reply(400, "invalid_grant", "the token's user no longer exists");
  // A grant that began with the user's password ends when the password changes or goes.
  if (int64_t pw = rt->value("pw", int64_t{0}); pw != 0) {
    auto current = password_hash ? password_hash(sub) : std::nullopt;
    if (!current || current->updated_ms != pw)
      return error_reply(400, "invalid_grant",
                         "the user's password changed since this grant: log in again");
  }
  // The refresh token keeps the grant's scope; a narrower one applies to this access token only
  // (RFC 6749 section 6).
  const std::string scope = rt->value("scope", "");
  std::string access_scope = scope;
  if (std::string asked = find(form, "scope"); !asked.empty()) {
    auto had = split_scope(scope);
    if (!parse_scope(asked, had, &granted, &bad))
      return error_reply(400, "invalid_scope", "scope " + bad + " was not granted");
    access_scope = granted;
  }
  std::string error;
  {
    std::lock_guard lock(single_use_lock(fid));
    // The family's register holds its current generation: each refresh moves it on by one, so
    // an older generation is a token that was already used.
    const int64_t current = family_generation(fid);
    if (current != gen) {
      // Reuse of a rotated refresh token: stolen, or replayed. Revoke the whole grant (Security
      // BCP section 4.14.2), so neither the thief nor the client keeps it.
      if (on_revoke) on_revoke(fid, now_s + family_s, &error);
      return error_reply(400, "invalid_grant",
                         "the refresh token was already used; its grant is revoked (reuse "
                         "detected)");
    }
    json next = {{"fid", fid}, {"gen", gen + 1}, {"n", random_id()}};
    if (!mark_used || !mark_used(fid, next.dump(), now_s + family_s, &error))
      return error_reply(503, "temporarily_unavailable", "cannot record the token's use: " + error);
  }
  return issue(ctx, sub, client_id, access_scope, scope, fid, gen + 1, rt->value("pw", int64_t{0}));
}

oauth_authority::reply oauth_authority::authorize(const request& req, const context& ctx) const {
  const oauth_config& cfg = *ctx.cfg;
  std::vector<std::pair<std::string, std::string>> form;
  if (!parse_form(req.post ? req.body : req.query, &form))
    return error_page(400, "The request is malformed (bad percent-encoding).");
  // Until the client and its redirect URI are known good, errors are shown here and never sent
  // to the redirect URI (RFC 6749 section 4.1.2.1): no open redirector.
  std::string client_id = find(form, "client_id");
  const api_key_record* key = nullptr;
  if (ctx.clients && !client_id.empty()) {
    auto it = ctx.clients->find(client_id);
    if (it != ctx.clients->end()) key = &it->second;
  }
  if (!key || (key->expires_ms && ctx.now_ms >= key->expires_ms))
    return error_page(400, "Unknown client: client_id must name a valid API key.");
  const consumer_config* client = find_consumer(ctx.consumers, key->consumer);
  if (!client) return error_page(400, "Unknown client: client_id must name a valid API key.");
  std::string redirect_uri = find(form, "redirect_uri");
  bool redirect_given = !redirect_uri.empty();
  if (!redirect_given) {
    if (client->redirect_uris.size() != 1)
      return error_page(400, "redirect_uri is required: the client registers " +
                                 std::to_string(client->redirect_uris.size()) + " redirect URIs.");
    redirect_uri = client->redirect_uris.front();
  } else if (!has(client->redirect_uris, redirect_uri)) {
    return error_page(400, "redirect_uri is not registered for this client.");
  }
  std::string state = find(form, "state");
  auto fail = [&](const char* error, const std::string& description) {
    return redirect_reply(redirect_uri, {{"error", error},
                                         {"error_description", description},
                                         {"state", state},
                                         {"iss", cfg.issuer}});
  };
  if (!has(cfg.grants, "authorization_code"))
    return fail("unsupported_response_type", "the authorization_code grant is not enabled");
  if (find(form, "response_type") != "code")
    return fail("unsupported_response_type", "response_type must be code");
  std::string challenge = find(form, "code_challenge");
  if (challenge.empty())
    return fail("invalid_request", "code_challenge is required (PKCE with S256)");
  if (find(form, "code_challenge_method") != "S256")
    return fail("invalid_request", "code_challenge_method must be S256");
  if (challenge.size() != 43 || !base64url_decode(challenge))
    return fail("invalid_request", "code_challenge must be base64url(SHA-256(code_verifier))");
  std::string granted, bad;
  if (!parse_scope(find(form, "scope"), cfg.scopes, &granted, &bad))
    return fail("invalid_scope", "scope " + bad + " is not offered");

  std::string message;
  if (req.post) {
    if (find(form, "decision") == "deny") return fail("access_denied", "the user denied access");
    std::string user = find(form, "username");
    std::string password = find(form, "password");
    std::string why;
    int64_t pw = 0;
    if (!user.empty() && !password.empty() && find_consumer(ctx.consumers, user) &&
        check_password(user, password, ctx.client_address, ctx.now_ms, &why, &pw)) {
      const int64_t now_s = ctx.now_ms / 1000;
      json c = {{"kid", kid_},      {"id", random_id()},    {"cid", client_id},
                {"sub", user},      {"ruri", redirect_uri}, {"rg", redirect_given},
                {"scope", granted}, {"cc", challenge},      {"exp", now_s + code_ttl_s},
                {"pw", pw}};
      return redirect_reply(redirect_uri,
                            {{"code", seal("mac_", c)}, {"state", state}, {"iss", cfg.issuer}});
    }
    if (why.empty() && !user.empty() && !password.empty()) {
      int64_t ignored = 0;
      check_password(user, password, ctx.client_address, ctx.now_ms, &why,
                     &ignored);  // unknown user: same cost
    }
    message = why.empty() ? "Enter your username and password." : why;
  }

  // The consent page: who asks, for what, and a login form that posts everything back.
  std::string page = std::string(
                         "<!doctype html><html><head><meta charset=utf-8>"
                         "<meta name=viewport content=\"width=device-width\">"
                         "<title>Authorize ") +
                     html_escape(client->id) + "</title>" + page_style + "</head><body><h1>" +
                     html_escape(client->id) + " asks for access</h1>";
  auto scopes = split_scope(granted);
  if (scopes.empty()) {
    page += "<p>It asks for no particular scope.</p>";
  } else {
    page += "<p>It asks for:</p><ul class=scopes>";
    for (const auto& one : scopes) page += "<li>" + html_escape(one) + "</li>";
    page += "</ul>";
  }
  page += "<p>Tokens go to <code>" + html_escape(redirect_uri) + "</code>.</p>";
  if (!message.empty()) page += "<p class=err>" + html_escape(message) + "</p>";
  page += "<form method=post action=\"" + html_escape(cfg.authorize_path) + "\">";
  for (const char* name : {"response_type", "client_id", "redirect_uri", "scope", "state",
                           "code_challenge", "code_challenge_method"}) {
    std::string v = find(form, name);
    if (v.empty()) continue;
    page += "<input type=hidden name=" + std::string(name) + " value=\"" + html_escape(v) + "\">";
  }
  page +=
      "<label for=u>Username</label><input type=text id=u name=username "
      "autocomplete=username value=\"" +
      html_escape(find(form, "username")) +
      "\"><label for=p>Password</label><input type=password id=p name=password "
      "autocomplete=current-password><button type=submit name=decision value=allow>Allow"
      "</button><button type=submit name=decision value=deny>Deny</button></form>"
      "</body></html>";
  reply r;
  r.status = 200;
  r.content_type = "text/html; charset=utf-8";
  r.headers = page_headers();
  r.body = std::move(page);
  return r;
}

}  // namespace meridian::node
