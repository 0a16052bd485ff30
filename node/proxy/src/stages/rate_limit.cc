// Stage: the route's rate limits (rate_limits), counted across the cluster by the node's
// limiter. Answers 429 with Retry-After when one refuses; every answer carries the tightest
// limit's RateLimit-* lines; a limit with max_delay holds the request (pause) instead of
// refusing it while the delay fits.
#include <algorithm>
#include <charconv>
#include <string>

#include "meridian/traffic/rate_limiter.h"
#include "stage.h"

namespace meridian::node {
namespace {

// Appends "Name: value\r\n" (name includes ": ") without temporaries: this runs per request.
void append_line(std::string& out, std::string_view name, uint64_t value) {
  char digits[20];
  auto end = std::to_chars(digits, digits + sizeof digits, value).ptr;
  out.append(name);
  out.append(digits, static_cast<size_t>(end - digits));
  out.append("\r\n");
}

// Applies the route's rate limits; false (with a 429 prepared) when one refuses the request.
// *delay_ms: how long a max_delay limit holds an admitted request (0: not at all).
bool check_rate_limits(exchange& ex, stage_context& ctx, uint64_t* delay_ms) {
  auto& limiter = *ctx.snap.limiter;
  int64_t now = unix_now_ms();
  // The counted value of each limit's key. consumer: the authenticated consumer, else the
  // client address (so anonymous clients are still limited one by one).
  auto key_value = [&](const limit_spec& spec) -> std::string_view {
    switch (spec.key) {
      case limit_spec::key_kind::ip:
        return ex.client_ip;
      case limit_spec::key_kind::consumer:
        return ex.consumer.empty() ? ex.client_ip : std::string_view(ex.consumer);
      case limit_spec::key_kind::route:
      case limit_spec::key_kind::global:
        return {};
      case limit_spec::key_kind::header:
        for (auto& f : ex.fields)
          if (iequals(f.name, spec.header)) return f.value;
        return {};
    }
    return {};
  };
  // With several limits, check them all first and count only when all admit: a refused request
  // counts nowhere. One limit needs no first pass (check() counts admissions only).
  const auto& limits = ex.route->limits;
  uint64_t keys[max_rate_limits_per_route];
  size_t n = std::min<size_t>(limits.size(), max_rate_limits_per_route);
  limit_decision tightest;
  bool allowed = true;
  for (size_t i = 0; i < n; ++i) keys[i] = rate_limiter::key_of(limits[i], key_value(limits[i]));
  size_t refused_by = n;
  for (size_t i = 0; i < n && n > 1; ++i) {
    auto d = limiter.check(keys[i], limits[i], now, false, ctx.worker);
    if (!d.allowed) {
      allowed = false;
      tightest = d;
      refused_by = i;
      break;
    }
  }
  if (allowed) {
    for (size_t i = 0; i < n; ++i) {
      auto d = limiter.check(keys[i], limits[i], now, true, ctx.worker);
      if (!d.allowed) {  // another request took the last one meanwhile
        allowed = false;
        tightest = d;
        refused_by = i;
        break;
      }
      *delay_ms = std::max(*delay_ms, d.delay_ms);
      if (i == 0 || d.remaining < tightest.remaining) tightest = d;
    }
  }
  auto& lines = ex.rate_limit_headers;
  append_line(lines, "RateLimit-Limit: ", tightest.limit);
  append_line(lines, "RateLimit-Remaining: ", tightest.remaining);
  append_line(lines, "RateLimit-Reset: ", tightest.reset_s);
  if (ex.route->limit_stats) {
    auto& stats = *ex.route->limit_stats;
    (allowed ? stats.allowed : stats.rejected).fetch_add(1, std::memory_order_relaxed);
    // The busiest keys (GET /ratelimits/{route}): each keyed limit the request was checked
    // against (a refused request counts at the limit that refused it).
    for (size_t i = 0; i < n && i <= refused_by; ++i) {
      const auto kind = limits[i].key;
      if (kind == limit_spec::key_kind::route || kind == limit_spec::key_kind::global) continue;
      stats.keys.note(i, keys[i], key_value(limits[i]), limits[i].sensitive_key, i == refused_by,
                      limits[i].window_of(now).index, now);
    }
  }
  if (allowed) return true;
  *delay_ms = 0;
  append_line(ex.rate_limit_headers, "Retry-After: ", tightest.retry_after_s);
  ex.local_status = 429;
  ex.local_code = "rate_limited";
  ex.local_message = "rate limit exceeded; retry later";
  return false;
}

class rate_limit_stage final : public stage {
 public:
  rate_limit_stage() : stage(request_head) {}
  verdict on_request_head(exchange& ex, stage_context& ctx) const override {
    uint64_t delay_ms = 0;
    if (!check_rate_limits(ex, ctx, &delay_ms)) return verdict::respond;
    if (delay_ms == 0) return verdict::next;
    ctx.pause.resume_after(delay_ms);
    return verdict::pause;
  }
};

}  // namespace

std::unique_ptr<stage> make_rate_limit() {
  return std::make_unique<rate_limit_stage>();
}

}  // namespace meridian::node
