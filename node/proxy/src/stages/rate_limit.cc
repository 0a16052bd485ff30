// Stage: the route's rate limits (rate_limits), counted across the cluster by the node's
// limiter. Answers 429 with Retry-After when one refuses; every answer carries the tightest
// limit's RateLimit-* lines; a limit with max_delay holds the request (pause) instead of
// refusing it while the delay fits; a strict limit whose key another node owns holds the
// request (pause) while that node decides.
#include <algorithm>
#include <charconv>
#include <string>

#include "meridian/traffic/rate_limiter.h"
#include "meridian/traffic/strict_limiter.h"
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

// The counted value of a limit's key. consumer: the authenticated consumer, else the client
// address (so anonymous clients are still limited one by one).
std::string_view key_value(const exchange& ex, const limit_spec& spec) {
  switch (spec.key) {
    case limit_spec::key_kind::ip:
      return ex.client_ip;
    case limit_spec::key_kind::consumer:
      return ex.consumer.empty() ? ex.client_ip : std::string_view(ex.consumer);
    case limit_spec::key_kind::route:
    case limit_spec::key_kind::global:
      return {};
    case limit_spec::key_kind::header:
      for (const auto& f : ex.fields)
        if (iequals(f.name, spec.header)) return f.value;
      return {};
  }
  return {};
}

// What the route's limits decided so far, and how to finish the answer once all have.
struct limits_outcome {
  limit_decision tightest;
  bool any = false;
  bool allowed = true;
  size_t refused_by = max_rate_limits_per_route;

  void add(size_t index, const limit_decision& d) {
    if (!d.allowed && allowed) {
      allowed = false;
      refused_by = index;
      tightest = d;
    } else if (allowed && (!any || d.remaining < tightest.remaining)) {
      tightest = d;
    }
    any = true;
  }
};

// Notes a decided request in the route's busiest keys (GET /ratelimits/{route}).
void note_key(const route_runtime& route, size_t i, uint64_t key, std::string_view value,
              bool refused, int64_t now) {
  const auto& spec = route.limits[i];
  if (!route.limit_stats || spec.key == limit_spec::key_kind::route ||
      spec.key == limit_spec::key_kind::global) {
    return;
  }
  route.limit_stats->keys.note(i, key, value, spec.sensitive_key, refused,
                               spec.window_of(now).index, now);
}

// Writes the RateLimit-* lines and counts the decision; false (with a 429 prepared) when a limit
// refused the request.
bool finish(exchange& ex, const limits_outcome& o) {
  auto& lines = ex.rate_limit_headers;
  append_line(lines, "RateLimit-Limit: ", o.tightest.limit);
  append_line(lines, "RateLimit-Remaining: ", o.tightest.remaining);
  append_line(lines, "RateLimit-Reset: ", o.tightest.reset_s);
  if (ex.route->limit_stats) {
    (o.allowed ? ex.route->limit_stats->allowed : ex.route->limit_stats->rejected)
        .fetch_add(1, std::memory_order_relaxed);
  }
  if (o.allowed) return true;
  append_line(lines, "Retry-After: ", o.tightest.retry_after_s);
  ex.local_status = 429;
  ex.local_code = "rate_limited";
  ex.local_message = "rate limit exceeded; retry later";
  return false;
}

// A request waiting for the owners of its strict limits' keys (strict_limiter::ask): the last
// answer brings it back to its worker, which decides the unanswered ones by on_partition.
struct strict_wait {
  struct item {
    size_t index = 0;
    uint64_t key = 0;
    std::string value;  // the key's value, for the busiest keys (the request may be gone)
    strict_limiter::outcome answer;
  };
  std::vector<item> items;
  limits_outcome so_far;  // the eventual limits' and the locally decided strict ones'
  std::atomic<size_t> left{0};
  resume_handle handle;
  std::shared_ptr<const snapshot> snap;  // keeps the route and the limiter's specs
  unsigned worker = 0;
};

verdict finish_strict(exchange& ex, strict_wait& w) {
  auto& limiter = *w.snap->limiter;
  const int64_t now = unix_now_ms();
  limits_outcome o = w.so_far;
  for (auto& it : w.items) {
    if (!o.allowed) break;  // refused already: the rest is not counted
    const auto& spec = ex.route->limits[it.index];
    limit_decision d = it.answer.decided ? it.answer.decision
                                         : limiter.check_without_owner(it.key, spec, now, w.worker);
    o.add(it.index, d);
    note_key(*ex.route, it.index, it.key, it.value, !d.allowed, now);
  }
  return finish(ex, o) ? verdict::next : verdict::respond;
}

// Applies the route's rate limits. Answers next (admitted), respond (refused: a 429 prepared) or
// pause: strict limits whose owners are asked (the exchange comes back through the owners'
// answers, this node's own gossip thread for the keys it owns), or a max_delay limit holding an
// admitted request (*delay_ms).
verdict check_rate_limits(exchange& ex, stage_context& ctx, uint64_t* delay_ms) {
  auto& limiter = *ctx.snap.limiter;
  const int64_t now = unix_now_ms();
  const auto& limits = ex.route->limits;
  const size_t n = std::min<size_t>(limits.size(), max_rate_limits_per_route);
  uint64_t keys[max_rate_limits_per_route];
  size_t eventual = 0, strict = 0;
  for (size_t i = 0; i < n; ++i) {
    keys[i] = rate_limiter::key_of(limits[i], key_value(ex, limits[i]));
    ++(limits[i].strict ? strict : eventual);
  }
  // The eventual limits, decided here. With several, check them all first and count only when
  // all admit: a refused request counts nowhere. One needs no first pass (check() counts
  // admissions only).
  limits_outcome o;
  for (size_t i = 0; i < n && eventual > 1; ++i) {
    if (limits[i].strict) continue;
    auto d = limiter.check(keys[i], limits[i], now, false, ctx.worker);
    if (!d.allowed) {
      o.add(i, d);
      break;
    }
  }
  if (o.allowed) {
    for (size_t i = 0; i < n; ++i) {
      if (limits[i].strict) continue;
      auto d = limiter.check(keys[i], limits[i], now, true, ctx.worker);
      o.add(i, d);  // a refusal here: another request took the last one meanwhile
      if (!d.allowed) break;
      *delay_ms = std::max(*delay_ms, d.delay_ms);
    }
  }
  for (size_t i = 0; i < n && i <= o.refused_by; ++i)
    if (!limits[i].strict)
      note_key(*ex.route, i, keys[i], key_value(ex, limits[i]), i == o.refused_by, now);
  if (!o.allowed || strict == 0) {
    if (!o.allowed) *delay_ms = 0;
    return finish(ex, o) ? verdict::next : verdict::respond;
  }

  // The strict limits: decided by their keys' owners (this node's gossip thread for keys it
  // owns), or by on_partition when there is none. A strict limit counts only after the eventual
  // ones admitted (a request they refused counts nowhere), but the strict ones count
  // independently of each other (each owner decides alone).
  auto* owners = limiter.strict();
  std::shared_ptr<strict_wait> wait;
  std::vector<std::pair<size_t, strict_limiter::location>> asks;  // (item, where)
  for (size_t i = 0; i < n && o.allowed; ++i) {
    if (!limits[i].strict) continue;
    if (!owners) {  // a node without a cluster owns every key
      auto d = limiter.check(keys[i], limits[i], now, true, ctx.worker);
      o.add(i, d);
      note_key(*ex.route, i, keys[i], key_value(ex, limits[i]), !d.allowed, now);
      continue;
    }
    auto where = owners->locate(keys[i], limits[i]);
    if (where.kind == strict_limiter::location::none || !ctx.snap_owner) {
      auto d = limiter.check_without_owner(keys[i], limits[i], now, ctx.worker);
      o.add(i, d);
      note_key(*ex.route, i, keys[i], key_value(ex, limits[i]), !d.allowed, now);
      continue;
    }
    if (!wait) wait = std::make_shared<strict_wait>();
    asks.emplace_back(wait->items.size(), std::move(where));
    auto& it = wait->items.emplace_back();
    it.index = i;
    it.key = keys[i];
    it.value.assign(key_value(ex, limits[i]));
  }
  if (!wait || !o.allowed) return finish(ex, o) ? verdict::next : verdict::respond;

  // Ask the owners and wait. The owners answer within each limit's strict_timeout (or the
  // limiter gives up then); should even that not come, the session answers 503 at the deadline.
  uint64_t longest = 0;
  for (const auto& it : wait->items)
    longest = std::max(longest, limits[it.index].strict_timeout_ms);
  ex.local_status = 503;
  ex.local_code = "rate_limit_unavailable";
  ex.local_message = "the rate limit's owner did not answer";
  wait->so_far = o;
  wait->snap = *ctx.snap_owner;
  wait->worker = ctx.worker;
  wait->left.store(wait->items.size(), std::memory_order_relaxed);
  wait->handle = ctx.pause.suspend(ctx.now + static_cast<int64_t>(longest) + 2000);
  for (auto& [item, where] : asks) {
    const auto& it = wait->items[item];
    owners->ask(where, it.key, limits[it.index],
                [wait, item = item](const strict_limiter::outcome& answer) {
                  wait->items[item].answer = answer;
                  if (wait->left.fetch_sub(1, std::memory_order_acq_rel) != 1) return;
                  wait->handle.resume([wait](exchange& ex) {
                    ex.local_status = 0;
                    ex.local_code = "";
                    ex.local_message = "";
                    return finish_strict(ex, *wait);
                  });
                });
  }
  return verdict::pause;
}

class rate_limit_stage final : public stage {
 public:
  rate_limit_stage() : stage(request_head) {}
  verdict on_request_head(exchange& ex, stage_context& ctx) const override {
    uint64_t delay_ms = 0;
    const verdict v = check_rate_limits(ex, ctx, &delay_ms);
    if (v != verdict::next || delay_ms == 0) return v;
    ctx.pause.resume_after(delay_ms);
    return verdict::pause;
  }
};

}  // namespace

std::unique_ptr<stage> make_rate_limit() {
  return std::make_unique<rate_limit_stage>();
}

}  // namespace meridian::node
