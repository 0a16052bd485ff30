#pragma once
// ASCII case folding for protocol text (header names, hosts, config keywords): locale-free,
// unlike std::tolower.

#include <string>
#include <string_view>

namespace meridian::node {

inline char ascii_lower(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
}

// Returns text with A-Z folded to a-z.
inline std::string to_lower(std::string_view text) {
  std::string out(text);
  for (char& c : out) c = ascii_lower(c);
  return out;
}

}  // namespace meridian::node
