// JWT verification cost per token (issue 7: <= 5 us for EdDSA, HS256 and RS256 with a cached
// key). The key set is parsed once, as the node does when it loads or refreshes a JWKS, so
// RS256 measures the signature check with an already-built OpenSSL key.
//
//   build/bin/jwt_bench --benchmark_min_time=0.5s
#include <benchmark/benchmark.h>
#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rsa.h>
#include <sodium.h>

#include <chrono>
#include <nlohmann/json.hpp>
#include <string>

#include "meridian/auth/jwt.h"

namespace {

using meridian::node::jwks;
using meridian::node::jwt_rules;
using nlohmann::json;

std::string b64url(std::string_view in) {
  return meridian::node::base64url_encode(in);
}

std::string bn(EVP_PKEY* key, const char* name) {
  BIGNUM* v = nullptr;
  EVP_PKEY_get_bn_param(key, name, &v);
  std::string out(static_cast<size_t>(BN_num_bytes(v)), '\0');
  BN_bn2bin(v, reinterpret_cast<unsigned char*>(out.data()));
  BN_free(v);
  return out;
}

const int64_t now_s = 1'700'000'000;

std::string signing_input(const char* alg, const char* kid) {
  json header = {{"alg", alg}, {"typ", "JWT"}, {"kid", kid}};
  json claims = {{"iss", "https://issuer.example"},
                 {"aud", "api"},
                 {"sub", "acme"},
                 {"iat", now_s},
                 {"exp", now_s + 600},
                 {"scope", "read write"}};
  return b64url(header.dump()) + "." + b64url(claims.dump());
}

struct fixture {
  std::shared_ptr<const jwks> keys;
  std::string hs256, rs256, eddsa;

  fixture() {
    if (sodium_init() < 0) std::abort();
    json doc = {{"keys", json::array()}};
    // HS256
    std::string secret(64, '\0');
    randombytes_buf(secret.data(), secret.size());
    doc["keys"].push_back({{"kty", "oct"}, {"kid", "h"}, {"alg", "HS256"}, {"k", b64url(secret)}});
    std::string in = signing_input("HS256", "h");
    unsigned char mac[32];
    unsigned int mac_len = 0;
    HMAC(EVP_sha256(), secret.data(), static_cast<int>(secret.size()),
         reinterpret_cast<const unsigned char*>(in.data()), in.size(), mac, &mac_len);
    hs256 = in + "." + b64url({reinterpret_cast<char*>(mac), mac_len});
    // RS256, 2048 bits
    EVP_PKEY* rsa = EVP_RSA_gen(2048);
    doc["keys"].push_back({{"kty", "RSA"},
                           {"kid", "r"},
                           {"alg", "RS256"},
                           {"n", b64url(bn(rsa, OSSL_PKEY_PARAM_RSA_N))},
                           {"e", b64url(bn(rsa, OSSL_PKEY_PARAM_RSA_E))}});
    in = signing_input("RS256", "r");
    EVP_MD_CTX* ctx = EVP_MD_CTX_new();
    size_t sig_len = 0;
    EVP_DigestSignInit(ctx, nullptr, EVP_sha256(), nullptr, rsa);
    EVP_DigestSign(ctx, nullptr, &sig_len, reinterpret_cast<const unsigned char*>(in.data()),
                   in.size());
    std::string sig(sig_len, '\0');
    EVP_DigestSign(ctx, reinterpret_cast<unsigned char*>(sig.data()), &sig_len,
                   reinterpret_cast<const unsigned char*>(in.data()), in.size());
    EVP_MD_CTX_free(ctx);
    EVP_PKEY_free(rsa);
    rs256 = in + "." + b64url(sig.substr(0, sig_len));
    // EdDSA (Ed25519)
    unsigned char pk[crypto_sign_PUBLICKEYBYTES], sk[crypto_sign_SECRETKEYBYTES];
    crypto_sign_keypair(pk, sk);
    doc["keys"].push_back({{"kty", "OKP"},
                           {"crv", "Ed25519"},
                           {"kid", "e"},
                           {"x", b64url({reinterpret_cast<char*>(pk), sizeof pk})}});
    in = signing_input("EdDSA", "e");
    unsigned char esig[crypto_sign_BYTES];
    crypto_sign_detached(esig, nullptr, reinterpret_cast<const unsigned char*>(in.data()),
                         in.size(), sk);
    eddsa = in + "." + b64url({reinterpret_cast<char*>(esig), sizeof esig});
    std::string error;
    keys = jwks::parse(doc.dump(), &error);
    if (!keys) std::abort();
  }
};

const fixture& fx() {
  static fixture f;
  return f;
}

void verify(benchmark::State& state, const std::string& token) {
  jwt_rules rules{.issuer = "https://issuer.example", .audience = "api"};
  auto now = std::chrono::system_clock::time_point(std::chrono::seconds(now_s));
  for (auto _ : state) {
    auto r = meridian::node::verify_jwt(token, *fx().keys, rules, now);
    if (!r.ok) state.SkipWithError(r.message.c_str());
    benchmark::DoNotOptimize(r);
  }
}

// What the node does per request: the provider's verified-token cache in front of verify_jwt
// (a client presents the same token until it expires; the first presentation pays the above).
void verify_cached(benchmark::State& state, const std::string& token) {
  jwt_rules rules{.issuer = "https://issuer.example", .audience = "api"};
  auto now = std::chrono::system_clock::time_point(std::chrono::seconds(now_s));
  meridian::node::verified_jwt_cache cache;
  for (auto _ : state) {
    auto r = cache.verify(token, fx().keys, rules, now);
    if (!r->ok) state.SkipWithError(r->message.c_str());
    benchmark::DoNotOptimize(r);
  }
}

void BM_verify_hs256(benchmark::State& s) {
  verify(s, fx().hs256);
}
void BM_verify_rs256_cached_key(benchmark::State& s) {
  verify(s, fx().rs256);
}
void BM_verify_eddsa(benchmark::State& s) {
  verify(s, fx().eddsa);
}
void BM_verify_hs256_token_cache(benchmark::State& s) {
  verify_cached(s, fx().hs256);
}
void BM_verify_rs256_token_cache(benchmark::State& s) {
  verify_cached(s, fx().rs256);
}
void BM_verify_eddsa_token_cache(benchmark::State& s) {
  verify_cached(s, fx().eddsa);
}

BENCHMARK(BM_verify_hs256);
BENCHMARK(BM_verify_rs256_cached_key);
BENCHMARK(BM_verify_eddsa);
BENCHMARK(BM_verify_hs256_token_cache);
BENCHMARK(BM_verify_rs256_token_cache);
BENCHMARK(BM_verify_eddsa_token_cache);

}  // namespace

BENCHMARK_MAIN();
