#include "http1_head.h"

#include <boost/beast/core/string.hpp>
#include <cctype>
#include <cstdio>

#include "meridian/common/http_fields.h"

namespace meridian::node {

bool iequals(std::string_view a, std::string_view b) {
  return boost::beast::iequals(a, b);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool is_hop_by_hop(http::field f) {
  switch (f) {
    case http::field::connection:
    case http::field::keep_alive:
    case http::field::proxy_connection:
    case http::field::te:
    case http::field::trailer:
    case http::field::transfer_encoding:
    case http::field::upgrade:
      return true;
    default:
      return false;
  }
}

void append_error_body(byte_buffer& out, std::string_view code, std::string_view message,
                       std::string_view request_id) {
  out.append("{\"error\":");
  append_json_string(out, code);
  out.append(",\"message\":");
  append_json_string(out, message);
  out.append(",\"request_id\":");
  append_json_string(out, request_id);
  out.append("}\n");
}

void append_json_string(byte_buffer& out, std::string_view s) {
  out.append('"');
  for (char c : s) {
    switch (c) {
      case '"':
        out.append("\\\"");
        break;
      case '\\':
        out.append("\\\\");
        break;
      case '\n':
        out.append("\\n");
        break;
      case '\r':
        out.append("\\r");
        break;
      case '\t':
        out.append("\\t");
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char tmp[8];
          std::snprintf(tmp, sizeof tmp, "\\u%04x", c);
          out.append(tmp);
        } else {
          out.append(c);
        }
    }
  }
  out.append('"');
}

bool valid_request_id(std::string_view id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' ||
          c == ':')) {
      return false;
    }
  }
  return true;
}

const char* reason_for(int status) {
  switch (status) {
    case 400:
      return "Bad Request";
    case 404:
      return "Not Found";
    case 408:
      return "Request Timeout";
    case 413:
      return "Content Too Large";
    case 414:
      return "URI Too Long";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 501:
      return "Not Implemented";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 505:
      return "HTTP Version Not Supported";
    default:
      return "Error";
  }
}

bool has_token(std::string_view list, std::string_view token) {
  while (!list.empty()) {
    size_t comma = list.find(',');
    if (iequals(trim(list.substr(0, comma)), token)) return true;
    if (comma == std::string_view::npos) break;
    list.remove_prefix(comma + 1);
  }
  return false;
}

size_t collect_connection_tokens(std::span<const field_view> fields,
                                 std::string_view (&out)[max_connection_tokens]) {
  size_t n = 0;
  for (auto& f : fields) {
    if (f.f != http::field::connection) continue;
    std::string_view v = f.value;
    while (!v.empty() && n < max_connection_tokens) {
      auto comma = v.find(',');
      auto tok = trim(v.substr(0, comma));
      if (!tok.empty() && !iequals(tok, "close") && !iequals(tok, "keep-alive")) out[n++] = tok;
      v = comma == std::string_view::npos ? std::string_view() : v.substr(comma + 1);
    }
  }
  return n;
}

std::string_view upstream_path(std::string_view path, const route_config& route,
                               const boost::regex* rewrite, std::string* scratch) {
  std::string_view out = path;
  const auto& prefix = route.strip_prefix;
  if (!prefix.empty() && out.substr(0, prefix.size()) == prefix) {
    out.remove_prefix(prefix.size());
    if (out.empty() || out.front() != '/') {
      scratch->reserve(out.size() + 1);
      *scratch = "/";
      scratch->append(out);
      out = *scratch;
    }
  }
  if (rewrite) {
    // Boost.Regex reports runaway matches as exceptions; a failed rewrite leaves the path as is.
    try {
      *scratch = boost::regex_replace(std::string(out), *rewrite, route.rewrite->replacement,
                                      boost::format_first_only);
      out = *scratch;
    } catch (const std::exception&) {
    }
  }
  return out;
}

bool dropped_field(std::string_view name, std::span<const std::string_view> tokens,
                   std::span<const std::string> drop) {
  for (auto t : tokens)
    if (iequals(name, t)) return true;
  for (const auto& d : drop)
    if (iequals(name, d)) return true;
  return false;
}

namespace {

void append_line(byte_buffer& out, std::string_view name, std::string_view value) {
  out.append(name);
  out.append(": ");
  out.append(value);
  out.append("\r\n");
}

void append_query(byte_buffer& out, const upstream_head& h) {
  const query_transform* qt = h.query_rules;
  if (!qt || (qt->add.empty() && qt->remove.empty() && qt->rename.empty())) {
    if (h.has_query) {
      out.append('?');
      out.append(h.query);
    }
    return;
  }
  bool first = true;
  auto emit = [&](std::string_view k, std::string_view v, bool has_value) {
    out.append(first ? '?' : '&');
    first = false;
    out.append(k);
    if (has_value) {
      out.append('=');
      out.append(v);
    }
  };
  std::string_view q = h.query;
  while (!q.empty()) {
    auto amp = q.find('&');
    auto pair = q.substr(0, amp);
    q = amp == std::string_view::npos ? std::string_view() : q.substr(amp + 1);
    if (pair.empty()) continue;
    auto eq = pair.find('=');
    auto key = pair.substr(0, eq);
    auto val = eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
    bool removed = false;
    for (auto& r : qt->remove) removed |= (r == key);
    if (removed) continue;
    for (auto& [from, to] : qt->rename) {
      if (from == key) {
        key = to;
        break;
      }
    }
    emit(key, val, eq != std::string_view::npos);
  }
  for (auto& [k, v] : qt->add) emit(k, v, true);
}

}  // namespace

size_t write_upstream_head(const upstream_head& h, byte_buffer& out) {
  out.append(h.method);
  out.append(' ');
  out.append(h.path);
  append_query(out, h);
  out.append(" HTTP/1.1\r\n");

  std::string_view tokens[max_connection_tokens];
  size_t ntokens = collect_connection_tokens(h.fields, tokens);
  std::span<const std::string_view> connection_listed(tokens, ntokens);
  std::string_view xff, via;
  bool has_xff = false, has_via = false;
  for (auto& f : h.fields) {
    if (is_hop_by_hop(f.f)) continue;
    if (f.f == http::field::host || f.f == http::field::proxy_authorization) continue;
    if (f.f == http::field::authorization && h.strip_authorization) continue;
    if (f.f == http::field::via) {
      // Several Via fields: pass the earlier ones on, fold ours into the last.
      if (has_via) append_line(out, "Via", via);
      via = f.value;
      has_via = true;
      continue;
    }
    if (f.f == http::field::unknown) {
      if (iequals(f.name, "x-forwarded-for")) {
        if (has_xff) append_line(out, "X-Forwarded-For", xff);
        xff = f.value;
        has_xff = true;
        continue;
      }
      // The gateway writes these itself.
      if (iequals(f.name, "x-request-id") || iequals(f.name, "x-forwarded-proto") ||
          iequals(f.name, "x-forwarded-host")) {
        continue;
      }
    }
    if (dropped_field(f.name, connection_listed, h.drop)) continue;
    append_line(out, f.name, f.value);
  }
  out.append("Host: ");
  out.append(h.host);
  out.append("\r\nX-Forwarded-For: ");
  if (has_xff) {
    out.append(xff);
    out.append(", ");
  }
  out.append(h.client_ip);
  out.append(h.tls ? std::string_view("\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: ")
                   : std::string_view("\r\nX-Forwarded-Proto: http\r\nX-Forwarded-Host: "));
  out.append(h.forwarded_host);
  out.append("\r\nVia: ");
  if (has_via) {
    out.append(via);
    out.append(", ");
  }
  out.append(h.version == 10   ? "1.0 meridian\r\nX-Request-Id: "
             : h.version == 20 ? "2 meridian\r\nX-Request-Id: "
                               : "1.1 meridian\r\nX-Request-Id: ");
  out.append(h.request_id);
  out.append("\r\n");
  for (auto& [k, v] : h.set) append_field(out, k, v);
  for (auto& [k, v] : h.add) append_field(out, k, v);
  size_t refused = 0;
  for (auto& [k, v] : h.identity) refused += !append_field(out, k, v);
  if (h.chunked) out.append("Transfer-Encoding: chunked\r\n");
  if (!h.upgrade.empty()) {
    out.append("Connection: Upgrade\r\nUpgrade: ");
    out.append(h.upgrade);
    out.append("\r\n");
  }
  if (!h.websocket_key.empty()) {
    out.append("Sec-WebSocket-Key: ");
    out.append(h.websocket_key);
    out.append("\r\n");
  }
  out.append("\r\n");
  return refused;
}

void write_response_head(const response_head& h, byte_buffer& out) {
  out.append("HTTP/1.1 ");
  out.append_decimal(static_cast<uint64_t>(h.status));
  out.append(' ');
  out.append(h.reason.empty() ? std::string_view(reason_for(h.status)) : h.reason);
  out.append("\r\n");
  bool has_request_id = for_each_relayed_field(
      h, [&](std::string_view name, std::string_view value) { append_line(out, name, value); });
  if (!h.informational) {
    out.append(h.rate_limit_lines);
    if (!has_request_id) append_line(out, "X-Request-Id", h.request_id);
    if (h.chunked) out.append("Transfer-Encoding: chunked\r\n");
    if (h.content_length_zero) out.append("Content-Length: 0\r\n");
    if (h.connection == response_head::connection::close) {
      out.append("Connection: close\r\n");
    } else if (h.connection == response_head::connection::keep_alive) {
      out.append("Connection: keep-alive\r\n");
    }
    if (!h.upgrade.empty()) {
      out.append("Connection: Upgrade\r\nUpgrade: ");
      out.append(h.upgrade);
      out.append("\r\n");
    }
  }
  out.append("\r\n");
}

}  // namespace meridian::node
