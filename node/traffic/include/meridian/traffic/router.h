#pragma once
// The route table: compiled once per config snapshot, then matched on every request.
//
// Semantics (SPEC.md): a route matches when every condition it gives matches; among matching
// routes the most specific wins: exact path > longest prefix > regex > no path condition; ties
// are broken by more conditions beating fewer, then by order in the config. Matching does not
// scan all routes: paths are indexed (hash for exact, a byte trie for prefixes); only regex routes
// and routes without a path condition are checked one by one.
//
// A router is immutable after build() and safe to share between threads.

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "meridian/config/config.h"

namespace meridian::node {

struct header_view {
  std::string_view name;  // as sent; compared case-insensitively
  std::string_view value;
};

// What the router looks at in a request. All views must outlive the match() call.
struct request_view {
  std::string_view method;  // as sent, e.g. "GET"
  std::string_view host;    // Host header without the port; compared case-insensitively
  std::string_view path;    // request target up to '?', percent-encoding untouched
  std::string_view query;   // after '?', without it; empty when absent
  std::span<const header_view> headers;
};

class router {
 public:
  // Compiles routes. On failure (a regex that does not compile) returns nullptr and sets *error to
  // "route NAME: message". Route indices in match() refer to positions in `routes`.
  static std::unique_ptr<router> build(const std::vector<route_config>& routes, std::string* error);

  virtual ~router() = default;

  // Returns the index of the best matching route, or -1 when none matches.
  virtual int match(const request_view& request) const = 0;
};

}  // namespace meridian::node
