// The YAML config loader (see config.h, SPEC.md and docs/configuration.md).
//
// Parsing is schema-driven: every section has one function that walks its YAML map with a
// map_reader, reads the keys it knows, and leaves the rest to be reported as unknown. Each problem
// is recorded in a diagnostics list and parsing carries on, so one run shows all of them. Cross
// references (a route's upstream, an auth's jwt provider, unique names) are checked once every
// section has been read.
//
// Conventions shared by every section:
// - A key whose value is null (`key:` or `key: ~`) counts as absent: defaults apply, and a
//   required key is reported as missing.
// - Messages read "PATH: problem", where PATH is the dotted path of the value, e.g.
//   "routes[0].match.path: must start with '/'". The line is the value's line (the key's line when
//   the value is null; the line of the map's own key, e.g. "node:", when a key is missing).
// - yaml-cpp is used only for syntax; every scalar is converted here, so "yes", "0x10" or "1e3"
//   mean nothing special and are reported where they do not fit.

#include "meridian/config/config.h"
#include "meridian/common/ascii.h"

#include "meridian/common/base64.h"
#include "meridian/common/calendar.h"
#include "meridian/common/http_fields.h"
#include "meridian/transcode/transcoder.h"

#include <arpa/inet.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <boost/regex.hpp>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>

namespace meridian::node {
namespace {

constexpr uint64_t max_workers = 256;
// A config is a few KiB; the cap only guards against `--config /dev/zero` or a huge log file.
constexpr size_t max_config_bytes = 16 * 1024 * 1024;
// About 100 years; keeps every duration far from overflowing when added to a time point.
constexpr uint64_t max_duration_ms = 100ull * 365 * 24 * 3600 * 1000;

// ---------------------------------------------------------------------------------------------
// Text helpers.

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}
bool is_alpha(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
}

char ascii_upper(char c) {
  return (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c;
}

std::string to_upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = ascii_upper(c);
  return out;
}

// A method or header name: an RFC 9110 token (one definition, shared with the data path).
bool is_token(std::string_view s) {
  return valid_field_name(s);
}

// A value the config may have the gateway send as a header: no CR, LF, NUL or other control
// characters, which would let a config smuggle extra headers into a request.
bool is_header_value(std::string_view s) {
  return valid_field_value(s);
}

}  // namespace

// Object names (route, upstream, consumer, jwt provider, node id) end up in admin URLs
// (/config/routes/{name}), store keys, JSON and metric labels: letters, digits and - . _ ~ : @ +,
// at most max_name_bytes, and never a dot segment.
bool valid_object_name(std::string_view s) {
  if (s.empty() || s.size() > max_name_bytes || s == "." || s == "..") return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return is_alpha(c) || is_digit(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == ':' ||
           c == '@' || c == '+';
  });
}

namespace {

bool is_name(std::string_view s) {
  return valid_object_name(s);
}

// Parses a run of decimal digits only (no sign, no spaces, no base prefix).
std::optional<uint64_t> parse_u64(std::string_view s) {
  if (s.empty() || !std::all_of(s.begin(), s.end(), is_digit)) return std::nullopt;
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return value;
}

std::string join(std::initializer_list<std::string_view> items) {
  std::string out;
  for (std::string_view item : items) {
    if (!out.empty()) out += ", ";
    out += item;
  }
  return out;
}

// Returns the error compiling pattern reports, or nullopt when it compiles. The router and the
// rewrite step run Boost.Regex with ECMAScript syntax, so patterns are checked with that engine.
std::optional<std::string> regex_error_of(const std::string& pattern) {
  try {
    boost::regex re(pattern, boost::regex::ECMAScript);
    return std::nullopt;
  } catch (const std::exception& e) {
    return std::string(e.what());
  }
}

// Returns true for a dotted-quad IPv4 address or a host name (letters, digits, '-', '_', '.').
bool is_host_name_or_ipv4(std::string_view host) {
  if (host.empty() || host.size() > 253 || host.front() == '.' || host.front() == '-') return false;
  bool only_digits_and_dots = true;
  for (char c : host) {
    if (!is_alpha(c) && !is_digit(c) && c != '-' && c != '_' && c != '.') return false;
    if (!is_digit(c) && c != '.') only_digits_and_dots = false;
  }
  if (only_digits_and_dots) {
    in_addr v4{};
    return inet_pton(AF_INET, std::string(host).c_str(), &v4) == 1;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Diagnostics and YAML walking.

// Returns the 1-based line of a node, or 0 when yaml-cpp does not know it.
int line_of(const YAML::Node& node) {
  int line = node.Mark().line;
  return line >= 0 ? line + 1 : 0;
}

// Describes what a node is, for "expected X, got Y" messages.
std::string describe(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Scalar: {
      const std::string& s = node.Scalar();
      return "'" + (s.size() > 40 ? s.substr(0, 40) + "..." : s) + "'";
    }
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Undefined:
      break;
  }
  return "an undefined value";
}

// Collects every problem found in one file.
class diagnostics {
 public:
  explicit diagnostics(std::string file) : file_(std::move(file)) {}

  void add(int line, std::string message) {
    errors_.push_back(config_error{file_, line, std::move(message)});
  }
  bool empty() const { return errors_.empty(); }

  // Returns the problems sorted by line; problems on one line keep the order they were found in.
  std::vector<config_error> take_sorted() {
    std::stable_sort(errors_.begin(), errors_.end(),
                     [](const config_error& a, const config_error& b) { return a.line < b.line; });
    return std::move(errors_);
  }

 private:
  std::string file_;
  std::vector<config_error> errors_;
};

// A value in the document, where it is, and its dotted path for messages.
struct field {
  YAML::Node node;
  std::string path;  // e.g. "routes[0].match.methods"; empty for the document root
  int line = 0;      // where the value is
  int key_line = 0;  // where its key is (for list items: the item); 0 means `line`
};

// Names a map in messages: "in routes[0].match", or "at the top level" for the document root.
std::string in(const std::string& path) {
  return path.empty() ? "at the top level" : "in " + path;
}

std::string child_path(const std::string& parent, std::string_view key) {
  return parent.empty() ? std::string(key) : parent + "." + std::string(key);
}

void expected(diagnostics& d, const field& f, std::string_view what) {
  std::string subject = f.path.empty() ? "the config" : f.path;
  d.add(f.line, subject + ": expected " + std::string(what) + ", got " + describe(f.node));
}

// Walks one YAML map: take() or require() each known key, then finish() reports every key nobody
// asked for. Duplicate keys and keys that are not plain strings are reported on construction.
class map_reader {
 public:
  // Missing keys are reported on the line of the map's own key ("node:"), not on its first entry.
  map_reader(diagnostics& d, const field& map)
      : diag_(d), path_(map.path), line_(map.key_line != 0 ? map.key_line : map.line) {
    if (!map.node.IsMap()) {
      expected(d, map, "a map");
      ok_ = false;
      return;
    }
    // yaml-cpp iterators hand out temporaries: copy the Node handles (cheap, shared) out of them
    // rather than holding references into `it->first`.
    for (const auto& pair : map.node) {
      YAML::Node key = pair.first;
      int key_line = line_of(key) != 0 ? line_of(key) : line_;
      if (!key.IsScalar()) {
        d.add(key_line, "keys must be plain strings, got " + describe(key) + " " + in(path_));
        continue;
      }
      const std::string& name = key.Scalar();
      if (find(name) != nullptr) {
        d.add(key_line, "duplicate key '" + name + "' " + in(path_));
        continue;
      }
      entries_.push_back(entry{name, key_line, pair.second, false});
    }
  }

  bool ok() const { return ok_; }
  int line() const { return line_; }

  // Returns the value under key, or nullopt when the key is absent or its value is null.
  std::optional<field> take(std::string_view key) {
    entry* e = find(key);
    if (e == nullptr) return std::nullopt;
    e->taken = true;
    if (e->value.IsNull()) return std::nullopt;
    int line = line_of(e->value);
    return field{e->value, child_path(path_, key), line != 0 ? line : e->key_line, e->key_line};
  }

  // Like take(), but reports the key as missing when it is absent or null.
  std::optional<field> require(std::string_view key) {
    std::optional<field> f = take(key);
    if (!f) {
      const entry* e = find(key);
      if (e != nullptr) {
        diag_.add(e->key_line, child_path(path_, key) + ": must have a value");
      } else {
        diag_.add(line_, "missing required key '" + std::string(key) + "' " + in(path_));
      }
    }
    return f;
  }

  // Reports every key that was not taken.
  void finish() {
    for (const entry& e : entries_) {
      if (!e.taken) diag_.add(e.key_line, "unknown key '" + e.key + "' " + in(path_));
    }
  }

 private:
  struct entry {
    std::string key;
    int key_line = 0;
    YAML::Node value;
    bool taken = false;
  };

  entry* find(std::string_view key) {
    for (entry& e : entries_) {
      if (e.key == key) return &e;
    }
    return nullptr;
  }

  diagnostics& diag_;
  std::string path_;
  int line_ = 0;
  bool ok_ = true;
  std::vector<entry> entries_;
};

// Calls fn(item) for each element of a list, with paths "PATH[i]".
template <class Fn>
void for_each_item(diagnostics& d, const field& list, Fn&& fn) {
  if (!list.node.IsSequence()) {
    expected(d, list, "a list");
    return;
  }
  size_t index = 0;
  for (const auto& element : list.node) {
    YAML::Node item = element;
    int line = line_of(item);
    if (line == 0) line = list.line;
    fn(field{item, list.path + "[" + std::to_string(index) + "]", line, line});
    ++index;
  }
}

// ---------------------------------------------------------------------------------------------
// Typed readers. Each one either stores a valid value in `out` and returns true, or reports why
// not, leaves `out` untouched and returns false.

const std::string* scalar_of(diagnostics& d, const field& f, std::string_view what) {
  if (f.node.IsScalar()) return &f.node.Scalar();
  expected(d, f, what);
  return nullptr;
}

bool read_string(diagnostics& d, const field& f, std::string& out, bool allow_empty = true) {
  const std::string* s = scalar_of(d, f, "a string");
  if (s == nullptr) return false;
  if (!allow_empty && s->empty()) {
    d.add(f.line, f.path + ": must not be empty");
    return false;
  }
  out = *s;
  return true;
}

bool read_name(diagnostics& d, const field& f, std::string& out) {
  std::string value;
  if (!read_string(d, f, value, false)) return false;
  if (!is_name(value)) {
    d.add(f.line, f.path + ": '" + value +
                      "' is not a valid name (letters, digits and - . _ ~ : @ +, at most " +
                      std::to_string(max_name_bytes) + " characters)");
    return false;
  }
  out = std::move(value);
  return true;
}

template <class T>
bool read_uint(diagnostics& d, const field& f, T& out, uint64_t min = 0,
               uint64_t max = std::numeric_limits<T>::max()) {
  const std::string* s = scalar_of(d, f, "a whole number");
  if (s == nullptr) return false;
  std::optional<uint64_t> value = parse_u64(*s);
  if (!value) {
    d.add(f.line, f.path + ": expected a whole number, got '" + *s + "'");
    return false;
  }
  if (*value < min || *value > max) {
    std::string range = max == std::numeric_limits<T>::max()
                            ? "at least " + std::to_string(min)
                            : "between " + std::to_string(min) + " and " + std::to_string(max);
    d.add(f.line, f.path + ": must be " + range + ", got " + *s);
    return false;
  }
  out = static_cast<T>(*value);
  return true;
}

bool read_double(diagnostics& d, const field& f, double& out) {
  const std::string* s = scalar_of(d, f, "a number");
  if (s == nullptr) return false;
  double value = 0;
  auto [end, ec] = std::from_chars(s->data(), s->data() + s->size(), value);
  if (s->empty() || ec != std::errc() || end != s->data() + s->size() || !std::isfinite(value)) {
    d.add(f.line, f.path + ": expected a number, got '" + *s + "'");
    return false;
  }
  out = value;
  return true;
}

bool read_bool(diagnostics& d, const field& f, bool& out) {
  const std::string* s = scalar_of(d, f, "true or false");
  if (s == nullptr) return false;
  std::string value = to_lower(*s);
  if (value != "true" && value != "false") {
    d.add(f.line, f.path + ": expected true or false, got '" + *s + "'");
    return false;
  }
  out = value == "true";
  return true;
}

bool read_duration(diagnostics& d, const field& f, duration& out, bool allow_zero = false) {
  const std::string* s = scalar_of(d, f, "a duration");
  if (s == nullptr) return false;
  std::optional<duration> value = parse_duration(*s);
  if (!value) {
    d.add(f.line, f.path + ": invalid duration '" + *s +
                      "' (expected a number and a unit ms, s, m, h or d, e.g. 250ms or 1.5s)");
    return false;
  }
  if (!allow_zero && value->count() == 0) {
    d.add(f.line, f.path + ": must be greater than 0");
    return false;
  }
  out = *value;
  return true;
}

// Reads a duration with an optional leading '-' (zero allowed).
bool read_signed_duration(diagnostics& d, const field& f, duration& out) {
  const std::string* s = scalar_of(d, f, "a duration");
  if (s == nullptr) return false;
  bool negative = !s->empty() && s->front() == '-';
  std::optional<duration> value = parse_duration(std::string_view(*s).substr(negative ? 1 : 0));
  if (!value) {
    d.add(f.line, f.path + ": invalid duration '" + *s +
                      "' (expected an optional '-', a number and a unit ms, s, m, h or d)");
    return false;
  }
  out = negative ? -*value : *value;
  return true;
}

bool read_size(diagnostics& d, const field& f, uint64_t& out) {
  const std::string* s = scalar_of(d, f, "a size");
  if (s == nullptr) return false;
  std::optional<uint64_t> value = parse_size(*s);
  if (!value) {
    d.add(f.line, f.path + ": invalid size '" + *s +
                      "' (expected bytes or a number with KiB, MiB or GiB, e.g. 64KiB)");
    return false;
  }
  out = *value;
  return true;
}

bool read_address(diagnostics& d, const field& f, address& out, bool allow_zero) {
  const std::string* s = scalar_of(d, f, "an address");
  if (s == nullptr) return false;
  std::optional<address> value = parse_address(*s, allow_zero);
  if (!value) {
    d.add(f.line, f.path + ": invalid address '" + *s + "' (expected host:port with a port in " +
                      (allow_zero ? "0" : "1") + "..65535; IPv6 as [::1]:port)");
    return false;
  }
  out = *value;
  return true;
}

bool read_choice(diagnostics& d, const field& f, std::string& out,
                 std::initializer_list<std::string_view> choices) {
  const std::string* s = scalar_of(d, f, "one of " + join(choices));
  if (s == nullptr) return false;
  if (std::find(choices.begin(), choices.end(), *s) == choices.end()) {
    d.add(f.line, f.path + ": '" + *s + "' is not one of " + join(choices));
    return false;
  }
  out = *s;
  return true;
}

// Reads a list of strings; bad items are reported and skipped.
void read_string_list(diagnostics& d, const field& f, std::vector<std::string>& out) {
  for_each_item(d, f, [&](const field& item) {
    std::string value;
    if (read_string(d, item, value, false)) out.push_back(std::move(value));
  });
}

// One entry of a free-form string map (headers, query parameters, claims).
struct string_pair {
  std::string key;
  std::string value;
  int line = 0;
  std::string path;
};

// Reads a map of strings to strings in file order; duplicate keys and non-string values are
// reported and skipped.
std::vector<string_pair> read_string_map(diagnostics& d, const field& f) {
  std::vector<string_pair> out;
  if (!f.node.IsMap()) {
    expected(d, f, "a map");
    return out;
  }
  for (const auto& pair : f.node) {
    YAML::Node key = pair.first;
    int line = line_of(key) != 0 ? line_of(key) : f.line;
    if (!key.IsScalar()) {
      d.add(line, "keys must be plain strings, got " + describe(key) + " " + in(f.path));
      continue;
    }
    const std::string& name = key.Scalar();
    if (std::any_of(out.begin(), out.end(), [&](const string_pair& p) { return p.key == name; })) {
      d.add(line, "duplicate key '" + name + "' " + in(f.path));
      continue;
    }
    field value{pair.second, child_path(f.path, name), line, line};
    if (value.node.IsNull()) {
      d.add(line, value.path + ": must have a value (write \"\" for an empty string)");
      continue;
    }
    std::string text;
    if (!read_string(d, value, text)) continue;
    out.push_back(string_pair{name, std::move(text), line, value.path});
  }
  return out;
}

// Reads name -> value header pairs: names must be tokens (lower-cased when lower_names), values
// must not contain control characters.
header_list read_header_map(diagnostics& d, const field& f, bool lower_names) {
  header_list out;
  for (string_pair& p : read_string_map(d, f)) {
    if (!is_token(p.key)) {
      d.add(p.line, f.path + ": '" + p.key + "' is not a valid header name");
      continue;
    }
    if (!is_header_value(p.value)) {
      d.add(p.line, p.path + ": header value contains control characters");
      continue;
    }
    out.emplace_back(lower_names ? to_lower(p.key) : p.key, std::move(p.value));
  }
  return out;
}

// Reads a list of header names (tokens).
void read_header_names(diagnostics& d, const field& f, std::vector<std::string>& out) {
  for_each_item(d, f, [&](const field& item) {
    std::string name;
    if (!read_string(d, item, name, false)) return;
    if (!is_token(name)) {
      d.add(item.line, item.path + ": '" + name + "' is not a valid header name");
      return;
    }
    out.push_back(std::move(name));
  });
}

// Reads "header:NAME" (NAME lower-cased) or one of the plain choices; used by rate_limit.key and
// upstream hash_on.
bool read_key_spec(diagnostics& d, const field& f, std::string& out,
                   std::initializer_list<std::string_view> plain) {
  const std::string* s = scalar_of(d, f, "a string");
  if (s == nullptr) return false;
  constexpr std::string_view header_prefix = "header:";
  if (std::find(plain.begin(), plain.end(), *s) != plain.end()) {
    out = *s;
    return true;
  }
  if (std::string_view(*s).starts_with(header_prefix)) {
    std::string_view name = std::string_view(*s).substr(header_prefix.size());
    if (is_token(name)) {
      out = std::string(header_prefix) + to_lower(name);
      return true;
    }
    d.add(f.line, f.path + ": '" + std::string(name) + "' is not a valid header name");
    return false;
  }
  d.add(f.line, f.path + ": '" + *s + "' is not one of " + join(plain) + ", header:NAME");
  return false;
}

// Reads a path that must start with '/' and may not hold spaces, controls, '?' or '#'.
bool read_path(diagnostics& d, const field& f, std::string& out) {
  std::string value;
  if (!read_string(d, f, value, false)) return false;
  if (value.front() != '/') {
    d.add(f.line, f.path + ": '" + value + "' must start with '/'");
    return false;
  }
  bool bad = std::any_of(value.begin(), value.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u <= 0x20 || u == 0x7f || c == '?' || c == '#';
  });
  if (bad) {
    d.add(f.line, f.path + ": '" + value + "' must not contain spaces, control characters, ? or #");
    return false;
  }
  out = std::move(value);
  return true;
}

bool read_regex(diagnostics& d, const field& f, std::string& out) {
  std::string value;
  if (!read_string(d, f, value, false)) return false;
  if (std::optional<std::string> error = regex_error_of(value)) {
    d.add(f.line, f.path + ": invalid regex '" + value + "': " + *error);
    return false;
  }
  out = std::move(value);
  return true;
}

// ---------------------------------------------------------------------------------------------
// Sections.

void parse_node_section(diagnostics& d, const field& f, node_section& out) {
  map_reader m(d, f);
  if (!m.ok()) return;
  if (auto v = m.take("id")) read_name(d, *v, out.id);
  if (auto v = m.require("region")) read_name(d, *v, out.region);
  if (auto v = m.take("zone")) read_name(d, *v, out.zone);
  if (auto v = m.take("data_dir")) read_string(d, *v, out.data_dir, false);
  if (auto v = m.take("workers")) {
    if (read_uint(d, *v, out.workers, 0, max_workers) && out.workers == 0) {
      unsigned cores = std::thread::hardware_concurrency();
      out.workers = static_cast<unsigned>(std::clamp<uint64_t>(cores, 1, max_workers));
    }
  }
  if (auto v = m.take("clock_offset")) read_signed_duration(d, *v, out.clock_offset);
  m.finish();
}

void parse_listen_section(diagnostics& d, const field& f, listen_section& out) {
  map_reader m(d, f);
  if (!m.ok()) return;
  // Port 0 lets tests and the demo ask the kernel for a free port.
  if (auto v = m.take("proxy")) read_address(d, *v, out.proxy, true);
  if (auto v = m.take("admin")) read_address(d, *v, out.admin, true);
  if (out.proxy == out.admin && out.proxy.port != 0) {
    d.add(m.line(), "listen.proxy and listen.admin must differ, both are " + out.proxy.to_string());
  }
  m.finish();
}

void parse_admin_section(diagnostics& d, const field& f, admin_section& out) {
  map_reader m(d, f);
  if (!m.ok()) return;
  if (auto v = m.take("token_file")) read_string(d, *v, out.token_file, false);
  if (auto v = m.take("tls")) {
    map_reader t(d, *v);
    if (t.ok()) {
      if (auto x = t.require("cert")) read_string(d, *x, out.tls_cert, false);
      if (auto x = t.require("key")) read_string(d, *x, out.tls_key, false);
      if (auto x = t.take("client_ca")) read_string(d, *x, out.tls_client_ca, false);
      if (auto x = t.take("peer_ca")) read_string(d, *x, out.tls_peer_ca, false);
      auto cert = t.take("peer_cert");
      auto key = t.take("peer_key");
      if (cert) read_string(d, *cert, out.tls_peer_cert, false);
      if (key) read_string(d, *key, out.tls_peer_key, false);
      if (out.tls_peer_cert.empty() != out.tls_peer_key.empty()) {
        d.add(t.line(), "admin.tls.peer_cert and admin.tls.peer_key go together");
      }
      t.finish();
    }
  }
  m.finish();
}

void parse_cluster_section(diagnostics& d, const field& f, cluster_section& out) {
  map_reader m(d, f);
  if (!m.ok()) return;
  if (auto v = m.take("bind")) read_address(d, *v, out.bind, true);
  if (auto v = m.take("advertise")) {
    read_address(d, *v, out.advertise, false);
  } else {
    out.advertise = out.bind;
  }
  if (auto v = m.take("seeds")) {
    for_each_item(d, *v, [&](const field& item) {
      address seed;
      if (read_address(d, item, seed, false)) out.seeds.push_back(std::move(seed));
    });
  }
  if (auto v = m.take("keyring_file")) read_string(d, *v, out.keyring_file, false);
  if (auto v = m.take("sync_interval")) {
    duration t = out.sync_interval;
    if (read_duration(d, *v, t)) {
      if (t < std::chrono::milliseconds(10) || t > std::chrono::seconds(10)) {
        d.add(v->line, v->path + ": must be between 10ms and 10s");
      } else {
        out.sync_interval = t;
      }
    }
  }
  if (auto v = m.take("max_clock_skew")) read_duration(d, *v, out.max_clock_skew);
  if (auto v = m.take("clock_correction")) read_bool(d, *v, out.clock_correction);
  if (auto v = m.take("tombstone_grace")) read_duration(d, *v, out.tombstone_grace);
  if (auto v = m.take("max_counter_keys")) read_uint(d, *v, out.max_counter_keys, 1000);
  m.finish();
}

void parse_limits_section(diagnostics& d, const field& f, limits_section& out) {
  map_reader m(d, f);
  if (!m.ok()) return;
  auto positive_size = [&](std::string_view key, uint64_t& value) {
    if (auto v = m.take(key)) {
      uint64_t size = 0;
      if (!read_size(d, *v, size)) return;
      if (size == 0) {
        d.add(v->line, v->path + ": must be greater than 0");
        return;
      }
      value = size;
    }
  };
  positive_size("max_header_bytes", out.max_header_bytes);
  positive_size("max_url_bytes", out.max_url_bytes);
  if (auto v = m.take("max_body_bytes")) read_size(d, *v, out.max_body_bytes);
  if (auto v = m.take("header_timeout")) read_duration(d, *v, out.header_timeout);
  if (auto v = m.take("idle_timeout")) read_duration(d, *v, out.idle_timeout);
  if (auto v = m.take("max_connections")) read_uint(d, *v, out.max_connections, 1);
  if (auto v = m.take("max_websocket_tunnels")) read_uint(d, *v, out.max_websocket_tunnels, 0);
  if (auto v = m.take("websocket_idle_timeout")) {
    if (read_duration(d, *v, out.websocket_idle_timeout) &&
        out.websocket_idle_timeout < std::chrono::seconds(1))
      d.add(v->line, v->path + ": must be at least 1s");
  }
  m.finish();
}

void parse_http2_section(diagnostics& d, const field& f, http2_section& out) {
  map_reader m(d, f);
  if (!m.ok()) return;
  auto size_in = [&](std::string_view key, uint64_t& value, uint64_t lo, uint64_t hi) {
    if (auto v = m.take(key)) {
      uint64_t size = 0;
      if (!read_size(d, *v, size)) return;
      if (size < lo || size > hi) {
        d.add(v->line,
              v->path + ": must be between " + std::to_string(lo) + " and " + std::to_string(hi));
        return;
      }
      value = size;
    }
  };
  if (auto v = m.take("enabled")) read_bool(d, *v, out.enabled);
  if (auto v = m.take("max_concurrent_streams")) read_uint(d, *v, out.max_concurrent_streams, 1);
  // RFC 9113 section 6.5.2: windows up to 2^31-1, frames from 2^14 to 2^24-1.
  size_in("initial_stream_window", out.initial_stream_window, 1024, 0x7fffffff);
  size_in("connection_window", out.connection_window, 65535, 0x7fffffff);
  size_in("header_table_size", out.header_table_size, 0, 1 << 20);
  size_in("max_frame_size", out.max_frame_size, 16384, (1 << 24) - 1);
  if (auto v = m.take("reset_burst")) read_uint(d, *v, out.reset_burst, 1);
  if (auto v = m.take("resets_per_second")) read_uint(d, *v, out.resets_per_second, 1);
  if (auto v = m.take("control_frame_burst")) read_uint(d, *v, out.control_frame_burst, 1);
  if (auto v = m.take("control_frames_per_second"))
    read_uint(d, *v, out.control_frames_per_second, 1);
  if (auto v = m.take("max_continuations")) read_uint(d, *v, out.max_continuations, 0);
  m.finish();
}

void parse_path_normalization(diagnostics& d, const field& f, path_normalization_section& out) {
  map_reader m(d, f);
  if (!m.ok()) return;
  if (auto v = m.take("merge_slashes")) read_bool(d, *v, out.merge_slashes);
  if (auto v = m.take("escaped_slashes")) {
    read_choice(d, *v, out.escaped_slashes, {"reject", "keep", "decode"});
  }
  m.finish();
}

tracing_section parse_tracing(diagnostics& d, const field& f) {
  tracing_section t;
  map_reader m(d, f);
  if (!m.ok()) return t;
  if (auto v = m.require("otlp_endpoint")) {
    if (read_string(d, *v, t.otlp_endpoint, false) &&
        !(t.otlp_endpoint.rfind("http://", 0) == 0 || t.otlp_endpoint.rfind("https://", 0) == 0)) {
      d.add(v->line, v->path + ": '" + t.otlp_endpoint + "' is not an http(s) URL");
    }
  }
  if (auto v = m.take("sampling")) {
    if (read_double(d, *v, t.sampling) && (t.sampling < 0 || t.sampling > 1)) {
      d.add(v->line, v->path + ": must be between 0 and 1");
    }
  }
  if (auto v = m.take("service_name")) read_string(d, *v, t.service_name, false);
  if (auto v = m.take("batch_size")) read_uint(d, *v, t.batch_size, 1, 100000);
  if (auto v = m.take("flush_interval")) read_duration(d, *v, t.flush_interval);
  if (auto v = m.take("max_queue")) read_uint(d, *v, t.max_queue, 1, 10000000);
  m.finish();
  return t;
}

void parse_analytics(diagnostics& d, const field& f, analytics_section& out) {
  map_reader m(d, f);
  if (!m.ok()) return;
  if (auto v = m.take("enabled")) read_bool(d, *v, out.enabled);
  if (auto v = m.take("max_names")) read_uint(d, *v, out.max_names, 1, 100000);
  m.finish();
}

void parse_log_section(diagnostics& d, const field& f, log_section& out) {
  map_reader m(d, f);
  if (!m.ok()) return;
  if (auto v = m.take("level")) {
    read_choice(d, *v, out.level, {"trace", "debug", "info", "warn", "error", "critical", "off"});
  }
  if (auto v = m.take("access_log")) {
    map_reader a(d, *v);
    if (a.ok()) {
      if (auto e = a.take("enabled")) read_bool(d, *e, out.access_log.enabled);
      if (auto p = a.take("path")) read_string(d, *p, out.access_log.path, false);
      a.finish();
    }
  }
  m.finish();
}

// --- upstreams ---

std::optional<target_config> parse_target(diagnostics& d, const field& f) {
  target_config t;
  t.line = f.line;
  if (f.node.IsScalar()) {  // the short form: "host:port"
    if (!read_address(d, f, t.addr, false)) return std::nullopt;
    return t;
  }
  if (!f.node.IsMap()) {
    expected(d, f, "an address or a map with address, region, zone, weight");
    return std::nullopt;
  }
  map_reader m(d, f);
  bool ok = false;
  if (auto v = m.require("address")) ok = read_address(d, *v, t.addr, false);
  if (auto v = m.take("region")) ok = read_name(d, *v, t.region) && ok;
  if (auto v = m.take("zone")) ok = read_name(d, *v, t.zone) && ok;
  if (auto v = m.take("weight")) ok = read_uint(d, *v, t.weight, 1) && ok;
  m.finish();
  if (!ok) return std::nullopt;
  return t;
}

void parse_health_check(diagnostics& d, const field& f, health_check_config& out) {
  map_reader m(d, f);
  if (!m.ok()) return;
  out.enabled = true;
  if (auto v = m.take("path")) read_path(d, *v, out.path);
  if (auto v = m.take("interval")) read_duration(d, *v, out.interval);
  if (auto v = m.take("timeout")) read_duration(d, *v, out.timeout);
  if (auto v = m.take("unhealthy_after")) read_uint(d, *v, out.unhealthy_after, 1);
  if (auto v = m.take("healthy_after")) read_uint(d, *v, out.healthy_after, 1);
  if (auto v = m.take("expect_status")) {
    for_each_item(d, *v, [&](const field& item) {
      int status = 0;
      if (read_uint(d, item, status, 100, 599)) out.expect_status.push_back(status);
    });
  }
  if (auto v = m.take("grpc")) read_bool(d, *v, out.grpc);
  if (auto v = m.take("grpc_service")) {
    read_string(d, *v, out.grpc_service, true);
    out.grpc = true;
  }
  m.finish();
}

void parse_outlier(diagnostics& d, const field& f, outlier_config& out) {
  map_reader m(d, f);
  if (!m.ok()) return;
  if (auto v = m.take("consecutive_failures")) read_uint(d, *v, out.consecutive_failures);
  if (auto v = m.take("eject_for")) read_duration(d, *v, out.eject_for);
  m.finish();
}

void parse_circuit_breaker(diagnostics& d, const field& f, circuit_breaker_config& out) {
  map_reader m(d, f);
  if (!m.ok()) return;
  out.enabled = true;
  if (auto v = m.take("failure_rate")) {
    double rate = 0;
    if (read_double(d, *v, rate)) {
      if (rate > 0 && rate <= 1) {
        out.failure_rate = rate;
      } else {
        d.add(v->line, v->path + ": must be greater than 0 and at most 1, got " + v->node.Scalar());
      }
    }
  }
  if (auto v = m.take("min_requests")) read_uint(d, *v, out.min_requests);
  if (auto v = m.take("window")) read_duration(d, *v, out.window);
  if (auto v = m.take("open_for")) read_duration(d, *v, out.open_for);
  if (auto v = m.take("half_open_probes")) read_uint(d, *v, out.half_open_probes, 1);
  if (auto v = m.take("scope")) read_choice(d, *v, out.scope, {"local", "region", "cluster"});
  if (auto v = m.take("consecutive_failures")) read_uint(d, *v, out.consecutive_failures);
  if (auto v = m.take("slow_call")) read_duration(d, *v, out.slow_call);
  m.finish();
}

void parse_timeouts(diagnostics& d, const field& f, timeouts_config& out) {
  map_reader m(d, f);
  if (!m.ok()) return;
  if (auto v = m.take("connect")) read_duration(d, *v, out.connect);
  if (auto v = m.take("request")) read_duration(d, *v, out.request);
  if (auto v = m.take("idle")) read_duration(d, *v, out.idle);
  m.finish();
}

void parse_retries(diagnostics& d, const field& f, retries_config& out) {
  map_reader m(d, f);
  if (!m.ok()) return;
  if (auto v = m.take("attempts")) read_uint(d, *v, out.attempts);
  if (auto v = m.take("on")) {
    // An explicit list replaces the defaults: connect failures are retried only when listed.
    out.on_connect_failure = false;
    out.on_timeout = false;
    out.on_status.clear();
    for_each_item(d, *v, [&](const field& item) {
      const std::string* s = scalar_of(d, item, "connect_failure, timeout or a 5xx status");
      if (s == nullptr) return;
      if (*s == "connect_failure") {
        out.on_connect_failure = true;
      } else if (*s == "timeout") {
        out.on_timeout = true;
      } else if (std::optional<uint64_t> status = parse_u64(*s);
                 status && *status >= 500 && *status <= 599) {
        int code = static_cast<int>(*status);
        if (std::find(out.on_status.begin(), out.on_status.end(), code) == out.on_status.end()) {
          out.on_status.push_back(code);
        }
      } else {
        d.add(item.line, item.path + ": '" + *s +
                             "' is not connect_failure, timeout or a status code in 500..599");
      }
    });
  }
  if (auto v = m.take("budget_ratio")) {
    double ratio = 0;
    if (read_double(d, *v, ratio)) {
      if (ratio >= 0 && ratio <= 1) {
        out.budget_ratio = ratio;
      } else {
        d.add(v->line, v->path + ": must be between 0 and 1, got " + v->node.Scalar());
      }
    }
  }
  if (auto v = m.take("budget_min_per_s")) read_uint(d, *v, out.budget_min_per_s);
  m.finish();
}

void parse_pool(diagnostics& d, const field& f, pool_config& out) {
  map_reader m(d, f);
  if (!m.ok()) return;
  if (auto v = m.take("max_idle_per_target")) read_uint(d, *v, out.max_idle_per_target);
  if (auto v = m.take("max_connections_per_target")) {
    read_uint(d, *v, out.max_connections_per_target);
  }
  if (auto v = m.take("max_streams_per_connection")) {
    read_uint(d, *v, out.max_streams_per_connection);
    if (out.max_streams_per_connection == 0) {
      d.add(v->line, v->path + ": must be at least 1");
      out.max_streams_per_connection = 1;
    }
  }
  m.finish();
}

upstream_tls_config parse_upstream_tls(diagnostics& d, const field& f) {
  upstream_tls_config t;
  map_reader m(d, f);
  if (!m.ok()) return t;
  if (auto v = m.take("ca_file")) read_string(d, *v, t.ca_file, false);
  if (auto v = m.take("server_name")) read_string(d, *v, t.server_name, false);
  if (auto v = m.take("cert")) read_string(d, *v, t.cert_file, false);
  if (auto v = m.take("key")) read_string(d, *v, t.key_file, false);
  if (auto v = m.take("verify")) read_bool(d, *v, t.verify);
  if (t.cert_file.empty() != t.key_file.empty()) {
    d.add(f.line, f.path + ": cert and key go together");
  }
  m.finish();
  return t;
}

upstream_config parse_upstream(diagnostics& d, const field& f) {
  upstream_config u;
  u.line = f.line;
  map_reader m(d, f);
  if (!m.ok()) return u;
  if (auto v = m.require("name")) read_name(d, *v, u.name);
  std::string label = u.name.empty() ? f.path : "upstream '" + u.name + "'";
  if (auto v = m.take("targets")) {
    for_each_item(d, *v, [&](const field& item) {
      if (std::optional<target_config> t = parse_target(d, item)) u.targets.push_back(*t);
    });
    if (v->node.IsSequence() && v->node.size() == 0) {
      d.add(v->line, label + " has no targets (at least one is required)");
    }
  } else {
    d.add(u.line, label + " has no targets (at least one is required)");
  }
  if (auto v = m.take("balance")) {
    std::string policy;
    if (read_choice(d, *v, policy, {"round_robin", "least_request", "consistent_hash", "random"})) {
      if (policy == "round_robin") u.balance = balance_policy::round_robin;
      if (policy == "least_request") u.balance = balance_policy::least_request;
      if (policy == "consistent_hash") u.balance = balance_policy::consistent_hash;
      if (policy == "random") u.balance = balance_policy::random;
    }
  }
  if (auto v = m.take("hash_on")) read_key_spec(d, *v, u.hash_on, {"ip"});
  if (auto v = m.take("health_check")) parse_health_check(d, *v, u.health_check);
  if (auto v = m.take("outlier")) parse_outlier(d, *v, u.outlier);
  if (auto v = m.take("circuit_breaker")) parse_circuit_breaker(d, *v, u.circuit_breaker);
  if (auto v = m.take("timeouts")) parse_timeouts(d, *v, u.timeouts);
  if (auto v = m.take("retries")) parse_retries(d, *v, u.retries);
  if (auto v = m.take("pool")) parse_pool(d, *v, u.pool);
  if (auto v = m.take("protocol")) {
    std::string protocol;
    if (read_choice(d, *v, protocol, {"http1", "h2c", "h2"})) {
      if (protocol == "h2c") u.protocol = upstream_protocol::h2c;
      if (protocol == "h2") u.protocol = upstream_protocol::h2;
    }
  }
  if (auto v = m.take("tls")) {
    u.tls = parse_upstream_tls(d, *v);
    if (u.protocol == upstream_protocol::h2c) {
      d.add(v->line, label + ": h2c is HTTP/2 without TLS; use protocol: h2 with tls");
    }
  }
  if (u.protocol == upstream_protocol::h2 && !u.tls) u.tls.emplace();
  if (u.health_check.grpc && u.protocol == upstream_protocol::http1) {
    d.add(u.line, label + ": health_check.grpc needs protocol h2c or h2");
  }
  if (auto v = m.take("failover")) {
    read_string_list(d, *v, u.failover);
    for (const auto& name : u.failover)
      if (name == u.name) d.add(v->line, label + ": failover names the upstream itself");
  }
  m.finish();
  return u;
}

// --- routes ---

// Lines of a route's references, checked once all sections are read.
struct route_refs {
  int upstream_line = 0;
  int auth_line = 0;
  int jwt_line = 0;
};

grpc_transcode_config parse_grpc_transcode(diagnostics& d, const field& f) {
  grpc_transcode_config t;
  t.line = f.line;
  map_reader m(d, f);
  if (!m.ok()) return t;
  std::string b64;
  auto file = m.take("descriptor_set");
  auto inline_set = m.take("descriptor_set_base64");
  if (file) read_string(d, *file, t.descriptor_set, false);
  if (inline_set) read_string(d, *inline_set, b64, false);
  if (auto v = m.take("services")) read_string_list(d, *v, t.services);
  m.finish();
  std::string raw;
  if (inline_set) {
    // A config document from the cluster: the set travels with it.
    if (!decode_base64(b64, &raw)) {
      d.add(inline_set->line, f.path + ".descriptor_set_base64: not base64");
      return t;
    }
  } else if (file) {
    if (t.descriptor_set.empty()) return t;
    std::ifstream in(t.descriptor_set, std::ios::binary);
    if (!in) {
      d.add(file->line, f.path + ".descriptor_set: cannot read " + t.descriptor_set);
      return t;
    }
    raw.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  } else {
    d.add(f.line, f.path +
                      ": descriptor_set (a file from protoc --include_imports "
                      "--descriptor_set_out) is required");
    return t;
  }
  std::string error;
  if (!transcode::compact_descriptor_set(raw, &t.descriptor_bytes, &error)) {
    d.add(f.line, f.path + ": " + error);
    return t;
  }
  // Loaded once here so that every problem (an unknown service, a bad template) is reported
  // with the config's line, by `meridian validate` too.
  if (!transcode::transcoder::from_bytes(t.descriptor_bytes, t.services,
                                         t.descriptor_set.empty() ? "(inline)" : t.descriptor_set,
                                         &error)) {
    d.add(f.line, f.path + ": " + error);
  }
  return t;
}

void parse_match(diagnostics& d, const field& f, match_config& out) {
  map_reader m(d, f);
  if (!m.ok()) return;
  // path, path_prefix and path_regex may be combined: every condition given must hold.
  if (auto v = m.take("path")) {
    std::string path;
    if (read_path(d, *v, path)) out.path = std::move(path);
  }
  if (auto v = m.take("path_prefix")) {
    std::string prefix;
    if (read_path(d, *v, prefix)) out.path_prefix = std::move(prefix);
  }
  if (auto v = m.take("path_regex")) {
    std::string regex;
    if (read_regex(d, *v, regex)) out.path_regex = std::move(regex);
  }
  if (auto v = m.take("host")) {
    std::string host;
    if (read_string(d, *v, host, false)) {
      host = to_lower(host);
      std::string_view rest = host;
      if (rest.starts_with("*.")) rest.remove_prefix(2);
      if (is_host_name_or_ipv4(rest) || (rest.starts_with('[') && rest.ends_with(']'))) {
        out.host = std::move(host);
      } else {
        d.add(v->line, v->path + ": '" + host +
                           "' is not a host name (a name, an IP address or *.example.com)");
      }
    }
  }
  if (auto v = m.take("methods")) {
    for_each_item(d, *v, [&](const field& item) {
      std::string method;
      if (!read_string(d, item, method, false)) return;
      if (!is_token(method)) {
        d.add(item.line, item.path + ": '" + method + "' is not a valid HTTP method");
        return;
      }
      method = to_upper(method);
      if (std::find(out.methods.begin(), out.methods.end(), method) == out.methods.end()) {
        out.methods.push_back(std::move(method));
      }
    });
  }
  if (auto v = m.take("headers")) out.headers = read_header_map(d, *v, true);
  if (auto v = m.take("query")) {
    for (string_pair& p : read_string_map(d, *v)) {
      out.query.emplace_back(std::move(p.key), std::move(p.value));
    }
  }
  m.finish();
}

void parse_header_transform(diagnostics& d, const field& f, header_transform& out) {
  map_reader m(d, f);
  if (!m.ok()) return;
  if (auto v = m.take("add")) out.add = read_header_map(d, *v, false);
  if (auto v = m.take("set")) out.set = read_header_map(d, *v, false);
  if (auto v = m.take("remove")) read_header_names(d, *v, out.remove);
  m.finish();
}

void parse_query_transform(diagnostics& d, const field& f, query_transform& out) {
  map_reader m(d, f);
  if (!m.ok()) return;
  auto pairs = [&](const field& v, header_list& list) {
    for (string_pair& p : read_string_map(d, v)) {
      if (p.key.empty()) {
        d.add(p.line, v.path + ": query parameter names must not be empty");
        continue;
      }
      list.emplace_back(std::move(p.key), std::move(p.value));
    }
  };
  if (auto v = m.take("add")) pairs(*v, out.add);
  if (auto v = m.take("remove")) read_string_list(d, *v, out.remove);
  if (auto v = m.take("rename")) pairs(*v, out.rename);
  m.finish();
}

void parse_rewrite(diagnostics& d, const field& f, std::optional<rewrite_config>& out) {
  map_reader m(d, f);
  if (!m.ok()) return;
  rewrite_config rewrite;
  bool ok = false;
  if (auto v = m.require("regex")) ok = read_regex(d, *v, rewrite.regex);
  if (auto v = m.require("replacement")) {
    ok = read_string(d, *v, rewrite.replacement) && ok;
  } else {
    ok = false;
  }
  m.finish();
  if (ok) out = std::move(rewrite);
}

void parse_auth(diagnostics& d, const field& f, std::optional<auth_config>& out, route_refs& refs) {
  map_reader m(d, f);
  if (!m.ok()) return;
  auth_config auth;
  refs.auth_line = f.key_line;
  if (auto v = m.require("methods")) {
    for_each_item(d, *v, [&](const field& item) {
      std::string method;
      if (!read_choice(d, item, method, {"api_key", "jwt", "oauth"})) return;
      if (std::find(auth.methods.begin(), auth.methods.end(), method) == auth.methods.end()) {
        auth.methods.push_back(std::move(method));
      }
    });
    if (v->node.IsSequence() && v->node.size() == 0) {
      d.add(v->line, v->path + ": must list at least one of api_key, jwt, oauth");
    }
  }
  if (auto v = m.take("jwt")) {
    if (read_name(d, *v, auth.jwt)) refs.jwt_line = v->line;
  }
  if (auto v = m.take("claims_to_headers")) {
    for (string_pair& p : read_string_map(d, *v)) {
      if (!is_token(p.value)) {
        d.add(p.line, p.path + ": '" + p.value + "' is not a valid header name");
        continue;
      }
      auth.claims_to_headers.emplace_back(std::move(p.key), std::move(p.value));
    }
  }
  if (auto v = m.take("groups")) read_string_list(d, *v, auth.groups);
  if (auto v = m.take("query_key")) read_bool(d, *v, auth.query_key);
  if (auto v = m.take("strip_credentials")) read_bool(d, *v, auth.strip_credentials);
  int requirement_line = 0;
  if (auto v = m.take("scopes")) {
    read_string_list(d, *v, auth.scopes);
    requirement_line = v->line;
  }
  if (auto v = m.take("claims")) {
    for (string_pair& p : read_string_map(d, *v))
      auth.claims.emplace_back(std::move(p.key), std::move(p.value));
    requirement_line = requirement_line ? requirement_line : v->line;
  }
  bool uses_jwt = std::find(auth.methods.begin(), auth.methods.end(), "jwt") != auth.methods.end();
  bool uses_oauth =
      std::find(auth.methods.begin(), auth.methods.end(), "oauth") != auth.methods.end();
  if (requirement_line && !uses_jwt && !uses_oauth && !auth.methods.empty()) {
    d.add(requirement_line, f.path +
                                ": scopes and claims are requirements on a JWT, but methods "
                                "does not include jwt or oauth");
  }
  if (!auth.jwt.empty() && !uses_jwt && !auth.methods.empty()) {
    d.add(refs.jwt_line,
          f.path + ": jwt provider '" + auth.jwt + "' is named but methods does not include jwt");
  }
  m.finish();
  out = std::move(auth);
}

std::optional<rate_limit_config> parse_rate_limit(diagnostics& d, const field& f) {
  map_reader m(d, f);
  if (!m.ok()) return std::nullopt;
  rate_limit_config rl;
  bool ok = false;
  if (auto v = m.require("limit")) ok = read_uint(d, *v, rl.limit, 1);
  if (auto v = m.take("window")) {
    const std::string* s = v->node.IsScalar() ? &v->node.Scalar() : nullptr;
    if (s && *s == "1mo") {
      rl.calendar_month = true;
      rl.window = std::chrono::hours(24 * 31);
    } else {
      ok = read_duration(d, *v, rl.window) && ok;
    }
  }
  if (auto v = m.take("timezone")) {
    ok = read_string(d, *v, rl.timezone, false) && ok;
    std::string error;
    if (ok && !month_calendar::make(rl.timezone, &error)) {
      d.add(v->line, v->path + ": " + error);
      ok = false;
    }
    if (ok && !rl.calendar_month) {
      d.add(v->line, v->path + ": only a calendar window (window: 1mo) has a timezone");
      ok = false;
    }
  }
  if (auto v = m.take("key")) {
    ok = read_key_spec(d, *v, rl.key, {"consumer", "ip", "route", "global"}) && ok;
  }
  if (auto v = m.take("algorithm")) {
    ok = read_choice(d, *v, rl.algorithm,
                     {"sliding_window", "fixed_window", "token_bucket", "leaky_bucket"}) &&
         ok;
  }
  if (auto v = m.take("scope")) {
    ok = read_choice(d, *v, rl.scope, {"local", "region", "global"}) && ok;
  }
  if (auto v = m.take("burst")) ok = read_uint(d, *v, rl.burst, 1) && ok;
  if (auto v = m.take("max_delay")) {
    ok = read_duration(d, *v, rl.max_delay, true) && ok;
    if (ok && rl.max_delay > std::chrono::seconds(60)) {
      d.add(v->line, v->path + ": must be at most 60s");
      ok = false;
    }
  }
  if (auto v = m.take("on_partition")) {
    ok = read_choice(d, *v, rl.on_partition, {"local_share", "fail_open", "fail_closed"}) && ok;
  }
  if (auto v = m.take("mode")) {
    ok = read_choice(d, *v, rl.mode, {"eventual", "strict"}) && ok;
  }
  if (auto v = m.take("strict_timeout")) {
    ok = read_duration(d, *v, rl.strict_timeout) && ok;
    if (ok && (rl.strict_timeout < std::chrono::milliseconds(1) ||
               rl.strict_timeout > std::chrono::seconds(10))) {
      d.add(v->line, v->path + ": must be between 1ms and 10s");
      ok = false;
    }
    if (ok && rl.mode != "strict") {
      d.add(v->line, v->path + ": only a strict limit (mode: strict) asks an owner");
      ok = false;
    }
  }
  if (ok && rl.mode == "strict" && rl.max_delay.count() > 0) {
    d.add(f.line, f.path +
                      ": max_delay does not apply to mode: strict (the owner admits or refuses; "
                      "a held request would count on a decision that is not final)");
    ok = false;
  }
  if (ok && rl.calendar_month && rl.algorithm != "sliding_window" &&
      rl.algorithm != "fixed_window") {
    d.add(f.line, f.path +
                      ": a calendar window (1mo) counts requests per month: algorithm "
                      "token_bucket and leaky_bucket do not apply");
    ok = false;
  }
  if (ok && rl.window < std::chrono::milliseconds(100)) {
    d.add(f.line, f.path + ": window must be at least 100ms");
    ok = false;
  }
  m.finish();
  if (!ok) return std::nullopt;
  return rl;
}

void parse_fallback(diagnostics& d, const field& f, std::optional<fallback_config>& out) {
  map_reader m(d, f);
  if (!m.ok()) return;
  fallback_config fb;
  if (auto v = m.take("status")) read_uint(d, *v, fb.status, 100, 599);
  if (auto v = m.take("body")) read_string(d, *v, fb.body);
  if (auto v = m.take("content_type")) read_string(d, *v, fb.content_type, false);
  if (auto v = m.take("headers")) {
    for (auto& h : read_header_map(d, *v, false)) fb.headers.emplace_back(h.first, h.second);
  }
  m.finish();
  out = std::move(fb);
}

route_config parse_route(diagnostics& d, const field& f, route_refs& refs) {
  route_config r;
  r.line = f.line;
  map_reader m(d, f);
  if (!m.ok()) return r;
  if (auto v = m.require("name")) read_name(d, *v, r.name);
  if (auto v = m.take("match")) parse_match(d, *v, r.match);
  if (auto v = m.require("upstream")) {
    if (read_name(d, *v, r.upstream)) refs.upstream_line = v->line;
  }
  if (auto v = m.take("strip_prefix")) read_path(d, *v, r.strip_prefix);
  if (auto v = m.take("rewrite")) parse_rewrite(d, *v, r.rewrite);
  if (auto v = m.take("request_headers")) parse_header_transform(d, *v, r.request_headers);
  if (auto v = m.take("response_headers")) parse_header_transform(d, *v, r.response_headers);
  if (auto v = m.take("query")) parse_query_transform(d, *v, r.query);
  if (auto v = m.take("auth")) parse_auth(d, *v, r.auth, refs);
  if (auto v = m.take("rate_limit")) {
    // One limit as a map, or several as a list of maps.
    auto add = [&](const field& item) {
      if (std::optional<rate_limit_config> rl = parse_rate_limit(d, item)) {
        r.rate_limits.push_back(*rl);
      }
    };
    if (v->node.IsSequence()) {
      for_each_item(d, *v, add);
    } else {
      add(*v);
    }
    if (r.rate_limits.size() > max_rate_limits_per_route) {
      d.add(v->line, f.path + ": at most " + std::to_string(max_rate_limits_per_route) +
                         " rate limits per route");
    }
  }
  if (auto v = m.take("max_body_bytes")) {
    uint64_t size = 0;
    if (read_size(d, *v, size)) r.max_body_bytes = size;
  }
  if (auto v = m.take("fallback")) parse_fallback(d, *v, r.fallback);
  if (auto v = m.take("preserve_host")) {
    bool preserve = true;
    if (read_bool(d, *v, preserve)) r.preserve_host = preserve;
  }
  if (auto v = m.take("websocket")) read_bool(d, *v, r.websocket);
  if (auto v = m.take("api_version")) {
    if (read_string(d, *v, r.api_version, false) && r.api_version.size() > 64) {
      d.add(v->line, v->path + ": at most 64 characters");
    }
  }
  if (auto v = m.take("grpc_transcode")) r.grpc_transcode = parse_grpc_transcode(d, *v);
  m.finish();
  return r;
}

// --- consumers and jwt providers ---

consumer_config parse_consumer(diagnostics& d, const field& f) {
  consumer_config c;
  c.line = f.line;
  map_reader m(d, f);
  if (!m.ok()) return c;
  if (auto v = m.require("id")) read_name(d, *v, c.id);
  if (auto v = m.take("groups")) read_string_list(d, *v, c.groups);
  if (auto v = m.take("redirect_uris")) {
    read_string_list(d, *v, c.redirect_uris);
    for (const auto& uri : c.redirect_uris) {
      // RFC 6749 section 3.1.2: absolute, no fragment. Plain http only for loopback (native
      // apps, RFC 8252 section 7.3).
      bool https = uri.starts_with("https://") && uri.size() > 8;
      // http only to this machine: the host (between "http://" and the port, path or query)
      // must be exactly a loopback name, and no userinfo may hide another host.
      bool loopback = false;
      if (uri.starts_with("http://")) {
        std::string_view rest = std::string_view(uri).substr(7);
        std::string_view authority = rest.substr(0, rest.find_first_of("/?"));
        std::string_view host = authority;
        if (host.starts_with("[")) {
          host = host.substr(
              0, host.find(']') == std::string_view::npos ? host.size() : host.find(']') + 1);
        } else {
          host = host.substr(0, host.find(':'));
        }
        std::string_view port = authority.substr(host.size());
        bool port_ok =
            port.empty() || (port.size() > 1 && port[0] == ':' &&
                             port.find_first_not_of("0123456789", 1) == std::string_view::npos);
        loopback = authority.find('@') == std::string_view::npos && port_ok &&
                   (host == "127.0.0.1" || host == "[::1]" || host == "localhost");
      }
      bool custom_scheme = !https && !uri.starts_with("http") &&
                           uri.find(':') != std::string::npos && uri.find(':') > 0;
      if ((!https && !loopback && !custom_scheme) || uri.find('#') != std::string::npos ||
          uri.find_first_of(" \"<>\\") != std::string::npos) {
        d.add(v->line, v->path + ": '" + uri +
                           "' must be an absolute https:// URI (http:// only for loopback, or an "
                           "app's own scheme) without a fragment");
      }
    }
  }
  if (auto v = m.take("public_client")) read_bool(d, *v, c.public_client);
  m.finish();
  return c;
}

jwt_config parse_jwt(diagnostics& d, const field& f) {
  jwt_config j;
  j.line = f.line;
  map_reader m(d, f);
  if (!m.ok()) return j;
  if (auto v = m.require("name")) read_name(d, *v, j.name);
  if (auto v = m.take("issuer")) read_string(d, *v, j.issuer, false);
  if (auto v = m.take("audience")) read_string(d, *v, j.audience, false);
  if (auto v = m.take("consumer_claim")) {
    if (read_string(d, *v, j.consumer_claim, false) && j.consumer_claim.empty())
      d.add(v->line, v->path + ": must name a claim");
  }
  bool has_file = false;
  bool has_url = false;
  if (auto v = m.take("jwks_file")) has_file = read_string(d, *v, j.jwks_file, false);
  if (auto v = m.take("jwks_url")) {
    std::string url;
    if (read_string(d, *v, url, false)) {
      has_url = true;
      if (url.starts_with("https://") || url.starts_with("http://")) {
        j.jwks_url = std::move(url);
      } else {
        d.add(v->line, v->path + ": '" + url + "' must be an http:// or https:// URL");
      }
    }
  }
  if (has_file && has_url) {
    d.add(f.line, f.path + ": give only one of jwks_file and jwks_url");
  }
  if (auto v = m.take("jwks_refresh")) {
    if (read_duration(d, *v, j.jwks_refresh) && j.jwks_refresh < std::chrono::seconds(10))
      d.add(v->line, v->path + ": must be at least 10s");
  } else if (!has_file && !has_url) {
    d.add(f.line, f.path + ": one of jwks_file or jwks_url is required");
  }
  m.finish();
  return j;
}

oauth_config parse_oauth(diagnostics& d, const field& f) {
  oauth_config o;
  o.line = f.line;
  map_reader m(d, f);
  if (!m.ok()) return o;
  if (auto v = m.require("issuer")) read_string(d, *v, o.issuer, false);
  if (auto v = m.take("audience")) read_string(d, *v, o.audience, false);
  for (auto [key, out] :
       {std::pair{"token_path", &o.token_path}, std::pair{"introspect_path", &o.introspect_path},
        std::pair{"revoke_path", &o.revoke_path}, std::pair{"authorize_path", &o.authorize_path}}) {
    if (auto v = m.take(key)) {
      if (read_string(d, *v, *out, false) && (out->empty() || out->front() != '/'))
        d.add(v->line, v->path + ": must start with /");
    }
  }
  if (auto v = m.take("access_token_ttl")) {
    if (read_duration(d, *v, o.access_token_ttl) && o.access_token_ttl < std::chrono::seconds(10))
      d.add(v->line, v->path + ": must be at least 10s");
  }
  if (auto v = m.take("password_check_timeout")) {
    if (read_duration(d, *v, o.password_check_timeout) &&
        o.password_check_timeout < std::chrono::milliseconds(1))
      d.add(v->line, v->path + ": must be at least 1ms");
  }
  if (auto v = m.take("refresh_token_ttl")) {
    if (read_duration(d, *v, o.refresh_token_ttl) && o.refresh_token_ttl < std::chrono::minutes(1))
      d.add(v->line, v->path + ": must be at least 1m");
  }
  if (auto v = m.take("grants")) {
    o.grants.clear();
    for_each_item(d, *v, [&](const field& item) {
      std::string g;
      if (read_choice(d, item, g,
                      {"client_credentials", "password", "authorization_code", "refresh_token"}))
        o.grants.push_back(std::move(g));
    });
  }
  if (auto v = m.take("scopes")) read_string_list(d, *v, o.scopes);
  for (const auto& s : o.scopes) {
    if (s.empty() || s.find_first_of(" \"\\") != std::string::npos)
      d.add(f.line, f.path + ".scopes: '" + s + "' is not a scope token");
  }
  if (o.audience.empty()) o.audience = o.issuer;
  m.finish();
  return o;
}

tls_section parse_tls(diagnostics& d, const field& f) {
  tls_section t;
  map_reader m(d, f);
  if (!m.ok()) return t;
  if (auto v = m.take("listen")) read_address(d, *v, t.listen, true);
  if (auto v = m.require("certificates")) {
    for_each_item(d, *v, [&](const field& item) {
      tls_certificate c;
      c.line = item.line;
      map_reader cm(d, item);
      if (!cm.ok()) return;
      if (auto x = cm.require("cert")) read_string(d, *x, c.cert_file, false);
      if (auto x = cm.require("key")) read_string(d, *x, c.key_file, false);
      if (auto x = cm.take("names")) read_string_list(d, *x, c.names);
      cm.finish();
      t.certificates.push_back(std::move(c));
    });
    if (t.certificates.empty()) d.add(v->line, v->path + ": must list at least one certificate");
  }
  m.finish();
  return t;
}

// --- whole document ---

// Reports the second and later object with a name already used, pointing at the first.
template <class T, class Name>
void check_unique(diagnostics& d, const std::vector<T>& items, Name name_of,
                  std::string_view kind) {
  std::map<std::string, int, std::less<>> first_line;
  for (const T& item : items) {
    const std::string& name = name_of(item);
    if (name.empty()) continue;  // already reported as missing
    auto [it, inserted] = first_line.emplace(name, item.line);
    if (!inserted) {
      d.add(item.line, "duplicate " + std::string(kind) + " '" + name +
                           "' (first defined at line " + std::to_string(it->second) + ")");
    }
  }
}

void check_references(diagnostics& d, const config& cfg, const std::vector<route_refs>& refs) {
  check_unique(
      d, cfg.upstreams, [](const upstream_config& u) -> auto& { return u.name; }, "upstream name");
  check_unique(
      d, cfg.routes, [](const route_config& r) -> auto& { return r.name; }, "route name");
  check_unique(
      d, cfg.consumers, [](const consumer_config& c) -> auto& { return c.id; }, "consumer id");
  check_unique(
      d, cfg.jwt, [](const jwt_config& j) -> auto& { return j.name; }, "jwt name");

  for (const auto& u : cfg.upstreams) {
    for (const auto& name : u.failover) {
      bool known = std::any_of(cfg.upstreams.begin(), cfg.upstreams.end(),
                               [&](const upstream_config& o) { return o.name == name; });
      if (!known)
        d.add(u.line, "upstream '" + u.name + "': failover upstream '" + name + "' is not defined");
    }
  }
  for (size_t i = 0; i < cfg.routes.size(); ++i) {
    const route_config& r = cfg.routes[i];
    std::string label =
        r.name.empty() ? "routes[" + std::to_string(i) + "]" : "route '" + r.name + "'";
    bool upstream_known =
        std::any_of(cfg.upstreams.begin(), cfg.upstreams.end(),
                    [&](const upstream_config& u) { return u.name == r.upstream; });
    if (!r.upstream.empty() && !upstream_known) {
      d.add(refs[i].upstream_line, label + ": upstream '" + r.upstream + "' is not defined");
    }
    if (r.grpc_transcode && upstream_known) {
      auto up = std::find_if(cfg.upstreams.begin(), cfg.upstreams.end(),
                             [&](const upstream_config& u) { return u.name == r.upstream; });
      if (up->protocol == upstream_protocol::http1) {
        d.add(r.grpc_transcode->line, label + ": grpc_transcode calls gRPC, so upstream '" +
                                          r.upstream + "' needs protocol h2c or h2");
      }
    }
    if (!r.auth) continue;
    if (!r.auth->jwt.empty()) {
      bool jwt_known = std::any_of(cfg.jwt.begin(), cfg.jwt.end(),
                                   [&](const jwt_config& j) { return j.name == r.auth->jwt; });
      if (!jwt_known) {
        d.add(refs[i].jwt_line, label + ": jwt provider '" + r.auth->jwt + "' is not defined");
      }
    }
    bool uses_jwt =
        std::find(r.auth->methods.begin(), r.auth->methods.end(), "jwt") != r.auth->methods.end();
    if (uses_jwt && cfg.jwt.empty()) {
      d.add(refs[i].auth_line, label + ": auth uses jwt but no jwt providers are configured");
    }
    bool uses_oauth =
        std::find(r.auth->methods.begin(), r.auth->methods.end(), "oauth") != r.auth->methods.end();
    if (uses_oauth && !cfg.oauth) {
      d.add(refs[i].auth_line, label + ": auth uses oauth but there is no oauth section");
    }
  }
}

std::string default_node_id() {
  char name[256] = {};
  if (gethostname(name, sizeof(name) - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

void parse_document(diagnostics& d, const YAML::Node& root, config& cfg) {
  if (root.IsNull()) {
    d.add(1, "the config is empty (node.region is required)");
    return;
  }
  field top{root, "", line_of(root) != 0 ? line_of(root) : 1};
  map_reader m(d, top);
  if (!m.ok()) return;

  if (auto v = m.take("node")) {
    parse_node_section(d, *v, cfg.node);
  } else {
    d.add(m.line(), "missing required key 'node' (node.region is required)");
  }
  if (cfg.node.id.empty()) cfg.node.id = default_node_id();
  if (auto v = m.take("listen")) parse_listen_section(d, *v, cfg.listen);
  if (auto v = m.take("admin")) parse_admin_section(d, *v, cfg.admin);
  if (auto v = m.take("cluster")) parse_cluster_section(d, *v, cfg.cluster.emplace());
  if (auto v = m.take("limits")) parse_limits_section(d, *v, cfg.limits);
  if (auto v = m.take("http2")) parse_http2_section(d, *v, cfg.http2);
  if (auto v = m.take("path_normalization")) {
    parse_path_normalization(d, *v, cfg.path_normalization);
  }
  if (auto v = m.take("log")) parse_log_section(d, *v, cfg.log);
  if (auto v = m.take("tracing")) cfg.tracing = parse_tracing(d, *v);
  if (auto v = m.take("analytics")) parse_analytics(d, *v, cfg.analytics);
  if (auto v = m.take("upstreams")) {
    for_each_item(d, *v,
                  [&](const field& item) { cfg.upstreams.push_back(parse_upstream(d, item)); });
  }
  std::vector<route_refs> refs;
  if (auto v = m.take("routes")) {
    for_each_item(d, *v, [&](const field& item) {
      cfg.routes.push_back(parse_route(d, item, refs.emplace_back()));
    });
  }
  if (auto v = m.take("consumers")) {
    for_each_item(d, *v,
                  [&](const field& item) { cfg.consumers.push_back(parse_consumer(d, item)); });
  }
  if (auto v = m.take("jwt")) {
    for_each_item(d, *v, [&](const field& item) { cfg.jwt.push_back(parse_jwt(d, item)); });
  }
  if (auto v = m.take("oauth")) cfg.oauth = parse_oauth(d, *v);
  if (auto v = m.take("tls")) cfg.tls = parse_tls(d, *v);
  m.finish();
  check_references(d, cfg, refs);
}

int line_of(const YAML::Mark& mark) {
  return mark.line >= 0 ? mark.line + 1 : 0;
}

config_result failure(const std::string& file, int line, std::string message) {
  config_result result;
  result.errors.push_back(config_error{file, line, std::move(message)});
  return result;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public functions.

std::optional<duration> parse_duration(std::string_view text) {
  // NUMBER[.FRACTION]UNIT, no sign or spaces; the result must be a whole number of milliseconds.
  size_t i = 0;
  uint64_t whole = 0;
  for (; i < text.size() && is_digit(text[i]); ++i) {
    whole = whole * 10 + static_cast<uint64_t>(text[i] - '0');
    if (whole > max_duration_ms) return std::nullopt;
  }
  if (i == 0) return std::nullopt;
  uint64_t fraction = 0;
  uint64_t scale = 1;
  if (i < text.size() && text[i] == '.') {
    size_t start = ++i;
    for (; i < text.size() && is_digit(text[i]); ++i) {
      if (scale >= 1'000'000'000) return std::nullopt;  // more precision than anyone means
      fraction = fraction * 10 + static_cast<uint64_t>(text[i] - '0');
      scale *= 10;
    }
    if (i == start) return std::nullopt;
  }
  std::string_view unit = text.substr(i);
  uint64_t unit_ms = 0;
  if (unit == "ms") {
    unit_ms = 1;
  } else if (unit == "s") {
    unit_ms = 1000;
  } else if (unit == "m") {
    unit_ms = 60 * 1000;
  } else if (unit == "h") {
    unit_ms = 3600 * 1000;
  } else if (unit == "d") {
    unit_ms = 24 * 3600 * 1000;
  } else {
    return std::nullopt;
  }
  if (whole > max_duration_ms / unit_ms) return std::nullopt;
  // fraction < 1e9 and unit_ms < 1e8, so the product fits in 64 bits.
  if ((fraction * unit_ms) % scale != 0) return std::nullopt;  // finer than a millisecond
  uint64_t total = whole * unit_ms + fraction * unit_ms / scale;
  if (total > max_duration_ms) return std::nullopt;
  return duration(static_cast<duration::rep>(total));
}

// The host is stored without brackets ("::1"), which is what resolvers expect; to_string() puts
// them back.
std::optional<address> parse_address(std::string_view text, bool allow_zero) {
  std::string_view host;
  std::string_view port;
  if (text.starts_with('[')) {
    size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return std::nullopt;
    }
    host = text.substr(1, close - 1);
    port = text.substr(close + 2);
    in6_addr v6{};
    if (host.empty() || inet_pton(AF_INET6, std::string(host).c_str(), &v6) != 1) {
      return std::nullopt;
    }
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    host = text.substr(0, colon);
    port = text.substr(colon + 1);
    if (!is_host_name_or_ipv4(host)) return std::nullopt;  // also rejects unbracketed IPv6
  }
  if (port.size() > 5) return std::nullopt;
  std::optional<uint64_t> number = parse_u64(port);
  if (!number || *number > 65535 || (*number == 0 && !allow_zero)) return std::nullopt;
  return address{std::string(host), static_cast<uint16_t>(*number)};
}

// Sizes: a plain byte count, or a whole number with a unit. Every unit is a power of 1024,
// whatever its spelling, and units are case-insensitive: b; k, kb, kib; m, mb, mib; g, gb, gib.
std::optional<uint64_t> parse_size(std::string_view text) {
  size_t digits = 0;
  while (digits < text.size() && is_digit(text[digits])) ++digits;
  std::optional<uint64_t> number = parse_u64(text.substr(0, digits));
  if (!number) return std::nullopt;
  std::string unit = to_lower(text.substr(digits));
  uint64_t multiplier = 0;
  if (unit.empty() || unit == "b") {
    multiplier = 1;
  } else if (unit == "k" || unit == "kb" || unit == "kib") {
    multiplier = uint64_t{1} << 10;
  } else if (unit == "m" || unit == "mb" || unit == "mib") {
    multiplier = uint64_t{1} << 20;
  } else if (unit == "g" || unit == "gb" || unit == "gib") {
    multiplier = uint64_t{1} << 30;
  } else {
    return std::nullopt;
  }
  if (*number > std::numeric_limits<uint64_t>::max() / multiplier) return std::nullopt;
  return *number * multiplier;
}

std::string address::to_string() const {
  std::string out = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  return out + ":" + std::to_string(port);
}

std::string config_error::to_string() const {
  // gcc style: the line is left out when it is unknown (e.g. the file cannot be read).
  if (line <= 0) return file + ": " + message;
  return file + ":" + std::to_string(line) + ": " + message;
}

config_result parse_config(const std::string& yaml_text, const std::string& file_name) {
  try {
    std::vector<YAML::Node> documents;
    try {
      documents = YAML::LoadAll(yaml_text);
    } catch (const YAML::Exception& e) {
      return failure(file_name, line_of(e.mark), "invalid YAML: " + e.msg);
    }
    diagnostics d(file_name);
    config cfg;
    cfg.source = file_name;
    if (documents.empty()) {
      d.add(1, "the config is empty (node.region is required)");
    } else {
      parse_document(d, documents.front(), cfg);
      for (size_t i = 1; i < documents.size(); ++i) {
        d.add(line_of(documents[i]), "only one YAML document is allowed");
      }
    }
    config_result result;
    if (d.empty()) {
      result.value = std::move(cfg);
    } else {
      result.errors = d.take_sorted();
    }
    return result;
  } catch (const YAML::Exception& e) {
    return failure(file_name, line_of(e.mark), "invalid YAML: " + e.msg);
  } catch (const std::exception& e) {
    return failure(file_name, 0, std::string("cannot load config: ") + e.what());
  } catch (...) {
    return failure(file_name, 0, "cannot load config: unknown error");
  }
}

const char* document_kind_path(document_kind k) {
  switch (k) {
    case document_kind::route:
      return "routes";
    case document_kind::upstream:
      return "upstreams";
    case document_kind::consumer:
      return "consumers";
  }
  return "?";
}

std::optional<document_kind> document_kind_from_path(std::string_view segment) {
  for (auto k : {document_kind::route, document_kind::upstream, document_kind::consumer})
    if (segment == document_kind_path(k)) return k;
  return std::nullopt;
}

// One parsed document: what compose_config took from it, or its problems.
struct cached_document {
  std::string body;
  document_kind kind = document_kind::route;
  std::optional<route_config> route;
  std::optional<upstream_config> upstream;
  std::optional<consumer_config> consumer;
  route_refs refs;
  std::vector<std::string> errors;
  uint64_t used = 0;  // the generation of the last compose that used it
};

struct document_cache::impl {
  mutable std::mutex mutex;
  std::unordered_map<std::string, cached_document> entries;
  uint64_t generation = 0;
};

document_cache::document_cache() : impl_(std::make_unique<impl>()) {}
document_cache::~document_cache() = default;
size_t document_cache::size() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->entries.size();
}

namespace {

// Parses one document into *out (its errors included). Never throws.
void parse_document(const config_document& doc, const std::string& label, cached_document* out) {
  diagnostics d(label);
  out->body = doc.body;
  out->kind = doc.kind;
  try {
    YAML::Node root = YAML::Load(doc.body);
    field f{root, "", line_of(root) != 0 ? line_of(root) : 1};
    if (!root.IsMap()) {
      expected(d, f, "a map");
    } else {
      switch (doc.kind) {
        case document_kind::route: {
          route_refs r;
          route_config rc = parse_route(d, f, r);
          if (d.empty() && rc.name != doc.name)
            d.add(0, "name '" + rc.name + "' does not match the path");
          if (d.empty()) {
            out->route = std::move(rc);
            out->refs = r;
          }
          break;
        }
        case document_kind::upstream: {
          upstream_config u = parse_upstream(d, f);
          if (d.empty() && u.name != doc.name)
            d.add(0, "name '" + u.name + "' does not match the path");
          if (d.empty()) out->upstream = std::move(u);
          break;
        }
        case document_kind::consumer: {
          consumer_config c = parse_consumer(d, f);
          if (d.empty() && c.id != doc.name) d.add(0, "id '" + c.id + "' does not match the path");
          if (d.empty()) out->consumer = std::move(c);
          break;
        }
      }
    }
  } catch (const YAML::Exception& e) {
    d.add(line_of(e.mark), "invalid JSON: " + e.msg);
  } catch (const std::exception& e) {
    d.add(0, std::string("cannot parse: ") + e.what());
  }
  for (const auto& e : d.take_sorted()) out->errors.push_back(e.to_string());
}

}  // namespace

namespace {

// compose_config and compose_errors: errors_only skips building the composed config (a copy of
// every document), which validating a change does not need.
compose_result compose(const config& base, const std::vector<config_document>& docs, bool strict,
                       document_cache* cache, bool errors_only) {
  compose_result out;
  std::unique_lock<std::mutex> lock;
  uint64_t generation = 0;
  if (cache) {
    lock = std::unique_lock(cache->internals().mutex);
    generation = ++cache->internals().generation;
  }
  // Parsed documents, in order: cache entries, or parsed here without a cache.
  std::deque<cached_document> fresh;
  std::vector<std::pair<const cached_document*, std::string>> parsed;  // with its label
  parsed.reserve(docs.size());
  for (const auto& doc : docs) {
    std::string label = std::string(document_kind_path(doc.kind)) + "/" + doc.name;
    const cached_document* entry = nullptr;
    if (cache) {
      auto& entries = cache->internals().entries;
      auto it = entries.find(label);
      if (it == entries.end() || it->second.body != doc.body || it->second.kind != doc.kind) {
        cached_document c;
        parse_document(doc, label, &c);
        it = entries.insert_or_assign(label, std::move(c)).first;
      }
      it->second.used = generation;
      entry = &it->second;
    } else {
      parse_document(doc, label, &fresh.emplace_back());
      entry = &fresh.back();
    }
    for (const auto& e : entry->errors) out.errors.push_back(e);
    parsed.emplace_back(entry, std::move(label));
  }

  // An upstream's failover names must exist; without strict, missing ones are dropped.
  std::unordered_set<std::string_view> upstream_names;
  for (const auto& [e, label] : parsed)
    if (e->upstream) upstream_names.insert(e->upstream->name);
  for (const auto& [e, label] : parsed) {
    if (!e->upstream) continue;
    for (const auto& name : e->upstream->failover) {
      if (!upstream_names.count(name)) {
        out.errors.push_back("upstreams/" + e->upstream->name + ": failover upstream '" + name +
                             "' is not defined");
      }
    }
  }
  // References between documents: a route's upstream and jwt provider must exist. Without
  // strict, such a route is dropped (reported) and the rest stays.
  std::vector<bool> keep(parsed.size(), true);
  for (size_t i = 0; i < parsed.size(); ++i) {
    if (!parsed[i].first->route) continue;
    const route_config& r = *parsed[i].first->route;
    std::vector<std::string> problems;
    if (!upstream_names.count(r.upstream))
      problems.push_back("upstream '" + r.upstream + "' is not defined");
    if (r.auth && !r.auth->jwt.empty() &&
        std::none_of(base.jwt.begin(), base.jwt.end(),
                     [&](const jwt_config& j) { return j.name == r.auth->jwt; })) {
      problems.push_back("jwt provider '" + r.auth->jwt + "' is not defined on this node");
    }
    if (r.auth && base.jwt.empty() &&
        std::find(r.auth->methods.begin(), r.auth->methods.end(), "jwt") != r.auth->methods.end()) {
      problems.push_back("auth uses jwt but this node has no jwt providers");
    }
    if (r.auth && !base.oauth &&
        std::find(r.auth->methods.begin(), r.auth->methods.end(), "oauth") !=
            r.auth->methods.end()) {
      problems.push_back("auth uses oauth but this node has no oauth section");
    }
    for (const auto& p : problems) out.errors.push_back(parsed[i].second + ": " + p);
    keep[i] = problems.empty();
  }

  if (!errors_only && !(strict && !out.errors.empty())) {
    out.cfg = base;
    out.cfg.routes.clear();
    out.cfg.upstreams.clear();
    out.cfg.consumers.clear();
    out.cfg.routes.reserve(parsed.size());
    for (size_t i = 0; i < parsed.size(); ++i) {
      const cached_document& e = *parsed[i].first;
      if (e.route && keep[i]) {
        out.cfg.routes.push_back(*e.route);
      } else if (e.upstream) {
        upstream_config u = *e.upstream;
        std::erase_if(u.failover, [&](const std::string& n) { return !upstream_names.count(n); });
        out.cfg.upstreams.push_back(std::move(u));
      } else if (e.consumer) {
        out.cfg.consumers.push_back(*e.consumer);
      }
    }
  } else if (!errors_only) {
    out.cfg = base;
    out.cfg.routes.clear();
    out.cfg.upstreams.clear();
    out.cfg.consumers.clear();
  }
  if (cache) {
    // Forget documents no longer in use once they could be a good part of the cache.
    auto& entries = cache->internals().entries;
    if (entries.size() > 2 * docs.size() + 64) {
      std::erase_if(entries, [&](const auto& e) { return e.second.used != generation; });
    }
  }
  return out;
}

}  // namespace

compose_result compose_config(const config& base, const std::vector<config_document>& docs,
                              bool strict, document_cache* cache) {
  return compose(base, docs, strict, cache, /*errors_only=*/false);
}

std::vector<std::string> compose_errors(const config& base,
                                        const std::vector<config_document>& docs,
                                        document_cache* cache) {
  return compose(base, docs, /*strict=*/false, cache, /*errors_only=*/true).errors;
}

config_result load_config(const std::string& path) {
  try {
    std::unique_ptr<std::FILE, int (*)(std::FILE*)> file(std::fopen(path.c_str(), "rb"),
                                                         &std::fclose);
    if (!file) return failure(path, 0, std::string("cannot open: ") + std::strerror(errno));
    std::string text;
    char buffer[64 * 1024];
    for (;;) {
      size_t n = std::fread(buffer, 1, sizeof(buffer), file.get());
      text.append(buffer, n);
      if (text.size() > max_config_bytes) {
        return failure(path, 0,
                       "file is larger than " + std::to_string(max_config_bytes >> 20) + " MiB");
      }
      if (n < sizeof(buffer)) break;
    }
    if (std::ferror(file.get())) {
      return failure(path, 0, std::string("cannot read: ") + std::strerror(errno));
    }
    return parse_config(text, path);
  } catch (const std::exception& e) {
    return failure(path, 0, std::string("cannot load config: ") + e.what());
  }
}

}  // namespace meridian::node
