#include "meridian/common/path_normalize.h"

#include <vector>

namespace meridian::node {
namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool unreserved(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
         c == '.' || c == '_' || c == '~';
}

void append_encoded(std::string& out, unsigned char c) {
  static constexpr char hex[] = "0123456789ABCDEF";
  out += '%';
  out += hex[c >> 4];
  out += hex[c & 0xf];
}

// True when path[i..] starts a dot segment: "." or ".." followed by '/' or the end.
bool dot_segment_at(std::string_view path, size_t i) {
  if (i >= path.size() || path[i] != '.') return false;
  size_t j = i + 1;
  if (j < path.size() && path[j] == '.') ++j;
  return j == path.size() || path[j] == '/';
}

}  // namespace

const char* to_string(path_status s) {
  switch (s) {
    case path_status::ok:
      return "ok";
    case path_status::bad_percent:
      return "invalid percent-encoding in the request path";
    case path_status::escaped_slash:
      return "encoded slash or backslash in the request path";
    case path_status::nul:
      return "encoded NUL in the request path";
  }
  return "invalid request path";
}

bool path_is_normal(std::string_view path, const path_policy& policy) {
  for (size_t i = 0; i < path.size(); ++i) {
    char c = path[i];
    if (c == '%' || c == '\\') return false;
    if (c == '/' && i + 1 < path.size()) {
      if (policy.merge_slashes && path[i + 1] == '/') return false;
      if (dot_segment_at(path, i + 1)) return false;
    }
  }
  return true;
}

path_status normalize_path(std::string_view path, const path_policy& policy, std::string* out) {
  if (path_is_normal(path, policy)) {
    out->assign(path);
    return path_status::ok;
  }
  // 1. Percent-encodings: decode the unreserved, canonicalize the rest, apply the slash policy.
  std::string decoded;
  decoded.reserve(path.size());
  for (size_t i = 0; i < path.size(); ++i) {
    char c = path[i];
    if (c == '\\') {
      if (policy.escaped_slashes != escaped_slash_action::decode) {
        return path_status::escaped_slash;
      }
      decoded += '/';
      continue;
    }
    if (c != '%') {
      decoded += c;
      continue;
    }
    int hi = i + 1 < path.size() ? hex_value(path[i + 1]) : -1;
    int lo = i + 2 < path.size() ? hex_value(path[i + 2]) : -1;
    if (hi < 0 || lo < 0) return path_status::bad_percent;
    auto v = static_cast<unsigned char>(hi * 16 + lo);
    i += 2;
    if (v == 0) return path_status::nul;
    if (v == '/' || v == '\\') {
      switch (policy.escaped_slashes) {
        case escaped_slash_action::reject:
          return path_status::escaped_slash;
        case escaped_slash_action::keep:
          append_encoded(decoded, v);
          break;
        case escaped_slash_action::decode:
          decoded += '/';
          break;
      }
      continue;
    }
    if (unreserved(v)) {
      decoded += static_cast<char>(v);
    } else {
      append_encoded(decoded, v);
    }
  }

  // 2. Segments: remove dot segments (RFC 3986 section 5.2.4), merge empty ones if asked.
  std::vector<std::string_view> stack;
  bool trailing_slash = false;
  std::string_view rest(decoded);
  if (!rest.empty() && rest.front() == '/') rest.remove_prefix(1);
  for (;;) {
    size_t slash = rest.find('/');
    std::string_view part = rest.substr(0, slash);
    bool last = slash == std::string_view::npos;
    if (part == ".") {
      trailing_slash = last;
    } else if (part == "..") {
      if (!stack.empty()) stack.pop_back();
      trailing_slash = last;
    } else if (part.empty()) {
      if (last) {
        trailing_slash = true;
      } else if (!policy.merge_slashes) {
        stack.push_back(part);
        trailing_slash = false;
      }
    } else {
      stack.push_back(part);
      trailing_slash = false;
    }
    if (last) break;
    rest.remove_prefix(slash + 1);
  }
  out->clear();
  out->reserve(decoded.size());
  *out += '/';
  for (size_t i = 0; i < stack.size(); ++i) {
    if (i > 0) *out += '/';
    out->append(stack[i]);
  }
  if (trailing_slash && !stack.empty()) *out += '/';
  return path_status::ok;
}

}  // namespace meridian::node
