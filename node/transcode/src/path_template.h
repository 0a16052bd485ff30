#pragma once
// google.api.http path templates: parsing, and matching against a request path's segments.
//
//   Template = "/" Segments [ Verb ] ;
//   Segments = Segment { "/" Segment } ;
//   Segment  = "*" | "**" | LITERAL | Variable ;
//   Variable = "{" FieldPath [ "=" Segments ] "}" ;
//   FieldPath = IDENT { "." IDENT } ;
//   Verb     = ":" LITERAL ;

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace meridian::transcode {

// The kinds in order of specificity: a literal is the most specific.
enum class segment_kind : uint8_t { literal = 0, single = 1, rest = 2 };  // rest is "**"

struct path_segment {
  segment_kind kind = segment_kind::literal;
  std::string literal;  // for segment_kind::literal
};

struct path_variable {
  std::string field_path;  // "book.id"
  size_t begin = 0;        // its first segment in path_template::segments
  size_t end = 0;          // one past its last
  // True for "{x}" and "{x=*}": the value is one segment, fully percent-decoded.
  bool single = false;
};

struct path_template {
  std::vector<path_segment> segments;  // "**", if any, is the last
  std::vector<path_variable> variables;
  std::string verb;  // without the ':'

  // Returns the template with variables reduced to their segments ("/v1/shelves/*:watch"): two
  // templates with the same canonical form match the same paths.
  std::string canonical() const;
};

// Parses a template; returns nullopt with *error saying what is wrong.
std::optional<path_template> parse_path_template(std::string_view text, std::string* error);

// Percent-decodes one path segment into *out; keeps "%2F"/"%2f" encoded when keep_slash.
// Returns false when a '%' is not followed by two hex digits.
bool decode_segment(std::string_view raw, bool keep_slash, std::string* out);

// Percent-decodes a query-string component, '+' as a space. Returns false as decode_segment.
bool decode_query_component(std::string_view raw, std::string* out);

// Returns true when the template's segments (not its verb) match `decoded`, the request path's
// fully decoded segments.
bool segments_match(const path_template& t, const std::vector<std::string>& decoded);

}  // namespace meridian::transcode
