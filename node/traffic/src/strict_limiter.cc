#include "meridian/traffic/strict_limiter.h"

#include <algorithm>
#include <chrono>
#include <set>
#include <tuple>

#include "hash.h"
#include "meridian/cluster/wire.h"

namespace meridian::node {
namespace {

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

// Upper bounds of one entry's encoding (struct and field headers, varints), for filling
// messages within gossip_node::max_direct_bytes.
constexpr size_t request_bytes = 34;  // plus the time zone
constexpr size_t answer_bytes = 30;   // id 5, result 1, remaining 10, reset 5, retry 3, headers
constexpr size_t count_bytes = 31;    // key 10, window_ms 5, window 5, count 5, headers
constexpr size_t message_budget = 1100;

// Keys taken over are remembered (not asked about again in the same view) up to this many.
constexpr size_t max_takeovers = 1 << 18;

// The worker slot the owner's decisions count in (rate_limiter's dirty lists).
constexpr unsigned gossip_worker = 63;

}  // namespace

struct strict_limiter::view {
  struct scope_view {
    std::vector<std::pair<uint64_t, std::string>> live;  // (id hash, address), alive members
    size_t total = 0;                                    // members that have not left
    bool quorum = false;                                 // live * 2 > total
    std::vector<uint64_t> prev_live;                     // the live set before the last change
    bool prev_quorum = false;
    int64_t changed_ms = 0;  // steady ms of that change

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
  std::vector<std::string> others;  // addresses of the other live members (counts go to them)

  const scope_view& of(const limit_spec& spec) const {
    return spec.scope == limit_spec::scope_kind::region ? region : global;
  }
};

// An answer the owner made, and where it goes ("": a request of this node).
struct strict_limiter::answer_out {
  std::string to;
  cluster::strict_answer answer;
};

// A key being taken over: count queries out to the other members, requests waiting for them.
struct strict_limiter::takeover {
  int64_t epoch = 0;  // the view (its changed_ms) the key is taken over in
  bool done = false;
  uint32_t window = 0;
  size_t waiting = 0;  // answers still needed for a majority
  size_t asked = 0;    // count queries not answered (or timed out) yet
  limit_spec spec;
  std::vector<owner_request> parked;
};

// Admissions waiting for a majority to acknowledge their counts.
struct strict_limiter::held {
  size_t needed = 0;         // acknowledgements from other members
  size_t needed_region = 0;  // ... of them from members of this node's region (region scope)
  int64_t deadline = 0;
  std::set<std::string> acked_by;
  size_t region_acks = 0;
  std::vector<answer_out> answers;
};

strict_limiter::strict_limiter(options o, rate_limiter& limiter, send_fn send, post_fn post,
                               counts_fn counts)
    : opt_(std::move(o)),
      limiter_(limiter),
      send_(std::move(send)),
      post_(std::move(post)),
      counts_(std::move(counts)) {
  // Until the first view arrives this node sees only itself alive, and may have been gone a while
  // (a restart): a view that begins now, so keys are taken over before they are decided, in which
  // every member it remembers counts as dead.
  for (const auto& m : opt_.remembered)
    if (!m.id.empty() && (m.global || m.regional))
      base_[m.id] = {m.address, m.region, m.global, m.regional && m.region == opt_.region};
  opt_.remembered.clear();
  base_[opt_.self_id] = {std::string(), opt_.region, true, true};
  heard_of_peers_ = !opt_.expect_peers;
  auto v = std::make_shared<view>();
  v->self_hash = hash_id(opt_.self_id);
  view_ = std::move(v);
  live_ = {{opt_.self_id, std::string()}};
  rebuild_view(steady_now(), true);
}

strict_limiter::~strict_limiter() = default;

int64_t strict_limiter::steady_now() const {
  if (opt_.steady_ms) return opt_.steady_ms();
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

int64_t strict_limiter::unix_now() const {
  if (opt_.unix_ms) return opt_.unix_ms();
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::shared_ptr<const strict_limiter::view> strict_limiter::current() const {
  std::lock_guard lock(view_mu_);
  return view_;
}

void strict_limiter::set_members(std::vector<member_view> members) {
  const int64_t now = steady_now();
  std::vector<counted_member> to_remember;
  {
    std::lock_guard lock(view_mu_);
    const auto before = base_;
    std::map<std::string, const member_view*> listed;
    live_ = {{opt_.self_id, std::string()}};
    for (const auto& m : members) {
      if (m.id == opt_.self_id || m.id.empty()) continue;
      heard_of_peers_ = true;
      listed[m.id] = &m;
      if (m.alive && !m.left) live_.emplace_back(m.id, m.address);
    }
    // Each scope's count changes only while this node sees a majority of it alive, as it stands
    // (the region's, for this node's region): members joining on the minority side of a partition
    // do not make it a majority, and members the membership no longer lists (it reaped them, or
    // they are remembered from before a restart) are still counted there. A node that counts
    // only itself (a first start) is a majority of one: it takes whom it first hears of.
    const bool global = majority_locked(false), region = majority_locked(true);
    for (const auto& [id, m] : listed) {
      if (m->left) {  // left on purpose: it decides nothing any more
        base_.erase(id);
        continue;
      }
      if (auto f = forgotten_.find(id); f != forgotten_.end()) {
        if (!m->alive) {
          base_.erase(id);
          continue;
        }
        revived_[id] = f->second;
        forgotten_.erase(f);
      }
      auto& b = base_[id];
      b.address = m->address;
      b.region = m->region;
      const bool ours = m->region == opt_.region;
      if (!b.global && global) b.global = true;
      if (b.regional != ours && region) b.regional = ours;
      if (!b.global && !b.regional) base_.erase(id);
    }
    for (auto it = base_.begin(); it != base_.end();) {
      auto& [id, b] = *it;
      if (id == opt_.self_id || listed.count(id)) {
        ++it;
        continue;
      }
      if (forgotten_.count(id)) {
        it = base_.erase(it);
        continue;
      }
      if (global) b.global = false;
      if (region) b.regional = false;
      it = b.global || b.regional ? std::next(it) : base_.erase(it);
    }
    if (before != base_ && opt_.remember) to_remember = counted_locked();
    rebuild_view(now, false);
  }
  if (!to_remember.empty()) opt_.remember(to_remember);
}

bool strict_limiter::majority_locked(bool region_only) const {
  size_t total = 0, alive = 0;
  for (const auto& [id, b] : base_) total += region_only ? b.regional : b.global;
  for (const auto& [id, address] : live_) {
    auto b = base_.find(id);
    if (b != base_.end()) alive += region_only ? b->second.regional : b->second.global;
  }
  return heard_of_peers_ && alive * 2 > total;
}

bool strict_limiter::counts_member(const std::string& id) const {
  std::lock_guard lock(view_mu_);
  return base_.count(id) > 0;
}

void strict_limiter::set_forgotten(std::map<std::string, int64_t> forgotten) {
  std::lock_guard lock(view_mu_);
  // A revival is remembered only while its record exists (records are deleted once a node sees
  // the member alive): the set stays the size of the records.
  std::erase_if(revived_, [&](const auto& r) {
    auto f = forgotten.find(r.first);
    return f == forgotten.end() || f->second != r.second;
  });
  for (auto it = forgotten.begin(); it != forgotten.end();)
    it = revived_.count(it->first) ? forgotten.erase(it) : std::next(it);
  forgotten_ = std::move(forgotten);
}

std::vector<strict_limiter::counted_member> strict_limiter::counted_members() const {
  std::lock_guard lock(view_mu_);
  return counted_locked();
}

std::vector<strict_limiter::counted_member> strict_limiter::counted_locked() const {
  std::vector<counted_member> out;
  for (const auto& [id, b] : base_) {
    bool alive = false;
    for (const auto& l : live_) alive = alive || l.first == id;
    out.push_back({id, b.address, b.region, b.global, b.regional, alive});
  }
  return out;
}

void strict_limiter::rebuild_view(int64_t now, bool first) {
  auto next = std::make_shared<view>(*view_);
  auto rebuild = [&](view::scope_view& s, bool region_only) {
    s.live.clear();
    s.total = 0;
    for (const auto& [id, b] : base_) s.total += region_only ? b.regional : b.global;
    for (const auto& [id, address] : live_) {
      auto b = base_.find(id);
      if (b != base_.end() && (region_only ? b->second.regional : b->second.global))
        s.live.emplace_back(hash_id(id), address);
    }
    std::sort(s.live.begin(), s.live.end());
    s.quorum = majority_locked(region_only);
  };
  auto changed = [](const view::scope_view& a, const view::scope_view& b) {
    if (a.quorum != b.quorum || a.live.size() != b.live.size()) return true;
    for (size_t i = 0; i < a.live.size(); ++i)
      if (a.live[i].first != b.live[i].first) return true;
    return false;
  };
  rebuild(next->global, false);
  rebuild(next->region, true);
  // Counts go to every live member counted for either scope (a region admission needs the
  // region's acknowledgements, a global one anybody's).
  next->others.clear();
  for (const auto& [id, address] : live_) {
    auto b = base_.find(id);
    if (id != opt_.self_id && b != base_.end()) next->others.push_back(address);
  }
  for (auto [n, o] : {std::pair{&next->global, &view_->global}, {&next->region, &view_->region}}) {
    if (!changed(*n, *o) && !first) continue;
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
  if (spec.scope == limit_spec::scope_kind::local) {
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

void strict_limiter::ask(const location& where, uint64_t key, const limit_spec& spec,
                         done_fn done) {
  if (where.kind == location::none) {
    done(outcome{});
    return;
  }
  queued q;
  q.key = key;
  q.limit = spec.limit;
  q.window_ms = spec.window_ms;
  q.flags = static_cast<uint8_t>(
      (spec.sliding ? cluster::strict_flag_sliding : 0) |
      (spec.scope == limit_spec::scope_kind::region ? cluster::strict_flag_region : 0) |
      (spec.calendar ? cluster::strict_flag_month : 0));
  if (spec.calendar) q.timezone = spec.timezone;
  q.timeout_ms = static_cast<uint32_t>(std::min<uint64_t>(spec.strict_timeout_ms, UINT32_MAX));
  pending p{std::move(done), steady_now() + static_cast<int64_t>(spec.strict_timeout_ms),
            spec.limit};
  const std::string address = where.kind == location::here ? std::string() : where.address;
  if (enqueue(address, std::move(q), std::move(p)) && !address.empty())
    counters_.asked.fetch_add(1, std::memory_order_relaxed);
}

// Queues q for address ("": decided here) with p waiting for its answer; returns false when too
// many are waiting (p.done then ran, with no decision).
bool strict_limiter::enqueue(const std::string& address, queued q, pending p) {
  std::vector<queued> now_batch;
  bool post_flush = false, post_sweep = false;
  {
    std::unique_lock lock(mu_);
    if (stopped_ || pending_.size() >= opt_.max_pending) {
      lock.unlock();
      counters_.timed_out.fetch_add(1, std::memory_order_relaxed);
      p.done(outcome{});
      return false;
    }
    q.id = next_id_++;
    if (q.id == 0) q.id = next_id_++;
    deadlines_.emplace(p.deadline, q.id);
    pending_.emplace(q.id, std::move(p));
    auto& queue = queued_[address];
    queue.push_back(std::move(q));
    if (!address.empty() && queue.size() >= opt_.max_batch) {
      now_batch.swap(queue);
    } else if (!flush_posted_) {
      flush_posted_ = post_flush = true;
    }
    if (!sweep_posted_) sweep_posted_ = post_sweep = true;
  }
  if (!now_batch.empty()) send_requests(address, std::move(now_batch));
  if (post_flush) post_([this] { flush(); }, {});
  if (post_sweep) post_([this] { sweep(); }, std::chrono::milliseconds(5));
  return true;
}

void strict_limiter::stop() {
  std::vector<done_fn> ended;
  {
    std::lock_guard lock(mu_);
    stopped_ = true;
    for (auto& [id, p] : pending_) ended.push_back(std::move(p.done));
    pending_.clear();
    deadlines_.clear();
    queued_.clear();
  }
  for (auto& done : ended) done(outcome{});
}

void strict_limiter::flush() {
  std::map<std::string, std::vector<queued>> batches;
  {
    std::lock_guard lock(mu_);
    batches.swap(queued_);
    flush_posted_ = false;
  }
  for (auto& [address, requests] : batches) {
    if (requests.empty()) continue;
    if (!address.empty()) {
      send_requests(address, std::move(requests));
      continue;
    }
    std::vector<owner_request> here;
    here.reserve(requests.size());
    for (auto& q : requests) here.push_back({q.id, q.key, spec_of(q), std::string()});
    decide_batch(std::move(here));
  }
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
    const size_t n = request_bytes + q.timezone.size();
    if (b.requests.size() >= opt_.max_batch || bytes + n > message_budget) send_batch();
    b.requests.push_back({.id = q.id,
                          .key = q.key,
                          .limit = q.limit,
                          .window_ms = q.window_ms,
                          .flags = q.flags,
                          .timezone = std::move(q.timezone),
                          .timeout_ms = q.timeout_ms});
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

limit_spec strict_limiter::spec_of(const queued& r) {
  limit_spec spec;
  spec.strict = true;
  spec.limit = r.limit;
  spec.window_ms = std::max<uint64_t>(r.window_ms, 1);
  spec.sliding = r.flags & cluster::strict_flag_sliding;
  spec.scope = (r.flags & cluster::strict_flag_region) ? limit_spec::scope_kind::region
                                                       : limit_spec::scope_kind::global;
  if (r.timeout_ms != 0) spec.strict_timeout_ms = r.timeout_ms;
  if (r.flags & cluster::strict_flag_month) {
    auto& cal = zones_[r.timezone];
    if (!cal) {
      std::string error;
      cal = month_calendar::make(r.timezone, &error);
      if (!cal) cal = month_calendar::make("UTC", &error);
    }
    spec.calendar = cal;
    spec.timezone = r.timezone;
    if (zones_.size() > 256) zones_.clear();  // bounded: names come from peers
  }
  return spec;
}

// Whether r's key may not be decided yet: this node takes the key over first (asks the other
// live members for their slots of its counters and waits for a majority), and r waits, parked in
// the key's take-over. Gossip thread.
bool strict_limiter::taking_over(const owner_request& r, const view& v, int64_t now_ms,
                                 int64_t steady) {
  const auto& s = v.of(r.spec);
  if (s.live.size() < 2) return false;                          // nobody else could have decided it
  const int64_t view_began = now_ms - (steady - s.changed_ms);  // in Unix ms
  const auto at = r.spec.window_of(now_ms);
  auto it = takeovers_.find(r.key);
  if (it != takeovers_.end() && it->second->epoch == s.changed_ms &&
      it->second->window == at.index) {
    auto& t = *it->second;
    if (t.done) return false;
    t.parked.push_back(r);
    return true;
  }
  // The view is older than the key's window: nobody else owned the key in it.
  if (view_began < at.start_ms) {
    if (it != takeovers_.end()) takeovers_.erase(it);
    return false;
  }
  if (it == takeovers_.end()) it = takeovers_.emplace(r.key, std::make_unique<takeover>()).first;
  auto& t = *it->second;
  t = takeover{};
  t.epoch = s.changed_ms;
  t.window = at.index;
  t.spec = r.spec;
  t.parked.push_back(r);
  // A majority of the scope, this node included, must answer; until then (and for the fence's
  // life) this node acknowledges nobody else's counts for the key.
  t.waiting = s.total / 2;
  fences_[r.key] = fence{opt_.self_id, steady + opt_.fence_ms};
  counters_.takeovers.fetch_add(1, std::memory_order_relaxed);
  const uint64_t key = r.key;
  const int64_t epoch = t.epoch;
  const uint32_t window = t.window;
  limit_spec query = r.spec;
  // The asker gives up at its timeout, whatever happens here: waiting as long costs nothing.
  query.strict_timeout_ms = std::max<uint64_t>(r.spec.strict_timeout_ms, 1);
  std::vector<std::string> targets;
  for (const auto& [h, address] : s.live)
    if (h != v.self_hash) targets.push_back(address);
  t.asked = targets.size();
  for (const auto& address : targets) {
    queued q;
    q.key = key;
    q.limit = query.limit;
    q.window_ms = query.window_ms;
    q.flags = static_cast<uint8_t>(
        cluster::strict_flag_count | (query.sliding ? cluster::strict_flag_sliding : 0) |
        (query.scope == limit_spec::scope_kind::region ? cluster::strict_flag_region : 0) |
        (query.calendar ? cluster::strict_flag_month : 0));
    if (query.calendar) q.timezone = query.timezone;
    q.timeout_ms = static_cast<uint32_t>(query.strict_timeout_ms);
    pending p;
    p.deadline = steady + static_cast<int64_t>(query.strict_timeout_ms);
    // The answer's slots were merged (on_message) before this runs.
    p.done = [this, key, epoch, window](const outcome& o) {
      auto it = takeovers_.find(key);
      if (it == takeovers_.end() || it->second->epoch != epoch || it->second->window != window ||
          it->second->done) {
        return;
      }
      auto& t = *it->second;
      const bool counted = o.decided && o.decision.window == t.window;
      if (counted && t.waiting > 0) --t.waiting;
      if (t.asked > 0) --t.asked;
      if (t.waiting > 0 && t.asked > 0) return;
      auto parked = std::move(t.parked);
      t.parked.clear();
      if (t.waiting == 0) {
        t.done = true;
        decide_batch(std::move(parked));
        return;
      }
      // No majority answered: nothing is decided; the next request tries again.
      std::vector<answer_out> none;
      for (auto& r : parked) {
        cluster::strict_answer a;
        a.id = r.id;
        a.result = cluster::strict_result::handing_over;
        none.push_back({std::move(r.reply_to), a});
      }
      takeovers_.erase(it);
      release(std::move(none));
    };
    enqueue(address, std::move(q), std::move(p));
  }
  if (takeovers_.size() > max_takeovers) {
    for (auto i = takeovers_.begin(); i != takeovers_.end();)
      i = i->second->done ? takeovers_.erase(i) : std::next(i);
  }
  return true;
}

// Whether key is fenced for a node other than `node`: another member asked this one for the
// key's counts to take it over, fence_ms ago at most, and is still alive in this node's view (a
// fence for a member that died since would only keep the key from its next owner).
bool strict_limiter::fenced_for(uint64_t key, const std::string& node, int64_t steady) {
  auto it = fences_.find(key);
  if (it == fences_.end()) return false;
  if (it->second.until <= steady) {
    fences_.erase(it);
    return false;
  }
  if (it->second.owner == node) return false;
  const auto v = current();
  const uint64_t h = hash_id(it->second.owner);
  for (const auto& [member, address] : v->global.live)
    if (member == h) return true;
  return false;
}

void strict_limiter::decide_batch(std::vector<owner_request> requests) {
  const int64_t now_ms = unix_now();
  const int64_t steady = steady_now();
  const int64_t last = last_tick_.load(std::memory_order_relaxed);
  const bool stalled = last != 0 && steady - last > opt_.stall_ms;
  auto v = current();
  std::vector<answer_out> now_out, admitted;
  std::vector<cluster::strict_count> counts;
  // Acknowledgements the admissions need: from any members (global scope) and from members of
  // this node's region (region scope: a later take-over asks the region only).
  size_t majority_others = 0, majority_region = 0;
  for (auto& r : requests) {
    cluster::strict_answer a;
    a.id = r.id;
    const bool local = r.spec.scope == limit_spec::scope_kind::local;
    const auto& s = v->of(r.spec);
    const bool mine =
        local || (!stalled && s.quorum && s.live[s.owner(r.key)].first == v->self_hash &&
                  !fenced_for(r.key, opt_.self_id, steady));
    if (!mine) {
      a.result = cluster::strict_result::not_owner;
    } else if (!local && taking_over(r, *v, now_ms, steady)) {
      continue;  // decided once a majority has said what it holds
    } else {
      const auto d = limiter_.check(r.key, r.spec, now_ms, true, gossip_worker);
      counters_.decided_here.fetch_add(1, std::memory_order_relaxed);
      if (!r.reply_to.empty()) counters_.decided_for_others.fetch_add(1, std::memory_order_relaxed);
      a.result = d.allowed ? cluster::strict_result::admitted : cluster::strict_result::refused;
      a.remaining = d.remaining;
      a.reset_ms = d.reset_s * 1000;
      a.retry_after_ms = d.retry_after_s * 1000;
      if (d.allowed && !local) {
        counts.push_back(
            {.key = r.key,
             .window_ms = static_cast<uint32_t>(r.spec.window_ms),
             .window = d.window,
             .count = static_cast<uint32_t>(std::min<uint64_t>(d.own_count, UINT32_MAX)),
             .origin = {}});
        auto& needed = &s == &v->region ? majority_region : majority_others;
        needed = std::max(needed, s.total / 2);
        admitted.push_back({std::move(r.reply_to), a});
        continue;
      }
    }
    now_out.push_back({std::move(r.reply_to), a});
  }
  if (!now_out.empty()) release(std::move(now_out));
  if (admitted.empty()) return;
  if (majority_others == 0 && majority_region == 0) {  // a scope of one: nobody to tell
    release(std::move(admitted));
    return;
  }
  // One count per key and window: the last (the largest) of those this batch admitted.
  std::stable_sort(counts.begin(), counts.end(), [](const auto& a, const auto& b) {
    return std::tie(a.key, a.window) < std::tie(b.key, b.window);
  });
  size_t kept = 0;
  for (size_t i = 0; i < counts.size(); ++i) {
    if (kept > 0 && counts[kept - 1].key == counts[i].key &&
        counts[kept - 1].window == counts[i].window) {
      counts[kept - 1].count = std::max(counts[kept - 1].count, counts[i].count);
    } else {
      counts[kept++] = counts[i];
    }
  }
  counts.resize(kept);
  // The admissions go on once a majority holds their counts (or are undone by expire_held).
  const uint64_t seq = next_ack_seq_++;
  auto h = std::make_unique<held>();
  h->needed = majority_others;
  h->needed_region = majority_region;
  h->deadline = steady + static_cast<int64_t>(std::max<uint64_t>(
                             requests.empty() ? 1 : requests.front().spec.strict_timeout_ms, 1));
  h->answers = std::move(admitted);
  const bool first = held_.empty();
  held_.emplace(seq, std::move(h));
  for (const auto& address : v->others) {
    for (size_t next = 0; next < counts.size();) {
      cluster::strict_batch b;
      b.ack_seq = seq;
      for (size_t bytes = 0; next < counts.size() && bytes + count_bytes <= message_budget;
           bytes += count_bytes) {
        b.counts.push_back(counts[next++]);
      }
      counters_.messages_out.fetch_add(1, std::memory_order_relaxed);
      send_(address, cluster::encode(b));
    }
  }
  if (first) post_([this] { expire_held(); }, std::chrono::milliseconds(5));
}

// Undoes nothing (the owner counted them: a refusal later is on the safe side), but answers the
// admissions no majority acknowledged in time as undecided. Runs every 5 ms while any wait.
void strict_limiter::expire_held() {
  const int64_t steady = steady_now();
  std::vector<answer_out> undecided;
  for (auto it = held_.begin(); it != held_.end();) {
    if (it->second->deadline > steady) {
      ++it;
      continue;
    }
    for (auto& a : it->second->answers) {
      a.answer.result = cluster::strict_result::handing_over;
      undecided.push_back(std::move(a));
    }
    it = held_.erase(it);
  }
  counters_.unacknowledged.fetch_add(undecided.size(), std::memory_order_relaxed);
  if (!held_.empty()) post_([this] { expire_held(); }, std::chrono::milliseconds(5));
  if (!undecided.empty()) release(std::move(undecided));
}

// Sends answers to their askers (one message per asker, split within the budget) and completes
// this node's own.
void strict_limiter::release(std::vector<answer_out> answers) {
  std::map<std::string, std::vector<cluster::strict_answer>> by_member;
  std::vector<answer_out> here;
  for (auto& a : answers) {
    if (a.to.empty()) {
      here.push_back(std::move(a));
    } else {
      by_member[a.to].push_back(a.answer);
    }
  }
  for (auto& [address, list] : by_member) {
    for (size_t next = 0; next < list.size();) {
      cluster::strict_batch b;
      for (size_t bytes = 0; next < list.size() && bytes + answer_bytes <= message_budget;
           bytes += answer_bytes) {
        b.answers.push_back(list[next++]);
      }
      counters_.messages_out.fetch_add(1, std::memory_order_relaxed);
      send_(address, cluster::encode(b));
    }
  }
  if (!here.empty()) complete(here);
}

void strict_limiter::complete(const std::vector<answer_out>& answers) {
  std::vector<std::pair<done_fn, outcome>> ready;
  {
    std::lock_guard lock(mu_);
    for (const auto& out : answers) {
      const auto& a = out.answer;
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
      } else if (a.result == cluster::strict_result::counted) {
        o.decided = true;  // a count query's answer (its slots came with it): the window
        o.decision.own_count = a.count;
        o.decision.window = a.window;
      }
      ready.emplace_back(std::move(it->second.done), o);
      pending_.erase(it);
    }
  }
  for (auto& [done, o] : ready) {
    (o.decided ? counters_.answered : counters_.not_owner).fetch_add(1, std::memory_order_relaxed);
    done(o);
  }
}

void strict_limiter::on_message(const std::string& from_id, const std::string& from_address,
                                std::string_view message) {
  cluster::strict_batch in;
  if (cluster::decode(message, &in) != cluster::wire_error::none) {
    counters_.malformed.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  const int64_t steady = steady_now();
  // Slots first: an answer to a count query, and an owner's counts, must be merged before what
  // follows is decided on them.
  if (!in.counts.empty()) {
    bool refuse = false, uncounted = false;
    if (in.ack_seq != 0) {
      for (const auto& c : in.counts) refuse = refuse || fenced_for(c.key, from_id, steady);
      uncounted = !counts_member(from_id);
    }
    std::map<std::string, std::vector<owner_count>> by_node;
    for (const auto& c : in.counts) {
      by_node[c.origin.empty() ? from_id : c.origin].push_back(
          {c.key, c.window_ms, c.window, c.count});
    }
    if (auto own = by_node.find(opt_.self_id); own != by_node.end()) {
      // This node's slot as another holds it (a count query's answer after a restart).
      for (const auto& c : own->second) limiter_.raise_own(c.key, c.window, c.count);
    }
    if (counts_)
      for (auto& [node, list] : by_node) counts_(node, std::move(list));
    if (in.ack_seq != 0) {
      if (uncounted) {  // an owner this node does not count (yet): its majority is not ours
        counters_.not_counted.fetch_add(1, std::memory_order_relaxed);
      } else if (refuse) {
        counters_.fenced.fetch_add(1, std::memory_order_relaxed);
      } else {
        cluster::strict_batch ack;
        ack.acks.push_back(in.ack_seq);
        counters_.messages_out.fetch_add(1, std::memory_order_relaxed);
        send_(from_address, cluster::encode(ack));
      }
    }
  }
  if (!in.acks.empty()) {
    std::vector<answer_out> ready;
    auto v = current();
    bool in_region = false;
    for (const auto& [hash, address] : v->region.live) in_region |= address == from_address;
    for (uint64_t seq : in.acks) {
      auto it = held_.find(seq);
      if (it == held_.end()) continue;
      auto& h = *it->second;
      if (!h.acked_by.insert(from_address).second) continue;
      h.region_acks += in_region;
      if (h.acked_by.size() < h.needed || h.region_acks < h.needed_region) continue;
      for (auto& a : h.answers) ready.push_back(std::move(a));
      held_.erase(it);
    }
    if (!ready.empty()) release(std::move(ready));
  }
  if (!in.requests.empty()) {
    std::vector<owner_request> decide;
    cluster::strict_batch counted;
    const int64_t now_ms = unix_now();
    for (const auto& r : in.requests) {
      queued q{r.id, r.key, r.limit, r.window_ms, r.flags, r.timezone, r.timeout_ms};
      if (r.flags & cluster::strict_flag_count) {
        if (!counts_member(from_id)) {  // not counted here: this node is not of its majority
          counters_.not_counted.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
        // A member taking the key over: what this node holds of it (every node's slot), and a
        // fence, so that no other owner's counts for it are acknowledged here meanwhile.
        const auto spec = spec_of(q);
        const auto view = limiter_.view(r.key, spec, now_ms);
        const auto at = spec.window_of(now_ms);
        cluster::strict_answer a;
        a.id = r.id;
        a.result = cluster::strict_result::counted;
        a.count = view.count;
        a.window = at.index;
        counted.answers.push_back(a);
        for (const auto& [node, n] : view.by_node) {
          counted.counts.push_back(
              {.key = r.key,
               .window_ms = static_cast<uint32_t>(spec.window_ms),
               .window = at.index,
               .count = static_cast<uint32_t>(std::min<uint64_t>(n, UINT32_MAX)),
               .origin = node});
        }
        fences_[r.key] = fence{from_id, steady + opt_.fence_ms};
      } else {
        decide.push_back({r.id, r.key, spec_of(q), from_address});
      }
    }
    if (!counted.answers.empty()) {
      // Within the budget: the slots of a key are one per node, far fewer than fit.
      counters_.messages_out.fetch_add(1, std::memory_order_relaxed);
      send_(from_address, cluster::encode(counted));
    }
    if (!decide.empty()) decide_batch(std::move(decide));
  }
  if (!in.answers.empty()) {
    std::vector<answer_out> answers;
    answers.reserve(in.answers.size());
    for (const auto& a : in.answers) answers.push_back({std::string(), a});
    complete(answers);
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
  line("takeovers", c.takeovers);
  line("unacknowledged", c.unacknowledged);
  line("fenced", c.fenced);
  line("not_counted", c.not_counted);
  line("malformed", c.malformed);
  // The members majorities are counted over, and how many of them this node sees alive.
  auto v = current();
  out +=
      "# HELP meridian_ratelimit_strict_members Members strict majorities are counted over "
      "(counted) and those of them alive, by scope (global, or this node's region).\n"
      "# TYPE meridian_ratelimit_strict_members gauge\n";
  for (auto [scope, s] : {std::pair{"global", &v->global}, {"region", &v->region}}) {
    out += std::string("meridian_ratelimit_strict_members{scope=\"") + scope +
           "\",state=\"counted\"} " + std::to_string(s->total) + "\n";
    out += std::string("meridian_ratelimit_strict_members{scope=\"") + scope +
           "\",state=\"alive\"} " + std::to_string(s->live.size()) + "\n";
  }
  out +=
      "# HELP meridian_ratelimit_strict_messages_total Strict rate-limit messages sent (asks, "
      "answers, counts).\n# TYPE meridian_ratelimit_strict_messages_total counter\n"
      "meridian_ratelimit_strict_messages_total " +
      std::to_string(c.messages_out.load(std::memory_order_relaxed)) + "\n";
  return out;
}

}  // namespace meridian::node
