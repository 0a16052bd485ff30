#pragma once
// The runtime form of a config: what the data plane reads on every request.
//
// A snapshot is immutable once built and shared by all workers through shared_ptr; a reload
// builds a new one and hands it to each worker, while requests in flight keep the old one alive.
// Per-target state that must survive reloads lives in the traffic part's target_registry.

#include <atomic>
#include <boost/regex.hpp>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "meridian/auth/api_keys.h"
#include "meridian/auth/jwt.h"
#include "meridian/common/clock.h"
#include "meridian/common/metrics.h"
#include "meridian/common/path_normalize.h"
#include "meridian/common/shared_slot.h"
#include "meridian/common/tracing.h"
#include "meridian/config/config.h"
#include "meridian/traffic/balancer.h"
#include "meridian/traffic/rate_limiter.h"
#include "meridian/traffic/router.h"
#include "meridian/transcode/transcoder.h"

namespace meridian::node {

// A JWT issuer and the keys that verify its tokens (loaded from jwks_file or jwks_url when the
// snapshot is built).
class oauth_authority;
class usage_recorder;
class tls_store;

struct jwt_provider {
  const jwt_config* cfg = nullptr;
  // Set for the provider of `auth: {methods: [oauth]}`: keys and revocations come from it.
  const oauth_authority* authority = nullptr;
  // Replaced whole when a jwks_url is re-fetched; workers load it once per verification.
  shared_slot<const jwks> keys;
  jwt_rules rules;
  mutable verified_jwt_cache cache;         // tokens verified before (per key set)
  std::atomic<bool> refresh_wanted{false};  // a token named a kid these keys lack
  std::atomic<int64_t> fetched_ms{0};       // steady ms of the last fetch
  std::atomic<int64_t> last_wanted_ms{0};   // steady ms of the last kid-miss refresh
};

// Re-fetches provider p's jwks_url now. Returns false and sets *error when it cannot (the old
// keys stay).
bool refresh_jwks(jwt_provider& p, std::string* error);

class chain;  // stages (chain.h, private to this part)

struct route_runtime {
  const route_config* cfg = nullptr;
  upstream_runtime* upstream = nullptr;
  std::optional<boost::regex> rewrite;  // Boost: no recursion on long input, unlike std::regex
  route_metrics* metrics = nullptr;
  uint64_t max_body_bytes = 0;  // 0 = unlimited
  bool preserve_host = true;
  // Lower-cased names of request headers removed or set (so the client's copy is dropped).
  std::vector<std::string> request_drop;
  std::vector<std::string> response_drop;
  // auth: {methods: [jwt]}: the providers that may vouch for a request (any one suffices).
  std::vector<const jwt_provider*> jwt_providers;
  rate_limit_stats* limit_stats = nullptr;  // set when the route has limits and a limiter
  std::vector<limit_spec> limits;           // the route's rate limits, compiled
  bool auth_api_key = false;                // auth methods include api_key
  std::shared_ptr<const chain> stages;      // built by build_chain once the routes are compiled
  // grpc_transcode: the bindings of the route's descriptor set.
  std::shared_ptr<const transcode::transcoder> transcoder;
};

struct snapshot {
  config cfg;
  uint64_t version = 0;
  std::unique_ptr<router> routes_index;
  path_policy paths;  // how request paths are normalized before routing
  std::vector<route_runtime> routes;
  std::vector<std::unique_ptr<upstream_runtime>> upstreams;
  std::vector<std::unique_ptr<jwt_provider>> jwt_providers;
  std::vector<std::string> warnings;    // e.g. targets that could not be resolved
  rate_limiter* limiter = nullptr;      // the node's (outlives every snapshot); null: no limits
  target_registry* registry = nullptr;  // the node's (outlives every snapshot)
  std::shared_ptr<const api_key_table> api_keys;  // by key id; null: none
  const oauth_authority* oauth = nullptr;  // the node's (outlives every snapshot); null: no oauth
  span_sink* spans =
      nullptr;  // the node's span exporter (outlives every snapshot); null: no tracing
  usage_recorder* usage = nullptr;  // the node's analytics (outlives every snapshot); null: none
  jwt_config oauth_jwt;             // the oauth provider's settings (issuer, audience)
  std::unique_ptr<jwt_provider> oauth_provider;
  std::shared_ptr<const tls_store> tls;  // certificates of the TLS listener; null: none
  std::unordered_map<std::string, std::vector<std::string>> consumer_groups;  // by consumer id
  std::shared_ptr<const chain> entry;  // what every request passes before its route's chain
};

// Builds a snapshot from a validated config. Resolves target host names (blocking). Returns
// nullptr and sets *error when the config cannot be compiled (a bad regex).
std::shared_ptr<const snapshot> build_snapshot(config cfg, uint64_t version, unsigned workers,
                                               target_registry& targets, metrics_registry& metrics,
                                               std::string* error, rate_limiter* limiter = nullptr,
                                               std::shared_ptr<const api_key_table> keys = nullptr,
                                               const oauth_authority* oauth = nullptr,
                                               span_sink* spans = nullptr,
                                               usage_recorder* usage = nullptr);

}  // namespace meridian::node
