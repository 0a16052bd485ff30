#pragma once
// One meridian node: the proxy workers, the admin API and the health checker, built from a
// config and reconfigured in place.
//
// Usage: construct with a validated config, start(), then reload()/apply() on SIGHUP and
// drain() on SIGTERM. Public methods may be called from any one control thread (not
// concurrently with each other).

#include <memory>
#include <string>
#include <vector>

#include "meridian/config/config.h"

namespace meridian::node {

class node {
 public:
  explicit node(config cfg);
  ~node();
  node(const node&) = delete;
  node& operator=(const node&) = delete;

  // Binds the proxy and admin listeners and starts serving. Returns false and sets *error when
  // something cannot start (ports in use, bad regex, unreadable token file).
  bool start(std::string* error);

  uint16_t proxy_port() const;
  uint16_t admin_port() const;
  // The bound TLS proxy port, or 0 without a `tls` section.
  uint16_t tls_port() const;
  // The bound gossip port, or 0 without a `cluster` section.
  uint16_t gossip_port() const;
  const std::string& admin_token() const;
  const std::string& id() const;

  // Re-reads the config file the node was started from and applies it. On any error the running
  // config stays in force and *error lists the problems (one per line).
  bool reload(std::string* error);
  // Applies a validated config: routes, upstreams and limits change without dropping
  // connections. Listener addresses and worker count need a restart (a warning is logged).
  bool apply(config cfg, std::string* error);

  // Stops accepting, finishes in-flight requests (up to timeout), then stops everything.
  void drain(duration timeout);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

// Runs a node from a config file until SIGTERM or SIGINT (drain, then return 0). SIGHUP re-reads
// the file. Returns non-zero when the node cannot start. Logs go to stderr.
int run_node(const std::string& config_path);

// Prints the demo cluster banner and runs it until Ctrl-C.
int run_demo();

// The admin API's command line (`meridian members`, `health`, `config get|apply`, `keys`):
// whether argv[1] names one of those commands, and running it (argv as main's). Returns the
// exit code: 0 done, 1 failed (the reason on stderr), 2 usage, 3 (health) the cluster is not
// healthy.
bool is_cli_command(const std::string& command);
int run_cli(int argc, char** argv);

// Checks what a config names outside itself, as `run` would at start: the admin token file (at
// least 16 characters; required when the admin API listens beyond loopback). Returns every
// problem; empty when the node could start. With notes (`meridian validate`, which may run on
// a build machine), files that do not exist yet are noted there instead of being problems.
std::vector<std::string> check_external(const config& cfg, std::vector<std::string>* notes);

// Configures the spdlog loggers ("node", "node.http", ...) at the given level.
void setup_logging(const std::string& level);

}  // namespace meridian::node
