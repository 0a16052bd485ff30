#include "meridian/auth/oauth.h"

#include <gtest/gtest.h>
#include <sodium.h>
#include <sys/stat.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_set>

namespace meridian::node {
namespace {

using nlohmann::json;

struct scratch_dir {
  std::filesystem::path path = std::filesystem::temp_directory_path() /
                               ("meridian-oauth-" + std::to_string(std::random_device{}()));
  ~scratch_dir() { std::filesystem::remove_all(path); }
};

std::string basic(const std::string& id, const std::string& secret) {
  std::string raw = id + ":" + secret;
  std::string out(sodium_base64_ENCODED_LEN(raw.size(), sodium_base64_VARIANT_ORIGINAL), '\0');
  sodium_bin2base64(out.data(), out.size(), reinterpret_cast<const unsigned char*>(raw.data()),
                    raw.size(), sodium_base64_VARIANT_ORIGINAL);
  out.resize(std::strlen(out.c_str()));
  return "Basic " + out;
}

struct fixture {
  scratch_dir dir;
  std::unique_ptr<oauth_authority> authority;
  api_key_table clients;
  issued_key key;      // a confidential client of consumer acme
  issued_key app_key;  // a public client of consumer spa
  std::vector<consumer_config> consumers;
  oauth_config cfg;
  int64_t now_ms = 1'800'000'000'000;
  std::string address = "192.0.2.1";  // the client's IP
  // What node.cc keeps as cluster registers.
  std::mutex mu;  // the hooks may run on several threads
  std::map<std::string, std::string> uses;
  std::unordered_set<std::string> revoked;
  std::map<std::string, oauth_authority::password_record> passwords;
  std::map<std::pair<std::string, int64_t>, uint64_t> failures;  // (key, minute) -> count

  fixture() {
    std::string error;
    authority = oauth_authority::open(dir.path.string(), "n1", &error);
    EXPECT_TRUE(authority) << error;
    key = issue_api_key("acme", now_ms, 0);
    app_key = issue_api_key("spa", now_ms, 0);
    for (const auto* k : {&key, &app_key}) {
      auto rec = parse_api_key_document(k->key_id, k->document);
      EXPECT_TRUE(rec);
      clients.emplace(k->key_id, *rec);
    }
    consumer_config acme;
    acme.id = "acme";
    acme.redirect_uris = {"https://acme.example/cb", "https://acme.example/cb2?x=1"};
    consumer_config spa;
    spa.id = "spa";
    spa.public_client = true;
    spa.redirect_uris = {"http://127.0.0.1:8000/cb"};
    consumer_config alice;
    alice.id = "alice";
    consumers = {acme, spa, alice};
    passwords["alice"] = {hash_password("correct horse battery"), now_ms - 1000};
    cfg.issuer = "https://gw.example";
    cfg.audience = "api";
    cfg.scopes = {"read", "write"};
    authority->on_revoke = [this](const std::string& id, int64_t, std::string*) {
      std::lock_guard lock(mu);
      revoked.insert(id);
      authority->set_revoked(revoked);
      return true;
    };
    authority->used = [this](const std::string& id) -> std::optional<std::string> {
      std::lock_guard lock(mu);
      auto it = uses.find(id);
      if (it == uses.end()) return std::nullopt;
      return it->second;
    };
    authority->mark_used = [this](const std::string& id, const std::string& value, int64_t,
                                  std::string*) {
      std::lock_guard lock(mu);
      uses[id] = value;
      return true;
    };
    // What node.cc keeps as replicated counters: this minute's and the last one's.
    authority->login_failures = [this](const std::string& key, int64_t now, bool add) {
      std::lock_guard lock(mu);
      if (add) ++failures[{key, now / 60'000}];
      return failures[{key, now / 60'000}] + failures[{key, now / 60'000 - 1}];
    };
    authority->password_hash =
        [this](const std::string& user) -> std::optional<oauth_authority::password_record> {
      auto it = passwords.find(user);
      if (it == passwords.end()) return std::nullopt;
      return it->second;
    };
  }
  oauth_authority::context ctx() const { return {&cfg, &clients, &consumers, now_ms, address}; }
  oauth_authority::reply call(oauth_authority::endpoint kind, const std::string& form,
                              const std::string& auth = "") {
    oauth_authority::request req;
    req.kind = kind;
    req.authorization = auth;
    req.body = form;
    return authority->handle(req, ctx());
  }
  oauth_authority::reply token(const std::string& form, const std::string& auth) {
    return call(oauth_authority::endpoint::token, form, auth);
  }
  oauth_authority::reply authorize(bool post, const std::string& params) {
    oauth_authority::request req;
    req.kind = oauth_authority::endpoint::authorize;
    req.post = post;
    (post ? req.body : req.query) = params;
    return authority->handle(req, ctx());
  }
  std::string auth() const { return basic(key.key_id, key.plaintext); }
  // alice's tokens from the password grant.
  json login(const std::string& scope = "") {
    return json::parse(token("grant_type=password&username=alice&password=correct+horse+battery" +
                                 (scope.empty() ? "" : "&scope=" + scope),
                             auth())
                           .body);
  }
  jwt_result verify(const std::string& token) const {
    jwt_rules rules;
    rules.issuer = cfg.issuer;
    rules.audience = cfg.audience;
    return verify_jwt(token, *authority->keys(), rules,
                      std::chrono::system_clock::time_point(std::chrono::milliseconds(now_ms)));
  }
};

std::string header(const oauth_authority::reply& r, const std::string& name) {
  for (const auto& [k, v] : r.headers)
    if (k == name) return v;
  return "";
}

// The value of a query parameter in a Location URL (percent-decoded).
std::string query_param(const std::string& url, const std::string& name) {
  auto q = url.find('?');
  if (q == std::string::npos) return "";
  std::vector<std::pair<std::string, std::string>> form;
  if (!parse_form(url.substr(q + 1), &form)) return "";
  for (const auto& [k, v] : form)
    if (k == name) return v;
  return "";
}

std::string error_of(const oauth_authority::reply& r) {
  return json::parse(r.body).value("error", "");
}

TEST(oauth, form_bodies_are_percent_and_plus_decoded) {
  std::vector<std::pair<std::string, std::string>> form;
  ASSERT_TRUE(parse_form("grant_type=client_credentials&scope=read+write&x=%2Fa%3D&flag", &form));
  ASSERT_EQ(form.size(), 4u);
  EXPECT_EQ(form[1].second, "read write");
  EXPECT_EQ(form[2].second, "/a=");
  EXPECT_EQ(form[3].first, "flag");
  EXPECT_FALSE(parse_form("a=%zz", &form));
  EXPECT_FALSE(parse_form("a=%4", &form));
}

TEST(oauth, client_credentials_mints_an_eddsa_token_the_published_keys_verify) {
  fixture f;
  auto r =
      f.token("grant_type=client_credentials&scope=read", basic(f.key.key_id, f.key.plaintext));
  ASSERT_EQ(r.status, 200) << r.body;
  auto body = json::parse(r.body);
  EXPECT_EQ(body["token_type"], "Bearer");
  EXPECT_EQ(body["expires_in"], 3600);
  EXPECT_EQ(body["scope"], "read");
  jwt_rules rules;
  rules.issuer = "https://gw.example";
  rules.audience = "api";
  auto v = verify_jwt(body["access_token"].get<std::string>(), *f.authority->keys(), rules,
                      std::chrono::system_clock::time_point(std::chrono::milliseconds(f.now_ms)));
  ASSERT_TRUE(v.ok) << v.message;
  EXPECT_EQ(v.claims["sub"], "acme");
  EXPECT_EQ(v.claims["client_id"], f.key.key_id);
  EXPECT_FALSE(v.claims.value("jti", "").empty());
  // A node that only knows the published key (not the secret) verifies it too.
  scratch_dir other_dir;
  std::string error;
  auto other = oauth_authority::open(other_dir.path.string(), "n2", &error);
  ASSERT_TRUE(other) << error;
  auto token = body["access_token"].get<std::string>();
  EXPECT_FALSE(
      verify_jwt(token, *other->keys(), rules,
                 std::chrono::system_clock::time_point(std::chrono::milliseconds(f.now_ms)))
          .ok);
  other->set_published({f.authority->public_jwk()});
  EXPECT_TRUE(verify_jwt(token, *other->keys(), rules,
                         std::chrono::system_clock::time_point(std::chrono::milliseconds(f.now_ms)))
                  .ok);
}

TEST(oauth, bad_clients_grants_and_scopes_get_rfc6749_errors) {
  fixture f;
  auto auth = basic(f.key.key_id, f.key.plaintext);
  auto r = f.token("grant_type=client_credentials", basic(f.key.key_id, f.key.plaintext + "0"));
  EXPECT_EQ(r.status, 401);
  EXPECT_EQ(error_of(r), "invalid_client");
  EXPECT_EQ(f.token("grant_type=client_credentials", "").status, 401);
  // Form credentials work when there is no Basic header.
  EXPECT_EQ(f.token("grant_type=client_credentials&client_id=" + f.key.key_id +
                        "&client_secret=" + f.key.plaintext,
                    "")
                .status,
            200);
  EXPECT_EQ(error_of(f.token("grant_type=implicit", auth)), "unsupported_grant_type");
  f.cfg.grants = {"client_credentials"};
  EXPECT_EQ(error_of(f.token("grant_type=password&username=alice&password=x", auth)),
            "unsupported_grant_type");
  f.cfg.grants = oauth_config().grants;
  // A public client has no secret: it cannot use client_credentials.
  EXPECT_EQ(f.token("grant_type=client_credentials&client_id=" + f.app_key.key_id, "").status, 401);
  EXPECT_EQ(error_of(f.token("scope=read", auth)), "invalid_request");
  EXPECT_EQ(error_of(f.token("grant_type=client_credentials&scope=admin", auth)), "invalid_scope");
}

TEST(oauth, the_signing_key_is_kept_in_a_private_file_across_restarts) {
  scratch_dir dir;
  std::string error;
  auto first = oauth_authority::open(dir.path.string(), "n1", &error);
  ASSERT_TRUE(first) << error;
  auto again = oauth_authority::open(dir.path.string(), "n1", &error);
  ASSERT_TRUE(again) << error;
  EXPECT_EQ(first->kid(), again->kid());
  EXPECT_EQ(first->public_jwk(), again->public_jwk());
  struct stat st {};
  ASSERT_EQ(::stat((dir.path / "oauth_signing.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST(oauth, password_grant_checks_the_users_argon2id_hash_and_throttles_guessing) {
  fixture f;
  EXPECT_TRUE(f.passwords["alice"].hash.starts_with("$argon2id$"));
  auto r = f.token("grant_type=password&username=alice&password=correct+horse+battery&scope=read",
                   f.auth());
  ASSERT_EQ(r.status, 200) << r.body;
  auto body = json::parse(r.body);
  auto v = f.verify(body["access_token"]);
  ASSERT_TRUE(v.ok) << v.message;
  EXPECT_EQ(v.claims["sub"], "alice");  // the user, not the client
  EXPECT_EQ(v.claims["client_id"], f.key.key_id);
  EXPECT_EQ(v.claims["scope"], "read");
  EXPECT_TRUE(body["refresh_token"].get<std::string>().starts_with("mrt_"));
  EXPECT_EQ(header(r, "Cache-Control"), "no-store");

  // Wrong password, unknown user, user without a password: the same invalid_grant.
  for (const char* form : {"grant_type=password&username=alice&password=wrong",
                           "grant_type=password&username=mallory&password=whatever1",
                           "grant_type=password&username=acme&password=whatever1"}) {
    auto bad = f.token(form, f.auth());
    EXPECT_EQ(bad.status, 400);
    EXPECT_EQ(error_of(bad), "invalid_grant");
    EXPECT_NE(bad.body.find("wrong username or password"), std::string::npos) << bad.body;
  }
  EXPECT_EQ(error_of(f.token("grant_type=password&username=alice", f.auth())), "invalid_request");
  // A public client may not use the password grant (it cannot authenticate).
  EXPECT_EQ(f.token("grant_type=password&username=alice&password=correct+horse+battery&client_id=" +
                        f.app_key.key_id,
                    "")
                .status,
            401);
  // Five failures from one address are free; then that address waits before its next attempt
  // is even checked, right password or not: 1 s, then 2 s, 4 s (doubling with each failure).
  // The user still logs in from elsewhere at once.
  const std::string right = "grant_type=password&username=alice&password=correct+horse+battery";
  for (int i = 0; i < 4; ++i)
    f.token("grant_type=password&username=alice&password=wrong" + std::to_string(i), f.auth());
  auto held = f.token(right, f.auth());
  EXPECT_EQ(error_of(held), "invalid_grant");
  EXPECT_NE(
      held.body.find("too many failed attempts for this user from this address; retry in 1 s"),
      std::string::npos)
      << held.body;
  f.now_ms += 1000;  // the second is over: a sixth failure, then two seconds
  EXPECT_NE(f.token("grant_type=password&username=alice&password=wrong6", f.auth())
                .body.find("wrong username or password"),
            std::string::npos);
  EXPECT_NE(f.token(right, f.auth()).body.find("retry in 2 s"), std::string::npos);
  f.now_ms += 1999;
  EXPECT_NE(f.token(right, f.auth()).body.find("retry in 1 s"), std::string::npos);
  f.now_ms += 1;
  f.token("grant_type=password&username=alice&password=wrong7", f.auth());
  EXPECT_NE(f.token(right, f.auth()).body.find("retry in 4 s"), std::string::npos);
  const std::string held_address = f.address;
  f.address = "198.51.100.9";
  EXPECT_EQ(f.token(right, f.auth()).status, 200);
  f.now_ms += 121'000;  // failures count this minute and the last
  f.address = "192.0.2.1";
  EXPECT_EQ(f.token(right, f.auth()).status, 200);
  f.address = held_address;
  EXPECT_EQ(f.token(right, f.auth()).status, 200);
  // Twenty failures from many addresses slow every new address down the same way...
  for (int i = 0; i < 20; ++i) {
    f.address = "203.0.113." + std::to_string(i);
    f.token("grant_type=password&username=alice&password=guess" + std::to_string(i), f.auth());
  }
  f.address = "198.51.100.200";
  auto everywhere = f.token(right, f.auth());
  EXPECT_EQ(error_of(everywhere), "invalid_grant");
  EXPECT_NE(everywhere.body.find("too many failed attempts for this user; retry in 1 s"),
            std::string::npos)
      << everywhere.body;
  // ... but not the addresses alice logged in from: guesses cannot lock her out.
  for (const char* known : {"198.51.100.9", "192.0.2.1"}) {
    f.address = known;
    EXPECT_EQ(f.token(right, f.auth()).status, 200) << known;
  }
  f.address = "198.51.100.200";
  f.now_ms += 1000;
  EXPECT_EQ(f.token(right, f.auth()).status, 200) << "a new address once the wait is over";
}

TEST(oauth, refresh_tokens_rotate_and_a_reused_one_revokes_the_whole_grant) {
  fixture f;
  auto first = f.login("read+write");
  std::string rt1 = first["refresh_token"];
  std::string at1 = first["access_token"];
  auto r = f.token("grant_type=refresh_token&refresh_token=" + rt1 + "&scope=read", f.auth());
  ASSERT_EQ(r.status, 200) << r.body;
  auto second = json::parse(r.body);
  std::string rt2 = second["refresh_token"];
  EXPECT_NE(rt2, rt1);
  auto v2 = f.verify(second["access_token"]);
  ASSERT_TRUE(v2.ok);
  EXPECT_EQ(v2.claims["scope"], "read");  // narrowed on request
  EXPECT_EQ(v2.claims["sub"], "alice");
  EXPECT_EQ(v2.claims["fid"], f.verify(at1).claims["fid"]);  // one grant family
  // Widening is refused; another client cannot use it.
  EXPECT_EQ(
      error_of(f.token("grant_type=refresh_token&refresh_token=" + rt2 + "&scope=admin", f.auth())),
      "invalid_scope");
  auto other = issue_api_key("acme", f.now_ms, 0);
  f.clients.emplace(other.key_id, *parse_api_key_document(other.key_id, other.document));
  EXPECT_EQ(error_of(f.token("grant_type=refresh_token&refresh_token=" + rt2,
                             basic(other.key_id, other.plaintext))),
            "invalid_grant");
  // Introspection knows refresh tokens: rt1 is spent, rt2 live.
  auto intro = [&](const std::string& t) {
    return json::parse(f.call(oauth_authority::endpoint::introspect, "token=" + t, f.auth()).body);
  };
  EXPECT_FALSE(intro(rt1)["active"]);
  EXPECT_TRUE(intro(rt2)["active"]);
  EXPECT_EQ(intro(rt2)["token_type"], "refresh_token");

  // rt1 again: reuse. Refused, and the grant is revoked: rt2 and every access token of it die.
  auto reuse = f.token("grant_type=refresh_token&refresh_token=" + rt1, f.auth());
  EXPECT_EQ(error_of(reuse), "invalid_grant");
  EXPECT_NE(reuse.body.find("reuse detected"), std::string::npos);
  EXPECT_EQ(error_of(f.token("grant_type=refresh_token&refresh_token=" + rt2, f.auth())),
            "invalid_grant");
  EXPECT_TRUE(f.authority->token_revoked(f.verify(at1).claims));
  EXPECT_TRUE(f.authority->token_revoked(v2.claims));
  EXPECT_FALSE(intro(second["access_token"])["active"]);
  EXPECT_FALSE(intro(rt2)["active"]);

  // Expired refresh tokens are refused.
  auto fresh = f.login();
  f.now_ms += 31LL * 24 * 3600 * 1000;
  EXPECT_EQ(error_of(f.token("grant_type=refresh_token&refresh_token=" +
                                 fresh["refresh_token"].get<std::string>(),
                             f.auth())),
            "invalid_grant");
}

TEST(oauth, revoking_a_refresh_token_revokes_its_grant) {
  fixture f;
  auto t = f.login();
  auto r =
      f.call(oauth_authority::endpoint::revoke,
             "token=" + t["refresh_token"].get<std::string>() + "&token_type_hint=refresh_token",
             f.auth());
  EXPECT_EQ(r.status, 200);
  EXPECT_TRUE(f.authority->token_revoked(f.verify(t["access_token"]).claims));
  EXPECT_EQ(error_of(f.token(
                "grant_type=refresh_token&refresh_token=" + t["refresh_token"].get<std::string>(),
                f.auth())),
            "invalid_grant");
}

TEST(oauth, codes_and_refresh_tokens_are_not_tokens_of_another_kind) {
  fixture f;
  auto t = f.login();
  std::string rt = t["refresh_token"];
  EXPECT_FALSE(f.verify(rt).ok);                // not a JWT
  std::string as_code = "mac_" + rt.substr(4);  // same payload, other kind
  auto r = f.token(
      "grant_type=authorization_code&code=" + as_code + "&code_verifier=" + std::string(43, 'a'),
      f.auth());
  EXPECT_EQ(error_of(r), "invalid_grant");
  // A tampered refresh token fails its signature.
  std::string tampered = rt;
  tampered[10] = tampered[10] == 'A' ? 'B' : 'A';
  EXPECT_EQ(error_of(f.token("grant_type=refresh_token&refresh_token=" + tampered, f.auth())),
            "invalid_grant");
  // Another node verifies them once it has this node's published key.
  scratch_dir other_dir;
  std::string error;
  auto other = oauth_authority::open(other_dir.path.string(), "n2", &error);
  ASSERT_TRUE(other);
  other->used = f.authority->used;
  other->mark_used = f.authority->mark_used;
  other->password_hash = f.authority->password_hash;
  oauth_authority::request req;
  req.kind = oauth_authority::endpoint::token;
  req.authorization = f.auth();
  req.body = "grant_type=refresh_token&refresh_token=" + rt;
  EXPECT_EQ(error_of(other->handle(req, f.ctx())), "invalid_grant");
  other->set_published({f.authority->public_jwk()});
  EXPECT_EQ(other->handle(req, f.ctx()).status, 200);
}

constexpr const char* verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";  // RFC 7636 B
constexpr const char* challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

TEST(oauth, authorization_code_with_pkce_from_consent_page_to_tokens) {
  fixture f;
  std::string params = "response_type=code&client_id=" + f.key.key_id +
                       "&redirect_uri=https%3A%2F%2Facme.example%2Fcb&scope=read&state=xyz%3C1"
                       "&code_challenge=" +
                       challenge + "&code_challenge_method=S256";
  auto page = f.authorize(false, params);
  ASSERT_EQ(page.status, 200) << page.body;
  EXPECT_EQ(page.content_type, "text/html; charset=utf-8");
  EXPECT_NE(page.body.find("acme asks for access"), std::string::npos);
  EXPECT_NE(page.body.find("<li>read</li>"), std::string::npos);
  EXPECT_NE(page.body.find("value=\"xyz&lt;1\""), std::string::npos);  // escaped
  EXPECT_EQ(page.body.find("xyz<1"), std::string::npos);
  EXPECT_EQ(header(page, "X-Frame-Options"), "DENY");

  // A wrong password shows the page again; no redirect.
  auto wrong = f.authorize(true, params + "&username=alice&password=nope&decision=allow");
  EXPECT_EQ(wrong.status, 200);
  EXPECT_NE(wrong.body.find("wrong username or password"), std::string::npos);
  EXPECT_EQ(header(wrong, "Location"), "");

  auto ok =
      f.authorize(true, params + "&username=alice&password=correct+horse+battery&decision=allow");
  ASSERT_EQ(ok.status, 302) << ok.body;
  std::string location = header(ok, "Location");
  EXPECT_TRUE(location.starts_with("https://acme.example/cb?code=mac_")) << location;
  EXPECT_EQ(query_param(location, "state"), "xyz<1");
  EXPECT_EQ(query_param(location, "iss"), "https://gw.example");
  std::string code = query_param(location, "code");

  std::string redeem = "grant_type=authorization_code&code=" + code +
                       "&redirect_uri=https%3A%2F%2Facme.example%2Fcb&code_verifier=";
  EXPECT_EQ(error_of(f.token(redeem + std::string(43, 'x'), f.auth())), "invalid_grant");
  EXPECT_EQ(error_of(f.token("grant_type=authorization_code&code=" + code + "&code_verifier=" +
                                 verifier + "&redirect_uri=https%3A%2F%2Facme.example%2Fcb2",
                             f.auth())),
            "invalid_grant");
  auto tokens = f.token(redeem + verifier, f.auth());
  ASSERT_EQ(tokens.status, 200) << tokens.body;
  auto body = json::parse(tokens.body);
  auto v = f.verify(body["access_token"]);
  ASSERT_TRUE(v.ok);
  EXPECT_EQ(v.claims["sub"], "alice");
  EXPECT_EQ(v.claims["scope"], "read");
  EXPECT_TRUE(body.contains("refresh_token"));

  // A code is good once: the second redemption fails and revokes what the first one got.
  EXPECT_EQ(error_of(f.token(redeem + verifier, f.auth())), "invalid_grant");
  EXPECT_TRUE(f.authority->token_revoked(v.claims));
  // Codes expire after a minute.
  auto again = f.authorize(true, params + "&username=alice&password=correct+horse+battery");
  std::string code2 = query_param(header(again, "Location"), "code");
  f.now_ms += 61'000;
  EXPECT_EQ(error_of(f.token(
                "grant_type=authorization_code&code=" + code2 +
                    "&redirect_uri=https%3A%2F%2Facme.example%2Fcb&code_verifier=" + verifier,
                f.auth())),
            "invalid_grant");
}

TEST(oauth, the_authorization_endpoint_never_redirects_to_an_unregistered_uri) {
  fixture f;
  std::string base = "response_type=code&code_challenge=" + std::string(challenge) +
                     "&code_challenge_method=S256&state=s";
  // Unknown client, unregistered redirect: an error page, no Location.
  for (const std::string& params :
       {base + "&client_id=nope&redirect_uri=https%3A%2F%2Facme.example%2Fcb",
        base + "&client_id=" + f.key.key_id + "&redirect_uri=https%3A%2F%2Fevil.example%2Fcb",
        base + "&client_id=" + f.key.key_id}) {  // two registered: redirect_uri required
    auto r = f.authorize(false, params);
    EXPECT_EQ(r.status, 400) << params;
    EXPECT_EQ(header(r, "Location"), "");
  }
  // Other errors go back to the client with state.
  std::string client =
      "&client_id=" + f.key.key_id + "&redirect_uri=https%3A%2F%2Facme.example%2Fcb";
  auto missing_pkce = f.authorize(false, "response_type=code&state=s" + client);
  EXPECT_EQ(missing_pkce.status, 302);
  EXPECT_EQ(query_param(header(missing_pkce, "Location"), "error"), "invalid_request");
  EXPECT_EQ(query_param(header(missing_pkce, "Location"), "state"), "s");
  auto plain = f.authorize(false, "response_type=code&code_challenge=" + std::string(challenge) +
                                      "&code_challenge_method=plain" + client);
  EXPECT_EQ(query_param(header(plain, "Location"), "error"), "invalid_request");
  auto token_type =
      f.authorize(false, "response_type=token&code_challenge=" + std::string(challenge) +
                             "&code_challenge_method=S256" + client);
  EXPECT_EQ(query_param(header(token_type, "Location"), "error"), "unsupported_response_type");
  auto scope = f.authorize(false, base + client + "&scope=admin");
  EXPECT_EQ(query_param(header(scope, "Location"), "error"), "invalid_scope");
  auto deny = f.authorize(true, base + client + "&decision=deny");
  EXPECT_EQ(query_param(header(deny, "Location"), "error"), "access_denied");
  // A registered URI with its own query keeps it.
  auto kept =
      f.authorize(false, base + "&client_id=" + f.key.key_id +
                             "&redirect_uri=https%3A%2F%2Facme.example%2Fcb2%3Fx%3D1&scope=admin");
  EXPECT_TRUE(
      header(kept, "Location").starts_with("https://acme.example/cb2?x=1&error=invalid_scope"));
}

TEST(oauth, a_public_client_redeems_codes_and_refresh_tokens_with_pkce_alone) {
  fixture f;
  // One registered redirect URI: it may be left out.
  std::string params = "response_type=code&client_id=" + f.app_key.key_id +
                       "&code_challenge=" + challenge + "&code_challenge_method=S256";
  auto r = f.authorize(true, params + "&username=alice&password=correct+horse+battery");
  ASSERT_EQ(r.status, 302) << r.body;
  std::string location = header(r, "Location");
  EXPECT_TRUE(location.starts_with("http://127.0.0.1:8000/cb?code=")) << location;
  std::string code = query_param(location, "code");
  // No secret, but client_id and the verifier.
  auto tokens = f.token("grant_type=authorization_code&client_id=" + f.app_key.key_id +
                            "&code=" + code + "&code_verifier=" + verifier,
                        "");
  ASSERT_EQ(tokens.status, 200) << tokens.body;
  auto body = json::parse(tokens.body);
  auto refreshed = f.token("grant_type=refresh_token&client_id=" + f.app_key.key_id +
                               "&refresh_token=" + body["refresh_token"].get<std::string>(),
                           "");
  EXPECT_EQ(refreshed.status, 200) << refreshed.body;
  // A confidential client's code cannot be redeemed without its secret.
  auto c = f.authorize(
      true, "response_type=code&client_id=" + f.key.key_id +
                "&redirect_uri=https%3A%2F%2Facme.example%2Fcb&code_challenge=" + challenge +
                "&code_challenge_method=S256&username=alice&password=correct+"
                "horse+battery");
  std::string ccode = query_param(header(c, "Location"), "code");
  EXPECT_EQ(f.token("grant_type=authorization_code&client_id=" + f.key.key_id + "&code=" + ccode +
                        "&redirect_uri=https%3A%2F%2Facme.example%2Fcb&code_verifier=" + verifier,
                    "")
                .status,
            401);
}

TEST(oauth, invalid_utf8_in_any_field_gets_a_json_error_not_an_exception) {
  fixture f;
  for (const std::string& form :
       {std::string("grant_type=%FF%FE"), std::string("grant_type=client_credentials&scope=%C3%28"),
        std::string("grant_type=password&username=%FF&password=%FFxxxxxxxx"),
        std::string("grant_type=refresh_token&refresh_token=mrt_%FF.%FF")}) {
    oauth_authority::reply r;
    ASSERT_NO_THROW(r = f.token(form, f.auth())) << form;
    EXPECT_EQ(r.status, 400) << form;
    auto j = json::parse(r.body, nullptr, false);
    EXPECT_TRUE(j.is_object() && j.contains("error")) << r.body;
  }
  ASSERT_NO_THROW(f.call(oauth_authority::endpoint::introspect, "token=%FF%FE", f.auth()));
  ASSERT_NO_THROW(f.authorize(false, "client_id=%FF&redirect_uri=%FF"));
}

TEST(oauth, one_code_or_refresh_token_redeemed_by_two_threads_at_once_succeeds_once) {
  fixture f;
  auto login = f.authorize(true, "response_type=code&client_id=" + f.key.key_id +
                                     "&redirect_uri=https%3A%2F%2Facme.example%2Fcb&code_"
                                     "challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_"
                                     "challenge_method=S256&username=alice&password=correct+"
                                     "horse+battery");
  std::string code = query_param(header(login, "Location"), "code");
  ASSERT_FALSE(code.empty());
  std::string redeem = "grant_type=authorization_code&code=" + code +
                       "&redirect_uri=https%3A%2F%2Facme.example%2Fcb&code_verifier="
                       "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&] { ok += f.token(redeem, f.auth()).status == 200; });
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 1);
  // The same for a refresh token: one rotation wins, the others are reuse.
  std::string rt = f.login()["refresh_token"];
  ok = 0;
  threads.clear();
  for (int i = 0; i < 4; ++i)
    threads.emplace_back([&] {
      ok += f.token("grant_type=refresh_token&refresh_token=" + rt, f.auth()).status == 200;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 1);
}

TEST(oauth, a_password_change_ends_the_grants_begun_with_the_old_one) {
  fixture f;
  std::string rt = f.login()["refresh_token"];
  auto r = f.token("grant_type=refresh_token&refresh_token=" + rt, f.auth());
  ASSERT_EQ(r.status, 200);
  std::string rt2 = json::parse(r.body)["refresh_token"];
  f.passwords["alice"] = {hash_password("a brand new secret"), f.now_ms};
  auto after = f.token("grant_type=refresh_token&refresh_token=" + rt2, f.auth());
  EXPECT_EQ(error_of(after), "invalid_grant");
  EXPECT_NE(after.body.find("password changed"), std::string::npos) << after.body;
  f.passwords.erase("alice");
  EXPECT_EQ(error_of(f.token("grant_type=refresh_token&refresh_token=" + rt2, f.auth())),
            "invalid_grant");
}

TEST(oauth, a_narrower_refresh_keeps_the_grants_scope_for_the_next_one) {
  fixture f;
  std::string rt = f.login("read+write")["refresh_token"];
  auto r = f.token("grant_type=refresh_token&scope=read&refresh_token=" + rt, f.auth());
  ASSERT_EQ(r.status, 200) << r.body;
  auto j = json::parse(r.body);
  EXPECT_EQ(j["scope"], "read");
  // RFC 6749 section 6: the new refresh token has the grant's scope, so write is still there.
  auto again = f.token(
      "grant_type=refresh_token&scope=write&refresh_token=" + j["refresh_token"].get<std::string>(),
      f.auth());
  ASSERT_EQ(again.status, 200) << again.body;
  EXPECT_EQ(json::parse(again.body)["scope"], "write");
}

TEST(oauth, a_public_client_may_revoke_its_own_tokens_but_not_introspect) {
  fixture f;
  auto login = f.authorize(true, "response_type=code&client_id=" + f.app_key.key_id +
                                     "&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-"
                                     "cM&code_challenge_method=S256&username=alice&password="
                                     "correct+horse+battery");
  std::string code = query_param(header(login, "Location"), "code");
  auto t = json::parse(f.token("grant_type=authorization_code&client_id=" + f.app_key.key_id +
                                   "&code=" + code +
                                   "&code_verifier=dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
                               "")
                           .body);
  std::string rt = t["refresh_token"];
  EXPECT_EQ(f.call(oauth_authority::endpoint::introspect,
                   "client_id=" + f.app_key.key_id + "&token=" + rt)
                .status,
            401);
  EXPECT_EQ(
      f.call(oauth_authority::endpoint::revoke, "client_id=" + f.app_key.key_id + "&token=" + rt)
          .status,
      200);
  EXPECT_TRUE(f.authority->token_revoked(f.verify(t["access_token"]).claims));
}

TEST(oauth, password_checks_are_limited_per_address) {
  fixture f;
  int64_t retry = 0;
  for (int i = 0; i < oauth_authority::max_checks_per_address; ++i)
    EXPECT_TRUE(f.authority->admit_password_check("203.0.113.7", f.now_ms, &retry));
  EXPECT_FALSE(f.authority->admit_password_check("203.0.113.7", f.now_ms + 1000, &retry));
  EXPECT_GT(retry, 0);
  EXPECT_TRUE(f.authority->admit_password_check("203.0.113.8", f.now_ms, &retry));
  EXPECT_TRUE(f.authority->admit_password_check("203.0.113.7", f.now_ms + 61'000, &retry));
}

TEST(oauth, password_checks_run_on_one_background_thread_with_a_bounded_queue) {
  fixture f;
  oauth_authority::request req;
  req.kind = oauth_authority::endpoint::token;
  req.body = "grant_type=password&username=alice&password=x";
  EXPECT_TRUE(oauth_authority::slow(req));
  req.body = "grant_type=client_credentials";
  EXPECT_FALSE(oauth_authority::slow(req));
  req.kind = oauth_authority::endpoint::authorize;
  req.post = false;
  EXPECT_FALSE(oauth_authority::slow(req));
  req.post = true;
  EXPECT_TRUE(oauth_authority::slow(req));

  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  std::atomic<int> ran{0};
  std::thread::id worker;
  // The first job blocks the thread; the queue then takes max_queued more and refuses one.
  ASSERT_TRUE(f.authority->run_slow([&] {
    worker = std::this_thread::get_id();
    std::unique_lock lock(mu);
    cv.wait(lock, [&] { return release; });
    ++ran;
  }));
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  size_t queued = 0;
  while (queued < oauth_authority::max_queued && std::chrono::steady_clock::now() < deadline) {
    if (f.authority->run_slow([&] { ++ran; })) ++queued;
  }
  EXPECT_EQ(queued, oauth_authority::max_queued);
  EXPECT_FALSE(f.authority->run_slow([&] { ++ran; }));
  {
    std::lock_guard lock(mu);
    release = true;
  }
  cv.notify_all();
  f.authority->stop();  // finishes what was queued
  EXPECT_EQ(ran.load(), 1 + static_cast<int>(oauth_authority::max_queued));
  EXPECT_NE(worker, std::this_thread::get_id());
  EXPECT_FALSE(f.authority->run_slow([] {}));  // stopped
}

}  // namespace
}  // namespace meridian::node
