#pragma once
// One request and its answer, as the proxy handles it: the request head (views into the
// connection's receive buffer), what the stages decided (route, consumer, identity headers,
// rate-limit lines, a local answer), the upstream attempt and the response head facts.
//
// A session holds one exchange and starts each request on a new one (exchange::renew): nothing
// of a request survives into the next. Per-request text that most requests carry is held
// inline (the request id) and byte buffers that outlive one request (the retry copy of the
// head) belong to the session, so renewing allocates nothing. Touched only on the session's
// worker thread.

#include <algorithm>
#include <array>
#include <boost/beast/http/verb.hpp>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "http1_head.h"
#include "meridian/auth/oauth.h"
#include "meridian/proxy/snapshot.h"
#include "meridian/transcode/transcoder.h"

namespace meridian::node {

// Text of at most N bytes held inline, without a heap block (the request id: 36 bytes when
// generated, up to 128 when a client's valid one is kept). Longer input is cut at N.
template <size_t N>
class inline_text {
 public:
  void assign(std::string_view s) {
    size_ = std::min(s.size(), N);
    std::memcpy(buf_, s.data(), size_);
  }
  void assign(const char* p, size_t n) { assign(std::string_view(p, n)); }
  std::string_view view() const { return {buf_, size_}; }
  bool empty() const { return size_ == 0; }
  operator std::string_view() const { return view(); }

 private:
  char buf_[N];  // only the first size_ bytes are ever read
  size_t size_ = 0;
};

struct exchange {
  // Ends this exchange and starts the next one in its place: destroyed and default-constructed
  // (no per-field list to keep in step with the members; no zeroing of the inline buffers).
  static void renew(exchange& ex) {
    ex.~exchange();
    new (&ex) exchange;
  }

  // --- the connection it came on
  std::string_view client_ip;  // the peer's address (the session's, looked up once)
  bool tls = false;            // the TLS listener

  // --- the request head, as parsed (views into the receive buffer while the head is handled)
  http::verb verb = http::verb::unknown;
  std::string_view method;
  std::string_view request_target;
  int version = 11;
  std::span<const field_view> fields;
  std::string_view host;        // the Host field
  std::string_view path;        // normalized (RFC 3986 section 6), without the query
  std::string_view query;       // after '?', without it
  bool has_query = false;       // the target had a '?'
  std::string_view authority;   // Host, or the absolute-form target's authority
  std::string_view host_only;   // authority without the port
  std::string normalized_path;  // owns path when normalization changed it
  int content_length_count = 0;
  int transfer_encoding_count = 0;
  int host_count = 0;
  std::optional<uint64_t> content_length;
  bool chunked = false;
  bool has_body = false;
  bool request_done = false;        // the whole request (body included) has been read
  bool body_started = false;        // body bytes have been taken from the receive buffer
  bool upgrade_websocket = false;   // an Upgrade field lists websocket
  bool connection_upgrade = false;  // a Connection field lists upgrade
  bool wants_websocket = false;     // both, on a bodiless HTTP/1.1 GET (RFC 6455 section 4.1)
  // An HTTP/2 extended CONNECT for websocket (RFC 8441): a tunnel or nothing. It carries no
  // Sec-WebSocket-Key: the call makes one for the HTTP/1.1 upgrade.
  bool extended_connect = false;
  uint64_t body_bytes = 0;
  std::chrono::steady_clock::time_point started;
  inline_text<128> request_id;
  std::string access_method;  // kept for the access log once the head is gone
  std::string access_path;

  // --- what the stages decided
  const route_runtime* route = nullptr;
  const upstream_runtime* upstream = nullptr;  // the route's, or one of its failover chain
  std::string consumer;                        // the authenticated consumer, or empty
  std::string api_key_id;                      // the API key that authenticated it, or empty
  std::shared_ptr<const jwt_result> verified_jwt;
  std::vector<std::pair<std::string, std::string>> identity_headers;  // verified claims to forward
  bool strip_authorization = false;  // the gateway consumed the Authorization credentials
  std::string rate_limit_headers;    // "RateLimit-...: v\r\n" lines for the answer, or empty
  std::string hash_key;              // the consistent-hash input
  std::string upstream_path;         // owns the upstream path when a transform changed it
  // A local answer (a stage responded): status, code and message of the JSON error body.
  int local_status = 0;
  const char* local_code = "";
  const char* local_message = "";
  std::string local_message_storage;  // owns local_message when it is built per request
  std::string www_authenticate;       // for a 401 answer
  // A whole local reply with a body of its own, in place of the JSON error when status is set
  // (the OAuth endpoints' answers).
  struct reply {
    int status = 0;
    std::string content_type;
    std::string body;
    std::vector<std::pair<std::string, std::string>> headers;
  } local_reply;
  // A request to one of the OAuth endpoints: what the endpoint stage keeps until the body is in.
  oauth_authority::request oauth;

  // --- gRPC (content-type application/grpc...): the gateway's own errors are trailers-only
  // responses with a grpc-status; gRPC-Web (application/grpc-web...) goes upstream as gRPC.
  bool grpc = false;
  bool grpc_web = false;
  bool grpc_web_text = false;   // application/grpc-web-text: base64 both ways
  int64_t grpc_timeout_ms = 0;  // the client's grpc-timeout, 0 if none
  int grpc_status = -1;         // the answer's grpc-status, -1 until known
  // A REST call the route's grpc_transcode turns into a gRPC call (stages/grpc_transcode.cc).
  struct transcode_job {
    const transcode::transcoder* transcoder = nullptr;
    transcode::binding_match match;
    uint64_t max_body = 0;
    std::string body;        // the JSON request body as it arrives
    std::string frame;       // the gRPC request message, framed
    bool streaming = false;  // server streaming: a JSON line per message, as they come
    transcode::frame_reader reader{4 * 1024 * 1024};
    std::string message;  // scratch: one response message
    std::string json;     // the unary response's JSON, until the status is known
    bool got_message = false;
    bool ended = false;  // the status was acted on
    std::string grpc_message;
    std::string length;              // the unary response's Content-Length
    std::vector<field_view> fields;  // the client response head's fields
  };
  std::unique_ptr<transcode_job> transcode;

  // --- tracing (stages/tracing.cc): the trace this exchange belongs to, its span, and the span
  // of its upstream call (the parent the upstream sees in traceparent).
  struct trace_state {
    std::array<uint8_t, 16> trace_id{};
    uint64_t span_id = 0;
    uint64_t parent_id = 0;  // the caller's span, 0 when the trace starts here
    uint64_t upstream_span_id = 0;
    bool sampled = false;
    bool active = false;  // tracing is on for this exchange
    int64_t start_unix_ns = 0;
  } trace;

  // --- the upstream attempt
  uint32_t attempts = 0;
  std::chrono::steady_clock::time_point upstream_started;  // this attempt's dispatch
  int64_t upstream_us = -1;  // from the last attempt's dispatch to its response head
  bool reused_connection = false;
  bool counted_active = false;
  bool retry_now = false;
  bool probe = false;              // this attempt is a half-open breaker probe
  bool upstream_prepared = false;  // the call wrote the upstream head: body goes to it
  bool websocket = false;  // the upstream was asked to upgrade (the route has websocket: true)
  bool tunnel = false;     // ... and answered 101: bytes are relayed both ways from then on
  const target_state* exclude = nullptr;
  target_state* target = nullptr;
  const upstream_target* picked = nullptr;  // target as the snapshot configures it (endpoint)

  // --- the response head
  int status = 0;
  std::string_view reason;
  int response_version = 11;
  int response_content_length_count = 0;
  int response_transfer_encoding_count = 0;
  bool response_head_sent = false;
  bool response_malformed = false;
  bool response_chunked = false;        // the gateway chunks the body towards the client
  bool response_bodyless = false;       // the upstream ended the stream with its head (HTTP/2)
  bool response_trailers_sent = false;  // the chunked body's end went out with trailers
  bool upstream_keep_alive = true;
  uint64_t response_bytes = 0;
};

// Notes what a request field says about gRPC (content-type, grpc-timeout) in ex.
void note_grpc_field(exchange& ex, http::field f, std::string_view name, std::string_view value);

}  // namespace meridian::node
