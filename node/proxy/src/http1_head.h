#pragma once
// HTTP/1.1 head text: the field helpers every part of the proxy shares, and the two heads the
// gateway writes, as pure functions of what the exchange decided (golden-bytes tests in
// tests/unit/proxy/http1_head_test.cc):
//   - the upstream request head: the client's fields minus hop-by-hop ones (RFC 9110 §7.6.1,
//     Connection-listed names included), Host, forwarding headers (X-Forwarded-*, Via,
//     X-Request-Id), the route's rewrites and header transforms, the verified identity;
//   - the client response head: the upstream's fields minus hop-by-hop ones, the route's
//     response transforms, rate-limit lines, X-Request-Id, framing and Connection.

#include <boost/beast/http/field.hpp>
#include <boost/regex.hpp>
#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "meridian/common/byte_buffer.h"
#include "meridian/common/http_fields.h"
#include "meridian/config/config.h"

namespace meridian::node {

namespace http = boost::beast::http;

// One header field as parsed: Beast's code for known names, and views into the receive buffer.
struct field_view {
  http::field f = http::field::unknown;
  std::string_view name;
  std::string_view value;
};

using header_pairs = std::span<const std::pair<std::string, std::string>>;

bool iequals(std::string_view a, std::string_view b);
// Returns s without leading and trailing spaces and tabs.
std::string_view trim(std::string_view s);
// True for the fields that describe one connection (RFC 9110 §7.6.1), never forwarded.
bool is_hop_by_hop(http::field f);

// True for the fields that describe an HTTP/1.1 connection and have no place in HTTP/2 (RFC 9113
// section 8.2.2): Connection, Keep-Alive, Proxy-Connection, Transfer-Encoding, Upgrade, and TE
// (which HTTP/2 allows only as "trailers": the caller keeps that one).
inline bool is_connection_specific(std::string_view name) {
  switch (name.size()) {
    case 2:
      return iequals(name, "te");
    case 7:
      return iequals(name, "upgrade");
    case 10:
      return iequals(name, "connection") || iequals(name, "keep-alive");
    case 16:
      return iequals(name, "proxy-connection");
    case 17:
      return iequals(name, "transfer-encoding");
    default:
      return false;
  }
}
// True when a client's X-Request-Id may be kept: 1..128 characters of [A-Za-z0-9._:-].
bool valid_request_id(std::string_view id);
// Appends s as a JSON string (quoted, escaped) to out.
void append_json_string(byte_buffer& out, std::string_view s);
// Appends SPEC's JSON error body: {"error":code,"message":message,"request_id":id}.
void append_error_body(byte_buffer& out, std::string_view code, std::string_view message,
                       std::string_view request_id);
// The reason phrase the gateway writes for its own answers.
const char* reason_for(int status);

constexpr size_t max_connection_tokens = 8;
// True when the comma-separated list (a Connection or Upgrade value) holds token, in any case.
bool has_token(std::string_view list, std::string_view token);
// Collects the field names listed in Connection headers (other than close and keep-alive):
// they are hop-by-hop too (RFC 9110 §7.6.1). Returns how many were stored in out.
size_t collect_connection_tokens(std::span<const field_view> fields,
                                 std::string_view (&out)[max_connection_tokens]);

// Returns the path to send upstream: `path` after the route's strip_prefix and rewrite
// (rewrite may be null). The result may point into *scratch.
std::string_view upstream_path(std::string_view path, const route_config& route,
                               const boost::regex* rewrite, std::string* scratch);

// Everything the upstream request head depends on.
struct upstream_head {
  std::string_view method;
  std::string_view path;  // already through upstream_path()
  std::string_view query;
  bool has_query = false;  // the target had a '?' (maybe with nothing after it)
  const query_transform* query_rules = nullptr;  // the route's (add, remove, rename); may be null
  std::span<const field_view> fields;            // the client's, in order
  std::span<const std::string> drop;             // lower-cased names the route removes or sets
  bool strip_authorization = false;              // the gateway consumed the credentials
  std::string_view host;                         // the Host to send
  std::string_view forwarded_host;               // the client's Host (X-Forwarded-Host)
  std::string_view client_ip;
  bool tls = false;  // the client connection (X-Forwarded-Proto)
  int version = 11;  // the client's (Via)
  std::string_view request_id;
  header_pairs set;                // the route's request_headers.set
  header_pairs add;                // the route's request_headers.add
  header_pairs identity;           // verified claims and the consumer, from authentication
  bool chunked = false;            // the body is re-chunked by the gateway
  std::string_view upgrade;        // the protocol to ask the upstream to switch to, or empty
  std::string_view websocket_key;  // a Sec-WebSocket-Key of the gateway's own, or empty
};

// Appends the request head to out. Returns how many identity headers were refused because
// they could split the head (authentication refuses such tokens first: 0 is expected).
size_t write_upstream_head(const upstream_head& h, byte_buffer& out);

// Everything the client response head depends on.
struct response_head {
  int status = 200;
  std::string_view reason;             // the upstream's; empty: the standard one
  std::span<const field_view> fields;  // the upstream's, in order
  std::span<const std::string> drop;   // lower-cased names the route removes or sets
  header_pairs set;                    // the route's response_headers.set
  header_pairs add;                    // the route's response_headers.add
  bool informational = false;          // 1xx: no framing, no gateway headers
  std::string_view rate_limit_lines;   // "RateLimit-...: v\r\n" lines, or empty
  std::string_view request_id;         // added unless the upstream sent one
  bool chunked = false;                // the gateway chunks the body towards the client
  bool content_length_zero = false;    // no body follows (and the upstream gave no length)
  std::string_view upgrade;            // a 101 switching to this protocol, or empty
  enum class connection { as_is, close, keep_alive } connection = connection::as_is;
};

// Appends the response head to out.
void write_response_head(const response_head& h, byte_buffer& out);

// True when the field `name` goes no further: listed in the Connection field (`tokens`) or
// removed or set by the route (`drop`).
bool dropped_field(std::string_view name, std::span<const std::string_view> tokens,
                   std::span<const std::string> drop);

// Calls emit(name, value) for the upstream's fields of a response head minus hop-by-hop and
// dropped ones, then the route's set and add (valid ones only). Returns whether the upstream sent
// an X-Request-Id.
template <class Emit>
bool for_each_relayed_field(const response_head& h, Emit&& emit) {
  std::string_view tokens[max_connection_tokens];
  size_t ntokens = collect_connection_tokens(h.fields, tokens);
  std::span<const std::string_view> connection_listed(tokens, ntokens);
  bool has_request_id = false;
  for (auto& f : h.fields) {
    if (is_hop_by_hop(f.f)) continue;
    if (dropped_field(f.name, connection_listed, h.drop)) continue;
    if (f.f == http::field::unknown && iequals(f.name, "x-request-id")) has_request_id = true;
    emit(f.name, f.value);
  }
  for (auto* list : {&h.set, &h.add}) {
    for (auto& [k, v] : *list)
      if (valid_field_name(k) && valid_field_value(v)) emit(k, v);
  }
  return has_request_id;
}

// Calls emit(name, value) for each field of the client response head besides its status line,
// framing and Connection, in write_response_head's order: for_each_relayed_field, then for a
// final response the rate-limit lines and X-Request-Id. For codecs that write heads of their own
// (HTTP/2).
template <class Emit>
void for_each_response_field(const response_head& h, Emit&& emit) {
  bool has_request_id = for_each_relayed_field(h, emit);
  if (h.informational) return;
  std::string_view lines = h.rate_limit_lines;  // "Name: value\r\n" each
  while (!lines.empty()) {
    size_t end = lines.find("\r\n");
    std::string_view line = lines.substr(0, end);
    lines = end == std::string_view::npos ? std::string_view() : lines.substr(end + 2);
    size_t colon = line.find(':');
    if (colon != std::string_view::npos) emit(line.substr(0, colon), trim(line.substr(colon + 1)));
  }
  if (!has_request_id) emit("X-Request-Id", h.request_id);
}

// Appends piece to a chunked body as one chunk of its own (nothing for an empty piece, which
// would end the body): the framing is the gateway's, never the sender's.
inline void append_chunk(byte_buffer& out, std::string_view piece) {
  if (piece.empty()) return;
  out.append_hex(piece.size());
  out.append("\r\n");
  out.append(piece);
  out.append("\r\n");
}

}  // namespace meridian::node
