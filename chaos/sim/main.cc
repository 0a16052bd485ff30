// meridian-sim: runs the membership protocol on the deterministic simulator and prints one
// JSON line (see chaos/sim/include/meridian/sim/scenarios.h and docs/benchmarks.md).
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <stdexcept>
#include <string>

#include "meridian/sim/scenarios.h"

namespace {

const char* usage =
    "usage: meridian-sim --scenario "
    "dissemination|detection|false_positives|bandwidth|config|partition_heal\n"
    "                    [--nodes N] [--loss P] [--runs R] [--seed S] [--json]\n"
    "                    [--lifeguard on|off] [--tcp-fallback on|off]\n"
    "                    [--slow-nodes K] [--slow-delay-ms MS]\n"
    "                    [--duration-s S] [--regions R] [--probe-interval-ms MS]\n"
    "                    [--probe-timeout-ms MS] [--suspicion-mult M] [--memberlist-defaults]\n";

meridian::sim::scenario_options parse(int argc, char** argv) {
  meridian::sim::scenario_options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(a + " needs a value");
      return argv[++i];
    };
    if (a == "--scenario")
      o.scenario = value();
    else if (a == "--nodes")
      o.nodes = std::stoul(value());
    else if (a == "--loss")
      o.loss = std::stod(value());
    else if (a == "--runs")
      o.runs = std::stoul(value());
    else if (a == "--seed")
      o.seed = std::stoull(value());
    else if (a == "--json")
      continue;  // JSON is the only output format
    else if (a == "--lifeguard") {
      std::string v = value();
      if (v != "on" && v != "off") throw std::invalid_argument("--lifeguard takes on or off");
      o.lifeguard = v == "on";
    } else if (a == "--tcp-fallback") {
      std::string v = value();
      if (v != "on" && v != "off") throw std::invalid_argument("--tcp-fallback takes on or off");
      o.swim.tcp_fallback = v == "on";
    } else if (a == "--slow-nodes")
      o.slow_nodes = std::stoul(value());
    else if (a == "--slow-delay-ms")
      o.slow_delay = meridian::sim::millis(std::stol(value()));
    else if (a == "--duration-s")
      o.duration_s = std::stod(value());
    else if (a == "--regions")
      o.regions = std::stoul(value());
    else if (a == "--probe-interval-ms")
      o.swim.probe_interval = meridian::sim::millis(std::stol(value()));
    else if (a == "--probe-timeout-ms")
      o.swim.probe_timeout = meridian::sim::millis(std::stol(value()));
    else if (a == "--suspicion-mult")
      o.swim.suspicion_mult = std::stoul(value());
    else if (a == "--memberlist-defaults")
      o.swim = meridian::cluster::swim_config{};
    else if (a == "--help" || a == "-h") {
      std::fputs(usage, stdout);
      std::exit(0);
    } else
      throw std::invalid_argument("unknown option " + a);
  }
  return o;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    auto o = parse(argc, argv);
    std::puts(meridian::sim::run_json(o).c_str());
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "meridian-sim: %s\n%s", e.what(), usage);
    return 2;
  }
}
