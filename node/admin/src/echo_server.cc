#include "meridian/admin/echo_server.h"

#include <httplib.h>

#include <nlohmann/json.hpp>
#include <thread>

namespace meridian::node {

struct echo_server::impl {
  httplib::Server server;
  std::thread thread;
  int port = 0;
};

echo_server::echo_server() : impl_(std::make_unique<impl>()) {}

echo_server::~echo_server() {
  impl_->server.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
}

bool echo_server::start(std::string* error) {
  // /status/NNN answers NNN (the demo's failing upstream, for its breaker).
  impl_->server.Get(
      R"(.*/status/(\d{3}))", [](const httplib::Request& req, httplib::Response& res) {
        int status = std::stoi(req.matches[1].str());
        res.status = status >= 200 && status <= 599 ? status : 400;
        nlohmann::json body{{"service", "demo"}, {"path", req.path}, {"status", res.status}};
        res.set_content(body.dump() + "\n", "application/json");
      });
  impl_->server.Get(".*", [](const httplib::Request& req, httplib::Response& res) {
    nlohmann::json headers;
    for (const auto& [k, v] : req.headers) headers[k] = v;
    nlohmann::json body{{"service", "demo"}, {"path", req.path}, {"headers", headers}};
    res.set_content(body.dump(2) + "\n", "application/json");
  });
  impl_->port = impl_->server.bind_to_any_port("127.0.0.1");
  if (impl_->port <= 0) {
    *error = "demo upstream: cannot bind a port";
    return false;
  }
  impl_->thread = std::thread([this] { impl_->server.listen_after_bind(); });
  return true;
}

int echo_server::port() const {
  return impl_->port;
}

}  // namespace meridian::node
