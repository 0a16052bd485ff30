#include "meridian/auth/jwt.h"

#include "jws_signer.h"

#include <gtest/gtest.h>
#include <openssl/core_names.h>
#include <openssl/ec.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <sodium.h>

#include <chrono>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

namespace meridian::node {
namespace {

using namespace std::chrono_literals;
using namespace meridian::testing::jws;
using nlohmann::json;

// ---- a test-only JWS signer over freshly generated keys ----

const auto now = std::chrono::system_clock::time_point(std::chrono::seconds(1'700'000'000));
constexpr int64_t now_s = 1'700'000'000;

json good_claims() {
  return {{"iss", "https://issuer.example"},
          {"aud", "api"},
          {"sub", "alice"},
          {"iat", now_s - 10},
          {"exp", now_s + 300}};
}

jwt_rules default_rules() {
  jwt_rules r;
  r.issuer = "https://issuer.example";
  r.audience = "api";
  return r;
}

std::shared_ptr<const jwks> parse_or_die(const json& doc) {
  std::string error;
  auto set = jwks::parse(doc.dump(), &error);
  EXPECT_TRUE(set) << error;
  return set;
}

// All test keys, each under a kid naming its type.
std::shared_ptr<const jwks> all_keys() {
  return parse_or_die({{"keys",
                        {rsa_key().jwk("rsa"), ec256_key().jwk("ec256"), ec384_key().jwk("ec384"),
                         ec521_key().jwk("ec521"), ed_key().jwk("ed"), hmac_key().jwk("hmac")}}});
}

const test_key& key_for(std::string_view alg) {
  if (alg.starts_with("HS")) return hmac_key();
  if (alg.starts_with("RS") || alg.starts_with("PS")) return rsa_key();
  if (alg == "ES256") return ec256_key();
  if (alg == "ES384") return ec384_key();
  if (alg == "ES512") return ec521_key();
  return ed_key();
}

std::string kid_for(std::string_view alg) {
  if (alg.starts_with("HS")) return "hmac";
  if (alg.starts_with("RS") || alg.starts_with("PS")) return "rsa";
  if (alg == "ES256") return "ec256";
  if (alg == "ES384") return "ec384";
  if (alg == "ES512") return "ec521";
  return "ed";
}

const std::vector<std::string> all_algs = {"HS256", "HS384", "HS512", "RS256", "RS384",
                                           "RS512", "PS256", "PS384", "PS512", "ES256",
                                           "ES384", "ES512", "EdDSA"};

// Replaces part `index` (0 header, 1 payload, 2 signature) of a compact token.
std::string replace_part(const std::string& token, int index, const std::string& part) {
  size_t d1 = token.find('.');
  size_t d2 = token.find('.', d1 + 1);
  std::string parts[3] = {token.substr(0, d1), token.substr(d1 + 1, d2 - d1 - 1),
                          token.substr(d2 + 1)};
  parts[index] = part;
  return parts[0] + "." + parts[1] + "." + parts[2];
}

// ---- base64url ----

TEST(jwt, base64url_decoding_accepts_only_the_canonical_unpadded_form) {
  EXPECT_EQ(base64url_decode(""), "");
  EXPECT_EQ(base64url_decode("QQ"), "A");
  EXPECT_EQ(base64url_decode("QUI"), "AB");
  EXPECT_EQ(base64url_decode("QUJD"), "ABC");
  EXPECT_EQ(base64url_decode("-_8"), "\xfb\xff");
  EXPECT_FALSE(base64url_decode("QQ=="));  // padding
  EXPECT_FALSE(base64url_decode("Q"));     // 4n+1 characters
  EXPECT_FALSE(base64url_decode("QR"));    // non-zero unused bits
  EXPECT_FALSE(base64url_decode("+/8"));   // standard alphabet
  EXPECT_FALSE(base64url_decode("QU I"));
  EXPECT_FALSE(base64url_decode(std::string_view("QQ\0A", 4)));
}

// ---- algorithms ----

TEST(jwt, every_supported_algorithm_accepts_a_correctly_signed_token) {
  auto keys = all_keys();
  for (const auto& alg : all_algs) {
    SCOPED_TRACE(alg);
    for (bool with_kid : {true, false}) {
      json header = {{"alg", alg}, {"typ", "JWT"}};
      if (with_kid) header["kid"] = kid_for(alg);
      auto r =
          verify_jwt(make_token(header, good_claims(), key_for(alg)), *keys, default_rules(), now);
      EXPECT_TRUE(r.ok) << r.error << ": " << r.message;
      EXPECT_EQ(r.claims.value("sub", ""), "alice");
    }
  }
}

TEST(jwt, a_tampered_payload_or_signature_is_a_bad_signature) {
  auto keys = all_keys();
  json other = good_claims();
  other["sub"] = "mallory";
  for (const auto& alg : all_algs) {
    SCOPED_TRACE(alg);
    json header = {{"alg", alg}, {"kid", kid_for(alg)}};
    std::string token = make_token(header, good_claims(), key_for(alg));

    auto r = verify_jwt(replace_part(token, 1, b64url(other.dump())), *keys, default_rules(), now);
    EXPECT_EQ(r.error, "bad_signature");
    EXPECT_FALSE(r.ok);
    EXPECT_TRUE(r.claims.is_null());  // claims of an unverified token are never handed out

    std::string sig = *base64url_decode(token.substr(token.rfind('.') + 1));
    sig[sig.size() / 2] ^= 0x01;
    r = verify_jwt(replace_part(token, 2, b64url(sig)), *keys, default_rules(), now);
    EXPECT_EQ(r.error, "bad_signature");

    r = verify_jwt(replace_part(token, 2, b64url(sig.substr(1))), *keys, default_rules(), now);
    EXPECT_EQ(r.error, "bad_signature");  // wrong length

    r = verify_jwt(replace_part(token, 2, ""), *keys, default_rules(), now);
    EXPECT_EQ(r.error, "bad_signature");
  }
}

TEST(jwt, a_token_signed_by_another_key_of_the_same_type_is_a_bad_signature) {
  test_key other_ec = make_ec("P-256");
  test_key other_ed = make_ed25519();
  test_key other_hmac = make_oct();
  auto keys = all_keys();
  for (auto [alg, key] : std::vector<std::pair<std::string, const test_key*>>{
           {"ES256", &other_ec}, {"EdDSA", &other_ed}, {"HS256", &other_hmac}}) {
    SCOPED_TRACE(alg);
    EXPECT_EQ(verify_jwt(make_token({{"alg", alg}, {"kid", kid_for(alg)}}, good_claims(), *key),
                         *keys, default_rules(), now)
                  .error,
              "bad_signature");
    EXPECT_EQ(
        verify_jwt(make_token({{"alg", alg}}, good_claims(), *key), *keys, default_rules(), now)
            .error,
        "bad_signature");
  }
}

TEST(jwt, kid_selects_the_key_among_several_of_one_type) {
  test_key second = make_ec("P-256");
  auto keys = parse_or_die({{"keys", {ec256_key().jwk("one"), second.jwk("two")}}});
  std::string token = make_token({{"alg", "ES256"}, {"kid", "two"}}, good_claims(), second);
  EXPECT_TRUE(verify_jwt(token, *keys, default_rules(), now).ok);
  EXPECT_EQ(verify_jwt(make_token({{"alg", "ES256"}, {"kid", "one"}}, good_claims(), second), *keys,
                       default_rules(), now)
                .error,
            "bad_signature");
  // Without a kid every fitting key is tried.
  EXPECT_TRUE(
      verify_jwt(make_token({{"alg", "ES256"}}, good_claims(), second), *keys, default_rules(), now)
          .ok);
}

TEST(jwt, an_unknown_kid_is_refused_even_when_another_key_would_verify) {
  auto keys = all_keys();
  std::string token = make_token({{"alg", "EdDSA"}, {"kid", "gone"}}, good_claims(), ed_key());
  auto r = verify_jwt(token, *keys, default_rules(), now);
  EXPECT_FALSE(r.ok);
  EXPECT_EQ(r.error, "unknown_kid");
}

// ---- alg none and algorithm confusion ----

TEST(jwt, alg_none_is_refused_in_any_spelling_and_with_any_signature) {
  auto keys = all_keys();
  std::string hs = make_token({{"alg", "HS256"}}, good_claims(), hmac_key());
  for (std::string alg : {"none", "None", "NONE", "nOnE"}) {
    SCOPED_TRACE(alg);
    std::string input = b64url(json{{"alg", alg}}.dump()) + "." + b64url(good_claims().dump());
    EXPECT_EQ(verify_jwt(input + ".", *keys, default_rules(), now).error, "alg_not_allowed");
    EXPECT_EQ(verify_jwt(replace_part(hs, 0, b64url(json{{"alg", alg}}.dump())), *keys,
                         default_rules(), now)
                  .error,
              "alg_not_allowed");
    json with_kid = {{"alg", alg}, {"kid", "hmac"}};
    EXPECT_EQ(verify_jwt(b64url(with_kid.dump()) + "." + b64url(good_claims().dump()) + ".", *keys,
                         default_rules(), now)
                  .error,
              "alg_not_allowed");
  }
}

TEST(jwt, unsupported_algorithms_are_refused) {
  auto keys = all_keys();
  for (std::string alg : {"HS1", "RS1", "ES256K", "Ed25519", "hs256", ""}) {
    SCOPED_TRACE(alg);
    std::string token = make_token({{"alg", alg}}, good_claims(), hmac_key(), "HS256");
    EXPECT_EQ(verify_jwt(token, *keys, default_rules(), now).error, "alg_not_allowed");
  }
}

TEST(jwt, hs256_signed_with_the_rsa_public_key_bytes_is_refused) {
  // The classic confusion attack: the attacker knows the RSA public key and uses its bytes as an
  // HMAC secret. The key set holds the RSA key with and without an "alg" member.
  EVP_PKEY* pub = rsa_key().pkey.get();
  BIO* bio = BIO_new(BIO_s_mem());
  ASSERT_EQ(PEM_write_bio_PUBKEY(bio, pub), 1);
  char* pem_data = nullptr;
  long pem_len = BIO_get_mem_data(bio, &pem_data);
  std::string pem(pem_data, static_cast<size_t>(pem_len));
  BIO_free(bio);
  unsigned char* der_data = nullptr;
  int der_len = i2d_PUBKEY(pub, &der_data);
  ASSERT_GT(der_len, 0);
  std::string der(reinterpret_cast<char*>(der_data), static_cast<size_t>(der_len));
  OPENSSL_free(der_data);
  std::string n = bn_param(pub, OSSL_PKEY_PARAM_RSA_N);
  std::string jwk_text = rsa_key().jwk("rsa").dump();

  for (const json& jwk : {rsa_key().jwk("rsa"), rsa_key().jwk("rsa", "RS256")}) {
    auto keys = parse_or_die({{"keys", {jwk}}});
    for (const std::string& secret : {pem, der, n, jwk_text}) {
      test_key fake;
      fake.kty = "oct";
      fake.secret = secret;
      for (bool with_kid : {true, false}) {
        json header = {{"alg", "HS256"}};
        if (with_kid) header["kid"] = "rsa";
        auto r = verify_jwt(make_token(header, good_claims(), fake), *keys, default_rules(), now);
        EXPECT_FALSE(r.ok);
        EXPECT_EQ(r.error, "alg_not_allowed");
      }
    }
  }
}

TEST(jwt, a_token_alg_must_fit_the_key_type_curve_and_declared_alg) {
  auto keys = parse_or_die({{"keys",
                             {rsa_key().jwk("rsa", "RS256"), ec256_key().jwk("ec256"),
                              hmac_key().jwk("hmac"), ed_key().jwk("ed")}}});
  auto error_of = [&](const std::string& alg, const std::string& kid, const test_key& key) {
    return verify_jwt(make_token({{"alg", alg}, {"kid", kid}}, good_claims(), key), *keys,
                      default_rules(), now)
        .error;
  };
  EXPECT_EQ(error_of("PS256", "rsa", rsa_key()), "alg_not_allowed");  // key declares RS256
  EXPECT_EQ(error_of("RS384", "rsa", rsa_key()), "alg_not_allowed");
  EXPECT_EQ(error_of("ES384", "ec256", ec384_key()), "alg_not_allowed");  // curve mismatch
  EXPECT_EQ(error_of("ES256", "hmac", ec256_key()), "alg_not_allowed");
  EXPECT_EQ(error_of("HS256", "ed", hmac_key()), "alg_not_allowed");
  EXPECT_EQ(error_of("EdDSA", "ec256", ed_key()), "alg_not_allowed");
  EXPECT_EQ(error_of("RS256", "rsa", rsa_key()), "");
}

TEST(jwt, an_hmac_secret_shorter_than_the_hash_cannot_verify_that_alg) {
  test_key short_key = make_oct(32);
  auto keys = parse_or_die({{"keys", {short_key.jwk("k")}}});
  EXPECT_TRUE(verify_jwt(make_token({{"alg", "HS256"}}, good_claims(), short_key), *keys,
                         default_rules(), now)
                  .ok);
  EXPECT_EQ(verify_jwt(make_token({{"alg", "HS512"}}, good_claims(), short_key), *keys,
                       default_rules(), now)
                .error,
            "alg_not_allowed");
}

TEST(jwt, hmac_secrets_of_every_length_match_openssl_hmac) {
  // The verifier keys HMAC from precomputed pads; secrets up to and beyond the digests' block
  // sizes (64 and 128 bytes: longer ones are hashed first) must give OpenSSL HMAC()'s answer,
  // which make_token signs with.
  for (size_t bytes : {64u, 65u, 127u, 128u, 129u, 300u}) {
    test_key key = make_oct(bytes);
    auto keys = parse_or_die({{"keys", {key.jwk("k")}}});
    for (const char* alg : {"HS256", "HS384", "HS512"}) {
      SCOPED_TRACE(std::string(alg) + " with a " + std::to_string(bytes) + "-byte secret");
      std::string token = make_token({{"alg", alg}}, good_claims(), key);
      EXPECT_TRUE(verify_jwt(token, *keys, default_rules(), now).ok);
      std::string other = token;
      char& c = other[other.size() - 10];  // inside the signature, not its last (padding) bits
      c = c == 'A' ? 'B' : 'A';
      EXPECT_EQ(verify_jwt(other, *keys, default_rules(), now).error, "bad_signature");
    }
  }
}

TEST(jwt, a_key_embedded_in_the_token_header_is_ignored) {
  auto keys = all_keys();
  test_key attacker = make_ed25519();
  json header = {{"alg", "EdDSA"}, {"jwk", attacker.jwk("")}, {"jku", "https://evil.example/"}};
  auto r = verify_jwt(make_token(header, good_claims(), attacker), *keys, default_rules(), now);
  EXPECT_EQ(r.error, "bad_signature");
}

// ---- claims ----

TEST(jwt, exp_is_enforced_with_leeway) {
  auto keys = all_keys();
  auto check = [&](int64_t exp, std::chrono::seconds leeway) {
    json claims = good_claims();
    claims["exp"] = exp;
    jwt_rules rules = default_rules();
    rules.leeway = leeway;
    return verify_jwt(make_token({{"alg", "HS256"}}, claims, hmac_key()), *keys, rules, now).error;
  };
  EXPECT_EQ(check(now_s - 61, 60s), "expired");
  EXPECT_EQ(check(now_s - 60, 60s), "expired");  // exp is exclusive
  EXPECT_EQ(check(now_s - 59, 60s), "");
  EXPECT_EQ(check(now_s - 30, 0s), "expired");
  EXPECT_EQ(check(now_s, 0s), "expired");
  EXPECT_EQ(check(now_s + 1, 0s), "");
}

TEST(jwt, nbf_and_iat_in_the_future_are_not_yet_valid_beyond_leeway) {
  auto keys = all_keys();
  auto check = [&](const char* claim, int64_t value, std::chrono::seconds leeway) {
    json claims = good_claims();
    claims[claim] = value;
    jwt_rules rules = default_rules();
    rules.leeway = leeway;
    return verify_jwt(make_token({{"alg", "HS256"}}, claims, hmac_key()), *keys, rules, now).error;
  };
  EXPECT_EQ(check("nbf", now_s + 61, 60s), "not_yet_valid");
  EXPECT_EQ(check("nbf", now_s + 60, 60s), "");
  EXPECT_EQ(check("nbf", now_s + 1, 0s), "not_yet_valid");
  EXPECT_EQ(check("nbf", now_s, 0s), "");
  EXPECT_EQ(check("iat", now_s + 120, 60s), "not_yet_valid");
  EXPECT_EQ(check("iat", now_s + 30, 60s), "");
  EXPECT_EQ(check("iat", now_s - 86400, 60s), "");
}

TEST(jwt, fractional_numeric_dates_are_accepted_and_mistyped_ones_are_malformed) {
  auto keys = all_keys();
  auto with = [&](const char* claim, const json& value) {
    json claims = good_claims();
    claims[claim] = value;
    return verify_jwt(make_token({{"alg", "HS256"}}, claims, hmac_key()), *keys, default_rules(),
                      now)
        .error;
  };
  EXPECT_EQ(with("exp", static_cast<double>(now_s) + 0.5), "");
  EXPECT_EQ(with("exp", std::to_string(now_s + 300)), "malformed");
  EXPECT_EQ(with("exp", true), "malformed");
  EXPECT_EQ(with("nbf", json::array()), "malformed");
  EXPECT_EQ(with("iat", nullptr), "malformed");
}

TEST(jwt, a_missing_exp_is_refused_only_when_required) {
  auto keys = all_keys();
  json claims = good_claims();
  claims.erase("exp");
  std::string token = make_token({{"alg", "HS256"}}, claims, hmac_key());
  jwt_rules rules = default_rules();
  EXPECT_TRUE(verify_jwt(token, *keys, rules, now).ok);
  rules.require_exp = true;
  EXPECT_EQ(verify_jwt(token, *keys, rules, now).error, "missing_exp");
}

TEST(jwt, issuer_must_match_when_configured) {
  auto keys = all_keys();
  auto check = [&](const json& iss, const std::string& expected) {
    json claims = good_claims();
    if (iss.is_null()) {
      claims.erase("iss");
    } else {
      claims["iss"] = iss;
    }
    jwt_rules rules = default_rules();
    rules.issuer = expected;
    return verify_jwt(make_token({{"alg", "HS256"}}, claims, hmac_key()), *keys, rules, now).error;
  };
  EXPECT_EQ(check("https://issuer.example", "https://issuer.example"), "");
  EXPECT_EQ(check("https://evil.example", "https://issuer.example"), "wrong_issuer");
  EXPECT_EQ(check("https://issuer.example/", "https://issuer.example"), "wrong_issuer");
  EXPECT_EQ(check(nullptr, "https://issuer.example"), "wrong_issuer");
  EXPECT_EQ(check(json::array({"https://issuer.example"}), "https://issuer.example"),
            "wrong_issuer");
  EXPECT_EQ(check("https://anyone.example", ""), "");
  EXPECT_EQ(check(nullptr, ""), "");
}

TEST(jwt, audience_must_equal_the_string_or_be_in_the_array_when_configured) {
  auto keys = all_keys();
  auto check = [&](const json& aud, const std::string& expected) {
    json claims = good_claims();
    if (aud.is_null()) {
      claims.erase("aud");
    } else {
      claims["aud"] = aud;
    }
    jwt_rules rules = default_rules();
    rules.audience = expected;
    return verify_jwt(make_token({{"alg", "HS256"}}, claims, hmac_key()), *keys, rules, now).error;
  };
  EXPECT_EQ(check("api", "api"), "");
  EXPECT_EQ(check("web", "api"), "wrong_audience");
  EXPECT_EQ(check("ap", "api"), "wrong_audience");
  EXPECT_EQ(check(json::array({"web", "api"}), "api"), "");
  EXPECT_EQ(check(json::array({"web", "apis"}), "api"), "wrong_audience");
  EXPECT_EQ(check(json::array(), "api"), "wrong_audience");
  EXPECT_EQ(check(json::array({1, json::array({"api"})}), "api"), "wrong_audience");
  EXPECT_EQ(check(nullptr, "api"), "wrong_audience");
  EXPECT_EQ(check(42, "api"), "wrong_audience");
  EXPECT_EQ(check("web", ""), "");
}

// ---- malformed tokens ----

TEST(jwt, malformed_tokens_are_refused_as_malformed_without_throwing) {
  auto keys = all_keys();
  std::string good = make_token({{"alg", "HS256"}}, good_claims(), hmac_key());
  std::string payload = b64url(good_claims().dump());
  auto signed_with_header = [&](const std::string& header_text) {
    std::string input = b64url(header_text) + "." + payload;
    return input + "." + b64url(sign("HS256", hmac_key(), input));
  };
  auto signed_with_payload = [&](const std::string& payload_text) {
    std::string input = b64url(R"({"alg":"HS256"})") + "." + b64url(payload_text);
    return input + "." + b64url(sign("HS256", hmac_key(), input));
  };
  std::string deep(100, '[');
  deep += std::string(100, ']');
  const std::vector<std::string> bad = {
      "",
      ".",
      "..",
      "abc",
      good.substr(0, good.rfind('.')),  // two parts
      good + ".",                       // four parts
      good + ".abc",
      "a.b.c",
      replace_part(good, 0, "eyJ+bGciOiJIUzI1NiJ9"),  // '+' is not base64url
      replace_part(good, 1, payload + "="),
      replace_part(good, 2, good.substr(good.rfind('.') + 1) + "=="),
      replace_part(good, 0, "!!!!"),
      signed_with_header("not json"),
      signed_with_header("[\"HS256\"]"),
      signed_with_header("\"HS256\""),
      signed_with_header("{}"),
      signed_with_header(R"({"alg":256})"),
      signed_with_header(R"({"alg":null})"),
      signed_with_header(R"({"alg":"HS256","kid":7})"),
      signed_with_header(R"({"alg":"HS256","crit":["exp"],"exp":1})"),
      signed_with_header(R"({"alg":"HS256","x":)" + deep + "}"),
      signed_with_header("{\"alg\":\"HS256\",\"x\":\"\xff\xfe\"}"),  // invalid UTF-8
      signed_with_header(R"({"alg":"HS256"} trailing)"),
      signed_with_payload("not json"),
      signed_with_payload("[1,2,3]"),
      signed_with_payload("\"alice\""),
      signed_with_payload(""),
      signed_with_payload(R"({"x":)" + deep + "}"),
      std::string(max_jwt_bytes + 1, 'a'),
  };
  for (size_t i = 0; i < bad.size(); ++i) {
    SCOPED_TRACE(i);
    jwt_result r;
    EXPECT_NO_THROW(r = verify_jwt(bad[i], *keys, default_rules(), now));
    EXPECT_FALSE(r.ok);
    EXPECT_EQ(r.error, "malformed") << r.message;
    EXPECT_FALSE(r.message.empty());
  }
}

TEST(jwt, an_oversized_but_otherwise_valid_token_is_refused) {
  auto keys = all_keys();
  json claims = good_claims();
  claims["pad"] = std::string(max_jwt_bytes, 'x');
  auto r =
      verify_jwt(make_token({{"alg", "HS256"}}, claims, hmac_key()), *keys, default_rules(), now);
  EXPECT_EQ(r.error, "malformed");
}

TEST(jwt, no_single_character_change_to_a_token_verifies) {
  auto keys = all_keys();
  std::mt19937 rng(7);  // fixed seed: the same mutations every run
  const std::string chars = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.=+/ ";
  for (const char* alg : {"HS256", "EdDSA", "ES256"}) {
    SCOPED_TRACE(alg);
    std::string token = make_token({{"alg", alg}}, good_claims(), key_for(alg));
    ASSERT_TRUE(verify_jwt(token, *keys, default_rules(), now).ok);
    for (int i = 0; i < 500; ++i) {
      std::string mutated = token;
      size_t pos = rng() % mutated.size();
      char c = chars[rng() % chars.size()];
      if (mutated[pos] == c) continue;
      mutated[pos] = c;
      jwt_result r;
      EXPECT_NO_THROW(r = verify_jwt(mutated, *keys, default_rules(), now));
      EXPECT_FALSE(r.ok) << mutated;
    }
  }
}

// ---- JWKS parsing ----

TEST(jwt, jwks_parse_keeps_every_supported_key_type) {
  auto keys = all_keys();
  ASSERT_TRUE(keys);
  EXPECT_EQ(keys->size(), 6u);
  EXPECT_TRUE(keys->notes().empty());
  EXPECT_EQ(keys->keys()[0].kid, "rsa");
  EXPECT_EQ(keys->keys()[0].type, jwk_type::rsa);
  EXPECT_EQ(keys->keys()[2].curve, "P-384");
  EXPECT_EQ(keys->keys()[3].curve, "P-521");
  EXPECT_EQ(keys->keys()[4].type, jwk_type::okp);
}

TEST(jwt, jwks_parse_skips_keys_it_cannot_use_with_a_note) {
  json unknown_kty = {{"kty", "XYZ"}, {"kid", "x"}};
  json p521 = {{"kty", "EC"}, {"crv", "secp256k1"}, {"x", "AA"}, {"y", "AA"}};
  json x25519 = {{"kty", "OKP"}, {"crv", "X25519"}, {"x", b64url(std::string(32, 'a'))}};
  json enc = rsa_key().jwk("enc");
  enc["use"] = "enc";
  json wrap = rsa_key().jwk("wrap");
  wrap["key_ops"] = {"wrapKey"};
  json oaep = rsa_key().jwk("oaep", "RSA-OAEP");
  json verify_ops = ed_key().jwk("ops");
  verify_ops["key_ops"] = {"verify"};
  std::string error;
  auto keys = jwks::parse(
      json{{"keys", {unknown_kty, p521, x25519, enc, wrap, oaep, ed_key().jwk("ed"), verify_ops}}}
          .dump(),
      &error);
  ASSERT_TRUE(keys) << error;
  EXPECT_EQ(keys->size(), 2u);
  ASSERT_EQ(keys->notes().size(), 6u);
  EXPECT_NE(keys->notes()[0].find("XYZ"), std::string::npos) << keys->notes()[0];
}

TEST(jwt, jwks_parse_reports_a_malformed_key_set_or_key) {
  auto error_of = [](const std::string& text) {
    std::string error;
    auto keys = jwks::parse(text, &error);
    EXPECT_FALSE(keys) << text;
    EXPECT_FALSE(error.empty()) << text;
    return error;
  };
  auto key_error = [&](const json& jwk) { return error_of(json{{"keys", {jwk}}}.dump()); };
  auto without = [](json j, const char* member) {
    j.erase(member);
    return j;
  };
  auto with = [](json j, const char* member, const json& value) {
    j[member] = value;
    return j;
  };

  error_of("");
  error_of("not json");
  error_of("{}");
  error_of(R"({"keys": {}})");
  error_of("[]");
  error_of(R"({"keys": [1]})");
  error_of(R"({"keys": [{}]})");
  error_of(R"({"keys": [{"kty": 1}]})");
  error_of(std::string(200, '[') + std::string(200, ']'));

  json rsa = rsa_key().jwk("rsa");
  EXPECT_NE(key_error(without(rsa, "n")).find("\"n\""), std::string::npos);
  key_error(without(rsa, "e"));
  key_error(with(rsa, "n", rsa["n"].get<std::string>() + "="));
  key_error(with(rsa, "n", "AQAB"));  // far too short
  key_error(with(rsa, "kid", 5));
  key_error(with(rsa, "alg", "ES256"));  // alg does not fit kty
  test_key weak = make_rsa(1024);
  EXPECT_NE(key_error(weak.jwk("weak")).find("1024"), std::string::npos);

  json ec = ec256_key().jwk("ec");
  key_error(without(ec, "y"));
  key_error(with(ec, "x", b64url(std::string(31, 'a'))));
  std::string y = *base64url_decode(ec["y"].get<std::string>());
  y.back() ^= 1;
  EXPECT_NE(key_error(with(ec, "y", b64url(y))).find("not on"), std::string::npos);
  key_error(with(ec, "crv", "P-384"));  // 32-byte coordinates on P-384
  key_error(with(ec, "alg", "ES384"));

  json ed = ed_key().jwk("ed");
  key_error(with(ed, "x", b64url(std::string(31, 'a'))));
  key_error(with(ed, "x", b64url(std::string(32, '\0'))));  // small-order point
  key_error(with(ed, "x", "!!"));

  key_error(json{{"kty", "oct"}});
  key_error(json{{"kty", "oct"}, {"k", ""}});
  key_error(json{{"kty", "oct"}, {"k", b64url("short secret")}});
  key_error(with(hmac_key().jwk("h"), "key_ops", "verify"));
}

TEST(jwt, jwks_parse_caps_the_number_of_keys) {
  json list = json::array();
  for (size_t i = 0; i <= jwks::max_keys; ++i) list.push_back({{"kty", "XYZ"}});
  std::string error;
  EXPECT_FALSE(jwks::parse(json{{"keys", list}}.dump(), &error));
  EXPECT_NE(error.find("more than"), std::string::npos);
}

TEST(jwt, an_empty_key_set_parses_and_verifies_nothing) {
  auto keys = parse_or_die({{"keys", json::array()}});
  EXPECT_EQ(keys->size(), 0u);
  EXPECT_EQ(verify_jwt(make_token({{"alg", "HS256"}}, good_claims(), hmac_key()), *keys,
                       default_rules(), now)
                .error,
            "alg_not_allowed");
  EXPECT_EQ(verify_jwt(make_token({{"alg", "HS256"}, {"kid", "a"}}, good_claims(), hmac_key()),
                       *keys, default_rules(), now)
                .error,
            "unknown_kid");
}

TEST(jwt_cache, a_token_verified_once_is_served_from_the_cache_until_it_expires) {
  auto keys = all_keys();
  verified_jwt_cache cache;
  auto token = make_token({{"alg", "EdDSA"}, {"kid", "ed"}}, good_claims(), ed_key());
  ASSERT_TRUE(cache.verify(token, keys, default_rules(), now)->ok);
  auto again = cache.verify(token, keys, default_rules(), now + 10s);
  ASSERT_TRUE(again->ok);
  EXPECT_EQ(again->claims["sub"], "alice");
  EXPECT_EQ(cache.hits(), 1u);
  EXPECT_EQ(cache.misses(), 1u);
  // Time claims are checked on every hit: past exp + leeway the cached token is refused.
  auto late = cache.verify(token, keys, default_rules(), now + 300s + 61s);
  EXPECT_FALSE(late->ok);
  EXPECT_EQ(late->error, "expired");
}

TEST(jwt_cache, a_new_key_set_verifies_again_and_failures_are_not_cached) {
  auto keys = all_keys();
  verified_jwt_cache cache;
  auto token = make_token({{"alg", "HS256"}, {"kid", "hmac"}}, good_claims(), hmac_key());
  ASSERT_TRUE(cache.verify(token, keys, default_rules(), now)->ok);
  // The issuer rotated its keys and dropped the HMAC one: the cached success does not count.
  auto rotated = parse_or_die({{"keys", {ed_key().jwk("ed")}}});
  EXPECT_FALSE(cache.verify(token, rotated, default_rules(), now)->ok);
  EXPECT_FALSE(cache.verify(token, rotated, default_rules(), now)->ok);
  EXPECT_EQ(cache.hits(), 0u);
  EXPECT_EQ(cache.misses(), 3u);
  // A forged token that only shares a prefix with a cached one is checked in full.
  auto forged = replace_part(token, 2, b64url("not the signature"));
  EXPECT_FALSE(cache.verify(forged, keys, default_rules(), now)->ok);
}

}  // namespace
}  // namespace meridian::node
