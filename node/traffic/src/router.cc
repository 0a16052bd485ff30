// The compiled route table behind router::build (see router.h for the contract).
//
// Layout. Routes are copied into `routes_` sorted by rank: more conditions first, then config
// order. A route's position there (its "slot") is therefore its tie-break order, and every
// candidate list below holds slots in ascending order.
//
// Matching walks one radix tree (`paths_`) along the request path once. A node whose key equals
// the whole path yields the exact-path candidates; every node passed on the way that carries
// prefix routes is a prefix candidate set, visited deepest (longest prefix) first through
// `fallback` links. Regex routes sit in a second radix tree keyed by the literal text their
// pattern must start with, so a request only runs the regexes whose literal prefix it has.
// Routes without a path condition are a plain list. Candidates are tested in specificity order
// and the first one whose remaining conditions all hold wins, so the search stops early.
//
// Exact paths share the prefix tree instead of living in a separate hash map: the walk is needed
// for prefixes anyway and reaches the exact key for free, which saves hashing the path.
//
// Regexes use Boost.Regex (header-only, ECMAScript syntax) rather than std::regex: libstdc++'s
// std::regex matches recursively and overflows the stack on long paths (a 20 KB path against
// "/(a|b)*" crashes it), while Boost's matcher is iterative, bounds its work, and is faster.

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include <boost/regex.hpp>

#include "meridian/common/ascii.h"
#include "meridian/traffic/router.h"

namespace meridian::node {
namespace {

// Returns true when a and b are equal ignoring ASCII case.
bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (ascii_lower(a[i]) != ascii_lower(b[i])) return false;
  }
  return true;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Returns true when the raw query component equals `expected` byte for byte, or once %XX escapes
// and '+' (a form-encoded space) are decoded. Decodes on the fly, without allocating.
bool query_component_equals(std::string_view raw, std::string_view expected) {
  if (raw == expected) return true;
  size_t j = 0;
  for (size_t i = 0; i < raw.size(); ++j) {
    if (j == expected.size()) return false;
    char c = raw[i];
    if (c == '+') {
      c = ' ';
      ++i;
    } else if (c == '%' && i + 2 < raw.size() && hex_value(raw[i + 1]) >= 0 &&
               hex_value(raw[i + 2]) >= 0) {
      c = static_cast<char>(hex_value(raw[i + 1]) * 16 + hex_value(raw[i + 2]));
      i += 3;
    } else {
      ++i;
    }
    if (c != expected[j]) return false;
  }
  return j == expected.size();
}

// Returns true when the query string (a=b&c=d, without '?') has parameter `name` with `value`.
// A repeated parameter matches when any of its values does; "flag" alone has the value "".
bool query_has(std::string_view query, std::string_view name, std::string_view value) {
  size_t pos = 0;
  while (pos <= query.size()) {
    size_t amp = query.find('&', pos);
    if (amp == std::string_view::npos) amp = query.size();
    std::string_view pair = query.substr(pos, amp - pos);
    if (!pair.empty()) {
      size_t eq = pair.find('=');
      std::string_view raw_name = pair.substr(0, eq);
      std::string_view raw_value =
          eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1);
      if (query_component_equals(raw_name, name) && query_component_equals(raw_value, value)) {
        return true;
      }
    }
    pos = amp + 1;
  }
  return false;
}

std::string_view strip_trailing_dot(std::string_view host) {
  if (!host.empty() && host.back() == '.') host.remove_suffix(1);
  return host;
}

// A host condition: absent, an exact name, or "*<suffix>" which needs at least one byte before
// the suffix ("*.example.com" matches a.example.com and a.b.example.com, not example.com).
struct host_rule {
  enum class kind : uint8_t { any, exact, suffix };
  kind type = kind::any;
  std::string value;  // lower case, without a trailing dot; for suffix, the part after '*'

  static host_rule parse(std::string_view pattern) {
    host_rule rule;
    pattern = strip_trailing_dot(pattern);
    if (!pattern.empty() && pattern.front() == '*') {
      rule.type = kind::suffix;
      rule.value = to_lower(pattern.substr(1));
    } else {
      rule.type = kind::exact;
      rule.value = to_lower(pattern);
    }
    return rule;
  }

  // `host` has no port and no trailing dot.
  bool matches(std::string_view host) const {
    switch (type) {
      case kind::any:
        return true;
      case kind::exact:
        return iequals(host, value);
      case kind::suffix:
        return host.size() > value.size() &&
               iequals(host.substr(host.size() - value.size()), value);
    }
    return false;
  }
};

// Returns true when the whole path matches. A match Boost gives up on (too complex, out of its
// own stack budget) counts as no match: the data path never throws.
bool regex_matches(const boost::regex& re, std::string_view path) {
  try {
    return boost::regex_match(path.data(), path.data() + path.size(), re, boost::match_default);
  } catch (const std::exception&) {
    return false;
  }
}

// Returns the literal text every path matching the ECMAScript pattern `re` must start with.
// Conservative: stops at the first construct it does not fully understand, and gives "" for
// any pattern with an alternation anywhere.
std::string regex_literal_prefix(std::string_view re) {
  if (re.find('|') != std::string_view::npos) return {};
  std::string out;
  size_t i = 0;
  if (i < re.size() && re[i] == '^') ++i;
  while (i < re.size()) {
    char c = re[i];
    char literal;
    if (c == '\\') {
      if (i + 1 >= re.size()) break;
      // Only escaped punctuation is a literal: \d, \b, \1, \Q are classes, assertions,
      // references or quoting, and Boost reads \< \> \` \' as word and buffer assertions.
      char next = re[i + 1];
      if (next == '\0' || std::strchr("/.-_~!$&()*+,;=:@[]{}|?^\\%#\" ", next) == nullptr) break;
      literal = next;
      i += 2;
    } else if (std::strchr(".[]{}()*+?^$", c) != nullptr) {
      break;
    } else {
      literal = c;
      ++i;
    }
    if (i < re.size()) {
      char q = re[i];
      if (q == '*' || q == '?' || q == '{') break;  // the literal is optional: leave it out
      if (q == '+') {
        out.push_back(literal);  // at least once
        break;
      }
    }
    out.push_back(literal);
  }
  return out;
}

// A radix tree over byte strings. Each key carries two lists of route slots: routes whose path
// must equal the walked string ("exact") and routes for which the key must be a prefix of it.
// Immutable after build(); walk() does not allocate.
class prefix_index {
 public:
  struct key_lists {
    std::vector<uint32_t> exact;
    std::vector<uint32_t> prefix;
  };

  struct walk_result {
    int32_t exact_node = -1;           // node whose key equals the string, if it has exact routes
    int32_t deepest_prefix_node = -1;  // longest key that is a prefix and has prefix routes
  };

  // Builds the tree of keys (views that need to live only through the call).
  void build(const std::unordered_map<std::string_view, key_lists>& keys) {
    std::vector<std::pair<std::string_view, const key_lists*>> sorted;
    sorted.reserve(keys.size());
    for (const auto& [key, lists] : keys) sorted.emplace_back(key, &lists);
    std::sort(sorted.begin(), sorted.end());  // bytewise: string_view compares as unsigned char
    nodes_.clear();
    first_byte_.clear();
    labels_.clear();
    slots_.clear();
    nodes_.push_back(node{});
    first_byte_.push_back(0);
    fill(0, sorted, 0, sorted.size(), 0, -1);
  }

  // Walks `s` from the root as far as the tree follows it.
  walk_result walk(std::string_view s) const {
    walk_result result;
    if (nodes_.empty()) return result;
    uint32_t n = 0;
    size_t pos = 0;
    if (has_prefix(nodes_[0])) result.deepest_prefix_node = 0;
    for (;;) {
      if (pos == s.size()) {
        if (nodes_[n].exact_begin != nodes_[n].exact_end)
          result.exact_node = static_cast<int32_t>(n);
        break;
      }
      int32_t child = find_child(nodes_[n], static_cast<uint8_t>(s[pos]));
      if (child < 0) break;
      const node& c = nodes_[child];
      if (s.size() - pos < c.label_len ||
          std::memcmp(s.data() + pos, labels_.data() + c.label_begin, c.label_len) != 0) {
        break;
      }
      pos += c.label_len;
      n = static_cast<uint32_t>(child);
      if (has_prefix(c)) result.deepest_prefix_node = child;
    }
    return result;
  }

  std::span<const uint32_t> exact(int32_t n) const {
    const node& nd = nodes_[n];
    return {slots_.data() + nd.exact_begin, slots_.data() + nd.exact_end};
  }
  std::span<const uint32_t> prefix(int32_t n) const {
    const node& nd = nodes_[n];
    return {slots_.data() + nd.prefix_begin, slots_.data() + nd.prefix_end};
  }
  // Returns the nearest proper ancestor of n that has prefix routes, or -1.
  int32_t fallback(int32_t n) const { return nodes_[n].fallback; }

 private:
  struct node {
    uint32_t label_begin = 0;  // edge label from the parent, in labels_
    uint32_t label_len = 0;
    uint32_t children_begin = 0;  // children are contiguous in nodes_, sorted by first byte
    uint32_t children_count = 0;
    uint32_t exact_begin = 0, exact_end = 0;  // in slots_
    uint32_t prefix_begin = 0, prefix_end = 0;
    int32_t fallback = -1;
  };

  static bool has_prefix(const node& n) { return n.prefix_begin != n.prefix_end; }

  int32_t find_child(const node& n, uint8_t byte) const {
    const uint8_t* begin = first_byte_.data() + n.children_begin;
    const uint8_t* end = begin + n.children_count;
    const uint8_t* it;
    if (n.children_count <= 8) {
      it = std::find(begin, end, byte);
    } else {
      it = std::lower_bound(begin, end, byte);
    }
    if (it == end || *it != byte) return -1;
    return static_cast<int32_t>(n.children_begin + (it - begin));
  }

  // Fills node n from sorted[lo, hi): keys that all share their first `depth` bytes, which are
  // the path to n. `inherited` is the nearest ancestor with prefix routes.
  void fill(uint32_t n, const std::vector<std::pair<std::string_view, const key_lists*>>& sorted,
            size_t lo, size_t hi, size_t depth, int32_t inherited) {
    nodes_[n].fallback = inherited;
    if (lo < hi && sorted[lo].first.size() == depth) {
      const key_lists& lists = *sorted[lo].second;
      nodes_[n].exact_begin = static_cast<uint32_t>(slots_.size());
      slots_.insert(slots_.end(), lists.exact.begin(), lists.exact.end());
      nodes_[n].exact_end = static_cast<uint32_t>(slots_.size());
      nodes_[n].prefix_begin = static_cast<uint32_t>(slots_.size());
      slots_.insert(slots_.end(), lists.prefix.begin(), lists.prefix.end());
      nodes_[n].prefix_end = static_cast<uint32_t>(slots_.size());
      ++lo;
    }
    int32_t child_inherited = has_prefix(nodes_[n]) ? static_cast<int32_t>(n) : inherited;

    // Group the remaining keys by their next byte; each group becomes one child whose label runs
    // to the group's longest common prefix (first and last key suffice: the keys are sorted).
    std::vector<std::tuple<size_t, size_t, size_t>> groups;  // lo, hi, depth after the label
    for (size_t i = lo; i < hi;) {
      char byte = sorted[i].first[depth];
      size_t j = i + 1;
      while (j < hi && sorted[j].first[depth] == byte) ++j;
      std::string_view first = sorted[i].first;
      std::string_view last = sorted[j - 1].first;
      size_t common = depth + 1;
      while (common < first.size() && common < last.size() && first[common] == last[common]) {
        ++common;
      }
      groups.emplace_back(i, j, common);
      i = j;
    }

    uint32_t first_child = static_cast<uint32_t>(nodes_.size());
    nodes_[n].children_begin = first_child;
    nodes_[n].children_count = static_cast<uint32_t>(groups.size());
    for (const auto& [glo, ghi, gdepth] : groups) {
      std::string_view label = sorted[glo].first.substr(depth, gdepth - depth);
      node child;
      child.label_begin = static_cast<uint32_t>(labels_.size());
      child.label_len = static_cast<uint32_t>(label.size());
      labels_.append(label);
      nodes_.push_back(child);
      first_byte_.push_back(static_cast<uint8_t>(label.front()));
    }
    for (size_t k = 0; k < groups.size(); ++k) {
      const auto& [glo, ghi, gdepth] = groups[k];
      fill(first_child + static_cast<uint32_t>(k), sorted, glo, ghi, gdepth, child_inherited);
    }
  }

  std::vector<node> nodes_;          // nodes_[0] is the root (the empty key)
  std::vector<uint8_t> first_byte_;  // first byte of each node's label, parallel to nodes_
  std::string labels_;
  std::vector<uint32_t> slots_;
};

enum class path_kind : uint8_t { exact, prefix, regex, none };

// One route, compiled. The path condition the route is indexed by is not re-checked; any other
// path condition given alongside it is ("extra_prefix", "regex").
struct compiled_route {
  int index = 0;  // position in the config
  uint32_t conditions = 0;
  path_kind kind = path_kind::none;
  host_rule host;
  std::vector<std::string> methods;
  header_list headers;  // names lower case
  header_list query;
  std::optional<std::string> extra_prefix;
  std::optional<boost::regex> regex;
  std::string regex_literal;  // text every path matching `regex` starts with
};

// The router implementation. Immutable after compile(); match() may be called from any thread.
class compiled_router final : public router {
 public:
  static std::unique_ptr<router> compile(const std::vector<route_config>& routes,
                                         std::string* error) {
    auto out = std::make_unique<compiled_router>();
    std::vector<compiled_route> compiled;
    compiled.reserve(routes.size());
    for (size_t i = 0; i < routes.size(); ++i) {
      const route_config& rc = routes[i];
      const match_config& m = rc.match;
      compiled_route cr;
      cr.index = static_cast<int>(i);
      uint32_t path_conditions = 0;
      if (m.path_regex) {
        try {
          cr.regex.emplace(*m.path_regex, boost::regex::ECMAScript);
        } catch (const std::exception& e) {
          if (error != nullptr) *error = "route " + rc.name + ": invalid path_regex: " + e.what();
          return nullptr;
        }
        cr.regex_literal = regex_literal_prefix(*m.path_regex);
        cr.kind = path_kind::regex;
        ++path_conditions;
      }
      if (m.path_prefix) {
        cr.kind = path_kind::prefix;
        ++path_conditions;
      }
      if (m.path) {
        cr.kind = path_kind::exact;
        ++path_conditions;
        if (m.path_prefix) cr.extra_prefix = *m.path_prefix;
      }
      // Path conditions beyond the one the route is indexed by count like any other condition.
      cr.conditions = path_conditions > 0 ? path_conditions - 1 : 0;
      if (m.host && !m.host->empty()) {
        cr.host = host_rule::parse(*m.host);
        ++cr.conditions;
      }
      if (!m.methods.empty()) {
        cr.methods = m.methods;
        ++cr.conditions;
      }
      for (const auto& [name, value] : m.headers) cr.headers.emplace_back(to_lower(name), value);
      cr.query = m.query;
      cr.conditions += static_cast<uint32_t>(cr.headers.size() + cr.query.size());
      compiled.push_back(std::move(cr));
    }

    // More conditions first, then config order: a stable sort by conditions alone. Positions
    // are sorted, not the (large) compiled routes themselves, which are then moved once.
    std::vector<uint32_t> order(compiled.size());
    for (uint32_t i = 0; i < order.size(); ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
      return compiled[a].conditions > compiled[b].conditions;
    });
    {
      std::vector<compiled_route> sorted;
      sorted.reserve(compiled.size());
      for (uint32_t i : order) sorted.push_back(std::move(compiled[i]));
      compiled = std::move(sorted);
    }

    // Keys are views into routes and compiled, which outlive the index builds below.
    std::unordered_map<std::string_view, prefix_index::key_lists> path_keys;
    std::unordered_map<std::string_view, prefix_index::key_lists> regex_keys;
    path_keys.reserve(compiled.size());
    for (uint32_t slot = 0; slot < compiled.size(); ++slot) {
      const compiled_route& cr = compiled[slot];
      const match_config& m = routes[static_cast<size_t>(cr.index)].match;
      switch (cr.kind) {
        case path_kind::exact:
          path_keys[*m.path].exact.push_back(slot);
          break;
        case path_kind::prefix:
          path_keys[*m.path_prefix].prefix.push_back(slot);
          break;
        case path_kind::regex:
          regex_keys[cr.regex_literal].prefix.push_back(slot);
          out->regex_slots_.push_back(slot);
          break;
        case path_kind::none:
          out->pathless_slots_.push_back(slot);
          break;
      }
    }
    out->paths_.build(path_keys);
    out->regex_literals_.build(regex_keys);
    out->routes_ = std::move(compiled);
    return out;
  }

  int match(const request_view& request) const override {
    std::string_view host = strip_trailing_dot(request.host);
    prefix_index::walk_result walk = paths_.walk(request.path);
    if (walk.exact_node >= 0) {
      for (uint32_t slot : paths_.exact(walk.exact_node)) {
        if (conditions_hold(routes_[slot], request, host)) return routes_[slot].index;
      }
    }
    for (int32_t n = walk.deepest_prefix_node; n >= 0; n = paths_.fallback(n)) {
      for (uint32_t slot : paths_.prefix(n)) {
        if (conditions_hold(routes_[slot], request, host)) return routes_[slot].index;
      }
    }
    if (!regex_slots_.empty()) {
      int found = match_regex(request, host);
      if (found >= 0) return found;
    }
    for (uint32_t slot : pathless_slots_) {
      if (conditions_hold(routes_[slot], request, host)) return routes_[slot].index;
    }
    return -1;
  }

 private:
  // Returns the best regex route for the request, or -1. Candidates come from every literal
  // prefix along the path; their lists are merged by slot so they are tried in rank order.
  int match_regex(const request_view& request, std::string_view host) const {
    constexpr size_t max_lists = 32;
    std::array<std::span<const uint32_t>, max_lists> lists;
    size_t count = 0;
    prefix_index::walk_result walk = regex_literals_.walk(request.path);
    for (int32_t n = walk.deepest_prefix_node; n >= 0; n = regex_literals_.fallback(n)) {
      if (count == max_lists) return match_regex_linear(request, host);
      lists[count++] = regex_literals_.prefix(n);
    }
    for (;;) {
      size_t best = count;
      uint32_t best_slot = std::numeric_limits<uint32_t>::max();
      for (size_t i = 0; i < count; ++i) {
        if (!lists[i].empty() && lists[i].front() < best_slot) {
          best = i;
          best_slot = lists[i].front();
        }
      }
      if (best == count) return -1;
      lists[best] = lists[best].subspan(1);
      if (conditions_hold(routes_[best_slot], request, host)) return routes_[best_slot].index;
    }
  }

  // Same result as match_regex for paths with more nested literal prefixes than it merges.
  int match_regex_linear(const request_view& request, std::string_view host) const {
    for (uint32_t slot : regex_slots_) {
      const compiled_route& r = routes_[slot];
      if (request.path.starts_with(r.regex_literal) && conditions_hold(r, request, host)) {
        return r.index;
      }
    }
    return -1;
  }

  // Returns true when every condition of r other than its indexed path holds. Cheap checks come
  // first; the regex, if any, runs last.
  static bool conditions_hold(const compiled_route& r, const request_view& request,
                              std::string_view host) {
    if (!r.methods.empty()) {
      bool any = false;
      for (const std::string& method : r.methods) {
        if (iequals(request.method, method)) {
          any = true;
          break;
        }
      }
      if (!any) return false;
    }
    if (!r.host.matches(host)) return false;
    for (const auto& [name, value] : r.headers) {
      bool found = false;
      for (const header_view& h : request.headers) {
        if (h.value == value && iequals(h.name, name)) {
          found = true;
          break;
        }
      }
      if (!found) return false;
    }
    for (const auto& [name, value] : r.query) {
      if (!query_has(request.query, name, value)) return false;
    }
    if (r.extra_prefix && !request.path.starts_with(*r.extra_prefix)) return false;
    if (r.regex && !regex_matches(*r.regex, request.path)) return false;
    return true;
  }

  std::vector<compiled_route> routes_;  // by rank; the position is the route's slot
  prefix_index paths_;                  // exact and prefix routes
  prefix_index regex_literals_;         // regex routes by literal prefix
  std::vector<uint32_t> regex_slots_;   // every regex route, in rank order
  std::vector<uint32_t> pathless_slots_;
};

}  // namespace

std::unique_ptr<router> router::build(const std::vector<route_config>& routes, std::string* error) {
  return compiled_router::compile(routes, error);
}

}  // namespace meridian::node
