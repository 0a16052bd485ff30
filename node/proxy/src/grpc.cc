#include "grpc.h"

#include "exchange.h"

namespace meridian::node {

namespace {

constexpr char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

int b64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+' || c == '-') return 62;  // the URL-safe alphabet too
  if (c == '/' || c == '_') return 63;
  return -1;
}

}  // namespace

void note_grpc_field(exchange& ex, http::field f, std::string_view name, std::string_view value) {
  if (f == http::field::content_type) {
    std::string_view ct = trim(value);
    if (ct.size() >= 16 && iequals(ct.substr(0, 16), "application/grpc")) {
      std::string_view rest = ct.substr(16);
      if (rest.empty() || rest[0] == '+' || rest[0] == ';') {
        ex.grpc = true;
      } else if (rest.size() >= 4 && iequals(rest.substr(0, 4), "-web")) {
        ex.grpc = ex.grpc_web = true;
        ex.grpc_web_text = rest.size() >= 9 && iequals(rest.substr(4, 5), "-text");
      }
    }
  } else if (f == http::field::unknown && name.size() == 12 && iequals(name, "grpc-timeout")) {
    ex.grpc_timeout_ms = parse_grpc_timeout(value);
  }
}

int grpc_status_for_http(int http_status) {
  switch (http_status) {
    case 400:
      return 13;  // INTERNAL (the specification's mapping: the request could not be read)
    case 401:
      return 16;  // UNAUTHENTICATED
    case 403:
      return 7;  // PERMISSION_DENIED
    case 404:
      return 12;  // UNIMPLEMENTED: no route for the method
    case 408:
    case 504:
      return 4;  // DEADLINE_EXCEEDED
    case 413:
    case 429:
    case 431:
      return 8;  // RESOURCE_EXHAUSTED
    case 501:
      return 12;  // UNIMPLEMENTED
    case 502:
    case 503:
      return 14;  // UNAVAILABLE
    default:
      return 2;  // UNKNOWN
  }
}

int parse_grpc_status(std::string_view value) {
  value = trim(value);
  if (value.empty() || value.size() > 3) return 2;
  int n = 0;
  for (char c : value) {
    if (c < '0' || c > '9') return 2;
    n = n * 10 + (c - '0');
  }
  return n;
}

int64_t parse_grpc_timeout(std::string_view v) {
  v = trim(v);
  if (v.size() < 2 || v.size() > 9) return 0;
  int64_t n = 0;
  for (char c : v.substr(0, v.size() - 1)) {
    if (c < '0' || c > '9') return 0;
    n = n * 10 + (c - '0');
  }
  switch (v.back()) {
    case 'H':
      return n * 3600 * 1000;
    case 'M':
      return n * 60 * 1000;
    case 'S':
      return n * 1000;
    case 'm':
      return n;
    case 'u':
      return (n + 999) / 1000;
    case 'n':
      return (n + 999999) / 1000000;
    default:
      return 0;
  }
}

void append_grpc_message(std::string& out, std::string_view message) {
  static constexpr char hex[] = "0123456789ABCDEF";
  for (unsigned char c : message) {
    if (c >= 0x20 && c <= 0x7e && c != '%') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 15]);
    }
  }
}

std::string_view grpc_content_type_for_web(std::string_view ct) {
  ct = trim(ct);
  if (ct.size() < 20 || !iequals(ct.substr(0, 20), "application/grpc-web")) return {};
  std::string_view rest = ct.substr(20);
  if (rest.size() >= 5 && iequals(rest.substr(0, 5), "-text")) rest.remove_prefix(5);
  if (rest.empty() || rest[0] == ';') return "application/grpc";
  if (iequals(rest, "+proto")) return "application/grpc+proto";
  if (iequals(rest, "+json")) return "application/grpc+json";
  return "application/grpc";
}

std::string_view web_content_type_for_grpc(std::string_view ct, bool text) {
  // As Envoy's grpc_web filter does: the message encoding the upstream named, protobuf unless
  // it said otherwise.
  ct = trim(ct);
  if (ct.size() < 16 || !iequals(ct.substr(0, 16), "application/grpc")) return {};
  bool json = iequals(ct.substr(16), "+json");
  if (text) return json ? "application/grpc-web-text+json" : "application/grpc-web-text+proto";
  return json ? "application/grpc-web+json" : "application/grpc-web+proto";
}

bool base64_stream_decoder::feed(std::string_view in, std::string& out) {
  for (char c : in) {
    if (c == '\r' || c == '\n') continue;
    if (c != '=' && b64_value(c) < 0) return false;
    group_[held_++] = c;
    if (held_ < 4) continue;
    held_ = 0;
    int v[4];
    int pad = 0;
    for (int i = 0; i < 4; ++i) {
      if (group_[i] == '=') {
        if (i < 2) return false;
        ++pad;
        v[i] = 0;
      } else {
        if (pad) return false;  // a character after padding in the same group
        v[i] = b64_value(group_[i]);
      }
    }
    uint32_t bits = static_cast<uint32_t>(v[0] << 18 | v[1] << 12 | v[2] << 6 | v[3]);
    out.push_back(static_cast<char>(bits >> 16));
    if (pad < 2) out.push_back(static_cast<char>((bits >> 8) & 0xff));
    if (pad < 1) out.push_back(static_cast<char>(bits & 0xff));
  }
  return true;
}

void base64_stream_encoder::feed(std::string_view in, std::string& out) {
  size_t i = 0;
  while (i < in.size()) {
    held_[count_++] = static_cast<unsigned char>(in[i++]);
    if (count_ < 3) continue;
    count_ = 0;
    uint32_t bits = uint32_t{held_[0]} << 16 | uint32_t{held_[1]} << 8 | held_[2];
    out.push_back(b64[bits >> 18]);
    out.push_back(b64[(bits >> 12) & 63]);
    out.push_back(b64[(bits >> 6) & 63]);
    out.push_back(b64[bits & 63]);
  }
}

void base64_stream_encoder::finish(std::string& out) {
  if (count_ == 0) return;
  uint32_t bits = uint32_t{held_[0]} << 16 | (count_ > 1 ? uint32_t{held_[1]} << 8 : 0);
  out.push_back(b64[bits >> 18]);
  out.push_back(b64[(bits >> 12) & 63]);
  out.push_back(count_ > 1 ? b64[(bits >> 6) & 63] : '=');
  out.push_back('=');
  count_ = 0;
}

void append_grpc_web_trailer_frame(std::string& out, std::span<const field_view> trailers) {
  std::string block;
  for (const auto& f : trailers) {
    for (char c : f.name) block.push_back(c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c);
    block.push_back(':');
    block.append(f.value);
    block.append("\r\n");
  }
  auto n = static_cast<uint32_t>(block.size());
  out.push_back(static_cast<char>(0x80));
  out.push_back(static_cast<char>(n >> 24));
  out.push_back(static_cast<char>((n >> 16) & 0xff));
  out.push_back(static_cast<char>((n >> 8) & 0xff));
  out.push_back(static_cast<char>(n & 0xff));
  out.append(block);
}

}  // namespace meridian::node
