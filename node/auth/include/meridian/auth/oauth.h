#pragma once
// The gateway as an OAuth 2.0 authorization server (RFC 6749), answered by the proxy listener at
// the `oauth:` section's paths: the client_credentials, password, authorization_code (with PKCE,
// RFC 7636, and a consent page) and refresh_token grants, token introspection (RFC 7662) and
// revocation (RFC 7009).
//
// Clients are consumers' API keys: client_id is the key's id, client_secret the key itself
// (POST /config/consumers/{id}/keys issues both; revoking the key revokes the client). A consumer
// marked public_client redeems codes and refresh tokens with client_id and PKCE alone. Resource
// owners (password and authorization_code grants) are consumers with a password (PUT
// /config/consumers/{id}/password, stored as an Argon2id hash).
//
// Access tokens are EdDSA JWTs (typ at+jwt) signed with this node's Ed25519 key, which is created
// once in <data_dir>/oauth_signing.key (0600) and never leaves the node; its public half is
// published as a cluster register ("oauth/key/<node>"), so every node holds every node's
// verification key and accepts a token any node minted. Authorization codes ("mac_...") and
// refresh tokens ("mrt_...") are signed by the same key (a domain-separated Ed25519 signature
// over their payload, never valid as a JWT), so any node redeems them too.
//
// Single use: redeeming a code or a refresh token records its id as a register
// ("oauth/used/<id>", naming the grant family the redemption started or continued). A second
// redemption is refused and revokes the family (RFC 6749 section 4.1.2, OAuth 2.0 Security BCP
// section 4.14: refresh token rotation with reuse detection); revoking a family ("oauth/revoked/
// <family id>") revokes its refresh tokens and the access tokens minted from it (claim "fid").
// Two nodes redeeming the same id before either heard of the other is found when the registers
// meet (the one whose write lost revokes both families; see node.cc).
//
// Thread-safety: handle(), keys() and revoked() from any worker; set_published() and
// set_revoked() from the cluster's change handler (readers see the old or the new set whole).
// Password checks (Argon2id, ~20 ms) run on one background thread: run_slow().

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>
#include <utility>
#include <vector>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "meridian/auth/api_keys.h"
#include "meridian/auth/jwt.h"
#include "meridian/common/shared_slot.h"
#include "meridian/config/config.h"

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

  enum class endpoint { token, introspect, revoke, authorize };
  struct request {
    endpoint kind = endpoint::token;
    bool post = true;           // authorize: GET shows the consent page, POST submits it
    std::string authorization;  // the Authorization header (may be empty)
    std::string query;          // authorize GET: the query string
    std::string body;           // application/x-www-form-urlencoded
  };
  struct context {
    const oauth_config* cfg = nullptr;
    const api_key_table* clients = nullptr;                   // the snapshot's API keys
    const std::vector<consumer_config>* consumers = nullptr;  // the snapshot's consumers
    int64_t now_ms = 0;                                       // Unix ms
    std::string client_address;                               // the peer's IP (login throttling)
  };
  struct reply {
    int status = 200;
    std::string content_type = "application/json";
    std::string body;  // JSON, HTML (the consent page), or empty
    std::vector<std::pair<std::string, std::string>> headers;
  };
  // Answers one request to an endpoint. May block for a password check when slow(req): call it
  // through run_slow() then, never on a proxy worker.
  reply handle(const request& req, const context& ctx) const;
  // True when answering req checks a password (the password grant, a consent page submission).
  static bool slow(const request& req);
  // Runs job on the password thread. Returns false (job not run) when more than max_queued jobs
  // wait: the caller answers 503.
  bool run_slow(std::function<void()> job) const;
  // Admits one password check from address (at most max_checks_per_address a minute, so one
  // client cannot fill the password thread); false with *retry_s when over.
  bool admit_password_check(const std::string& address, int64_t now_ms, int64_t* retry_s) const;
  static constexpr int max_checks_per_address = 30;
  // Finishes the queued jobs and stops the password thread (before the proxy's workers go).
  void stop();
  static constexpr size_t max_queued = 64;

  // Cluster hooks (node.cc). on_revoke publishes a revoked token or family id (kept until exp_s
  // plus the verifier's leeway). used() reads the single-use record of a code or refresh token
  // id; mark_used() writes it (value: JSON naming the family). password_hash() returns a
  // consumer's Argon2id hash string. Each returns false / nullopt with *error when it cannot.
  std::function<bool(const std::string& id, int64_t exp_s, std::string* error)> on_revoke;
  std::function<std::optional<std::string>(const std::string& id)> used;
  std::function<bool(const std::string& id, const std::string& value, int64_t exp_s,
                     std::string* error)>
      mark_used;
  struct password_record {
    std::string hash;        // Argon2id string
    int64_t updated_ms = 0;  // when it was set: grants begun with an older one end
  };
  std::function<std::optional<password_record>(const std::string& consumer)> password_hash;
  // Failed logins under key (a user, or a user and an address) in this minute and the previous
  // one, cluster-wide (node.cc: a replicated counter), after adding one when add. Unset: no
  // throttling.
  std::function<uint64_t(const std::string& key, int64_t now_ms, bool add)> login_failures;
  // Failures free of delay; each one beyond doubles the wait before the next attempt (1 s, 2 s,
  // 4 s, ... up to 15 min). The per-user delay does not hold an address that logged in as that
  // user in the last 30 days, so guesses from elsewhere cannot lock the user out.
  static constexpr uint64_t max_login_failures = 5;  // per user and client address
  static constexpr uint64_t max_user_failures = 20;  // per user, from all addresses together
  static constexpr int64_t max_login_delay_ms = 15 * 60'000;
  static constexpr int64_t known_address_ms = 30LL * 24 * 3600 * 1000;

  // How long a grant's revocation must be kept: its refresh and access tokens live this long.
  static int64_t grant_lifetime_s(const oauth_config& cfg);

  // True when the claims' jti or grant family (fid) is revoked.
  bool token_revoked(const nlohmann::json& claims) const;

  // Signs claims as an access token with this node's key (used by handle(); public for tests).
  std::string sign(const nlohmann::json& claims) const;

 private:
  oauth_authority() = default;
  std::string kid_;
  std::array<unsigned char, 64> secret_{};  // libsodium Ed25519 secret key (seed || public)
  std::string own_jwk_;
  shared_slot<const jwks> keys_;
  shared_slot<const std::unordered_set<std::string>> revoked_;

  // Signed codes and refresh tokens: prefix + base64url(payload JSON) + "." + base64url(sig).
  std::string seal(std::string_view prefix, const nlohmann::json& payload) const;
  std::optional<nlohmann::json> open_sealed(std::string_view prefix, std::string_view token) const;
  // A consumer's password check, throttled by growing delays per user and address and per user.
  bool check_password(const std::string& user, const std::string& password,
                      const std::string& address, int64_t now_ms, std::string* why,
                      int64_t* updated_ms) const;
  // The current generation of a refresh-token family (0 before its first refresh).
  int64_t family_generation(const std::string& fid) const;
  // Serializes check-and-record of one code or family on this node.
  std::mutex& single_use_lock(const std::string& id) const;
  mutable std::array<std::mutex, 32> single_use_locks_;
  reply token(const std::vector<std::pair<std::string, std::string>>& form,
              std::string_view authorization, const context& ctx) const;
  reply authorize(const request& req, const context& ctx) const;
  // Access token (and, unless fid is empty, a refresh token of family fid) as a token response.
  // scope: the access token's; grant_scope: the refresh token's (the grant's); gen: the refresh
  // token's generation; pw: the password version the grant began with (0: none).
  reply issue(const context& ctx, const std::string& sub, const std::string& client_id,
              const std::string& scope, const std::string& grant_scope, const std::string& fid,
              int64_t gen, int64_t pw) const;

  struct failures {
    int count = 0;
    int64_t since_ms = 0;
  };
  mutable std::mutex address_mu_;
  mutable std::unordered_map<std::string, failures> password_checks_;  // per address, a minute

  // Node-local memory of the login throttle (check_password): when this node last saw a failure
  // under a throttle key (user, or user and address), and when a (user, address) pair last
  // logged in. Bounded: the entry set longest ago makes room.
  class recent_times {
   public:
    explicit recent_times(size_t cap) : cap_(cap) {}
    std::optional<int64_t> get(const std::string& key) const;
    void set(const std::string& key, int64_t ms);
    void erase(const std::string& key) { times_.erase(key); }

   private:
    size_t cap_;
    uint64_t generation_ = 0;
    std::unordered_map<std::string, std::pair<int64_t, uint64_t>> times_;  // ms, generation
    std::deque<std::pair<std::string, uint64_t>> order_;                   // oldest first
  };
  mutable std::mutex throttle_mu_;
  mutable recent_times last_failure_{20'000};
  mutable recent_times logged_in_{20'000};
  // How long the throttle key with `count` failures (cluster-wide, this minute and the last) must
  // still wait, from its last failure here, before its next attempt is checked: nothing below
  // `free`, then 1 s, doubling with each failure up to 15 minutes.
  int64_t throttle_wait_ms(const std::string& key, uint64_t count, uint64_t free,
                           int64_t now_ms) const;

  mutable std::mutex slow_mu_;
  mutable std::condition_variable slow_cv_;
  mutable std::deque<std::function<void()>> slow_jobs_;
  mutable bool slow_stop_ = false;
  mutable std::thread slow_thread_;
};

// An Argon2id hash string for a password (libsodium crypto_pwhash_str; t=2, m=19 MiB as OWASP
// recommends). Returns "" when the hash could not be computed (out of memory).
std::string hash_password(std::string_view password);
inline constexpr size_t min_password_length = 8;
inline constexpr size_t max_password_length = 1024;

// Splits an application/x-www-form-urlencoded body into decoded (name, value) pairs; returns
// false on bad percent-encoding.
bool parse_form(std::string_view body, std::vector<std::pair<std::string, std::string>>* out);

}  // namespace meridian::node
