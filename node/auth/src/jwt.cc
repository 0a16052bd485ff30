#include "meridian/auth/jwt.h"

#include "meridian/common/json_depth.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/param_build.h>
#include <openssl/rsa.h>
#include <sodium.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <exception>

namespace meridian::node {

void evp_pkey_deleter::operator()(evp_pkey_st* key) const {
  EVP_PKEY_free(key);
}
void evp_md_ctx_deleter::operator()(evp_md_ctx_st* ctx) const {
  EVP_MD_CTX_free(ctx);
}

namespace {

// RAII for the OpenSSL objects used here.
struct bn_free {
  void operator()(BIGNUM* p) const { BN_free(p); }
};
struct param_bld_free {
  void operator()(OSSL_PARAM_BLD* p) const { OSSL_PARAM_BLD_free(p); }
};
struct param_free {
  void operator()(OSSL_PARAM* p) const { OSSL_PARAM_free(p); }
};
struct pkey_ctx_free {
  void operator()(EVP_PKEY_CTX* p) const { EVP_PKEY_CTX_free(p); }
};
struct md_ctx_free {
  void operator()(EVP_MD_CTX* p) const { EVP_MD_CTX_free(p); }
};
struct ecdsa_sig_free {
  void operator()(ECDSA_SIG* p) const { ECDSA_SIG_free(p); }
};
using bn_ptr = std::unique_ptr<BIGNUM, bn_free>;
using param_bld_ptr = std::unique_ptr<OSSL_PARAM_BLD, param_bld_free>;
using param_ptr = std::unique_ptr<OSSL_PARAM, param_free>;
using pkey_ctx_ptr = std::unique_ptr<EVP_PKEY_CTX, pkey_ctx_free>;
using md_ctx_ptr = std::unique_ptr<EVP_MD_CTX, md_ctx_free>;
using ecdsa_sig_ptr = std::unique_ptr<ECDSA_SIG, ecdsa_sig_free>;
using pkey_ptr = std::unique_ptr<evp_pkey_st, evp_pkey_deleter>;

const unsigned char* bytes(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

// A failed OpenSSL call leaves entries on this thread's error queue; drop them so they are not
// mistaken later for the error of an unrelated TLS call on the same thread.
bool openssl_ok(bool ok) {
  if (!ok) ERR_clear_error();
  return ok;
}

enum class alg_family { hmac, rsa_pkcs1, rsa_pss, ecdsa, eddsa };

struct alg_spec {
  std::string_view name;
  alg_family family;
  const EVP_MD* (*md)();   // null for EdDSA
  size_t hash_bytes;       // HMAC: minimum secret length (RFC 7518 section 3.2)
  std::string_view curve;  // ECDSA and EdDSA only
  size_t coord_bytes;      // ECDSA: length of r and of s
};

constexpr std::array<alg_spec, 13> algorithms{{
    {"HS256", alg_family::hmac, EVP_sha256, 32, "", 0},
    {"HS384", alg_family::hmac, EVP_sha384, 48, "", 0},
    {"HS512", alg_family::hmac, EVP_sha512, 64, "", 0},
    {"RS256", alg_family::rsa_pkcs1, EVP_sha256, 32, "", 0},
    {"RS384", alg_family::rsa_pkcs1, EVP_sha384, 48, "", 0},
    {"RS512", alg_family::rsa_pkcs1, EVP_sha512, 64, "", 0},
    {"PS256", alg_family::rsa_pss, EVP_sha256, 32, "", 0},
    {"PS384", alg_family::rsa_pss, EVP_sha384, 48, "", 0},
    {"PS512", alg_family::rsa_pss, EVP_sha512, 64, "", 0},
    {"ES256", alg_family::ecdsa, EVP_sha256, 32, "P-256", 32},
    {"ES384", alg_family::ecdsa, EVP_sha384, 48, "P-384", 48},
    {"ES512", alg_family::ecdsa, EVP_sha512, 64, "P-521", 66},
    {"EdDSA", alg_family::eddsa, nullptr, 0, "Ed25519", 0},
}};

// Returns alg's digest, fetched from the provider once per process: with the legacy
// EVP_sha256() handles OpenSSL 3 looks the implementation up again on every call. The fetched
// digests live as long as the process.
const EVP_MD* digest(const alg_spec& alg) {
  static EVP_MD* const sha256 = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  static EVP_MD* const sha384 = EVP_MD_fetch(nullptr, "SHA384", nullptr);
  static EVP_MD* const sha512 = EVP_MD_fetch(nullptr, "SHA512", nullptr);
  const EVP_MD* md = alg.hash_bytes == 32 ? sha256 : alg.hash_bytes == 48 ? sha384 : sha512;
  return md != nullptr ? md : alg.md();
}

const alg_spec* find_alg(std::string_view name) {
  for (const auto& a : algorithms) {
    if (a.name == name) return &a;
  }
  return nullptr;
}

jwk_type type_for(alg_family f) {
  switch (f) {
    case alg_family::hmac:
      return jwk_type::oct;
    case alg_family::rsa_pkcs1:
    case alg_family::rsa_pss:
      return jwk_type::rsa;
    case alg_family::ecdsa:
      return jwk_type::ec;
    case alg_family::eddsa:
      return jwk_type::okp;
  }
  return jwk_type::oct;
}

// Returns true when key may verify tokens signed with alg. This is the algorithm-confusion
// guard: the token's alg never decides how key material is interpreted.
bool key_fits(const jwt_key& key, const alg_spec& alg) {
  if (key.type != type_for(alg.family)) return false;
  if (!key.alg.empty() && key.alg != alg.name) return false;
  if (!alg.curve.empty() && key.curve != alg.curve) return false;
  if (alg.family == alg_family::hmac && key.material.size() < alg.hash_bytes) return false;
  return true;
}

// Parses JSON without throwing; returns a discarded value on bad input or excessive nesting.
nlohmann::json parse_json(std::string_view text) {
  if (json_too_deep(text, max_jwt_json_depth)) return nlohmann::json::value_t::discarded;
  return nlohmann::json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
}

// ---- signature checks ----

bool verify_hmac(const alg_spec& alg, const jwt_key& key, std::string_view input,
                 std::string_view sig) {
  const size_t slot = alg.hash_bytes == 32 ? 0 : alg.hash_bytes == 48 ? 2 : 4;
  if (key.hmac_pads[slot] && key.hmac_pads[slot + 1]) {
    // HMAC from the precomputed pads: OpenSSL 3's one-shot HMAC() builds an EVP_MAC context
    // and re-keys it on every call, which cost about half of an HS256 verification.
    thread_local std::unique_ptr<EVP_MD_CTX, evp_md_ctx_deleter> work(EVP_MD_CTX_new());
    unsigned char inner[EVP_MAX_MD_SIZE], mac[EVP_MAX_MD_SIZE];
    unsigned int inner_len = 0, mac_len = 0;
    if (!work || EVP_MD_CTX_copy_ex(work.get(), key.hmac_pads[slot].get()) != 1 ||
        EVP_DigestUpdate(work.get(), bytes(input), input.size()) != 1 ||
        EVP_DigestFinal_ex(work.get(), inner, &inner_len) != 1 ||
        EVP_MD_CTX_copy_ex(work.get(), key.hmac_pads[slot + 1].get()) != 1 ||
        EVP_DigestUpdate(work.get(), inner, inner_len) != 1 ||
        EVP_DigestFinal_ex(work.get(), mac, &mac_len) != 1) {
      return openssl_ok(false);
    }
    return sig.size() == mac_len && CRYPTO_memcmp(mac, sig.data(), mac_len) == 0;
  }
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int mac_len = 0;
  if (!openssl_ok(HMAC(digest(alg), key.material.data(), static_cast<int>(key.material.size()),
                       bytes(input), input.size(), mac, &mac_len) != nullptr)) {
    return false;
  }
  return sig.size() == mac_len && CRYPTO_memcmp(mac, sig.data(), mac_len) == 0;
}

// Converts a JWS ECDSA signature (r || s, each coord_bytes long) into the DER that OpenSSL
// verifies. Returns an empty string when sig has the wrong length.
std::string ecdsa_raw_to_der(std::string_view sig, size_t coord_bytes) {
  if (sig.size() != 2 * coord_bytes) return {};
  ecdsa_sig_ptr der_sig(ECDSA_SIG_new());
  bn_ptr r(BN_bin2bn(bytes(sig), static_cast<int>(coord_bytes), nullptr));
  bn_ptr s(BN_bin2bn(bytes(sig) + coord_bytes, static_cast<int>(coord_bytes), nullptr));
  if (!der_sig || !r || !s) return {};
  if (ECDSA_SIG_set0(der_sig.get(), r.get(), s.get()) != 1) return {};
  r.release();  // owned by der_sig now
  s.release();
  int len = i2d_ECDSA_SIG(der_sig.get(), nullptr);
  if (len <= 0) return {};
  std::string der(static_cast<size_t>(len), '\0');
  auto* out = reinterpret_cast<unsigned char*>(der.data());
  if (i2d_ECDSA_SIG(der_sig.get(), &out) != len) return {};
  return der;
}

bool verify_evp(const alg_spec& alg, const jwt_key& key, std::string_view input,
                std::string_view sig) {
  std::string der;
  if (alg.family == alg_family::ecdsa) {
    der = ecdsa_raw_to_der(sig, alg.coord_bytes);
    if (der.empty()) return false;
    sig = der;
  } else if (sig.size() != static_cast<size_t>(EVP_PKEY_get_size(key.pkey.get()))) {
    return false;  // RSA signatures are exactly the modulus length (RFC 8017 section 8.2.2)
  }
  md_ctx_ptr ctx(EVP_MD_CTX_new());
  if (!ctx) return false;
  EVP_PKEY_CTX* pctx = nullptr;  // owned by ctx
  if (!openssl_ok(EVP_DigestVerifyInit(ctx.get(), &pctx, digest(alg), nullptr, key.pkey.get()) ==
                  1)) {
    return false;
  }
  if (alg.family == alg_family::rsa_pkcs1) {
    if (!openssl_ok(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) > 0)) return false;
  } else if (alg.family == alg_family::rsa_pss) {
    // RFC 7518 section 3.5: MGF1 with the same hash, salt as long as the hash output.
    if (!openssl_ok(EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING) > 0 &&
                    EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, digest(alg)) > 0 &&
                    EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST) > 0)) {
      return false;
    }
  }
  return openssl_ok(
      EVP_DigestVerify(ctx.get(), bytes(sig), sig.size(), bytes(input), input.size()) == 1);
}

bool verify_eddsa(const jwt_key& key, std::string_view input, std::string_view sig) {
  if (sig.size() != crypto_sign_BYTES || key.material.size() != crypto_sign_PUBLICKEYBYTES) {
    return false;
  }
  return crypto_sign_verify_detached(bytes(sig), bytes(input), input.size(), bytes(key.material)) ==
         0;
}

bool verify_signature(const alg_spec& alg, const jwt_key& key, std::string_view input,
                      std::string_view sig) {
  switch (alg.family) {
    case alg_family::hmac:
      return verify_hmac(alg, key, input, sig);
    case alg_family::rsa_pkcs1:
    case alg_family::rsa_pss:
    case alg_family::ecdsa:
      return key.pkey && verify_evp(alg, key, input, sig);
    case alg_family::eddsa:
      return verify_eddsa(key, input, sig);
  }
  return false;
}

// ---- JWKS parsing ----

// Reads member name of jwk as base64url. Returns false and sets *error when it is missing, not
// a string or not strict base64url.
bool b64_member(const nlohmann::json& jwk, const char* name, std::string* out, std::string* error) {
  auto it = jwk.find(name);
  if (it == jwk.end() || !it->is_string()) {
    *error = std::string("missing or non-string \"") + name + "\"";
    return false;
  }
  auto decoded = base64url_decode(it->get_ref<const std::string&>());
  if (!decoded) {
    *error = std::string("\"") + name + "\" is not base64url without padding";
    return false;
  }
  *out = std::move(*decoded);
  return true;
}

pkey_ptr pkey_from_params(const char* type, OSSL_PARAM_BLD* bld) {
  param_ptr params(OSSL_PARAM_BLD_to_param(bld));
  pkey_ctx_ptr ctx(EVP_PKEY_CTX_new_from_name(nullptr, type, nullptr));
  EVP_PKEY* key = nullptr;
  if (!params || !ctx || !openssl_ok(EVP_PKEY_fromdata_init(ctx.get()) == 1) ||
      !openssl_ok(EVP_PKEY_fromdata(ctx.get(), &key, EVP_PKEY_PUBLIC_KEY, params.get()) == 1)) {
    return nullptr;
  }
  pkey_ptr owned(key);
  // For EC this checks the point is on the curve and not the identity; for RSA, n and e.
  pkey_ctx_ptr check(EVP_PKEY_CTX_new_from_pkey(nullptr, key, nullptr));
  if (!check || !openssl_ok(EVP_PKEY_public_check(check.get()) == 1)) return nullptr;
  return owned;
}

bool parse_rsa(const nlohmann::json& jwk, jwt_key* key, std::string* error) {
  std::string n, e;
  if (!b64_member(jwk, "n", &n, error) || !b64_member(jwk, "e", &e, error)) return false;
  if (n.empty() || e.empty()) {
    *error = "empty \"n\" or \"e\"";
    return false;
  }
  bn_ptr bn_n(BN_bin2bn(bytes(n), static_cast<int>(n.size()), nullptr));
  bn_ptr bn_e(BN_bin2bn(bytes(e), static_cast<int>(e.size()), nullptr));
  param_bld_ptr bld(OSSL_PARAM_BLD_new());
  if (!bn_n || !bn_e || !bld) {
    *error = "out of memory";
    return false;
  }
  int bits = BN_num_bits(bn_n.get());
  if (bits < 2048 || bits > 8192) {
    *error = "RSA modulus of " + std::to_string(bits) + " bits (2048 to 8192 allowed)";
    return false;
  }
  if (OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_N, bn_n.get()) != 1 ||
      OSSL_PARAM_BLD_push_BN(bld.get(), OSSL_PKEY_PARAM_RSA_E, bn_e.get()) != 1) {
    ERR_clear_error();
    *error = "out of memory";
    return false;
  }
  key->pkey = pkey_from_params("RSA", bld.get());
  if (!key->pkey) {
    *error = "invalid RSA public key";
    return false;
  }
  return true;
}

bool parse_ec(const nlohmann::json& jwk, jwt_key* key, std::string* error) {
  const char* group = key->curve == "P-256"   ? "prime256v1"
                      : key->curve == "P-384" ? "secp384r1"
                                              : "secp521r1";
  size_t coord = key->curve == "P-256" ? 32 : key->curve == "P-384" ? 48 : 66;
  std::string x, y;
  if (!b64_member(jwk, "x", &x, error) || !b64_member(jwk, "y", &y, error)) return false;
  if (x.size() != coord || y.size() != coord) {
    *error = "\"x\" and \"y\" must be " + std::to_string(coord) + " bytes for " + key->curve;
    return false;
  }
  std::string point = "\x04" + x + y;  // SEC 1 uncompressed point
  param_bld_ptr bld(OSSL_PARAM_BLD_new());
  if (!bld ||
      OSSL_PARAM_BLD_push_utf8_string(bld.get(), OSSL_PKEY_PARAM_GROUP_NAME, group, 0) != 1 ||
      OSSL_PARAM_BLD_push_octet_string(bld.get(), OSSL_PKEY_PARAM_PUB_KEY, point.data(),
                                       point.size()) != 1) {
    ERR_clear_error();
    *error = "out of memory";
    return false;
  }
  key->pkey = pkey_from_params("EC", bld.get());
  if (!key->pkey) {
    *error = "EC point is not on " + key->curve;
    return false;
  }
  return true;
}

bool parse_okp(const nlohmann::json& jwk, jwt_key* key, std::string* error) {
  if (!b64_member(jwk, "x", &key->material, error)) return false;
  if (key->material.size() != crypto_sign_PUBLICKEYBYTES) {
    *error = "Ed25519 \"x\" must be 32 bytes";
    return false;
  }
  // Refuses non-canonical encodings, points off the curve and small-order points.
  if (crypto_core_ed25519_is_valid_point(bytes(key->material)) != 1) {
    *error = "\"x\" is not a valid Ed25519 public key";
    return false;
  }
  return true;
}

bool parse_oct(const nlohmann::json& jwk, jwt_key* key, std::string* error) {
  if (!b64_member(jwk, "k", &key->material, error)) return false;
  if (key->material.size() < 32) {
    *error = "oct key shorter than 32 bytes (RFC 7518 section 3.2)";
    return false;
  }
  return true;
}

enum class jwk_outcome { parsed, skipped, failed };

// Parses one JWK into *key. On skipped or failed, *why says why.
// Absorbs the padded secret into inner and outer hash states for each HMAC digest (RFC 2104:
// a secret longer than the block is hashed first). Leaves a pad empty when OpenSSL fails; the
// verifier then falls back to HMAC().
void prepare_hmac(jwt_key* key) {
  static const alg_spec* specs[] = {find_alg("HS256"), find_alg("HS384"), find_alg("HS512")};
  for (size_t i = 0; i < 3; ++i) {
    const EVP_MD* md = digest(*specs[i]);
    const size_t block = static_cast<size_t>(EVP_MD_get_block_size(md));
    std::string k = key->material;
    if (k.size() > block) {
      unsigned char h[EVP_MAX_MD_SIZE];
      unsigned int n = 0;
      if (EVP_Digest(k.data(), k.size(), h, &n, md, nullptr) != 1) continue;
      k.assign(reinterpret_cast<char*>(h), n);
    }
    k.resize(block, '\0');
    std::string ipad = k, opad = k;
    for (size_t j = 0; j < block; ++j) {
      ipad[j] = static_cast<char>(ipad[j] ^ 0x36);
      opad[j] = static_cast<char>(opad[j] ^ 0x5c);
    }
    std::unique_ptr<EVP_MD_CTX, evp_md_ctx_deleter> in(EVP_MD_CTX_new()), out(EVP_MD_CTX_new());
    bool ok = in && out && EVP_DigestInit_ex(in.get(), md, nullptr) == 1 &&
              EVP_DigestUpdate(in.get(), ipad.data(), block) == 1 &&
              EVP_DigestInit_ex(out.get(), md, nullptr) == 1 &&
              EVP_DigestUpdate(out.get(), opad.data(), block) == 1;
    OPENSSL_cleanse(k.data(), k.size());
    OPENSSL_cleanse(ipad.data(), ipad.size());
    OPENSSL_cleanse(opad.data(), opad.size());
    if (!ok) continue;
    key->hmac_pads[2 * i] = std::move(in);
    key->hmac_pads[2 * i + 1] = std::move(out);
  }
}

jwk_outcome parse_jwk(const nlohmann::json& jwk, jwt_key* key, std::string* why) {
  if (!jwk.is_object()) {
    *why = "not an object";
    return jwk_outcome::failed;
  }
  auto kty = jwk.find("kty");
  if (kty == jwk.end() || !kty->is_string()) {
    *why = "missing or non-string \"kty\"";
    return jwk_outcome::failed;
  }
  for (const char* name : {"kid", "alg", "use", "crv"}) {
    auto it = jwk.find(name);
    if (it != jwk.end() && !it->is_string()) {
      *why = std::string("non-string \"") + name + "\"";
      return jwk_outcome::failed;
    }
  }
  key->kid = jwk.value("kid", "");
  key->alg = jwk.value("alg", "");
  std::string use = jwk.value("use", "sig");
  if (use != "sig") {
    *why = "\"use\" is \"" + use + "\", not \"sig\"";
    return jwk_outcome::skipped;
  }
  if (auto ops = jwk.find("key_ops"); ops != jwk.end()) {
    if (!ops->is_array()) {
      *why = "non-array \"key_ops\"";
      return jwk_outcome::failed;
    }
    bool verify = false;
    for (const auto& op : *ops) verify = verify || (op.is_string() && op == "verify");
    if (!verify) {
      *why = "\"key_ops\" lacks \"verify\"";
      return jwk_outcome::skipped;
    }
  }

  const std::string& type = kty->get_ref<const std::string&>();
  std::string crv = jwk.value("crv", "");
  if (type == "RSA") {
    key->type = jwk_type::rsa;
  } else if (type == "EC") {
    key->type = jwk_type::ec;
    if (crv != "P-256" && crv != "P-384" && crv != "P-521") {
      *why = "EC curve \"" + crv + "\" is not supported";
      return jwk_outcome::skipped;
    }
  } else if (type == "OKP") {
    key->type = jwk_type::okp;
    if (crv != "Ed25519") {
      *why = "OKP curve \"" + crv + "\" is not supported";
      return jwk_outcome::skipped;
    }
  } else if (type == "oct") {
    key->type = jwk_type::oct;
  } else {
    *why = "kty \"" + type + "\" is not supported";
    return jwk_outcome::skipped;
  }
  key->curve = type == "EC" || type == "OKP" ? crv : "";

  if (!key->alg.empty()) {
    const alg_spec* spec = find_alg(key->alg);
    if (spec == nullptr) {  // e.g. RSA-OAEP or a JWS alg we do not implement
      *why = "alg \"" + key->alg + "\" is not supported";
      return jwk_outcome::skipped;
    }
    if (type_for(spec->family) != key->type ||
        (!spec->curve.empty() && spec->curve != key->curve)) {
      *why = "alg \"" + key->alg + "\" does not fit kty \"" + type + "\"" +
             (key->curve.empty() ? "" : " " + key->curve);
      return jwk_outcome::failed;
    }
  }

  bool ok = false;
  switch (key->type) {
    case jwk_type::rsa:
      ok = parse_rsa(jwk, key, why);
      break;
    case jwk_type::ec:
      ok = parse_ec(jwk, key, why);
      break;
    case jwk_type::okp:
      ok = parse_okp(jwk, key, why);
      break;
    case jwk_type::oct:
      ok = parse_oct(jwk, key, why);
      if (ok) prepare_hmac(key);
      break;
  }
  return ok ? jwk_outcome::parsed : jwk_outcome::failed;
}

std::string describe_key(size_t index, const nlohmann::json& jwk) {
  std::string s = "key " + std::to_string(index);
  if (jwk.is_object()) {
    auto kid = jwk.find("kid");
    if (kid != jwk.end() && kid->is_string()) {
      s += " (kid \"" + kid->get<std::string>() + "\")";
    }
  }
  return s;
}

// ---- token verification ----

jwt_result fail(std::string code, std::string message) {
  jwt_result r;
  r.error = std::move(code);
  r.message = std::move(message);
  return r;
}

double seconds_since_epoch(std::chrono::system_clock::time_point t) {
  return std::chrono::duration<double>(t.time_since_epoch()).count();
}

// Reads a NumericDate claim. Returns false when present but not a finite number.
bool numeric_date(const nlohmann::json& claims, const char* name, std::optional<double>* out) {
  auto it = claims.find(name);
  if (it == claims.end()) return true;
  if (!it->is_number()) return false;
  double v = it->get<double>();
  if (!std::isfinite(v)) return false;
  *out = v;
  return true;
}

// Checks exp, nbf and iat (with the rules' leeway) at now. ok when they pass.
jwt_result check_times(std::optional<double> exp, std::optional<double> nbf,
                       std::optional<double> iat, const jwt_rules& rules,
                       std::chrono::system_clock::time_point now) {
  const double t = seconds_since_epoch(now);
  const double leeway = static_cast<double>(rules.leeway.count());
  if (!exp && rules.require_exp) return fail("missing_exp", "token has no exp claim");
  if (exp && t >= *exp + leeway) return fail("expired", "token has expired");
  if (nbf && t + leeway < *nbf) return fail("not_yet_valid", "token is not valid yet (nbf)");
  if (iat && t + leeway < *iat) return fail("not_yet_valid", "token was issued in the future");
  jwt_result ok;
  ok.ok = true;
  return ok;
}

jwt_result check_claims(nlohmann::json claims, const jwt_rules& rules,
                        std::chrono::system_clock::time_point now) {
  std::optional<double> exp, nbf, iat;
  if (!numeric_date(claims, "exp", &exp) || !numeric_date(claims, "nbf", &nbf) ||
      !numeric_date(claims, "iat", &iat)) {
    return fail("malformed", "exp, nbf and iat must be numbers");
  }
  if (auto r = check_times(exp, nbf, iat, rules, now); !r.ok) return r;

  if (!rules.issuer.empty()) {
    auto iss = claims.find("iss");
    if (iss == claims.end() || !iss->is_string() || *iss != rules.issuer) {
      return fail("wrong_issuer", "issuer is not " + rules.issuer);
    }
  }
  if (!rules.audience.empty()) {
    bool match = false;
    auto aud = claims.find("aud");
    if (aud != claims.end() && aud->is_string()) {
      match = *aud == rules.audience;
    } else if (aud != claims.end() && aud->is_array()) {
      for (const auto& a : *aud) match = match || (a.is_string() && a == rules.audience);
    }
    if (!match) return fail("wrong_audience", "audience does not include " + rules.audience);
  }
  jwt_result r;
  r.ok = true;
  r.claims = std::move(claims);
  return r;
}

jwt_result verify_impl(std::string_view token, const jwks& keys, const jwt_rules& rules,
                       std::chrono::system_clock::time_point now) {
  if (token.size() > max_jwt_bytes) return fail("malformed", "token longer than 16 KiB");
  const size_t dot1 = token.find('.');
  const size_t dot2 = dot1 == token.npos ? token.npos : token.find('.', dot1 + 1);
  if (dot2 == token.npos || token.find('.', dot2 + 1) != token.npos) {
    return fail("malformed", "token is not header.payload.signature");
  }
  auto header_text = base64url_decode(token.substr(0, dot1));
  auto payload_text = base64url_decode(token.substr(dot1 + 1, dot2 - dot1 - 1));
  auto signature = base64url_decode(token.substr(dot2 + 1));
  if (!header_text || !payload_text || !signature) {
    return fail("malformed", "token part is not base64url");
  }

  const nlohmann::json header = parse_json(*header_text);
  if (!header.is_object()) return fail("malformed", "header is not a JSON object");
  auto alg_it = header.find("alg");
  if (alg_it == header.end() || !alg_it->is_string()) {
    return fail("malformed", "header has no alg");
  }
  auto kid_it = header.find("kid");
  if (kid_it != header.end() && !kid_it->is_string()) {
    return fail("malformed", "header kid is not a string");
  }
  // RFC 7515 section 4.1.11: extensions named in crit must be understood; we implement none.
  if (header.contains("crit")) return fail("malformed", "crit header parameters not supported");

  const std::string& alg_name = alg_it->get_ref<const std::string&>();
  const alg_spec* alg = find_alg(alg_name);
  if (alg == nullptr) return fail("alg_not_allowed", "alg is not allowed");

  const std::string_view signing_input = token.substr(0, dot2);
  const bool has_kid = kid_it != header.end();
  const std::string* kid = has_kid ? &kid_it->get_ref<const std::string&>() : nullptr;
  bool kid_found = false;
  bool candidate = false;
  bool verified = false;
  for (const jwt_key& key : keys.keys()) {
    if (has_kid && key.kid != *kid) continue;
    kid_found = true;
    if (!key_fits(key, *alg)) continue;
    candidate = true;
    if (verify_signature(*alg, key, signing_input, *signature)) {
      verified = true;
      break;
    }
  }
  if (has_kid && !kid_found) return fail("unknown_kid", "no key with the token's kid");
  if (!candidate) {
    return fail("alg_not_allowed", has_kid
                                       ? "the key with the token's kid cannot verify " + alg_name
                                       : "no key can verify " + alg_name);
  }
  if (!verified) return fail("bad_signature", "signature does not verify");

  nlohmann::json claims = parse_json(*payload_text);
  if (!claims.is_object()) return fail("malformed", "payload is not a JSON object");
  return check_claims(std::move(claims), rules, now);
}

int base64url_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

}  // namespace

std::string base64url_encode(std::string_view in) {
  static constexpr char alphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  out.reserve((in.size() * 4 + 2) / 3);
  uint32_t acc = 0;
  int bits = 0;
  for (unsigned char c : in) {
    acc = (acc << 8) | c;
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      out.push_back(alphabet[(acc >> bits) & 63]);
    }
  }
  if (bits > 0) out.push_back(alphabet[(acc << (6 - bits)) & 63]);
  return out;
}

std::optional<std::string> base64url_decode(std::string_view in) {
  if (in.size() % 4 == 1) return std::nullopt;
  std::string out;
  out.reserve(in.size() / 4 * 3 + 2);
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    int v = base64url_value(c);
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xff));
      acc &= (1u << bits) - 1;
    }
  }
  if (acc != 0) return std::nullopt;  // non-zero unused bits: a second encoding of the same bytes
  return out;
}

std::shared_ptr<const jwks> jwks::parse(std::string_view json, std::string* error) {
  std::string scratch;
  if (error == nullptr) error = &scratch;
  try {
    if (sodium_init() < 0) {
      *error = "libsodium failed to initialise";
      return nullptr;
    }
    if (json.size() > max_document_bytes) {
      *error = "JWKS larger than 1 MiB";
      return nullptr;
    }
    const nlohmann::json doc = parse_json(json);
    if (doc.is_discarded()) {
      *error = "JWKS is not valid JSON";
      return nullptr;
    }
    if (!doc.is_object() || !doc.contains("keys") || !doc["keys"].is_array()) {
      *error = "JWKS has no \"keys\" array";
      return nullptr;
    }
    const auto& list = doc["keys"];
    if (list.size() > max_keys) {
      *error = "JWKS has more than " + std::to_string(max_keys) + " keys";
      return nullptr;
    }
    std::shared_ptr<jwks> set(new jwks());
    for (size_t i = 0; i < list.size(); ++i) {
      jwt_key key;
      std::string why;
      switch (parse_jwk(list[i], &key, &why)) {
        case jwk_outcome::parsed:
          set->keys_.push_back(std::move(key));
          break;
        case jwk_outcome::skipped:
          set->notes_.push_back(describe_key(i, list[i]) + " skipped: " + why);
          break;
        case jwk_outcome::failed:
          *error = describe_key(i, list[i]) + ": " + why;
          return nullptr;
      }
    }
    return set;
  } catch (const std::exception& e) {
    *error = std::string("JWKS: ") + e.what();
    return nullptr;
  }
}

jwt_result verify_jwt(std::string_view token, const jwks& keys, const jwt_rules& rules,
                      std::chrono::system_clock::time_point now) {
  try {
    return verify_impl(token, keys, rules, now);
  } catch (const std::exception& e) {
    // Not expected (inputs are checked before use); kept so a bug cannot take down a worker.
    return fail("internal", e.what());
  }
}

// ---- verified_jwt_cache ---------------------------------------------------------------------

verified_jwt_cache::verified_jwt_cache(size_t capacity)
    : per_shard_(std::max<size_t>(capacity / shard_count, 1)) {}

verified_jwt_cache::~verified_jwt_cache() = default;

std::shared_ptr<const jwt_result> verified_jwt_cache::verify(
    std::string_view token, const std::shared_ptr<const jwks>& keys, const jwt_rules& rules,
    std::chrono::system_clock::time_point now) {
  const uint64_t h = std::hash<std::string_view>{}(token);
  shard& s = shards_[h % shard_count];
  {
    std::lock_guard lock(s.mu);
    auto it = s.entries.find(h);
    if (it != s.entries.end() && it->second.token == token && it->second.keys == keys) {
      const entry& e = it->second;
      // The signature and the other claims were checked once; time moves on.
      if (auto r = check_times(e.exp, e.nbf, e.iat, rules, now); !r.ok) {
        return std::make_shared<const jwt_result>(std::move(r));
      }
      hits_.fetch_add(1, std::memory_order_relaxed);
      return e.result;
    }
  }
  misses_.fetch_add(1, std::memory_order_relaxed);
  auto result = std::make_shared<const jwt_result>(verify_jwt(token, *keys, rules, now));
  if (!result->ok) return result;  // failures are not cached: a bad token costs a full check
  entry e;
  e.token.assign(token);
  e.keys = keys;
  e.result = result;
  numeric_date(result->claims, "exp", &e.exp);
  numeric_date(result->claims, "nbf", &e.nbf);
  numeric_date(result->claims, "iat", &e.iat);
  std::lock_guard lock(s.mu);
  if (s.entries.size() >= per_shard_ && !s.entries.count(h)) s.entries.erase(s.entries.begin());
  s.entries[h] = std::move(e);
  return result;
}

}  // namespace meridian::node
