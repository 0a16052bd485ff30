#include "meridian/cluster/wire.h"

#include <sodium.h>
#include <thrift/TConfiguration.h>
#include <thrift/protocol/TCompactProtocol.h>
#include <thrift/transport/TBufferTransports.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>

#include "gossip_types.h"
#include "thrift_codec.h"

namespace meridian::cluster {
namespace {

using namespace detail;

constexpr char seal_magic[4] = {'M', 'R', 'D', '1'};
constexpr size_t nonce_size = crypto_aead_xchacha20poly1305_ietf_NPUBBYTES;
constexpr size_t tag_size = crypto_aead_xchacha20poly1305_ietf_ABYTES;
static_assert(seal_overhead == sizeof(seal_magic) + nonce_size + tag_size);
static_assert(std::tuple_size_v<cluster_key> == crypto_aead_xchacha20poly1305_ietf_KEYBYTES);

void ensure_sodium() {
  // Once per process (a function-local static is initialised thread-safely), not per packet:
  // sodium_init takes a lock. It fails only when the system has no usable randomness.
  static const bool ready = sodium_init() >= 0;
  if (!ready) std::abort();
}

// ---- messages.h -> generated types ----

gen::member_info to_gen(const member_info& m) {
  gen::member_info g;
  g.__set_id(m.id);
  g.__set_address(m.address);
  g.__set_region(m.region);
  g.__set_zone(m.zone);
  return g;
}

gen::member_update to_gen(const member_update& u) {
  gen::member_update g;
  g.__set_member(to_gen(u.member));
  g.__set_incarnation(static_cast<int64_t>(u.incarnation));
  g.__set_state(static_cast<int8_t>(u.state));
  g.__set_from_id(u.from);
  return g;
}

gen::ping to_gen(const ping_msg& m) {
  gen::ping g;
  g.__set_seq(static_cast<int64_t>(m.seq));
  g.__set_target_id(m.target_id);
  return g;
}

gen::ping_req to_gen(const ping_req_msg& m) {
  gen::ping_req g;
  g.__set_seq(static_cast<int64_t>(m.seq));
  g.__set_target_id(m.target_id);
  g.__set_target_address(m.target_address);
  return g;
}

gen::ack to_gen(const ack_msg& m) {
  gen::ack g;
  g.__set_seq(static_cast<int64_t>(m.seq));
  if (m.wall_ms != 0) g.__set_wall_ms(m.wall_ms);
  return g;
}

gen::nack to_gen(const nack_msg& m) {
  gen::nack g;
  g.__set_seq(static_cast<int64_t>(m.seq));
  return g;
}

gen::send_stamp to_gen(const send_stamp& m) {
  gen::send_stamp g;
  g.__set_sent_ms(m.sent_ms);
  g.__set_boot(static_cast<int64_t>(m.boot));
  g.__set_seq(static_cast<int64_t>(m.seq));
  return g;
}

send_stamp from_gen(const gen::send_stamp& g) {
  return {.sent_ms = g.sent_ms,
          .boot = static_cast<uint64_t>(g.boot),
          .seq = static_cast<uint64_t>(g.seq)};
}

template <typename G, typename M>
std::vector<G> to_gen_list(const std::vector<M>& in) {
  std::vector<G> out;
  out.reserve(in.size());
  for (const auto& m : in) out.push_back(to_gen(m));
  return out;
}

// ---- generated types -> messages.h (false when a value is out of range) ----

bool from_gen(const gen::member_info& g, member_info* m) {
  m->id = g.id;
  m->address = g.address;
  m->region = g.region;
  m->zone = g.zone;
  return true;
}

bool from_gen(const gen::member_update& g, member_update* u) {
  // Only the four known states are valid; anything else is a malformed (or hostile) packet.
  if (g.state < 0 || g.state > static_cast<int8_t>(member_state::left)) return false;
  from_gen(g.member, &u->member);
  u->incarnation = static_cast<uint64_t>(g.incarnation);
  u->state = static_cast<member_state>(g.state);
  u->from = g.from_id;
  return true;
}

bool from_gen(const gen::ping& g, ping_msg* m) {
  m->seq = static_cast<uint64_t>(g.seq);
  m->target_id = g.target_id;
  return true;
}

bool from_gen(const gen::ping_req& g, ping_req_msg* m) {
  m->seq = static_cast<uint64_t>(g.seq);
  m->target_id = g.target_id;
  m->target_address = g.target_address;
  return true;
}

bool from_gen(const gen::ack& g, ack_msg* m) {
  m->seq = static_cast<uint64_t>(g.seq);
  m->wall_ms = g.__isset.wall_ms ? g.wall_ms : 0;
  return true;
}

bool from_gen(const gen::nack& g, nack_msg* m) {
  m->seq = static_cast<uint64_t>(g.seq);
  return true;
}

template <typename G, typename M>
bool from_gen_list(const std::vector<G>& in, std::vector<M>* out) {
  out->resize(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    if (!from_gen(in[i], &(*out)[i])) return false;
  }
  return true;
}

// Associated data: the label, ':', then the protocol version as 2 bytes big-endian. The version
// has fixed width at the end, so no (label, version) pair aliases another.
std::string associated_data(std::string_view label) {
  std::string ad;
  ad.reserve(label.size() + 3);
  ad.append(label);
  ad.push_back(':');
  ad.push_back(static_cast<char>(protocol_version >> 8));
  ad.push_back(static_cast<char>(protocol_version & 0xff));
  return ad;
}

const unsigned char* bytes_of(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

}  // namespace

const char* to_string(member_state s) {
  switch (s) {
    case member_state::alive:
      return "alive";
    case member_state::suspect:
      return "suspect";
    case member_state::dead:
      return "dead";
    case member_state::left:
      return "left";
  }
  return "unknown";
}

const char* to_string(wire_error e) {
  switch (e) {
    case wire_error::none:
      return "none";
    case wire_error::too_short:
      return "too_short";
    case wire_error::bad_magic:
      return "bad_magic";
    case wire_error::unauthenticated:
      return "unauthenticated";
    case wire_error::malformed:
      return "malformed";
    case wire_error::bad_version:
      return "bad_version";
    case wire_error::too_large:
      return "too_large";
  }
  return "unknown";
}

std::string encode(const packet& p) {
  gen::packet g;
  g.__set_version(static_cast<int16_t>(p.version));
  g.__set_sender_id(p.sender_id);
  g.__set_sender_address(p.sender_address);
  // Optional lists: an empty one is left out of the encoding (absent decodes as empty).
  if (!p.pings.empty()) g.__set_pings(to_gen_list<gen::ping>(p.pings));
  if (!p.ping_reqs.empty()) g.__set_ping_reqs(to_gen_list<gen::ping_req>(p.ping_reqs));
  if (!p.acks.empty()) g.__set_acks(to_gen_list<gen::ack>(p.acks));
  if (!p.nacks.empty()) g.__set_nacks(to_gen_list<gen::nack>(p.nacks));
  if (!p.updates.empty()) g.__set_updates(to_gen_list<gen::member_update>(p.updates));
  if (!p.payloads.empty()) g.__set_payloads(p.payloads);
  if (!p.summary.empty()) g.__set_summary(p.summary);
  if (p.stamp != send_stamp{}) g.__set_stamp(to_gen(p.stamp));
  if (!p.direct.empty()) g.__set_direct(p.direct);
  return write_compact(g);
}

std::string encode(const state_sync& s) {
  gen::state_sync g;
  g.__set_version(static_cast<int16_t>(s.version));
  g.__set_sender_id(s.sender_id);
  g.__set_join(s.join);
  g.__set_members(to_gen_list<gen::member_update>(s.members));
  g.__set_app_state(s.app_state);
  if (s.stamp != send_stamp{}) g.__set_stamp(to_gen(s.stamp));
  return write_compact(g);
}

wire_error decode(std::string_view bytes, packet* out) {
  gen::packet g;
  if (wire_error e = read_compact(bytes, &g); e != wire_error::none) return e;
  packet p;
  p.version = static_cast<uint16_t>(g.version);
  p.sender_id = std::move(g.sender_id);
  p.sender_address = std::move(g.sender_address);
  if (!from_gen_list(g.pings, &p.pings) || !from_gen_list(g.ping_reqs, &p.ping_reqs) ||
      !from_gen_list(g.acks, &p.acks) || !from_gen_list(g.nacks, &p.nacks) ||
      !from_gen_list(g.updates, &p.updates)) {
    return wire_error::malformed;
  }
  p.payloads = std::move(g.payloads);
  p.summary = std::move(g.summary);
  if (g.__isset.stamp) p.stamp = from_gen(g.stamp);
  p.direct = std::move(g.direct);
  *out = std::move(p);
  return wire_error::none;
}

wire_error decode(std::string_view bytes, state_sync* out) {
  gen::state_sync g;
  if (wire_error e = read_compact(bytes, &g); e != wire_error::none) return e;
  state_sync s;
  s.version = static_cast<uint16_t>(g.version);
  s.sender_id = std::move(g.sender_id);
  s.join = g.join;
  if (!from_gen_list(g.members, &s.members)) return wire_error::malformed;
  s.app_state = std::move(g.app_state);
  if (g.__isset.stamp) s.stamp = from_gen(g.stamp);
  *out = std::move(s);
  return wire_error::none;
}

std::string encode(const strict_batch& b) {
  gen::strict_batch g;
  g.__set_version(static_cast<int16_t>(b.version));
  if (!b.requests.empty()) {
    std::vector<gen::strict_request> rs;
    rs.reserve(b.requests.size());
    for (const auto& r : b.requests) {
      auto& x = rs.emplace_back();
      x.__set_id(static_cast<int32_t>(r.id));
      x.__set_key(static_cast<int64_t>(r.key));
      x.__set_limit(static_cast<int64_t>(r.limit));
      x.__set_window_ms(static_cast<int64_t>(r.window_ms));
      x.__set_flags(static_cast<int8_t>(r.flags));
      if (!r.timezone.empty()) x.__set_timezone(r.timezone);
      if (r.timeout_ms != 0) x.__set_timeout_ms(static_cast<int32_t>(r.timeout_ms));
    }
    g.__set_requests(std::move(rs));
  }
  if (!b.answers.empty()) {
    std::vector<gen::strict_answer> as;
    as.reserve(b.answers.size());
    for (const auto& a : b.answers) {
      auto& x = as.emplace_back();
      x.__set_id(static_cast<int32_t>(a.id));
      x.__set_result(static_cast<int8_t>(a.result));
      x.__set_remaining(static_cast<int64_t>(a.remaining));
      x.__set_reset_ms(static_cast<int64_t>(a.reset_ms));
      x.__set_retry_after_ms(static_cast<int64_t>(a.retry_after_ms));
      if (a.result == strict_result::counted) {
        x.__set_count(static_cast<int64_t>(a.count));
        x.__set_window(static_cast<int32_t>(a.window));
      }
    }
    g.__set_answers(std::move(as));
  }
  if (!b.counts.empty()) {
    std::vector<gen::strict_count> cs;
    cs.reserve(b.counts.size());
    for (const auto& c : b.counts) {
      auto& x = cs.emplace_back();
      x.__set_key(static_cast<int64_t>(c.key));
      x.__set_window_ms(static_cast<int32_t>(c.window_ms));
      x.__set_window(static_cast<int32_t>(c.window));
      x.__set_count(static_cast<int32_t>(c.count));
      if (!c.origin.empty()) x.__set_origin(c.origin);
    }
    g.__set_counts(std::move(cs));
  }
  if (b.ack_seq != 0) g.__set_ack_seq(static_cast<int64_t>(b.ack_seq));
  if (!b.acks.empty()) {
    std::vector<int64_t> acks(b.acks.begin(), b.acks.end());
    g.__set_acks(std::move(acks));
  }
  return write_compact(g);
}

wire_error decode(std::string_view bytes, strict_batch* out) {
  gen::strict_batch g;
  if (wire_error e = read_compact(bytes, &g); e != wire_error::none) return e;
  strict_batch b;
  b.version = static_cast<uint16_t>(g.version);
  b.requests.reserve(g.requests.size());
  for (const auto& x : g.requests) {
    auto& r = b.requests.emplace_back();
    r.id = static_cast<uint32_t>(x.id);
    r.key = static_cast<uint64_t>(x.key);
    r.limit = static_cast<uint64_t>(x.limit);
    r.window_ms = static_cast<uint64_t>(x.window_ms);
    r.flags = static_cast<uint8_t>(x.flags);
    r.timezone = x.timezone;
    r.timeout_ms = static_cast<uint32_t>(std::max<int32_t>(x.timeout_ms, 0));
  }
  b.answers.reserve(g.answers.size());
  for (const auto& x : g.answers) {
    if (x.result < 0 || x.result > static_cast<int8_t>(strict_result::counted))
      return wire_error::malformed;
    auto& a = b.answers.emplace_back();
    a.id = static_cast<uint32_t>(x.id);
    a.result = static_cast<strict_result>(x.result);
    a.remaining = static_cast<uint64_t>(x.remaining);
    a.reset_ms = static_cast<uint64_t>(x.reset_ms);
    a.retry_after_ms = static_cast<uint64_t>(x.retry_after_ms);
    a.count = static_cast<uint64_t>(x.count);
    a.window = static_cast<uint32_t>(x.window);
  }
  b.counts.reserve(g.counts.size());
  for (const auto& x : g.counts) {
    b.counts.push_back({.key = static_cast<uint64_t>(x.key),
                        .window_ms = static_cast<uint32_t>(x.window_ms),
                        .window = static_cast<uint32_t>(x.window),
                        .count = static_cast<uint32_t>(x.count),
                        .origin = x.origin});
  }
  b.ack_seq = static_cast<uint64_t>(g.ack_seq);
  b.acks.assign(g.acks.begin(), g.acks.end());
  *out = std::move(b);
  return wire_error::none;
}

std::string seal(std::string_view plaintext, const cluster_key& key, std::string_view label) {
  ensure_sodium();
  const std::string ad = associated_data(label);
  std::string out(seal_overhead + plaintext.size(), '\0');
  auto* p = reinterpret_cast<unsigned char*>(out.data());
  std::memcpy(p, seal_magic, sizeof(seal_magic));
  unsigned char* nonce = p + sizeof(seal_magic);
  randombytes_buf(nonce, nonce_size);
  unsigned long long written = 0;
  crypto_aead_xchacha20poly1305_ietf_encrypt(nonce + nonce_size, &written, bytes_of(plaintext),
                                             plaintext.size(), bytes_of(ad), ad.size(), nullptr,
                                             nonce, key.data());
  out.resize(sizeof(seal_magic) + nonce_size + written);
  return out;
}

wire_error open(std::string_view sealed, const std::vector<cluster_key>& keys,
                std::string_view label, std::string* plaintext, size_t* key_index) {
  if (sealed.size() < seal_overhead) return wire_error::too_short;
  if (std::memcmp(sealed.data(), seal_magic, sizeof(seal_magic)) != 0) return wire_error::bad_magic;
  if (sealed.size() > max_encoded_size + seal_overhead) return wire_error::too_large;
  ensure_sodium();
  const std::string ad = associated_data(label);
  const unsigned char* nonce = bytes_of(sealed) + sizeof(seal_magic);
  const unsigned char* ciphertext = nonce + nonce_size;
  const size_t ciphertext_size = sealed.size() - sizeof(seal_magic) - nonce_size;
  std::string out(ciphertext_size - tag_size, '\0');
  for (size_t i = 0; i < keys.size(); ++i) {
    unsigned long long written = 0;
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(
            reinterpret_cast<unsigned char*>(out.data()), &written, nullptr, ciphertext,
            ciphertext_size, bytes_of(ad), ad.size(), nonce, keys[i].data()) == 0) {
      out.resize(written);
      *plaintext = std::move(out);
      if (key_index) *key_index = i;
      return wire_error::none;
    }
  }
  return wire_error::unauthenticated;
}

}  // namespace meridian::cluster
