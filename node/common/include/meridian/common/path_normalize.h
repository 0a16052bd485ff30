#pragma once
// Request path normalization (RFC 3986 section 6), applied before routing so that a route's
// auth cannot be bypassed by spelling its path differently (/pub/../priv, /%70riv, //priv,
// /pub/%2e%2e/priv), and so that the upstream receives the path the route matched.
//
// What it does, in order: validates percent-encodings; decodes the unreserved characters
// (ALPHA DIGIT - . _ ~) and upper-cases the hex digits of the rest; applies the policy for
// encoded slashes (%2F) and backslashes (%5C or a raw '\'); removes dot segments
// (RFC 3986 section 5.2.4); merges runs of slashes when asked. The query is not touched.
// Pure functions: safe on any thread.

#include <cstdint>
#include <string>
#include <string_view>

namespace meridian::node {

// What to do with an encoded slash or a backslash in a path (Envoy's
// path_with_escaped_slashes_action): a path segment containing one means different things to
// different upstreams, so refusing is the safe default.
enum class escaped_slash_action : uint8_t {
  reject,  // 400
  keep,    // forward "%2F" / "%5C" unchanged (upper-cased); a raw '\' is still refused
  decode,  // treat it as '/', then normalize again
};

struct path_policy {
  bool merge_slashes = true;  // "//a///b" -> "/a/b" (nginx's merge_slashes)
  escaped_slash_action escaped_slashes = escaped_slash_action::reject;
};

enum class path_status : uint8_t {
  ok,
  bad_percent,    // "%" not followed by two hex digits
  escaped_slash,  // %2F, %5C or '\' under escaped_slash_action::reject
  nul,            // %00
};

// Returns a short English reason for a status other than ok.
const char* to_string(path_status s);

// Normalizes `path` (origin-form, starting with '/', without the query). Returns ok and sets
// *out to the normalized path, or leaves *out unspecified and returns why the path is refused.
// When the path is already normal (the common case) *out is simply a copy.
path_status normalize_path(std::string_view path, const path_policy& policy, std::string* out);

// Returns true when `path` needs no normalization under `policy` (no '%', no '\', no dot
// segment, no repeated slash): the fast path, which allocates nothing.
bool path_is_normal(std::string_view path, const path_policy& policy);

}  // namespace meridian::node
