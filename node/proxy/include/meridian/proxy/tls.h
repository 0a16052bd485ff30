#pragma once
// Server certificates for the TLS listener, chosen by SNI (RFC 6066).
//
// Use: load() once per config (startup, SIGHUP); hand the store to the proxy in the snapshot.
// A store is immutable and shared: a connection keeps the store it was accepted with, so a
// reload changes the certificates new connections get without touching open ones.
// Thread-safety: any number of handshakes on any threads at once.

#include <boost/asio/ssl/context.hpp>
#include <memory>
#include <string>
#include <vector>

#include "meridian/config/config.h"

namespace meridian::node {

class tls_store {
 public:
  // Reads every certificate and key (PEM), checks that each key fits its certificate and
  // collects the names (given, else the certificate's DNS subjectAltNames, else its CN).
  // Returns nullptr and sets *error ("tls.certificates[1]: ...") when one is unusable. ALPN
  // offers h2 (when offer_h2) and http/1.1, in the server's order of preference.
  static std::shared_ptr<const tls_store> load(const tls_section& cfg, std::string* error,
                                               bool offer_h2 = true);
  ~tls_store();

  // The context new connections start with: the first certificate, and the SNI callback that
  // switches to the certificate named by the client.
  boost::asio::ssl::context& default_context() const { return *contexts_.front(); }
  boost::asio::ssl::context& context(size_t i) const { return *contexts_[i]; }
  // Returns the index of the certificate serving name (exact, then "*.parent"), or 0.
  size_t select(const std::string& name) const;
  // The names each certificate serves, in order (for logs and tests).
  const std::vector<std::vector<std::string>>& names() const { return names_; }

 private:
  tls_store() = default;
  std::vector<std::unique_ptr<boost::asio::ssl::context>> contexts_;
  std::vector<std::vector<std::string>> names_;
  bool offer_h2_ = true;
  friend int select_alpn(SSL*, const unsigned char**, unsigned char*, const unsigned char*,
                         unsigned, void*);
};

}  // namespace meridian::node
