#pragma once
// Standard base64 (RFC 4648 section 4, with padding) for binary blobs inside JSON and YAML
// documents (a route's descriptor set). Not for secrets or tokens (auth has base64url).

#include <cstdint>
#include <string>
#include <string_view>

namespace meridian {

inline std::string encode_base64(std::string_view in) {
  static constexpr char alphabet[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 3 <= in.size(); i += 3) {
    uint32_t v =
        uint32_t(uint8_t(in[i])) << 16 | uint32_t(uint8_t(in[i + 1])) << 8 | uint8_t(in[i + 2]);
    for (int shift : {18, 12, 6, 0}) out.push_back(alphabet[(v >> shift) & 63]);
  }
  if (size_t rest = in.size() - i) {
    uint32_t v =
        uint32_t(uint8_t(in[i])) << 16 | (rest > 1 ? uint32_t(uint8_t(in[i + 1])) << 8 : 0);
    out.push_back(alphabet[v >> 18]);
    out.push_back(alphabet[(v >> 12) & 63]);
    out.push_back(rest > 1 ? alphabet[(v >> 6) & 63] : '=');
    out.push_back('=');
  }
  return out;
}

// Decodes base64 with padding; whitespace is skipped. False on any other character, a padding in
// the wrong place or a length that is not a multiple of four.
inline bool decode_base64(std::string_view in, std::string* out) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  out->clear();
  char group[4];
  size_t n = 0;
  bool ended = false;
  for (char c : in) {
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (ended) return false;
    group[n++] = c;
    if (n < 4) continue;
    n = 0;
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      if (group[k] == '=') {
        if (k < 2) return false;
        ++pad;
        v[k] = 0;
      } else {
        if (pad) return false;
        v[k] = value(group[k]);
        if (v[k] < 0) return false;
      }
    }
    uint32_t bits = uint32_t(v[0]) << 18 | uint32_t(v[1]) << 12 | uint32_t(v[2]) << 6 | v[3];
    out->push_back(char(bits >> 16));
    if (pad < 2) out->push_back(char((bits >> 8) & 0xff));
    if (pad < 1) out->push_back(char(bits & 0xff));
    ended = pad > 0;
  }
  return n == 0;
}

}  // namespace meridian
