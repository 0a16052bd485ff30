#pragma once
// JWT verification (RFC 7519, compact JWS of RFC 7515) against a key set (JWKS, RFC 7517).
//
// Use: parse the JWKS once when the config is loaded or refreshed, hold it as
// shared_ptr<const jwks>, and call verify_jwt for every request. A jwks is immutable after
// parse, so any number of threads may verify against it at the same time.
//
// Supported algorithms (RFC 7518, RFC 8037): HS256/384/512, RS256/384/512, PS256/384/512,
// ES256, ES384 and EdDSA (Ed25519). `alg: none` and every other algorithm are refused. A token's
// alg must fit the key's type (and the key's "alg" when the JWK names one), so an HS* token is
// never checked against an RSA or EC public key used as an HMAC secret. Keys embedded in or
// referenced by the token header (jwk, jku, x5u, x5c) are ignored: only the jwks is trusted.

#include <array>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

struct evp_pkey_st;    // OpenSSL's EVP_PKEY, kept out of this header.
struct evp_md_ctx_st;  // OpenSSL's EVP_MD_CTX

namespace meridian::node {

// Frees an OpenSSL EVP_PKEY.
struct evp_pkey_deleter {
  void operator()(evp_pkey_st* key) const;
};
struct evp_md_ctx_deleter {
  void operator()(evp_md_ctx_st* ctx) const;
};

enum class jwk_type { rsa, ec, okp, oct };

// One verification key from a JWKS. Key material is parsed and checked once, in jwks::parse.
struct jwt_key {
  std::string kid;  // may be empty
  std::string alg;  // the JWK's "alg"; empty means any algorithm that fits the type
  jwk_type type = jwk_type::oct;
  std::string curve;     // "P-256", "P-384" or "Ed25519"; empty for RSA and oct
  std::string material;  // oct: the HMAC secret; OKP: the 32-byte Ed25519 public key
  std::unique_ptr<evp_pkey_st, evp_pkey_deleter> pkey;  // RSA and EC public keys
  // oct keys: the HMAC inner and outer hash states with the padded secret already absorbed,
  // for SHA-256, SHA-384 and SHA-512 (inner, outer, inner, ...). A verification copies two of
  // them instead of keying a MAC from scratch.
  std::array<std::unique_ptr<evp_md_ctx_st, evp_md_ctx_deleter>, 6> hmac_pads;
};

// An immutable set of verification keys.
class jwks {
 public:
  // Upper bounds on input from a JWKS file or URL.
  static constexpr size_t max_document_bytes = 1 << 20;
  static constexpr size_t max_keys = 256;

  // Parses a JWKS JSON document ({"keys": [...]}) with kty RSA (n, e; 2048 to 8192 bits),
  // EC (crv P-256 or P-384; x, y), OKP (crv Ed25519; x) and oct (k, at least 32 bytes).
  // Keys of an unknown kty or curve, keys with "use" other than "sig", keys whose "key_ops" lack
  // "verify" and keys whose "alg" is not a supported JWS algorithm are skipped and listed in
  // notes(). Returns the set, or nullptr and sets *error (when error is not null) on malformed
  // input: invalid JSON, a missing or mistyped member, bad base64url, an EC point not on its
  // curve, an invalid Ed25519 point, a key too short, or an "alg" that does not fit the kty.
  // Never throws.
  static std::shared_ptr<const jwks> parse(std::string_view json, std::string* error);

  size_t size() const { return keys_.size(); }
  const std::vector<jwt_key>& keys() const { return keys_; }
  // Returns one line per skipped key, saying which and why.
  const std::vector<std::string>& notes() const { return notes_; }

 private:
  jwks() = default;
  std::vector<jwt_key> keys_;
  std::vector<std::string> notes_;
};

struct jwt_rules {
  std::string issuer;               // when not empty, "iss" must equal it
  std::string audience;             // when not empty, "aud" must equal it or (an array) contain it
  std::chrono::seconds leeway{60};  // clock skew allowed for exp, nbf and iat
  bool require_exp = false;         // refuse tokens without "exp" ("missing_exp")
};

struct jwt_result {
  bool ok = false;
  // Empty when ok, else a short machine code: "malformed", "alg_not_allowed", "unknown_kid",
  // "bad_signature", "expired", "not_yet_valid", "missing_exp", "wrong_issuer",
  // "wrong_audience" or "internal".
  std::string error;
  std::string message;    // one line for logs and the 401 body; never contains key material
  nlohmann::json claims;  // the payload, set only when ok
};

// Upper bounds on a token.
inline constexpr size_t max_jwt_bytes = 16 * 1024;
inline constexpr size_t max_jwt_json_depth = 32;

// Verifies a compact JWS (header.payload.signature) with one of keys and checks its claims
// against rules at time now. The key is chosen by the header's "kid" when present (no key with
// that kid: "unknown_kid"); otherwise every key whose type fits the alg is tried. When no
// candidate key can verify the alg at all, the answer is "alg_not_allowed". Signature checks
// come before claim checks, so an unsigned payload is never judged on its claims. exp, nbf and
// iat are NumericDates (numbers, fractions allowed); a mistyped claim is "malformed".
// Never throws.
jwt_result verify_jwt(std::string_view token, const jwks& keys, const jwt_rules& rules,
                      std::chrono::system_clock::time_point now);

// A cache of verified tokens, for one provider (one set of rules): a token seen before skips
// parsing and the signature check, which dominate verification (RS256 ~30 us, EdDSA ~60 us
// here, docs/benchmarks.md); exp, nbf and iat are checked again on every hit. An entry counts
// only for the key set it was verified with, so a re-fetched JWKS re-verifies every token.
// Failed verifications are not cached. Bounded (capacity entries; a full shard drops an
// arbitrary entry); safe to call from any number of threads.
class verified_jwt_cache {
 public:
  explicit verified_jwt_cache(size_t capacity = 16384);
  ~verified_jwt_cache();
  verified_jwt_cache(const verified_jwt_cache&) = delete;
  verified_jwt_cache& operator=(const verified_jwt_cache&) = delete;

  // Returns verify_jwt(token, *keys, rules, now), from the cache when token was verified with
  // these keys before.
  std::shared_ptr<const jwt_result> verify(std::string_view token,
                                           const std::shared_ptr<const jwks>& keys,
                                           const jwt_rules& rules,
                                           std::chrono::system_clock::time_point now);
  uint64_t hits() const { return hits_.load(std::memory_order_relaxed); }
  uint64_t misses() const { return misses_.load(std::memory_order_relaxed); }

 private:
  struct entry {
    std::string token;
    std::shared_ptr<const jwks> keys;  // held: no other key set can reuse its address
    std::shared_ptr<const jwt_result> result;
    std::optional<double> exp, nbf, iat;
  };
  struct shard {
    std::mutex mu;
    std::unordered_map<uint64_t, entry> entries;  // by hash of the token; token compared
  };
  static constexpr size_t shard_count = 16;
  size_t per_shard_;
  std::array<shard, shard_count> shards_;
  std::atomic<uint64_t> hits_{0}, misses_{0};
};

// Encodes base64url without padding (RFC 7515 section 2).
std::string base64url_encode(std::string_view in);

// Decodes base64url without padding (RFC 7515 section 2) strictly: returns nullopt for any
// character outside [A-Za-z0-9_-], for '=', for a length of 4n+1 and for non-zero unused bits,
// so every byte string has exactly one accepted encoding.
std::optional<std::string> base64url_decode(std::string_view in);

}  // namespace meridian::node
