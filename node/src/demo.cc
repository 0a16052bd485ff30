// `meridian demo`: a node in front of a built-in demo upstream, on loopback.
// Until the cluster layer lands this is a single node (region eu-west); it becomes the 3-region
// cluster described in SPEC.md when membership exists.

#include <httplib.h>
#include <signal.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <nlohmann/json.hpp>
#include <thread>

#include "meridian/node/node.h"

namespace meridian::node {
namespace {

// The demo upstream: answers every GET with a JSON description of what it received.
class demo_upstream {
 public:
  bool start(std::string* error) {
    server_.Get(".*", [](const httplib::Request& req, httplib::Response& res) {
      nlohmann::json headers;
      for (const auto& [k, v] : req.headers) headers[k] = v;
      nlohmann::json body{{"service", "demo"}, {"path", req.path}, {"headers", headers}};
      res.set_content(body.dump(2) + "\n", "application/json");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    if (port_ <= 0) {
      *error = "demo upstream: cannot bind a port";
      return false;
    }
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    return true;
  }
  ~demo_upstream() {
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }
  int port() const { return port_; }

 private:
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
};

}  // namespace

int run_demo() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  setup_logging("warn");

  std::string error;
  demo_upstream upstream;
  if (!upstream.start(&error)) {
    std::fprintf(stderr, "meridian demo: %s\n", error.c_str());
    return 1;
  }
  auto dir =
      std::filesystem::temp_directory_path() / ("meridian-demo-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);

  config cfg;
  cfg.source = "(demo)";
  cfg.node.id = "eu-1";
  cfg.node.region = "eu-west";
  cfg.node.data_dir = (dir / "eu-1").string();
  cfg.listen.proxy = {"127.0.0.1", 8080};
  cfg.listen.admin = {"127.0.0.1", 9901};
  upstream_config up;
  up.name = "demo";
  up.targets.push_back(
      {{"127.0.0.1", static_cast<uint16_t>(upstream.port())}, "eu-west", "", 1, 0});
  up.health_check.enabled = true;
  up.health_check.path = "/healthz";
  up.retries.attempts = 1;
  cfg.upstreams.push_back(up);
  route_config route;
  route.name = "demo";
  route.match.path_prefix = "/api";
  route.upstream = "demo";
  route.strip_prefix = "/api";
  route.response_headers.add.push_back({"x-served-by", "meridian"});
  cfg.routes.push_back(route);

  node n(cfg);
  if (!n.start(&error)) {
    std::fprintf(stderr, "meridian demo: %s\n", error.c_str());
    std::filesystem::remove_all(dir);
    return 1;
  }
  std::printf(
      "meridian demo is running (single node until the cluster layer lands).\n"
      "  node eu-1 (region eu-west)\n"
      "    proxy: http://127.0.0.1:%u\n"
      "    admin: http://127.0.0.1:%u\n"
      "token: %s\n"
      "Try:\n"
      "curl -s http://127.0.0.1:%u/api/hello\n"
      "curl -s -H 'Authorization: Bearer %s' http://127.0.0.1:%u/metrics\n"
      "Press Ctrl-C to stop.\n",
      n.proxy_port(), n.admin_port(), n.admin_token().c_str(), n.proxy_port(),
      n.admin_token().c_str(), n.admin_port());
  std::fflush(stdout);
  int sig = 0;
  sigwait(&set, &sig);
  n.drain(std::chrono::seconds(5));
  std::filesystem::remove_all(dir);
  std::printf("meridian demo stopped.\n");
  return 0;
}

}  // namespace meridian::node
