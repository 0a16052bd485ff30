// Route authentication end to end: JWT bearer tokens checked at the gateway.

#include <gtest/gtest.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <fstream>
#include <mutex>

#include <nlohmann/json.hpp>

#include "jws_signer.h"
#include "test_support.h"

namespace meridian::testing {
namespace {

std::string b64url(std::string_view in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string out;
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
    for (int s = 18; s >= 0; s -= 6) out += t[(v >> s) & 63];
  }
  if (i + 1 == in.size()) {
    uint32_t v = uint8_t(in[i]) << 16;
    out += t[(v >> 18) & 63];
    out += t[(v >> 12) & 63];
  } else if (i + 2 == in.size()) {
    uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
    out += t[(v >> 18) & 63];
    out += t[(v >> 12) & 63];
    out += t[(v >> 6) & 63];
  }
  return out;
}

// Standard base64 with padding (HTTP Basic credentials).
std::string base64_std(std::string_view in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  for (size_t i = 0; i < in.size(); i += 3) {
    uint32_t v = uint32_t(uint8_t(in[i])) << 16;
    if (i + 1 < in.size()) v |= uint32_t(uint8_t(in[i + 1])) << 8;
    if (i + 2 < in.size()) v |= uint8_t(in[i + 2]);
    out += t[(v >> 18) & 63];
    out += t[(v >> 12) & 63];
    out += i + 1 < in.size() ? t[(v >> 6) & 63] : '=';
    out += i + 2 < in.size() ? t[v & 63] : '=';
  }
  return out;
}

// Starts up answering 200 "ok" to every GET.
void serve_ok(upstream& up) {
  up.server().Get(".*", [](const httplib::Request&, httplib::Response& res) {
    res.set_content("ok", "text/plain");
  });
  up.start();
}

const std::string secret = "0123456789abcdef0123456789abcdef";  // 32 bytes: enough for HS256

std::string hs256(const nlohmann::json& claims, const std::string& key = secret,
                  const std::string& kid = "k1") {
  std::string head = b64url(R"({"alg":"HS256","typ":"JWT","kid":")" + kid + R"("})");
  std::string body = b64url(claims.dump());
  std::string input = head + "." + body;
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac, &len);
  return input + "." + b64url(std::string(reinterpret_cast<char*>(mac), len));
}

class jwt_auth : public ::testing::Test {
 protected:
  void SetUp() override {
    serve_ok(up_);
    std::ofstream(keys_.file("jwks.json"))
        << R"({"keys":[{"kty":"oct","kid":"k1","alg":"HS256","k":")" + b64url(secret) + R"("}]})";
    node_ = std::make_unique<running_node>(
        "jwt:\n  - name: main\n    issuer: https://issuer.example\n    audience: api\n"
        "    jwks_file: " +
        keys_.file("jwks.json") +
        "\n"
        "upstreams:\n  - name: u\n    targets: [" +
        up_.address() +
        "]\n"
        "routes:\n  - name: private\n    match: {path_prefix: /private}\n    upstream: u\n"
        "    auth: {methods: [jwt], jwt: main, claims_to_headers: {sub: x-consumer-id}}\n"
        "  - name: admin\n    match: {path_prefix: /admin}\n    upstream: u\n"
        "    auth: {methods: [jwt], jwt: main, scopes: [write], claims: {role: admin}}\n"
        "  - name: public\n    match: {path_prefix: /}\n    upstream: u\n");
    ASSERT_TRUE(node_->ok());
  }
  nlohmann::json good_claims() {
    auto now = std::chrono::duration_cast<std::chrono::seconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count();
    return {{"sub", "acme"},
            {"iss", "https://issuer.example"},
            {"aud", "api"},
            {"iat", now},
            {"exp", now + 300}};
  }
  temp_dir keys_;
  upstream up_;
  std::unique_ptr<running_node> node_;
};

TEST_F(jwt_auth, missing_token_gets_401_with_a_bearer_challenge) {
  auto res = node_->client().Get("/private/x");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 401);
  EXPECT_NE(res->get_header_value("WWW-Authenticate").find("Bearer"), std::string::npos);
  EXPECT_NE(res->body.find("\"error\":\"unauthorized\""), std::string::npos);
  EXPECT_EQ(up_.hits.load(), 0);
}

TEST_F(jwt_auth, valid_token_passes_with_claims_mapped_and_credentials_stripped) {
  auto res = node_->client().Get("/private/x", {{"Authorization", "Bearer " + hs256(good_claims())},
                                                {"X-Consumer-Id", "forged"}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
  auto seen = up_.last();
  EXPECT_EQ(seen.get_header_value("x-consumer-id"), "acme");
  EXPECT_EQ(seen.get_header_value_count("x-consumer-id"), 1u);
  EXPECT_FALSE(seen.has_header("Authorization"));
}

TEST(jwt_consumers, a_provider_names_the_consumer_claim_and_a_route_may_pass_credentials_on) {
  temp_dir keys;
  upstream up;
  serve_ok(up);
  std::ofstream(keys.file("jwks.json"))
      << R"({"keys":[{"kty":"oct","kid":"k1","alg":"HS256","k":")" + b64url(secret) + R"("}]})";
  running_node n(
      "jwt:\n  - {name: main, issuer: https://issuer.example, audience: api, "
      "consumer_claim: client_id, jwks_file: " +
      keys.file("jwks.json") + "}\nconsumers:\n  - {id: svc-7, groups: [batch]}\n" +
      "upstreams:\n  - name: u\n    targets: [" + up.address() +
      "]\nroutes:\n  - name: batch\n    match: {path_prefix: /batch}\n    upstream: u\n"
      "    auth: {methods: [jwt], groups: [batch], strip_credentials: false}\n");
  ASSERT_TRUE(n.ok());
  auto now = std::chrono::duration_cast<std::chrono::seconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  nlohmann::json claims = {{"sub", "someone"}, {"client_id", "svc-7"},
                           {"aud", "api"},     {"iss", "https://issuer.example"},
                           {"iat", now},       {"exp", now + 300}};
  const std::string token = hs256(claims);
  auto res = n.client().Get("/batch/run", {{"Authorization", "Bearer " + token}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200) << res->body;
  auto seen = up.last();
  EXPECT_EQ(seen.get_header_value("x-consumer-id"), "svc-7");  // from client_id, not sub
  EXPECT_EQ(seen.get_header_value("x-consumer-groups"), "batch");
  EXPECT_EQ(seen.get_header_value("Authorization"), "Bearer " + token);  // passed on
  // A token whose client_id names no consumer of the group: 403.
  claims["client_id"] = "svc-8";
  auto other = n.client().Get("/batch/run", {{"Authorization", "Bearer " + hs256(claims)}});
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 403);
}

TEST_F(jwt_auth, bad_signature_expired_wrong_audience_and_alg_none_are_refused) {
  auto claims = good_claims();
  std::vector<std::string> bad = {hs256(claims, "another-secret-another-secret-xx")};
  auto expired = claims;
  expired["exp"] = claims["iat"].get<int64_t>() - 3600;
  bad.push_back(hs256(expired));
  auto wrong_aud = claims;
  wrong_aud["aud"] = "someone-else";
  bad.push_back(hs256(wrong_aud));
  bad.push_back(b64url(R"({"alg":"none"})") + "." + b64url(claims.dump()) + ".");
  for (const auto& token : bad) {
    auto res = node_->client().Get("/private/x", {{"Authorization", "Bearer " + token}});
    ASSERT_TRUE(res);
    EXPECT_EQ(res->status, 401) << token;
    EXPECT_NE(res->body.find("invalid_token"), std::string::npos) << res->body;
  }
  EXPECT_EQ(up_.hits.load(), 0);
}

// The issue's acceptance list, through the gateway: HS256, RS256, ES256 and EdDSA tokens pass;
// expired, not yet valid, wrong audience, wrong issuer, bad signature, unknown kid, alg none,
// HS256 signed with the RSA public key, and garbage are each 401 with a JSON body.
TEST(jwt_end_to_end, every_algorithm_passes_and_every_bad_token_is_a_401_with_json) {
  namespace jws = meridian::testing::jws;
  temp_dir keys;
  upstream up;
  serve_ok(up);
  nlohmann::json set = {{"keys",
                         {jws::hmac_key().jwk("hs"), jws::rsa_key().jwk("rs"),
                          jws::ec256_key().jwk("es"), jws::ed_key().jwk("ed")}}};
  std::ofstream(keys.file("jwks.json")) << set.dump();
  running_node n(
      "jwt:\n  - {name: main, issuer: https://issuer.example, audience: api, "
      "jwks_file: " +
      keys.file("jwks.json") + "}\nupstreams:\n  - name: u\n    targets: [" + up.address() +
      "]\nroutes:\n  - name: private\n    match: {path_prefix: /private}\n"
      "    upstream: u\n    auth: {methods: [jwt]}\n");
  ASSERT_TRUE(n.ok());
  const int64_t now = std::chrono::duration_cast<std::chrono::seconds>(
                          std::chrono::system_clock::now().time_since_epoch())
                          .count();
  const nlohmann::json good = {{"iss", "https://issuer.example"},
                               {"aud", "api"},
                               {"sub", "alice"},
                               {"iat", now - 5},
                               {"nbf", now - 5},
                               {"exp", now + 300}};
  auto call = [&](const std::string& token) {
    auto res = n.client().Get("/private/x", {{"Authorization", "Bearer " + token}});
    return res ? std::make_pair(res->status, res->body) : std::make_pair(0, std::string());
  };
  const std::pair<const char*, const jws::test_key*> valid[] = {{"HS256", &jws::hmac_key()},
                                                                {"RS256", &jws::rsa_key()},
                                                                {"ES256", &jws::ec256_key()},
                                                                {"EdDSA", &jws::ed_key()}};
  const char* kids[] = {"hs", "rs", "es", "ed"};
  for (size_t i = 0; i < 4; ++i) {
    auto token =
        jws::make_token({{"alg", valid[i].first}, {"kid", kids[i]}}, good, *valid[i].second);
    EXPECT_EQ(call(token).first, 200) << valid[i].first;
  }
  auto with = [&](const char* claim, nlohmann::json value) {
    auto c = good;
    c[claim] = std::move(value);
    return jws::make_token({{"alg", "HS256"}, {"kid", "hs"}}, c, jws::hmac_key());
  };
  std::string good_hs = jws::make_token({{"alg", "HS256"}, {"kid", "hs"}}, good, jws::hmac_key());
  std::string bad_signature = good_hs;
  char& c = bad_signature[bad_signature.size() - 10];
  c = c == 'A' ? 'B' : 'A';
  // HS256 "signed" with the RSA public key's PEM, under the RSA key's kid (algorithm confusion).
  jws::test_key confused;
  confused.kty = "oct";
  confused.secret = jws::public_pem(jws::rsa_key());
  const std::pair<const char*, std::string> refused[] = {
      {"expired", with("exp", now - 3600)},
      {"not yet valid", with("nbf", now + 3600)},
      {"wrong audience", with("aud", "someone-else")},
      {"wrong issuer", with("iss", "https://evil.example")},
      {"bad signature", bad_signature},
      {"unknown kid", jws::make_token({{"alg", "RS256"}, {"kid", "nobody"}}, good, jws::rsa_key())},
      {"alg none", jws::b64url(R"({"alg":"none"})") + "." + jws::b64url(good.dump()) + "."},
      {"HS256 with the RSA public key",
       jws::make_token({{"alg", "HS256"}, {"kid", "rs"}}, good, confused)},
      {"garbage", "not.a.token"},
      {"more garbage", "%%%"},
  };
  for (const auto& [what, token] : refused) {
    auto [status, body] = call(token);
    EXPECT_EQ(status, 401) << what;
    auto j = nlohmann::json::parse(body, nullptr, false);
    EXPECT_TRUE(j.is_object() && j.value("error", "") == "invalid_token") << what << ": " << body;
  }
  EXPECT_EQ(up.hits.load(), 4);
}

TEST_F(jwt_auth, scopes_and_claims_a_valid_token_lacks_get_403_not_401) {
  auto get = [&](nlohmann::json claims) {
    auto res = node_->client().Get("/admin/x", {{"Authorization", "Bearer " + hs256(claims)}});
    return res ? std::make_pair(res->status, res->body) : std::make_pair(0, std::string());
  };
  auto claims = good_claims();
  claims["scope"] = "read write";
  claims["role"] = "admin";
  EXPECT_EQ(get(claims).first, 200);
  auto scp = good_claims();  // "scp" as an array works too, and array claims contain the value
  scp["scp"] = {"write"};
  scp["role"] = {"user", "admin"};
  EXPECT_EQ(get(scp).first, 200);
  int hits = up_.hits.load();
  auto no_scope = claims;
  no_scope["scope"] = "read writer";  // a scope list is split on spaces, not searched
  auto r = get(no_scope);
  EXPECT_EQ(r.first, 403);
  EXPECT_NE(r.second.find("\"error\":\"forbidden\""), std::string::npos) << r.second;
  EXPECT_NE(r.second.find("token lacks scope write"), std::string::npos) << r.second;
  auto wrong_role = claims;
  wrong_role["role"] = "user";
  r = get(wrong_role);
  EXPECT_EQ(r.first, 403);
  EXPECT_NE(r.second.find("token claim role is not admin"), std::string::npos) << r.second;
  EXPECT_EQ(up_.hits.load(), hits) << "refused requests never reach the upstream";
  // An invalid token is still 401, scopes or not.
  auto expired = claims;
  expired["exp"] = expired["iat"].get<int64_t>() - 1000;
  EXPECT_EQ(get(expired).first, 401);
}

TEST_F(jwt_auth, routes_without_auth_stay_open) {
  auto res = node_->client().Get("/open");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);
}

}  // namespace
}  // namespace meridian::testing

namespace meridian::testing {
namespace {

// Keys from a jwks_url follow the issuer's rotation: a token with a kid the node has not seen
// makes it re-fetch the set (at most every 10 s), and the new key then verifies.
TEST(jwks_url, a_token_signed_with_a_rotated_key_passes_once_the_set_is_refetched) {
  const std::string second = "fedcba9876543210fedcba9876543210";
  std::mutex mu;
  std::string jwks =
      R"({"keys":[{"kty":"oct","kid":"k1","alg":"HS256","k":")" + b64url(secret) + R"("}]})";
  upstream issuer;
  issuer.server().Get("/jwks.json", [&](const httplib::Request&, httplib::Response& res) {
    std::lock_guard lock(mu);
    res.set_content(jwks, "application/json");
  });
  issuer.start();
  upstream up;
  serve_ok(up);
  running_node n(
      "jwt:\n  - name: main\n    issuer: https://issuer.example\n    audience: api\n"
      "    jwks_url: http://" +
      issuer.address() + "/jwks.json\n    jwks_refresh: 1h\n" +
      "upstreams:\n  - name: u\n    targets: [" + up.address() + "]\n" +
      "routes:\n  - name: p\n    match: {path_prefix: /}\n    upstream: u\n" +
      "    auth: {methods: [jwt], jwt: main}\n");
  ASSERT_TRUE(n.ok());
  auto now = std::chrono::duration_cast<std::chrono::seconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  nlohmann::json claims = {{"sub", "acme"},
                           {"iss", "https://issuer.example"},
                           {"aud", "api"},
                           {"iat", now},
                           {"exp", now + 300}};
  auto c = n.client();
  auto get = [&](const std::string& token) {
    auto res = c.Get("/", {{"Authorization", "Bearer " + token}});
    return res ? res->status : 0;
  };
  EXPECT_EQ(get(hs256(claims)), 200);
  std::string rotated = hs256(claims, second, "k2");
  EXPECT_EQ(get(rotated), 401);  // k2 unknown so far
  {
    std::lock_guard lock(mu);  // the issuer rotates: k2 joins the set
    jwks = R"({"keys":[{"kty":"oct","kid":"k1","alg":"HS256","k":")" + b64url(secret) +
           R"("},{"kty":"oct","kid":"k2","alg":"HS256","k":")" + b64url(second) + R"("}]})";
  }
  EXPECT_TRUE(eventually([&] { return get(rotated) == 200; }, 15s));
}

// A jwks_url over https: the set is fetched with the issuer's certificate verified, host name
// included. The certificate here is self-signed for "localhost" and trusted through
// SSL_CERT_FILE (what OpenSSL's default verify paths read); a node whose provider reaches the
// same server as 127.0.0.1 refuses to start, naming the verification failure.
TEST(jwks_url, an_https_set_is_fetched_only_from_a_server_whose_certificate_verifies) {
  temp_dir dir;
  const std::string cert = dir.file("jwks.pem"), key = dir.file("jwks.key");
  ASSERT_EQ(std::system(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
                         "-keyout " +
                         key + " -out " + cert +
                         " -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost "
                         ">/dev/null 2>&1")
                            .c_str()),
            0);
  ::setenv("SSL_CERT_FILE", cert.c_str(), 1);
  httplib::SSLServer issuer(cert.c_str(), key.c_str());
  ASSERT_TRUE(issuer.is_valid());
  issuer.Get("/jwks.json", [&](const httplib::Request&, httplib::Response& res) {
    res.set_content(
        R"({"keys":[{"kty":"oct","kid":"k1","alg":"HS256","k":")" + b64url(secret) + R"("}]})",
        "application/json");
  });
  int port = issuer.bind_to_any_port("127.0.0.1");
  ASSERT_GT(port, 0);
  std::thread serving([&] { issuer.listen_after_bind(); });
  ASSERT_TRUE(eventually([&] { return issuer.is_running(); }));
  upstream up;
  serve_ok(up);
  auto provider = [&](const std::string& name, const std::string& host) {
    return "  - name: " + name + "\n    issuer: https://" + name +
           ".example\n    audience: api\n    jwks_url: https://" + host + ":" +
           std::to_string(port) + "/jwks.json\n    jwks_refresh: 1h\n";
  };
  auto route = [](const std::string& name) {
    return "  - name: " + name + "\n    match: {path_prefix: /" + name + "}\n    upstream: u\n" +
           "    auth: {methods: [jwt], jwt: " + name + "}\n";
  };
  const std::string yaml_tail = "upstreams:\n  - name: u\n    targets: [" + up.address() + "]\n";
  running_node n("jwt:\n" + provider("named", "localhost") + yaml_tail + "routes:\n" +
                 route("named"));
  ASSERT_TRUE(n.ok());
  auto now = std::chrono::duration_cast<std::chrono::seconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  nlohmann::json claims = {{"sub", "acme"},
                           {"iss", "https://named.example"},
                           {"aud", "api"},
                           {"iat", now},
                           {"exp", now + 300}};
  auto res = n.client().Get("/named/x", {{"Authorization", "Bearer " + hs256(claims)}});
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 200);

  auto cfg = node::parse_config(
      "node: {id: by-ip, region: eu-west, data_dir: " + dir.file("by-ip") +
          "}\n"
          "listen: {proxy: 127.0.0.1:0, admin: 127.0.0.1:0}\njwt:\n" +
          provider("by_ip", "127.0.0.1") + yaml_tail + "routes:\n" + route("by_ip"),
      "by_ip.yaml");
  ASSERT_TRUE(cfg.value);
  node::node refused(*cfg.value);
  std::string error;
  EXPECT_FALSE(refused.start(&error)) << "a certificate for localhost must not verify 127.0.0.1";
  EXPECT_NE(error.find("certificate verify failed"), std::string::npos) << error;
  issuer.stop();
  serving.join();
}

// A node without a cluster section keeps API keys, passwords and OAuth registers in its own
// store: keys are issued and revoked through the admin API, survive a restart, and OAuth works.
TEST(standalone_node, api_keys_and_oauth_work_without_a_cluster_and_survive_a_restart) {
  temp_dir dir;
  upstream up;
  serve_ok(up);
  const std::string yaml =
      "node: {id: solo, region: eu-west, data_dir: " + dir.file("data") +
      "}\nlisten: {proxy: 127.0.0.1:0, admin: 127.0.0.1:0}\n"
      "oauth: {issuer: https://solo.example, scopes: [read]}\n"
      "upstreams:\n  - name: u\n    targets: [" +
      up.address() +
      "]\nconsumers:\n  - {id: acme}\n  - {id: alice}\n"
      "routes:\n  - name: keyed\n    match: {path_prefix: /keyed}\n    upstream: u\n"
      "    auth: {methods: [api_key]}\n"
      "  - name: reports\n    match: {path_prefix: /reports}\n    upstream: u\n"
      "    auth: {methods: [oauth]}\n";
  auto cfg = node::parse_config(yaml, "solo.yaml");
  ASSERT_TRUE(cfg.value);
  auto n = std::make_unique<node::node>(*cfg.value);
  std::string error;
  ASSERT_TRUE(n->start(&error)) << error;
  auto admin = [&](const std::string& method, const std::string& path, const std::string& body) {
    httplib::Client c("127.0.0.1", n->admin_port());
    httplib::Headers h = {{"Authorization", "Bearer " + n->admin_token()}};
    auto r = method == "POST"     ? c.Post(path.c_str(), h, body, "application/json")
             : method == "PUT"    ? c.Put(path.c_str(), h, body, "application/json")
             : method == "DELETE" ? c.Delete(path.c_str(), h)
                                  : c.Get(path.c_str(), h);
    return r ? std::make_pair(r->status, nlohmann::json::parse(r->body, nullptr, false))
             : std::make_pair(0, nlohmann::json());
  };
  auto keyed = [&](const std::string& key) {
    httplib::Client c("127.0.0.1", n->proxy_port());
    auto r = c.Get("/keyed/x", {{"X-API-Key", key}});
    return r ? r->status : 0;
  };
  auto [status, issued] = admin("POST", "/config/consumers/acme/keys", "");
  ASSERT_EQ(status, 201) << issued.dump();
  const std::string key_id = issued["key_id"], key = issued["key"];
  EXPECT_TRUE(eventually([&] { return keyed(key) == 200; }, std::chrono::seconds(3)));
  EXPECT_EQ(keyed(key + "0"), 401);
  ASSERT_EQ(
      admin("PUT", "/config/consumers/alice/password", R"({"password":"correct horse"})").first,
      200);
  // OAuth on the proxy listener: the password grant, then the token on an oauth route.
  httplib::Client proxy("127.0.0.1", n->proxy_port());
  proxy.set_basic_auth(key_id, key);
  auto tok = proxy.Post("/oauth/token", "grant_type=password&username=alice&password=correct+horse",
                        "application/x-www-form-urlencoded");
  ASSERT_TRUE(tok);
  ASSERT_EQ(tok->status, 200) << tok->body;
  auto tokens = nlohmann::json::parse(tok->body);
  httplib::Client client("127.0.0.1", n->proxy_port());
  auto reports = client.Get(
      "/reports/q", {{"Authorization", "Bearer " + tokens["access_token"].get<std::string>()}});
  ASSERT_TRUE(reports);
  EXPECT_EQ(reports->status, 200);
  EXPECT_EQ(up.last().get_header_value("X-Consumer-Id"), "alice");

  // Hostile input never takes the node down: invalid UTF-8 in a form (which ends up quoted in a
  // JSON error), and clients that hang up while their password is being checked.
  auto bad = proxy.Post("/oauth/token", "grant_type=%FF%FE", "application/x-www-form-urlencoded");
  ASSERT_TRUE(bad);
  EXPECT_EQ(bad->status, 400);
  EXPECT_TRUE(nlohmann::json::parse(bad->body, nullptr, false).is_object()) << bad->body;
  for (int i = 0; i < 5; ++i) {
    raw_client c(n->proxy_port());
    std::string form = "grant_type=password&username=alice&password=wrong" + std::to_string(i);
    c.send("POST /oauth/token HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " +
           base64_std(key_id + ":" + key) +
           "\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: " +
           std::to_string(form.size()) + "\r\nConnection: close\r\n\r\n" + form);
  }  // each closes at once
  EXPECT_TRUE(eventually([&] { return keyed(key) == 200; }, std::chrono::seconds(3)));

  // Restart on the same data dir: the key, the password and the signing key are still there.
  n->drain(std::chrono::seconds(1));
  n = std::make_unique<node::node>(*cfg.value);
  ASSERT_TRUE(n->start(&error)) << error;
  EXPECT_TRUE(eventually([&] { return keyed(key) == 200; }, std::chrono::seconds(3)));
  httplib::Client proxy2("127.0.0.1", n->proxy_port());
  proxy2.set_basic_auth(key_id, key);
  auto refreshed = proxy2.Post(
      "/oauth/token",
      "grant_type=refresh_token&refresh_token=" + tokens["refresh_token"].get<std::string>(),
      "application/x-www-form-urlencoded");
  ASSERT_TRUE(refreshed);
  EXPECT_EQ(refreshed->status, 200) << refreshed->body;
  // The rotated refresh token is spent across the restart too.
  auto replay = proxy2.Post(
      "/oauth/token",
      "grant_type=refresh_token&refresh_token=" + tokens["refresh_token"].get<std::string>(),
      "application/x-www-form-urlencoded");
  ASSERT_TRUE(replay);
  EXPECT_EQ(replay->status, 400);
  // Revoked: refused at once (the snapshot is rebuilt from the local documents).
  EXPECT_EQ(admin("DELETE", "/config/consumers/acme/keys/" + key_id, "").first, 200);
  EXPECT_TRUE(eventually([&] { return keyed(key) == 401; }, std::chrono::seconds(3)));
  n->drain(std::chrono::seconds(1));
}

// A standalone node with the OAuth endpoints, one client (an API key of consumer acme) and a
// password user (alice), for the tests of the endpoints' pauses below.
class oauth_pauses : public ::testing::Test {
 protected:
  void SetUp() override {
    serve_ok(up_);
    const std::string yaml =
        "node: {id: solo, region: eu-west, data_dir: " + dir_.file("data") +
        "}\nlisten: {proxy: 127.0.0.1:0, admin: 127.0.0.1:0}\n"
        "oauth: {issuer: https://solo.example, scopes: [read], password_check_timeout: 1ms}\n"
        "upstreams:\n  - name: u\n    targets: [" +
        up_.address() +
        "]\nconsumers:\n  - {id: acme}\n  - {id: alice}\n"
        "routes:\n  - name: keyed\n    match: {path_prefix: /keyed}\n    upstream: u\n"
        "    auth: {methods: [api_key]}\n";
    auto cfg = node::parse_config(yaml, "solo.yaml");
    ASSERT_TRUE(cfg.value);
    node_ = std::make_unique<node::node>(*cfg.value);
    std::string error;
    ASSERT_TRUE(node_->start(&error)) << error;
    httplib::Client admin("127.0.0.1", node_->admin_port());
    httplib::Headers h = {{"Authorization", "Bearer " + node_->admin_token()}};
    auto issued = admin.Post("/config/consumers/acme/keys", h, "", "application/json");
    ASSERT_TRUE(issued);
    ASSERT_EQ(issued->status, 201) << issued->body;
    auto j = nlohmann::json::parse(issued->body);
    key_id_ = j["key_id"];
    key_ = j["key"];
    auto pw = admin.Put("/config/consumers/alice/password", h, R"({"password":"correct horse"})",
                        "application/json");
    ASSERT_TRUE(pw);
    ASSERT_EQ(pw->status, 200);
    ASSERT_TRUE(eventually([&] { return keyed() == 200; }, std::chrono::seconds(3)));
  }
  void TearDown() override {
    if (node_) node_->drain(std::chrono::seconds(1));
  }
  int keyed() {
    httplib::Client c("127.0.0.1", node_->proxy_port());
    auto r = c.Get("/keyed/x", {{"X-API-Key", key_}});
    return r ? r->status : 0;
  }
  std::string token_request(const std::string& form) {
    return "POST /oauth/token HTTP/1.1\r\nHost: x\r\nAuthorization: Basic " +
           base64_std(key_id_ + ":" + key_) +
           "\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: " +
           std::to_string(form.size()) + "\r\n\r\n" + form;
  }

  temp_dir dir_;
  upstream up_;
  std::unique_ptr<node::node> node_;
  std::string key_id_, key_;
};

// The token endpoint pauses until its form body is in: a body split anywhere, and the next
// request pipelined behind it, are both answered, in order.
TEST_F(oauth_pauses, a_token_form_split_at_every_byte_and_pipelined_is_answered_in_order) {
  const std::string all = token_request("grant_type=client_credentials&scope=read") +
                          "GET /keyed/x HTTP/1.1\r\nHost: x\r\nX-API-Key: " + key_ + "\r\n\r\n";
  for (size_t split = 0; split < all.size(); ++split) {
    raw_client c(node_->proxy_port());
    ASSERT_TRUE(c.connected());
    ASSERT_TRUE(c.send(all.substr(0, split)));
    if (split > 0) std::this_thread::sleep_for(std::chrono::microseconds(200));
    ASSERT_TRUE(c.send(all.substr(split)));
    auto token = c.read_response();
    auto next = c.read_response();
    ASSERT_EQ(status_of(token), 200) << "split " << split << ": " << token;
    ASSERT_NE(token.find("\"access_token\""), std::string::npos) << "split " << split;
    ASSERT_EQ(status_of(next), 200) << "split " << split << ": " << next;
  }
}

// A suspended exchange whose resume does not come by its deadline: the stage's prepared answer
// (503) goes out, the connection serves its next request, and the check that finishes later
// finds the pause over and changes nothing. Password checks take tens of milliseconds each and
// run one after another; with a 1 ms deadline at least the later of eight are past it when the
// sweep (every 50 ms) looks.
TEST_F(oauth_pauses, a_password_check_past_its_deadline_gets_503_and_its_late_answer_is_dropped) {
  const std::string request =
      token_request("grant_type=password&username=alice&password=correct+horse");
  std::vector<std::unique_ptr<raw_client>> clients;
  for (int i = 0; i < 8; ++i) {
    clients.push_back(std::make_unique<raw_client>(node_->proxy_port()));
    ASSERT_TRUE(clients.back()->send(request));
  }
  int timed_out = 0;
  for (auto& c : clients) {
    auto r = c->read_response(std::chrono::seconds(10));
    int status = status_of(r);
    ASSERT_TRUE(status == 200 || status == 503) << r;
    if (status == 503) {
      ++timed_out;
      EXPECT_NE(r.find("\"temporarily_unavailable\""), std::string::npos) << r;
      EXPECT_NE(r.find("did not finish in time"), std::string::npos) << r;
    }
    // The same connection goes on: its next request gets its own answer, not the late one.
    ASSERT_TRUE(c->send("GET /keyed/x HTTP/1.1\r\nHost: x\r\nX-API-Key: " + key_ + "\r\n\r\n"));
    auto next = c->read_response(std::chrono::seconds(10));
    EXPECT_EQ(status_of(next), 200) << next << " after " << r;
    EXPECT_EQ(next.find("access_token"), std::string::npos) << next;
  }
  EXPECT_GT(timed_out, 0);
  // Every late check has come back by now or will: nothing more arrives on any connection.
  for (auto& c : clients) {
    EXPECT_FALSE(c->closed_by_peer(std::chrono::milliseconds(300)));
    EXPECT_TRUE(c->buffer().empty()) << c->buffer();
  }
}

// An admin API on a non-loopback address starts only with a token file the operator placed.
TEST(admin_plane, a_non_loopback_admin_address_needs_an_existing_token_file) {
  temp_dir dir;
  auto config_with = [&](const std::string& admin_section) {
    return "node: {id: a, region: eu-west, data_dir: " + dir.file("data") +
           "}\nlisten: {proxy: 127.0.0.1:0, admin: 0.0.0.0:0}\n" + admin_section;
  };
  auto start = [&](const std::string& yaml, std::string* error) {
    auto cfg = node::parse_config(yaml, "a.yaml");
    EXPECT_TRUE(cfg.value);
    node::node n(*cfg.value);
    bool ok = n.start(error);
    if (ok) n.drain(std::chrono::seconds(1));
    return ok;
  };
  std::string error;
  EXPECT_FALSE(start(config_with(""), &error));
  EXPECT_NE(error.find("is not a loopback address"), std::string::npos) << error;
  EXPECT_FALSE(
      start(config_with("admin: {token_file: " + dir.file("missing.token") + "}\n"), &error));
  std::ofstream(dir.file("admin.token")) << "a-token-the-operator-chose-1234\n";
  error.clear();
  EXPECT_TRUE(start(config_with("admin: {token_file: " + dir.file("admin.token") + "}\n"), &error))
      << error;
}

}  // namespace
}  // namespace meridian::testing
