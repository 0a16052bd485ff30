#pragma once
// A test-only JWS signer over freshly generated keys (RSA, EC P-256/P-384/P-521, Ed25519, HMAC),
// for the unit tests of the verifier and the gateway's end-to-end auth tests. Independent of the
// code under test: its own base64url, OpenSSL and libsodium directly.
#include <gtest/gtest.h>
#include <openssl/bio.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <sodium.h>

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

namespace meridian::testing::jws {

using nlohmann::json;

// base64url without padding (RFC 7515), written here rather than taken from the code under test.
inline std::string b64url(std::string_view in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v =
        (uint32_t(uint8_t(in[i])) << 16) | (uint32_t(uint8_t(in[i + 1])) << 8) | uint8_t(in[i + 2]);
    for (int shift = 18; shift >= 0; shift -= 6) out += t[(v >> shift) & 63];
  }
  if (i + 1 == in.size()) {
    uint32_t v = uint32_t(uint8_t(in[i])) << 16;
    out += t[(v >> 18) & 63];
    out += t[(v >> 12) & 63];
  } else if (i + 2 == in.size()) {
    uint32_t v = (uint32_t(uint8_t(in[i])) << 16) | (uint32_t(uint8_t(in[i + 1])) << 8);
    out += t[(v >> 18) & 63];
    out += t[(v >> 12) & 63];
    out += t[(v >> 6) & 63];
  }
  return out;
}

struct pkey_free {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
using pkey_ptr = std::unique_ptr<EVP_PKEY, pkey_free>;

inline std::string bn_param(EVP_PKEY* key, const char* name, int pad_to = 0) {
  BIGNUM* bn = nullptr;
  EXPECT_EQ(EVP_PKEY_get_bn_param(key, name, &bn), 1) << name;
  int len = pad_to > 0 ? pad_to : BN_num_bytes(bn);
  std::string out(static_cast<size_t>(len), '\0');
  BN_bn2binpad(bn, reinterpret_cast<unsigned char*>(out.data()), len);
  BN_free(bn);
  return out;
}

// A private key able to sign, with its public JWK.
struct test_key {
  std::string kty;        // RSA, EC, OKP, oct
  pkey_ptr pkey;          // RSA and EC
  std::string secret;     // oct secret, or Ed25519 secret key (64 bytes)
  std::string ed_public;  // Ed25519 public key
  int coord = 0;          // EC coordinate length
  std::string crv;

  json jwk(const std::string& kid, const std::string& alg = "") const {
    json j = {{"kty", kty}};
    if (!kid.empty()) j["kid"] = kid;
    if (!alg.empty()) j["alg"] = alg;
    if (kty == "RSA") {
      j["n"] = b64url(bn_param(pkey.get(), OSSL_PKEY_PARAM_RSA_N));
      j["e"] = b64url(bn_param(pkey.get(), OSSL_PKEY_PARAM_RSA_E));
    } else if (kty == "EC") {
      j["crv"] = crv;
      j["x"] = b64url(bn_param(pkey.get(), OSSL_PKEY_PARAM_EC_PUB_X, coord));
      j["y"] = b64url(bn_param(pkey.get(), OSSL_PKEY_PARAM_EC_PUB_Y, coord));
    } else if (kty == "OKP") {
      j["crv"] = "Ed25519";
      j["x"] = b64url(ed_public);
    } else {
      j["k"] = b64url(secret);
    }
    return j;
  }
};

inline test_key make_rsa(int bits = 2048) {
  test_key k;
  k.kty = "RSA";
  k.pkey.reset(EVP_RSA_gen(static_cast<unsigned>(bits)));
  EXPECT_TRUE(k.pkey);
  return k;
}

inline test_key make_ec(const std::string& crv) {
  test_key k;
  k.kty = "EC";
  k.crv = crv;
  k.coord = crv == "P-256" ? 32 : crv == "P-384" ? 48 : 66;
  k.pkey.reset(EVP_EC_gen(crv == "P-256"   ? "prime256v1"
                          : crv == "P-384" ? "secp384r1"
                                           : "secp521r1"));
  EXPECT_TRUE(k.pkey);
  return k;
}

inline test_key make_ed25519() {
  EXPECT_GE(sodium_init(), 0);
  test_key k;
  k.kty = "OKP";
  k.ed_public.resize(crypto_sign_PUBLICKEYBYTES);
  k.secret.resize(crypto_sign_SECRETKEYBYTES);
  crypto_sign_keypair(reinterpret_cast<unsigned char*>(k.ed_public.data()),
                      reinterpret_cast<unsigned char*>(k.secret.data()));
  return k;
}

inline test_key make_oct(size_t bytes = 64) {
  test_key k;
  k.kty = "oct";
  k.secret.resize(bytes);
  randombytes_buf(k.secret.data(), bytes);
  return k;
}

// Keys are generated once per test process (RSA generation is the slow part).
inline const test_key& rsa_key() {
  static const test_key k = make_rsa();
  return k;
}
inline const test_key& ec256_key() {
  static const test_key k = make_ec("P-256");
  return k;
}
inline const test_key& ec384_key() {
  static const test_key k = make_ec("P-384");
  return k;
}
inline const test_key& ec521_key() {
  static const test_key k = make_ec("P-521");
  return k;
}
inline const test_key& ed_key() {
  static const test_key k = make_ed25519();
  return k;
}
inline const test_key& hmac_key() {
  static const test_key k = make_oct();
  return k;
}

inline const EVP_MD* md_for(std::string_view alg) {
  if (alg.ends_with("256")) return EVP_sha256();
  if (alg.ends_with("384")) return EVP_sha384();
  return EVP_sha512();
}

inline std::string hmac(std::string_view alg, std::string_view secret, std::string_view input) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(md_for(alg), secret.data(), static_cast<int>(secret.size()),
       reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac, &len);
  return std::string(reinterpret_cast<char*>(mac), len);
}

// Returns the raw JWS signature of input under alg with key.
inline std::string sign(std::string_view alg, const test_key& key, std::string_view input) {
  const auto* in = reinterpret_cast<const unsigned char*>(input.data());
  if (alg.starts_with("HS")) return hmac(alg, key.secret, input);
  if (alg == "EdDSA") {
    std::string sig(crypto_sign_BYTES, '\0');
    crypto_sign_detached(reinterpret_cast<unsigned char*>(sig.data()), nullptr, in, input.size(),
                         reinterpret_cast<const unsigned char*>(key.secret.data()));
    return sig;
  }
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_PKEY_CTX* pctx = nullptr;
  EXPECT_EQ(EVP_DigestSignInit(ctx, &pctx, md_for(alg), nullptr, key.pkey.get()), 1);
  if (alg.starts_with("PS")) {
    EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PSS_PADDING);
    EVP_PKEY_CTX_set_rsa_mgf1_md(pctx, md_for(alg));
    EVP_PKEY_CTX_set_rsa_pss_saltlen(pctx, RSA_PSS_SALTLEN_DIGEST);
  }
  size_t len = 0;
  EXPECT_EQ(EVP_DigestSign(ctx, nullptr, &len, in, input.size()), 1);
  std::string sig(len, '\0');
  EXPECT_EQ(
      EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &len, in, input.size()), 1);
  sig.resize(len);
  EVP_MD_CTX_free(ctx);
  if (!alg.starts_with("ES")) return sig;
  // DER ECDSA-Sig-Value -> JWS r || s.
  const auto* p = reinterpret_cast<const unsigned char*>(sig.data());
  ECDSA_SIG* der = d2i_ECDSA_SIG(nullptr, &p, static_cast<long>(sig.size()));
  const BIGNUM* r = nullptr;
  const BIGNUM* s = nullptr;
  ECDSA_SIG_get0(der, &r, &s);
  std::string raw(2 * static_cast<size_t>(key.coord), '\0');
  auto* out = reinterpret_cast<unsigned char*>(raw.data());
  BN_bn2binpad(r, out, key.coord);
  BN_bn2binpad(s, out + key.coord, key.coord);
  ECDSA_SIG_free(der);
  return raw;
}

inline std::string make_token(const json& header, const json& claims, const test_key& key,
                              std::string_view sign_as = "") {
  std::string input = b64url(header.dump()) + "." + b64url(claims.dump());
  std::string alg = sign_as.empty() ? header.value("alg", "") : std::string(sign_as);
  return input + "." + b64url(sign(alg, key, input));
}

// The PEM text of an RSA or EC key's public half (what an attacker of algorithm confusion uses
// as an HMAC secret).
inline std::string public_pem(const test_key& key) {
  BIO* bio = BIO_new(BIO_s_mem());
  EXPECT_EQ(PEM_write_bio_PUBKEY(bio, key.pkey.get()), 1);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  std::string pem(data, static_cast<size_t>(len));
  BIO_free(bio);
  return pem;
}

}  // namespace meridian::testing::jws
