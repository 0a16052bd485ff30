#pragma once
// The HTTP/1.1 parsers: thin Beast basic_parser subclasses that forward every callback to
// their owner (the client session for requests, an upstream call for responses), and the
// line-ending check both sides apply to the views Beast hands out.

#include <boost/beast/core/string.hpp>
#include <boost/beast/http/basic_parser.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/beast/http/verb.hpp>
#include <cstdint>
#include <string_view>

#include "meridian/common/byte_buffer.h"

namespace meridian::node {

namespace beast = boost::beast;
namespace http = boost::beast::http;
using error_code = boost::system::error_code;

// Returns true when `v`, a view into `in`, is followed by optional whitespace and CRLF: the
// line it ends was neither folded (the parser would have copied it elsewhere) nor ended by a
// bare LF.
inline bool ends_line(std::string_view v, const byte_buffer& in) {
  const char* end = v.data() + v.size();
  const char* limit = in.data() + in.size();
  if (v.data() < in.data() || end > limit) return false;
  while (end < limit && (*end == ' ' || *end == '\t')) ++end;
  return end + 1 < limit && end[0] == '\r' && end[1] == '\n';
}

template <class Owner>
class request_parser final : public http::basic_parser<true> {
 public:
  explicit request_parser(Owner& owner) : owner_(owner) {}

 private:
  void on_request_impl(http::verb v, beast::string_view method, beast::string_view target,
                       int version, error_code& ec) override {
    owner_.on_request_line(v, method, target, version, ec);
  }
  void on_response_impl(int, beast::string_view, int, error_code&) override {}
  void on_field_impl(http::field f, beast::string_view name, beast::string_view value,
                     error_code& ec) override {
    owner_.on_request_field(f, name, value, ec);
  }
  void on_header_impl(error_code& ec) override { owner_.on_request_header(*this, ec); }
  void on_body_init_impl(const boost::optional<std::uint64_t>&, error_code&) override {}
  std::size_t on_body_impl(beast::string_view body, error_code& ec) override {
    owner_.on_request_body(body, ec);
    return body.size();
  }
  void on_chunk_header_impl(std::uint64_t size, beast::string_view, error_code& ec) override {
    owner_.on_request_chunk_header(size, ec);
  }
  std::size_t on_chunk_body_impl(std::uint64_t, beast::string_view body, error_code& ec) override {
    owner_.on_request_body(body, ec);
    return body.size();
  }
  void on_finish_impl(error_code& ec) override { owner_.on_request_finish(ec); }

  Owner& owner_;
};

template <class Owner>
class response_parser final : public http::basic_parser<false> {
 public:
  explicit response_parser(Owner& owner) : owner_(owner) {}

 private:
  void on_request_impl(http::verb, beast::string_view, beast::string_view, int,
                       error_code&) override {}
  void on_response_impl(int status, beast::string_view reason, int version,
                        error_code& ec) override {
    owner_.on_response_line(status, reason, version, ec);
  }
  void on_field_impl(http::field f, beast::string_view name, beast::string_view value,
                     error_code& ec) override {
    owner_.on_response_field(f, name, value, ec);
  }
  void on_header_impl(error_code& ec) override { owner_.on_response_header(*this, ec); }
  void on_body_init_impl(const boost::optional<std::uint64_t>&, error_code&) override {}
  std::size_t on_body_impl(beast::string_view body, error_code& ec) override {
    owner_.on_response_body(body, ec);
    return body.size();
  }
  void on_chunk_header_impl(std::uint64_t size, beast::string_view, error_code& ec) override {
    owner_.on_response_chunk_header(size, ec);
  }
  std::size_t on_chunk_body_impl(std::uint64_t, beast::string_view body, error_code& ec) override {
    owner_.on_response_body(body, ec);
    return body.size();
  }
  void on_finish_impl(error_code& ec) override { owner_.on_response_finish(ec); }

  Owner& owner_;
};

}  // namespace meridian::node
