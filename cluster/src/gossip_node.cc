#include "meridian/cluster/gossip_node.h"

#include <spdlog/spdlog.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ip/udp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <cstring>
#include <deque>
#include <future>
#include <map>
#include <mutex>
#include <random>
#include <thread>

#include "meridian/cluster/replay_guard.h"
#include "meridian/cluster/wire.h"
#include "meridian/storage/store.h"

namespace meridian::cluster {
namespace {

namespace asio = boost::asio;
using udp = asio::ip::udp;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
using steady = std::chrono::steady_clock;

// One push-pull message, sealed: open() refuses anything larger, so a longer length prefix is
// refused before a byte of it is read (it used to allocate 4 MiB on the prefix alone).
constexpr size_t max_frame_bytes = max_encoded_size + seal_overhead;
// Frame bodies grow by at most this much ahead of the bytes that actually arrived.
constexpr size_t read_chunk = 16 * 1024;
constexpr auto stream_timeout = std::chrono::seconds(5);
constexpr const char* incarnation_key = "membership/incarnation";

std::shared_ptr<spdlog::logger> logger() {
  auto l = spdlog::get("cluster.swim");
  if (!l) {
    auto sinks = spdlog::default_logger()->sinks();
    l = std::make_shared<spdlog::logger>("cluster.swim", sinks.begin(), sinks.end());
    l->set_level(spdlog::default_logger()->level());
    spdlog::register_logger(l);
  }
  return l;
}

// Splits "host:port" ("[v6]:port" too). Returns false on a malformed address.
bool split_address(const std::string& address, std::string* host, uint16_t* port) {
  auto colon = address.rfind(':');
  if (colon == std::string::npos || colon + 1 >= address.size()) return false;
  *host = address.substr(0, colon);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  unsigned long p = 0;
  for (size_t i = colon + 1; i < address.size(); ++i) {
    if (address[i] < '0' || address[i] > '9') return false;
    p = p * 10 + static_cast<unsigned long>(address[i] - '0');
    if (p > 65535) return false;
  }
  *port = static_cast<uint16_t>(p);
  return p != 0;
}

void put_u32(std::string& out, uint32_t v) {
  out.push_back(static_cast<char>(v >> 24));
  out.push_back(static_cast<char>(v >> 16));
  out.push_back(static_cast<char>(v >> 8));
  out.push_back(static_cast<char>(v));
}

uint32_t get_u32(const unsigned char* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | p[3];
}

// Closes a stream's socket if it is still open when its deadline passes; calls on_expiry first.
template <class Stream>
void arm_deadline(const std::shared_ptr<Stream>& self, steady::duration after = stream_timeout) {
  self->deadline.expires_after(after);
  self->deadline.async_wait([self](const error_code& ec) {
    if (!ec) {
      self->on_expiry();
      error_code ignored;
      self->socket.close(ignored);
    }
  });
}

template <class Stream, class Next>
void read_body(const std::shared_ptr<Stream>& self, size_t expected, Next next) {
  size_t have = self->body.size();
  if (have == expected) return next(true);
  size_t chunk = std::min(read_chunk, expected - have);
  if (!self->reserve(chunk)) return next(false);
  self->body.resize(have + chunk);
  self->socket.async_read_some(
      asio::buffer(self->body.data() + have, chunk),
      [self, expected, have, next](const error_code& ec, size_t n) mutable {
        if (ec) return next(false);
        self->body.resize(have + n);
        // Not sealed at all (another protocol, a port scan): no need to wait for the rest.
        if (have < 4 && have + n >= 4 && std::memcmp(self->body.data(), "MRD1", 4) != 0)
          return next(true);  // open() names it bad_magic
        read_body(self, expected, next);
      });
}

// Reads one frame (a 4-byte big-endian length, then that many bytes) into self->body and calls
// next(true), or next(false) on an I/O error, a length under seal_overhead or over
// max_frame_bytes, or when self->reserve refuses more memory. The body grows as bytes arrive.
template <class Stream, class Next>
void read_frame(const std::shared_ptr<Stream>& self, Next next) {
  asio::async_read(self->socket, asio::buffer(self->header),
                   [self, next](const error_code& ec, size_t) mutable {
                     if (ec) return next(false);
                     uint32_t len = get_u32(self->header.data());
                     if (len < seal_overhead || len > max_frame_bytes) {
                       self->on_oversized();
                       return next(false);
                     }
                     self->body.clear();
                     read_body(self, len, next);
                   });
}

}  // namespace

struct gossip_node::impl final : environment {
  impl(gossip_options o, storage::store* s)
      : opt(std::move(o)),
        store(s),
        udp_socket(ioc),
        acceptor(ioc),
        timer(ioc),
        rng(std::random_device{}()),
        udp_guard(opt.replay_window),
        tcp_guard(opt.replay_window) {
    std::random_device rd;
    while (boot_id == 0) boot_id = (uint64_t{rd()} << 32) | rd();
  }

  gossip_options opt;
  storage::store* store;
  asio::io_context ioc;
  udp::socket udp_socket;
  tcp::acceptor acceptor;
  asio::steady_timer timer;
  std::unique_ptr<membership> swim;
  std::thread thread;
  gossip_counters counters;
  std::mt19937_64 rng;
  std::map<std::string, std::optional<udp::endpoint>> resolved;
  std::array<char, 65536> recv_buf;
  udp::endpoint sender;
  uint16_t port = 0;
  uint64_t persisted_incarnation = 0;
  // Inbound streams: open ones, and those still waiting for their first frame (oldest first).
  size_t inbound_streams = 0;
  size_t inbound_bytes = 0;
  struct serve;
  std::deque<std::weak_ptr<serve>> awaiting_frame;
  steady::time_point last_auth_log{};
  steady::time_point started_at = steady::now();
  steady::time_point last_alone_log{};
  bool seen_peer_alive = false;  // warn_if_alone: joined at least once
  uint64_t auth_failures_since_log = 0;
  // Replay protection (replay_guard.h): this life's id, the sequence numbers sent so far on each
  // channel, and what was received.
  uint64_t boot_id = 0;
  uint64_t udp_seq = 0;
  uint64_t tcp_seq = 0;
  replay_guard udp_guard;
  replay_guard tcp_guard;
  steady::time_point last_replay_log{};
  uint64_t replays_since_log = 0;
  std::atomic<bool> running{false};
  std::atomic<std::thread::id> io_thread{};  // the gossip thread, once it runs

  // --- environment ---------------------------------------------------------------------------

  millis now() override {
    return std::chrono::duration_cast<millis>(steady::now().time_since_epoch());
  }
  uint64_t random() override { return rng(); }
  int64_t wall_ms() override {
    if (opt.wall_ms) return opt.wall_ms();
    return std::chrono::duration_cast<millis>(std::chrono::system_clock::now().time_since_epoch())
        .count();
  }

  std::optional<udp::endpoint> resolve(const std::string& address) {
    auto it = resolved.find(address);
    if (it != resolved.end()) return it->second;
    std::string host;
    uint16_t p = 0;
    std::optional<udp::endpoint> ep;
    if (split_address(address, &host, &p)) {
      error_code ec;
      auto ip = asio::ip::make_address(host, ec);
      if (!ec) {
        ep = udp::endpoint(ip, p);
      } else {
        udp::resolver r(ioc);
        auto results = r.resolve(host, std::to_string(p), ec);
        if (!ec && !results.empty()) ep = results.begin()->endpoint();
      }
    }
    if (resolved.size() > 4096) resolved.clear();  // bounded: addresses come from the network
    resolved[address] = ep;
    return ep;
  }

  void send_packet(const std::string& address, const packet& p) override {
    auto ep = resolve(address);
    if (!ep) return;
    packet stamped = p;
    stamped.stamp = {.sent_ms = wall_ms(), .boot = boot_id, .seq = ++udp_seq};
    auto sealed = seal(encode(stamped), opt.keys.front(), opt.label);
    error_code ec;
    udp_socket.send_to(asio::buffer(sealed), *ep, 0, ec);
    if (!ec) {
      counters.packets_out.fetch_add(1, std::memory_order_relaxed);
      counters.bytes_out.fetch_add(sealed.size(), std::memory_order_relaxed);
    }
  }

  // Urgent rounds (flush_application_now): at most one per urgent_gap; one asked for within the
  // gap goes at its end, and every round is followed by one more at the end of its gap, which
  // takes what callers that throttle themselves did not ask for (sends nothing if nothing new).
  static constexpr millis urgent_gap{5};
  std::unique_ptr<asio::steady_timer> urgent_timer;
  bool urgent_armed = false;    // a gap is running
  bool urgent_pending = false;  // a round was asked for during it
  void urgent_round() {
    if (urgent_armed) {
      urgent_pending = true;
      return;
    }
    urgent_pending = false;
    swim->urgent_application_round(millis(0));
    reschedule();
    urgent_armed = true;
    if (!urgent_timer) urgent_timer = std::make_unique<asio::steady_timer>(ioc);
    urgent_timer->expires_after(urgent_gap);
    urgent_timer->async_wait([this](const error_code& ec) {
      if (ec || !running) return;
      urgent_armed = false;
      if (urgent_pending) {
        urgent_round();
      } else {
        swim->urgent_application_round(millis(0));  // the trailing round
        reschedule();
      }
    });
  }

  void send_direct_now(const std::string& address, std::string message) {
    packet p;
    p.sender_id = opt.self.id;
    p.sender_address = opt.self.address;
    p.direct.push_back(std::move(message));
    counters.direct_out.fetch_add(1, std::memory_order_relaxed);
    send_packet(address, p);
  }

  void send_state(const std::string& address, const state_sync& s) override {
    auto ep = resolve(address);
    if (!ep) return;
    auto frame = sealed_frame(s);
    counters.push_pulls_out.fetch_add(1, std::memory_order_relaxed);
    auto ex = std::make_shared<exchange>(*this, tcp::endpoint(ep->address(), ep->port()));
    ex->run(std::move(frame));
  }

  void on_member_change(const member& m) override {
    if (m.info.id == opt.self.id) {
      persist_incarnation(m.incarnation);
      return;
    }
    auto level = m.state == member_state::alive || m.state == member_state::left
                     ? spdlog::level::info
                     : spdlog::level::warn;
    logger()->log(level, "member {} ({}, {}) is {} at incarnation {}", m.info.id, m.info.address,
                  m.info.region, to_string(m.state), m.incarnation);
    if (opt.on_view_change) opt.on_view_change();
  }

  void on_reachability_change(const member& m) override {
    if (m.unconfirmed) {
      logger()->info(
          "member {} ({}, {}) did not answer a confirmation ping: counted unreachable "
          "by rate limits until it is heard from",
          m.info.id, m.info.address, m.info.region);
    } else {
      logger()->info("member {} ({}, {}) is heard from again", m.info.id, m.info.address,
                     m.info.region);
    }
    if (opt.on_view_change) opt.on_view_change();
  }

  // --- incarnation persistence ----------------------------------------------------------------

  uint64_t load_incarnation() {
    uint64_t stored = 0;
    if (store) {
      std::string value;
      if (store->get(storage::family::meta, incarnation_key, &value).is_ok()) {
        stored = std::strtoull(value.c_str(), nullptr, 10);
      }
    } else {
      stored = static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::seconds>(
                                         std::chrono::system_clock::now().time_since_epoch())
                                         .count());
    }
    return stored + 1;  // a restart always outranks the previous life
  }

  void persist_incarnation(uint64_t incarnation) {
    if (!store || incarnation <= persisted_incarnation) return;
    auto st = store->put(storage::family::meta, incarnation_key, std::to_string(incarnation),
                         {.sync = true});
    if (st.is_ok()) {
      persisted_incarnation = incarnation;
    } else {
      logger()->error("cannot persist incarnation {}: {}", incarnation, st.message());
    }
  }

  // --- receiving -------------------------------------------------------------------------------

  void note_auth_failure(const std::string& from) {
    counters.auth_failures.fetch_add(1, std::memory_order_relaxed);
    ++auth_failures_since_log;
    auto t = steady::now();
    if (t - last_auth_log >= std::chrono::seconds(10)) {
      logger()->warn(
          "dropped {} packet(s) that failed authentication, latest from {}: not sealed with any "
          "installed cluster key (another cluster, or a wrong keyring_file?)",
          auth_failures_since_log, from);
      last_auth_log = t;
      auth_failures_since_log = 0;
    }
  }

  void receive() {
    udp_socket.async_receive_from(asio::buffer(recv_buf), sender,
                                  [this](const error_code& ec, size_t n) {
                                    if (ec == asio::error::operation_aborted || !running) return;
                                    if (!ec) on_datagram(std::string_view(recv_buf.data(), n));
                                    receive();
                                  });
  }

  void on_datagram(std::string_view bytes) {
    counters.packets_in.fetch_add(1, std::memory_order_relaxed);
    counters.bytes_in.fetch_add(bytes.size(), std::memory_order_relaxed);
    std::string plain;
    auto e = open(bytes, opt.keys, opt.label, &plain);
    if (e != wire_error::none) {
      error_code ec;
      note_auth_failure(sender.address().to_string(ec) + ":" + std::to_string(sender.port()));
      return;
    }
    packet p;
    if (decode(plain, &p) != wire_error::none) {
      counters.malformed.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (!admit(udp_guard, p.sender_id, p.stamp, "datagram")) return;
    if (!p.direct.empty()) {
      counters.direct_in.fetch_add(p.direct.size(), std::memory_order_relaxed);
      if (opt.on_direct) {
        for (auto& m : p.direct) opt.on_direct(p.sender_id, p.sender_address, std::move(m));
      }
      // A datagram of direct messages only (send_direct) carries nothing for the membership.
      if (p.pings.empty() && p.ping_reqs.empty() && p.acks.empty() && p.nacks.empty() &&
          p.updates.empty() && p.payloads.empty() && p.summary.empty()) {
        return;
      }
    }
    swim->on_packet(p);
    reschedule();
  }

  // Encodes, seals and frames a state_sync for a push-pull stream.
  std::string sealed_frame(const state_sync& s) {
    state_sync stamped = s;
    stamped.stamp = {.sent_ms = wall_ms(), .boot = boot_id, .seq = ++tcp_seq};
    auto sealed = seal(encode(stamped), opt.keys.front(), opt.label);
    std::string frame;
    put_u32(frame, static_cast<uint32_t>(sealed.size()));
    return frame + sealed;
  }

  // Opens and decodes a sealed state_sync from peer, counting what fails. Returns false then.
  bool open_state(std::string_view sealed, const std::string& peer, state_sync* out) {
    std::string plain;
    if (open(sealed, opt.keys, opt.label, &plain) != wire_error::none) {
      note_auth_failure(peer);
      return false;
    }
    if (decode(plain, out) != wire_error::none) {
      counters.malformed.fetch_add(1, std::memory_order_relaxed);
      return false;
    }
    return admit(tcp_guard, out->sender_id, out->stamp, "push-pull frame");
  }

  // Replay protection for an authenticated, decoded message: false (counted, and logged at most
  // every 10 s) when it is a replay, unstamped or outside the clock window.
  bool admit(replay_guard& guard, const std::string& sender, const send_stamp& stamp,
             const char* what) {
    const int64_t now_ms = wall_ms();
    const auto verdict = guard.check(sender, stamp, now_ms);
    if (verdict == replay_verdict::fresh) return true;
    const bool stale = verdict == replay_verdict::stale || verdict == replay_verdict::unstamped;
    (stale ? counters.stale_refused : counters.replays_refused)
        .fetch_add(1, std::memory_order_relaxed);
    ++replays_since_log;
    auto t = steady::now();
    if (t - last_replay_log >= std::chrono::seconds(10)) {
      std::string why = to_string(verdict);
      if (verdict == replay_verdict::stale) {
        why = fmt::format(
            "stamped {:.1f} s from this node's clock, beyond the {} s window: "
            "a replay, or the clocks are not synchronised (NTP?)",
            static_cast<double>(stamp.sent_ms - now_ms) / 1000.0, guard.window().count() / 1000);
      } else if (verdict == replay_verdict::unstamped) {
        why = "unstamped: a replay of an older version's packet, or a peer older than this one";
      } else if (verdict == replay_verdict::table_full) {
        why = "too many senders within the window";
      } else {
        why += ": seen before (a replay)";
      }
      logger()->warn("refused {} gossip message(s); latest a {} from member {}: {}",
                     replays_since_log, what, sender, why);
      last_replay_log = t;
      replays_since_log = 0;
    }
    return false;
  }

  static std::string describe(const tcp::endpoint& ep) {
    error_code ec;
    return ep.address().to_string(ec) + ":" + std::to_string(ep.port());
  }

  // A push-pull exchange initiated by this node: connect, send, read the reply.
  struct exchange : std::enable_shared_from_this<exchange> {
    exchange(impl& owner, tcp::endpoint ep)
        : d(owner), socket(owner.ioc), deadline(owner.ioc), to(ep) {}
    void run(std::string frame) {
      out = std::move(frame);
      auto self = shared_from_this();
      arm_deadline(self);
      socket.async_connect(to, [self](const error_code& ec) {
        if (ec) return self->done();
        asio::async_write(
            self->socket, asio::buffer(self->out), [self](const error_code& ec, size_t) {
              if (ec) return self->done();
              read_frame(self, [self](bool ok) {
                state_sync reply;
                if (ok && self->d.open_state(self->body, describe(self->to), &reply)) {
                  self->d.swim->on_state_reply(reply);
                  self->d.reschedule();
                }
                self->done();
              });
            });
      });
    }
    void done() {
      deadline.cancel();
      error_code ignored;
      socket.close(ignored);
    }
    // A reply to our own request: bounded by the frame limit and the stream deadline only.
    bool reserve(size_t) { return true; }
    void on_expiry() {}
    void on_oversized() { d.counters.streams_oversized.fetch_add(1, std::memory_order_relaxed); }
    impl& d;
    tcp::socket socket;
    asio::steady_timer deadline;
    tcp::endpoint to;
    std::string out;
    std::array<unsigned char, 4> header{};
    std::string body;
  };

  // A push-pull exchange initiated by a peer: read its table, merge, answer with ours. Counted
  // in inbound_streams from construction to destruction; its buffer in inbound_bytes.
  struct serve : std::enable_shared_from_this<serve> {
    serve(impl& owner, tcp::socket s) : d(owner), socket(std::move(s)), deadline(owner.ioc) {
      ++d.inbound_streams;
      d.counters.streams_active.store(d.inbound_streams, std::memory_order_relaxed);
    }
    ~serve() { release(); }
    // Gives back this stream's place and bytes (at destruction, or when it is dropped).
    void release() {
      if (!counted) return;
      counted = false;
      d.inbound_bytes -= reserved;
      reserved = 0;
      --d.inbound_streams;
      d.counters.streams_active.store(d.inbound_streams, std::memory_order_relaxed);
    }
    void run() {
      auto self = shared_from_this();
      // The whole first frame within first_frame_timeout: a peer that only connects, or trickles
      // a byte at a time, is gone quickly.
      arm_deadline(self, d.opt.first_frame_timeout);
      read_frame(self, [self](bool ok) {
        self->awaiting = false;
        if (!ok) return self->done();
        self->answer();
      });
    }
    // Takes n more bytes of the all-streams budget; false (and counted) when it is spent.
    bool reserve(size_t n) {
      if (body.capacity() >= body.size() + n) return true;
      if (!counted || d.inbound_bytes + n > d.opt.max_inbound_bytes) {
        d.counters.streams_oversized.fetch_add(1, std::memory_order_relaxed);
        return false;
      }
      d.inbound_bytes += n;
      reserved += n;
      return true;
    }
    void on_expiry() {
      if (awaiting) d.counters.streams_timed_out.fetch_add(1, std::memory_order_relaxed);
    }
    void on_oversized() { d.counters.streams_oversized.fetch_add(1, std::memory_order_relaxed); }
    void answer() {
      error_code ec;
      state_sync request;
      // An authentication failure ends the stream at once (done below), as does a bad frame.
      if (!d.open_state(body, describe(socket.remote_endpoint(ec)), &request)) return done();
      std::string().swap(body);
      d.counters.push_pulls_in.fetch_add(1, std::memory_order_relaxed);
      arm_deadline(shared_from_this());  // authenticated: the usual deadline for the answer
      auto reply = d.swim->on_state_request(request);
      d.reschedule();
      out = d.sealed_frame(reply);
      asio::async_write(socket, asio::buffer(out),
                        [self = shared_from_this()](const error_code&, size_t) { self->done(); });
    }
    void done() {
      deadline.cancel();
      error_code ignored;
      socket.shutdown(tcp::socket::shutdown_both, ignored);
      socket.close(ignored);
    }
    impl& d;
    tcp::socket socket;
    asio::steady_timer deadline;
    std::array<unsigned char, 4> header{};
    std::string body;
    std::string out;
    size_t reserved = 0;
    bool counted = true;
    bool awaiting = true;  // no complete first frame yet
  };

  // Makes room for one more inbound stream: drops the oldest one still waiting for its first
  // frame when the cap is reached. Returns false when every open stream is past its first frame.
  bool make_room() {
    while (inbound_streams >= opt.max_inbound_streams && !awaiting_frame.empty()) {
      auto victim = awaiting_frame.front().lock();
      awaiting_frame.pop_front();
      if (!victim || !victim->awaiting || !victim->socket.is_open()) continue;
      counters.streams_refused.fetch_add(1, std::memory_order_relaxed);
      error_code ignored;
      victim->socket.close(ignored);  // its pending read fails; it is destroyed from there
      victim->release();
    }
    return inbound_streams < opt.max_inbound_streams;
  }

  void accept() {
    acceptor.async_accept([this](const error_code& ec, tcp::socket s) {
      if (ec == asio::error::operation_aborted || !running) return;
      if (!ec) {
        if (make_room()) {
          auto session = std::make_shared<serve>(*this, std::move(s));
          // Forget closed entries so the queue stays about as long as the open streams.
          while (!awaiting_frame.empty() && awaiting_frame.front().expired())
            awaiting_frame.pop_front();
          if (awaiting_frame.size() < 4 * opt.max_inbound_streams + 16)
            awaiting_frame.push_back(session);
          session->run();
        } else {
          counters.streams_refused.fetch_add(1, std::memory_order_relaxed);
          error_code ignored;
          s.close(ignored);
        }
      }
      accept();
    });
  }

  // --- timers ----------------------------------------------------------------------------------

  void reschedule() {
    auto wake = swim->next_wakeup();
    auto at = steady::time_point(std::chrono::duration_cast<steady::duration>(wake));
    if (timer.expiry() <= at && timer.expiry() > steady::now()) return;  // an earlier wake is set
    timer.expires_at(at);
    timer.async_wait([this](const error_code& ec) {
      if (ec || !running) return;
      swim->tick();
      warn_if_alone();
      reschedule();
    });
  }

  // A node whose key no peer accepts hears nothing back: its join attempts are dropped by the
  // seeds (which log the authentication failures on their side). Say so here too, at warn,
  // every 30 s while no other member has ever been seen alive (once one has, losing them all is
  // a partition or their failure, which the member state changes already report).
  void warn_if_alone() {
    if (opt.seeds.empty() || seen_peer_alive) return;
    for (const auto& m : swim->members()) {
      if (m.info.id != opt.self.id && m.state == member_state::alive) {
        seen_peer_alive = true;
        return;
      }
    }
    auto t = steady::now();
    if (t - started_at < std::chrono::seconds(10) || t - last_alone_log < std::chrono::seconds(30))
      return;
    last_alone_log = t;
    std::string seeds;
    for (const auto& s : opt.seeds) seeds += (seeds.empty() ? "" : ", ") + s;
    logger()->warn(
        "not joined after {} s: no seed answered ({}); if they are running, they do not accept "
        "this node's cluster key (check keyring_file: its first key must be installed on them)",
        std::chrono::duration_cast<std::chrono::seconds>(t - started_at).count(), seeds);
  }

  // Runs f on the io thread and returns its result (or a default after a second).
  template <class F>
  auto on_io(F f) -> decltype(f()) {
    using R = decltype(f());
    if (!running || std::this_thread::get_id() == io_thread.load()) return f();
    auto task = std::make_shared<std::packaged_task<R()>>(std::move(f));
    auto result = task->get_future();
    asio::post(ioc, [task] { (*task)(); });
    if (result.wait_for(std::chrono::seconds(1)) != std::future_status::ready) return R{};
    return result.get();
  }
};

gossip_node::gossip_node(gossip_options options, storage::store* store)
    : impl_(std::make_unique<impl>(std::move(options), store)) {}

gossip_node::~gossip_node() {
  stop(false);
}

bool gossip_node::start(std::string* error) {
  auto& d = *impl_;
  if (d.opt.keys.empty()) {
    *error = "cluster: no keys in the keyring";
    return false;
  }
  error_code ec;
  auto ip = asio::ip::make_address(d.opt.bind_host, ec);
  if (ec) {
    *error = "cluster.bind " + d.opt.bind_host + ": " + ec.message();
    return false;
  }
  // TCP first (it picks the port when bind_port is 0), then UDP on the same port.
  tcp::endpoint tep(ip, d.opt.bind_port);
  d.acceptor.open(tep.protocol(), ec);
  if (!ec) d.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) d.acceptor.bind(tep, ec);
  if (!ec) d.acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) {
    *error = "cluster.bind " + d.opt.bind_host + ":" + std::to_string(d.opt.bind_port) +
             " (tcp): " + ec.message();
    return false;
  }
  d.port = d.acceptor.local_endpoint().port();
  udp::endpoint uep(ip, d.port);
  d.udp_socket.open(uep.protocol(), ec);
  if (!ec) {
    // Room for bursts (strict rate-limit batches arrive back to back): the kernel caps it at
    // net.core.rmem_max; a smaller buffer only drops more under bursts, so errors are ignored.
    error_code ignored;
    d.udp_socket.set_option(asio::socket_base::receive_buffer_size(4 << 20), ignored);
  }
  if (!ec) d.udp_socket.bind(uep, ec);
  if (ec) {
    *error = "cluster.bind " + d.opt.bind_host + ":" + std::to_string(d.port) +
             " (udp): " + ec.message();
    return false;
  }
  if (d.opt.self.address.empty() || d.opt.self.address.ends_with(":0")) {
    d.opt.self.address = d.opt.bind_host + ":" + std::to_string(d.port);
  }
  uint64_t incarnation = d.load_incarnation();
  d.persist_incarnation(incarnation);
  d.swim = std::make_unique<membership>(d.opt.self, incarnation, d.opt.swim, d);
  if (d.opt.app) d.swim->set_application(d.opt.app);
  d.running = true;
  d.receive();
  d.accept();
  if (!d.opt.seeds.empty()) d.swim->join(d.opt.seeds);
  d.reschedule();
  d.thread = std::thread([&d] {
    d.io_thread.store(std::this_thread::get_id());
    d.ioc.run();
  });
  logger()->info("cluster member {} (region {}) gossiping on {} at incarnation {}", d.opt.self.id,
                 d.opt.self.region, d.opt.self.address, incarnation);
  return true;
}

void gossip_node::stop(bool leave) {
  auto& d = *impl_;
  if (!d.running) return;
  if (leave) {
    asio::post(d.ioc, [&d] {
      d.swim->leave();
      d.reschedule();
    });
    // Let the `left` announcement go out on a few gossip rounds.
    std::this_thread::sleep_for(d.opt.swim.gossip_interval * 3);
  }
  asio::post(d.ioc, [&d] {
    d.running = false;
    error_code ignored;
    d.timer.cancel();
    if (d.urgent_timer) d.urgent_timer->cancel();
    d.acceptor.close(ignored);
    d.udp_socket.close(ignored);
    d.ioc.stop();
  });
  if (d.thread.joinable()) d.thread.join();
  d.running = false;
}

void gossip_node::set_keys(std::vector<cluster_key> keys) {
  if (keys.empty()) return;
  impl_->on_io([this, k = std::move(keys)]() mutable {
    impl_->opt.keys = std::move(k);
    return true;
  });
}

void gossip_node::flush_application() {
  auto& d = *impl_;
  if (!d.running) return;
  asio::post(d.ioc, [&d] {
    if (!d.running) return;
    d.swim->pull_application_deltas();
    d.reschedule();
  });
}

void gossip_node::flush_application_now() {
  auto& d = *impl_;
  if (!d.running) return;
  asio::post(d.ioc, [&d] {
    if (d.running) d.urgent_round();
  });
}

void gossip_node::send_direct(const std::string& address, std::string message) {
  auto& d = *impl_;
  if (!d.running || message.size() > max_direct_bytes) return;
  if (std::this_thread::get_id() == d.io_thread.load()) {
    d.send_direct_now(address, std::move(message));
    return;
  }
  asio::post(d.ioc, [&d, address, m = std::move(message)]() mutable {
    if (d.running) d.send_direct_now(address, std::move(m));
  });
}

void gossip_node::post(std::function<void()> job, std::chrono::microseconds after) {
  auto& d = *impl_;
  if (!d.running) return;
  if (after.count() <= 0) {
    asio::post(d.ioc, [&d, job = std::move(job)] {
      if (d.running) job();
    });
    return;
  }
  // The timer is made on the gossip thread: its io objects are touched there only.
  asio::post(d.ioc, [&d, after, job = std::move(job)]() mutable {
    if (!d.running) return;
    auto timer = std::make_shared<asio::steady_timer>(d.ioc, after);
    timer->async_wait([&d, timer, job = std::move(job)](const error_code& ec) {
      if (!ec && d.running) job();
    });
  });
}

uint16_t gossip_node::port() const {
  return impl_->port;
}

member gossip_node::self() const {
  return impl_->on_io([this] { return impl_->swim->self(); });
}

std::vector<member> gossip_node::members() const {
  return impl_->on_io([this] { return impl_->swim->members(); });
}

membership_stats gossip_node::stats() const {
  return impl_->on_io([this] { return impl_->swim->stats(); });
}

uint32_t gossip_node::local_health() const {
  return impl_->on_io([this] { return impl_->swim->local_health(); });
}

std::map<std::string, double> gossip_node::region_rtt() const {
  return impl_->on_io([this] { return impl_->swim->region_rtt(); });
}

std::map<std::string, double> gossip_node::clock_offsets() const {
  return impl_->on_io([this] { return impl_->swim->clock_offsets(); });
}

const gossip_counters& gossip_node::counters() const {
  return impl_->counters;
}

}  // namespace meridian::cluster
