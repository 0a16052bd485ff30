#include "meridian/traffic/strict_limiter.h"

#include <algorithm>
#include <chrono>

#include "meridian/cluster/wire.h"

namespace meridian::node {
namespace {

uint64_t mix(uint64_t x) {  // splitmix64's finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t hash_id(std::string_view id) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : id) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return mix(h);
}

// Rendezvous (highest random weight) score of a member for a key: when a member goes, only the
// keys it owned move (each to the member with the next highest score); the others stay put.
uint64_t score(uint64_t key, uint64_t member) {
  return mix(key ^ member);
}

int64_t unix_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The bytes of one request on the wire, at most (struct and field headers, varints, the zone).
size_t request_bytes(size_t timezone_size) {
  return 34 + timezone_size;  // 10 for the key, 5 for the id, 6 field headers...
}
constexpr size_t batch_budget = 1100;  // under gossip_node::max_direct_bytes with the envelope

}  // namespace

struct strict_limiter::view {
  struct scope_view {
    std::vector<std::pair<uint64_t, std::string>> live;  // (id hash, address), alive members
    size_t total = 0;                                    // members that have not left
    bool quorum = false;                                 // live * 2 > total
    std::vector<uint64_t> prev_live;                     // the live set before the last change
    bool prev_quorum = false;
    int64_t changed_ms = -(int64_t{1} << 40);  // steady ms of that change

    // The owner's index in live (scores are compared over the id hashes).
    size_t owner(uint64_t key) const {
      size_t best = 0;
      for (size_t i = 1; i < live.size(); ++i)
        if (score(key, live[i].first) > score(key, live[best].first)) best = i;
      return best;
    }
    uint64_t previous_owner(uint64_t key) const {
      uint64_t best = 0;
      for (uint64_t h : prev_live)
        if (best == 0 || score(key, h) > score(key, best)) best = h;
      return best;
    }
  };
  scope_view global, region;
  uint64_t self_hash = 0;

  const scope_view& of(const limit_spec& spec) const {
    return spec.scope == limit_spec::scope_kind::region ? region : global;
  }
};

strict_limiter::strict_limiter(options o, rate_limiter& limiter, send_fn send, post_fn post)
    : opt_(std::move(o)), limiter_(limiter), send_(std::move(send)), post_(std::move(post)) {
  auto v = std::make_shared<view>();
  v->self_hash = hash_id(opt_.self_id);
  for (auto* s : {&v->global, &v->region}) {
    s->live = {{v->self_hash, std::string()}};
    s->total = 1;
    s->quorum = true;
    s->prev_live = {v->self_hash};
    s->prev_quorum = true;
  }
  view_ = std::move(v);
}

strict_limiter::~strict_limiter() = default;

int64_t strict_limiter::steady_now() const {
  if (opt_.steady_ms) return opt_.steady_ms();
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::shared_ptr<const strict_limiter::view> strict_limiter::current() const {
  std::lock_guard lock(view_mu_);
  return view_;
}

void strict_limiter::set_members(std::vector<member_view> members) {
  const int64_t now = steady_now();
  std::lock_guard lock(view_mu_);
  auto next = std::make_shared<view>(*view_);
  auto rebuild = [&](view::scope_view& s, bool region_only) {
    s.live.clear();
    s.total = 0;
    for (const auto& m : members) {
      if (region_only && m.region != opt_.region) continue;
      ++s.total;
      if (m.alive || m.id == opt_.self_id) s.live.emplace_back(hash_id(m.id), m.address);
    }
    if (s.total == 0) {  // a view without this node (not joined yet): this node alone
      s.live = {{next->self_hash, std::string()}};
      s.total = 1;
    }
    std::sort(s.live.begin(), s.live.end());
    s.quorum = s.live.size() * 2 > s.total;
  };
  auto changed = [](const view::scope_view& a, const view::scope_view& b) {
    if (a.quorum != b.quorum || a.live.size() != b.live.size()) return true;
    for (size_t i = 0; i < a.live.size(); ++i)
      if (a.live[i].first != b.live[i].first) return true;
    return false;
  };
  rebuild(next->global, false);
  rebuild(next->region, true);
  for (auto [n, o] : {std::pair{&next->global, &view_->global}, {&next->region, &view_->region}}) {
    if (!changed(*n, *o)) continue;
    n->prev_live.clear();
    for (const auto& [h, address] : o->live) n->prev_live.push_back(h);
    n->prev_quorum = o->quorum;
    n->changed_ms = now;
  }
  view_ = std::move(next);
}

void strict_limiter::tick() {
  const int64_t now = steady_now();
  const int64_t last = last_tick_.exchange(now);
  if (last == 0 || now - last <= opt_.stall_ms) return;
  // The process stood still: what it knew may be stale, and other nodes may have owned its keys
  // meanwhile. Every key is handed over to it again.
  std::lock_guard lock(view_mu_);
  auto next = std::make_shared<view>(*view_);
  for (auto* s : {&next->global, &next->region}) {
    s->prev_live.clear();
    s->prev_quorum = false;
    s->changed_ms = now;
  }
  view_ = std::move(next);
}

strict_limiter::location strict_limiter::locate(uint64_t key, const limit_spec& spec) const {
  location out;
  if (spec.scope == limit_spec::scope_kind::local || !send_) {
    out.kind = location::here;
    return out;
  }
  const int64_t last = last_tick_.load(std::memory_order_relaxed);
  if (last != 0 && steady_now() - last > opt_.stall_ms) {  // a stalled view
    counters_.no_quorum.fetch_add(1, std::memory_order_relaxed);
    return out;
  }
  auto v = current();
  const auto& s = v->of(spec);
  if (!s.quorum) {
    counters_.no_quorum.fetch_add(1, std::memory_order_relaxed);
    return out;
  }
  const auto& owner = s.live[s.owner(key)];
  if (owner.first == v->self_hash) {
    out.kind = location::here;
  } else {
    out.kind = location::remote;
    out.address = owner.second;
  }
  return out;
}

strict_limiter::outcome strict_limiter::decide_here(uint64_t key, const limit_spec& spec,
                                                    int64_t now_ms, unsigned worker) {
  outcome out;
  if (spec.scope != limit_spec::scope_kind::local && send_) {
    auto v = current();
    const auto& s = v->of(spec);
    if (!s.quorum || s.live[s.owner(key)].first != v->self_hash) return out;
    // Newly this node's: the previous owner's last admissions may still be on their way.
    if (steady_now() < s.changed_ms + opt_.handover_ms &&
        (!s.prev_quorum || s.previous_owner(key) != v->self_hash)) {
      return out;
    }
  }
  out.decided = true;
  out.decision = limiter_.check(key, spec, now_ms, true, worker);
  counters_.decided_here.fetch_add(1, std::memory_order_relaxed);
  return out;
}

void strict_limiter::ask(const std::string& address, uint64_t key, const limit_spec& spec,
                         done_fn done) {
  queued q;
  q.key = key;
  q.limit = spec.limit;
  q.window_ms = spec.window_ms;
  q.flags = static_cast<uint8_t>(
      (spec.sliding ? cluster::strict_flag_sliding : 0) |
      (spec.scope == limit_spec::scope_kind::region ? cluster::strict_flag_region : 0) |
      (spec.calendar ? cluster::strict_flag_month : 0));
  if (spec.calendar) q.timezone = spec.timezone;
  const int64_t deadline = steady_now() + static_cast<int64_t>(spec.strict_timeout_ms);
  std::vector<queued> now_batch;
  bool post_flush = false, post_sweep = false;
  {
    std::lock_guard lock(mu_);
    if (pending_.size() >= opt_.max_pending) {
      counters_.timed_out.fetch_add(1, std::memory_order_relaxed);
      done(outcome{});
      return;
    }
    q.id = next_id_++;
    if (q.id == 0) q.id = next_id_++;
    pending_[q.id] = pending{std::move(done), deadline, spec.limit};
    deadlines_.emplace(deadline, q.id);
    auto& queue = queued_[address];
    queue.push_back(std::move(q));
    if (queue.size() >= opt_.max_batch) {
      now_batch.swap(queue);
    } else if (!flush_posted_) {
      flush_posted_ = post_flush = true;
    }
    if (!sweep_posted_) sweep_posted_ = post_sweep = true;
  }
  counters_.asked.fetch_add(1, std::memory_order_relaxed);
  if (!now_batch.empty()) send_requests(address, std::move(now_batch));
  if (post_flush) post_([this] { flush(); }, {});
  if (post_sweep) post_([this] { sweep(); }, std::chrono::milliseconds(5));
}

void strict_limiter::flush() {
  std::map<std::string, std::vector<queued>> batches;
  {
    std::lock_guard lock(mu_);
    batches.swap(queued_);
    flush_posted_ = false;
  }
  for (auto& [address, requests] : batches)
    if (!requests.empty()) send_requests(address, std::move(requests));
}

void strict_limiter::send_requests(const std::string& address, std::vector<queued> requests) {
  cluster::strict_batch b;
  size_t bytes = 0;
  auto send_batch = [&] {
    if (b.requests.empty()) return;
    counters_.messages_out.fetch_add(1, std::memory_order_relaxed);
    send_(address, cluster::encode(b));
    b.requests.clear();
    bytes = 0;
  };
  for (auto& q : requests) {
    const size_t n = request_bytes(q.timezone.size());
    if (b.requests.size() >= opt_.max_batch || bytes + n > batch_budget) send_batch();
    b.requests.push_back({.id = q.id,
                          .key = q.key,
                          .limit = q.limit,
                          .window_ms = q.window_ms,
                          .flags = q.flags,
                          .timezone = std::move(q.timezone)});
    bytes += n;
  }
  send_batch();
}

void strict_limiter::sweep() {
  const int64_t now = steady_now();
  std::vector<done_fn> expired;
  bool again = false;
  {
    std::lock_guard lock(mu_);
    while (!deadlines_.empty() && deadlines_.begin()->first <= now) {
      auto it = pending_.find(deadlines_.begin()->second);
      if (it != pending_.end()) {
        expired.push_back(std::move(it->second.done));
        pending_.erase(it);
      }
      deadlines_.erase(deadlines_.begin());
    }
    if (pending_.empty()) deadlines_.clear();  // answered asks leave their deadlines behind
    again = sweep_posted_ = !pending_.empty();
  }
  if (again) post_([this] { sweep(); }, std::chrono::milliseconds(5));
  counters_.timed_out.fetch_add(expired.size(), std::memory_order_relaxed);
  for (auto& done : expired) done(outcome{});
}

void strict_limiter::on_message(const std::string& from_address, std::string_view message) {
  cluster::strict_batch in;
  if (cluster::decode(message, &in) != cluster::wire_error::none) {
    counters_.malformed.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (!in.requests.empty()) {
    // Decide as the owner. The asker's view put this node first; this node's own view decides
    // (not_owner when it differs, and during a handover).
    const int64_t now_ms = opt_.unix_ms ? opt_.unix_ms() : unix_now_ms();
    cluster::strict_batch out;
    out.answers.reserve(in.requests.size());
    for (auto& r : in.requests) {
      limit_spec spec;
      spec.strict = true;
      spec.limit = r.limit;
      spec.window_ms = std::max<uint64_t>(r.window_ms, 1);
      spec.sliding = r.flags & cluster::strict_flag_sliding;
      spec.scope = (r.flags & cluster::strict_flag_region) ? limit_spec::scope_kind::region
                                                           : limit_spec::scope_kind::global;
      if (r.flags & cluster::strict_flag_month) {
        std::lock_guard lock(zones_mu_);
        auto& cal = zones_[r.timezone];
        if (!cal) {
          std::string error;
          cal = month_calendar::make(r.timezone, &error);
          if (!cal) cal = month_calendar::make("UTC", &error);
        }
        if (zones_.size() > 256) zones_.erase(zones_.begin());  // bounded: names come from peers
        spec.calendar = cal;
        spec.timezone = r.timezone;
      }
      auto& a = out.answers.emplace_back();
      a.id = r.id;
      auto where = locate(r.key, spec);
      if (where.kind != location::here) {
        a.result = cluster::strict_result::not_owner;
        continue;
      }
      auto o = decide_here(r.key, spec, now_ms, 0);
      if (!o.decided) {
        a.result = cluster::strict_result::handing_over;
        continue;
      }
      counters_.decided_for_others.fetch_add(1, std::memory_order_relaxed);
      a.result =
          o.decision.allowed ? cluster::strict_result::admitted : cluster::strict_result::refused;
      a.remaining = o.decision.remaining;
      a.reset_ms = o.decision.reset_s * 1000;
      a.retry_after_ms = o.decision.retry_after_s * 1000;
    }
    counters_.messages_out.fetch_add(1, std::memory_order_relaxed);
    send_(from_address, cluster::encode(out));
  }
  if (!in.answers.empty()) {
    std::vector<std::pair<done_fn, outcome>> ready;
    {
      std::lock_guard lock(mu_);
      for (const auto& a : in.answers) {
        auto it = pending_.find(a.id);
        if (it == pending_.end()) continue;  // timed out already, or not ours
        outcome o;
        if (a.result == cluster::strict_result::admitted ||
            a.result == cluster::strict_result::refused) {
          o.decided = true;
          o.decision.allowed = a.result == cluster::strict_result::admitted;
          o.decision.limit = it->second.limit;
          o.decision.remaining = a.remaining;
          o.decision.reset_s = (a.reset_ms + 999) / 1000;
          o.decision.retry_after_s = (a.retry_after_ms + 999) / 1000;
        }
        ready.emplace_back(std::move(it->second.done), o);
        pending_.erase(it);
      }
    }
    for (auto& [done, o] : ready) {
      (o.decided ? counters_.answered : counters_.not_owner)
          .fetch_add(1, std::memory_order_relaxed);
      done(o);
    }
  }
}

std::string strict_limiter::metrics_text() const {
  const auto& c = counters_;
  std::string out =
      "# HELP meridian_ratelimit_strict_total Strict rate-limit requests by what became of "
      "them.\n# TYPE meridian_ratelimit_strict_total counter\n";
  auto line = [&](const char* what, const std::atomic<uint64_t>& v) {
    out += std::string("meridian_ratelimit_strict_total{result=\"") + what + "\"} " +
           std::to_string(v.load(std::memory_order_relaxed)) + "\n";
  };
  line("decided", c.decided_here);  // by this node as the owner, for itself or others
  line("decided_for_others", c.decided_for_others);
  line("asked", c.asked);
  line("answered", c.answered);
  line("timed_out", c.timed_out);
  line("not_owner", c.not_owner);
  line("no_quorum", c.no_quorum);
  line("malformed", c.malformed);
  out +=
      "# HELP meridian_ratelimit_strict_messages_total Strict rate-limit batches sent (asks and "
      "answers).\n# TYPE meridian_ratelimit_strict_messages_total counter\n"
      "meridian_ratelimit_strict_messages_total " +
      std::to_string(c.messages_out.load(std::memory_order_relaxed)) + "\n";
  return out;
}

}  // namespace meridian::node
