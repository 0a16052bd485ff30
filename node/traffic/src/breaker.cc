#include "meridian/traffic/breaker.h"

#include <algorithm>
#include <chrono>

namespace meridian::node {

const char* to_string(breaker_state s) {
  switch (s) {
    case breaker_state::closed:
      return "closed";
    case breaker_state::open:
      return "open";
    case breaker_state::half_open:
      return "half_open";
  }
  return "closed";
}

bool breaker_state_from(std::string_view name, breaker_state* out) {
  if (name == "closed")
    *out = breaker_state::closed;
  else if (name == "open")
    *out = breaker_state::open;
  else if (name == "half_open")
    *out = breaker_state::half_open;
  else
    return false;
  return true;
}

namespace {
// The probe owner may have no traffic for this upstream: once a further open period has passed
// without a verdict, any node may probe.
bool owner_overdue(const breaker_view& v, int64_t now_ms, const circuit_breaker_config& cfg) {
  return now_ms >=
         v.until_ms + std::chrono::duration_cast<std::chrono::milliseconds>(cfg.open_for).count();
}
}  // namespace

bool circuit_breaker::allow(int64_t now_ms, const circuit_breaker_config& cfg,
                            bool may_probe) const {
  auto s = static_cast<breaker_state>(state_.load(std::memory_order_relaxed));
  if (s == breaker_state::closed || !cfg.enabled) return true;
  std::lock_guard lock(mu_);
  if (view_.state == breaker_state::closed) return true;
  if (view_.state == breaker_state::open && now_ms < view_.until_ms) return false;
  return (may_probe || owner_overdue(view_, now_ms, cfg)) && probes_sent_ < cfg.half_open_probes;
}

bool circuit_breaker::on_dispatch(int64_t now_ms, const circuit_breaker_config& cfg, bool may_probe,
                                  bool* probe) {
  *probe = false;
  if (static_cast<breaker_state>(state_.load(std::memory_order_relaxed)) == breaker_state::closed ||
      !cfg.enabled) {
    return true;
  }
  std::lock_guard lock(mu_);
  if (view_.state == breaker_state::closed) return true;
  if (view_.state == breaker_state::open) {
    if (now_ms < view_.until_ms) return false;
    view_.state = breaker_state::half_open;  // time to probe (not published: probing is local)
    view_.since_ms = now_ms;
    probes_sent_ = 0;
    state_.store(static_cast<uint8_t>(breaker_state::half_open), std::memory_order_relaxed);
  }
  if (!(may_probe || owner_overdue(view_, now_ms, cfg)) || probes_sent_ >= cfg.half_open_probes)
    return false;
  ++probes_sent_;
  *probe = true;
  return true;
}

void circuit_breaker::reset_window() {
  for (auto& b : window_) b = bucket{};
}

void circuit_breaker::trip(int64_t now_ms, const circuit_breaker_config& cfg,
                           const std::string& self) {
  int64_t open_ms = std::chrono::duration_cast<std::chrono::milliseconds>(cfg.open_for).count();
  open_ms <<= std::min<uint32_t>(view_.trips, 4);  // grows on repeated trips, at most 16x
  view_.state = breaker_state::open;
  view_.since_ms = now_ms;
  view_.until_ms = now_ms + open_ms;
  view_.origin = self;
  view_.trips = std::min<uint32_t>(view_.trips + 1, 16);
  probes_sent_ = 0;
  consecutive_ = 0;
  reset_window();
  state_.store(static_cast<uint8_t>(breaker_state::open), std::memory_order_relaxed);
}

bool circuit_breaker::force(bool healthy, int64_t now_ms, const circuit_breaker_config& cfg,
                            const std::string& self) {
  if (!cfg.enabled) return false;
  std::lock_guard lock(mu_);
  if (!healthy) {
    if (view_.state == breaker_state::open) return false;
    trip(now_ms, cfg, self);
    return true;
  }
  if (view_.state == breaker_state::closed) return false;
  view_ = breaker_view{breaker_state::closed, now_ms, 0, self, 0};
  reset_window();
  state_.store(static_cast<uint8_t>(breaker_state::closed), std::memory_order_relaxed);
  return true;
}

bool circuit_breaker::record(bool success, bool probe, int64_t now_ms,
                             const circuit_breaker_config& cfg, const std::string& self) {
  if (!cfg.enabled) return false;
  std::lock_guard lock(mu_);
  if (view_.state != breaker_state::closed) {
    if (!probe) return false;  // a request sent before the trip: its outcome is old news
    if (success) {
      view_ = breaker_view{breaker_state::closed, now_ms, 0, self, 0};
      reset_window();
      state_.store(static_cast<uint8_t>(breaker_state::closed), std::memory_order_relaxed);
    } else {
      trip(now_ms, cfg, self);
    }
    return true;
  }
  // Closed: count into the sliding window (buckets of window/10).
  int64_t window_ms = std::max<int64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(cfg.window).count(), buckets);
  int64_t width = window_ms / buckets;
  int64_t start = now_ms - now_ms % width;
  bucket& b = window_[(now_ms / width) % buckets];
  if (b.start != start) b = bucket{start, 0, 0};
  (success ? b.ok : b.failed) += 1;
  consecutive_ = success ? 0 : consecutive_ + 1;
  if (cfg.consecutive_failures && consecutive_ >= cfg.consecutive_failures) {
    trip(now_ms, cfg, self);
    return true;
  }
  uint64_t ok = 0, failed = 0;
  for (const auto& x : window_) {
    if (now_ms - x.start >= window_ms) continue;
    ok += x.ok;
    failed += x.failed;
  }
  uint64_t total = ok + failed;
  if (!success && total >= cfg.min_requests &&
      static_cast<double>(failed) >= cfg.failure_rate * static_cast<double>(total)) {
    trip(now_ms, cfg, self);
    return true;
  }
  if (success && view_.trips) view_.trips = 0;  // a healthy stretch forgets earlier trips
  return false;
}

void circuit_breaker::adopt(const breaker_view& v, uint64_t version) {
  std::lock_guard lock(mu_);
  if (version <= applied_version_) return;
  applied_version_ = version;
  view_ = v;
  probes_sent_ = 0;
  if (v.state == breaker_state::closed) reset_window();
  state_.store(static_cast<uint8_t>(v.state), std::memory_order_relaxed);
}

uint64_t circuit_breaker::applied_version() const {
  std::lock_guard lock(mu_);
  return applied_version_;
}

void circuit_breaker::set_applied_version(uint64_t v) {
  std::lock_guard lock(mu_);
  applied_version_ = std::max(applied_version_, v);
}

breaker_view circuit_breaker::view() const {
  std::lock_guard lock(mu_);
  return view_;
}

}  // namespace meridian::node
