#include "meridian/common/tracing.h"

namespace meridian {
namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;  // upper case is invalid in traceparent
}

bool read_hex(std::string_view s, uint8_t* out) {
  for (size_t i = 0; i < s.size(); i += 2) {
    int hi = hex_value(s[i]), lo = hex_value(s[i + 1]);
    if (hi < 0 || lo < 0) return false;
    out[i / 2] = static_cast<uint8_t>(hi << 4 | lo);
  }
  return true;
}

}  // namespace

std::optional<trace_context> parse_traceparent(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  if (v.size() < 55 || v[2] != '-' || v[35] != '-' || v[52] != '-') return std::nullopt;
  uint8_t version;
  if (!read_hex(v.substr(0, 2), &version) || version == 0xff) return std::nullopt;
  if (version == 0 && v.size() != 55) return std::nullopt;
  if (version != 0 && v.size() > 55 && v[55] != '-') return std::nullopt;
  trace_context t;
  uint8_t parent[8], flags;
  if (!read_hex(v.substr(3, 32), t.trace_id.data()) || !read_hex(v.substr(36, 16), parent) ||
      !read_hex(v.substr(53, 2), &flags)) {
    return std::nullopt;
  }
  bool zero_trace = true;
  for (uint8_t b : t.trace_id) zero_trace &= b == 0;
  for (uint8_t b : parent) t.parent_id = t.parent_id << 8 | b;
  if (zero_trace || t.parent_id == 0) return std::nullopt;
  t.sampled = (flags & 1) != 0;
  return t;
}

std::string hex_id(const uint8_t* bytes, size_t n) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = digits[bytes[i] >> 4];
    out[2 * i + 1] = digits[bytes[i] & 15];
  }
  return out;
}

std::string hex_span(uint64_t id) {
  uint8_t bytes[8];
  for (int i = 7; i >= 0; --i, id >>= 8) bytes[i] = static_cast<uint8_t>(id & 0xff);
  return hex_id(bytes, 8);
}

std::string format_traceparent(const std::array<uint8_t, 16>& trace_id, uint64_t span_id,
                               bool sampled) {
  return "00-" + hex_id(trace_id.data(), 16) + "-" + hex_span(span_id) + (sampled ? "-01" : "-00");
}

}  // namespace meridian
