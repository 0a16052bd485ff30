#pragma once
// Active health checks: for every upstream with `health_check`, each target is probed with
// `GET path` every interval on the checker's own thread, and its target_state::healthy flips
// after unhealthy_after failures or healthy_after successes in a row.
//
// update() may be called from any thread; probes of the previous snapshot stop.

#include <memory>

#include "meridian/proxy/snapshot.h"

namespace meridian::node {

class health_checker {
 public:
  health_checker();
  ~health_checker();
  health_checker(const health_checker&) = delete;
  health_checker& operator=(const health_checker&) = delete;

  void update(std::shared_ptr<const snapshot> snap);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace meridian::node
