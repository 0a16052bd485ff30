#pragma once
// TLS towards upstream targets (upstreams[].tls, and every `protocol: h2` upstream).

#include <boost/asio/ssl/context.hpp>
#include <memory>
#include <string>

#include "meridian/config/config.h"

namespace meridian::node {

// Builds the client context for an upstream's targets: verification against tls.ca_file or the
// system's store (unless tls.verify is false), the client certificate when one is given, and
// ALPN offering h2 (protocol h2) or http/1.1. Returns nullptr and sets *error when a file cannot
// be used; nullptr without error when the upstream has no tls.
std::shared_ptr<boost::asio::ssl::context> make_upstream_tls(const upstream_config& cfg,
                                                             std::string* error);

// The name a target's certificate must carry and its SNI: tls.server_name, else the target's
// host (empty for an IP address: no SNI is sent, the address is checked instead).
std::string upstream_server_name(const upstream_config& cfg, const std::string& target_host);

}  // namespace meridian::node
