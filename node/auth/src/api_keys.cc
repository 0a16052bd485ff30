#include "meridian/auth/api_keys.h"

#include <sodium.h>

#include <cstdlib>
#include <nlohmann/json.hpp>

namespace meridian::node {
namespace {

constexpr char hash_key[] = "meridian api key v1";  // context, not a secret (the salt is per key)
constexpr size_t secret_bytes = 32;

void ensure_sodium() {
  static const bool ready = sodium_init() >= 0;
  if (!ready) std::abort();
}

std::string to_hex(const uint8_t* p, size_t n) {
  std::string out(n * 2 + 1, '\0');
  sodium_bin2hex(out.data(), out.size(), p, n);
  out.pop_back();
  return out;
}

template <size_t N>
bool from_hex(std::string_view hex, std::array<uint8_t, N>* out) {
  size_t len = 0;
  return hex.size() == 2 * N &&
         sodium_hex2bin(out->data(), N, hex.data(), hex.size(), nullptr, &len, nullptr) == 0 &&
         len == N;
}

std::array<uint8_t, 32> hash_secret(const std::array<uint8_t, 16>& salt, std::string_view secret) {
  std::array<uint8_t, 32> h{};
  crypto_generichash_state st;
  crypto_generichash_init(&st, reinterpret_cast<const unsigned char*>(hash_key),
                          sizeof hash_key - 1, h.size());
  crypto_generichash_update(&st, salt.data(), salt.size());
  crypto_generichash_update(&st, reinterpret_cast<const unsigned char*>(secret.data()),
                            secret.size());
  crypto_generichash_final(&st, h.data(), h.size());
  return h;
}

bool is_hex(std::string_view s) {
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

}  // namespace

key_usage* key_usage_registry::get(const std::string& key_id) {
  std::lock_guard lock(mu_);
  auto& u = usage_[key_id];
  if (!u) u = std::make_unique<key_usage>();
  return u.get();
}

issued_key issue_api_key(const std::string& consumer, int64_t now_ms, int64_t expires_ms) {
  ensure_sodium();
  uint8_t id[8], secret[secret_bytes];
  std::array<uint8_t, 16> salt{};
  randombytes_buf(id, sizeof id);
  randombytes_buf(secret, sizeof secret);
  randombytes_buf(salt.data(), salt.size());
  issued_key k;
  k.key_id = to_hex(id, sizeof id);
  std::string secret_hex = to_hex(secret, sizeof secret);
  k.plaintext = "mk_" + k.key_id + "_" + secret_hex;
  auto h = hash_secret(salt, secret_hex);
  sodium_memzero(secret, sizeof secret);
  nlohmann::json doc = {{"consumer", consumer},
                        {"salt", to_hex(salt.data(), salt.size())},
                        {"hash", to_hex(h.data(), h.size())},
                        {"created", now_ms},
                        {"expires", expires_ms}};
  k.document = doc.dump();
  sodium_memzero(secret_hex.data(), secret_hex.size());
  return k;
}

std::optional<api_key_record> parse_api_key_document(const std::string& key_id,
                                                     const std::string& json) {
  auto j = nlohmann::json::parse(json, nullptr, false);
  if (!j.is_object() || !j.contains("consumer") || !j["consumer"].is_string()) return std::nullopt;
  api_key_record r;
  r.key_id = key_id;
  r.consumer = j["consumer"].get<std::string>();
  if (!from_hex(j.value("salt", ""), &r.salt) || !from_hex(j.value("hash", ""), &r.hash))
    return std::nullopt;
  r.created_ms = j.value("created", int64_t{0});
  r.expires_ms = j.value("expires", int64_t{0});
  return r;
}

bool split_api_key(std::string_view key, std::string_view* key_id, std::string_view* secret) {
  // "mk_" + 16 hex + "_" + 64 hex
  if (key.size() != 3 + 16 + 1 + 2 * secret_bytes || key.substr(0, 3) != "mk_" || key[19] != '_')
    return false;
  *key_id = key.substr(3, 16);
  *secret = key.substr(20);
  return is_hex(*key_id) && is_hex(*secret);
}

bool verify_api_key(const api_key_record& r, std::string_view secret) {
  ensure_sodium();
  auto h = hash_secret(r.salt, secret);
  return sodium_memcmp(h.data(), r.hash.data(), h.size()) == 0;
}

}  // namespace meridian::node
