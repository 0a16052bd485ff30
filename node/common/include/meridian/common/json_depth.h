#pragma once
// A nesting guard for JSON from the network. nlohmann::json parses iteratively, but copying,
// comparing, dumping and walking a parsed document recurse once per level: a 200 KB body of
// '[' killed the node by stack overflow. Call json_too_deep() before parsing untrusted text.

#include <cstddef>
#include <string_view>

namespace meridian::node {

// Deepest nesting accepted from admin bodies, tokens and replicated documents.
inline constexpr size_t max_json_depth = 64;

// Returns true when `text` opens more than max_depth arrays or objects inside each other
// (brackets inside strings do not count). Does not validate the JSON otherwise.
inline bool json_too_deep(std::string_view text, size_t max_depth = max_json_depth) {
  size_t depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > max_depth) return true;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return false;
}

}  // namespace meridian::node
