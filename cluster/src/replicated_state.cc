#include "meridian/cluster/replicated_state.h"

#include <sodium.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <set>
#include <tuple>
#include <unordered_map>
#include <unordered_set>

#include "gossip_types.h"
#include "meridian/storage/store.h"
#include "thrift_codec.h"

namespace meridian::cluster {
namespace {

using namespace detail;

constexpr size_t family_count = 2;
constexpr size_t max_tracked_peers = 65536;
constexpr size_t summary_bytes = 16;

std::shared_ptr<spdlog::logger> logger() {
  auto l = spdlog::get("cluster.state");
  return l ? l : spdlog::default_logger();
}

storage::family store_family(doc_family f) {
  return f == doc_family::config ? storage::family::config : storage::family::breakers;
}

bool valid_family(int8_t f) {
  return f >= 0 && static_cast<size_t>(f) < family_count;
}

gen::doc_entry to_gen(doc_family f, const std::string& key, const lww_entry& e) {
  gen::doc_entry g;
  g.__set_family(static_cast<int8_t>(f));
  g.__set_key(key);
  g.__set_version(static_cast<int64_t>(e.version));
  g.__set_origin(e.origin);
  g.__set_deleted(e.deleted);
  g.__set_value(e.value);
  return g;
}

lww_entry from_gen(const gen::doc_entry& g) {
  lww_entry e;
  e.version = static_cast<hlc_time>(g.version);
  e.origin = g.origin;
  e.deleted = g.deleted;
  e.value = g.value;
  return e;
}

// Thrift's generated structs carry a version field only when the IDL says so; doc_entry does
// not, so it is decoded without the version check of read_compact.
template <typename G>
bool read_plain(std::string_view bytes, G* g) {
  if (bytes.size() > max_encoded_size) return false;
  try {
    auto protocol = reader(bytes);
    g->read(protocol.get());
    return !protocol->getTransport()->peek();
  } catch (...) {
    return false;
  }
}

void put_u64(std::string& out, uint64_t v) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>(v >> (8 * i)));
}

std::string hex(uint64_t v) {
  static const char digits[] = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[static_cast<size_t>(i)] = digits[v & 0xf];
  return s;
}

// Counters in the store: key = the counter key (8 bytes big-endian, so scans are ordered);
// value = a packed list of (node id, update), one per slot.
std::string counter_store_key(uint64_t key) {
  std::string k(8, '\0');
  for (int i = 0; i < 8; ++i) k[static_cast<size_t>(i)] = static_cast<char>(key >> (56 - 8 * i));
  return k;
}

}  // namespace

struct replicated_state::impl {
  impl(state_options o, std::function<int64_t()> wall, storage::store* s)
      : opt(std::move(o)),
        clock(std::move(wall), opt.max_clock_skew_ms),
        store(s),
        counters(opt.max_counter_keys) {
    counters.node_index(opt.self_id);  // index 0 is this node
  }

  state_options opt;
  mutable std::mutex mu;
  hybrid_clock clock;
  storage::store* store;
  lww_map maps[family_count];
  window_counters counters;
  std::function<void(doc_family)> on_change;
  std::function<void(uint64_t, uint32_t, uint64_t)> counter_observer;
  std::function<void()> flush_hook;

  // Documents written here and not yet handed to the gossip layer.
  std::vector<std::pair<doc_family, std::string>> pending_docs;
  std::set<std::pair<doc_family, std::string>> pending_index;
  millis next_counter_flush{0};
  std::unordered_set<uint64_t> unpersisted;  // counters changed since persist_counters

  struct peer_view {
    std::string summary;
    millis heard{0};
    millis last_sync{-1000000};
  };
  std::unordered_map<std::string, peer_view> peers;
  std::string last_own_summary;
  millis last_own_change{0};
  bool want_pull = false;  // a notice named a newer document than the one held here
  state_stats stats;

  lww_map& map(doc_family f) { return maps[static_cast<size_t>(f)]; }
  const lww_map& map(doc_family f) const { return maps[static_cast<size_t>(f)]; }

  std::string own_summary() const {
    std::string s;
    s.reserve(summary_bytes);
    put_u64(s, maps[0].digest());
    put_u64(s, maps[1].digest());
    return s;
  }

  // Persists one document version. sync: wait for the disk (acknowledged local writes).
  bool persist(doc_family f, const std::string& key, const lww_entry& e, bool sync,
               std::string* error) {
    if (!store) return true;
    auto st = store->put(store_family(f), key, write_compact(to_gen(f, key, e)),
                         storage::write_options{sync});
    if (st.is_ok()) return true;
    ++stats.persist_errors;
    if (error) *error = "store: " + st.message();
    logger()->error("cannot persist {}: {}", key, st.message());
    return false;
  }

  // Merges a remote version; returns true when it changed the map.
  bool merge_remote(doc_family f, const std::string& key, const lww_entry& e) {
    if (!map(f).merge(key, e)) return false;
    ++stats.docs_applied;
    persist(f, key, e, false, nullptr);
    return true;
  }

  hlc_time write(doc_family f, const std::string& key, lww_entry e, std::string* error,
                 bool sync = true) {
    if (key.empty() || key.size() > 1024) {
      *error = "document key must be 1 to 1024 bytes";
      return 0;
    }
    if (e.value.size() > opt.max_document_bytes) {
      *error = "document is " + std::to_string(e.value.size()) + " bytes; the limit is " +
               std::to_string(opt.max_document_bytes);
      return 0;
    }
    e.version = clock.now();
    e.origin = opt.self_id;
    if (!persist(f, key, e, sync, error)) return 0;
    map(f).merge(key, e);
    if (pending_index.emplace(f, key).second) pending_docs.emplace_back(f, key);
    return e.version;
  }

  void note_counter(uint64_t key) {
    if (store && unpersisted.size() < opt.max_counter_keys) unpersisted.insert(key);
  }

  std::string encode_delta(std::vector<gen::doc_entry> docs, std::vector<gen::doc_version> notices,
                           std::string packed_counters) {
    gen::state_delta d;
    d.__set_version(static_cast<int16_t>(protocol_version));
    d.__set_origin(opt.self_id);
    d.__set_clock(static_cast<int64_t>(clock.now()));
    if (!docs.empty()) d.__set_docs(std::move(docs));
    if (!notices.empty()) d.__set_notices(std::move(notices));
    if (!packed_counters.empty()) d.__set_counters(std::move(packed_counters));
    ++stats.deltas_sent;
    return write_compact(d);
  }

  void take_doc_deltas(std::vector<std::string>& out) {
    std::vector<gen::doc_entry> batch;
    std::vector<gen::doc_version> notices;
    size_t bytes = 0;
    auto flush = [&] {
      if (batch.empty() && notices.empty()) return;
      out.push_back(encode_delta(std::move(batch), std::move(notices), {}));
      batch.clear();
      notices.clear();
      bytes = 0;
    };
    for (const auto& [f, key] : pending_docs) {
      const lww_entry* e = map(f).find(key);
      if (!e) continue;  // collected meanwhile
      auto g = to_gen(f, key, *e);
      size_t size = write_compact(g).size() + 4;
      if (size + 48 > opt.max_payload_bytes) {
        // Too large for a datagram: announce it; the others pull it by push-pull.
        gen::doc_version v;
        v.__set_family(g.family);
        v.__set_key(key);
        v.__set_version(g.version);
        v.__set_origin(g.origin);
        size = key.size() + e->origin.size() + 20;
        if (bytes + size + 48 > opt.max_payload_bytes) flush();
        notices.push_back(std::move(v));
      } else {
        if (bytes + size + 48 > opt.max_payload_bytes) flush();
        batch.push_back(std::move(g));
      }
      bytes += size;
    }
    flush();
    pending_docs.clear();
    pending_index.clear();
  }

  void take_counter_deltas(std::vector<std::string>& out, size_t max_payloads) {
    // Every update is at most 8 + 5 + 5 + 5 bytes; fill payloads to the budget.
    const size_t per_payload = std::max<size_t>((opt.max_payload_bytes - 64) / 23, 1);
    while (out.size() < max_payloads && counters.dirty() > 0) {
      auto updates = counters.take_dirty(per_payload);
      if (updates.empty()) break;
      stats.counter_updates_sent += updates.size();
      out.push_back(encode_delta({}, {}, pack_counter_updates(updates)));
    }
  }

  // Adopts a remote clock reading; false when it is too far ahead (and counted).
  bool observe(int64_t remote, const std::string& from) {
    if (clock.observe(static_cast<hlc_time>(remote))) return true;
    ++stats.clock_rejected;
    logger()->warn("refusing state from {}: its clock is {} ms ahead (max_clock_skew {} ms)", from,
                   hlc_unix_ms(static_cast<hlc_time>(remote)) - clock.wall_ms(),
                   opt.max_clock_skew_ms);
    return false;
  }

  void track_peer_summary(const std::string& from, const std::string& s, millis now) {
    auto it = peers.find(from);
    if (it == peers.end()) {
      if (peers.size() >= max_tracked_peers) peers.clear();  // bounded; refilled within seconds
      it = peers.emplace(from, peer_view{}).first;
    }
    it->second.summary = s;
    it->second.heard = now;
  }

  bool converged_locked(const std::vector<std::string>& ids, millis now) const {
    std::string mine = own_summary().substr(0, 8);
    for (const auto& id : ids) {
      auto it = peers.find(id);
      if (it == peers.end() || now - it->second.heard > opt.summary_fresh) return false;
      if (it->second.summary.size() < 8 || it->second.summary.compare(0, 8, mine) != 0)
        return false;
    }
    return true;
  }
};

replicated_state::replicated_state(state_options options, std::function<int64_t()> wall_ms,
                                   storage::store* store)
    : impl_(std::make_unique<impl>(std::move(options), std::move(wall_ms), store)) {}

replicated_state::~replicated_state() = default;

bool replicated_state::load(std::string* error) {
  auto& d = *impl_;
  std::lock_guard lock(d.mu);
  if (!d.store) return true;
  for (size_t i = 0; i < family_count; ++i) {
    auto f = static_cast<doc_family>(i);
    bool bad = false;
    auto st = d.store->scan(store_family(f), "", [&](std::string_view key, std::string_view value) {
      gen::doc_entry g;
      if (!read_plain(value, &g) || g.key != key) {
        *error = "store holds an undecodable document under " + std::string(key);
        bad = true;
        return false;
      }
      lww_entry e = from_gen(g);
      d.map(f).merge(g.key, e);
      return true;
    });
    if (!st.is_ok()) {
      *error = "store: " + st.message();
      return false;
    }
    if (bad) return false;
  }
  // Versions written before a restart must stay below new ones even if the wall clock stepped
  // back: start the clock past the highest stored version.
  for (const auto& m : d.maps) d.clock.advance_to(m.max_version());
  size_t restored = 0;
  auto st = d.store->scan(storage::family::counters, "",
                          [&](std::string_view key, std::string_view value) {
                            if (key.size() != 8) return true;
                            // value: repeated (varint id length, id, packed update)
                            std::string_view in = value;
                            while (!in.empty()) {
                              auto len = static_cast<uint8_t>(in.front());
                              in.remove_prefix(1);
                              if (in.size() < len) break;
                              std::string id(in.substr(0, len));
                              in.remove_prefix(len);
                              if (in.size() < 2) break;
                              auto ulen = static_cast<uint8_t>(in.front());
                              in.remove_prefix(1);
                              if (in.size() < ulen) break;
                              std::vector<counter_update> u;
                              if (unpack_counter_updates(in.substr(0, ulen), &u) && u.size() == 1)
                                d.counters.merge(d.counters.node_index(id), u[0]);
                              in.remove_prefix(ulen);
                            }
                            ++restored;
                            return true;
                          });
  if (!st.is_ok()) {
    *error = "store: " + st.message();
    return false;
  }
  d.counters.expire(d.clock.wall_ms());
  logger()->info("state loaded: {} config documents, {} breaker states, {} counters",
                 d.maps[0].live_size(), d.maps[1].live_size(), d.counters.size());
  return true;
}

hlc_time replicated_state::put(doc_family f, const std::string& key, std::string value,
                               std::string* error, bool sync) {
  hlc_time v;
  {
    std::lock_guard lock(impl_->mu);
    lww_entry e;
    e.value = std::move(value);
    v = impl_->write(f, key, std::move(e), error, sync);
  }
  if (v && impl_->on_change) impl_->on_change(f);
  return v;
}

hlc_time replicated_state::remove(doc_family f, const std::string& key, std::string* error) {
  hlc_time v;
  {
    std::lock_guard lock(impl_->mu);
    lww_entry e;
    e.deleted = true;
    v = impl_->write(f, key, std::move(e), error);
  }
  if (v && impl_->on_change) impl_->on_change(f);
  return v;
}

void replicated_state::seed(doc_family f, const std::string& key, std::string value) {
  bool changed = false;
  {
    std::lock_guard lock(impl_->mu);
    auto& d = *impl_;
    if (d.map(f).find(key)) return;
    lww_entry e;
    e.version = 0;
    unsigned char h[16];
    crypto_generichash(h, sizeof h, reinterpret_cast<const unsigned char*>(value.data()),
                       value.size(), nullptr, 0);
    uint64_t x;
    std::memcpy(&x, h, sizeof x);
    e.origin = "seed:" + hex(x);
    e.value = std::move(value);
    if (d.persist(f, key, e, true, nullptr)) changed = d.map(f).merge(key, e);
  }
  if (changed && impl_->on_change) impl_->on_change(f);
}

std::optional<lww_entry> replicated_state::get(doc_family f, const std::string& key) const {
  std::lock_guard lock(impl_->mu);
  const lww_entry* e = impl_->map(f).find(key);
  if (!e) return std::nullopt;
  return *e;
}

std::vector<std::pair<std::string, lww_entry>> replicated_state::documents(
    doc_family f, bool include_deleted, std::string_view prefix) const {
  std::lock_guard lock(impl_->mu);
  std::vector<std::pair<std::string, lww_entry>> out;
  const auto& entries = impl_->map(f).entries();
  for (auto it = entries.lower_bound(std::string(prefix));
       it != entries.end() && std::string_view(it->first).starts_with(prefix); ++it)
    if (include_deleted || !it->second.deleted) out.emplace_back(it->first, it->second);
  return out;
}

uint64_t replicated_state::digest(doc_family f) const {
  std::lock_guard lock(impl_->mu);
  return impl_->map(f).digest();
}

hlc_time replicated_state::version(doc_family f) const {
  std::lock_guard lock(impl_->mu);
  return impl_->map(f).max_version();
}

bool replicated_state::empty(doc_family f) const {
  std::lock_guard lock(impl_->mu);
  return impl_->map(f).entries().empty();
}

void replicated_state::set_change_handler(std::function<void(doc_family)> handler) {
  std::lock_guard lock(impl_->mu);
  impl_->on_change = std::move(handler);
}

uint32_t replicated_state::count(uint64_t key, uint32_t window_ms, uint32_t window, uint32_t n,
                                 bool urgent) {
  std::lock_guard lock(impl_->mu);
  impl_->note_counter(key);
  return impl_->counters.add(key, window_ms, window, n, urgent);
}

void replicated_state::count_batch(const std::vector<counter_add>& adds) {
  std::lock_guard lock(impl_->mu);
  for (const auto& a : adds) {
    impl_->note_counter(a.key);
    impl_->counters.add(a.key, a.window_ms, a.window, a.n, a.urgent, a.replicate);
  }
}

window_counters::split_counts replicated_state::counter_split(uint64_t key, uint32_t window) const {
  std::lock_guard lock(impl_->mu);
  return impl_->counters.split(key, window);
}

void replicated_state::set_counter_observer(
    std::function<void(uint64_t, uint32_t, uint64_t)> observer) {
  std::lock_guard lock(impl_->mu);
  impl_->counter_observer = std::move(observer);
}

void replicated_state::set_flush_hook(std::function<void()> hook) {
  std::lock_guard lock(impl_->mu);
  impl_->flush_hook = std::move(hook);
}

uint64_t replicated_state::counter_sum(uint64_t key, uint32_t window) const {
  std::lock_guard lock(impl_->mu);
  return impl_->counters.sum(key, window);
}

std::map<std::string, uint64_t> replicated_state::counter_by_node(uint64_t key,
                                                                  uint32_t window) const {
  std::lock_guard lock(impl_->mu);
  std::map<std::string, uint64_t> out;
  impl_->counters.for_each_slot(
      key, window, [&](uint16_t node, uint32_t n) { out[impl_->counters.node_id(node)] += n; });
  return out;
}

void replicated_state::persist_counters() {
  auto& d = *impl_;
  std::lock_guard lock(d.mu);
  d.counters.expire(d.clock.wall_ms());
  if (!d.store || d.unpersisted.empty()) return;
  // Group the slots of the changed keys: one store entry per key.
  std::unordered_map<uint64_t, std::string> values;
  values.reserve(d.unpersisted.size());
  d.counters.for_each([&](uint16_t node, const counter_update& u) {
    if (!d.unpersisted.count(u.key)) return;
    const std::string& id = d.counters.node_id(node);
    if (id.size() > 255) return;
    std::string packed = pack_counter_updates({u});
    std::string& v = values[u.key];
    v.push_back(static_cast<char>(id.size()));
    v.append(id);
    v.push_back(static_cast<char>(packed.size()));
    v.append(packed);
  });
  std::vector<storage::write_op> ops;
  ops.reserve(d.unpersisted.size());
  for (uint64_t key : d.unpersisted) {
    auto it = values.find(key);
    if (it == values.end()) {
      ops.push_back({storage::family::counters, counter_store_key(key), std::nullopt});
    } else {
      ops.push_back({storage::family::counters, counter_store_key(key), std::move(it->second)});
    }
  }
  d.unpersisted.clear();
  auto st = d.store->write(ops);
  if (!st.is_ok()) {
    ++d.stats.persist_errors;
    logger()->error("cannot persist counters: {}", st.message());
  }
}

bool replicated_state::converged(const std::vector<std::string>& peers, millis now) const {
  std::lock_guard lock(impl_->mu);
  return impl_->converged_locked(peers, now);
}

void replicated_state::collect_garbage(const std::vector<std::string>& peers, millis now) {
  auto& d = *impl_;
  std::lock_guard lock(d.mu);
  if (!d.converged_locked(peers, now)) return;
  hlc_time before = hlc_from_unix_ms(d.clock.wall_ms() - d.opt.tombstone_grace_ms);
  for (size_t i = 0; i < family_count; ++i) {
    std::vector<std::string> gone;
    for (const auto& [k, e] : d.maps[i].entries())
      if (e.deleted && e.version < before) gone.push_back(k);
    if (gone.empty()) continue;
    d.maps[i].collect_tombstones(before);
    d.stats.tombstones_collected += gone.size();
    if (!d.store) continue;
    std::vector<storage::write_op> ops;
    for (auto& k : gone)
      ops.push_back({store_family(static_cast<doc_family>(i)), std::move(k), std::nullopt});
    if (!d.store->write(ops).is_ok()) ++d.stats.persist_errors;
  }
}

state_stats replicated_state::stats() const {
  std::lock_guard lock(impl_->mu);
  state_stats s = impl_->stats;
  s.max_clock_skew_ms = impl_->clock.max_observed_skew_ms();
  s.documents = impl_->maps[0].live_size();
  s.counters = impl_->counters.size();
  s.counter_evictions = impl_->counters.evictions();
  return s;
}

// ---- gossip_application ----

std::string replicated_state::summary() {
  std::lock_guard lock(impl_->mu);
  return impl_->own_summary();
}

bool replicated_state::on_summary(const std::string& from, const std::string& summary, millis now) {
  auto& d = *impl_;
  std::lock_guard lock(d.mu);
  if (summary.size() != summary_bytes) return false;
  d.track_peer_summary(from, summary, now);
  std::string mine = d.own_summary();
  if (mine != d.last_own_summary) {
    d.last_own_summary = mine;
    d.last_own_change = now;
  }
  if (summary == mine) return false;
  // Deltas are still arriving: give them a moment before paying for a push-pull.
  if (!d.want_pull && now - d.last_own_change < d.opt.sync_grace) return false;
  auto& p = d.peers[from];
  if (now - p.last_sync < d.opt.min_sync_interval) return false;
  p.last_sync = now;
  d.want_pull = false;
  ++d.stats.syncs_requested;
  return true;
}

std::vector<std::string> replicated_state::take_deltas(millis now) {
  auto& d = *impl_;
  std::function<void()> hook;
  {
    std::lock_guard lock(d.mu);
    hook = d.flush_hook;
  }
  if (hook && now >= d.next_counter_flush) hook();
  std::lock_guard lock(d.mu);
  std::vector<std::string> out;
  if (!d.pending_docs.empty()) d.take_doc_deltas(out);
  if (now >= d.next_counter_flush) {
    d.next_counter_flush = now + d.opt.counter_sync_interval;
    d.take_counter_deltas(out, d.opt.max_payloads_per_round);
  }
  return out;
}

void replicated_state::on_payload(const std::string& from, const std::string& payload) {
  auto& d = *impl_;
  bool changed[family_count] = {false, false};
  std::vector<std::tuple<uint64_t, uint32_t, uint64_t>> counter_changes;
  std::function<void(uint64_t, uint32_t, uint64_t)> observer;
  {
    std::lock_guard lock(d.mu);
    gen::state_delta delta;
    if (read_compact(payload, &delta) != wire_error::none) {
      ++d.stats.malformed;
      return;
    }
    ++d.stats.deltas_received;
    if (delta.origin == d.opt.self_id) return;  // our own delta, relayed back
    if (!d.observe(delta.clock, delta.origin.empty() ? from : delta.origin)) return;
    for (const auto& g : delta.docs) {
      if (!valid_family(g.family)) {
        ++d.stats.malformed;
        continue;
      }
      auto f = static_cast<doc_family>(g.family);
      if (d.merge_remote(f, g.key, from_gen(g))) changed[g.family] = true;
    }
    for (const auto& n : delta.notices) {
      if (!valid_family(n.family)) continue;
      lww_entry probe;
      probe.version = static_cast<hlc_time>(n.version);
      probe.origin = n.origin;
      const lww_entry* have = d.map(static_cast<doc_family>(n.family)).find(n.key);
      if (!have || (probe.version > have->version ||
                    (probe.version == have->version && probe.origin > have->origin)))
        d.want_pull = true;
    }
    if (!delta.counters.empty() && !delta.origin.empty()) {
      std::vector<counter_update> updates;
      if (!unpack_counter_updates(delta.counters, &updates)) ++d.stats.malformed;
      uint16_t node = d.counters.node_index(delta.origin);
      for (const auto& u : updates) {
        if (d.counters.merge(node, u)) {
          ++d.stats.counter_updates_applied;
          d.note_counter(u.key);
          if (d.counter_observer) {
            uint64_t others = 0;
            d.counters.for_each_slot(u.key, u.window, [&](uint16_t n, uint32_t c) {
              if (n != 0) others += c;
            });
            counter_changes.emplace_back(u.key, u.window, others);
          }
        }
      }
      double lag =
          static_cast<double>(d.clock.wall_ms() - hlc_unix_ms(static_cast<hlc_time>(delta.clock)));
      d.stats.counter_sync_lag_ms =
          d.stats.counter_sync_lag_ms == 0 ? lag : 0.9 * d.stats.counter_sync_lag_ms + 0.1 * lag;
    }
    observer = d.counter_observer;
  }
  if (observer)
    for (const auto& [key, window, others] : counter_changes) observer(key, window, others);
  if (d.on_change)
    for (size_t i = 0; i < family_count; ++i)
      if (changed[i]) d.on_change(static_cast<doc_family>(i));
}

std::string replicated_state::sync_request() {
  auto& d = *impl_;
  std::lock_guard lock(d.mu);
  gen::state_sync_app s;
  s.__set_version(static_cast<int16_t>(protocol_version));
  s.__set_config_digest(static_cast<int64_t>(d.maps[0].digest()));
  s.__set_breaker_digest(static_cast<int64_t>(d.maps[1].digest()));
  s.__set_clock(static_cast<int64_t>(d.clock.now()));
  std::vector<gen::doc_version> have;
  for (size_t i = 0; i < family_count; ++i) {
    for (const auto& [k, e] : d.maps[i].entries()) {
      if (have.size() >= static_cast<size_t>(max_container_elements)) break;
      gen::doc_version v;
      v.__set_family(static_cast<int8_t>(i));
      v.__set_key(k);
      v.__set_version(static_cast<int64_t>(e.version));
      v.__set_origin(e.origin);
      have.push_back(std::move(v));
    }
  }
  if (!have.empty()) s.__set_have(std::move(have));
  s.__set_complete(true);
  return write_compact(s);
}

std::string replicated_state::on_sync_request(const std::string& from,
                                              const std::string& app_state) {
  auto& d = *impl_;
  std::lock_guard lock(d.mu);
  gen::state_sync_app req;
  if (read_compact(app_state, &req) != wire_error::none) {
    ++d.stats.malformed;
    return {};
  }
  ++d.stats.syncs_served;
  if (!d.observe(req.clock, from)) return {};
  gen::state_sync_app reply;
  reply.__set_version(static_cast<int16_t>(protocol_version));
  reply.__set_config_digest(static_cast<int64_t>(d.maps[0].digest()));
  reply.__set_breaker_digest(static_cast<int64_t>(d.maps[1].digest()));
  reply.__set_clock(static_cast<int64_t>(d.clock.now()));
  reply.__set_complete(true);
  bool same = static_cast<uint64_t>(req.config_digest) == d.maps[0].digest() &&
              static_cast<uint64_t>(req.breaker_digest) == d.maps[1].digest();
  if (same) return write_compact(reply);

  std::map<std::pair<int8_t, std::string_view>, const gen::doc_version*> theirs;
  for (const auto& v : req.have) theirs[{v.family, v.key}] = &v;
  std::vector<gen::doc_entry> docs;
  size_t bytes = 0;
  for (size_t i = 0; i < family_count && reply.complete; ++i) {
    for (const auto& [k, e] : d.maps[i].entries()) {
      auto it = theirs.find({static_cast<int8_t>(i), k});
      if (it != theirs.end()) {
        lww_entry t;
        t.version = static_cast<hlc_time>(it->second->version);
        t.origin = it->second->origin;
        if (e.version < t.version || (e.version == t.version && e.origin <= t.origin)) continue;
      }
      size_t size = k.size() + e.origin.size() + e.value.size() + 24;
      if (bytes + size > d.opt.max_sync_bytes ||
          docs.size() >= static_cast<size_t>(max_container_elements)) {
        reply.__set_complete(false);
        break;
      }
      bytes += size;
      docs.push_back(to_gen(static_cast<doc_family>(i), k, e));
    }
  }
  if (!docs.empty()) reply.__set_docs(std::move(docs));
  return write_compact(reply);
}

void replicated_state::on_sync_reply(const std::string& from, const std::string& app_state) {
  auto& d = *impl_;
  bool changed[family_count] = {false, false};
  {
    std::lock_guard lock(d.mu);
    gen::state_sync_app reply;
    if (read_compact(app_state, &reply) != wire_error::none) {
      ++d.stats.malformed;
      return;
    }
    if (!d.observe(reply.clock, from)) return;
    for (const auto& g : reply.docs) {
      if (!valid_family(g.family)) {
        ++d.stats.malformed;
        continue;
      }
      ++d.stats.sync_docs_received;
      if (d.merge_remote(static_cast<doc_family>(g.family), g.key, from_gen(g)))
        changed[g.family] = true;
    }
    // A reply cut short by its budget: ask again soon.
    if (!reply.complete) d.want_pull = true;
  }
  if (d.on_change)
    for (size_t i = 0; i < family_count; ++i)
      if (changed[i]) d.on_change(static_cast<doc_family>(i));
}

}  // namespace meridian::cluster
