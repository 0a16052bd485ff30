#include "meridian/cluster/replicated_state.h"

#include <sodium.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
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
  return f == doc_family::config ? storage::family::config : storage::family::state;
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

// ---- bucketed anti-entropy ----
//
// A push-pull must fit one sealed message (max_encoded_size), whatever the state's size. Small
// states still send every version they hold (`have`, one round trip, as before). Larger ones
// hash every key into 2^k buckets (k from the documents count, at most max_bucket_bits) and send
// a 4-byte digest per bucket. The responder answers, within max_sync_bytes:
//   * the documents the asker asked for by name (`want`) that it holds in a newer version;
//   * for each bucket whose digest differs: every document of the bucket when the asker's bucket
//     is empty, else the versions of every entry of the bucket (`versions`, `listed`).
// The asker merges the documents, compares each listed bucket entry by entry, and at once asks
// again (a follow-up push-pull, see gossip_application::on_sync_reply) with `want` = what the
// responder holds newer and `docs` = what the responder lacks. Each exchange is bounded; the
// chain ends when the buckets agree. Bucket digests count tombstones too (unlike the summary),
// so equal buckets mean equal entries and a deletion is never lost on the way.
constexpr int max_bucket_bits = 11;  // 2,048 buckets: 8 KiB of digests per family
constexpr size_t docs_per_bucket = 4;
// A `have` list up to this many bytes goes as before; above it, buckets.
constexpr size_t max_have_bytes = 16 * 1024;
// Follow-up push-pulls per second (each is one bounded exchange): the chain's brake.
constexpr uint32_t max_followups_per_second = 200;

uint64_t key_hash(std::string_view key) {
  static const unsigned char hash_key[crypto_shorthash_KEYBYTES] = {
      'm', 'e', 'r', 'i', 'd', 'i', 'a', 'n', '-', 'b', 'u', 'c', 'k', 'e', 't', '1'};
  unsigned char out[crypto_shorthash_BYTES];
  crypto_shorthash(out, reinterpret_cast<const unsigned char*>(key.data()), key.size(), hash_key);
  uint64_t h;
  std::memcpy(&h, out, sizeof h);
  return h;
}

uint32_t bucket_of(std::string_view key, int bits) {
  return bits == 0 ? 0 : static_cast<uint32_t>(key_hash(key) >> (64 - bits));
}

// The bucket digest's share of one entry; tombstones count, marked apart from live entries.
uint64_t bucket_share(const std::string& key, const lww_entry& e) {
  uint64_t h = entry_hash(key, e);
  return e.deleted ? h * 0x9e3779b97f4a7c15ULL + 1 : h;
}

int bits_for(size_t entries) {
  int bits = 0;
  while (bits < max_bucket_bits && (size_t{1} << bits) * docs_per_bucket < entries) ++bits;
  return bits;
}

// One family's entries grouped by bucket, with a digest per bucket.
struct bucketed {
  int bits = 0;
  std::vector<uint32_t> digest;
  std::vector<std::vector<std::pair<const std::string*, const lww_entry*>>> entries;
};

bucketed bucketize(const lww_map& m, int bits) {
  bucketed b;
  b.bits = bits;
  b.digest.assign(size_t{1} << bits, 0);
  b.entries.resize(size_t{1} << bits);
  std::vector<uint64_t> sums(size_t{1} << bits, 0);
  for (const auto& [k, e] : m.entries()) {
    uint32_t i = bucket_of(k, bits);
    sums[i] += bucket_share(k, e);
    b.entries[i].emplace_back(&k, &e);
  }
  for (size_t i = 0; i < sums.size(); ++i) b.digest[i] = static_cast<uint32_t>(sums[i]);
  return b;
}

std::string pack_digests(const std::vector<uint32_t>& digests) {
  std::string out;
  out.reserve(digests.size() * 4);
  for (uint32_t d : digests)
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>(d >> (8 * i)));
  return out;
}

// Unpacks 2^k digests; false unless the size is 4 * 2^k with k <= max_bucket_bits.
bool unpack_digests(const std::string& in, int* bits, std::vector<uint32_t>* out) {
  size_t n = in.size() / 4;
  if (in.size() % 4 != 0 || n == 0 || (n & (n - 1)) != 0 || n > (size_t{1} << max_bucket_bits))
    return false;
  *bits = 0;
  while ((size_t{1} << *bits) < n) ++*bits;
  out->resize(n);
  const auto* p = reinterpret_cast<const unsigned char*>(in.data());
  for (size_t i = 0; i < n; ++i)
    (*out)[i] = uint32_t{p[4 * i]} | (uint32_t{p[4 * i + 1]} << 8) |
                (uint32_t{p[4 * i + 2]} << 16) | (uint32_t{p[4 * i + 3]} << 24);
  return true;
}

// True when (version, origin) a orders after b: the LWW order on the stamp alone.
bool newer_stamp(hlc_time av, const std::string& ao, hlc_time bv, const std::string& bo) {
  return av > bv || (av == bv && ao > bo);
}

gen::doc_version version_of(doc_family f, const std::string& key, const lww_entry* e) {
  gen::doc_version v;
  v.__set_family(static_cast<int8_t>(f));
  v.__set_key(key);
  v.__set_version(e ? static_cast<int64_t>(e->version) : 0);
  v.__set_origin(e ? e->origin : std::string());
  return v;
}

size_t wire_size(const std::string& key, const lww_entry& e) {
  return key.size() + e.origin.size() + e.value.size() + 24;
}

size_t wire_size(const gen::doc_version& v) {
  return v.key.size() + v.origin.size() + 20;
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
  // Lock order: persist_mu, then mu. mu guards the maps, counters and everything below; it is
  // never held across a store write, so the data path (count) and readers never wait for a
  // disk. persist_mu orders store writes (each key's newest version is written last); only
  // writers take it: local puts, the gossip handlers' flushes, counter persistence, GC.
  std::mutex persist_mu;
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
  std::unordered_set<uint64_t> unpersisted;            // counters changed since persist_counters
  std::set<std::pair<doc_family, std::string>> dirty;  // merged from peers, not yet stored
  std::atomic<uint64_t> persist_errors{0};

  struct peer_view {
    std::string summary;
    millis heard{0};
    millis last_sync{-1000000};
  };
  std::unordered_map<std::string, peer_view> peers;
  std::string last_own_summary;
  millis last_own_change{0};
  bool want_pull = false;  // a notice named a newer document than the one held here
  // Bucketed anti-entropy (see above): what the last reply showed, for the next request.
  std::set<std::pair<doc_family, std::string>> sync_wants;   // the responder holds newer
  std::set<std::pair<doc_family, std::string>> sync_pushes;  // the responder lacks
  size_t peer_sizes[family_count] = {0, 0};  // documents per family in the last reply's sender
  millis followup_window{0};
  uint32_t followups_in_window = 0;
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
  // Called holding persist_mu and not mu.
  bool persist(doc_family f, const std::string& key, const lww_entry& e, bool sync,
               std::string* error) {
    if (!store) return true;
    auto st = store->put(store_family(f), key, write_compact(to_gen(f, key, e)),
                         storage::write_options{sync});
    if (st.is_ok()) return true;
    persist_errors.fetch_add(1, std::memory_order_relaxed);
    if (error) *error = "store: " + st.message();
    logger()->error("cannot persist {}: {}", key, st.message());
    return false;
  }

  // Writes the current version of every document merged from peers since the last flush (not
  // synced: a peer still holds them). Called holding persist_mu and not mu.
  void flush_dirty_held() {
    std::vector<storage::write_op> ops;
    {
      std::lock_guard lock(mu);
      if (dirty.empty()) return;
      ops.reserve(dirty.size());
      for (const auto& [f, key] : dirty) {
        const lww_entry* e = map(f).find(key);
        std::optional<std::string> value;
        if (e) value = write_compact(to_gen(f, key, *e));
        ops.push_back({store_family(f), key, std::move(value)});
      }
      dirty.clear();
    }
    auto st = store->write(ops);
    if (!st.is_ok()) {
      persist_errors.fetch_add(1, std::memory_order_relaxed);
      logger()->error("cannot persist {} documents from peers: {}", ops.size(), st.message());
    }
  }

  // Calls the change handler for each family flagged in changed. Called without mu (the
  // handler may read the state); the handler is copied under it, as set_change_handler may run.
  void notify(const bool* changed) {
    std::function<void(doc_family)> handler;
    {
      std::lock_guard lock(mu);
      handler = on_change;
    }
    if (!handler) return;
    for (size_t i = 0; i < family_count; ++i)
      if (changed[i]) handler(static_cast<doc_family>(i));
  }
  void notify(doc_family f) {
    bool changed[family_count] = {};
    changed[static_cast<size_t>(f)] = true;
    notify(changed);
  }

  // Stores what the gossip handlers merged. Called without either lock.
  void flush_dirty() {
    if (!store) return;
    std::lock_guard order(persist_mu);
    flush_dirty_held();
  }

  // Merges a remote version; returns true when it changed the map. Under mu; flush_dirty
  // stores it once mu is released.
  bool merge_remote(doc_family f, const std::string& key, const lww_entry& e) {
    if (!map(f).merge(key, e)) return false;
    ++stats.docs_applied;
    if (store) dirty.emplace(f, key);
    return true;
  }

  // Writes a local version: stamped under mu, persisted holding persist_mu only, then merged
  // (a failed write leaves nothing behind). Called without either lock.
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
    std::lock_guard order(persist_mu);
    {
      std::lock_guard lock(mu);
      e.version = clock.now();
      e.origin = opt.self_id;
    }
    if (!persist(f, key, e, sync, error)) return 0;
    {
      std::lock_guard lock(mu);
      map(f).merge(key, e);
      if (pending_index.emplace(f, key).second) pending_docs.emplace_back(f, key);
    }
    if (store) flush_dirty_held();
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
    for (size_t taken = 0; taken < max_payloads && counters.dirty() > 0; ++taken) {
      auto updates = counters.take_dirty(per_payload);
      if (updates.empty()) break;
      stats.counter_updates_sent += updates.size();
      out.push_back(encode_delta({}, {}, pack_counter_updates(updates)));
    }
  }

  // Merges origin's slot values; for each that changed something, adds (key, window, the other
  // nodes' total) to changes for the counter observer. Under mu.
  void merge_counter_updates(const std::string& origin, const std::vector<counter_update>& updates,
                             std::vector<std::tuple<uint64_t, uint32_t, uint64_t>>& changes) {
    uint16_t node = counters.node_index(origin);
    for (const auto& u : updates) {
      if (!counters.merge(node, u)) continue;
      ++stats.counter_updates_applied;
      note_counter(u.key);
      if (!counter_observer) continue;
      uint64_t others = 0;
      counters.for_each_slot(u.key, u.window, [&](uint16_t n, uint32_t c) {
        if (n != 0) others += c;
      });
      changes.emplace_back(u.key, u.window, others);
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

  void set_reply_header(gen::state_sync_app& reply) {
    reply.__set_config_digest(static_cast<int64_t>(maps[0].digest()));
    reply.__set_breaker_digest(static_cast<int64_t>(maps[1].digest()));
    reply.__set_clock(static_cast<int64_t>(clock.now()));
    std::vector<int64_t> sizes;
    for (const auto& m : maps) sizes.push_back(static_cast<int64_t>(m.entries().size()));
    reply.__set_sizes(std::move(sizes));
  }

  // Serves a request that lists every version the asker holds: the documents it lacks.
  std::string serve_have(const gen::state_sync_app& req, gen::state_sync_app& reply) {
    set_reply_header(reply);
    bool same = static_cast<uint64_t>(req.config_digest) == maps[0].digest() &&
                static_cast<uint64_t>(req.breaker_digest) == maps[1].digest();
    if (same) return write_compact(reply);
    std::map<std::pair<int8_t, std::string_view>, const gen::doc_version*> theirs;
    for (const auto& v : req.have) theirs[{v.family, v.key}] = &v;
    std::vector<gen::doc_entry> docs;
    size_t bytes = 0;
    for (size_t i = 0; i < family_count && reply.complete; ++i) {
      for (const auto& [k, e] : maps[i].entries()) {
        auto it = theirs.find({static_cast<int8_t>(i), k});
        if (it != theirs.end() &&
            !newer_stamp(e.version, e.origin, static_cast<hlc_time>(it->second->version),
                         it->second->origin))
          continue;
        size_t size = wire_size(k, e);
        if ((bytes + size > opt.max_sync_bytes && !docs.empty()) ||
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

  // Serves a bucketed request (see the top of this file): merges what the asker handed over,
  // then answers its wants and its differing buckets within max_sync_bytes.
  std::string serve_buckets(const gen::state_sync_app& req, gen::state_sync_app& reply,
                            bool* changed) {
    for (const auto& g : req.docs) {
      if (!valid_family(g.family)) {
        ++stats.malformed;
        continue;
      }
      ++stats.sync_docs_received;
      if (merge_remote(static_cast<doc_family>(g.family), g.key, from_gen(g)))
        changed[g.family] = true;
    }
    set_reply_header(reply);
    size_t budget = opt.max_sync_bytes;
    std::vector<gen::doc_entry> docs;
    std::vector<gen::doc_version> versions;
    std::vector<int32_t> listed;
    std::set<std::pair<int8_t, std::string_view>> sent;
    auto full = [&](size_t size) {
      return (size > budget && !(docs.empty() && versions.empty())) ||
             docs.size() >= static_cast<size_t>(max_container_elements) ||
             versions.size() >= static_cast<size_t>(max_container_elements);
    };
    auto add_doc = [&](doc_family f, const std::string& k, const lww_entry& e) {
      budget -= std::min(budget, wire_size(k, e));
      docs.push_back(to_gen(f, k, e));
      sent.emplace(static_cast<int8_t>(f), k);
    };
    for (const auto& w : req.want) {
      if (!valid_family(w.family)) continue;
      auto f = static_cast<doc_family>(w.family);
      auto it = map(f).entries().find(w.key);
      if (it == map(f).entries().end() || !newer_stamp(it->second.version, it->second.origin,
                                                       static_cast<hlc_time>(w.version), w.origin))
        continue;
      if (full(wire_size(it->first, it->second))) {
        reply.__set_complete(false);
        break;
      }
      add_doc(f, it->first, it->second);
    }
    for (size_t i = 0; i < family_count && i < req.buckets.size() && reply.complete; ++i) {
      auto f = static_cast<doc_family>(i);
      int bits = 0;
      std::vector<uint32_t> theirs;
      if (!unpack_digests(req.buckets[i], &bits, &theirs)) {
        ++stats.malformed;
        continue;
      }
      bucketed mine = bucketize(map(f), bits);
      for (size_t b = 0; b < theirs.size() && reply.complete; ++b) {
        if (mine.digest[b] == theirs[b]) continue;
        if (theirs[b] == 0) {
          // The asker holds nothing here: every entry of the bucket is news to it.
          for (const auto& [k, e] : mine.entries[b]) {
            if (sent.count({static_cast<int8_t>(i), *k})) continue;
            if (full(wire_size(*k, *e))) {
              reply.__set_complete(false);
              break;
            }
            add_doc(f, *k, *e);
          }
          continue;
        }
        size_t size = 0;
        for (const auto& [k, e] : mine.entries[b]) size += k->size() + e->origin.size() + 20;
        if (full(size) || versions.size() + mine.entries[b].size() >
                              static_cast<size_t>(max_container_elements)) {
          reply.__set_complete(false);
          break;
        }
        budget -= std::min(budget, size + 5);
        for (const auto& [k, e] : mine.entries[b]) versions.push_back(version_of(f, *k, e));
        listed.push_back(static_cast<int32_t>((i << 20) | (static_cast<size_t>(bits) << 16) | b));
      }
    }
    stats.sync_docs_sent += docs.size();
    if (!docs.empty()) reply.__set_docs(std::move(docs));
    if (!versions.empty()) reply.__set_versions(std::move(versions));
    reply.__set_listed(std::move(listed));
    return write_compact(reply);
  }

  // Compares the buckets a reply listed with this node's: what the responder holds newer goes
  // to sync_wants, what it lacks to sync_pushes (both replaced, capped).
  void compare_listed(const gen::state_sync_app& reply) {
    sync_wants.clear();
    sync_pushes.clear();
    const auto cap = static_cast<size_t>(max_container_elements);
    std::map<std::pair<int8_t, std::string_view>, const gen::doc_version*> theirs;
    for (const auto& v : reply.versions) {
      if (!valid_family(v.family)) continue;
      theirs[{v.family, v.key}] = &v;
      const lww_entry* e = map(static_cast<doc_family>(v.family)).find(v.key);
      if ((!e || newer_stamp(static_cast<hlc_time>(v.version), v.origin, e->version, e->origin)) &&
          sync_wants.size() < cap)
        sync_wants.emplace(static_cast<doc_family>(v.family), v.key);
    }
    std::map<std::pair<size_t, int>, bucketed> cache;
    for (int32_t l : reply.listed) {
      auto u = static_cast<uint32_t>(l);
      size_t f = u >> 20;
      int bits = static_cast<int>((u >> 16) & 0xf);
      uint32_t b = u & 0xffff;
      if (f >= family_count || bits > max_bucket_bits || b >= (uint32_t{1} << bits)) {
        ++stats.malformed;
        continue;
      }
      auto it = cache.find({f, bits});
      if (it == cache.end()) it = cache.emplace(std::pair{f, bits}, bucketize(maps[f], bits)).first;
      for (const auto& [k, e] : it->second.entries[b]) {
        auto t = theirs.find({static_cast<int8_t>(f), *k});
        bool lacks = t == theirs.end() ||
                     newer_stamp(e->version, e->origin, static_cast<hlc_time>(t->second->version),
                                 t->second->origin);
        if (lacks && sync_pushes.size() < cap) sync_pushes.emplace(static_cast<doc_family>(f), *k);
      }
    }
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
  lww_entry e;
  e.value = std::move(value);
  hlc_time v = impl_->write(f, key, std::move(e), error, sync);
  if (v) impl_->notify(f);
  return v;
}

hlc_time replicated_state::remove(doc_family f, const std::string& key, std::string* error) {
  lww_entry e;
  e.deleted = true;
  hlc_time v = impl_->write(f, key, std::move(e), error);
  if (v) impl_->notify(f);
  return v;
}

void replicated_state::seed(doc_family f, const std::string& key, std::string value) {
  bool changed = false;
  {
    auto& d = *impl_;
    std::lock_guard order(d.persist_mu);
    {
      std::lock_guard lock(d.mu);
      if (d.map(f).find(key)) return;
    }
    lww_entry e;
    e.version = 0;
    unsigned char h[16];
    crypto_generichash(h, sizeof h, reinterpret_cast<const unsigned char*>(value.data()),
                       value.size(), nullptr, 0);
    uint64_t x;
    std::memcpy(&x, h, sizeof x);
    e.origin = "seed:" + hex(x);
    e.value = std::move(value);
    if (d.persist(f, key, e, true, nullptr)) {
      std::lock_guard lock(d.mu);
      changed = d.map(f).merge(key, e);
    }
  }
  if (changed) impl_->notify(f);
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

size_t replicated_state::resend_counters() {
  auto& d = *impl_;
  std::lock_guard lock(d.mu);
  return d.counters.requeue_own(d.clock.wall_ms());
}

void replicated_state::persist_counters() {
  auto& d = *impl_;
  std::lock_guard order(d.persist_mu);
  std::unique_lock lock(d.mu);
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
  lock.unlock();
  auto st = d.store->write(ops);
  if (!st.is_ok()) {
    d.persist_errors.fetch_add(1, std::memory_order_relaxed);
    logger()->error("cannot persist counters: {}", st.message());
  }
}

bool replicated_state::converged(const std::vector<std::string>& peers, millis now) const {
  std::lock_guard lock(impl_->mu);
  return impl_->converged_locked(peers, now);
}

void replicated_state::collect_garbage(const std::vector<std::string>& peers, millis now) {
  auto& d = *impl_;
  std::lock_guard order(d.persist_mu);  // no write of these keys may land between
  std::vector<storage::write_op> ops;
  {
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
      for (auto& k : gone)
        ops.push_back({store_family(static_cast<doc_family>(i)), std::move(k), std::nullopt});
    }
  }
  if (!ops.empty() && !d.store->write(ops).is_ok())
    d.persist_errors.fetch_add(1, std::memory_order_relaxed);
}

state_stats replicated_state::stats() const {
  std::lock_guard lock(impl_->mu);
  state_stats s = impl_->stats;
  s.max_clock_skew_ms = impl_->clock.max_observed_skew_ms();
  s.persist_errors = impl_->persist_errors.load(std::memory_order_relaxed);
  s.documents = impl_->maps[0].live_size();
  s.counters = impl_->counters.size();
  s.counter_evictions = impl_->counters.evictions();
  s.counter_updates_dropped = impl_->counters.dropped();
  s.counter_backlog = impl_->counters.dirty();
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

void replicated_state::expedite() {
  std::lock_guard lock(impl_->mu);
  impl_->next_counter_flush = millis(0);
}

std::vector<std::string> replicated_state::take_deltas(millis now, size_t room) {
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
    d.take_counter_deltas(out, std::min(room, d.opt.max_payloads_per_round));
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
      d.merge_counter_updates(delta.origin, updates, counter_changes);
      double lag =
          static_cast<double>(d.clock.wall_ms() - hlc_unix_ms(static_cast<hlc_time>(delta.clock)));
      d.stats.counter_sync_lag_ms =
          d.stats.counter_sync_lag_ms == 0 ? lag : 0.9 * d.stats.counter_sync_lag_ms + 0.1 * lag;
    }
    observer = d.counter_observer;
  }
  d.flush_dirty();
  if (observer)
    for (const auto& [key, window, others] : counter_changes) observer(key, window, others);
  d.notify(changed);
}

void replicated_state::merge_counts(const std::string& origin,
                                    const std::vector<counter_update>& updates) {
  auto& d = *impl_;
  std::vector<std::tuple<uint64_t, uint32_t, uint64_t>> counter_changes;
  std::function<void(uint64_t, uint32_t, uint64_t)> observer;
  {
    std::lock_guard lock(d.mu);
    if (origin.empty()) return;
    d.merge_counter_updates(origin, updates, counter_changes);
    observer = d.counter_observer;
  }
  d.flush_dirty();
  if (observer)
    for (const auto& [key, window, others] : counter_changes) observer(key, window, others);
}

std::string replicated_state::sync_request() {
  auto& d = *impl_;
  std::lock_guard lock(d.mu);
  gen::state_sync_app s;
  s.__set_version(static_cast<int16_t>(protocol_version));
  s.__set_config_digest(static_cast<int64_t>(d.maps[0].digest()));
  s.__set_breaker_digest(static_cast<int64_t>(d.maps[1].digest()));
  s.__set_clock(static_cast<int64_t>(d.clock.now()));
  s.__set_complete(true);
  std::vector<int64_t> sizes;
  size_t have_bytes = 0;
  for (size_t i = 0; i < family_count; ++i) {
    sizes.push_back(static_cast<int64_t>(d.maps[i].entries().size()));
    for (const auto& [k, e] : d.maps[i].entries()) have_bytes += k.size() + e.origin.size() + 20;
  }
  s.__set_sizes(std::move(sizes));
  if (have_bytes <= max_have_bytes) {
    // Small: every version this node holds, as nodes always did (one exact round trip).
    std::vector<gen::doc_version> have;
    for (size_t i = 0; i < family_count; ++i)
      for (const auto& [k, e] : d.maps[i].entries())
        have.push_back(version_of(static_cast<doc_family>(i), k, &e));
    if (!have.empty()) s.__set_have(std::move(have));
    return write_compact(s);
  }
  size_t budget = d.opt.max_sync_bytes;
  std::vector<std::string> buckets;
  for (size_t i = 0; i < family_count; ++i) {
    int bits = bits_for(std::max(d.maps[i].entries().size(), d.peer_sizes[i]));
    buckets.push_back(pack_digests(bucketize(d.maps[i], bits).digest));
    budget -= std::min(budget, buckets.back().size());
  }
  s.__set_buckets(std::move(buckets));
  // What the last reply showed: documents to ask for and documents to hand over.
  std::vector<gen::doc_version> want;
  for (const auto& [f, key] : d.sync_wants) {
    auto v = version_of(f, key, d.map(f).find(key));
    if (wire_size(v) > budget / 4 || want.size() >= static_cast<size_t>(max_container_elements))
      break;
    budget -= wire_size(v);
    want.push_back(std::move(v));
  }
  std::vector<gen::doc_entry> docs;
  for (const auto& [f, key] : d.sync_pushes) {
    const lww_entry* e = d.map(f).find(key);
    if (!e) continue;
    if ((wire_size(key, *e) > budget && !docs.empty()) ||
        docs.size() >= static_cast<size_t>(max_container_elements))
      break;
    budget -= std::min(budget, wire_size(key, *e));
    docs.push_back(to_gen(f, key, *e));
  }
  d.stats.sync_docs_pushed += docs.size();
  if (!want.empty()) s.__set_want(std::move(want));
  if (!docs.empty()) s.__set_docs(std::move(docs));
  return write_compact(s);
}

std::string replicated_state::on_sync_request(const std::string& from,
                                              const std::string& app_state) {
  auto& d = *impl_;
  bool changed[family_count] = {false, false};
  std::string out;
  {
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
    reply.__set_complete(true);
    if (req.__isset.buckets) {
      out = d.serve_buckets(req, reply, changed);
    } else {
      reply.__set_config_digest(static_cast<int64_t>(d.maps[0].digest()));
      reply.__set_breaker_digest(static_cast<int64_t>(d.maps[1].digest()));
      reply.__set_clock(static_cast<int64_t>(d.clock.now()));
      out = d.serve_have(req, reply);
    }
  }
  d.flush_dirty();
  d.notify(changed);
  return out;
}

bool replicated_state::on_sync_reply(const std::string& from, const std::string& app_state) {
  auto& d = *impl_;
  bool changed[family_count] = {false, false};
  bool again = false;
  {
    std::lock_guard lock(d.mu);
    gen::state_sync_app reply;
    if (read_compact(app_state, &reply) != wire_error::none) {
      ++d.stats.malformed;
      return false;
    }
    if (!d.observe(reply.clock, from)) return false;
    for (const auto& g : reply.docs) {
      if (!valid_family(g.family)) {
        ++d.stats.malformed;
        continue;
      }
      ++d.stats.sync_docs_received;
      if (d.merge_remote(static_cast<doc_family>(g.family), g.key, from_gen(g)))
        changed[g.family] = true;
    }
    for (size_t i = 0; i < family_count && i < reply.sizes.size(); ++i)
      d.peer_sizes[i] = static_cast<size_t>(std::clamp<int64_t>(reply.sizes[i], 0, 1 << 30));
    if (reply.__isset.listed) d.compare_listed(reply);
    again = !reply.complete || !d.sync_wants.empty() || !d.sync_pushes.empty();
    if (again) {
      // The brake: a chain that runs too fast falls back to the summary-driven pace.
      millis second(d.clock.wall_ms() / 1000);
      if (second != d.followup_window) {
        d.followup_window = second;
        d.followups_in_window = 0;
      }
      if (++d.followups_in_window > max_followups_per_second) {
        d.want_pull = true;
        again = false;
      } else {
        ++d.stats.sync_followups;
      }
    }
  }
  d.flush_dirty();
  d.notify(changed);
  return again;
}

}  // namespace meridian::cluster
