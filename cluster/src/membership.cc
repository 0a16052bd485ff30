// SWIM with Lifeguard (Das et al. 2002; Dadgar et al. 2017), as in membership.h.
//
// Everything happens in tick() and the on_* handlers; timers are plain deadlines compared with
// env.now(), and next_wakeup() is the earliest of them, so a host (real or simulated) wakes the
// node only when something is due.

#include "meridian/cluster/membership.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <map>
#include <unordered_map>
#include <unordered_set>

#include "meridian/cluster/wire.h"  // seal_overhead

namespace meridian::cluster {
namespace {

size_t varint_size(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}
// A compact-protocol string field: field header (up to 3 bytes with a long delta), length, bytes.
size_t string_field(const std::string& s) {
  return 3 + varint_size(s.size()) + s.size();
}
// An integer field, zigzag-encoded (so twice the value at worst).
size_t int_field(uint64_t v) {
  return 3 + varint_size(v > (UINT64_MAX >> 1) ? UINT64_MAX : v * 2);
}
constexpr size_t list_overhead = 3 + 5;    // field header + list header with a size varint
constexpr size_t struct_overhead = 3 + 1;  // field header + stop
// The transport stamps every message after it is built (send_stamp), so room is kept for one.
constexpr size_t stamp_bound = struct_overhead + 3 * (3 + 10);

size_t estimate_info(const member_info& m) {
  return struct_overhead + string_field(m.id) + string_field(m.address) + string_field(m.region) +
         string_field(m.zone);
}

int rank(member_state s) {
  switch (s) {
    case member_state::alive:
      return 0;
    case member_state::suspect:
      return 1;
    default:
      return 2;
  }
}
bool is_live(member_state s) {
  return s == member_state::alive || s == member_state::suspect;
}

constexpr size_t max_relays = 1024;  // ping-reqs served at once
constexpr size_t urgent_fanout = 8;  // members an urgent round goes to (at least gossip_nodes)
constexpr size_t max_queued_payloads = 1024;  // application payloads waiting to be piggybacked
constexpr size_t seen_payloads_cap = 4096;    // dedup memory for received payloads
constexpr millis join_backoff_start{1000};
constexpr millis join_steady_period{30000};
constexpr size_t confirm_batch = 8;    // confirmation pings per probe interval, at most
constexpr size_t max_corrections = 8;  // newer claims sent back to one packet's sender

}  // namespace

size_t estimate_size(const member_update& u) {
  return struct_overhead + estimate_info(u.member) + int_field(u.incarnation) + int_field(3) +
         string_field(u.from);
}

size_t estimate_size(const packet& p) {
  size_t n = 1 + int_field(p.version) + string_field(p.sender_id) + string_field(p.sender_address) +
             stamp_bound;
  if (!p.pings.empty()) n += list_overhead;
  for (const auto& x : p.pings) n += struct_overhead + int_field(x.seq) + string_field(x.target_id);
  if (!p.ping_reqs.empty()) n += list_overhead;
  for (const auto& x : p.ping_reqs)
    n += struct_overhead + int_field(x.seq) + string_field(x.target_id) +
         string_field(x.target_address);
  if (!p.acks.empty()) n += list_overhead;
  for (const auto& x : p.acks)
    n += struct_overhead + int_field(x.seq) + (x.wall_ms != 0 ? int_field(x.wall_ms) : 0);
  if (!p.nacks.empty()) n += list_overhead;
  for (const auto& x : p.nacks) n += struct_overhead + int_field(x.seq);
  if (!p.updates.empty()) n += list_overhead;
  for (const auto& u : p.updates) n += estimate_size(u);
  if (!p.payloads.empty()) n += list_overhead;
  for (const auto& s : p.payloads) n += string_field(s);
  if (!p.summary.empty()) n += string_field(p.summary);
  if (!p.direct.empty()) n += list_overhead;
  for (const auto& s : p.direct) n += string_field(s);
  return n;
}

size_t estimate_size(const state_sync& s) {
  size_t n = 1 + int_field(s.version) + string_field(s.sender_id) + int_field(1) +
             string_field(s.app_state) + list_overhead + stamp_bound;
  for (const auto& u : s.members) n += estimate_size(u);
  return n;
}

struct membership::impl {
  // A suspicion in progress (Lifeguard: its deadline moves earlier with each confirmation).
  struct suspicion {
    millis start{0};
    millis deadline{0};
    std::string first_from;
    std::unordered_set<std::string> confirmers;
    int nudges = 0;  // direct reminders sent to the suspect so far
  };
  // The probe round in progress.
  struct probe_round {
    bool active = false;
    std::string target;
    uint64_t seq = 0;
    millis direct_deadline{0};
    millis round_end{0};
    bool indirect_sent = false;
    bool stream_sent = false;  // TCP fallback started
    uint32_t expected_nacks = 0;
    uint32_t nacks = 0;
    millis sent_at{0};
    int64_t sent_wall = 0;  // env wall clock when the ping left (0: none)
    std::string target_address;
    std::string target_region;
  };
  // A ping-req this node relays: ack or nack goes back to the asker under its seq.
  struct relay {
    std::string asker_address;
    uint64_t asker_seq = 0;
    millis nack_at{0};
    millis expire_at{0};
    bool nacked = false;
  };
  // Something to piggyback: a member update (keyed by member id, newest replaces) or a payload.
  struct queued {
    bool is_payload = false;
    member_update update;
    std::string payload;
  };
  using queue_key = std::pair<uint32_t, uint64_t>;  // (transmits, newest-first order)

  impl(member_info self, uint64_t incarnation, swim_config config, environment& env)
      : cfg_(config), env_(env) {
    self_.info = std::move(self);
    self_.incarnation = incarnation;
    self_.state = member_state::alive;
    millis now = env_.now();
    self_.state_since = now;
    // Random phases, so a cluster started at once does not probe and gossip in lockstep.
    next_probe_ = now + jitter(cfg_.probe_interval);
    next_gossip_ = now + jitter(cfg_.gossip_interval);
    next_push_pull_ = now + cfg_.push_pull_interval / 2 + jitter(cfg_.push_pull_interval);
    next_dead_probe_ = now + jitter(cfg_.dead_probe_interval) + cfg_.dead_probe_interval;
    next_reap_ = now + reap_period();
  }

  // ---- helpers ----
  uint64_t rnd(uint64_t n) { return n ? env_.random() % n : 0; }
  millis jitter(millis d) {
    return millis(rnd(static_cast<uint64_t>(std::max<int64_t>(1, d.count()))));
  }
  millis scaled(millis d) const { return cfg_.lifeguard ? d * (health_ + 1) : d; }
  millis reap_period() const {
    return std::clamp(cfg_.dead_reap_after / 16, millis(1000), millis(60000));
  }
  size_t cluster_size() const { return live_count_ + 1; }
  uint32_t retransmit_limit() const {
    double n = static_cast<double>(cluster_size());
    return cfg_.retransmit_mult * static_cast<uint32_t>(std::ceil(std::log10(n + 1)));
  }
  void adjust_health(int delta) {
    if (!cfg_.lifeguard) return;
    int64_t h = static_cast<int64_t>(health_) + delta;
    int64_t top = cfg_.awareness_max > 0 ? cfg_.awareness_max - 1 : 0;
    health_ = static_cast<uint32_t>(std::clamp<int64_t>(h, 0, top));
  }
  bool other_region(const member& m) const { return m.info.region != self_.info.region; }

  // Lifeguard's dynamic suspicion timeout for c independent confirmations.
  millis suspicion_timeout(size_t c) const {
    double n = static_cast<double>(cluster_size());
    double min_ms = cfg_.suspicion_mult * std::max(1.0, std::log10(n)) *
                    static_cast<double>(cfg_.probe_interval.count());
    if (!cfg_.lifeguard) return millis(std::llround(min_ms));
    double max_ms = cfg_.suspicion_max_mult * min_ms;
    double k = cfg_.indirect_checks;
    if (n - 2 < k) k = std::max(0.0, n - 2);
    if (k < 1) return millis(std::llround(min_ms));
    double t = max_ms - (max_ms - min_ms) * std::log(static_cast<double>(c) + 1) / std::log(k + 1);
    return millis(std::llround(std::max(min_ms, t)));
  }

  // Counts kept incrementally: live members and live members of other regions.
  void account(const member& m, int sign) {
    if (!is_live(m.state)) return;
    live_count_ += sign;
    if (other_region(m)) other_region_live_ += sign;
  }

  // ---- state changes ----
  void set_state(member& m, member_state s, uint64_t incarnation, const std::string& from) {
    millis now = env_.now();
    account(m, -1);
    m.state = s;
    m.incarnation = incarnation;
    m.state_since = now;
    account(m, +1);
    if (!is_live(s)) {
      tombstones_.insert(m.info.id);
    } else {
      tombstones_.erase(m.info.id);
    }
    if (s != member_state::alive) drop_pending(m.info.id);
    if (s == member_state::suspect) {
      suspicion sp;
      sp.start = now;
      sp.first_from = from;
      sp.deadline = now + suspicion_timeout(0);
      suspects_[m.info.id] = std::move(sp);
    } else {
      suspects_.erase(m.info.id);
    }
    env_.on_member_change(m);
  }

  member_update update_of(const member& m, const std::string& from) const {
    member_update u;
    u.member = m.info;
    u.incarnation = m.incarnation;
    u.state = m.state;
    u.from = from;
    return u;
  }

  void refute(uint64_t claimed) {
    self_.incarnation = std::max(self_.incarnation, claimed) + 1;
    self_.state = member_state::alive;
    self_.state_since = env_.now();
    ++stats_.refutations;
    adjust_health(+1);
    enqueue(update_of(self_, self_.info.id));
    env_.on_member_change(self_);
  }

  void add_member(const member_update& u) {
    member m;
    m.info = u.member;
    m.incarnation = u.incarnation;
    m.state = u.state;
    m.state_since = env_.now();
    id_pos_[m.info.id] = ids_.size();
    ids_.push_back(m.info.id);
    auto [it, _] = members_.emplace(m.info.id, std::move(m));
    account(it->second, +1);
    if (!is_live(it->second.state)) tombstones_.insert(it->first);
  }

  // Forgets the dead or left member that changed state longest ago; false when there is none.
  bool evict_oldest_tombstone() {
    const member* oldest = nullptr;
    for (const auto& id : tombstones_) {
      const member& m = members_.at(id);
      if (!oldest || m.state_since < oldest->state_since) oldest = &m;
    }
    if (!oldest) return false;
    remove_member(std::string(oldest->info.id));
    return true;
  }

  void remove_member(const std::string& id) {
    auto it = members_.find(id);
    if (it == members_.end()) return;
    account(it->second, -1);
    size_t pos = id_pos_[id];
    if (pos + 1 != ids_.size()) {
      ids_[pos] = std::move(ids_.back());
      id_pos_[ids_[pos]] = pos;
    }
    ids_.pop_back();
    id_pos_.erase(id);
    suspects_.erase(id);
    tombstones_.erase(id);
    clock_offsets_.erase(id);
    drop_pending(id);
    contact_.erase(id);
    members_.erase(it);
  }

  // Applies one claim by the merge rules; from_sync softens `dead` to `suspect` (a push-pull
  // peer's stale view must not kill a member this node can still reach).
  // Returns true when u is older than this node's view (the sender missed a newer claim).
  bool apply(const member_update& u, bool from_sync) {
    if (u.member.id.empty()) return false;
    if (u.member.id == self_.info.id) {
      if (left_) return false;
      if (u.incarnation < self_.incarnation) return u.state != member_state::alive;
      if (u.state == member_state::alive && u.incarnation == self_.incarnation) return false;
      refute(u.incarnation);
      return false;
    }
    member_state s = u.state;
    if (from_sync && s == member_state::dead) s = member_state::suspect;
    auto it = members_.find(u.member.id);
    if (it == members_.end()) {
      // Claims other than alive about unknown members are dropped (memberlist does the same):
      // there is nothing to probe or to refute.
      if (s != member_state::alive) return false;
      // The table is bounded: a flood of invented members (from a node that holds the key)
      // first pushes out the oldest tombstone and is then refused.
      if (members_.size() >= cfg_.max_members && !evict_oldest_tombstone()) {
        ++stats_.members_refused;
        return false;
      }
      add_member(u);
      env_.on_member_change(members_.at(u.member.id));
      enqueue(u);
      return false;
    }
    member& m = it->second;
    bool newer = u.incarnation > m.incarnation ||
                 (u.incarnation == m.incarnation && rank(s) > rank(m.state));
    if (!newer) {
      if (u.incarnation == m.incarnation && s == member_state::suspect &&
          m.state == member_state::suspect)
        confirm(m, u.from, u);
      return u.incarnation < m.incarnation;
    }
    if (s == member_state::alive && !(m.info == u.member)) {
      // Address or placement changed (restart elsewhere): keep the region count right.
      account(m, -1);
      m.info = u.member;
      account(m, +1);
    }
    set_state(m, s, u.incarnation, u.from);
    member_update fwd = u;
    fwd.state = s;
    enqueue(fwd);
    return false;
  }

  // Counts an independent suspicion of an already suspected member (Lifeguard).
  void confirm(member& m, const std::string& from, const member_update& u) {
    if (!cfg_.lifeguard || from.empty()) return;
    auto it = suspects_.find(m.info.id);
    if (it == suspects_.end()) return;
    suspicion& sp = it->second;
    if (from == sp.first_from || sp.confirmers.size() >= cfg_.indirect_checks) return;
    if (!sp.confirmers.insert(from).second) return;
    sp.deadline = sp.start + suspicion_timeout(sp.confirmers.size());
    enqueue(u);  // so others count this confirmation too
  }

  void suspect(const std::string& id) {
    auto it = members_.find(id);
    if (it == members_.end() || !is_live(it->second.state)) return;
    member_update u = update_of(it->second, self_.info.id);
    u.state = member_state::suspect;
    if (it->second.state == member_state::alive) ++stats_.suspicions;
    apply(u, false);
  }

  // ---- piggyback queue ----
  void enqueue(const member_update& u) {
    auto idx = queue_index_.find(u.member.id);
    if (idx != queue_index_.end()) {
      queue_.erase(idx->second);
      queue_index_.erase(idx);
    }
    queue_key key{0, UINT64_MAX - (++order_)};
    queued q;
    q.update = u;
    queue_.emplace(key, std::move(q));
    queue_index_[u.member.id] = key;
  }

  void enqueue_payload(std::string payload) {
    if (queued_payloads_ >= max_queued_payloads) {
      // Drop the most-transmitted payload: it has had the most chances already.
      for (auto it = queue_.rbegin(); it != queue_.rend(); ++it) {
        if (it->second.is_payload) {
          queue_.erase(std::next(it).base());
          --queued_payloads_;
          break;
        }
      }
    }
    queued q;
    q.is_payload = true;
    q.payload = std::move(payload);
    queue_.emplace(queue_key{0, UINT64_MAX - (++order_)}, std::move(q));
    ++queued_payloads_;
  }

  // Adds queued updates and payloads, fewest-transmitted (then newest) first, while the packet
  // stays within max_packet_bytes once sealed.
  void piggyback(packet& p) {
    size_t limit =
        cfg_.max_packet_bytes > seal_overhead ? cfg_.max_packet_bytes - seal_overhead : 0;
    size_t size = estimate_size(p) + 2 * list_overhead;
    if (size >= limit || queue_.empty()) return;
    std::vector<queue_key> used;
    size_t scanned = 0;
    for (auto it = queue_.begin(); it != queue_.end() && scanned < 256; ++it, ++scanned) {
      size_t n = it->second.is_payload ? string_field(it->second.payload)
                                       : estimate_size(it->second.update);
      if (size + n > limit) {
        if (limit - size < 64) break;
        continue;
      }
      bool dup = false;  // the buddy-system update may already be there
      if (!it->second.is_payload)
        for (const auto& u : p.updates) dup = dup || u.member.id == it->second.update.member.id;
      if (dup) continue;
      size += n;
      if (it->second.is_payload)
        p.payloads.push_back(it->second.payload);
      else
        p.updates.push_back(it->second.update);
      used.push_back(it->first);
    }
    uint32_t max_tx = retransmit_limit();
    for (const auto& key : used) {
      auto node = queue_.extract(key);
      bool payload = node.mapped().is_payload;
      std::string id = payload ? std::string() : node.mapped().update.member.id;
      if (!payload) queue_index_.erase(id);
      if (key.first + 1 >= max_tx) {
        if (payload) --queued_payloads_;
        continue;
      }
      node.key() = queue_key{key.first + 1, key.second};
      queue_key nk = node.key();
      queue_.insert(std::move(node));
      if (!payload) queue_index_[id] = nk;
    }
  }

  bool has_gossip() const { return !queue_.empty(); }

  // Buddy system, extended: a suspicion that is still unrefuted a third and two thirds of the
  // way to its deadline is sent straight to the suspect in a ping, so a refutation this node
  // missed in the gossip comes back in the ack.
  static constexpr int max_nudges = 2;
  millis nudge_at(const suspicion& sp) const {
    return sp.start + (sp.deadline - sp.start) * (sp.nudges + 1) / (max_nudges + 1);
  }
  void nudge(const std::string& id, suspicion& sp) {
    ++sp.nudges;
    auto it = members_.find(id);
    if (it == members_.end()) return;
    packet p = new_packet();
    p.pings.push_back(ping_msg{++seq_, id});
    p.updates.push_back(update_of(it->second, self_.info.id));
    std::string address = it->second.info.address;
    send(address, p);
  }

  // ---- sending ----
  packet new_packet() const {
    packet p;
    p.sender_id = self_.info.id;
    p.sender_address = self_.info.address;
    if (app_) p.summary = app_->summary();
    return p;
  }
  void send(const std::string& address, packet& p) {
    piggyback(p);
    ++stats_.packets_sent;
    env_.send_packet(address, p);
  }

  // with_app: include the application's sync request (a push-pull this node starts).
  state_sync table(bool join, bool with_app = true) const {
    state_sync s;
    s.sender_id = self_.info.id;
    s.join = join;
    if (app_ && with_app) s.app_state = app_->sync_request();
    s.members.reserve(members_.size() + 1);
    s.members.push_back(update_of(self_, {}));
    for (const auto& [id, m] : members_) s.members.push_back(update_of(m, {}));
    return s;
  }

  // Picks up to k distinct random members accepted by ok(); when any live member of another
  // region exists, at least one pick is from another region.
  template <class pred>
  std::vector<const member*> pick(size_t k, pred ok, bool want_other_region) {
    std::vector<const member*> out;
    if (k == 0 || ids_.empty()) return out;
    auto taken = [&](const member* m) { return std::find(out.begin(), out.end(), m) != out.end(); };
    if (ids_.size() <= 4 * k + 8) {
      std::vector<const member*> all;
      for (const auto& id : ids_) {
        const member& m = members_.at(id);
        if (ok(m)) all.push_back(&m);
      }
      for (size_t i = 0; i < all.size() && out.size() < k; ++i) {
        std::swap(all[i], all[i + rnd(all.size() - i)]);
        out.push_back(all[i]);
      }
    } else {
      for (size_t tries = 0; out.size() < k && tries < 8 * k + 32; ++tries) {
        const member& m = members_.at(ids_[rnd(ids_.size())]);
        if (ok(m) && !taken(&m)) out.push_back(&m);
      }
    }
    if (want_other_region && other_region_live_ > 0 &&
        std::none_of(out.begin(), out.end(), [&](const member* m) { return other_region(*m); })) {
      const member* found = nullptr;
      for (size_t tries = 0; !found && tries < 64; ++tries) {
        const member& m = members_.at(ids_[rnd(ids_.size())]);
        if (other_region(m) && ok(m) && !taken(&m)) found = &m;
      }
      for (size_t i = 0, start = rnd(ids_.size()); !found && i < ids_.size(); ++i) {
        const member& m = members_.at(ids_[(start + i) % ids_.size()]);
        if (other_region(m) && ok(m) && !taken(&m)) found = &m;
      }
      if (found) {
        if (out.size() < k)
          out.push_back(found);
        else
          out.back() = found;
      }
    }
    return out;
  }

  // ---- probing ----
  const member* next_probe_target() {
    for (int pass = 0; pass < 2; ++pass) {
      while (probe_pos_ < probe_order_.size()) {
        auto it = members_.find(probe_order_[probe_pos_++]);
        if (it != members_.end() && is_live(it->second.state)) return &it->second;
      }
      // A new pass: every live member once, in a fresh random order (randomized round-robin).
      probe_order_.clear();
      for (const auto& id : ids_)
        if (is_live(members_.at(id).state)) probe_order_.push_back(id);
      for (size_t i = probe_order_.size(); i > 1; --i)
        std::swap(probe_order_[i - 1], probe_order_[rnd(i)]);
      probe_pos_ = 0;
      if (probe_order_.empty()) return nullptr;
    }
    return nullptr;
  }

  // Measured round trips to other regions (EWMA of direct probe acks, ms).
  std::map<std::string, double> region_rtt_;
  static constexpr double rtt_alpha = 0.2;
  static constexpr millis max_rtt_allowance{2000};

  void record_rtt(const std::string& region, millis rtt) {
    if (region == self_.info.region || region.empty()) return;
    double sample = static_cast<double>(rtt.count());
    auto [it, fresh] = region_rtt_.emplace(region, sample);
    if (!fresh) it->second += rtt_alpha * (sample - it->second);
  }

  // Measured clock offsets of members (ms, EWMA), by id.
  std::map<std::string, double> clock_offsets_;

  void record_offset(const std::string& id, int64_t their_wall) {
    int64_t back = env_.wall_ms();
    if (their_wall == 0 || probe_.sent_wall == 0 || back == 0 || back < probe_.sent_wall) return;
    double sample = static_cast<double>(their_wall) -
                    (static_cast<double>(probe_.sent_wall) + static_cast<double>(back)) / 2.0;
    auto [it, fresh] = clock_offsets_.emplace(id, sample);
    if (!fresh) it->second += rtt_alpha * (sample - it->second);
  }

  // What a probe of a member in region waits beyond the same-region timeout.
  millis region_allowance(const std::string& region) const {
    if (region == self_.info.region) return millis(0);
    millis measured{0};
    if (auto it = region_rtt_.find(region); it != region_rtt_.end())
      measured = std::min(max_rtt_allowance, millis(static_cast<int64_t>(it->second + 0.5)));
    return std::max(cfg_.cross_region_extra, measured);
  }

  millis probe_timeout_for(const member& m) const {
    return scaled(cfg_.probe_timeout) + region_allowance(m.info.region);
  }

  void start_probe(millis now) {
    next_probe_ = now + scaled(cfg_.probe_interval);
    const member* t = next_probe_target();
    if (!t) return;
    probe_ = probe_round{};
    probe_.active = true;
    probe_.target = t->info.id;
    probe_.seq = ++seq_;
    millis timeout = probe_timeout_for(*t);
    probe_.direct_deadline = now + timeout;
    probe_.round_end = std::max(now + scaled(cfg_.probe_interval), now + 2 * timeout);
    next_probe_ = std::max(next_probe_, probe_.round_end);
    ++stats_.probes;
    packet p = new_packet();
    p.pings.push_back(ping_msg{probe_.seq, t->info.id});
    // Buddy system: tell a suspected member at once, so it can refute in its ack.
    if (cfg_.lifeguard && t->state == member_state::suspect)
      p.updates.push_back(update_of(*t, self_.info.id));
    std::string address = t->info.address;
    probe_.sent_at = now;
    probe_.sent_wall = env_.wall_ms();
    probe_.target_address = address;
    probe_.target_region = t->info.region;
    send(address, p);
  }

  void send_indirect() {
    probe_.indirect_sent = true;
    auto it = members_.find(probe_.target);
    if (it == members_.end()) return;
    const member& target = it->second;
    auto relays = pick(
        cfg_.indirect_checks,
        [&](const member& m) {
          return m.state == member_state::alive && m.info.id != probe_.target;
        },
        false);
    ping_req_msg req{probe_.seq, target.info.id, target.info.address};
    for (const member* r : relays) {
      packet p = new_packet();
      p.ping_reqs.push_back(req);
      ++stats_.indirect_probes;
      std::string address = r->info.address;
      send(address, p);
    }
    probe_.expected_nacks = cfg_.lifeguard ? static_cast<uint32_t>(relays.size()) : 0;
    if (cfg_.tcp_fallback) {
      probe_.stream_sent = true;
      ++stats_.tcp_probes;
      env_.send_state(target.info.address, table(false, false));
    }
  }

  void finish_probe(bool acked) {
    probe_.active = false;
    if (acked) {
      if (!probe_.indirect_sent) adjust_health(-1);
      return;
    }
    // Lifeguard: missing nacks mean this node's own network or CPU is the likely problem.
    if (probe_.expected_nacks > 0) {
      adjust_health(
          static_cast<int>(probe_.expected_nacks - std::min(probe_.nacks, probe_.expected_nacks)));
    } else {
      adjust_health(+1);
    }
    // This node's own probe failed: it may be the one cut off. Confirm the others it counts alive.
    last_down_ = env_.now();
    next_confirm_ = last_down_;
    suspect(probe_.target);
  }

  // ---- reachability confirmation (member::unconfirmed) ----
  // A member's last contact and the confirmation ping in flight, if any.
  struct contact {
    millis heard{-(millis::max() / 4)};  // last packet or push-pull from the member
    millis asked{-(millis::max() / 4)};  // last confirmation ping sent
    millis deadline{0};                  // the ping's answer is due by then; 0: none pending
  };

  bool confirming(millis now) const {
    return cfg_.confirm_for.count() > 0 && now - last_down_ < cfg_.confirm_for;
  }

  void heard_from(const std::string& id) {
    auto it = members_.find(id);
    if (it == members_.end()) return;
    contact& c = contact_[id];
    c.heard = env_.now();
    if (c.deadline.count()) {
      c.deadline = millis(0);
      --pending_confirms_;
    }
    if (it->second.unconfirmed) {
      it->second.unconfirmed = false;
      env_.on_reachability_change(it->second);
    }
  }

  void drop_pending(const std::string& id) {
    auto it = contact_.find(id);
    if (it == contact_.end() || !it->second.deadline.count()) return;
    it->second.deadline = millis(0);
    --pending_confirms_;
  }

  // Marks members whose confirmation ping went unanswered; while confirming, pings the alive
  // members not heard from (nor asked) for a probe interval, at most confirm_batch of them per
  // probe interval (the longest silent first), one ping per member in flight. The pings carry
  // nothing else: they must not spend the retransmissions of queued updates.
  void confirm_round(millis now) {
    const bool active = confirming(now);
    millis next = now + cfg_.probe_interval;
    struct candidate {
      millis since;
      member* m;
      contact* c;
    };
    std::vector<candidate> due;
    for (const auto& id : ids_) {
      member& m = members_.at(id);
      if (m.state != member_state::alive) continue;
      auto found = contact_.find(id);
      if (found == contact_.end()) {
        if (!active) continue;
        found = contact_.emplace(id, contact{}).first;
      }
      contact& c = found->second;
      if (c.deadline.count()) {
        if (now < c.deadline) {
          next = std::min(next, c.deadline);
          continue;
        }
        c.deadline = millis(0);
        --pending_confirms_;
        if (!m.unconfirmed) {
          m.unconfirmed = true;
          ++stats_.unconfirmed;
          env_.on_reachability_change(m);
        }
      }
      if (!active) continue;
      const millis since = std::max(c.heard, c.asked);
      if (now < since + cfg_.probe_interval) {
        next = std::min(next, since + cfg_.probe_interval);
        continue;
      }
      due.push_back({since, &m, &c});
    }
    if (!due.empty() && now < next_confirm_batch_) {
      next = std::min(next, next_confirm_batch_);
      due.clear();
    }
    if (due.size() > confirm_batch) {
      std::nth_element(due.begin(), due.begin() + confirm_batch, due.end(),
                       [](const candidate& a, const candidate& b) {
                         return a.since < b.since ||
                                (a.since == b.since && a.m->info.id < b.m->info.id);
                       });
      due.resize(confirm_batch);
    }
    if (!due.empty()) next_confirm_batch_ = now + cfg_.probe_interval;
    for (auto& [since, m, cp] : due) {
      contact& c = *cp;
      c.asked = now;
      // Scaled by local health like a probe's: a node slow to read its socket waits longer.
      c.deadline = now + scaled(cfg_.probe_timeout) + region_allowance(m->info.region);
      ++pending_confirms_;
      next = std::min(next, c.deadline);
      ++stats_.confirm_pings;
      ++stats_.packets_sent;
      packet p;
      p.sender_id = self_.info.id;
      p.sender_address = self_.info.address;
      p.pings.push_back(ping_msg{++seq_, m->info.id});
      env_.send_packet(m->info.address, p);
    }
    next_confirm_ = next;
  }

  // ---- periodic work ----
  // Sends a packet to `fanout` members (0: gossip_nodes), chosen at random among the live ones
  // and the recently dead.
  void gossip_round(size_t fanout = 0) {
    if (!has_gossip()) return;
    millis now = env_.now();
    auto targets = pick(
        fanout ? fanout : cfg_.gossip_nodes,
        [&](const member& m) {
          return is_live(m.state) ||
                 (m.state == member_state::dead && now - m.state_since < cfg_.gossip_to_dead);
        },
        true);
    for (const member* t : targets) {
      if (!has_gossip()) break;
      packet p = new_packet();
      std::string address = t->info.address;
      send(address, p);
    }
  }

  millis push_pull_period() const {
    // The table goes both ways once per period per node (asking and, on average, serving).
    size_t entry = estimate_size(update_of(self_, {}));
    double table = static_cast<double>(entry * (members_.size() + 1));
    double budget_ms =
        cfg_.push_pull_bytes_per_s ? 2 * table * 1000.0 / cfg_.push_pull_bytes_per_s : 0.0;
    return std::max(cfg_.push_pull_interval, millis(static_cast<int64_t>(budget_ms)));
  }

  void push_pull() {
    auto peer = pick(
        1, [](const member& m) { return m.state == member_state::alive; }, false);
    if (peer.empty()) return;
    ++stats_.push_pulls;
    env_.send_state(peer[0]->info.address, table(false));
  }

  // Talks to one member this node believes dead: if it is back (a healed partition), the
  // exchange makes both sides refute.
  void probe_dead() {
    std::vector<const member*> dead;
    for (const auto& id : tombstones_) {
      const member& m = members_.at(id);
      if (m.state == member_state::dead) dead.push_back(&m);
    }
    if (dead.empty()) return;
    ++stats_.push_pulls;
    env_.send_state(dead[rnd(dead.size())]->info.address, table(false));
  }

  void reap(millis now) {
    std::vector<std::string> gone;
    for (const auto& id : tombstones_) {
      const member& m = members_.at(id);
      if (now - m.state_since >= cfg_.dead_reap_after) gone.push_back(id);
    }
    for (const auto& id : gone) remove_member(id);
  }

  // Every second during the first join_steady_period of joining: nodes started together (a
  // deploy of every region at once, seeds slow to open their ports) find each other as soon as a
  // seed listens. After that, doubling up to join_retry_max: a seed down for long is not
  // hammered.
  void join_attempt(millis now) {
    for (const auto& s : seeds_) env_.send_state(s, table(true));
    ++stats_.push_pulls;
    next_join_ = now + join_backoff_;
    if (now - joining_since_ >= join_steady_period)
      join_backoff_ = std::min(join_backoff_ * 2, cfg_.join_retry_max);
  }

  void tick() {
    millis now = env_.now();
    if (probe_.active) {
      if (!probe_.indirect_sent && now >= probe_.direct_deadline) send_indirect();
      if (now >= probe_.round_end) finish_probe(false);
    }
    if (!left_ && !probe_.active && now >= next_probe_) start_probe(now);
    if (!left_ && (confirming(now) || pending_confirms_ > 0) && now >= next_confirm_)
      confirm_round(now);

    for (auto it = relays_.begin(); it != relays_.end();) {
      relay& r = it->second;
      if (!r.nacked && now >= r.nack_at) {
        r.nacked = true;
        if (cfg_.lifeguard) {
          packet p = new_packet();
          p.nacks.push_back(nack_msg{r.asker_seq});
          send(r.asker_address, p);
        }
      }
      if (now >= r.expire_at)
        it = relays_.erase(it);
      else
        ++it;
    }

    std::vector<std::string> expired;
    for (auto& [id, sp] : suspects_) {
      if (now >= sp.deadline) {
        expired.push_back(id);
      } else if (cfg_.lifeguard && sp.nudges < max_nudges && now >= nudge_at(sp)) {
        nudge(id, sp);
      }
    }
    std::sort(expired.begin(), expired.end());  // deterministic order
    for (const auto& id : expired) {
      auto it = members_.find(id);
      if (it == members_.end() || it->second.state != member_state::suspect) continue;
      member_update u = update_of(it->second, self_.info.id);
      u.state = member_state::dead;
      apply(u, false);
    }

    if (app_ && now >= next_app_pull_) {  // before the gossip round, so deltas ride it
      pull_app();
      next_app_pull_ = now + cfg_.app_delta_interval;
    }
    if (now >= next_gossip_) {
      gossip_round();
      next_gossip_ = aligned(next_gossip_, cfg_.gossip_interval, now);
    }
    if (!left_ && now >= next_push_pull_) {
      push_pull();
      next_push_pull_ = now + push_pull_period();
    }
    if (!left_ && now >= next_dead_probe_) {
      probe_dead();
      next_dead_probe_ = now + cfg_.dead_probe_interval;
    }
    if (now >= next_reap_) {
      reap(now);
      next_reap_ = now + reap_period();
    }
    if (joining_ && !left_ && now >= next_join_) join_attempt(now);
  }

  // Payloads queued and not yet sent once.
  size_t fresh_payloads() const {
    size_t n = 0;
    for (auto it = queue_.begin(); it != queue_.end() && it->first.first == 0; ++it)
      n += it->second.is_payload;
    return n;
  }

  void pull_app() {
    // A gossip round sends about gossip_nodes packets, each with room for about one payload:
    // beyond that, new payloads would only wait in the queue (newest first, so the older wait
    // longest) and go stale there.
    const size_t fresh = fresh_payloads();
    const size_t room = fresh < cfg_.gossip_nodes ? cfg_.gossip_nodes - fresh : 0;
    for (auto& d : app_->take_deltas(env_.now(), room)) {
      remember_payload(d);
      enqueue_payload(std::move(d));
    }
  }

  // Returns the first time after now on the grid start + i*period.
  static millis aligned(millis start, millis period, millis now) {
    if (period.count() <= 0) return now + millis(1);
    if (start > now) return start;
    int64_t steps = (now - start).count() / period.count() + 1;
    return start + period * steps;
  }

  millis next_wakeup() const {
    millis now = env_.now();
    millis t = next_reap_;
    auto at = [&](millis x) { t = std::min(t, x); };
    if (probe_.active)
      at(probe_.indirect_sent ? probe_.round_end : probe_.direct_deadline);
    else if (!left_)
      at(next_probe_);
    for (const auto& [seq, r] : relays_) at(r.nacked ? r.expire_at : r.nack_at);
    for (const auto& [id, sp] : suspects_) {
      at(sp.deadline);
      if (cfg_.lifeguard && sp.nudges < max_nudges) at(nudge_at(sp));
    }
    if (has_gossip()) at(aligned(next_gossip_, cfg_.gossip_interval, now));
    if (!left_) {
      at(next_push_pull_);
      if (!tombstones_.empty()) at(next_dead_probe_);
    }
    if (joining_ && !left_) at(next_join_);
    if (app_) at(next_app_pull_);
    if (!left_ && (confirming(now) || pending_confirms_ > 0)) at(next_confirm_);
    return t;
  }

  // ---- receiving ----
  void pull_from_unknown(const std::string& id, const std::string& address) {
    millis now = env_.now();
    auto [it, fresh] = unknown_pulls_.try_emplace(id, now);
    if (!fresh && now - it->second < cfg_.probe_interval) return;
    it->second = now;
    if (unknown_pulls_.size() > 256) unknown_pulls_.clear();  // bounded whatever is sent
    ++stats_.push_pulls;
    env_.send_state(address, table(false));
  }

  void on_packet(const packet& p) {
    ++stats_.packets_received;
    if (p.version != protocol_version || p.sender_id == self_.info.id) return;
    heard_from(p.sender_id);
    // A member we have never heard of is talking to us: the gossip of its join missed us (a
    // handful of retransmissions to random members can), and the next push-pull may be 30 s
    // away. Exchange tables with it now: it knows the members we missed too.
    if (!p.sender_address.empty() && !left_ && !members_.count(p.sender_id))
      pull_from_unknown(p.sender_id, p.sender_address);
    packet reply = new_packet();
    for (const auto& u : p.updates) {
      // A sender that gossips an outdated claim (it missed a refutation, say) is told the newer
      // one at once, instead of acting on it when its suspicion times out.
      if (apply(u, false) && reply.updates.size() < max_corrections) {
        if (u.member.id == self_.info.id) {
          reply.updates.push_back(update_of(self_, self_.info.id));
        } else if (auto it = members_.find(u.member.id); it != members_.end()) {
          reply.updates.push_back(update_of(it->second, self_.info.id));
        }
      }
    }
    for (const auto& s : p.payloads) receive_payload(p.sender_id, s);
    if (app_ && !p.summary.empty() && !p.sender_address.empty() && !left_ &&
        app_->on_summary(p.sender_id, p.summary, env_.now())) {
      ++stats_.app_syncs;
      ++stats_.push_pulls;
      env_.send_state(p.sender_address, table(false));
    }

    for (const auto& ping : p.pings)
      if (ping.target_id.empty() || ping.target_id == self_.info.id)
        reply.acks.push_back(ack_msg{ping.seq, env_.wall_ms()});
    if ((!reply.acks.empty() || !reply.updates.empty()) && !p.sender_address.empty())
      send(p.sender_address, reply);

    millis now = env_.now();
    for (const auto& req : p.ping_reqs) {
      if (relays_.size() >= max_relays || p.sender_address.empty()) break;
      if (req.target_id == self_.info.id) {  // asked to ping ourselves: answer directly
        packet a = new_packet();
        a.acks.push_back(ack_msg{req.seq});
        send(p.sender_address, a);
        continue;
      }
      uint64_t seq = ++seq_;
      relay r;
      r.asker_address = p.sender_address;
      r.asker_seq = req.seq;
      millis timeout = cfg_.probe_timeout * 4 / 5;
      auto t = members_.find(req.target_id);
      if (t != members_.end()) timeout += region_allowance(t->second.info.region);
      r.nack_at = now + timeout;
      r.expire_at = now + 2 * timeout + cfg_.probe_timeout;
      relays_.emplace(seq, std::move(r));
      packet ping = new_packet();
      ping.pings.push_back(ping_msg{seq, req.target_id});
      send(req.target_address, ping);
    }
    for (const auto& a : p.acks) {
      if (probe_.active && a.seq == probe_.seq) {
        // A direct answer (not relayed) measures the round trip, late ones included: that is
        // how a too-short timeout for a distant region corrects itself.
        if (p.sender_address == probe_.target_address) {
          record_rtt(probe_.target_region, now - probe_.sent_at);
          record_offset(probe_.target, a.wall_ms);
        }
        finish_probe(true);
        continue;
      }
      auto r = relays_.find(a.seq);
      if (r != relays_.end()) {
        packet fwd = new_packet();
        fwd.acks.push_back(ack_msg{r->second.asker_seq});
        std::string address = r->second.asker_address;
        relays_.erase(r);
        send(address, fwd);
      }
    }
    for (const auto& n : p.nacks)
      if (probe_.active && n.seq == probe_.seq) ++probe_.nacks;
  }

  void receive_payload(const std::string& from, const std::string& s) {
    if (!remember_payload(s)) return;
    enqueue_payload(s);
    if (app_) app_->on_payload(from, s);
    if (payload_handler_) payload_handler_(from, s);
  }

  // Returns false when s was seen recently; remembers a bounded number of payloads.
  bool remember_payload(const std::string& s) {
    if (!seen_payloads_.insert(s).second) return false;
    seen_order_.push_back(s);
    if (seen_order_.size() > seen_payloads_cap) {
      seen_payloads_.erase(seen_order_.front());
      seen_order_.pop_front();
    }
    return true;
  }

  void merge(const state_sync& s) {
    if (s.version != protocol_version) return;
    for (const auto& u : s.members) apply(u, true);
  }

  swim_config cfg_;
  environment& env_;
  member self_;
  std::unordered_map<std::string, member> members_;  // everyone but self
  std::vector<std::string> ids_;                     // keys of members_, for random picks
  std::unordered_map<std::string, size_t> id_pos_;
  size_t live_count_ = 0;
  size_t other_region_live_ = 0;
  std::unordered_map<std::string, suspicion> suspects_;
  std::unordered_set<std::string> tombstones_;  // dead and left members until reaped

  std::vector<std::string> probe_order_;
  size_t probe_pos_ = 0;
  probe_round probe_;
  std::unordered_map<uint64_t, relay> relays_;
  std::unordered_map<std::string, contact> contact_;  // members heard from or asked
  millis last_down_{-(millis::max() / 4)};            // a member last turned suspect or dead
  millis next_confirm_{0}, next_confirm_batch_{0};
  size_t pending_confirms_ = 0;
  // When each unknown sender was last pulled (at most once per probe interval each).
  std::unordered_map<std::string, millis> unknown_pulls_;

  millis next_probe_{0}, next_gossip_{0}, next_push_pull_{0}, next_dead_probe_{0}, next_reap_{0};
  std::vector<std::string> seeds_;
  bool joining_ = false;
  millis next_join_{0};
  millis joining_since_{0};
  millis join_backoff_{join_backoff_start};
  bool left_ = false;
  millis last_urgent_round_{-1000000};  // when urgent_application_round last gossiped
  uint32_t health_ = 0;
  uint64_t seq_ = 0;
  uint64_t order_ = 0;

  std::map<queue_key, queued> queue_;
  std::unordered_map<std::string, queue_key> queue_index_;
  size_t queued_payloads_ = 0;
  std::unordered_set<std::string> seen_payloads_;
  std::deque<std::string> seen_order_;

  membership_stats stats_;
  std::function<void(const std::string&, const std::string&)> payload_handler_;
  gossip_application* app_ = nullptr;
  millis next_app_pull_{0};
};

membership::membership(member_info self, uint64_t incarnation, swim_config config, environment& env)
    : impl_(std::make_unique<impl>(std::move(self), incarnation, config, env)) {}

membership::~membership() = default;

void membership::join(std::vector<std::string> seeds) {
  auto& m = *impl_;
  m.seeds_.clear();
  for (auto& s : seeds)
    if (!s.empty() && s != m.self_.info.address) m.seeds_.push_back(std::move(s));
  if (m.seeds_.empty() || m.left_) return;  // a lone node serves on its own
  m.joining_ = true;
  m.joining_since_ = m.env_.now();
  m.join_backoff_ = join_backoff_start;
  m.join_attempt(m.env_.now());
}

void membership::leave() {
  auto& m = *impl_;
  if (m.left_) return;
  m.left_ = true;
  m.joining_ = false;
  m.probe_.active = false;
  m.self_.incarnation += 1;
  m.self_.state = member_state::left;
  m.self_.state_since = m.env_.now();
  m.enqueue(m.update_of(m.self_, m.self_.info.id));
  m.env_.on_member_change(m.self_);
  auto targets = m.pick(
      std::max<size_t>(2 * m.cfg_.gossip_nodes, 3),
      [](const member& x) { return x.state == member_state::alive; }, true);
  for (const member* t : targets) {
    packet p = m.new_packet();
    p.updates.push_back(m.update_of(m.self_, m.self_.info.id));
    std::string address = t->info.address;
    m.send(address, p);
  }
}

void membership::restore(const std::vector<member_update>& table) {
  auto& m = *impl_;
  for (const auto& u : table) {
    if (u.member.id.empty() || u.member.id == m.self_.info.id) continue;
    if (m.members_.count(u.member.id)) m.remove_member(u.member.id);
    m.add_member(u);
    if (u.state == member_state::suspect) {
      impl::suspicion sp;
      sp.start = m.env_.now();
      sp.deadline = sp.start + m.suspicion_timeout(0);
      m.suspects_[u.member.id] = std::move(sp);
    }
  }
  // The anti-entropy period depends on the table size: start it on the grown table's period.
  m.next_push_pull_ = m.env_.now() + m.jitter(m.push_pull_period());
}

void membership::tick() {
  impl_->tick();
}
millis membership::next_wakeup() const {
  return impl_->next_wakeup();
}
void membership::on_packet(const packet& p) {
  impl_->on_packet(p);
}

state_sync membership::on_state_request(const state_sync& request) {
  auto& m = *impl_;
  m.merge(request);
  if (request.version == protocol_version && request.sender_id != m.self_.info.id)
    m.heard_from(request.sender_id);
  state_sync reply = m.table(false, false);
  if (m.app_ && request.version == protocol_version && !request.app_state.empty()) {
    reply.app_state = m.app_->on_sync_request(request.sender_id, request.app_state);
  }
  return reply;
}

void membership::on_state_reply(const state_sync& reply) {
  auto& m = *impl_;
  m.merge(reply);
  m.joining_ = false;
  if (reply.version == protocol_version && reply.sender_id != m.self_.info.id)
    m.heard_from(reply.sender_id);
  if (m.probe_.active && m.probe_.stream_sent && reply.version == protocol_version &&
      reply.sender_id == m.probe_.target) {
    ++m.stats_.tcp_acks;  // UDP failed, TCP got through: alive
    m.finish_probe(true);
  }
  if (m.app_ && reply.version == protocol_version && !reply.app_state.empty() &&
      m.app_->on_sync_reply(reply.sender_id, reply.app_state) && !m.left_) {
    auto it = m.members_.find(reply.sender_id);
    if (it != m.members_.end() && !it->second.info.address.empty()) {
      ++m.stats_.app_followups;
      ++m.stats_.push_pulls;
      m.env_.send_state(it->second.info.address, m.table(false));
    }
  }
}

void membership::set_application(gossip_application* app) {
  impl_->app_ = app;
  impl_->next_app_pull_ = impl_->env_.now();
}

void membership::pull_application_deltas() {
  if (impl_->app_) impl_->pull_app();
}

void membership::urgent_application_round(millis min_gap) {
  auto& d = *impl_;
  if (!d.app_) return;
  const millis now = d.env_.now();
  const bool may_send = now - d.last_urgent_round_ >= min_gap;
  if (may_send) d.app_->expedite();
  d.pull_app();
  if (!may_send || d.fresh_payloads() == 0) return;
  d.last_urgent_round_ = now;
  // Counts near a limit: every member should hear them now, not some now and the rest a gossip
  // round later (up to urgent_fanout members, so a large cluster still spreads them by gossip).
  d.gossip_round(std::max<size_t>(d.cfg_.gossip_nodes, urgent_fanout));
}

void membership::broadcast_payload(std::string payload) {
  impl_->remember_payload(payload);
  impl_->enqueue_payload(std::move(payload));
}

void membership::set_payload_handler(
    std::function<void(const std::string& from, const std::string&)> h) {
  impl_->payload_handler_ = std::move(h);
}

const member& membership::self() const {
  return impl_->self_;
}

std::vector<member> membership::members() const {
  std::vector<member> out;
  out.reserve(impl_->members_.size() + 1);
  out.push_back(impl_->self_);
  for (const auto& id : impl_->ids_) out.push_back(impl_->members_.at(id));
  return out;
}

uint32_t membership::local_health() const {
  return impl_->health_;
}
std::map<std::string, double> membership::clock_offsets() const {
  std::map<std::string, double> out;
  for (const auto& [id, offset] : impl_->clock_offsets_) {
    auto m = impl_->members_.find(id);
    // Unreachable members keep their last offset (clocks drift slowly): a partition must not
    // make the median collapse to this node's own clock. Members that left are dropped.
    if (m != impl_->members_.end() && m->second.state != member_state::left) out[id] = offset;
  }
  return out;
}

int64_t median_clock_correction(const std::map<std::string, double>& offsets) {
  std::vector<double> all{0.0};
  for (const auto& [id, offset] : offsets) all.push_back(offset);
  std::sort(all.begin(), all.end());
  size_t n = all.size();
  double median = n % 2 ? all[n / 2] : (all[n / 2 - 1] + all[n / 2]) / 2.0;
  return static_cast<int64_t>(median < 0 ? median - 0.5 : median + 0.5);
}

std::map<std::string, double> membership::region_rtt() const {
  return impl_->region_rtt_;
}
const membership_stats& membership::stats() const {
  return impl_->stats_;
}

}  // namespace meridian::cluster
