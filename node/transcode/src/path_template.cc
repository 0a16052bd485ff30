#include "path_template.h"

namespace meridian::transcode {
namespace {

// Characters that end a literal: the grammar's punctuation.
bool is_punctuation(char c) {
  return c == '/' || c == '{' || c == '}' || c == '*' || c == '=' || c == ':';
}

bool is_ident_char(char c, bool first) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
         (!first && c >= '0' && c <= '9');
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool decode(std::string_view raw, bool keep_slash, bool plus_is_space, std::string* out) {
  out->clear();
  out->reserve(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    char c = raw[i];
    if (c == '+' && plus_is_space) {
      out->push_back(' ');
      continue;
    }
    if (c != '%') {
      out->push_back(c);
      continue;
    }
    if (i + 2 >= raw.size()) return false;
    int hi = hex_value(raw[i + 1]);
    int lo = hex_value(raw[i + 2]);
    if (hi < 0 || lo < 0) return false;
    char decoded = static_cast<char>(hi * 16 + lo);
    if (decoded == '/' && keep_slash) {
      out->append(raw.substr(i, 3));
    } else {
      out->push_back(decoded);
    }
    i += 2;
  }
  return true;
}

// A recursive-descent parser over the template text; at most two levels deep (a variable's
// segments cannot hold another variable).
class template_parser {
 public:
  explicit template_parser(std::string_view text) : text_(text) {}

  std::optional<path_template> parse(std::string* error) {
    if (!consume('/')) return fail("must start with '/'", error);
    if (!parse_segments(false)) return fail(error_, error);
    if (pos_ < text_.size() && text_[pos_] == ':') {
      ++pos_;
      size_t begin = pos_;
      while (pos_ < text_.size() && !is_punctuation(text_[pos_])) ++pos_;
      if (pos_ == begin) return fail("empty verb after ':'", error);
      result_.verb = std::string(text_.substr(begin, pos_ - begin));
    }
    if (pos_ != text_.size())
      return fail("unexpected '" + std::string(1, text_[pos_]) + "'", error);
    for (size_t i = 0; i + 1 < result_.segments.size(); ++i) {
      if (result_.segments[i].kind == segment_kind::rest) {
        return fail("'**' must be the last segment", error);
      }
    }
    return std::move(result_);
  }

 private:
  std::optional<path_template> fail(const std::string& what, std::string* error) {
    *error = "path template \"" + std::string(text_) + "\": " + what;
    return std::nullopt;
  }

  bool consume(char c) {
    if (pos_ < text_.size() && text_[pos_] == c) {
      ++pos_;
      return true;
    }
    return false;
  }

  bool parse_segments(bool in_variable) {
    do {
      if (!parse_segment(in_variable)) return false;
    } while (consume('/'));
    return true;
  }

  bool parse_segment(bool in_variable) {
    if (consume('*')) {
      bool rest = consume('*');
      result_.segments.push_back({rest ? segment_kind::rest : segment_kind::single, {}});
      return true;
    }
    if (pos_ < text_.size() && text_[pos_] == '{') {
      if (in_variable) {
        error_ = "a variable cannot hold another";
        return false;
      }
      return parse_variable();
    }
    size_t begin = pos_;
    while (pos_ < text_.size() && !is_punctuation(text_[pos_])) ++pos_;
    if (pos_ == begin) {
      error_ = pos_ < text_.size() ? "unexpected '" + std::string(1, text_[pos_]) + "'"
                                   : "empty segment at the end";
      return false;
    }
    result_.segments.push_back(
        {segment_kind::literal, std::string(text_.substr(begin, pos_ - begin))});
    return true;
  }

  bool parse_variable() {
    ++pos_;  // '{'
    path_variable v;
    size_t begin = pos_;
    for (;;) {
      size_t ident = pos_;
      while (pos_ < text_.size() && is_ident_char(text_[pos_], pos_ == ident)) ++pos_;
      if (pos_ == ident) {
        error_ = "bad field path in a variable";
        return false;
      }
      if (!consume('.')) break;
    }
    v.field_path = std::string(text_.substr(begin, pos_ - begin));
    v.begin = result_.segments.size();
    if (consume('=')) {
      if (!parse_segments(true)) return false;
    } else {
      result_.segments.push_back({segment_kind::single, {}});
    }
    if (!consume('}')) {
      error_ = "variable {" + v.field_path + "} is not closed by '}'";
      return false;
    }
    v.end = result_.segments.size();
    v.single = v.end == v.begin + 1 && result_.segments[v.begin].kind == segment_kind::single;
    result_.variables.push_back(std::move(v));
    return true;
  }

  std::string_view text_;
  size_t pos_ = 0;
  path_template result_;
  std::string error_;
};

}  // namespace

std::string path_template::canonical() const {
  std::string out;
  for (const path_segment& s : segments) {
    out += '/';
    switch (s.kind) {
      case segment_kind::literal:
        out += s.literal;
        break;
      case segment_kind::single:
        out += '*';
        break;
      case segment_kind::rest:
        out += "**";
        break;
    }
  }
  if (!verb.empty()) out += ':' + verb;
  return out;
}

std::optional<path_template> parse_path_template(std::string_view text, std::string* error) {
  return template_parser(text).parse(error);
}

bool decode_segment(std::string_view raw, bool keep_slash, std::string* out) {
  return decode(raw, keep_slash, false, out);
}

bool decode_query_component(std::string_view raw, std::string* out) {
  return decode(raw, false, true, out);
}

bool segments_match(const path_template& t, const std::vector<std::string>& decoded) {
  size_t n = t.segments.size();
  bool rest = n > 0 && t.segments.back().kind == segment_kind::rest;
  size_t fixed = rest ? n - 1 : n;
  if (rest ? decoded.size() < fixed : decoded.size() != fixed) return false;
  for (size_t i = 0; i < fixed; ++i) {
    const path_segment& s = t.segments[i];
    if (s.kind == segment_kind::literal ? decoded[i] != s.literal : decoded[i].empty()) {
      return false;
    }
  }
  return true;
}

}  // namespace meridian::transcode
