#include "meridian/sim/simulator.h"

#include <algorithm>
#include <queue>

#include "meridian/cluster/wire.h"

namespace meridian::sim {

using cluster::member;
using cluster::membership;
using cluster::packet;
using cluster::state_sync;

namespace {
uint64_t splitmix64(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}
uint64_t rotl(uint64_t x, int k) {
  return (x << k) | (x >> (64 - k));
}
uint64_t link_key(size_t from, size_t to) {
  return (static_cast<uint64_t>(from) << 32) | to;
}
}  // namespace

prng::prng(uint64_t seed) {
  for (auto& s : s_) s = splitmix64(seed);
}

uint64_t prng::next() {
  uint64_t result = rotl(s_[1] * 5, 7) * 9;
  uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = rotl(s_[3], 45);
  return result;
}

struct simulator::event {
  enum kind_t : uint8_t { tick, packet_in, state_request, state_reply, action } kind = action;
  millis at{0};
  uint64_t seq = 0;
  size_t node = 0;     // receiver
  size_t from = 0;     // sender (state requests: who gets the reply)
  uint64_t epoch = 0;  // receiver's (tick) or asker's (state reply) life when scheduled
  std::shared_ptr<packet> pkt;
  std::shared_ptr<state_sync> sync;
  std::shared_ptr<std::function<void()>> fn;
};

bool simulator::event_order::operator()(const event& a, const event& b) const {
  if (a.at != b.at) return a.at > b.at;
  return a.seq > b.seq;
}

// The membership's view of the world: the simulator's clock, PRNG and network.
struct simulator::node_env final : cluster::environment {
  simulator* sim = nullptr;
  size_t index = 0;
  millis now() override { return sim->now_; }
  int64_t wall_ms() override;
  uint64_t random() override { return sim->rng_.next(); }
  void send_packet(const std::string& address, const packet& p) override {
    sim->route_packet(index, address, p);
  }
  void send_state(const std::string& address, const state_sync& s) override {
    sim->route_state(index, address, s);
  }
  void on_member_change(const member& m) override {
    if (sim->on_member_change) sim->on_member_change(index, m);
  }
};

struct simulator::node_state {
  cluster::member_info info;
  cluster::swim_config config;
  node_env env;
  std::unique_ptr<membership> m;
  bool running = false;
  bool paused = false;
  pause_mode mode = pause_mode::drop;
  std::vector<packet> held;  // packets queued while paused
  millis slow{0};
  millis skew{0};
  uint64_t epoch = 0;
  bool tick_pending = false;
  millis tick_at{0};
  uint64_t bytes = 0;
};

struct simulator::event_queue : std::priority_queue<event, std::vector<event>, event_order> {};

simulator::simulator(uint64_t seed) : rng_(seed), queue_(std::make_unique<event_queue>()) {}

simulator::~simulator() = default;

void simulator::push(event e) {
  e.seq = ++seq_;
  queue_->push(std::move(e));
}

void simulator::set_default_links(link_faults same_region, link_faults cross_region) {
  same_region_ = same_region;
  cross_region_ = cross_region;
}

void simulator::set_link(size_t from, size_t to, link_faults l) {
  overrides_[link_key(from, to)] = l;
}

void simulator::block(size_t from, size_t to) {
  link_faults l;
  link_for(from, to, &l);
  l.blocked = true;
  overrides_[link_key(from, to)] = l;
}

void simulator::partition(const std::vector<size_t>& side) {
  std::fill(side_.begin(), side_.end(), 0);
  for (size_t i : side) side_.at(i) = 1;
  partitioned_ = true;
}

void simulator::heal() {
  partitioned_ = false;
  overrides_.clear();
}

void simulator::set_slow(size_t i, millis max_extra) {
  nodes_.at(i)->slow = max_extra;
}

void simulator::set_clock_skew(size_t i, millis skew) {
  nodes_.at(i)->skew = skew;
}

int64_t simulator::node_env::wall_ms() {
  constexpr int64_t epoch_ms = 1'800'000'000'000;  // 2027-01-15: any fixed, plausible time
  return epoch_ms + sim->now_.count() + sim->nodes_.at(index)->skew.count();
}

bool simulator::link_for(size_t from, size_t to, link_faults* out) const {
  auto it = overrides_.find(link_key(from, to));
  if (it != overrides_.end()) {
    *out = it->second;
  } else {
    *out = nodes_[from]->info.region == nodes_[to]->info.region ? same_region_ : cross_region_;
  }
  if (partitioned_ && side_[from] != side_[to]) out->blocked = true;
  return !out->blocked;
}

millis simulator::latency(const link_faults& l, size_t from, size_t to) {
  millis d = l.delay;
  if (l.jitter.count() > 0) d += millis(rng_.below(l.jitter.count() + 1));
  for (size_t i : {from, to}) {
    millis s = nodes_[i]->slow;
    if (s.count() > 0) d += millis(rng_.below(s.count() + 1));
  }
  return d;
}

size_t simulator::add_node(cluster::member_info info, uint64_t incarnation,
                           cluster::swim_config config) {
  size_t i = nodes_.size();
  auto n = std::make_unique<node_state>();
  n->info = info;
  n->config = config;
  n->env.sim = this;
  n->env.index = i;
  nodes_.push_back(std::move(n));
  side_.push_back(0);
  by_address_[info.address] = i;
  start_node(i, incarnation);
  return i;
}

void simulator::start_node(size_t i, uint64_t incarnation) {
  node_state& n = *nodes_[i];
  n.m.reset();
  n.m = std::make_unique<membership>(n.info, incarnation, n.config, n.env);
  n.m->set_payload_handler([this, i](const std::string& from, const std::string& payload) {
    if (on_payload) on_payload(i, from, payload);
  });
  n.running = true;
  n.paused = false;
  n.held.clear();
  ++n.epoch;
  n.tick_pending = false;
  reschedule(i, false);
}

void simulator::bootstrap() {
  std::vector<cluster::member_update> table;
  for (const auto& n : nodes_) {
    if (!n->running) continue;
    cluster::member_update u;
    u.member = n->info;
    u.incarnation = n->m->self().incarnation;
    table.push_back(std::move(u));
  }
  for (size_t i = 0; i < nodes_.size(); ++i) {
    if (!nodes_[i]->running) continue;
    nodes_[i]->m->restore(table);
    nodes_[i]->tick_pending = false;  // the wakeup may have moved earlier
    reschedule(i, false);
  }
}

void simulator::join(size_t i, std::vector<std::string> seeds) {
  nodes_.at(i)->m->join(std::move(seeds));
  reschedule(i, false);
}

membership& simulator::node(size_t i) {
  return *nodes_.at(i)->m;
}
const cluster::member_info& simulator::info(size_t i) const {
  return nodes_.at(i)->info;
}
bool simulator::running(size_t i) const {
  return nodes_.at(i)->running;
}
bool simulator::paused(size_t i) const {
  return nodes_.at(i)->paused;
}
bool simulator::slow(size_t i) const {
  return nodes_.at(i)->slow.count() > 0;
}

void simulator::pause(size_t i, pause_mode mode) {
  node_state& n = *nodes_.at(i);
  n.paused = true;
  n.mode = mode;
}

void simulator::resume(size_t i) {
  node_state& n = *nodes_.at(i);
  if (!n.paused) return;
  n.paused = false;
  std::vector<packet> held = std::move(n.held);
  n.held.clear();
  for (const auto& p : held) {
    if (!n.running) break;
    n.m->on_packet(p);
  }
  n.tick_pending = false;
  reschedule(i, false);
}

void simulator::kill(size_t i) {
  node_state& n = *nodes_.at(i);
  n.running = false;
  n.paused = false;
  n.held.clear();
  ++n.epoch;
  n.m.reset();
}

void simulator::restart(size_t i, uint64_t incarnation, std::vector<std::string> seeds) {
  start_node(i, incarnation);
  join(i, std::move(seeds));
}

void simulator::reschedule(size_t i, bool after_tick) {
  node_state& n = *nodes_[i];
  if (!n.running || n.paused) return;
  millis w = n.m->next_wakeup();
  w = std::max(w, after_tick ? now_ + millis(1) : now_);
  if (n.tick_pending && n.tick_at <= w) return;
  n.tick_pending = true;
  n.tick_at = w;
  event e;
  e.kind = event::tick;
  e.at = w;
  e.node = i;
  e.epoch = n.epoch;
  push(std::move(e));
}

void simulator::route_packet(size_t from, const std::string& address, const packet& p) {
  nodes_[from]->bytes += cluster::estimate_size(p) + cluster::seal_overhead;
  auto it = by_address_.find(address);
  if (it == by_address_.end()) return;
  size_t to = it->second;
  link_faults l;
  if (!link_for(from, to, &l)) return;
  if (l.loss > 0 && rng_.uniform() < l.loss) return;
  event e;
  e.kind = event::packet_in;
  e.at = now_ + latency(l, from, to);
  e.node = to;
  e.from = from;
  e.pkt = std::make_shared<packet>(p);
  push(std::move(e));
}

void simulator::route_state(size_t from, const std::string& address, const state_sync& s) {
  nodes_[from]->bytes += cluster::estimate_size(s) + cluster::seal_overhead;
  auto it = by_address_.find(address);
  if (it == by_address_.end()) return;
  size_t to = it->second;
  link_faults l;
  // A stream (TCP) retransmits, so only a blocked link stops it; it costs a round trip more.
  if (!link_for(from, to, &l)) return;
  event e;
  e.kind = event::state_request;
  e.at = now_ + 2 * latency(l, from, to);
  e.node = to;
  e.from = from;
  e.epoch = nodes_[from]->epoch;
  e.sync = std::make_shared<state_sync>(s);
  push(std::move(e));
}

void simulator::at(millis t, std::function<void()> f) {
  event e;
  e.kind = event::action;
  e.at = std::max(t, now_);
  e.fn = std::make_shared<std::function<void()>>(std::move(f));
  push(std::move(e));
}

void simulator::deliver(event& e) {
  if (e.kind == event::action) {
    (*e.fn)();
    return;
  }
  node_state& n = *nodes_[e.node];
  if (!n.running) return;
  switch (e.kind) {
    case event::tick:
      if (e.epoch != n.epoch || !n.tick_pending || e.at != n.tick_at || n.paused) return;
      n.tick_pending = false;
      n.m->tick();
      reschedule(e.node, true);
      return;
    case event::packet_in:
      if (n.paused) {
        if (n.mode == pause_mode::queue && n.held.size() < 100000) n.held.push_back(*e.pkt);
        return;
      }
      ++delivered_;
      n.m->on_packet(*e.pkt);
      reschedule(e.node, false);
      return;
    case event::state_request: {
      if (n.paused) return;
      state_sync reply = n.m->on_state_request(*e.sync);
      reschedule(e.node, false);
      n.bytes += cluster::estimate_size(reply) + cluster::seal_overhead;
      link_faults l;
      if (!link_for(e.node, e.from, &l)) return;
      event r;
      r.kind = event::state_reply;
      r.at = now_ + latency(l, e.node, e.from);
      r.node = e.from;
      r.epoch = e.epoch;
      r.sync = std::make_shared<state_sync>(std::move(reply));
      push(std::move(r));
      return;
    }
    case event::state_reply:
      if (n.paused || e.epoch != n.epoch) return;
      n.m->on_state_reply(*e.sync);
      reschedule(e.node, false);
      return;
    default:
      return;
  }
}

void simulator::run_until(millis t) {
  while (!queue_->empty() && queue_->top().at <= t) {
    event e = queue_->top();
    queue_->pop();
    now_ = std::max(now_, e.at);
    ++events_;
    deliver(e);
  }
  now_ = std::max(now_, t);
}

bool simulator::run_until(const std::function<bool()>& done, millis deadline, millis step) {
  while (now_ < deadline) {
    if (done()) return true;
    run_until(std::min(deadline, now_ + step));
  }
  return done();
}

uint64_t simulator::bytes_sent(size_t i) const {
  return nodes_.at(i)->bytes;
}

uint64_t simulator::total_bytes_sent() const {
  uint64_t t = 0;
  for (const auto& n : nodes_) t += n->bytes;
  return t;
}

}  // namespace meridian::sim
