#pragma once
// The upstream of `meridian demo`: an HTTP service on loopback that answers every GET with a
// JSON description of what it received (path and headers), so a user sees what the gateway
// forwarded. Runs on its own thread from start() until destruction.

#include <memory>
#include <string>

namespace meridian::node {

class echo_server {
 public:
  echo_server();
  ~echo_server();
  echo_server(const echo_server&) = delete;
  echo_server& operator=(const echo_server&) = delete;

  // Listens on an ephemeral loopback port. Returns false and sets *error when it cannot.
  bool start(std::string* error);
  int port() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace meridian::node
