#include "meridian/cluster/hlc.h"

#include <algorithm>

namespace meridian::cluster {

hybrid_clock::hybrid_clock(std::function<int64_t()> wall_ms, int64_t max_skew_ms)
    : wall_(std::move(wall_ms)), max_skew_(max_skew_ms) {}

hlc_time hybrid_clock::now() {
  // max(wall, last + 1): the wall clock when it is ahead, else one tick past the last event.
  // A full logical counter carries into the millisecond part on its own.
  last_ = std::max(hlc_from_unix_ms(wall_()), last_ + 1);
  return last_;
}

bool hybrid_clock::observe(hlc_time remote) {
  int64_t wall = wall_();
  int64_t ahead = hlc_unix_ms(remote) - wall;
  if (ahead > max_skew_seen_) max_skew_seen_ = ahead;
  if (ahead > max_skew_) return false;
  last_ = std::max({hlc_from_unix_ms(wall), last_, remote});
  return true;
}

}  // namespace meridian::cluster
