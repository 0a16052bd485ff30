#pragma once
// A client of a node's admin API, for the command line (`meridian members`, `health`, `config`,
// `keys`): one blocking request at a time, HTTP or HTTPS (mutual TLS when a client certificate
// is given), the bearer token on every request.

#include <string>

namespace meridian::node {

struct admin_endpoint {
  std::string url = "http://127.0.0.1:9901";  // scheme://host:port
  std::string token;
  std::string ca_file;    // https: the CA the node's certificate must chain to (else the system's)
  std::string cert_file;  // https: a client certificate, for an admin API that asks for one
  std::string key_file;
  int timeout_ms = 10000;  // for the whole answer (connecting: at most 5 s of it)
};

struct admin_response {
  int status = 0;  // 0: no answer (error says why)
  std::string body;
  std::string error;  // the transport failure, when status is 0
};

// Sends one request (body as JSON when not empty) and returns the answer, within
// endpoint.timeout_ms.
admin_response admin_call(const admin_endpoint& endpoint, const std::string& method,
                          const std::string& path, const std::string& body = {});

}  // namespace meridian::node
