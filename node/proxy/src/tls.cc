#include "meridian/proxy/tls.h"

#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <algorithm>
#include <cctype>

namespace meridian::node {

namespace asio = boost::asio;

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return s;
}

// The DNS subjectAltNames of the context's certificate, else its subject CN.
std::vector<std::string> names_of(SSL_CTX* ctx) {
  std::vector<std::string> out;
  X509* cert = SSL_CTX_get0_certificate(ctx);
  if (!cert) return out;
  auto* sans =
      static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
  if (sans) {
    for (int i = 0; i < sk_GENERAL_NAME_num(sans); ++i) {
      const GENERAL_NAME* n = sk_GENERAL_NAME_value(sans, i);
      if (n->type != GEN_DNS) continue;
      const auto* s = n->d.dNSName;
      out.push_back(lower(std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                                      static_cast<size_t>(ASN1_STRING_length(s)))));
    }
    GENERAL_NAMES_free(sans);
  }
  if (out.empty()) {
    char cn[256] = {};
    if (X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn) > 0) {
      out.push_back(lower(cn));
    }
  }
  return out;
}

int on_server_name(SSL* ssl, int*, void* arg) {
  const auto* store = static_cast<const tls_store*>(arg);
  const char* name = SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name);
  if (!name) return SSL_TLSEXT_ERR_OK;  // no SNI: the default certificate
  size_t i = store->select(lower(name));
  if (i != 0) SSL_set_SSL_CTX(ssl, store->context(i).native_handle());
  return SSL_TLSEXT_ERR_OK;
}

}  // namespace

// ALPN (RFC 7301): h2 when the client offers it and HTTP/2 is on, else http/1.1; a client that
// offers neither gets no ALPN answer and speaks HTTP/1.1.
int select_alpn(SSL*, const unsigned char** out, unsigned char* outlen, const unsigned char* in,
                unsigned inlen, void* arg) {
  const auto* store = static_cast<const tls_store*>(arg);
  static constexpr unsigned char both[] = "\x02h2\x08http/1.1";
  static constexpr unsigned char http1[] = "\x08http/1.1";
  const unsigned char* ours = store->offer_h2_ ? both : http1;
  unsigned ours_len = store->offer_h2_ ? sizeof both - 1 : sizeof http1 - 1;
  unsigned char* chosen = nullptr;
  if (SSL_select_next_proto(&chosen, outlen, ours, ours_len, in, inlen) != OPENSSL_NPN_NEGOTIATED)
    return SSL_TLSEXT_ERR_NOACK;
  *out = chosen;
  return SSL_TLSEXT_ERR_OK;
}

tls_store::~tls_store() = default;

std::shared_ptr<const tls_store> tls_store::load(const tls_section& cfg, std::string* error,
                                                 bool offer_h2) {
  std::shared_ptr<tls_store> store(new tls_store());
  store->offer_h2_ = offer_h2;
  for (size_t i = 0; i < cfg.certificates.size(); ++i) {
    const auto& c = cfg.certificates[i];
    std::string where = "tls.certificates[" + std::to_string(i) + "]";
    auto ctx = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_server);
    ctx->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                     asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                     asio::ssl::context::no_tlsv1_1 | asio::ssl::context::single_dh_use);
    boost::system::error_code ec;
    ctx->use_certificate_chain_file(c.cert_file, ec);
    if (ec) {
      *error = where + ": cannot read certificate " + c.cert_file + ": " + ec.message();
      return nullptr;
    }
    ctx->use_private_key_file(c.key_file, asio::ssl::context::pem, ec);
    if (ec) {
      *error = where + ": cannot read key " + c.key_file + ": " + ec.message();
      return nullptr;
    }
    if (SSL_CTX_check_private_key(ctx->native_handle()) != 1) {
      *error = where + ": key " + c.key_file + " does not match certificate " + c.cert_file;
      return nullptr;
    }
    std::vector<std::string> names;
    for (const auto& n : c.names) names.push_back(lower(n));
    if (names.empty()) names = names_of(ctx->native_handle());
    store->names_.push_back(std::move(names));
    store->contexts_.push_back(std::move(ctx));
  }
  if (store->contexts_.empty()) {
    *error = "tls.certificates: at least one certificate is required";
    return nullptr;
  }
  // Every context carries the callback: OpenSSL calls the one of the context it started with.
  for (auto& ctx : store->contexts_) {
    SSL_CTX_set_tlsext_servername_callback(ctx->native_handle(), on_server_name);
    SSL_CTX_set_tlsext_servername_arg(ctx->native_handle(), store.get());
    SSL_CTX_set_alpn_select_cb(ctx->native_handle(), select_alpn, store.get());
  }
  return store;
}

size_t tls_store::select(const std::string& name) const {
  for (size_t i = 0; i < names_.size(); ++i)
    if (std::find(names_[i].begin(), names_[i].end(), name) != names_[i].end()) return i;
  auto dot = name.find('.');
  if (dot != std::string::npos) {
    std::string wildcard = "*" + name.substr(dot);
    for (size_t i = 0; i < names_.size(); ++i)
      if (std::find(names_[i].begin(), names_[i].end(), wildcard) != names_[i].end()) return i;
  }
  return 0;
}

}  // namespace meridian::node
