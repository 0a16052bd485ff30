#include "cluster_glue.h"

#include <filesystem>
#include <map>
#include <mutex>

#include "meridian/cluster/gossip_node.h"
#include "meridian/storage/store.h"

namespace meridian::node {

struct cluster_glue::impl {
  std::unique_ptr<storage::store> store;
  std::unique_ptr<cluster::gossip_node> gossip;
  std::mutex leave_mutex;
  bool left = false;
};

cluster_glue::cluster_glue() : impl_(std::make_unique<impl>()) {}
cluster_glue::~cluster_glue() {
  if (impl_->gossip) impl_->gossip->stop(false);
}

std::unique_ptr<cluster_glue> cluster_glue::start(const config& cfg, std::string* error) {
  const auto& cc = *cfg.cluster;
  std::unique_ptr<cluster_glue> glue(new cluster_glue());
  std::error_code fec;
  std::filesystem::create_directories(cfg.node.data_dir, fec);
  glue->impl_->store =
      storage::store::open((std::filesystem::path(cfg.node.data_dir) / "db").string(), error);
  if (!glue->impl_->store) return nullptr;

  cluster::gossip_options opt;
  if (cc.keyring_file.empty()) {
    *error = "cluster.keyring_file is required: gossip is always encrypted (meridian keygen)";
    return nullptr;
  }
  auto ring = cluster::load_keyring(cc.keyring_file);
  if (!ring.error.empty()) {
    *error = ring.error;
    return nullptr;
  }
  opt.keys = std::move(ring.keys);
  opt.self.id = cfg.node.id;
  opt.self.region = cfg.node.region;
  opt.self.zone = cfg.node.zone;
  const auto& adv = cc.advertise.host.empty() ? cc.bind : cc.advertise;
  opt.self.address = adv.to_string();
  opt.bind_host = cc.bind.host == "localhost" ? "127.0.0.1" : cc.bind.host;
  opt.bind_port = cc.bind.port;
  // The tuning measured in the simulator (docs/benchmarks.md, "Membership"): probing every
  // 500 ms with a 200 ms timeout and suspicion multiplier 2 meets the detection bounds that
  // memberlist's 1 s / 4 cannot.
  opt.swim.probe_interval = cluster::millis(500);
  opt.swim.probe_timeout = cluster::millis(200);
  opt.swim.suspicion_mult = 2;
  for (const auto& s : cc.seeds) {
    if (!(s == adv)) opt.seeds.push_back(s.to_string());  // never seed from ourselves
  }
  glue->impl_->gossip = std::make_unique<cluster::gossip_node>(opt, glue->impl_->store.get());
  if (!glue->impl_->gossip->start(error)) return nullptr;
  return glue;
}

nlohmann::json cluster_glue::members_json() const {
  auto list = nlohmann::json::array();
  for (const auto& m : impl_->gossip->members()) {
    list.push_back({{"id", m.info.id},
                    {"region", m.info.region},
                    {"zone", m.info.zone},
                    {"address", m.info.address},
                    {"state", cluster::to_string(m.state)},
                    {"incarnation", m.incarnation}});
  }
  return {{"members", list}};
}

nlohmann::json cluster_glue::health_json(uint64_t config_version) const {
  auto members = impl_->gossip->members();
  std::map<std::string, int> totals{{"alive", 0}, {"suspect", 0}, {"dead", 0}, {"left", 0}};
  nlohmann::json regions = nlohmann::json::object();
  for (const auto& m : members) {
    const char* state = cluster::to_string(m.state);
    ++totals[state];
    auto& r = regions[m.info.region.empty() ? "unknown" : m.info.region];
    if (r.is_null()) r = {{"alive", 0}, {"suspect", 0}, {"dead", 0}, {"left", 0}};
    r[state] = r[state].get<int>() + 1;
  }
  bool healthy = totals["suspect"] == 0 && totals["dead"] == 0;
  return {{"status", healthy ? "healthy" : "degraded"},
          {"self", impl_->gossip->self().info.id},
          {"members", totals},
          {"regions", regions},
          {"config_version", config_version},
          // Membership agreement only for now: every member this node knows is alive or left.
          // Config digests join this check with the replicated-state layer.
          {"converged", healthy},
          {"local_health", impl_->gossip->local_health()}};
}

std::string cluster_glue::metrics_text() const {
  auto members = impl_->gossip->members();
  std::map<std::pair<std::string, std::string>, int> by;
  for (const auto& m : members) by[{m.info.region, cluster::to_string(m.state)}]++;
  std::string out =
      "# HELP meridian_cluster_members Known cluster members by region and state.\n"
      "# TYPE meridian_cluster_members gauge\n";
  for (const auto& [key, n] : by) {
    out += "meridian_cluster_members{region=\"" + key.first + "\",state=\"" + key.second + "\"} " +
           std::to_string(n) + "\n";
  }
  auto st = impl_->gossip->stats();
  const auto& c = impl_->gossip->counters();
  auto counter = [&](const char* name, const char* help, uint64_t v) {
    out += std::string("# HELP meridian_cluster_") + name + " " + help +
           "\n# TYPE meridian_cluster_" + name + " counter\nmeridian_cluster_" + name + " " +
           std::to_string(v) + "\n";
  };
  counter("probes_total", "Direct probes sent.", st.probes);
  counter("indirect_probes_total", "Indirect probes (ping-req) sent.", st.indirect_probes);
  counter("suspicions_total", "Members this node started suspecting.", st.suspicions);
  counter("refutations_total", "Times this node refuted a suspicion of itself.", st.refutations);
  counter("push_pulls_total", "Push-pull exchanges started.", st.push_pulls);
  counter("packets_in_total", "Gossip datagrams received.", c.packets_in.load());
  counter("packets_out_total", "Gossip datagrams sent.", c.packets_out.load());
  counter("bytes_in_total", "Gossip bytes received.", c.bytes_in.load());
  counter("bytes_out_total", "Gossip bytes sent.", c.bytes_out.load());
  counter("auth_failures_total", "Gossip packets dropped: not sealed with an installed key.",
          c.auth_failures.load());
  counter("malformed_total", "Authenticated gossip that could not be decoded.", c.malformed.load());
  out +=
      "# HELP meridian_cluster_local_health Lifeguard local health score (0 is healthy).\n"
      "# TYPE meridian_cluster_local_health gauge\nmeridian_cluster_local_health " +
      std::to_string(impl_->gossip->local_health()) + "\n";
  return out;
}

bool cluster_glue::reload_keys(const std::string& keyring_file, std::string* error) {
  auto ring = cluster::load_keyring(keyring_file);
  if (!ring.error.empty()) {
    *error = ring.error;
    return false;
  }
  impl_->gossip->set_keys(std::move(ring.keys));
  return true;
}

uint16_t cluster_glue::gossip_port() const {
  return impl_->gossip->port();
}

void cluster_glue::leave() {
  std::lock_guard lock(impl_->leave_mutex);
  if (impl_->left) return;
  impl_->left = true;
  impl_->gossip->stop(true);
}

}  // namespace meridian::node
