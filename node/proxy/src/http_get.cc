#include "http_get.h"

#include <openssl/ssl.h>

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http/empty_body.hpp>
#include <boost/beast/http/read.hpp>
#include <boost/beast/http/string_body.hpp>
#include <boost/beast/http/write.hpp>
#include <boost/url/parse.hpp>
#include <optional>

namespace meridian::node {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

struct request_target {
  bool tls = false;
  std::string host;  // as in the URL, without IPv6 brackets
  std::string port;
  std::string resource;  // path and query
};

template <class Stream>
asio::awaitable<void> exchange(Stream& stream, beast::tcp_stream& tcp_layer,
                               const request_target& t, const http_get_options& o,
                               http::response_parser<http::string_body>& parser) {
  http::request<http::empty_body> req{http::verb::get, t.resource, 11};
  req.set(http::field::host, t.host);
  req.set(http::field::user_agent, "meridian");
  req.set(http::field::accept, "application/json");
  req.set(http::field::connection, "close");
  tcp_layer.expires_after(o.timeout);
  co_await http::async_write(stream, req, asio::use_awaitable);
  beast::flat_buffer buffer;
  co_await http::async_read(stream, buffer, parser, asio::use_awaitable);
}

asio::awaitable<void> fetch(asio::io_context& ioc, const request_target& t,
                            const http_get_options& o,
                            http::response_parser<http::string_body>& parser) {
  tcp::resolver resolver(ioc);
  auto found = co_await resolver.async_resolve(t.host, t.port, asio::use_awaitable);
  beast::tcp_stream tcp_layer(ioc);
  tcp_layer.expires_after(o.connect_timeout);
  co_await tcp_layer.async_connect(found, asio::use_awaitable);
  if (!t.tls) {
    co_await exchange(tcp_layer, tcp_layer, t, o, parser);
    co_return;
  }
  asio::ssl::context ctx(asio::ssl::context::tls_client);
  ctx.set_default_verify_paths();
  ctx.set_verify_mode(asio::ssl::verify_peer);
  asio::ssl::stream<beast::tcp_stream&> stream(tcp_layer, ctx);
  SSL_set_tlsext_host_name(stream.native_handle(), t.host.c_str());
  stream.set_verify_callback(asio::ssl::host_name_verification(t.host));
  tcp_layer.expires_after(o.timeout);
  co_await stream.async_handshake(asio::ssl::stream_base::client, asio::use_awaitable);
  co_await exchange(stream, tcp_layer, t, o, parser);
}

}  // namespace

bool http_get(std::string_view url, std::string* body, std::string* error,
              const http_get_options& options) {
  auto u = boost::urls::parse_uri(url);
  if (!u || (u->scheme() != "http" && u->scheme() != "https") || u->host().empty()) {
    *error = "not an http(s) URL";
    return false;
  }
  request_target t;
  t.tls = u->scheme() == "https";
  t.host = u->host_address();
  t.port = u->has_port() ? std::string(u->port()) : (t.tls ? "443" : "80");
  t.resource = std::string(u->encoded_resource());
  if (t.resource.empty() || t.resource.front() != '/') t.resource.insert(0, "/");

  asio::io_context ioc(1);
  http::response_parser<http::string_body> parser;
  parser.body_limit(options.max_body_bytes);
  std::optional<std::string> failure;
  asio::co_spawn(ioc, fetch(ioc, t, options, parser), [&](std::exception_ptr e) {
    if (!e) return;
    try {
      std::rethrow_exception(e);
    } catch (const boost::system::system_error& se) {
      failure = se.code() == beast::error::timeout ? std::string("timed out") : se.code().message();
    } catch (const std::exception& ex) {
      failure = ex.what();
    }
  });
  ioc.run();
  if (failure) {
    *error = *failure;
    return false;
  }
  auto& res = parser.get();
  if (res.result_int() != 200) {
    *error = "status " + std::to_string(res.result_int());
    return false;
  }
  *body = std::move(res.body());
  return true;
}

}  // namespace meridian::node
