#pragma once
// The proxy data plane: `workers` threads, each with its own io_context and SO_REUSEPORT
// listener, forwarding HTTP/1.1 between clients and upstream targets.
//
// Plain header: Asio and Beast stay inside http_proxy.cc. start/update/drain/stop may be called
// from any thread (they post to the workers); a worker never blocks on another.

#include <cstdint>
#include <memory>
#include <string>

#include "meridian/config/config.h"
#include "meridian/proxy/snapshot.h"

namespace spdlog {
class logger;
}

namespace meridian::node {

class proxy_server {
 public:
  // access_log may be null (disabled). metrics must outlive the server.
  proxy_server(unsigned workers, metrics_registry& metrics,
               std::shared_ptr<spdlog::logger> access_log);
  ~proxy_server();
  proxy_server(const proxy_server&) = delete;
  proxy_server& operator=(const proxy_server&) = delete;

  // Binds listen in every worker and starts serving snap (and, when snap has TLS certificates,
  // the tls.listen address with TLS). Returns false and sets *error when an address cannot be
  // bound. Port 0 binds an ephemeral port shared by all workers.
  bool start(const address& listen, std::shared_ptr<const snapshot> snap, std::string* error);
  // The bound proxy port.
  uint16_t port() const;
  uint16_t tls_port() const;  // the TLS listener's port (0: none)
  // Hands a new snapshot to every worker; requests already in flight finish on the old one.
  void update(std::shared_ptr<const snapshot> snap);
  // Stops accepting, lets in-flight requests finish (closing idle keep-alive connections), and
  // returns when every connection is closed or the timeout passed. Then stops the workers.
  void drain(duration timeout);
  // Closes everything at once and joins the workers. Idempotent.
  void stop();

  // The number of open client connections (all workers).
  int64_t connections() const;

 private:
  bool listen_tls(const address& listen, std::string* error);
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace meridian::node
