#pragma once
// The node's side of the cluster: opens the store, loads the keyring, runs the gossip member
// and answers the admin API's cluster endpoints. Absent when the config has no `cluster`.

#include <chrono>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "meridian/cluster/membership.h"
#include "meridian/cluster/replicated_state.h"
#include "meridian/config/config.h"

namespace meridian::node {

class cluster_bridge {
 public:
  // Opens <data_dir>/db, reads the keyring and starts gossiping. Returns nullptr and sets *error
  // when any of that fails.
  static std::unique_ptr<cluster_bridge> start(const config& cfg, std::string* error);
  ~cluster_bridge();

  nlohmann::json members_json() const;  // GET /cluster/members
  nlohmann::json health_json() const;   // GET /cluster/health
  // GET /cluster/keys: every live node's keyring (fingerprints, primary) and, per key, on how
  // many live nodes it is installed and primary: the progress of a key rotation.
  nlohmann::json keys_json() const;

  // The replicated state (config documents, breaker states, counters), loaded from the store.
  cluster::replicated_state& state();
  // The node's store (<data_dir>/db), for state kept here only (usage analytics).
  storage::store& store();
  // Returns true until mark_seeded(): the config file's documents seed the cluster config once,
  // at the node's first start.
  bool needs_seed() const;
  void mark_seeded();
  // Sends local writes out on the next gossip round (call after a put or remove).
  void flush();
  // The same, sent at once rather than on the next gossip round (keys near their rate limit).
  // Returns at once; callable from any thread.
  void flush_now();
  // The members that are alive, this node included: (id, region).
  std::vector<std::pair<std::string, std::string>> live_members() const;
  // Every member known (this node included), left ones too until forgotten.
  std::vector<cluster::member> members() const;
  const std::string& self_id() const;
  // cluster.seeds names a member other than this node (it is to join a cluster).
  bool has_seeds() const;
  // Direct messages between members (strict rate limits: gossip_node::send_direct), sealed like
  // all gossip. The handler runs on the gossip thread with the sender's id and gossip address.
  void send_direct(const std::string& address, std::string message);
  void set_direct_handler(std::function<void(const std::string& from_id,
                                             const std::string& from_address, std::string message)>
                              handler);
  // Runs job on the gossip thread after `after`.
  void post(std::function<void()> job, std::chrono::microseconds after);
  // The membership as the rate limiter needs it, for the cluster and for this node's region:
  // members (left ones not counted), members down (suspect or dead) and members alive but
  // unconfirmed (cluster::member::unconfirmed).
  struct view {
    size_t global_total = 0, global_down = 0, global_unconfirmed = 0;
    size_t region_total = 0, region_down = 0, region_unconfirmed = 0;
  };
  // Called on the gossip thread at every change of the view, and once a second.
  void set_view_listener(std::function<void(const view&)> listener);
  // Prometheus lines for the cluster (members by state and region, probes, bytes, auth failures).
  std::string metrics_text() const;
  uint16_t gossip_port() const;
  // Re-reads the keyring file and hands the keys to the gossip layer (config reload). Returns
  // false and sets *error when the file is unusable; the old keys then stay in force.
  bool reload_keys(const std::string& keyring_file, std::string* error);

  // Key rotation through the admin API, in three steps an operator takes one after the other,
  // watching keys_json() between them: install a key (base64), make it primary (only once every
  // live node holds it), remove the old one (only once no live node uses it as primary). Each
  // step writes the cluster's desired keyring, a replicated register; every node applies it
  // (apply_desired_keyring): gossip keys, its keyring file (rewritten atomically, so a restart
  // keeps them) and its published keyring. Returns (HTTP status, JSON body).
  std::pair<int, nlohmann::json> install_key(const std::string& base64_key);
  std::pair<int, nlohmann::json> use_key(const std::string& fingerprint);
  std::pair<int, nlohmann::json> remove_key(const std::string& fingerprint);
  // Marks the desired keyring for applying (within a second, on the maintenance thread) when it
  // changed since this node last applied it. Called from the replicated state's change handler
  // (state family); never blocks.
  void apply_desired_keyring();
  // Leaves the cluster gracefully (others see `left`). Idempotent.
  void leave();

 private:
  cluster_bridge();
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace meridian::node
