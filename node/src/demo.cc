// `meridian demo`: a node in front of a built-in demo upstream, on loopback.
// Three nodes, one per region (eu-west, us-east, ap-south), joined into one cluster over
// encrypted gossip, each proxying to the same demo upstream.

#include <signal.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "meridian/admin/echo_server.h"
#include "meridian/cluster/keyring.h"
#include "meridian/config/config.h"
#include "meridian/node/node.h"

namespace meridian::node {

int run_demo() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  ::signal(SIGPIPE, SIG_IGN);
  setup_logging("warn");

  std::string error;
  echo_server upstream;
  if (!upstream.start(&error)) {
    std::fprintf(stderr, "meridian demo: %s\n", error.c_str());
    return 1;
  }
  auto dir =
      std::filesystem::temp_directory_path() / ("meridian-demo-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  {
    std::ofstream keys(dir / "cluster.keys");
    keys << cluster::encode_key(cluster::generate_key()) << "\n";
  }

  struct region_spec {
    const char* id;
    const char* region;
    uint16_t offset;
  };
  const region_spec regions[] = {
      {"eu-1", "eu-west", 0}, {"us-1", "us-east", 1}, {"ap-1", "ap-south", 2}};
  std::vector<std::unique_ptr<node>> nodes;
  for (const auto& r : regions) {
    config cfg;
    cfg.source = "(demo)";
    cfg.node.id = r.id;
    cfg.node.region = r.region;
    cfg.node.zone = std::string(r.region) + "-a";
    cfg.node.data_dir = (dir / r.id).string();
    cfg.listen.proxy = {"127.0.0.1", static_cast<uint16_t>(8080 + r.offset)};
    cfg.listen.admin = {"127.0.0.1", static_cast<uint16_t>(9901 + r.offset)};
    cfg.admin.token_file = (dir / "admin.token").string();  // one token for the whole demo
    cluster_section cs;
    cs.bind = {"127.0.0.1", static_cast<uint16_t>(7946 + r.offset)};
    cs.advertise = cs.bind;
    for (uint16_t o = 0; o < 3; ++o)
      cs.seeds.push_back({"127.0.0.1", static_cast<uint16_t>(7946 + o)});
    cs.keyring_file = (dir / "cluster.keys").string();
    cfg.cluster = cs;
    upstream_config up;
    up.name = "demo";
    up.targets.push_back({{"127.0.0.1", static_cast<uint16_t>(upstream.port())}, "", "", 1, 0});
    up.health_check.enabled = true;
    up.health_check.path = "/healthz";
    up.retries.attempts = 1;
    cfg.upstreams.push_back(up);
    route_config route;
    route.name = "demo";
    route.match.path_prefix = "/api";
    route.upstream = "demo";
    route.strip_prefix = "/api";
    // Identical on every node: the file seeds the cluster-wide config, and differing seeds of
    // one route would resolve to a single winner anyway.
    route.response_headers.add.push_back({"x-served-by", "meridian"});
    cfg.routes.push_back(route);
    // One quota for everybody, counted across the three regions together.
    route_config limited;
    limited.name = "limited";
    limited.match.path_prefix = "/limited";
    limited.upstream = "demo";
    rate_limit_config rl;
    rl.limit = 5;
    rl.window = std::chrono::minutes(1);
    rl.key = "global";
    rl.scope = "global";
    limited.rate_limits.push_back(rl);
    cfg.routes.push_back(limited);
    // An upstream whose breaker one node opens and every node honours.
    upstream_config flaky;
    flaky.name = "flaky";
    flaky.targets = up.targets;
    flaky.circuit_breaker.enabled = true;
    flaky.circuit_breaker.failure_rate = 0.5;
    flaky.circuit_breaker.min_requests = 4;
    flaky.circuit_breaker.window = std::chrono::seconds(30);
    flaky.circuit_breaker.open_for = std::chrono::seconds(30);
    flaky.circuit_breaker.scope = "cluster";
    flaky.outlier.consecutive_failures = 0;
    cfg.upstreams.push_back(flaky);
    route_config flaky_route;
    flaky_route.name = "flaky";
    flaky_route.match.path_prefix = "/flaky";
    flaky_route.upstream = "flaky";
    flaky_route.strip_prefix = "/flaky";
    cfg.routes.push_back(flaky_route);
    auto n = std::make_unique<node>(cfg);
    if (!n->start(&error)) {
      std::fprintf(stderr, "meridian demo: node %s: %s\n", r.id, error.c_str());
      for (auto& started : nodes) started->drain(std::chrono::seconds(1));
      std::filesystem::remove_all(dir);
      return 1;
    }
    nodes.push_back(std::move(n));
  }

  std::printf("meridian demo: a 3-region cluster on loopback in front of a built-in upstream.\n");
  for (size_t i = 0; i < nodes.size(); ++i) {
    std::printf(
        "  node %s (region %s)\n    proxy: http://127.0.0.1:%u\n    admin: http://127.0.0.1:%u\n",
        regions[i].id, regions[i].region, nodes[i]->proxy_port(), nodes[i]->admin_port());
  }
  const auto& token = nodes[0]->admin_token();
  const unsigned p0 = nodes[0]->proxy_port(), p1 = nodes[1]->proxy_port(),
                 p2 = nodes[2]->proxy_port();
  const unsigned a0 = nodes[0]->admin_port(), a1 = nodes[1]->admin_port(),
                 a2 = nodes[2]->admin_port();
  const char* t = token.c_str();
  std::printf("token: %s\n", t);
  std::printf("dashboard: http://127.0.0.1:%u/ui (sign in with the token)\n\n", a0);
  std::printf("Try:\n");
  std::printf("curl -s http://127.0.0.1:%u/api/hello\n\n", p0);
  std::printf("# The point: one cluster state across regions. Paste these.\n");
  std::printf("# 1. A route added on eu-west is served by ap-south:\n");
  std::printf(
      "curl -s -X PUT -H 'Authorization: Bearer %s' -d "
      "'{\"name\":\"hello\",\"match\":{\"path_prefix\":\"/hello\"},\"upstream\":\"demo\"}' "
      "http://127.0.0.1:%u/config/routes/hello\n",
      t, a0);
  std::printf("curl -s http://127.0.0.1:%u/hello/world\n", p2);
  std::printf(
      "# 2. One limit of 5 a minute, counted across all three regions (200 x5, then 429):\n");
  std::printf(
      "for p in %u %u %u %u %u %u %u; do curl -s -o /dev/null -w '%%{http_code} ' "
      "http://127.0.0.1:$p/limited; sleep 0.3; done; echo\n",
      p0, p1, p2, p0, p1, p2, p0);
  std::printf("curl -s -H 'Authorization: Bearer %s' http://127.0.0.1:%u/ratelimits/limited\n", t,
              a2);
  std::printf("# 3. A breaker opened by eu-west's failures is honoured by ap-south (503):\n");
  std::printf(
      "for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%%{http_code} ' "
      "http://127.0.0.1:%u/flaky/status/503; done; echo\n",
      p0);
  std::printf("curl -s -H 'Authorization: Bearer %s' http://127.0.0.1:%u/breakers\n", t, a2);
  std::printf("curl -s -o /dev/null -w '%%{http_code}\\n' http://127.0.0.1:%u/flaky/ok\n", p2);
  std::printf("# 4. The members, from any node:\n");
  std::error_code ec;
  auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  std::printf("MERIDIAN_TOKEN=%s %s members --admin http://127.0.0.1:%u\n\n", t,
              ec ? "meridian" : self.c_str(), a1);
  std::printf("Press Ctrl-C to stop.\n");
  std::fflush(stdout);
  int sig = 0;
  sigwait(&set, &sig);
  for (auto& n : nodes) n->drain(std::chrono::seconds(5));
  std::filesystem::remove_all(dir);
  std::printf("meridian demo stopped.\n");
  return 0;
}

}  // namespace meridian::node
