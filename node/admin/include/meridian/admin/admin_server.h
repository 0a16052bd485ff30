#pragma once
// The admin HTTP API (SPEC.md, "Admin API"): health, metrics and the effective config.
//
// Usage: fill admin_handlers with callbacks, construct, start() on listen.admin, stop() (or
// destroy) at shutdown. The server runs on its own threads: one accepts, a small pool (4) serves
// requests and two more serve the peer endpoints (/peer/...) only, so a node whose pool is busy
// with cluster-wide views (which wait on the other nodes' peer endpoints) still answers theirs.
// Every callback may be called concurrently with itself and with the data plane and must be
// thread-safe. A callback that throws makes its request a 500; the server goes on.
//
// Every endpoint but GET /health requires `Authorization: Bearer <token>`; the token is compared
// in constant time. An empty token locks every protected endpoint. Errors are JSON
// {"error": "<code>", "message": "..."}: 401 unauthorized, 404 not_found,
// 405 method_not_allowed, 413 payload_too_large, 500 internal_error.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

namespace meridian::node {

// An answer with a status, for endpoints whose outcome is not always 200.
struct admin_reply {
  int status = 200;
  nlohmann::json body;
};

// Producers of admin answers. An unset callback makes its endpoint answer 404, so a node can
// start serving before every subsystem is wired. New endpoints add a callback here.
struct admin_handlers {
  std::function<std::string()> metrics_text;         // GET /metrics body (Prometheus text)
  std::function<nlohmann::json()> effective_config;  // GET /config body
  std::function<nlohmann::json()> cluster_members;   // GET /cluster/members body
  std::function<nlohmann::json()> cluster_health;    // GET /cluster/health body
  // GET /peer/health: this node's /cluster/health, for another node (the peer token suffices).
  std::function<nlohmann::json()> peer_health;
  // GET /cluster/nodes: every member with its own view (config version, convergence), asked.
  std::function<nlohmann::json()> cluster_nodes;
  std::function<nlohmann::json()> cluster_leave;  // POST /cluster/leave: leaves, returns body
  // DELETE /cluster/members/{id}: an operator declares a member that is not alive gone for good
  // (it stops counting for strict rate limits' majorities, cluster-wide).
  std::function<admin_reply(const std::string& id)> cluster_forget;
  // PUT (body set) and DELETE (body null) on /config/{kind}/{name}; kind is the path segment
  // ("routes", "upstreams", "consumers", or anything else for the callback to refuse).
  std::function<admin_reply(const std::string& kind, const std::string& name,
                            const std::string* body)>
      config_write;
  std::function<nlohmann::json()> breakers;      // GET /breakers body
  std::function<nlohmann::json()> cluster_keys;  // GET /cluster/keys body
  // POST /cluster/keys {"key"}, PUT /cluster/keys/{fingerprint}/primary,
  // DELETE /cluster/keys/{fingerprint} (method, fingerprint or "", body).
  std::function<admin_reply(const std::string&, const std::string&, const std::string&)>
      cluster_keys_write;
  // POST/GET /config/consumers/{id}/keys, DELETE /config/consumers/{id}/keys/{key_id}
  // (method, consumer, key_id or "", body).
  std::function<admin_reply(const std::string&, const std::string&, const std::string&,
                            const std::string&)>
      consumer_keys;
  // GET / PUT / DELETE /config/consumers/{id}/password: (method, consumer, body).
  std::function<admin_reply(const std::string&, const std::string&, const std::string&)>
      consumer_password;
  // GET /ratelimits/{route}?key=K[&limit=I][&top=N] (empty when absent): one key's cluster-wide
  // count, or without a key the busiest keys.
  std::function<admin_reply(const std::string& route, const std::string& key,
                            const std::string& limit, const std::string& top)>
      ratelimit_view;
  // GET /peer/ratelimits/{route}?limit=I: this node's candidates for the busiest keys (another
  // node merging them asks with the peer token).
  std::function<admin_reply(const std::string& route, const std::string& limit)>
      peer_ratelimit_keys;
  // GET /analytics (peer false: cluster-wide, SPEC's shape) and GET /peer/analytics (peer true:
  // this node's points with their histograms), given the query parameters.
  std::function<admin_reply(const std::map<std::string, std::string>& query, bool peer)> analytics;
  // GET /consumers/{id}/usage: the consumer's count in each consumer-keyed quota, cluster-wide.
  std::function<admin_reply(const std::string& consumer)> consumer_usage;
  // Records one change in the audit trail (method, path, client address, client certificate
  // subject or "", status).
  std::function<void(const std::string&, const std::string&, const std::string&, const std::string&,
                     int)>
      audit;
  // GET /audit?since=MS&limit=N: the trail, newest first.
  std::function<nlohmann::json(int64_t since_ms, size_t limit)> audit_view;
};

class admin_server {
 public:
  // tls: serve HTTPS with these files (cert, key, optional client CA); empty cert: plain HTTP.
  struct tls_files {
    std::string cert, key, client_ca;
  };
  // peer_token: what other nodes present to the peer endpoints (/peer/...; they learn it from
  // the cluster's encrypted state). Empty: those endpoints take the admin token only.
  admin_server(std::string node_id, std::string bearer_token, admin_handlers handlers,
               tls_files tls = {}, std::string peer_token = {});
  ~admin_server();  // stops

  admin_server(const admin_server&) = delete;
  admin_server& operator=(const admin_server&) = delete;

  // Binds host:port (port 0 = any free port) and starts serving on background threads; requests
  // are accepted as soon as it returns. Returns false and sets *error on failure (address in use,
  // bad host, called twice). A server serves once: it cannot be started again after stop().
  bool start(const std::string& host, uint16_t port, std::string* error);

  // Returns the bound port (useful after start() with port 0); 0 before start().
  uint16_t port() const;

  // Stops accepting, lets requests in progress finish and joins the threads. Idempotent.
  void stop();

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace meridian::node
