#include "upstream_tls.h"

#include <openssl/ssl.h>

namespace meridian::node {

namespace asio = boost::asio;

std::shared_ptr<asio::ssl::context> make_upstream_tls(const upstream_config& cfg,
                                                      std::string* error) {
  if (!cfg.tls) return nullptr;
  const auto& t = *cfg.tls;
  auto ctx = std::make_shared<asio::ssl::context>(asio::ssl::context::tls_client);
  boost::system::error_code ec;
  ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                   asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                   asio::ssl::context::no_tlsv1_1);
  auto fail = [&](const std::string& what) {
    *error = "upstream " + cfg.name + ": tls: " + what + ": " + ec.message();
    return nullptr;
  };
  if (t.verify) {
    ctx->set_verify_mode(asio::ssl::verify_peer, ec);
    if (!t.ca_file.empty()) {
      ctx->load_verify_file(t.ca_file, ec);
      if (ec) return fail("cannot load ca_file " + t.ca_file);
    } else {
      ctx->set_default_verify_paths(ec);
      if (ec) return fail("cannot load the system's certificate store");
    }
  } else {
    ctx->set_verify_mode(asio::ssl::verify_none, ec);
  }
  if (!t.cert_file.empty()) {
    ctx->use_certificate_chain_file(t.cert_file, ec);
    if (ec) return fail("cannot load cert " + t.cert_file);
    ctx->use_private_key_file(t.key_file, asio::ssl::context::pem, ec);
    if (ec) return fail("cannot load key " + t.key_file);
  }
  // ALPN (RFC 7301): the upstream must pick what the gateway will speak.
  static constexpr unsigned char h2[] = {2, 'h', '2'};
  static constexpr unsigned char http11[] = {8, 'h', 't', 't', 'p', '/', '1', '.', '1'};
  if (cfg.protocol == upstream_protocol::h2) {
    SSL_CTX_set_alpn_protos(ctx->native_handle(), h2, sizeof h2);
  } else {
    SSL_CTX_set_alpn_protos(ctx->native_handle(), http11, sizeof http11);
  }
  SSL_CTX_set_session_cache_mode(ctx->native_handle(), SSL_SESS_CACHE_OFF);
  return ctx;
}

std::string upstream_server_name(const upstream_config& cfg, const std::string& target_host) {
  if (cfg.tls && !cfg.tls->server_name.empty()) return cfg.tls->server_name;
  return target_host;
}

}  // namespace meridian::node
