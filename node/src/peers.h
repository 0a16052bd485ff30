#pragma once
// Questions one node asks the others' admin APIs, for answers summed over the cluster (usage
// analytics, the busiest rate-limit keys): data each node keeps for itself only.
//
// Each node publishes, in the replicated state (so over the cluster's encrypted gossip), where
// its admin API listens and a peer token made at start; the peer endpoints (/peer/...) accept
// that token, so nodes ask each other whatever their admin tokens. Calls go out in parallel,
// from an admin thread (never a worker), and wait at most two seconds.

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "meridian/admin/admin_server.h"
#include "meridian/analytics/usage.h"
#include "meridian/config/config.h"

namespace meridian::node {

class cluster_bridge;

// Publishes this node's admin URL and peer token (register "node/<id>/peer").
void publish_peer(cluster_bridge& cluster, const config& cfg, uint16_t admin_port,
                  const std::string& peer_token);

// How this node calls the others' admin APIs: its id, and for their https URLs the CA their
// certificates must chain to (admin.tls.peer_ca; empty: the system's store) and the certificate
// it presents when one asks (admin.tls.peer_cert/peer_key, else the admin API's own).
struct peer_client {
  std::string self_id;
  std::string ca_file, cert_file, key_file;
};
peer_client peer_client_of(const config& cfg);
// Empty when the client's files are usable; else what is wrong, for refusing to start.
std::string peer_client_error(const peer_client& client);

struct peer_answers {
  std::map<std::string, nlohmann::json> answers;  // by node id: the JSON object each answered
  std::vector<std::string> missing;               // live nodes that did not answer in time
};
// GETs path from every other live member's admin API with its peer token. A member that does
// not answer is logged (at most once a minute each) with the reason.
peer_answers ask_peers(cluster_bridge& cluster, const peer_client& client, const std::string& path);

// GET /cluster/nodes: every member (members_json) with what it says of itself on /peer/health
// (config version and digest, convergence, local health), this node's answer included.
nlohmann::json cluster_nodes(cluster_bridge& cluster, const peer_client& client);

// GET /analytics (peer false) or /peer/analytics (peer true) for query parameters q, from this
// node's usage store and, for the cluster-wide form, every other live member's.
admin_reply analytics_reply(const std::map<std::string, std::string>& q, bool peer,
                            usage_store& store, cluster_bridge* cluster, const peer_client& client,
                            int64_t now_ms);

}  // namespace meridian::node
