#pragma once
// The node configuration: plain data parsed from YAML (see docs/configuration.md and SPEC.md).
//
// load_config() parses and validates a file and returns either a config or every problem found,
// each as "FILE:LINE: message". Nothing here touches the network; addresses are checked for shape
// only. The structs are copied into an immutable runtime snapshot (proxy_config.h) by the node.

#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

namespace meridian::node {

using duration = std::chrono::milliseconds;

// host:port. host may be a name, an IPv4 address or a bracketed IPv6 address ("[::1]:80").
struct address {
  std::string host;
  uint16_t port = 0;
  std::string to_string() const;
  bool operator==(const address&) const = default;
};

// Parses "250ms", "2s", "1m", "1h", "1d" (also "1.5s", "100us" is rejected). Returns nullopt on
// anything else.
std::optional<duration> parse_duration(std::string_view text);
// Parses "host:port" with a port in 1..65535 (0 allowed when allow_zero). Returns nullopt on error.
std::optional<address> parse_address(std::string_view text, bool allow_zero = false);
// Parses a byte size: "1024", "64KiB"/"64k", "10MiB"/"10m", "1GiB"/"1g". Returns nullopt on error.
std::optional<uint64_t> parse_size(std::string_view text);

using header_list = std::vector<std::pair<std::string, std::string>>;

struct node_section {
  std::string id;  // default: hostname
  std::string region;
  std::string zone;
  std::string data_dir = "./data";
  unsigned workers = 1;  // 0 = one per core (resolved by the loader)
  // Added to this node's wall clock (may be negative, e.g. "-1500ms"): skews HLC timestamps,
  // rate-limit windows and breaker deadlines, to test clock skew (chaos suite). Process-wide.
  duration clock_offset{0};
};

struct listen_section {
  address proxy{"127.0.0.1", 8080};
  address admin{"127.0.0.1", 9901};
};

struct admin_section {
  std::string token_file;  // empty: a token is generated and written to <data_dir>/admin.token
  // admin.tls: serve the admin API over TLS; with client_ca, clients must present a certificate
  // it signed (the bearer token is still required).
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  // How this node calls the other nodes' admin APIs (their /peer/... endpoints, for cluster-wide
  // views): their certificates must chain to tls_peer_ca (empty: the system's trust store), and
  // it presents tls_peer_cert/key when asked (empty: tls_cert/key).
  std::string tls_peer_ca;
  std::string tls_peer_cert;
  std::string tls_peer_key;
};

struct cluster_section {
  address bind{"127.0.0.1", 7946};
  address advertise;  // default: bind
  std::vector<address> seeds;
  std::string keyring_file;
  // Replicated state (docs/architecture.md, "Replicated state").
  duration sync_interval = std::chrono::milliseconds(100);  // delta rounds (counters, documents)
  duration max_clock_skew = std::chrono::seconds(30);  // state from clocks further ahead is refused
  // Correct this node's wall clock to the median of the members' (measured on probe acks), so
  // one skewed clock cannot shift its rate-limit windows and deadlines.
  bool clock_correction = true;
  duration tombstone_grace = std::chrono::hours(24);  // deleted documents remembered this long
  uint64_t max_counter_keys = 2'000'000;              // rate-limit counters held (LRU beyond)
};

// Protective limits for client connections (Envoy/nginx-like defaults).
struct limits_section {
  uint64_t max_header_bytes = 64 * 1024;               // 431 beyond
  uint64_t max_url_bytes = 8 * 1024;                   // 414 beyond
  uint64_t max_body_bytes = 0;                         // 0 = unlimited; routes may override (413)
  duration header_timeout = std::chrono::seconds(10);  // whole request head must arrive in it
  duration idle_timeout = std::chrono::seconds(60);    // keep-alive connection with no request
  uint32_t max_connections = 20000;                    // per node; extra connections are closed
  uint32_t max_websocket_tunnels = 10000;              // per node; further upgrades get 503
  duration websocket_idle_timeout = std::chrono::minutes(5);  // a tunnel with no bytes either way
};

// HTTP/2 towards clients: h2c with prior knowledge on the plain listener, h2 by ALPN on the TLS
// one. The defences cut a connection off with GOAWAY (ENHANCE_YOUR_CALM) and count it.
struct http2_section {
  bool enabled = true;
  uint32_t max_concurrent_streams = 256;       // SETTINGS_MAX_CONCURRENT_STREAMS
  uint64_t initial_stream_window = 64 * 1024;  // SETTINGS_INITIAL_WINDOW_SIZE
  uint64_t connection_window = 1024 * 1024;    // the connection's receive window
  uint64_t header_table_size = 4096;           // SETTINGS_HEADER_TABLE_SIZE (HPACK decoder)
  uint64_t max_frame_size = 16384;             // SETTINGS_MAX_FRAME_SIZE
  // Streams the client may reset (RST_STREAM) as a token bucket: `reset_burst` at once, refilled
  // at `resets_per_second` (rapid reset, CVE-2023-44487).
  uint32_t reset_burst = 1000;
  uint32_t resets_per_second = 33;
  // SETTINGS, PING, PRIORITY and empty DATA frames, likewise (control-frame floods).
  uint32_t control_frame_burst = 1000;
  uint32_t control_frames_per_second = 100;
  uint32_t max_continuations = 8;  // CONTINUATION frames after one HEADERS (CONTINUATION flood)
};

// How request paths are normalized before routing (RFC 3986 section 6; docs/configuration.md).
struct path_normalization_section {
  bool merge_slashes = true;               // "//a//b" -> "/a/b"
  std::string escaped_slashes = "reject";  // %2F, %5C, '\\': reject (400) | keep | decode
};

struct access_log_section {
  bool enabled = false;
  std::string path = "stdout";  // "stdout", "stderr" or a file path
};

// tracing: W3C trace context to upstreams, spans exported over OTLP/HTTP (JSON) in batches.
struct tracing_section {
  std::string otlp_endpoint;  // http(s)://host:port/v1/traces (required)
  double sampling = 1.0;      // share of new traces recorded; a caller's sampled flag is kept
  std::string service_name = "meridian";
  uint32_t batch_size = 512;  // spans per export request
  duration flush_interval = std::chrono::seconds(1);
  uint32_t max_queue = 8192;  // spans held for export; beyond, new ones are dropped (counted)
};

// analytics: usage per consumer, API key, route and API version (GET /analytics).
struct analytics_section {
  bool enabled = true;
  uint32_t max_names = 1000;  // distinct names per dimension per minute; beyond: "(other)"
};

struct log_section {
  std::string level = "info";  // trace debug info warn error critical off
  access_log_section access_log;
};

enum class balance_policy { round_robin, least_request, consistent_hash, random };

struct target_config {
  address addr;
  std::string region;
  std::string zone;
  uint32_t weight = 1;
  int line = 0;
};

struct health_check_config {
  bool enabled = false;  // true when the key is present
  std::string path = "/healthz";
  duration interval = std::chrono::seconds(1);
  duration timeout = std::chrono::milliseconds(500);
  uint32_t unhealthy_after = 2;
  uint32_t healthy_after = 2;
  std::vector<int> expect_status;  // empty: any 2xx/3xx
  // The gRPC health protocol (grpc.health.v1.Health/Check) instead of GET path, for h2/h2c
  // upstreams: healthy when the answer is SERVING for grpc_service ("" = the whole server).
  bool grpc = false;
  std::string grpc_service;
};

// Passive health: eject a target after consecutive failures (connect errors, 5xx from it).
struct outlier_config {
  uint32_t consecutive_failures = 5;  // 0 disables
  duration eject_for = std::chrono::seconds(10);
};

struct circuit_breaker_config {
  bool enabled = false;
  double failure_rate = 0.5;
  uint32_t min_requests = 10;
  duration window = std::chrono::seconds(10);
  duration open_for = std::chrono::seconds(5);
  uint32_t half_open_probes = 1;
  std::string scope = "cluster";      // local | region | cluster
  uint32_t consecutive_failures = 0;  // > 0: this many failures in a row open it too
  duration slow_call{0};              // > 0: a response head slower than this is a failure
};

struct timeouts_config {
  duration connect = std::chrono::seconds(1);
  duration request = std::chrono::seconds(15);  // until the response head arrives
  duration idle = std::chrono::seconds(60);     // pooled idle upstream connection lifetime
};

struct retries_config {
  uint32_t attempts = 0;  // extra attempts after the first
  bool on_connect_failure = true;
  bool on_timeout = false;
  std::vector<int> on_status;  // e.g. 502 503 504
  double budget_ratio = 0.2;   // retries may add at most this share of load
  uint32_t budget_min_per_s = 10;
};

struct pool_config {
  uint32_t max_idle_per_target = 64;        // per worker
  uint32_t max_connections_per_target = 0;  // per worker, 0 = unlimited
  // HTTP/2 upstreams: streams a connection carries at once before another one is opened (the
  // upstream's own SETTINGS_MAX_CONCURRENT_STREAMS caps it further).
  uint32_t max_streams_per_connection = 100;
};

// What the gateway speaks to an upstream's targets.
enum class upstream_protocol { http1, h2c, h2 };

// upstreams[].tls: TLS to the targets. Certificates are verified (against ca_file, or the
// system's store) and checked against server_name (default: the target's host) unless verify is
// false; cert and key present a client certificate.
struct upstream_tls_config {
  std::string ca_file;
  std::string server_name;
  std::string cert_file;
  std::string key_file;
  bool verify = true;
};

struct upstream_config {
  std::string name;
  std::vector<target_config> targets;
  balance_policy balance = balance_policy::round_robin;
  std::string hash_on = "ip";  // consistent_hash key: "ip" or "header:NAME"
  health_check_config health_check;
  outlier_config outlier;
  circuit_breaker_config circuit_breaker;
  timeouts_config timeouts;
  retries_config retries;
  pool_config pool;
  upstream_protocol protocol = upstream_protocol::http1;
  std::optional<upstream_tls_config> tls;  // always set for h2
  // Upstreams to try, in order, when none of this one's targets is usable.
  std::vector<std::string> failover;
  int line = 0;
};

struct match_config {
  std::optional<std::string> path;         // exact
  std::optional<std::string> path_prefix;  // segment-agnostic byte prefix
  std::optional<std::string> path_regex;   // ECMAScript, whole path must match
  std::optional<std::string> host;         // exact or "*.example.com"; case-insensitive
  std::vector<std::string> methods;        // upper case
  header_list headers;                     // name (lower case) -> exact value
  header_list query;                       // name -> exact value
};

struct header_transform {
  header_list add;  // appended (kept alongside existing)
  header_list set;  // replaces existing
  std::vector<std::string> remove;
};

struct query_transform {
  header_list add;  // name=value appended
  std::vector<std::string> remove;
  header_list rename;  // from -> to
};

struct rewrite_config {
  std::string regex;        // applied to the path after strip_prefix
  std::string replacement;  // $1..$9 captures
};

struct auth_config {
  std::vector<std::string> methods;  // api_key | jwt | oauth (tokens this cluster minted)
  std::string jwt;                   // name of a jwt provider
  header_list claims_to_headers;
  std::vector<std::string> groups;  // non-empty: the consumer must be in one of these (403)
  bool query_key = false;           // api_key may also come as ?apikey=
  // Remove the credentials (X-API-Key, Authorization) before forwarding; false passes them on
  // (an upstream that checks them itself).
  bool strip_credentials = true;
  // Requirements on the verified JWT (403 when unmet; a request authenticated otherwise cannot
  // meet them): every scope in the token's "scope" (space-separated) or "scp" (array or string),
  // and every claim equal to its value (or, for an array claim, containing it).
  std::vector<std::string> scopes;
  header_list claims;
};

// A route may carry this many rate limits at most (each request checks all of them).
inline constexpr size_t max_rate_limits_per_route = 8;

struct rate_limit_config {
  uint64_t limit = 0;
  duration window = std::chrono::minutes(1);
  std::string key = "consumer";  // consumer | ip | route | header:NAME | global
  std::string algorithm = "sliding_window";
  std::string scope = "global";  // local | region | global
  uint64_t burst = 0;  // token_bucket / leaky_bucket capacity; 0: limit (token) or 1 (leaky)
  std::string on_partition = "local_share";  // local_share | fail_open | fail_closed
  duration max_delay{0};  // > 0: hold a request up to this long for room instead of a 429
  // window: 1mo: calendar months in `timezone` (window then holds 31 days, the longest month).
  bool calendar_month = false;
  std::string timezone{};  // UTC, +HH:MM or an IANA name; only with window 1mo
  // eventual: every node decides on what it knows (leases, gossip); strict: the key's owner
  // decides (exact; one round trip to the owner), waiting at most strict_timeout for it.
  std::string mode = "eventual";
  duration strict_timeout = std::chrono::milliseconds(500);
};

// A canned answer for a route whose upstreams cannot serve (instead of 502/503/504).
struct fallback_config {
  int status = 503;
  std::string body;
  std::string content_type = "text/plain";
  std::vector<std::pair<std::string, std::string>> headers;
};

// routes[].grpc_transcode: REST calls on the route become gRPC calls (google.api.http bindings
// of a protobuf descriptor set).
struct grpc_transcode_config {
  std::string descriptor_set;  // the file it was read from (shown in GET /config); may be empty
  // The descriptor set itself, without the files libprotobuf carries (read and checked when the
  // config is loaded; config documents carry it as descriptor_set_base64, so a change made on
  // one node reaches every node with its descriptors).
  std::string descriptor_bytes;
  std::vector<std::string> services;  // empty: every annotated service of the set
  int line = 0;
};

struct route_config {
  std::string name;
  match_config match;
  std::string upstream;
  std::string strip_prefix;
  std::optional<rewrite_config> rewrite;
  header_transform request_headers;
  header_transform response_headers;
  query_transform query;
  std::optional<auth_config> auth;
  std::vector<rate_limit_config> rate_limits;  // `rate_limit` may be a map or a list
  std::optional<uint64_t> max_body_bytes;      // overrides limits.max_body_bytes
  std::optional<bool> preserve_host;           // default true: forward the client's Host
  bool websocket = false;  // pass `Upgrade: websocket` on and relay the tunnel after a 101
  // The API version the route serves ("v2"), for analytics by version; empty: none.
  std::string api_version;
  std::optional<fallback_config> fallback;
  std::optional<grpc_transcode_config> grpc_transcode;
  int line = 0;
};

struct consumer_config {
  std::string id;
  std::vector<std::string> groups;
  // As an OAuth client (its API keys are client ids): where the authorization_code grant may
  // send the browser back (exact match), and whether it is a public client (a browser or mobile
  // app that cannot keep a secret: it redeems codes and refresh tokens with client_id and PKCE
  // alone).
  std::vector<std::string> redirect_uris;
  bool public_client = false;
  int line = 0;
};

struct jwt_config {
  std::string name;
  std::string issuer;
  std::string audience;
  std::string jwks_file;
  std::string jwks_url;
  duration jwks_refresh = std::chrono::minutes(5);  // jwks_url: re-fetched this often
  std::string consumer_claim = "sub";               // the claim whose value names the consumer
  int line = 0;
};

// The gateway as an OAuth 2.0 authorization server (client_credentials). Tokens are EdDSA JWTs
// signed by the node that mints them; every node's public key spreads by gossip, so any node
// accepts them. Give every node the same section.
struct oauth_config {
  std::string issuer;    // "iss" of minted tokens (required)
  std::string audience;  // "aud"; default: issuer
  std::string token_path = "/oauth/token";
  std::string introspect_path = "/oauth/introspect";
  std::string revoke_path = "/oauth/revoke";
  std::string authorize_path = "/oauth/authorize";  // authorization_code: the consent page
  duration access_token_ttl = std::chrono::hours(1);
  duration refresh_token_ttl = std::chrono::hours(24 * 30);  // each rotation starts a new one
  // How long a token request waits for its password check (queued behind others on the
  // password thread) before it gets 503 temporarily_unavailable.
  duration password_check_timeout = std::chrono::seconds(30);
  std::vector<std::string> scopes;  // what clients may ask for (empty: no scopes)
  // Grant types the token endpoint accepts: client_credentials, password, authorization_code,
  // refresh_token (default: all four).
  std::vector<std::string> grants = {"client_credentials", "password", "authorization_code",
                                     "refresh_token"};
  int line = 0;
};

// TLS termination: a second proxy listener whose certificates are chosen by SNI. Node-local;
// SIGHUP re-reads the files (new connections get the new certificates, open ones keep theirs).
struct tls_certificate {
  std::string cert_file;           // PEM: the certificate, then its chain
  std::string key_file;            // PEM private key
  std::vector<std::string> names;  // SNI names ("*.example.com" allowed); empty: from the cert
  int line = 0;
};

struct tls_section {
  address listen{"127.0.0.1", 8443};
  std::vector<tls_certificate> certificates;  // the first is the default (no or unknown SNI)
};

struct config {
  std::string source;  // file path it was read from
  node_section node;
  listen_section listen;
  admin_section admin;
  std::optional<cluster_section> cluster;
  limits_section limits;
  path_normalization_section path_normalization;
  http2_section http2;
  log_section log;
  std::optional<tracing_section> tracing;
  analytics_section analytics;
  std::vector<upstream_config> upstreams;
  std::vector<route_config> routes;
  std::vector<consumer_config> consumers;
  std::vector<jwt_config> jwt;
  std::optional<oauth_config> oauth;
  std::optional<tls_section> tls;
};

// One problem in a config file. to_string() gives "FILE:LINE: message".
struct config_error {
  std::string file;
  int line = 0;  // 1-based; 0 when unknown
  std::string message;
  std::string to_string() const;
};

struct config_result {
  std::optional<config> value;       // set when errors is empty
  std::vector<config_error> errors;  // every problem found, in file order
};

// Reads and validates the YAML file at path. Never throws.
config_result load_config(const std::string& path);
// Parses and validates YAML text; file_name is used in error messages. Never throws.
config_result parse_config(const std::string& yaml_text, const std::string& file_name);

// Cluster-wide config documents (the admin API's /config/routes/NAME, /config/upstreams/NAME,
// /config/consumers/ID): one object each, in the YAML file's shape, as JSON text.
enum class document_kind { route, upstream, consumer };
struct config_document {
  document_kind kind;
  std::string name;  // must equal the body's name (id for consumers)
  std::string body;  // a JSON (or YAML) map
};
// "routes", "upstreams" or "consumers": the admin path segment and GET /config key.
const char* document_kind_path(document_kind k);
// The reverse: the kind a path segment names, or nullopt.
std::optional<document_kind> document_kind_from_path(std::string_view segment);

// Longest object name accepted.
inline constexpr size_t max_name_bytes = 128;
// Returns true for a valid object name (route, upstream, consumer, jwt provider, node id):
// letters, digits and - . _ ~ : @ +, 1 to max_name_bytes long, not "." or "..".
bool valid_object_name(std::string_view name);

struct compose_result {
  config cfg;
  std::vector<std::string> errors;  // "routes/NAME: message" for every problem found
};
// Returns base with its routes, upstreams and consumers replaced by those parsed from docs (in
// the order given). strict: every problem is reported in errors (a change is then refused).
// Not strict: documents with problems are left out of cfg and reported, the rest is kept, so
// that documents written concurrently on two nodes (a route whose upstream another node
// deleted) cannot stop the data plane from applying the rest. Never throws.
// Parsed documents kept between compose_config() calls, so that a change parses only the
// documents it touched (parsing was most of the cost of a config change: a PUT took 372 ms at
// 10,000 routes). Entries are keyed by kind/name and checked against the body. Thread-safe.
class document_cache {
 public:
  document_cache();
  ~document_cache();
  size_t size() const;
  struct impl;
  impl& internals() { return *impl_; }  // for compose_config

 private:
  std::unique_ptr<impl> impl_;
};

// With cache, documents parsed by an earlier call with the same body are not parsed again.
compose_result compose_config(const config& base, const std::vector<config_document>& docs,
                              bool strict, document_cache* cache = nullptr);
// Returns the errors compose_config would report (not strict), without building the config.
std::vector<std::string> compose_errors(const config& base,
                                        const std::vector<config_document>& docs,
                                        document_cache* cache = nullptr);

}  // namespace meridian::node
