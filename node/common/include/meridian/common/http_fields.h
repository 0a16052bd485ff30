#pragma once
// The one place that decides what may be written into an HTTP/1.1 head as a field, and the
// writer that enforces it. Every field the gateway writes from data it did not type itself
// (verified token claims, consumer ids, config values) goes through append_field(); the fields
// relayed from clients and upstreams are checked with valid_field_value() as they are parsed.
// A value with CR, LF, NUL or another control character would split the head (header or
// request injection), so it is never written. Pure functions: safe on any thread.

#include <string_view>

#include "meridian/common/byte_buffer.h"

namespace meridian::node {

// Returns true for an RFC 9110 token (a field name or a method).
inline bool valid_field_name(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
    if (!ok) {
      switch (c) {
        case '!':
        case '#':
        case '$':
        case '%':
        case '&':
        case '\'':
        case '*':
        case '+':
        case '-':
        case '.':
        case '^':
        case '_':
        case '`':
        case '|':
        case '~':
          break;
        default:
          return false;
      }
    }
  }
  return true;
}

// Returns true when s may be a field value (RFC 9110 section 5.5): visible characters, spaces,
// tabs and obs-text; no CR, LF, NUL or other control character.
inline bool valid_field_value(std::string_view s) {
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if ((u < 0x20 && u != '\t') || u == 0x7f) return false;
  }
  return true;
}

// Appends "name: value\r\n" to out when both are valid; otherwise writes nothing and returns
// false (the caller refuses or counts it).
inline bool append_field(byte_buffer& out, std::string_view name, std::string_view value) {
  if (!valid_field_name(name) || !valid_field_value(value)) return false;
  out.append(name);
  out.append(": ");
  out.append(value);
  out.append("\r\n");
  return true;
}

// Returns true for a Host field value (RFC 9110 section 7.2, RFC 3986 section 3.2.2): a
// reg-name or IPv4 address, or a bracketed IPv6 literal, then optionally ':' and digits. No
// userinfo ('@'), path, query or whitespace: "a.example:80@b.example" names two hosts at once
// to different parsers. Empty is allowed (HTTP/1.0 without Host).
inline bool valid_host(std::string_view s) {
  std::string_view port;
  if (!s.empty() && s.front() == '[') {
    size_t close = s.find(']');
    if (close == std::string_view::npos || close < 3) return false;
    for (char c : s.substr(1, close - 1)) {
      bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
                c == ':' || c == '.';
      if (!ok) return false;
    }
    std::string_view rest = s.substr(close + 1);
    if (rest.empty()) return true;
    if (rest.front() != ':') return false;
    port = rest.substr(1);
  } else {
    size_t colon = s.find(':');
    std::string_view name = s.substr(0, colon);
    for (char c : name) {
      bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '-' || c == '.' || c == '_' || c == '~' || c == '%' || c == '!' || c == '$' ||
                c == '&' || c == '\'' || c == '(' || c == ')' || c == '*' || c == '+' || c == ',' ||
                c == ';' || c == '=';
      if (!ok) return false;
    }
    if (colon == std::string_view::npos) return true;
    port = s.substr(colon + 1);
  }
  if (port.size() > 5) return false;
  for (char c : port) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

}  // namespace meridian::node
