#pragma once
// The membership measurements of issue 3 (and the replicated-state ones of issue 4), as functions
// over the simulator: dissemination rounds, detection time, false positives under loss (and slow
// nodes) and idle bandwidth. meridian-sim is a thin command line over run_json(); tests call
// run_once() at small sizes.

#include <cstdint>
#include <string>
#include <vector>

#include "meridian/cluster/membership.h"
#include "meridian/sim/simulator.h"

namespace meridian::sim {

// The protocol settings these measurements use (see docs/benchmarks.md): probe every 500 ms
// with a 200 ms direct timeout, suspicion 2 * log10(N) probe intervals (x6 unconfirmed).
cluster::swim_config recommended_config();

struct scenario_options {
  std::string scenario = "dissemination";  // dissemination | detection | false_positives |
                                           // bandwidth | config | partition_heal
  size_t nodes = 100;
  double loss = 0;
  size_t runs = 1;
  uint64_t seed = 1;
  bool lifeguard = true;
  size_t slow_nodes = 0;  // false_positives: nodes whose packets wait up to slow_delay more
  millis slow_delay{1000};
  double duration_s = 0;  // 0: 3600 for false_positives, 600 for bandwidth
  size_t regions = 3;     // members spread round-robin over this many regions
  millis same_region_delay{1}, same_region_jitter{2};
  millis cross_region_delay{30}, cross_region_jitter{10};
  cluster::swim_config swim = recommended_config();
};

struct run_result {
  bool complete = true;     // dissemination/detection finished before the deadline
  double rounds = 0;        // dissemination: gossip intervals until every live node had it
  double detect_s = 0;      // detection: crash until every live member marks it dead
  uint64_t false_dead = 0;  // dead marks (by any member) about healthy, running members
  uint64_t slow_dead = 0;   // dead marks about the slow nodes
  uint64_t healthy_suspect_marks = 0;  // suspect marks about healthy members, summed over observers
  uint64_t suspicions = 0;             // suspicions started, summed over members
  uint64_t refutations = 0;
  uint64_t probes = 0;
  double bytes_per_node_per_s = 0;
  double simulated_s = 0;
  // config: a PUT on one node until every node holds it; partition_heal: the heal until every
  // node holds the same documents.
  double converge_s = 0;
  uint64_t lost_writes = 0;  // partition_heal: acknowledged writes missing after convergence
};

// Names members node-0000..., addresses 10.x.y.z:7946, regions eu-west/us-east/ap-south/...
std::vector<cluster::member_info> make_members(size_t n, size_t regions);
// Adds o.nodes nodes to sim with o's links and config, converged (bootstrap()).
void build_cluster(simulator& sim, const scenario_options& o);

// Runs one seed of o.scenario. Throws std::invalid_argument for an unknown scenario.
run_result run_once(const scenario_options& o, uint64_t seed);
// Runs o.runs seeds (o.seed, o.seed+1, ...) and returns one JSON line with the percentiles.
std::string run_json(const scenario_options& o);

// Returns the nearest-rank percentile p (0..100) of v (0 when empty).
double percentile(std::vector<double> v, double p);

}  // namespace meridian::sim
