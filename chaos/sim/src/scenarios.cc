#include "meridian/sim/scenarios.h"

#include "meridian/cluster/replicated_state.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <unordered_map>

namespace meridian::sim {

using cluster::member;
using cluster::member_state;

cluster::swim_config recommended_config() {
  cluster::swim_config c;
  c.probe_interval = millis(500);
  c.probe_timeout = millis(200);
  c.suspicion_mult = 2;
  c.suspicion_max_mult = 6;
  // A healed partition is noticed by talking to a member believed dead: every 2 s, so both
  // sides are whole again (and their replicated state converges) within seconds of the heal.
  c.dead_probe_interval = millis(2000);
  return c;
}

std::vector<cluster::member_info> make_members(size_t n, size_t regions) {
  static const char* names[] = {"eu-west", "us-east", "ap-south", "eu-north", "us-west", "sa-east"};
  regions = std::clamp<size_t>(regions, 1, 6);
  std::vector<cluster::member_info> out;
  out.reserve(n);
  for (size_t i = 0; i < n; ++i) {
    char id[32], address[48];
    std::snprintf(id, sizeof id, "node-%04zu", i);
    std::snprintf(address, sizeof address, "10.%zu.%zu.%zu:7946", (i >> 16) & 255, (i >> 8) & 255,
                  i & 255);
    std::string region = names[i % regions];
    out.push_back({id, address, region, region + (i / regions % 2 ? "-b" : "-a")});
  }
  return out;
}

void build_cluster(simulator& sim, const scenario_options& o) {
  link_faults same{o.loss, o.same_region_delay, o.same_region_jitter, false};
  link_faults cross{o.loss, o.cross_region_delay, o.cross_region_jitter, false};
  sim.set_default_links(same, cross);
  cluster::swim_config config = o.swim;
  config.lifeguard = o.lifeguard;
  for (const auto& info : make_members(o.nodes, o.regions)) sim.add_node(info, 1, config);
  sim.bootstrap();
}

namespace {

constexpr millis warmup{5000};

run_result dissemination(const scenario_options& o, uint64_t seed) {
  simulator sim(seed);
  build_cluster(sim, o);
  run_result r;
  sim.run_until(warmup);
  size_t origin = sim.random().below(o.nodes);
  std::vector<bool> got(o.nodes, false);
  got[origin] = true;
  size_t have = 1;
  millis t0 = sim.now(), done_at{-1};
  sim.on_payload = [&](size_t observer, const std::string&, const std::string&) {
    if (got[observer]) return;
    got[observer] = true;
    if (++have == o.nodes) done_at = sim.now();
  };
  sim.node(origin).broadcast_payload("rumor");
  sim.touch(origin);
  r.complete = sim.run_until([&] { return have == o.nodes; }, t0 + millis(120000), millis(50));
  millis took = (r.complete ? done_at : sim.now()) - t0;
  double interval = static_cast<double>(o.swim.gossip_interval.count());
  r.rounds = std::ceil(static_cast<double>(took.count()) / interval);
  r.simulated_s = static_cast<double>(sim.now().count()) / 1000;
  return r;
}

// Replicated state on every simulated node, with the simulator's clock as wall time.
struct state_cluster {
  state_cluster(simulator& sim, const scenario_options& o) : sim(sim) {
    build_cluster(sim, o);
    for (size_t i = 0; i < o.nodes; ++i) {
      cluster::state_options so;
      so.self_id = sim.info(i).id;
      states.push_back(std::make_unique<cluster::replicated_state>(
          so, [&sim] { return cluster::hlc_epoch_unix_ms + 86'400'000 + sim.now().count(); },
          nullptr));
      sim.node(i).set_application(states.back().get());
      sim.touch(i);
    }
  }
  cluster::hlc_time put(size_t i, const std::string& key, const std::string& value) {
    std::string error;
    auto v = states[i]->put(cluster::doc_family::config, key, value, &error);
    sim.node(i).pull_application_deltas();
    sim.touch(i);
    return v;
  }
  bool all_have(const std::string& key, cluster::hlc_time v) const {
    for (const auto& s : states) {
      auto e = s->get(cluster::doc_family::config, key);
      if (!e || e->version < v) return false;
    }
    return true;
  }
  bool same_digest() const {
    for (const auto& s : states)
      if (s->digest(cluster::doc_family::config) != states[0]->digest(cluster::doc_family::config))
        return false;
    return true;
  }
  simulator& sim;
  std::vector<std::unique_ptr<cluster::replicated_state>> states;
};

run_result config_convergence(const scenario_options& o, uint64_t seed) {
  simulator sim(seed);
  state_cluster c(sim, o);
  run_result r;
  sim.run_until(warmup);
  size_t origin = sim.random().below(o.nodes);
  millis t0 = sim.now();
  auto v = c.put(origin, "routes/r", R"({"name":"r","upstream":"u"})");
  r.complete =
      sim.run_until([&] { return c.all_have("routes/r", v); }, t0 + millis(60000), millis(10));
  r.converge_s = static_cast<double>((sim.now() - t0).count()) / 1000;
  r.simulated_s = static_cast<double>(sim.now().count()) / 1000;
  return r;
}

run_result partition_heal(const scenario_options& o, uint64_t seed) {
  simulator sim(seed);
  state_cluster c(sim, o);
  run_result r;
  sim.run_until(warmup);
  std::vector<size_t> left;
  for (size_t i = 0; i < o.nodes / 2; ++i) left.push_back(i);
  sim.partition(left);
  sim.run_until(sim.now() + millis(1000));
  // Writes on both sides: one shared key (the later write must win) and one key per node.
  std::vector<std::pair<std::string, cluster::hlc_time>> acked;
  for (size_t i = 0; i < o.nodes; ++i) {
    sim.run_until(sim.now() + millis(sim.random().below(200)));
    acked.emplace_back("routes/n" + std::to_string(i),
                       c.put(i, "routes/n" + std::to_string(i), "x"));
    acked.emplace_back("routes/shared", c.put(i, "routes/shared", std::to_string(i)));
  }
  sim.run_until(sim.now() + millis(8000));  // each side declares the other dead
  sim.heal();
  millis t0 = sim.now();
  r.complete = sim.run_until(
      [&] {
        if (!c.same_digest()) return false;
        for (const auto& [k, v] : acked)
          if (!c.all_have(k, v) && k != "routes/shared") return false;
        return true;
      },
      t0 + millis(60000), millis(10));
  r.converge_s = static_cast<double>((sim.now() - t0).count()) / 1000;
  cluster::hlc_time last_shared = 0;
  for (const auto& [k, v] : acked)
    if (k == "routes/shared") last_shared = std::max(last_shared, v);
  for (const auto& [k, v] : acked) {
    cluster::hlc_time want = k == "routes/shared" ? last_shared : v;
    if (!c.all_have(k, want)) ++r.lost_writes;
  }
  r.simulated_s = static_cast<double>(sim.now().count()) / 1000;
  return r;
}

run_result detection(const scenario_options& o, uint64_t seed) {
  simulator sim(seed);
  build_cluster(sim, o);
  run_result r;
  sim.run_until(warmup + millis(sim.random().below(o.swim.probe_interval.count())));
  size_t victim = sim.random().below(o.nodes);
  std::string victim_id = sim.info(victim).id;
  std::vector<bool> marked(o.nodes, false);
  size_t count = 0;
  millis t0 = sim.now(), done_at{-1};
  sim.on_member_change = [&](size_t observer, const member& m) {
    if (m.info.id != victim_id || m.state != member_state::dead || marked[observer]) return;
    marked[observer] = true;
    if (++count == o.nodes - 1) done_at = sim.now();
  };
  sim.kill(victim);
  r.complete = sim.run_until([&] { return count == o.nodes - 1; }, t0 + millis(120000), millis(50));
  r.detect_s = static_cast<double>(((r.complete ? done_at : sim.now()) - t0).count()) / 1000;
  r.simulated_s = static_cast<double>(sim.now().count()) / 1000;
  return r;
}

void sum_stats(simulator& sim, run_result& r) {
  for (size_t i = 0; i < sim.size(); ++i) {
    if (!sim.running(i)) continue;
    const auto& s = sim.node(i).stats();
    r.suspicions += s.suspicions;
    r.refutations += s.refutations;
    r.probes += s.probes;
  }
}

run_result false_positives(const scenario_options& o, uint64_t seed) {
  simulator sim(seed);
  build_cluster(sim, o);
  run_result r;
  std::unordered_map<std::string, size_t> index;
  for (size_t i = 0; i < sim.size(); ++i) index[sim.info(i).id] = i;
  for (size_t i = 0; i < std::min(o.slow_nodes, o.nodes); ++i) sim.set_slow(i, o.slow_delay);
  sim.on_member_change = [&](size_t, const member& m) {
    if (m.state != member_state::dead && m.state != member_state::suspect) return;
    auto it = index.find(m.info.id);
    if (it == index.end()) return;
    if (m.state == member_state::suspect) {
      if (!sim.slow(it->second)) ++r.healthy_suspect_marks;
      return;
    }
    if (sim.slow(it->second))
      ++r.slow_dead;
    else
      ++r.false_dead;
  };
  double duration = o.duration_s > 0 ? o.duration_s : 3600;
  sim.run_until(millis(static_cast<int64_t>(duration * 1000)));
  sum_stats(sim, r);
  r.simulated_s = duration;
  return r;
}

run_result bandwidth(const scenario_options& o, uint64_t seed) {
  simulator sim(seed);
  build_cluster(sim, o);
  run_result r;
  double duration = o.duration_s > 0 ? o.duration_s : 600;
  sim.run_until(millis(static_cast<int64_t>(duration * 1000)));
  r.bytes_per_node_per_s =
      static_cast<double>(sim.total_bytes_sent()) / static_cast<double>(o.nodes) / duration;
  sum_stats(sim, r);
  r.simulated_s = duration;
  return r;
}

std::string number(double v) {
  char buf[64];
  if (std::isnan(v) || std::isinf(v)) return "null";
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

}  // namespace

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t rank = static_cast<size_t>(std::ceil(p / 100.0 * static_cast<double>(v.size())));
  return v[std::clamp<size_t>(rank, 1, v.size()) - 1];
}

run_result run_once(const scenario_options& o, uint64_t seed) {
  if (o.nodes < 2) throw std::invalid_argument("--nodes must be at least 2");
  if (o.scenario == "dissemination") return dissemination(o, seed);
  if (o.scenario == "detection") return detection(o, seed);
  if (o.scenario == "false_positives") return false_positives(o, seed);
  if (o.scenario == "bandwidth") return bandwidth(o, seed);
  if (o.scenario == "config") return config_convergence(o, seed);
  if (o.scenario == "partition_heal") return partition_heal(o, seed);
  throw std::invalid_argument(
      "unknown scenario '" + o.scenario +
      "' (dissemination|detection|false_positives|bandwidth|config|partition_heal)");
}

std::string run_json(const scenario_options& o) {
  auto start = std::chrono::steady_clock::now();
  std::vector<double> rounds, detect, bytes, converge;
  run_result sum;
  size_t incomplete = 0;
  for (size_t i = 0; i < o.runs; ++i) {
    run_result r = run_once(o, o.seed + i);
    if (!r.complete) ++incomplete;
    rounds.push_back(r.rounds);
    detect.push_back(r.detect_s);
    bytes.push_back(r.bytes_per_node_per_s);
    converge.push_back(r.converge_s);
    sum.lost_writes += r.lost_writes;
    sum.false_dead += r.false_dead;
    sum.slow_dead += r.slow_dead;
    sum.healthy_suspect_marks += r.healthy_suspect_marks;
    sum.suspicions += r.suspicions;
    sum.refutations += r.refutations;
    sum.probes += r.probes;
    sum.simulated_s += r.simulated_s;
  }
  double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  bool diss = o.scenario == "dissemination", det = o.scenario == "detection",
       fp = o.scenario == "false_positives", bw = o.scenario == "bandwidth",
       st = o.scenario == "config" || o.scenario == "partition_heal";
  auto opt = [](bool on, double v) { return on ? number(v) : std::string("null"); };
  std::string j = "{";
  j += "\"scenario\":\"" + o.scenario + "\"";
  j += ",\"nodes\":" + std::to_string(o.nodes);
  j += ",\"loss\":" + number(o.loss);
  j += ",\"runs\":" + std::to_string(o.runs);
  j += ",\"seed\":" + std::to_string(o.seed);
  j += std::string(",\"lifeguard\":") + (o.lifeguard ? "true" : "false");
  j += ",\"slow_nodes\":" + std::to_string(o.slow_nodes);
  j += ",\"rounds_p50\":" + opt(diss, percentile(rounds, 50));
  j += ",\"rounds_p99\":" + opt(diss, percentile(rounds, 99));
  j += ",\"rounds_max\":" + opt(diss, percentile(rounds, 100));
  j += ",\"detect_s_p50\":" + opt(det, percentile(detect, 50));
  j += ",\"detect_s_p99\":" + opt(det, percentile(detect, 99));
  j += ",\"detect_s_max\":" + opt(det, percentile(detect, 100));
  j += ",\"false_dead\":" + opt(fp || bw, static_cast<double>(sum.false_dead));
  j += ",\"slow_dead\":" + opt(fp, static_cast<double>(sum.slow_dead));
  j += ",\"healthy_suspect_marks\":" + opt(fp, static_cast<double>(sum.healthy_suspect_marks));
  j += ",\"suspicions\":" + opt(fp || bw, static_cast<double>(sum.suspicions));
  j += ",\"refutations\":" + opt(fp || bw, static_cast<double>(sum.refutations));
  j += ",\"probes\":" + opt(fp || bw, static_cast<double>(sum.probes));
  j += ",\"bytes_per_node_per_s\":" + opt(bw, percentile(bytes, 50));
  j += ",\"converge_s_p50\":" + opt(st, percentile(converge, 50));
  j += ",\"converge_s_p99\":" + opt(st, percentile(converge, 99));
  j += ",\"converge_s_max\":" + opt(st, percentile(converge, 100));
  j += ",\"lost_writes\":" +
       opt(o.scenario == "partition_heal", static_cast<double>(sum.lost_writes));
  j += ",\"incomplete\":" + std::to_string(incomplete);
  j += ",\"simulated_s\":" + number(sum.simulated_s);
  j += ",\"wall_s\":" + number(wall);
  j += "}";
  return j;
}

}  // namespace meridian::sim
