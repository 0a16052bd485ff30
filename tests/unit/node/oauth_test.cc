#include "oauth.h"

#include <gtest/gtest.h>
#include <sodium.h>
#include <sys/stat.h>

#include <chrono>
#include <filesystem>
#include <random>

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
  issued_key key;
  oauth_config cfg;
  const int64_t now_ms = 1'800'000'000'000;

  fixture() {
    std::string error;
    authority = oauth_authority::open(dir.path.string(), "n1", &error);
    EXPECT_TRUE(authority) << error;
    key = issue_api_key("acme", now_ms, 0);
    auto rec = parse_api_key_document(key.key_id, key.document);
    EXPECT_TRUE(rec);
    clients.emplace(key.key_id, *rec);
    cfg.issuer = "https://gw.example";
    cfg.audience = "api";
    cfg.scopes = {"read", "write"};
  }
  oauth_authority::reply token(const std::string& form, const std::string& auth) {
    return authority->handle(oauth_authority::endpoint::token, cfg, auth, form, &clients, now_ms);
  }
};

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
  auto error_of = [](const oauth_authority::reply& r) { return json::parse(r.body)["error"]; };
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
  EXPECT_EQ(error_of(f.token("grant_type=password", auth)), "unsupported_grant_type");
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

}  // namespace
}  // namespace meridian::node
