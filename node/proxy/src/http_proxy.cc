// The forwarding path. Shaped by what was measured (PERFORMANCE.md): no http::message, no
// serializer, no tcp_stream. Requests and responses are parsed by basic_parser subclasses whose
// callbacks write the outgoing head straight into a per-connection output buffer; sockets are
// plain and non-blocking; one coarse sweep timer per worker enforces every deadline.
//
// Threading: everything in this file except proxy_server's public methods runs on one worker's
// thread. A client_session and the upstream_conns it uses belong to one worker.
//
// Reading: async_read_some, whose speculative read Asio skips after a short read (the socket
// is known to be drained, so it waits for the next epoll edge): one recv per arrival and no
// epoll_ctl per wait. An idle client connection reads into a small inline buffer, so idle
// keep-alive connections hold no heap buffer.

#include "meridian/proxy/http_proxy.h"

#include "chain.h"
#include "endpoint.h"
#include "exchange.h"
#include "http1_head.h"

#include <spdlog/spdlog.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/core/string.hpp>
#include <boost/beast/http/basic_parser.hpp>
#include <boost/beast/http/error.hpp>
#include <boost/beast/http/field.hpp>
#include <boost/beast/http/verb.hpp>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <span>
#include <thread>

#include "meridian/auth/oauth.h"
#include "meridian/common/byte_buffer.h"
#include "meridian/common/failure_delay.h"
#include "meridian/common/http_fields.h"
#include "meridian/proxy/tls.h"

namespace meridian::node {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = boost::beast::http;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
using executor = asio::io_context::executor_type;
using socket_t = asio::basic_stream_socket<tcp, executor>;
using acceptor_t = asio::basic_socket_acceptor<tcp, executor>;
using timer_t = asio::basic_waitable_timer<steady_clock, asio::wait_traits<steady_clock>, executor>;

constexpr size_t read_chunk = 16 * 1024;
constexpr size_t high_water = 64 * 1024;  // stop producing into an output buffer above this
constexpr size_t max_fields = 256;
constexpr auto sweep_interval = std::chrono::milliseconds(50);

class worker;
class client_session;

void append_json_string(byte_buffer& out, std::string_view s) {
  out.append('"');
  for (char c : s) {
    switch (c) {
      case '"':
        out.append("\\\"");
        break;
      case '\\':
        out.append("\\\\");
        break;
      case '\n':
        out.append("\\n");
        break;
      case '\r':
        out.append("\\r");
        break;
      case '\t':
        out.append("\\t");
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char tmp[8];
          std::snprintf(tmp, sizeof tmp, "\\u%04x", c);
          out.append(tmp);
        } else {
          out.append(c);
        }
    }
  }
  out.append('"');
}

// Returns true when `v`, a view into `in`, is followed by optional whitespace and CRLF: the
// line it ends was neither folded (the parser would have copied it elsewhere) nor ended by a
// bare LF.
bool ends_line(std::string_view v, const byte_buffer& in) {
  const char* end = v.data() + v.size();
  const char* limit = in.data() + in.size();
  if (v.data() < in.data() || end > limit) return false;
  while (end < limit && (*end == ' ' || *end == '\t')) ++end;
  return end + 1 < limit && end[0] == '\r' && end[1] == '\n';
}

// ---------------------------------------------------------------------------------------------
// Parsers: thin basic_parser subclasses that forward every callback to their owner.

template <class Owner>
class request_parser final : public http::basic_parser<true> {
 public:
  explicit request_parser(Owner& owner) : owner_(owner) {}

 private:
  void on_request_impl(http::verb v, beast::string_view method, beast::string_view target,
                       int version, error_code& ec) override {
    owner_.on_request_line(v, method, target, version, ec);
  }
  void on_response_impl(int, beast::string_view, int, error_code&) override {}
  void on_field_impl(http::field f, beast::string_view name, beast::string_view value,
                     error_code& ec) override {
    owner_.on_request_field(f, name, value, ec);
  }
  void on_header_impl(error_code& ec) override { owner_.on_request_header(*this, ec); }
  void on_body_init_impl(const boost::optional<std::uint64_t>&, error_code&) override {}
  std::size_t on_body_impl(beast::string_view body, error_code& ec) override {
    owner_.on_request_body(body, ec);
    return body.size();
  }
  void on_chunk_header_impl(std::uint64_t size, beast::string_view, error_code& ec) override {
    owner_.on_request_chunk_header(size, ec);
  }
  std::size_t on_chunk_body_impl(std::uint64_t, beast::string_view body, error_code& ec) override {
    owner_.on_request_body(body, ec);
    return body.size();
  }
  void on_finish_impl(error_code& ec) override { owner_.on_request_finish(ec); }

  Owner& owner_;
};

template <class Owner>
class response_parser final : public http::basic_parser<false> {
 public:
  explicit response_parser(Owner& owner) : owner_(owner) {}

 private:
  void on_request_impl(http::verb, beast::string_view, beast::string_view, int,
                       error_code&) override {}
  void on_response_impl(int status, beast::string_view reason, int version,
                        error_code& ec) override {
    owner_.on_response_line(status, reason, version, ec);
  }
  void on_field_impl(http::field f, beast::string_view name, beast::string_view value,
                     error_code& ec) override {
    owner_.on_response_field(f, name, value, ec);
  }
  void on_header_impl(error_code& ec) override { owner_.on_response_header(*this, ec); }
  void on_body_init_impl(const boost::optional<std::uint64_t>&, error_code&) override {}
  std::size_t on_body_impl(beast::string_view body, error_code& ec) override {
    owner_.on_response_body(body, ec);
    return body.size();
  }
  void on_chunk_header_impl(std::uint64_t size, beast::string_view, error_code& ec) override {
    owner_.on_response_chunk_header(size, ec);
  }
  std::size_t on_chunk_body_impl(std::uint64_t, beast::string_view body, error_code& ec) override {
    owner_.on_response_body(body, ec);
    return body.size();
  }
  void on_finish_impl(error_code& ec) override { owner_.on_response_finish(ec); }

  Owner& owner_;
};

// ---------------------------------------------------------------------------------------------
// upstream_conn: one connection to a target. Owned by a worker's pool while idle, by a client
// session while a request uses it.

class upstream_conn : public std::enable_shared_from_this<upstream_conn> {
 public:
  upstream_conn(worker& w, target_state* target);
  ~upstream_conn();

  // Keeps one read outstanding into `in`; its result goes to the owner (or, while pooled, closes
  // the connection: a pooled connection has nothing to say).
  void start_read();
  void close();

  worker& w;
  target_state* target;
  socket_t socket;
  byte_buffer in;
  // The session using this connection; kept alive by it while a request is in flight.
  std::shared_ptr<client_session> owner;
  bool reading = false;
  bool open = false;
  bool pooled = false;
  int64_t idle_since_ms = 0;
  int64_t idle_limit_ms = 60000;

 private:
  void on_read(const error_code& ec, size_t n);
};

// ---------------------------------------------------------------------------------------------
// worker: one thread, one io_context, one listener; owns its sessions and upstream pools.

class worker {
 public:
  worker(unsigned index, metrics_registry& metrics, std::atomic<int64_t>& connections,
         spdlog::logger* access_log)
      : index(index),
        ioc(BOOST_ASIO_CONCURRENCY_HINT_UNSAFE),
        acceptor(ioc.get_executor()),
        tls_acceptor(ioc.get_executor()),
        sweep(ioc.get_executor()),
        accept_retry(ioc.get_executor()),
        tls_accept_retry(ioc.get_executor()),
        stats(metrics.worker(index)),
        connections(connections),
        access_log(access_log) {
    rng = 0x9e3779b97f4a7c15ULL * (index + 1) ^ static_cast<uint64_t>(now_ms());
  }

  // Accepts connections on a (the plain listener, or the TLS one with tls set) forever.
  void start_accept(acceptor_t& a, bool tls);
  void start_sweep();
  void on_sweep();
  void begin_drain();
  void shut_down();
  // Takes what other threads left in the mailbox (new snapshot, drain, stop). On this thread.
  void read_mail();

  // The only way other threads talk to a worker: its io_context runs without locks
  // (BOOST_ASIO_CONCURRENCY_HINT_UNSAFE), so they may not post to it. The sweep timer reads the
  // mailbox, so a message takes effect within one sweep interval.
  struct mailbox {
    std::mutex mutex;
    std::shared_ptr<const snapshot> snap;
    bool drain = false;
    bool stop = false;
    std::vector<std::function<void()>> jobs;  // run on the worker (e.g. an OAuth answer)
    std::atomic<bool> pending{false};
  } mail;
  // Any thread: leaves fn in the mailbox; the worker runs it (and destroys it) on its thread.
  void deliver(std::function<void()> fn) {
    std::lock_guard lock(mail.mutex);
    mail.jobs.push_back(std::move(fn));
    mail.pending.store(true, std::memory_order_release);
  }
  bool stopping = false;

  void add_session(client_session* s);
  // Returns owning references to every session, for loops that may close (and so remove) them.
  std::vector<std::shared_ptr<client_session>> owned_sessions();
  void remove_session(client_session* s);

  // Returns a pooled connection to target, or nullptr.
  std::shared_ptr<upstream_conn> take_idle(target_state* t);
  // Keeps conn for reuse if the pool has room; closes it otherwise.
  void give_back(std::shared_ptr<upstream_conn> conn, const upstream_config& cfg);
  void forget_idle(upstream_conn* conn);

  uint64_t next_random() {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
  }

  unsigned index;
  // Declared before ioc so that they outlive it: destroying ioc destroys pending handlers, which
  // may own the last reference to sessions and connections that update these on destruction.
  std::vector<client_session*> sessions;
  std::vector<uint32_t> open_by_target;  // this worker's open upstream connections, by target id
  asio::io_context ioc;
  acceptor_t acceptor;
  acceptor_t tls_acceptor;  // open when the config has a tls section
  timer_t sweep;
  timer_t accept_retry;
  timer_t tls_accept_retry;
  worker_stats& stats;
  std::atomic<int64_t>& connections;
  spdlog::logger* access_log;
  std::shared_ptr<const snapshot> snap;
  std::vector<std::vector<std::shared_ptr<upstream_conn>>> idle;  // by target id
  std::atomic<int64_t> open_sessions{0};
  bool draining = false;
  uint32_t max_connections = 20000;
  uint64_t rng;
  int64_t now = now_ms();  // coarse clock, refreshed by the sweep
  // Client addresses that presented wrong API keys: ten free, then a doubling wait before the
  // next key from them is looked at (failure_delay.h). Per worker, so no lock.
  failure_delay api_key_failures{10, 10000};
};

// ---------------------------------------------------------------------------------------------
// client_session: one client connection; proxies its requests one after another.

class client_session : public std::enable_shared_from_this<client_session> {
 public:
  client_session(worker& w, socket_t socket, bool tls = false);
  ~client_session();

  void start();
  // Closes the connection at once, abandoning any exchange in progress.
  void close();
  // Called by the sweep timer; closes or answers the session when a deadline passed.
  void check_deadline(int64_t now);
  // Closes the session if it is between requests (drain).
  void close_if_idle();

  // Request parser callbacks.
  void on_request_line(http::verb v, std::string_view method, std::string_view target, int version,
                       error_code& ec);
  void on_request_field(http::field f, std::string_view name, std::string_view value,
                        error_code& ec);
  void on_request_header(http::basic_parser<true>& parser, error_code& ec);
  void on_request_body(std::string_view body, error_code& ec);
  void on_request_chunk_header(uint64_t size, error_code& ec);
  void on_request_finish(error_code& ec);
  void on_request_body_limit(error_code& ec);

  // Response parser callbacks.
  void on_response_line(int status, std::string_view reason, int version, error_code& ec);
  void on_response_field(http::field f, std::string_view name, std::string_view value,
                         error_code& ec);
  void on_response_header(http::basic_parser<false>& parser, error_code& ec);
  void on_response_body(std::string_view body, error_code& ec);
  void on_response_chunk_header(uint64_t size, error_code& ec);
  void on_response_finish(error_code& ec);

  // Called by upstream_conn when a read completed (bytes are in its buffer) or failed.
  void on_upstream_data(const error_code& ec);

  size_t index_in_worker = 0;

 private:
  enum class phase {
    idle,
    head,
    local_body,  // reading the body of a request the gateway answers itself (OAuth)
    local_wait,  // waiting for that answer from another thread (an OAuth password check)
    delayed,
    connecting,
    proxying,
    closing,
    lingering,
    closed
  };
  enum class failure { connect, connect_timeout, reset, timeout, malformed };

  void start_client_read();
  void on_client_read(const error_code& ec, size_t n, bool inline_buffer);
  void linger();
  void process_input();
  void begin_request();
  void dispatch();
  void connect_upstream();
  void on_connected(const error_code& ec);
  void send_upstream();
  void flush_upstream();
  void parse_upstream();
  void upstream_failed(failure why);
  void finish_exchange();
  void flush_client();
  void on_client_written(const error_code& ec, size_t n);
  void resume_upstream();
  void count_target_failure();
  // Feeds the target's circuit breaker; queues a transition for publishing.
  void record_breaker(bool success);
  void send_error(int status, std::string_view code, std::string_view message);
  // True once in_ holds the blank line that ends a request head (scans only new bytes).
  bool head_complete();
  // Answers the request with a response the gateway made (status, body, extra headers).
  void send_local(int status, std::string_view content_type, std::string_view body,
                  std::span<const std::pair<std::string, std::string>> headers);
  // Recognizes the OAuth endpoints (before routing); true when this request is one.
  bool match_oauth_endpoint(std::string_view path, std::string_view query);
  void answer_oauth();
  void reject(int status, std::string_view code, std::string_view message, error_code& ec);
  void release_upstream(bool reuse);
  void record_done();
  void log_access();
  void make_request_id();

  // Routes the request (a 404 when nothing matches) and runs its stages. In the header callback.
  void start_exchange();
  // Runs the route's request-head stages from position `from`; on `next` writes the upstream
  // request head (write_upstream_request), on `pause` remembers where to resume.
  verdict run_stages(size_t from);
  // Writes the upstream request head into up_out_ (and keeps a copy for retries).
  void write_upstream_request();
  // Sends the local answer a step prepared (ex_.local_status, code, message).
  void answer_local();
  // Holds the request for ex_.delay_ms (a rate limit's max_delay), then runs the stages after
  // the one that paused and dispatches it.
  void start_delay();
  bool request_replayable() const;

  worker& w_;
  socket_t socket_;
  // Set on the TLS listener: reads and writes go through it; the handshake comes first.
  std::shared_ptr<const tls_store> tls_store_;  // the certificates this connection started with
  std::unique_ptr<asio::ssl::stream<socket_t&>> tls_;
  std::shared_ptr<const snapshot> snap_;
  phase phase_ = phase::idle;
  int64_t deadline_ = 0;
  bool reading_client_ = false;   // a read is outstanding
  bool reading_into_in_ = false;  // ... into in_'s tail: in_ must not change until it completes
  char idle_buf_[512];            // idle connections read here and hold no heap buffer
  char client_ip_[48] = {};       // for X-Forwarded-For, looked up once per connection
  bool client_eof_ = false;
  bool writing_client_ = false;
  bool close_after_response_ = false;

  byte_buffer in_;
  byte_buffer out_;
  std::optional<request_parser<client_session>> req_parser_;

  // The request being proxied: its codec state here, the rest in ex_.
  exchange ex_;
  std::vector<field_view> fields_;
  std::vector<header_view> header_views_;  // the router's view of fields_, reused
  std::unique_ptr<asio::steady_timer> delay_timer_;
  size_t resume_at_ =
      0;  // the stage after the one that paused                // created on the first delay
  // A request to one of the OAuth endpoints (answered here, body read into ex_.oauth_body).
  size_t head_scanned_ = 0;  // bytes of in_ already searched for the end of the head
  static constexpr size_t max_oauth_body = 16 * 1024;

  // The upstream exchange.
  std::shared_ptr<upstream_conn> up_;
  byte_buffer up_out_;
  bool writing_upstream_ = false;
  std::optional<response_parser<client_session>> resp_parser_;
  std::vector<field_view> resp_fields_;
  bool resp_paused_ = false;  // client output above high water
};

// --- upstream_conn ---------------------------------------------------------------------------

upstream_conn::upstream_conn(worker& w, target_state* target)
    : w(w), target(target), socket(w.ioc.get_executor()) {
  target->metrics->pool_open.fetch_add(1, std::memory_order_relaxed);
  if (target->id >= w.open_by_target.size()) w.open_by_target.resize(target->id + 1);
  ++w.open_by_target[target->id];
}

upstream_conn::~upstream_conn() {
  target->metrics->pool_open.fetch_sub(1, std::memory_order_relaxed);
  --w.open_by_target[target->id];
}

void upstream_conn::start_read() {
  if (reading || !open) return;
  reading = true;
  in.prepare(read_chunk);
  socket.async_read_some(
      asio::buffer(in.tail(), in.tail_size()),
      [self = shared_from_this()](const error_code& ec, size_t n) { self->on_read(ec, n); });
}

void upstream_conn::on_read(const error_code& ec, size_t n) {
  reading = false;
  if (!open) return;
  if (!ec) in.commit(n);
  if (owner) {
    auto keep = owner;
    keep->on_upstream_data(ec);
    return;
  }
  // Idle in the pool: the target closed it or sent bytes nobody asked for. Drop it.
  w.forget_idle(this);
  close();
}

void upstream_conn::close() {
  if (!open) return;
  open = false;
  error_code ignored;
  socket.close(ignored);
}

// --- worker ----------------------------------------------------------------------------------

void worker::start_accept(acceptor_t& a, bool tls) {
  a.async_accept([this, &a, tls](const error_code& ec, socket_t s) {
    if (ec == asio::error::operation_aborted || !a.is_open()) return;
    if (ec) {
      // Out of descriptors or similar: back off briefly instead of spinning.
      spdlog::get("node.http") ? spdlog::get("node.http")->warn("accept: {}", ec.message())
                               : void();
      timer_t& retry = tls ? tls_accept_retry : accept_retry;
      retry.expires_after(std::chrono::milliseconds(50));
      retry.async_wait([this, &a, tls](const error_code& e) {
        if (!e) start_accept(a, tls);
      });
      return;
    }
    if (connections.load(std::memory_order_relaxed) >= static_cast<int64_t>(max_connections) ||
        draining) {
      stats.connections_rejected.add();
      error_code ignored;
      s.close(ignored);
    } else {
      std::make_shared<client_session>(*this, std::move(s), tls)->start();
    }
    start_accept(a, tls);
  });
}

void worker::start_sweep() {
  sweep.expires_after(sweep_interval);
  sweep.async_wait([this](const error_code& ec) {
    if (ec || stopping) return;
    on_sweep();
    if (!stopping) start_sweep();
  });
}

void worker::read_mail() {
  if (!mail.pending.load(std::memory_order_acquire)) return;
  std::shared_ptr<const snapshot> next;
  bool drain_now, stop_now;
  std::vector<std::function<void()>> jobs;
  {
    std::lock_guard lock(mail.mutex);
    next = std::move(mail.snap);
    drain_now = std::exchange(mail.drain, false);
    stop_now = mail.stop;
    jobs.swap(mail.jobs);
    mail.pending.store(false, std::memory_order_relaxed);
  }
  if (next) {
    snap = std::move(next);
    max_connections = snap->cfg.limits.max_connections;
  }
  for (auto& job : jobs) job();
  jobs.clear();  // what the jobs held is released here, on this thread
  if (drain_now) begin_drain();
  if (stop_now) shut_down();
}

void worker::shut_down() {
  stopping = true;
  error_code ignored;
  acceptor.close(ignored);
  tls_acceptor.close(ignored);
  sweep.cancel();
  accept_retry.cancel();
  tls_accept_retry.cancel();
  for (auto& s : owned_sessions()) s->close();
  for (auto& pool : idle) {
    for (auto& c : pool) c->close();
  }
  ioc.stop();
}

void worker::on_sweep() {
  read_mail();
  if (stopping) return;
  now = now_ms();
  for (auto& s : owned_sessions()) s->check_deadline(now);
  if (!snap) return;
  // Close pooled connections idle for longer than their upstream's idle timeout.
  for (auto& pool : idle) {
    for (size_t i = 0; i < pool.size();) {
      auto& c = pool[i];
      if (now - c->idle_since_ms > c->idle_limit_ms || !c->open) {
        c->close();
        c->target->metrics->pool_idle.fetch_sub(1, std::memory_order_relaxed);
        pool[i] = std::move(pool.back());
        pool.pop_back();
      } else {
        ++i;
      }
    }
  }
}

void worker::begin_drain() {
  draining = true;
  error_code ignored;
  acceptor.close(ignored);
  tls_acceptor.close(ignored);
  for (auto& s : owned_sessions()) s->close_if_idle();
  for (auto& pool : idle) {
    for (auto& c : pool) {
      c->close();
      c->target->metrics->pool_idle.fetch_sub(1, std::memory_order_relaxed);
    }
    pool.clear();
  }
}

std::vector<std::shared_ptr<client_session>> worker::owned_sessions() {
  std::vector<std::shared_ptr<client_session>> out;
  out.reserve(sessions.size());
  for (auto* s : sessions) {
    if (auto p = s->weak_from_this().lock()) out.push_back(std::move(p));
  }
  return out;
}

void worker::add_session(client_session* s) {
  s->index_in_worker = sessions.size();
  sessions.push_back(s);
  open_sessions.store(static_cast<int64_t>(sessions.size()), std::memory_order_relaxed);
}

void worker::remove_session(client_session* s) {
  size_t i = s->index_in_worker;
  if (i >= sessions.size() || sessions[i] != s) return;
  sessions[i] = sessions.back();
  sessions[i]->index_in_worker = i;
  sessions.pop_back();
  open_sessions.store(static_cast<int64_t>(sessions.size()), std::memory_order_relaxed);
}

std::shared_ptr<upstream_conn> worker::take_idle(target_state* t) {
  if (t->id >= idle.size()) return nullptr;
  auto& pool = idle[t->id];
  while (!pool.empty()) {
    auto c = std::move(pool.back());
    pool.pop_back();
    t->metrics->pool_idle.fetch_sub(1, std::memory_order_relaxed);
    c->pooled = false;
    if (c->open) return c;
  }
  return nullptr;
}

void worker::give_back(std::shared_ptr<upstream_conn> conn, const upstream_config& cfg) {
  auto* t = conn->target;
  if (draining || !conn->open || !conn->in.empty()) {
    conn->close();
    return;
  }
  if (t->id >= idle.size()) idle.resize(t->id + 1);
  auto& pool = idle[t->id];
  if (pool.size() >= cfg.pool.max_idle_per_target) {
    conn->close();
    return;
  }
  conn->owner.reset();
  conn->pooled = true;
  conn->idle_since_ms = now;
  conn->idle_limit_ms = cfg.timeouts.idle.count();
  conn->in.release_if_empty();
  t->metrics->pool_idle.fetch_add(1, std::memory_order_relaxed);
  conn->start_read();
  pool.push_back(std::move(conn));
}

void worker::forget_idle(upstream_conn* conn) {
  if (!conn->pooled) return;
  auto& pool = idle[conn->target->id];
  for (size_t i = 0; i < pool.size(); ++i) {
    if (pool[i].get() == conn) {
      pool[i] = std::move(pool.back());
      pool.pop_back();
      conn->target->metrics->pool_idle.fetch_sub(1, std::memory_order_relaxed);
      break;
    }
  }
  conn->pooled = false;
}

// --- client_session: lifecycle and reading --------------------------------------------------

client_session::client_session(worker& w, socket_t socket, bool tls)
    : w_(w), socket_(std::move(socket)), snap_(w.snap) {
  if (tls && snap_->tls) {
    tls_store_ = snap_->tls;
    tls_ = std::make_unique<asio::ssl::stream<socket_t&>>(socket_, tls_store_->default_context());
  }
  w_.connections.fetch_add(1, std::memory_order_relaxed);
  w_.stats.connections_accepted.add();
  w_.stats.connections_active.fetch_add(1, std::memory_order_relaxed);
  fields_.reserve(32);
  resp_fields_.reserve(32);
}

client_session::~client_session() {
  w_.remove_session(this);
  w_.connections.fetch_sub(1, std::memory_order_relaxed);
  w_.stats.connections_active.fetch_sub(1, std::memory_order_relaxed);
}

void client_session::start() {
  error_code ec;
  socket_.set_option(tcp::no_delay(true), ec);
  socket_.non_blocking(true, ec);
  if (ec) return;
  w_.add_session(this);
  auto peer = socket_.remote_endpoint(ec);
  if (!ec) {
    auto text = peer.address().to_string(ec);
    if (!ec) std::snprintf(client_ip_, sizeof client_ip_, "%s", text.c_str());
  }
  phase_ = phase::idle;
  deadline_ = w_.now + snap_->cfg.limits.idle_timeout.count();
  begin_request();
  if (tls_) {
    // The handshake must finish within the head timeout (the sweep closes idle sessions).
    deadline_ = w_.now + snap_->cfg.limits.header_timeout.count();
    tls_->async_handshake(
        asio::ssl::stream_base::server, [self = shared_from_this()](const error_code& ec) {
          if (self->phase_ == phase::closed) return;
          if (ec) {
            self->w_.stats.tls_handshake_failures.add();
            self->close();
            return;
          }
          self->deadline_ = self->w_.now + self->snap_->cfg.limits.idle_timeout.count();
          self->start_client_read();
        });
    return;
  }
  start_client_read();
}

void client_session::close() {
  if (phase_ == phase::closed) return;
  phase_ = phase::closed;
  release_upstream(false);
  w_.remove_session(this);
  error_code ignored;
  socket_.shutdown(tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
  req_parser_.reset();
  resp_parser_.reset();
  if (delay_timer_) delay_timer_->cancel();
}

void client_session::close_if_idle() {
  if (phase_ == phase::idle && in_.empty() && out_.empty() && !writing_client_) {
    close();
  } else {
    close_after_response_ = true;
  }
}

void client_session::check_deadline(int64_t now) {
  if (phase_ == phase::closed || now < deadline_) return;
  switch (phase_) {
    case phase::idle:
      w_.stats.idle_timeouts.add();
      close();
      break;
    case phase::head:
    case phase::local_body:  // a body the gateway reads itself: within the head's deadline
      w_.stats.header_timeouts.add();
      close_after_response_ = true;
      send_error(408, "request_timeout", "the request did not arrive in time");
      break;
    case phase::delayed:     // the timer fires long before; a stuck one ends the connection
    case phase::local_wait:  // likewise the password thread
      close();
      break;
    case phase::connecting:
      upstream_failed(failure::connect_timeout);
      break;
    case phase::proxying:
      if (!ex_.response_head_sent) {
        upstream_failed(failure::timeout);
      } else {
        // A stalled stream in either direction.
        w_.stats.idle_timeouts.add();
        close();
      }
      break;
    case phase::closing:
    case phase::lingering:
    case phase::closed:
      close();
      break;
  }
}

// Closes gracefully after a final response: stop sending, then read and drop what the client
// still sends for a short while, so that closing with unread input does not reset the connection
// and destroy the response before the client read it (nginx's lingering_close).
void client_session::linger() {
  phase_ = phase::lingering;
  deadline_ = w_.now + 2000;
  release_upstream(false);
  error_code ignored;
  socket_.shutdown(tcp::socket::shutdown_send, ignored);
  if (!reading_into_in_) {
    in_.clear();
    in_.release_if_empty();
  }
  start_client_read();
}

// Starts a read from the client unless one is outstanding. Idle connections read into the inline
// buffer; a request in progress reads into in_'s tail.
void client_session::start_client_read() {
  if (reading_client_ || client_eof_ || phase_ == phase::closed) return;
  bool use_inline = phase_ == phase::lingering || (phase_ == phase::idle && in_.empty());
  // While a head is incomplete the buffer may grow up to the header limit (plus one chunk).
  if (!use_inline && (phase_ == phase::idle || phase_ == phase::head) &&
      in_.size() > snap_->cfg.limits.max_header_bytes + snap_->cfg.limits.max_url_bytes) {
    return;  // the parser has already answered 431
  }
  reading_client_ = true;
  reading_into_in_ = !use_inline;
  asio::mutable_buffer buf =
      use_inline ? asio::buffer(idle_buf_) : asio::buffer(in_.prepare(read_chunk), in_.tail_size());
  auto done = [self = shared_from_this(), use_inline](const error_code& ec, size_t n) {
    self->on_client_read(ec, n, use_inline);
  };
  if (tls_) {
    tls_->async_read_some(buf, std::move(done));
  } else {
    socket_.async_read_some(buf, std::move(done));
  }
}

void client_session::on_client_read(const error_code& ec, size_t n, bool inline_buffer) {
  reading_client_ = false;
  reading_into_in_ = false;
  if (phase_ == phase::closed) return;
  if (phase_ == phase::lingering) {
    if (ec) {
      close();
    } else {
      start_client_read();  // drop what arrives until the client closes or the deadline
    }
    return;
  }
  if (ec) {
    // EOF or reset. Between requests: just close. Mid-request: the client gave up.
    if (phase_ == phase::idle || phase_ == phase::head || phase_ == phase::connecting ||
        (phase_ == phase::proxying && !ex_.request_done)) {
      close();
      return;
    }
    client_eof_ = true;
    close_after_response_ = true;
    return;
  }
  if (inline_buffer) {
    in_.append(idle_buf_, n);
  } else {
    in_.commit(n);
  }
  process_input();
}

void client_session::begin_request() {
  req_parser_.emplace(*this);
  req_parser_->header_limit(static_cast<uint32_t>(snap_->cfg.limits.max_header_bytes));
  req_parser_->body_limit(boost::none);
  req_parser_->eager(false);
  fields_.clear();
  resp_fields_.clear();
  head_scanned_ = 0;
  resp_paused_ = false;
  ex_ = exchange{};
}

// Feeds buffered client bytes to the request parser as far as the current phase allows.
bool client_session::head_complete() {
  std::string_view buffered(in_.data(), in_.size());
  size_t from = head_scanned_ > 3 ? head_scanned_ - 3 : 0;
  head_scanned_ = buffered.size();
  return buffered.find("\r\n\r\n", from) != std::string_view::npos ||
         buffered.find("\n\n", from) != std::string_view::npos;
}

void client_session::process_input() {
  if (reading_into_in_) return;  // resumed when the read completes
  while (phase_ != phase::closed && phase_ != phase::closing && phase_ != phase::lingering) {
    // Resumed by the delay timer, or by the OAuth answer.
    if (phase_ == phase::delayed || phase_ == phase::local_wait) return;
    if (phase_ == phase::idle || phase_ == phase::head) {
      if (in_.empty()) {
        in_.release_if_empty();
        start_client_read();
        return;
      }
      if (phase_ == phase::idle) {
        // If the config changed since the last request, pick up the new snapshot now.
        if (snap_ != w_.snap) snap_ = w_.snap;
        phase_ = phase::head;
        ex_.started = steady_clock::now();
        deadline_ = w_.now + snap_->cfg.limits.header_timeout.count();
      }
      // The parser sees the head only once it is complete. Beast parses a partial head field by
      // field and expects the consumed bytes gone on the next call, but the views it handed out
      // (target, Host, every field) point into in_, which may move when it grows: so wait for
      // the blank line that ends the head, then parse it in one call.
      // RFC 9112 section 2.2: ignore empty lines before the request line (some clients send a
      // CRLF after a POST body). Beast would refuse them as a bad method.
      if (head_scanned_ == 0) {
        size_t blank = 0;
        while (blank < in_.size() && (in_.data()[blank] == '\r' || in_.data()[blank] == '\n'))
          ++blank;
        if (blank > 0) {
          in_.consume(blank);
          if (in_.empty()) {
            start_client_read();
            return;
          }
        }
      }
      bool complete = head_complete();
      error_code ec;
      size_t used = 0;
      if (complete) {
        used = req_parser_->put(asio::buffer(in_.data(), in_.size()), ec);
        if (phase_ == phase::closing || phase_ == phase::closed) return;  // answered by a callback
        // The head is parsed and the parser went on into the body (eager from the header
        // callback) until it needed more: a chunk-size line cut by the read. The head is done.
        if (ec == http::error::need_more && req_parser_->is_header_done()) ec = {};
        // Only empty lines before the request line can be consumed without a head.
        if (ec == http::error::need_more) {
          in_.consume(used);
          head_scanned_ = 0;
        }
      }
      if (!complete || ec == http::error::need_more) {
        if (in_.size() >= snap_->cfg.limits.max_header_bytes) {
          close_after_response_ = true;
          w_.stats.bad_requests.add();
          send_error(431, "headers_too_large", "request header block exceeds the limit");
          return;
        }
        start_client_read();
        return;
      }
      if (ec) {
        close_after_response_ = true;
        w_.stats.bad_requests.add();
        if (ec == http::error::header_limit) {
          send_error(431, "headers_too_large", "request header block exceeds the limit");
        } else if (ec == http::error::bad_transfer_encoding) {
          send_error(400, "bad_request", "invalid Transfer-Encoding");
        } else {
          send_error(400, "bad_request", ec.message());
        }
        return;
      }
      in_.consume(used);
      head_scanned_ = 0;
      if (!req_parser_->is_header_done()) continue;
      if (req_parser_->is_done()) ex_.request_done = true;
      if (ex_.local_status) {
        answer_local();
        continue;
      }
      if (ex_.oauth_endpoint) {
        if (ex_.request_done) {
          answer_oauth();
        } else {
          phase_ = phase::local_body;
        }
        continue;
      }
      if (ex_.delay_ms) {
        start_delay();
        return;
      }
      dispatch();
      continue;
    }
    if (phase_ == phase::local_body) {
      if (in_.empty()) {
        start_client_read();
        return;
      }
      error_code ec;
      size_t used = req_parser_->put(asio::buffer(in_.data(), in_.size()), ec);
      if (phase_ == phase::closing || phase_ == phase::closed) return;
      if (ec == http::error::need_more) {
        in_.consume(used);
        if (used == 0) {
          if (in_.size() > max_oauth_body) {
            send_error(400, "bad_request", "malformed chunked body");
            return;
          }
          start_client_read();
          return;
        }
        continue;
      }
      if (ec) {
        w_.stats.bad_requests.add();
        close_after_response_ = true;
        send_error(400, "bad_request", "malformed request body: " + ec.message());
        return;
      }
      in_.consume(used);
      if (req_parser_->is_done()) ex_.request_done = true;
      if (ex_.request_done) answer_oauth();
      continue;
    }
    if (phase_ == phase::proxying && ex_.body_started && !ex_.request_done) {
      if (in_.empty()) {
        flush_upstream();
        if (up_out_.size() < high_water) start_client_read();
        return;
      }
      if (up_out_.size() >= high_water) return;  // resumed when the upstream write drains
      size_t room = high_water - up_out_.size();
      size_t n = std::min(room, in_.size());
      error_code ec;
      size_t used = req_parser_->put(asio::buffer(in_.data(), n), ec);
      if (phase_ == phase::closing || phase_ == phase::closed) return;
      if (ec == http::error::need_more) {
        in_.consume(used);
        if (used == 0) {
          if (in_.size() >= high_water) {  // a chunk header longer than any sane one
            send_error(400, "bad_request", "malformed chunked body");
            return;
          }
          flush_upstream();
          start_client_read();
          return;
        }
        flush_upstream();
        continue;
      }
      if (ec) {
        w_.stats.bad_requests.add();
        close_after_response_ = true;
        if (!ex_.response_head_sent) {
          release_upstream(false);
          send_error(400, "bad_request", "malformed request body: " + ec.message());
        } else {
          close();
        }
        return;
      }
      in_.consume(used);
      flush_upstream();
      continue;
    }
    return;  // waiting for the upstream; pipelined bytes stay in in_
  }
}

// --- request parser callbacks ----------------------------------------------------------------

void client_session::reject(int status, std::string_view code, std::string_view message,
                            error_code& ec) {
  w_.stats.bad_requests.add();
  close_after_response_ = true;
  send_error(status, code, message);
  ec = http::error::bad_value;  // stops the parser; the session is closing
}

void client_session::on_request_line(http::verb v, std::string_view method, std::string_view target,
                                     int version, error_code& ec) {
  ex_.verb = v;
  ex_.method = method;
  ex_.request_target = target;
  ex_.version = version;
  if (w_.access_log) {
    // Known from here on, so that refused requests are logged with them too.
    ex_.access_method.assign(method);
    ex_.access_path.assign(target.substr(0, std::min<size_t>(target.size(), 2048)));
  }
  if (target.size() > snap_->cfg.limits.max_url_bytes) {
    return reject(414, "uri_too_long", "request target exceeds the limit", ec);
  }
  if (version != 10 && version != 11) {
    return reject(505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1", ec);
  }
  for (char c : target) {
    // Beast accepts some bytes that no upstream should see in a request target.
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f) {
      return reject(400, "bad_request", "invalid character in request target", ec);
    }
  }
}

void client_session::on_request_field(http::field f, std::string_view name, std::string_view value,
                                      error_code& ec) {
  // obs-fold (RFC 9112 §5.2): Beast unfolds it into its own buffer, or (when the first line is
  // empty) hands out the continuation line. Either way the value does not follow "name:".
  const char* v = value.data();
  if (!value.empty()) {
    bool inside = v >= in_.data() && v < in_.data() + in_.size();
    const char* p = v;
    if (inside) {
      while (p > in_.data() && (p[-1] == ' ' || p[-1] == '\t')) --p;
    }
    if (!inside || p == in_.data() || p[-1] != ':') {
      return reject(400, "bad_request", "obsolete line folding in header field", ec);
    }
  }
  for (char c : value) {
    unsigned char u = static_cast<unsigned char>(c);
    if ((u < 0x20 && c != '\t') || u == 0x7f) {
      return reject(400, "bad_request", "control character in header field", ec);
    }
  }
  switch (f) {
    case http::field::content_length:
      if (++ex_.content_length_count > 1) {
        return reject(400, "bad_request", "more than one Content-Length", ec);
      }
      if (value.empty() || value.size() > 18 ||
          value.find_first_not_of("0123456789") != std::string_view::npos) {
        return reject(400, "bad_request", "invalid Content-Length", ec);
      }
      break;
    case http::field::transfer_encoding:
      if (++ex_.transfer_encoding_count > 1) {
        return reject(400, "bad_request", "more than one Transfer-Encoding", ec);
      }
      if (ex_.version == 10) {
        return reject(400, "bad_request", "Transfer-Encoding in an HTTP/1.0 request", ec);
      }
      if (!iequals(trim(value), "chunked")) {
        return reject(501, "not_implemented", "unsupported Transfer-Encoding", ec);
      }
      break;
    case http::field::host:
      ++ex_.host_count;
      ex_.host = value;
      break;
    default:
      break;
  }
  if (fields_.size() >= max_fields) {
    return reject(431, "headers_too_large", "too many header fields", ec);
  }
  fields_.push_back({f, name, value});
}

void client_session::make_request_id() {
  for (auto& f : fields_) {
    if (f.f == http::field::unknown && iequals(f.name, "x-request-id") &&
        valid_request_id(f.value)) {
      ex_.request_id.assign(f.value);
      return;
    }
  }
  // A random (version 4) UUID, formatted by hand: snprintf cost more than the rest of the head.
  uint64_t a = w_.next_random(), b = w_.next_random();
  a = (a & ~0xf000ULL) | 0x4000ULL;            // version nibble
  b = (b & ~(0xcULL << 60)) | (0x8ULL << 60);  // variant bits
  char buf[36];
  static constexpr char hex[] = "0123456789abcdef";
  // Byte by byte, most significant first; dashes after bytes 4, 6, 8 and 10 (8-4-4-4-12).
  char* out = buf;
  for (int i = 0; i < 16; ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) *out++ = '-';
    unsigned byte = static_cast<unsigned>(((i < 8 ? a : b) >> (56 - 8 * (i % 8))) & 0xff);
    *out++ = hex[byte >> 4];
    *out++ = hex[byte & 0xf];
  }
  ex_.request_id.assign(buf, 36);
}

bool client_session::match_oauth_endpoint(std::string_view path, std::string_view query) {
  if (!snap_->oauth || !snap_->cfg.oauth) return false;
  const auto& o = *snap_->cfg.oauth;
  if (path == o.token_path) {
    ex_.oauth_kind = oauth_authority::endpoint::token;
  } else if (path == o.introspect_path) {
    ex_.oauth_kind = oauth_authority::endpoint::introspect;
  } else if (path == o.revoke_path) {
    ex_.oauth_kind = oauth_authority::endpoint::revoke;
  } else if (path == o.authorize_path) {
    ex_.oauth_kind = oauth_authority::endpoint::authorize;
  } else {
    return false;
  }
  ex_.oauth_get = ex_.oauth_kind == oauth_authority::endpoint::authorize &&
                  (ex_.verb == http::verb::get || ex_.verb == http::verb::head);
  if (ex_.verb != http::verb::post && !ex_.oauth_get) {
    ex_.local_status = 405;
    ex_.local_code = "method_not_allowed";
    ex_.local_message = ex_.oauth_kind == oauth_authority::endpoint::authorize
                            ? "the authorization endpoint takes GET or POST"
                            : "OAuth endpoints take POST";
    return true;
  }
  ex_.oauth_endpoint = true;
  ex_.oauth_query.assign(query);
  ex_.oauth_authorization.clear();
  for (auto& f : fields_) {
    if (f.f == http::field::authorization) {
      ex_.oauth_authorization.assign(trim(f.value));
      break;
    }
  }
  return true;
}

void client_session::answer_oauth() {
  oauth_authority::request req;
  req.kind = ex_.oauth_kind;
  req.post = !ex_.oauth_get;
  req.authorization = std::move(ex_.oauth_authorization);
  req.query = std::move(ex_.oauth_query);
  req.body = std::move(ex_.oauth_body);
  ex_.oauth_body.clear();
  ex_.oauth_query.clear();
  ex_.oauth_authorization.clear();
  oauth_authority::context ctx{&*snap_->cfg.oauth, snap_->api_keys.get(), &snap_->cfg.consumers,
                               unix_now_ms(), client_ip_};
  if (!oauth_authority::slow(req)) {
    oauth_authority::reply r;
    try {
      r = snap_->oauth->handle(req, ctx);
    } catch (const std::exception&) {  // never let a request take the worker down
      send_error(500, "internal_error", "the OAuth request could not be answered");
      return;
    }
    send_local(r.status, r.content_type, r.body, r.headers);
    return;
  }
  // A password check (Argon2id, tens of ms): on the authority's thread, not this worker's, and
  // at most max_checks_per_address a minute from one address.
  auto* authority = snap_->oauth;
  int64_t retry_s = 0;
  if (!authority->admit_password_check(ctx.client_address, ctx.now_ms, &retry_s)) {
    std::string retry = std::to_string(retry_s);
    std::pair<std::string, std::string> headers[] = {{"Retry-After", retry},
                                                     {"Cache-Control", "no-store"}};
    send_local(429, "application/json",
               R"({"error":"slow_down","error_description":"too many password checks from )"
               R"(this address; retry later"})",
               headers);
    return;
  }
  phase_ = phase::local_wait;
  deadline_ = w_.now + 30'000;
  worker* w = &w_;
  bool queued = authority->run_slow(
      [self = shared_from_this(), snap = snap_, req = std::move(req), ctx, authority, w]() mutable {
        oauth_authority::reply r;
        try {
          r = authority->handle(req, ctx);
        } catch (const std::exception&) {
          r.status = 500;
          r.body = R"({"error":"server_error","error_description":"internal error"})";
        }
        req = {};  // the password goes with it, here
        // Everything the session owns is released on its worker: the session itself, and the
        // snapshot, move into the mailbox job (this one keeps no reference once it returns). The
        // worker's io_context runs without locks, so this thread may not post to it.
        w->deliver([self = std::move(self), snap = std::move(snap), r = std::move(r)] {
          if (self->phase_ != phase::local_wait) return;
          self->phase_ = phase::head;
          self->send_local(r.status, r.content_type, r.body, r.headers);
          self->process_input();
        });
      });
  if (!queued) {
    phase_ = phase::head;
    send_error(503, "temporarily_unavailable", "too many password checks waiting; retry shortly");
  }
}

void client_session::answer_local() {
  // Answered by the gateway itself; a body it did not read means the connection ends.
  int status = ex_.local_status;
  ex_.local_status = 0;
  if (!ex_.request_done) close_after_response_ = true;
  send_error(status, ex_.local_code, ex_.local_message);
}

void client_session::start_delay() {
  phase_ = phase::delayed;
  deadline_ = w_.now + static_cast<int64_t>(ex_.delay_ms) + 5000;
  if (!delay_timer_) delay_timer_ = std::make_unique<asio::steady_timer>(w_.ioc);
  delay_timer_->expires_after(std::chrono::milliseconds(ex_.delay_ms));
  ex_.delay_ms = 0;
  delay_timer_->async_wait([self = shared_from_this()](const error_code& ec) {
    if (ec || self->phase_ != phase::delayed) return;
    self->phase_ = phase::head;
    switch (self->run_stages(self->resume_at_)) {
      case verdict::next:
        self->dispatch();
        break;
      case verdict::respond:
        self->answer_local();
        break;
      case verdict::pause:
        self->start_delay();
        return;
    }
    self->process_input();
  });
}

void client_session::on_request_header(http::basic_parser<true>& parser, error_code& ec) {
  make_request_id();
  if (ex_.version == 11 && ex_.host_count != 1) {
    return reject(400, "bad_request", ex_.host_count ? "more than one Host" : "missing Host", ec);
  }
  if (ex_.host_count > 1) return reject(400, "bad_request", "more than one Host", ec);
  if (!valid_host(ex_.host)) return reject(400, "bad_request", "invalid Host", ec);
  ex_.chunked = parser.chunked();
  auto cl = parser.content_length();
  ex_.has_body = ex_.chunked || (cl && *cl > 0);

  // Split the target into path and query; accept absolute-form (RFC 9112 §3.2.2).
  std::string_view target = ex_.request_target;
  std::string_view host = ex_.host;
  if (target.size() > 7 &&
      (target.substr(0, 7) == "http://" || target.substr(0, 8) == "https://")) {
    auto rest = target.substr(target.find("://") + 3);
    auto slash = rest.find('/');
    host = rest.substr(0, slash);
    target = slash == std::string_view::npos ? std::string_view("/") : rest.substr(slash);
  }
  if (target.empty() || target.front() != '/') {
    if (!(ex_.verb == http::verb::options && target == "*")) {
      return reject(400, "bad_request", "request target must be origin-form", ec);
    }
  }
  auto qpos = target.find('?');
  std::string_view path = target.substr(0, qpos);
  std::string_view query =
      qpos == std::string_view::npos ? std::string_view() : target.substr(qpos + 1);
  // Route on, and forward, the normalized path: /pub/../priv must not reach /priv's upstream
  // past /priv's auth (RFC 3986 section 6).
  if (!path.empty() && path.front() == '/' && !path_is_normal(path, snap_->paths)) {
    path_status st = normalize_path(path, snap_->paths, &ex_.normalized_path);
    if (st != path_status::ok) return reject(400, "bad_request", to_string(st), ec);
    path = ex_.normalized_path;
  }
  std::string_view host_only = host;
  if (!host_only.empty() && host_only.front() == '[') {
    auto end = host_only.find(']');
    host_only = host_only.substr(0, end == std::string_view::npos ? host_only.size() : end + 1);
  } else if (auto colon = host_only.rfind(':'); colon != std::string_view::npos) {
    host_only = host_only.substr(0, colon);
  }

  ex_.fields = fields_;
  ex_.authority = host;
  ex_.host_only = host_only;
  ex_.path = path;
  ex_.query = query;
  ex_.has_query = qpos != std::string_view::npos;
  if (cl) ex_.content_length = *cl;
  if (!parser.keep_alive()) close_after_response_ = true;
  if (match_oauth_endpoint(path, query)) return;
  start_exchange();
}

// --- the exchange: route, stages, upstream head ----------------------------------------------

void client_session::start_exchange() {
  header_views_.clear();
  for (auto& f : fields_) header_views_.push_back({f.name, f.value});
  request_view rv{ex_.method, ex_.host_only, ex_.path, ex_.query,
                  std::span<const header_view>(header_views_)};
  int route_index = snap_->routes_index->match(rv);
  if (route_index < 0) {
    w_.stats.no_route.add();
    ex_.local_status = 404;
    ex_.local_code = "not_found";
    ex_.local_message = "no route matches this request";
    return;
  }
  ex_.route = &snap_->routes[route_index];
  ex_.upstream = ex_.route->upstream;
  run_stages(0);
}

verdict client_session::run_stages(size_t from) {
  stage_context ctx{*snap_, w_.now, w_.index, w_.api_key_failures, w_.stats, client_ip_};
  size_t at = 0;
  verdict v = ex_.route->stages->run_request_head(ex_, ctx, from, &at);
  if (v == verdict::pause) resume_at_ = at + 1;
  if (v == verdict::next) write_upstream_request();
  return v;
}

void client_session::write_upstream_request() {
  const auto& up = *ex_.upstream;
  if (up.cfg->balance == balance_policy::consistent_hash) {
    ex_.hash_key.clear();
    if (!up.hash_header.empty()) {
      for (auto& f : fields_) {
        if (iequals(f.name, up.hash_header)) {
          ex_.hash_key.assign(f.value);
          break;
        }
      }
    } else {
      ex_.hash_key.assign(client_ip_);
    }
  }
  std::string default_host;
  upstream_head h;
  h.method = ex_.method;
  h.path = ex_.path;
  h.query = ex_.query;
  h.has_query = ex_.has_query;
  h.fields = fields_;
  h.drop = ex_.route->request_drop;
  h.strip_authorization = ex_.strip_authorization;
  if (ex_.route->preserve_host && !ex_.authority.empty()) {
    h.host = ex_.authority;
  } else {
    // Without the client's Host, name the first target (like nginx's $proxy_host).
    default_host = up.targets.empty() ? "localhost" : up.targets[0].state->addr.to_string();
    h.host = default_host;
  }
  h.forwarded_host = ex_.authority;
  h.client_ip = client_ip_;
  h.tls = tls_ != nullptr;
  h.version = ex_.version;
  h.request_id = ex_.request_id;
  h.identity = ex_.identity_headers;
  h.chunked = ex_.chunked;
  ex_.route->stages->run_upstream_head(ex_, h);
  up_out_.clear();
  if (write_upstream_head(h, up_out_) != 0) w_.stats.bad_requests.add();  // auth refuses first
  if (!ex_.has_body) ex_.retry_head.assign(up_out_.data(), up_out_.size());
  // From here the parser reads bodies as far as the buffers allow; process_input dispatches.
  req_parser_->eager(true);
}

void client_session::on_request_body_limit(error_code& ec) {
  w_.stats.bad_requests.add();
  close_after_response_ = true;
  if (!ex_.response_head_sent) {
    release_upstream(false);
    send_error(413, "payload_too_large", "request body exceeds the route's limit");
  } else {
    close();
  }
  ec = http::error::body_limit;
}

void client_session::on_request_body(std::string_view body, error_code& ec) {
  if (ex_.oauth_endpoint) {
    if (ex_.oauth_body.size() + body.size() > max_oauth_body) {
      w_.stats.bad_requests.add();
      close_after_response_ = true;
      send_error(413, "payload_too_large", "OAuth request bodies are limited to 16 KiB");
      ec = http::error::body_limit;
      return;
    }
    ex_.oauth_body.append(body);
    return;
  }
  if (ex_.route->stages->reads_request_body() &&
      ex_.route->stages->run_request_body(ex_, body.size(), false) != verdict::next) {
    on_request_body_limit(ec);
    return;
  }
  ex_.body_bytes += body.size();
  if (ex_.chunked) {
    // Each piece becomes its own chunk: framing is ours, never the client's bytes.
    if (body.empty()) return;
    up_out_.append_hex(body.size());
    up_out_.append("\r\n");
    up_out_.append(body);
    up_out_.append("\r\n");
  } else {
    up_out_.append(body);
  }
}

void client_session::on_request_chunk_header(uint64_t size, error_code& ec) {
  if (ex_.oauth_endpoint) return;  // on_request_body caps it
  // The declared size is known before the data: refuse at once rather than after forwarding.
  if (ex_.route->stages->reads_request_body() &&
      ex_.route->stages->run_request_body(ex_, size, true) != verdict::next) {
    on_request_body_limit(ec);
  }
}

void client_session::on_request_finish(error_code& ec) {
  if (ex_.chunked && !ex_.oauth_endpoint) up_out_.append("0\r\n\r\n");
  ex_.request_done = true;
}

// --- dispatching to an upstream --------------------------------------------------------------

bool is_idempotent(http::verb v) {
  switch (v) {
    case http::verb::get:
    case http::verb::head:
    case http::verb::options:
    case http::verb::put:
    case http::verb::delete_:
    case http::verb::trace:
      return true;
    default:
      return false;
  }
}

bool client_session::request_replayable() const {
  // A request without a body can be sent again from ex_.retry_head; one with a body only while none
  // of it has been taken from the client buffer.
  return !ex_.has_body || !ex_.body_started;
}

void client_session::dispatch() {
  auto& up = *ex_.upstream;
  int64_t now = w_.now;
  if (ex_.attempts == 0 && !ex_.exclude) up.budget.on_request(now);
  const int64_t wall = unix_now_ms();
  auto pick = [&](const upstream_runtime& from, const target_state* exclude) {
    ex_.picked = pick_target(from, w_.index, ex_.hash_key, exclude, now, wall);
    return ex_.picked ? ex_.picked->state.get() : nullptr;
  };
  ex_.target = pick(up, ex_.exclude);
  if (!ex_.target && !ex_.exclude) {
    // Nothing usable here: the upstream's failover chain, in order.
    for (const upstream_runtime* next : up.failover_chain) {
      ex_.target = pick(*next, nullptr);
      if (ex_.target) {
        up.failovers.fetch_add(1, std::memory_order_relaxed);
        ex_.upstream = next;
        break;
      }
    }
  }
  const auto& chosen = *ex_.upstream;  // `up`, or the failover upstream that has a target
  ex_.probe = false;
  if (ex_.target && !ex_.target->breaker.on_dispatch(wall, chosen.cfg->circuit_breaker,
                                                     ex_.target->may_probe.load(), &ex_.probe)) {
    // Another worker took this half-open period's probe: choose again without this target.
    ex_.target = pick(chosen, ex_.target);
    if (ex_.target && !ex_.target->breaker.on_dispatch(wall, chosen.cfg->circuit_breaker,
                                                       ex_.target->may_probe.load(), &ex_.probe)) {
      ex_.target = nullptr;
    }
  }
  if (!ex_.target) {
    if (!ex_.request_done) close_after_response_ = true;
    send_error(503, "no_healthy_upstream", "no healthy target in upstream " + chosen.cfg->name);
    return;
  }
  ex_.target->metrics->active_requests.fetch_add(1, std::memory_order_relaxed);
  ex_.target->metrics->requests.fetch_add(1, std::memory_order_relaxed);
  ex_.counted_active = true;
  up_ = w_.take_idle(ex_.target);
  if (up_) {
    ex_.reused_connection = true;
    w_.stats.upstream_connections_reused.add();
    up_->owner = shared_from_this();
    phase_ = phase::proxying;
    deadline_ = now + chosen.cfg->timeouts.request.count();
    send_upstream();
    return;
  }
  ex_.reused_connection = false;
  uint32_t cap = chosen.cfg->pool.max_connections_per_target;
  if (cap && ex_.target->id < w_.open_by_target.size() &&
      w_.open_by_target[ex_.target->id] >= cap) {
    // Like Envoy's max_connections breaker: overflow is refused rather than queued.
    w_.stats.upstream_overflows.add();
    release_upstream(false);
    if (!ex_.request_done) close_after_response_ = true;
    send_error(503, "upstream_overloaded",
               "connection limit reached for upstream " + chosen.cfg->name);
    return;
  }
  connect_upstream();
}

void client_session::connect_upstream() {
  phase_ = phase::connecting;
  deadline_ = w_.now + ex_.upstream->cfg->timeouts.connect.count();
  up_ = std::make_shared<upstream_conn>(w_, ex_.target);
  up_->owner = shared_from_this();
  w_.stats.upstream_connections_opened.add();
  error_code ec;
  const tcp::endpoint endpoint = to_endpoint(ex_.picked->endpoint);
  up_->socket.open(endpoint.protocol(), ec);
  if (ec) {
    upstream_failed(failure::connect);
    return;
  }
  up_->open = true;
  up_->socket.async_connect(endpoint,
                            [self = shared_from_this(), conn = up_](const error_code& ec) {
                              if (self->up_ != conn || self->phase_ == phase::closed) return;
                              self->on_connected(ec);
                            });
}

void client_session::on_connected(const error_code& ec) {
  if (ec) {
    upstream_failed(failure::connect);
    return;
  }
  error_code ignored;
  up_->socket.set_option(tcp::no_delay(true), ignored);
  up_->socket.non_blocking(true, ignored);
  phase_ = phase::proxying;
  deadline_ = w_.now + ex_.upstream->cfg->timeouts.request.count();
  send_upstream();
  if (ex_.body_started) process_input();
}

void client_session::send_upstream() {
  if (ex_.has_body) ex_.body_started = true;
  // A body still to be parsed from in_ is checked against the route's limit before anything is
  // sent: process_input flushes the head together with it. A body the head's parse already took
  // whole (ex_.request_done) is in up_out_ now, and whatever follows it in in_ is the next request.
  if (!ex_.has_body || ex_.request_done || in_.empty()) flush_upstream();
  up_->start_read();
}

void client_session::flush_upstream() {
  if (writing_upstream_ || up_out_.empty() || !up_ || phase_ == phase::connecting) return;
  writing_upstream_ = true;
  up_->socket.async_write_some(
      asio::buffer(up_out_.data(), up_out_.size()),
      [self = shared_from_this(), conn = up_](const error_code& ec, size_t n) {
        if (self->up_ != conn || self->phase_ == phase::closed) return;
        self->writing_upstream_ = false;
        if (ec) {
          self->upstream_failed(failure::reset);
          return;
        }
        self->up_out_.consume(n);
        if (!self->ex_.response_head_sent) {
          // The request timeout runs from the last byte written, not from the first.
          self->deadline_ = self->w_.now + self->ex_.upstream->cfg->timeouts.request.count();
        }
        if (!self->up_out_.empty()) {
          self->flush_upstream();
        } else if (self->ex_.body_started && !self->ex_.request_done) {
          self->process_input();  // room again for request body
        }
      });
}

void client_session::on_upstream_data(const error_code& ec) {
  auto conn = up_;
  if (!conn || phase_ != phase::proxying) return;
  if (ec) {
    if (ec == asio::error::eof && resp_parser_ && resp_parser_->is_header_done() &&
        !resp_parser_->is_done() && conn->in.empty()) {
      // A response delimited by the end of the connection.
      error_code pec;
      resp_parser_->put_eof(pec);
      ex_.upstream_keep_alive = false;
      if (!pec) {
        flush_client();
        finish_exchange();
        return;
      }
    }
    if (!conn->in.empty()) parse_upstream();  // what arrived before the close still counts
    if (up_ == conn) upstream_failed(failure::reset);
    return;
  }
  parse_upstream();
  if (up_ == conn && phase_ == phase::proxying && !resp_paused_) conn->start_read();
}

void client_session::parse_upstream() {
  auto conn = up_;
  while (up_ == conn && !conn->in.empty()) {
    if (!resp_parser_) {
      resp_parser_.emplace(*this);
      resp_parser_->header_limit(64 * 1024);
      resp_parser_->body_limit(boost::none);
      resp_parser_->eager(true);
      if (ex_.verb == http::verb::head) resp_parser_->skip(true);
    }
    if (out_.size() >= high_water) {
      resp_paused_ = true;
      break;
    }
    error_code ec;
    size_t used = resp_parser_->put(asio::buffer(conn->in.data(), conn->in.size()), ec);
    if (phase_ == phase::closed || up_ != conn) return;
    if (ex_.retry_now) {
      ex_.retry_now = false;
      upstream_failed(failure::reset);
      return;
    }
    if (ec == http::error::need_more) {
      conn->in.consume(used);
      if (used == 0) break;
      continue;
    }
    if (ec) {
      // Whatever the upstream said before the bytes went wrong is not passed on as its answer.
      if (!ex_.response_head_sent) ex_.status = 0;
      upstream_failed(failure::malformed);
      return;
    }
    conn->in.consume(used);
    if (resp_parser_->is_done()) {
      if (ex_.status / 100 == 1) {
        resp_parser_.reset();  // an interim response; the final one follows
        continue;
      }
      flush_client();
      finish_exchange();
      return;
    }
  }
  if (ex_.response_head_sent) deadline_ = w_.now + snap_->cfg.limits.idle_timeout.count();
  flush_client();
}

void client_session::record_breaker(bool success) {
  if (!ex_.target) return;
  const auto& cb = ex_.upstream->cfg->circuit_breaker;
  if (!cb.enabled) return;
  int64_t wall = unix_now_ms();
  bool was_probe = ex_.probe;
  ex_.probe = false;
  if (ex_.target->breaker.record(success, was_probe, wall, cb, snap_->cfg.node.id)) {
    auto v = ex_.target->breaker.view();
    snap_->registry->count_transition();
    if (auto l = spdlog::get("node.http"))
      l->warn("breaker of upstream {} target {} is now {}", ex_.target->upstream,
              ex_.target->addr.to_string(), to_string(v.state));
    if (cb.scope != "local") snap_->registry->queue_publish(ex_.target->key);
  }
}

void client_session::count_target_failure() {
  if (!ex_.target) return;
  record_breaker(false);
  ex_.target->metrics->failures.fetch_add(1, std::memory_order_relaxed);
  const auto& outlier = ex_.upstream->cfg->outlier;
  uint32_t n = ex_.target->consecutive_failures.fetch_add(1, std::memory_order_relaxed) + 1;
  if (outlier.consecutive_failures && n >= outlier.consecutive_failures) {
    ex_.target->consecutive_failures.store(0, std::memory_order_relaxed);
    ex_.target->ejected_until_ms.store(now_ms() + outlier.eject_for.count(),
                                       std::memory_order_relaxed);
    w_.stats.ejections.add();
    spdlog::get("node.http")
        ? spdlog::get("node.http")
              ->warn("upstream {} target {} ejected for {} ms after {} failures",
                     ex_.target->upstream, ex_.target->addr.to_string(), outlier.eject_for.count(),
                     n)
        : void();
    // An ejection is an observation the other nodes should share: it opens the target's breaker
    // (published with the breaker's scope), or else the ejection would stop the traffic that
    // would have tripped the breaker and only this node would avoid the target.
    const auto& cb = ex_.upstream->cfg->circuit_breaker;
    if (ex_.target->breaker.force(false, unix_now_ms(), cb, snap_->cfg.node.id)) {
      snap_->registry->count_transition();
      if (cb.scope != "local") snap_->registry->queue_publish(ex_.target->key);
    }
  }
}

void client_session::upstream_failed(failure why) {
  const auto& cfg = *ex_.upstream->cfg;
  switch (why) {
    case failure::connect:
      w_.stats.upstream_connect_failures.add();
      break;
    case failure::connect_timeout:
    case failure::timeout:
      w_.stats.upstream_timeouts.add();
      break;
    case failure::reset:
      w_.stats.upstream_resets.add();
      break;
    case failure::malformed:
      w_.stats.upstream_malformed.add();
      break;
  }
  bool got_response_bytes = resp_parser_ && resp_parser_->got_some();
  bool stale_pooled =
      why == failure::reset && ex_.reused_connection && !got_response_bytes && ex_.status == 0;
  if (!stale_pooled && ex_.status == 0) count_target_failure();
  release_upstream(false);
  if (ex_.response_head_sent) {
    close();  // the response is cut short; the client sees the connection end
    return;
  }
  bool connect_failure = why == failure::connect || why == failure::connect_timeout;
  bool retryable_kind = (connect_failure && cfg.retries.on_connect_failure) ||
                        (why == failure::timeout && cfg.retries.on_timeout) ||
                        (why == failure::reset && ex_.status != 0);  // retry-on-status
  bool may_replay = request_replayable() && (connect_failure || is_idempotent(ex_.verb));
  bool retry = false;
  if (may_replay && stale_pooled && ex_.attempts == 0) {
    retry = true;  // a pooled connection the target had closed: not the target's fault
  } else if (may_replay && retryable_kind && ex_.attempts < cfg.retries.attempts) {
    if (ex_.upstream->budget.try_retry(w_.now)) {
      retry = true;
    } else {
      w_.stats.retries_budget_exhausted.add();
    }
  }
  if (retry) {
    ++ex_.attempts;
    w_.stats.retries.add();
    if (!stale_pooled) ex_.exclude = ex_.target;
    if (!ex_.has_body) {
      up_out_.clear();
      up_out_.append(ex_.retry_head);
    }
    ex_.status = 0;
    resp_fields_.clear();
    dispatch();
    return;
  }
  if (!ex_.request_done) close_after_response_ = true;
  if (ex_.status != 0) {
    // Retries on status exhausted: pass the last status on as our own error.
    send_error(ex_.status, "upstream_error", "upstream answered " + std::to_string(ex_.status));
  } else if (connect_failure) {
    send_error(why == failure::connect ? 502 : 504,
               why == failure::connect ? "upstream_unavailable" : "upstream_timeout",
               why == failure::connect ? "cannot connect to upstream " + cfg.name
                                       : "connecting to upstream " + cfg.name + " timed out");
  } else if (why == failure::timeout) {
    send_error(504, "upstream_timeout", "upstream " + cfg.name + " did not answer in time");
  } else if (why == failure::malformed) {
    send_error(502, "bad_gateway", "upstream " + cfg.name + " sent a malformed response");
  } else {
    send_error(502, "bad_gateway", "upstream " + cfg.name + " closed the connection");
  }
  if (phase_ == phase::idle) process_input();
}

void client_session::release_upstream(bool reuse) {
  if (ex_.counted_active && ex_.target) {
    ex_.target->metrics->active_requests.fetch_sub(1, std::memory_order_relaxed);
    ex_.counted_active = false;
  }
  resp_parser_.reset();
  writing_upstream_ = false;
  if (!up_) return;
  auto conn = std::move(up_);
  up_.reset();
  conn->owner.reset();
  if (reuse && conn->open && ex_.route) {
    w_.give_back(std::move(conn), *ex_.upstream->cfg);
  } else {
    conn->close();
  }
}

// --- response parser callbacks ---------------------------------------------------------------

void client_session::on_response_line(int status, std::string_view reason, int version,
                                      error_code& ec) {
  ex_.status = status;
  ex_.reason = reason;
  ex_.response_version = version;
  resp_fields_.clear();
  ex_.response_content_length_count = ex_.response_transfer_encoding_count = 0;
  if (!valid_field_value(reason) || (version != 10 && version != 11) ||
      (!reason.empty() && !ends_line(reason, up_->in))) {
    ex_.response_malformed = true;
    ec = http::error::bad_value;
  }
}

void client_session::on_response_field(http::field f, std::string_view name, std::string_view value,
                                       error_code& ec) {
  // What a client would misread must not pass: a response a smuggling-prone peer could frame
  // differently from us is refused as a whole (502), and its connection is not reused.
  auto malformed = [&] {
    ex_.response_malformed = true;
    ec = http::error::bad_value;
  };
  if (resp_fields_.size() >= max_fields) {
    ec = http::error::header_limit;
    return;
  }
  if (!valid_field_value(value)) return malformed();
  // Each line must end in CRLF (no bare LF) and may not be folded: the value is a view into the
  // receive buffer followed, after optional whitespace, by "\r\n".
  if (!value.empty() && !ends_line(value, up_->in)) return malformed();
  switch (f) {
    case http::field::content_length:
      if (++ex_.response_content_length_count > 1 || value.empty() || value.size() > 18 ||
          value.find_first_not_of("0123456789") != std::string_view::npos) {
        return malformed();
      }
      break;
    case http::field::transfer_encoding:
      if (++ex_.response_transfer_encoding_count > 1 || !iequals(trim(value), "chunked")) {
        return malformed();
      }
      break;
    default:
      break;
  }
  resp_fields_.push_back({f, name, value});
}

void client_session::on_response_header(http::basic_parser<false>& parser, error_code& ec) {
  bool informational = ex_.status / 100 == 1;
  // A 101 nobody asked for (we never forward Upgrade), framing fields on a response that has no
  // body (RFC 9110 sections 8.6 and 6.4.1), or both Content-Length and Transfer-Encoding
  // (RFC 9112 section 6.3): the upstream is broken or hostile.
  bool bodyless = informational || ex_.status == 204;
  if (ex_.status == 101 ||
      (ex_.response_content_length_count && ex_.response_transfer_encoding_count) ||
      (bodyless && (ex_.response_transfer_encoding_count ||
                    (parser.content_length() && *parser.content_length() != 0)))) {
    ex_.response_malformed = true;
    ec = http::error::bad_value;
    return;
  }
  const auto& cfg = *ex_.upstream->cfg;
  if (!informational) {
    bool retry_status = false;
    for (int s : cfg.retries.on_status) retry_status |= (s == ex_.status);
    if (ex_.status >= 500) {
      count_target_failure();
    } else if (ex_.target) {
      ex_.target->consecutive_failures.store(0, std::memory_order_relaxed);
      // A slow answer counts against the breaker (slow_call) though the client still gets it.
      const auto& cb = ex_.upstream->cfg->circuit_breaker;
      bool slow = cb.slow_call.count() > 0 &&
                  steady_clock::now() - ex_.started > std::chrono::milliseconds(cb.slow_call);
      record_breaker(!slow);
    }
    if (retry_status && ex_.attempts < cfg.retries.attempts && request_replayable() &&
        is_idempotent(ex_.verb)) {
      ex_.retry_now = true;
      ec = http::error::bad_value;
      return;
    }
  }
  response_head h;
  h.status = ex_.status;
  h.reason = ex_.reason;
  h.fields = resp_fields_;
  h.informational = informational;
  if (!informational) {
    h.rate_limit_lines = ex_.rate_limit_headers;
    h.request_id = ex_.request_id;
    bool no_body = ex_.status == 204 || ex_.status == 304 || ex_.verb == http::verb::head;
    if (!no_body && (parser.chunked() || !parser.content_length())) {
      if (ex_.version == 11) {
        ex_.response_chunked = true;
      } else {
        close_after_response_ = true;  // an HTTP/1.0 client reads to the end of the connection
      }
    }
    h.chunked = ex_.response_chunked;
    ex_.upstream_keep_alive = parser.keep_alive();
    if (!ex_.request_done || w_.draining) close_after_response_ = true;
    h.connection = close_after_response_ ? response_head::connection::close
                   : ex_.version == 10   ? response_head::connection::keep_alive
                                         : response_head::connection::as_is;
    ex_.response_head_sent = true;
    if (ex_.route) ex_.route->metrics->per_worker[w_.index].status[status_slot(ex_.status)].add();
  }
  ex_.route->stages->run_response_head(ex_, h);
  write_response_head(h, out_);
}

void client_session::on_response_body(std::string_view body, error_code& ec) {
  ex_.response_bytes += body.size();
  if (ex_.response_chunked) {
    if (body.empty()) return;
    out_.append_hex(body.size());
    out_.append("\r\n");
    out_.append(body);
    out_.append("\r\n");
  } else {
    out_.append(body);
  }
}

void client_session::on_response_chunk_header(uint64_t, error_code&) {}

void client_session::on_response_finish(error_code& ec) {
  if (ex_.status / 100 == 1) return;
  if (ex_.response_chunked) out_.append("0\r\n\r\n");
}

// --- finishing an exchange -------------------------------------------------------------------

void client_session::record_done() {
  auto elapsed =
      std::chrono::duration_cast<std::chrono::microseconds>(steady_clock::now() - ex_.started);
  w_.stats.requests_total.add();
  if (ex_.route) {
    auto& st = ex_.route->metrics->per_worker[w_.index];
    size_t b = 0;
    uint64_t us = static_cast<uint64_t>(elapsed.count());
    while (b < latency_bounds_us.size() && us > latency_bounds_us[b]) ++b;
    st.latency[b].add();
    st.latency_sum_us.add(us);
    st.request_bytes.add(ex_.body_bytes);
    st.response_bytes.add(ex_.response_bytes);
  }
  if (w_.access_log) log_access();
}

void client_session::log_access() {
  byte_buffer line;
  line.append("{\"request_id\":");
  append_json_string(line, ex_.request_id);
  line.append(",\"client\":");
  append_json_string(line, client_ip_);
  line.append(",\"method\":");
  append_json_string(line, ex_.access_method);
  line.append(",\"path\":");
  append_json_string(line, ex_.access_path);
  line.append(",\"status\":");
  line.append_decimal(static_cast<uint64_t>(ex_.status));
  line.append(",\"route\":");
  append_json_string(line, ex_.route ? std::string_view(ex_.route->cfg->name) : std::string_view());
  line.append(",\"upstream\":");
  append_json_string(line, ex_.target ? ex_.target->addr.to_string() : std::string());
  line.append(",\"attempts\":");
  line.append_decimal(ex_.attempts + 1);
  line.append(",\"request_bytes\":");
  line.append_decimal(ex_.body_bytes);
  line.append(",\"response_bytes\":");
  line.append_decimal(ex_.response_bytes);
  line.append(",\"duration_ms\":");
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(steady_clock::now() - ex_.started)
                .count();
  char tmp[32];
  int n = std::snprintf(tmp, sizeof tmp, "%.3f", static_cast<double>(us) / 1000.0);
  line.append(tmp, static_cast<size_t>(n));
  line.append('}');
  w_.access_log->info(std::string_view(line.data(), line.size()));
}

void client_session::finish_exchange() {
  record_done();
  // Bytes after the end of a response (we never pipeline upstream) mean the peer frames
  // messages differently from us: never reuse that connection.
  bool reuse = ex_.upstream_keep_alive && ex_.request_done && up_out_.empty() &&
               !writing_upstream_ && (!up_ || up_->in.empty());
  release_upstream(reuse);
  if (!ex_.request_done) close_after_response_ = true;
  if (close_after_response_) {
    phase_ = phase::closing;
    deadline_ = w_.now + 5000;
    flush_client();
    if (!writing_client_ && out_.empty()) linger();
    return;
  }
  begin_request();
  phase_ = phase::idle;
  deadline_ = w_.now + snap_->cfg.limits.idle_timeout.count();
  flush_client();
  process_input();
}

// --- writing to the client -------------------------------------------------------------------

void client_session::send_error(int status, std::string_view code, std::string_view message) {
  if (phase_ == phase::closed) return;
  if (ex_.response_head_sent) {
    close();
    return;
  }
  if (ex_.request_id.empty()) make_request_id();
  // A route's fallback answers in place of the gateway's own upstream errors.
  const fallback_config* fallback =
      ex_.route && ex_.route->cfg->fallback && (status == 502 || status == 503 || status == 504)
          ? &*ex_.route->cfg->fallback
          : nullptr;
  if (fallback) {
    w_.stats.fallbacks.add();
    send_local(fallback->status, fallback->content_type, fallback->body, fallback->headers);
    return;
  }
  byte_buffer body;
  body.append("{\"error\":");
  append_json_string(body, code);
  body.append(",\"message\":");
  append_json_string(body, message);
  body.append(",\"request_id\":");
  append_json_string(body, ex_.request_id);
  body.append("}\n");
  send_local(status, "application/json", body.view(), {});
}

void client_session::send_local(int status, std::string_view content_type, std::string_view body,
                                std::span<const std::pair<std::string, std::string>> headers) {
  if (phase_ == phase::closed) return;
  if (ex_.response_head_sent) {
    close();
    return;
  }
  if (ex_.request_id.empty()) make_request_id();
  ex_.status = status;
  out_.append("HTTP/1.1 ");
  out_.append_decimal(static_cast<uint64_t>(status));
  out_.append(' ');
  out_.append(reason_for(status));
  out_.append("\r\nContent-Type: ");
  out_.append(content_type);
  out_.append("\r\nContent-Length: ");
  out_.append_decimal(body.size());
  out_.append("\r\nX-Request-Id: ");
  out_.append(ex_.request_id);
  for (const auto& [k, v] : headers) {
    out_.append("\r\n");
    out_.append(k);
    out_.append(": ");
    out_.append(v);
  }
  if (status == 401 && !ex_.www_authenticate.empty()) {
    out_.append("\r\nWWW-Authenticate: ");
    out_.append(ex_.www_authenticate);
  }
  if (!ex_.rate_limit_headers.empty()) {
    out_.append("\r\n");
    out_.append(
        std::string_view(ex_.rate_limit_headers).substr(0, ex_.rate_limit_headers.size() - 2));
  }
  if (!ex_.request_done) close_after_response_ = true;
  if (close_after_response_ || w_.draining) {
    close_after_response_ = true;
    out_.append("\r\nConnection: close");
  }
  out_.append("\r\n\r\n");
  if (ex_.verb != http::verb::head) out_.append(body);
  if (ex_.route) ex_.route->metrics->per_worker[w_.index].status[status_slot(status)].add();
  ex_.response_head_sent = true;
  if (ex_.started == steady_clock::time_point()) ex_.started = steady_clock::now();
  record_done();
  release_upstream(false);
  if (close_after_response_) {
    phase_ = phase::closing;
    deadline_ = w_.now + 5000;
  } else {
    begin_request();
    phase_ = phase::idle;
    deadline_ = w_.now + snap_->cfg.limits.idle_timeout.count();
  }
  flush_client();
}

void client_session::flush_client() {
  if (writing_client_ || out_.empty() || phase_ == phase::closed) return;
  writing_client_ = true;
  auto done = [self = shared_from_this()](const error_code& ec, size_t n) {
    self->on_client_written(ec, n);
  };
  if (tls_) {
    tls_->async_write_some(asio::buffer(out_.data(), out_.size()), std::move(done));
  } else {
    socket_.async_write_some(asio::buffer(out_.data(), out_.size()), std::move(done));
  }
}

void client_session::on_client_written(const error_code& ec, size_t n) {
  writing_client_ = false;
  if (phase_ == phase::closed) return;
  if (ec) {
    close();
    return;
  }
  out_.consume(n);
  if (phase_ == phase::proxying) deadline_ = w_.now + snap_->cfg.limits.idle_timeout.count();
  if (!out_.empty()) {
    flush_client();
  } else if (phase_ == phase::closing) {
    linger();
    return;
  } else if (phase_ == phase::idle) {
    out_.release_if_empty();
    up_out_.release_if_empty();
    if (w_.draining && in_.empty()) {
      close();
      return;
    }
  }
  if (resp_paused_ && out_.size() < high_water / 2) resume_upstream();
}

void client_session::resume_upstream() {
  resp_paused_ = false;
  if (!up_) return;
  auto conn = up_;
  if (!conn->in.empty()) parse_upstream();
  if (up_ != conn || resp_paused_) return;
  conn->start_read();
}

}  // namespace

// --- proxy_server ----------------------------------------------------------------------------

struct proxy_server::impl {
  impl(unsigned n, metrics_registry& metrics, std::shared_ptr<spdlog::logger> log)
      : access_log(std::move(log)) {
    for (unsigned i = 0; i < n; ++i) {
      workers.push_back(std::make_unique<worker>(i, metrics, connections, access_log.get()));
    }
  }
  std::shared_ptr<spdlog::logger> access_log;
  std::atomic<int64_t> connections{0};
  std::vector<std::unique_ptr<worker>> workers;
  std::vector<std::thread> threads;
  uint16_t port = 0;
  uint16_t tls_port = 0;
  bool stopped = false;
};

proxy_server::proxy_server(unsigned workers, metrics_registry& metrics,
                           std::shared_ptr<spdlog::logger> access_log)
    : impl_(std::make_unique<impl>(std::max(1u, workers), metrics, std::move(access_log))) {}

proxy_server::~proxy_server() {
  stop();
}

bool proxy_server::start(const address& listen, std::shared_ptr<const snapshot> snap,
                         std::string* error) {
  error_code ec;
  auto addr = asio::ip::make_address(listen.host == "localhost" ? "127.0.0.1" : listen.host, ec);
  if (ec) {
    *error = "listen.proxy " + listen.to_string() + ": " + ec.message();
    return false;
  }
  uint16_t port = listen.port;
  if (port != 0) {
    // SO_REUSEPORT would let a second process on the same port silently take half the
    // connections: first make sure nobody holds the port.
    tcp::acceptor probe(impl_->workers[0]->ioc);
    tcp::endpoint ep(addr, port);
    probe.open(ep.protocol(), ec);
    if (!ec) probe.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) probe.bind(ep, ec);
    if (ec) {
      *error = "listen.proxy " + listen.to_string() + ": " + ec.message();
      return false;
    }
  }
  for (auto& w : impl_->workers) {
    w->snap = snap;
    w->max_connections = snap->cfg.limits.max_connections;
    tcp::endpoint ep(addr, port);
    w->acceptor.open(ep.protocol(), ec);
    if (!ec) w->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) {
      int one = 1;
      if (::setsockopt(w->acceptor.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one, sizeof one)) {
        ec.assign(errno, boost::system::system_category());
      }
    }
    if (!ec) w->acceptor.bind(ep, ec);
    if (!ec) w->acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (ec) {
      *error = "listen.proxy " + listen.to_string() + ": " + ec.message();
      return false;
    }
    port = w->acceptor.local_endpoint().port();
  }
  impl_->port = port;
  if (snap->tls && snap->cfg.tls && !listen_tls(snap->cfg.tls->listen, error)) return false;
  for (auto& w : impl_->workers) {
    w->start_accept(w->acceptor, false);
    if (w->tls_acceptor.is_open()) w->start_accept(w->tls_acceptor, true);
    w->start_sweep();
    impl_->threads.emplace_back([wp = w.get()] { wp->ioc.run(); });
  }
  return true;
}

// Opens every worker's TLS acceptor on listen (SO_REUSEPORT, as the plain one).
bool proxy_server::listen_tls(const address& listen, std::string* error) {
  error_code ec;
  auto addr = asio::ip::make_address(listen.host == "localhost" ? "127.0.0.1" : listen.host, ec);
  uint16_t port = listen.port;
  for (auto& w : impl_->workers) {
    if (ec) break;
    tcp::endpoint ep(addr, port);
    w->tls_acceptor.open(ep.protocol(), ec);
    if (!ec) w->tls_acceptor.set_option(asio::socket_base::reuse_address(true), ec);
    if (!ec) {
      int one = 1;
      if (::setsockopt(w->tls_acceptor.native_handle(), SOL_SOCKET, SO_REUSEPORT, &one,
                       sizeof one)) {
        ec.assign(errno, boost::system::system_category());
      }
    }
    if (!ec) w->tls_acceptor.bind(ep, ec);
    if (!ec) w->tls_acceptor.listen(asio::socket_base::max_listen_connections, ec);
    if (!ec) port = w->tls_acceptor.local_endpoint().port();
  }
  if (ec) {
    *error = "tls.listen " + listen.to_string() + ": " + ec.message();
    return false;
  }
  impl_->tls_port = port;
  return true;
}

uint16_t proxy_server::port() const {
  return impl_->port;
}

uint16_t proxy_server::tls_port() const {
  return impl_->tls_port;
}

void proxy_server::update(std::shared_ptr<const snapshot> snap) {
  for (auto& w : impl_->workers) {
    std::lock_guard lock(w->mail.mutex);
    w->mail.snap = snap;
    w->mail.pending.store(true, std::memory_order_release);
  }
}

int64_t proxy_server::connections() const {
  return impl_->connections.load(std::memory_order_relaxed);
}

void proxy_server::drain(duration timeout) {
  for (auto& w : impl_->workers) {
    std::lock_guard lock(w->mail.mutex);
    w->mail.drain = true;
    w->mail.pending.store(true, std::memory_order_release);
  }
  auto deadline = steady_clock::now() + timeout;
  while (steady_clock::now() < deadline) {
    bool idle = true;
    for (auto& w : impl_->workers) idle &= w->open_sessions.load() == 0;
    if (idle) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  stop();
}

void proxy_server::stop() {
  if (impl_->stopped) return;
  impl_->stopped = true;
  for (auto& w : impl_->workers) {
    std::lock_guard lock(w->mail.mutex);
    w->mail.stop = true;
    w->mail.pending.store(true, std::memory_order_release);
  }
  for (auto& t : impl_->threads) {
    if (t.joinable()) t.join();
  }
}

}  // namespace meridian::node
