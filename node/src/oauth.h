#pragma once
// The gateway as an OAuth 2.0 authorization server: the client_credentials grant (RFC 6749
// section 4.4), token introspection (RFC 7662) and revocation (RFC 7009), answered by the proxy
// listener at the `oauth:` section's paths.
//
// Clients are consumers' API keys: client_id is the key's id, client_secret the key itself
// (POST /config/consumers/{id}/keys issues both; revoking the key revokes the client). Access
// tokens are EdDSA JWTs (typ at+jwt) signed with this node's Ed25519 key, which is created once
// in <data_dir>/oauth_signing.key (0600) and never leaves the node; its public half is published
// as a cluster register ("oauth/key/<node>"), so every node holds every node's verification key
// and accepts a token any node minted. Revoked token ids are registers too ("oauth/revoked/<jti>",
// kept until the token's expiry), so a revocation on one node holds on every node.
//
// Thread-safety: handle(), keys() and revoked() from any worker; set_published() and
// set_revoked() from the cluster's change handler (readers see the old or the new set whole).

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include "api_keys.h"
#include "jwt.h"
#include "meridian/node/config.h"

namespace meridian::node {

class oauth_authority {
 public:
  // Loads this node's signing key from <data_dir>/oauth_signing.key, creating it when absent.
  // Returns nullptr and sets *error when the file is unreadable or malformed.
  static std::unique_ptr<oauth_authority> open(const std::string& data_dir,
                                               const std::string& node_id, std::string* error);
  ~oauth_authority();

  const std::string& kid() const { return kid_; }
  // This node's public key as a JWK (the value of the register "oauth/key/<node>").
  std::string public_jwk() const;
  // Replaces the verification keys with the published JWKs (this node's own is always kept).
  void set_published(const std::vector<std::string>& jwks_json);
  std::shared_ptr<const jwks> keys() const { return keys_.load(); }
  // Replaces the set of revoked token ids.
  void set_revoked(std::unordered_set<std::string> jtis);
  bool revoked(std::string_view jti) const;

  enum class endpoint { token, introspect, revoke };
  struct reply {
    int status = 200;
    std::string body;  // JSON, or empty
    std::vector<std::pair<std::string, std::string>> headers;
  };
  // Answers one request to an endpoint. authorization: the Authorization header (may be empty);
  // body: the application/x-www-form-urlencoded request body; clients: the snapshot's API keys.
  reply handle(endpoint kind, const oauth_config& cfg, std::string_view authorization,
               std::string_view body, const api_key_table* clients, int64_t now_ms) const;

  // Publishes a revocation (node.cc writes the register). Returns false with *error when it
  // could not be stored.
  std::function<bool(const std::string& jti, int64_t exp_s, std::string* error)> on_revoke;

  // Signs claims as an access token with this node's key (used by handle(); public for tests).
  std::string sign(const nlohmann::json& claims) const;

 private:
  oauth_authority() = default;
  std::string kid_;
  std::array<unsigned char, 64> secret_{};  // libsodium Ed25519 secret key (seed || public)
  std::string own_jwk_;
  std::atomic<std::shared_ptr<const jwks>> keys_;
  std::atomic<std::shared_ptr<const std::unordered_set<std::string>>> revoked_;
};

// Splits an application/x-www-form-urlencoded body into decoded (name, value) pairs; returns
// false on bad percent-encoding.
bool parse_form(std::string_view body, std::vector<std::pair<std::string, std::string>>* out);

}  // namespace meridian::node
