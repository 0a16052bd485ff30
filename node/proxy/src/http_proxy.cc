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

#include "endpoint.h"
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
  // Checks the route's JWT providers against the request's bearer token. On failure sets up a
  // 401 answer and returns false; on success records the claim headers to forward.
  bool authenticate_jwt();
  // Runs the route's auth methods (any one suffices) and its group ACL; false with a 401 or
  // 403 prepared. On success the consumer's identity headers are queued for the upstream.
  bool authenticate();
  // *presented: a key came with the request (so a wrong one counts against the address).
  bool authenticate_api_key(std::string_view query, bool* presented);
  // Checks the verified token against the route's scopes and claims; sets
  // auth_failure_message_ when it falls short.
  bool token_meets(const auth_config& auth);
  // Applies the route's rate limits; false (with a 429 prepared) when one refuses the request.
  bool check_rate_limits();
  // Holds the request for delay_ms_ (a rate limit's max_delay), then dispatches it.
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

  // The request being proxied.
  std::vector<field_view> fields_;
  std::vector<header_view> header_views_;  // the router's view of fields_, reused
  http::verb verb_ = http::verb::unknown;
  std::string_view method_;
  std::string_view req_target_;
  int version_ = 11;
  int content_length_count_ = 0;
  int transfer_encoding_count_ = 0;
  int host_count_ = 0;
  std::string_view host_;
  bool req_chunked_ = false;
  bool req_has_body_ = false;
  bool req_done_ = false;
  bool body_started_ = false;
  uint64_t req_body_bytes_ = 0;
  const route_runtime* route_ = nullptr;
  const upstream_runtime* upstream_ = nullptr;  // the route's, or one of its failover chain
  std::string request_id_;
  std::string hash_key_;
  std::string retry_head_;
  std::string normalized_path_;  // the request's path after normalization, when it changed
  std::string access_path_;
  std::string access_method_;
  steady_clock::time_point started_;
  uint32_t attempts_ = 0;
  bool reused_connection_ = false;
  bool counted_active_ = false;
  bool retry_now_ = false;
  const target_state* exclude_ = nullptr;
  int local_status_ = 0;
  std::string www_authenticate_;    // for a 401 answer
  std::string rate_limit_headers_;  // "RateLimit-...: v\r\n" lines for the answer, or empty
  std::string consumer_;            // the authenticated consumer (JWT sub), or empty
  uint64_t delay_ms_ = 0;           // a rate limit's max_delay: wait this long, then dispatch
  bool probe_ = false;              // this attempt is a half-open breaker probe
  std::unique_ptr<asio::steady_timer> delay_timer_;                // created on the first delay
  std::vector<std::pair<std::string, std::string>> auth_headers_;  // verified claims to forward
  bool strip_authorization_ = false;
  const char* local_code_ = "";
  const char* local_message_ = "";
  std::string auth_failure_message_;                // owns local_message_ for token failures
  std::shared_ptr<const jwt_result> verified_jwt_;  // the request's verified token, if any
  // A request to one of the OAuth endpoints (answered here, body read into oauth_body_).
  size_t head_scanned_ = 0;  // bytes of in_ already searched for the end of the head
  bool oauth_endpoint_ = false;
  oauth_authority::endpoint oauth_kind_ = oauth_authority::endpoint::token;
  std::string oauth_authorization_;
  std::string oauth_body_;
  std::string oauth_query_;
  bool oauth_get_ = false;
  static constexpr size_t max_oauth_body = 16 * 1024;

  // The upstream exchange.
  std::shared_ptr<upstream_conn> up_;
  target_state* target_ = nullptr;
  const upstream_target* picked_ = nullptr;  // target_ as snap_ configures it (its endpoint)
  byte_buffer up_out_;
  bool writing_upstream_ = false;
  std::optional<response_parser<client_session>> resp_parser_;
  std::vector<field_view> resp_fields_;
  int status_ = 0;
  std::string_view reason_;
  int resp_version_ = 11;
  bool resp_head_sent_ = false;
  bool resp_malformed_ = false;
  int resp_content_length_count_ = 0;
  int resp_transfer_encoding_count_ = 0;
  bool resp_chunked_out_ = false;  // we chunk the body towards the client
  bool resp_paused_ = false;       // client output above high water
  bool upstream_keep_alive_ = true;
  uint64_t resp_bytes_ = 0;
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
      if (!resp_head_sent_) {
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
        (phase_ == phase::proxying && !req_done_)) {
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
  access_method_.clear();
  access_path_.clear();
  verb_ = http::verb::unknown;
  method_ = req_target_ = host_ = {};
  version_ = 11;
  content_length_count_ = transfer_encoding_count_ = host_count_ = 0;
  req_chunked_ = req_has_body_ = req_done_ = body_started_ = false;
  req_body_bytes_ = 0;
  route_ = nullptr;
  request_id_.clear();
  attempts_ = 0;
  reused_connection_ = false;
  counted_active_ = retry_now_ = false;
  exclude_ = nullptr;
  local_status_ = 0;
  www_authenticate_.clear();
  rate_limit_headers_.clear();
  consumer_.clear();
  verified_jwt_.reset();
  oauth_endpoint_ = false;
  oauth_body_.clear();
  head_scanned_ = 0;
  delay_ms_ = 0;
  auth_headers_.clear();
  strip_authorization_ = false;
  target_ = nullptr;
  picked_ = nullptr;
  status_ = 0;
  resp_head_sent_ = resp_chunked_out_ = resp_paused_ = resp_malformed_ = false;
  upstream_keep_alive_ = true;
  resp_bytes_ = 0;
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
        started_ = steady_clock::now();
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
      if (req_parser_->is_done()) req_done_ = true;
      if (local_status_) {
        // Answered by the gateway itself; a body it did not read means the connection ends.
        int status = local_status_;
        local_status_ = 0;
        if (!req_done_) close_after_response_ = true;
        send_error(status, local_code_, local_message_);
        continue;
      }
      if (oauth_endpoint_) {
        if (req_done_) {
          answer_oauth();
        } else {
          phase_ = phase::local_body;
        }
        continue;
      }
      if (delay_ms_) {
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
      if (req_parser_->is_done()) req_done_ = true;
      if (req_done_) answer_oauth();
      continue;
    }
    if (phase_ == phase::proxying && body_started_ && !req_done_) {
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
        if (!resp_head_sent_) {
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
  verb_ = v;
  method_ = method;
  req_target_ = target;
  version_ = version;
  if (w_.access_log) {
    // Known from here on, so that refused requests are logged with them too.
    access_method_.assign(method);
    access_path_.assign(target.substr(0, std::min<size_t>(target.size(), 2048)));
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
      if (++content_length_count_ > 1) {
        return reject(400, "bad_request", "more than one Content-Length", ec);
      }
      if (value.empty() || value.size() > 18 ||
          value.find_first_not_of("0123456789") != std::string_view::npos) {
        return reject(400, "bad_request", "invalid Content-Length", ec);
      }
      break;
    case http::field::transfer_encoding:
      if (++transfer_encoding_count_ > 1) {
        return reject(400, "bad_request", "more than one Transfer-Encoding", ec);
      }
      if (version_ == 10) {
        return reject(400, "bad_request", "Transfer-Encoding in an HTTP/1.0 request", ec);
      }
      if (!iequals(trim(value), "chunked")) {
        return reject(501, "not_implemented", "unsupported Transfer-Encoding", ec);
      }
      break;
    case http::field::host:
      ++host_count_;
      host_ = value;
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
      request_id_.assign(f.value);
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
  request_id_.assign(buf, 36);
}

bool client_session::authenticate_jwt() {
  std::string_view token;
  for (auto& f : fields_) {
    if (f.f != http::field::authorization) continue;
    auto v = trim(f.value);
    if (v.size() > 7 && iequals(v.substr(0, 7), "bearer ")) token = trim(v.substr(7));
    break;
  }
  local_status_ = 401;
  if (token.empty()) {
    local_code_ = "unauthorized";
    local_message_ = "this route requires a bearer token";
    www_authenticate_ = "Bearer realm=\"meridian\"";
    return false;
  }
  std::shared_ptr<const jwt_result> verified;
  const jwt_provider* verified_by = nullptr;
  auto now = std::chrono::system_clock::now();
  for (const auto* p : route_->jwt_providers) {
    verified_by = p;
    auto keys = p->authority ? p->authority->keys() : p->keys.load();
    verified = p->cache.verify(token, keys, p->rules, now);
    if (verified->ok && p->authority && p->authority->token_revoked(verified->claims)) {
      static const auto revoked = std::make_shared<const jwt_result>(
          jwt_result{false, "revoked", "token has been revoked", {}});
      verified = revoked;
    }
    if (verified->ok) break;
    // A kid these keys lack: maybe the issuer rotated. Ask the refresher (jwks_url only).
    if (verified->error == "unknown_kid" && !p->authority && !p->cfg->jwks_url.empty())
      const_cast<jwt_provider*>(p)->refresh_wanted.store(true, std::memory_order_relaxed);
  }
  if (!verified || !verified->ok) {
    local_code_ = "invalid_token";
    auth_failure_message_ = !verified                   ? std::string("no key set verifies tokens")
                            : verified->message.empty() ? verified->error
                                                        : verified->message;
    local_message_ = auth_failure_message_.c_str();
    www_authenticate_ = "Bearer realm=\"meridian\", error=\"invalid_token\"";
    return false;
  }
  local_status_ = 0;
  verified_jwt_ = verified;
  const auto& claims = verified->claims;
  // Claims become header values (the consumer id, claims_to_headers): a signed token may still
  // carry CR, LF or NUL in them, which would inject headers or a request. Refuse such a token.
  auto unforwardable = [&](const std::string& claim) {
    local_status_ = 401;
    local_code_ = "invalid_token";
    auth_failure_message_ = "claim '" + claim + "' holds characters a header cannot carry";
    local_message_ = auth_failure_message_.c_str();
    www_authenticate_ = "Bearer realm=\"meridian\", error=\"invalid_token\"";
    verified_jwt_.reset();
    return false;
  };
  const std::string& consumer_claim = verified_by->cfg->consumer_claim;
  if (auto c = claims.find(consumer_claim); c != claims.end() && c->is_string()) {
    consumer_ = c->get<std::string>();
    if (!valid_field_value(consumer_)) {
      consumer_.clear();
      return unforwardable(consumer_claim);
    }
  }
  for (const auto& [claim, header] : route_->cfg->auth->claims_to_headers) {
    auto it = claims.find(claim);
    if (it == claims.end() || it->is_null()) continue;
    std::string value = it->is_string()
                            ? it->get<std::string>()
                            : it->dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    if (!valid_field_value(value)) return unforwardable(claim);
    auth_headers_.emplace_back(header, std::move(value));
  }
  // Credentials end at the gateway, unless the route passes them on.
  strip_authorization_ = route_->cfg->auth->strip_credentials;
  return true;
}

bool client_session::authenticate_api_key(std::string_view query, bool* presented_any) {
  std::string_view presented;
  for (auto& f : fields_) {
    if (iequals(f.name, "x-api-key")) {
      presented = trim(f.value);
      break;
    }
  }
  if (presented.empty() && route_->cfg->auth->query_key) {
    // ?apikey=... (only when the route allows it: query strings end up in logs)
    size_t pos = 0;
    while (pos <= query.size()) {
      size_t amp = query.find('&', pos);
      std::string_view part =
          query.substr(pos, amp == std::string_view::npos ? query.npos : amp - pos);
      if (part.substr(0, 7) == "apikey=") {
        presented = part.substr(7);
        break;
      }
      if (amp == std::string_view::npos) break;
      pos = amp + 1;
    }
  }
  *presented_any = !presented.empty();
  std::string_view key_id, secret;
  if (presented.empty() || !snap_->api_keys || !split_api_key(presented, &key_id, &secret))
    return false;
  auto it = snap_->api_keys->find(std::string(key_id));
  if (it == snap_->api_keys->end()) return false;
  const auto& rec = it->second;
  int64_t wall = unix_now_ms();
  if (rec.expires_ms && wall >= rec.expires_ms) return false;
  if (!verify_api_key(rec, secret)) return false;
  consumer_ = rec.consumer;
  if (rec.usage) {
    rec.usage->requests.fetch_add(1, std::memory_order_relaxed);
    rec.usage->last_used_ms.store(wall, std::memory_order_relaxed);
  }
  return true;
}

bool client_session::authenticate() {
  const auto& auth = *route_->cfg->auth;
  auto qpos = req_target_.find('?');
  std::string_view query = qpos == std::string_view::npos
                               ? std::string_view()
                               : std::string_view(req_target_).substr(qpos + 1);
  // An address that keeps presenting wrong keys waits, growing with each failure, before its
  // next key is even looked at (other credentials are not held).
  bool presented = false;
  int64_t held_ms = 0;
  bool key_ok = false;
  if (route_->auth_api_key) {
    held_ms = w_.api_key_failures.wait_ms(client_ip_, w_.now);
    if (held_ms == 0) key_ok = authenticate_api_key(query, &presented);
  }
  // A wrong key counts even when a token then authenticates the request.
  if (presented && !key_ok) w_.api_key_failures.failed(client_ip_, w_.now);
  if (key_ok) w_.api_key_failures.succeeded(client_ip_);
  bool ok = key_ok;
  if (!ok && !route_->jwt_providers.empty()) ok = authenticate_jwt();
  if (!ok && held_ms > 0 && !local_status_) {
    local_status_ = 429;
    local_code_ = "too_many_failures";
    local_message_ = "too many invalid API keys from this address; retry later";
    rate_limit_headers_ =
        "Retry-After: " + std::to_string(failure_delay::retry_after_s(held_ms)) + "\r\n";
    return false;
  }
  if (!ok) {
    if (!local_status_) {  // no JWT verdict to report: the key was missing or wrong
      local_status_ = 401;
      local_code_ = "unauthorized";
      local_message_ = "a valid API key is required (X-API-Key)";
      www_authenticate_ = "ApiKey realm=\"meridian\"";
    }
    return false;
  }
  local_status_ = 0;
  // Group ACL: 403 (known consumer, not allowed), not 401.
  const std::vector<std::string>* groups = nullptr;
  if (auto g = snap_->consumer_groups.find(consumer_); g != snap_->consumer_groups.end())
    groups = &g->second;
  if (!auth.groups.empty()) {
    bool member = false;
    if (groups)
      for (const auto& want : auth.groups)
        member = member || std::find(groups->begin(), groups->end(), want) != groups->end();
    if (!member) {
      local_status_ = 403;
      local_code_ = "forbidden";
      local_message_ = "this consumer's groups may not use this route";
      return false;
    }
  }
  if ((!auth.scopes.empty() || !auth.claims.empty()) && !token_meets(auth)) {
    local_status_ = 403;
    local_code_ = "forbidden";
    local_message_ = auth_failure_message_.c_str();
    return false;
  }
  if (!consumer_.empty()) {
    bool mapped = false;  // claims_to_headers may already carry it
    for (const auto& [k, v] : auth_headers_) mapped = mapped || iequals(k, "x-consumer-id");
    if (!mapped) auth_headers_.emplace_back("X-Consumer-Id", consumer_);
    if (groups && !groups->empty()) {
      std::string list;
      for (const auto& g : *groups) list += (list.empty() ? "" : ",") + g;
      auth_headers_.emplace_back("X-Consumer-Groups", std::move(list));
    }
  }
  return true;
}

bool client_session::match_oauth_endpoint(std::string_view path, std::string_view query) {
  if (!snap_->oauth || !snap_->cfg.oauth) return false;
  const auto& o = *snap_->cfg.oauth;
  if (path == o.token_path) {
    oauth_kind_ = oauth_authority::endpoint::token;
  } else if (path == o.introspect_path) {
    oauth_kind_ = oauth_authority::endpoint::introspect;
  } else if (path == o.revoke_path) {
    oauth_kind_ = oauth_authority::endpoint::revoke;
  } else if (path == o.authorize_path) {
    oauth_kind_ = oauth_authority::endpoint::authorize;
  } else {
    return false;
  }
  oauth_get_ = oauth_kind_ == oauth_authority::endpoint::authorize &&
               (verb_ == http::verb::get || verb_ == http::verb::head);
  if (verb_ != http::verb::post && !oauth_get_) {
    local_status_ = 405;
    local_code_ = "method_not_allowed";
    local_message_ = oauth_kind_ == oauth_authority::endpoint::authorize
                         ? "the authorization endpoint takes GET or POST"
                         : "OAuth endpoints take POST";
    return true;
  }
  oauth_endpoint_ = true;
  oauth_query_.assign(query);
  oauth_authorization_.clear();
  for (auto& f : fields_) {
    if (f.f == http::field::authorization) {
      oauth_authorization_.assign(trim(f.value));
      break;
    }
  }
  return true;
}

void client_session::answer_oauth() {
  oauth_authority::request req;
  req.kind = oauth_kind_;
  req.post = !oauth_get_;
  req.authorization = std::move(oauth_authorization_);
  req.query = std::move(oauth_query_);
  req.body = std::move(oauth_body_);
  oauth_body_.clear();
  oauth_query_.clear();
  oauth_authorization_.clear();
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

namespace {

// True when a scope list ("scope": "a b c" or "scp": ["a", "b"] / "a b") holds want.
bool has_scope(const nlohmann::json& claims, std::string_view want) {
  for (const char* name : {"scope", "scp"}) {
    auto it = claims.find(name);
    if (it == claims.end()) continue;
    if (it->is_array()) {
      for (const auto& s : *it)
        if (s.is_string() && s.get_ref<const std::string&>() == want) return true;
    } else if (it->is_string()) {
      std::string_view list = it->get_ref<const std::string&>();
      while (!list.empty()) {
        size_t sp = list.find(' ');
        if (list.substr(0, sp) == want) return true;
        if (sp == std::string_view::npos) break;
        list.remove_prefix(sp + 1);
      }
    }
  }
  return false;
}

// True when claim equals want (a string; numbers and booleans by their JSON text) or, for an
// array claim, contains it.
bool claim_matches(const nlohmann::json& claims, const std::string& name, const std::string& want) {
  auto it = claims.find(name);
  if (it == claims.end()) return false;
  auto one = [&](const nlohmann::json& v) {
    return v.is_string() ? v.get_ref<const std::string&>() == want : v.dump() == want;
  };
  if (!it->is_array()) return one(*it);
  for (const auto& v : *it)
    if (one(v)) return true;
  return false;
}

}  // namespace

bool client_session::token_meets(const auth_config& auth) {
  if (!verified_jwt_) {
    auth_failure_message_ = "this route needs a token with the required scopes or claims";
    return false;
  }
  const auto& claims = verified_jwt_->claims;
  for (const auto& want : auth.scopes) {
    if (!has_scope(claims, want)) {
      auth_failure_message_ = "token lacks scope " + want;
      return false;
    }
  }
  for (const auto& [name, want] : auth.claims) {
    if (!claim_matches(claims, name, want)) {
      auth_failure_message_ = "token claim " + name + " is not " + want;
      return false;
    }
  }
  return true;
}

bool client_session::check_rate_limits() {
  auto& limiter = *snap_->limiter;
  int64_t now = unix_now_ms();
  // The counted value of each limit's key. consumer: the authenticated consumer, else the
  // client address (so anonymous clients are still limited one by one).
  auto key_value = [&](const limit_spec& spec) -> std::string_view {
    switch (spec.key) {
      case limit_spec::key_kind::ip:
        return client_ip_;
      case limit_spec::key_kind::consumer:
        return consumer_.empty() ? std::string_view(client_ip_) : std::string_view(consumer_);
      case limit_spec::key_kind::route:
      case limit_spec::key_kind::global:
        return {};
      case limit_spec::key_kind::header:
        for (auto& f : fields_)
          if (iequals(f.name, spec.header)) return f.value;
        return {};
    }
    return {};
  };
  // With several limits, check them all first and count only when all admit: a refused request
  // counts nowhere. One limit needs no first pass (check() counts admissions only).
  const auto& limits = route_->limits;
  uint64_t keys[max_rate_limits_per_route];
  size_t n = std::min<size_t>(limits.size(), max_rate_limits_per_route);
  limit_decision tightest;
  bool allowed = true;
  for (size_t i = 0; i < n; ++i) keys[i] = rate_limiter::key_of(limits[i], key_value(limits[i]));
  for (size_t i = 0; i < n && n > 1; ++i) {
    auto d = limiter.check(keys[i], limits[i], now, false, w_.index);
    if (!d.allowed) {
      allowed = false;
      tightest = d;
      break;
    }
  }
  if (allowed) {
    for (size_t i = 0; i < n; ++i) {
      auto d = limiter.check(keys[i], limits[i], now, true, w_.index);
      if (!d.allowed) {  // another request took the last one meanwhile
        allowed = false;
        tightest = d;
        break;
      }
      delay_ms_ = std::max(delay_ms_, d.delay_ms);
      if (i == 0 || d.remaining < tightest.remaining) tightest = d;
    }
  }
  rate_limit_headers_ = "RateLimit-Limit: " + std::to_string(tightest.limit) +
                        "\r\nRateLimit-Remaining: " + std::to_string(tightest.remaining) +
                        "\r\nRateLimit-Reset: " + std::to_string(tightest.reset_s) + "\r\n";
  if (route_->limit_stats) {
    (allowed ? route_->limit_stats->allowed : route_->limit_stats->rejected)
        .fetch_add(1, std::memory_order_relaxed);
  }
  if (allowed) return true;
  delay_ms_ = 0;
  rate_limit_headers_ += "Retry-After: " + std::to_string(tightest.retry_after_s) + "\r\n";
  local_status_ = 429;
  local_code_ = "rate_limited";
  local_message_ = "rate limit exceeded; retry later";
  return false;
}

void client_session::start_delay() {
  phase_ = phase::delayed;
  deadline_ = w_.now + static_cast<int64_t>(delay_ms_) + 5000;
  if (!delay_timer_) delay_timer_ = std::make_unique<asio::steady_timer>(w_.ioc);
  delay_timer_->expires_after(std::chrono::milliseconds(delay_ms_));
  delay_ms_ = 0;
  delay_timer_->async_wait([self = shared_from_this()](const error_code& ec) {
    if (ec || self->phase_ != phase::delayed) return;
    self->phase_ = phase::head;
    self->dispatch();
    self->process_input();
  });
}

void client_session::on_request_header(http::basic_parser<true>& parser, error_code& ec) {
  make_request_id();
  if (version_ == 11 && host_count_ != 1) {
    return reject(400, "bad_request", host_count_ ? "more than one Host" : "missing Host", ec);
  }
  if (host_count_ > 1) return reject(400, "bad_request", "more than one Host", ec);
  if (!valid_host(host_)) return reject(400, "bad_request", "invalid Host", ec);
  req_chunked_ = parser.chunked();
  auto cl = parser.content_length();
  req_has_body_ = req_chunked_ || (cl && *cl > 0);

  // Split the target into path and query; accept absolute-form (RFC 9112 §3.2.2).
  std::string_view target = req_target_;
  std::string_view host = host_;
  if (target.size() > 7 &&
      (target.substr(0, 7) == "http://" || target.substr(0, 8) == "https://")) {
    auto rest = target.substr(target.find("://") + 3);
    auto slash = rest.find('/');
    host = rest.substr(0, slash);
    target = slash == std::string_view::npos ? std::string_view("/") : rest.substr(slash);
  }
  if (target.empty() || target.front() != '/') {
    if (!(verb_ == http::verb::options && target == "*")) {
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
    path_status st = normalize_path(path, snap_->paths, &normalized_path_);
    if (st != path_status::ok) return reject(400, "bad_request", to_string(st), ec);
    path = normalized_path_;
  }
  std::string_view host_only = host;
  if (!host_only.empty() && host_only.front() == '[') {
    auto end = host_only.find(']');
    host_only = host_only.substr(0, end == std::string_view::npos ? host_only.size() : end + 1);
  } else if (auto colon = host_only.rfind(':'); colon != std::string_view::npos) {
    host_only = host_only.substr(0, colon);
  }

  if (!parser.keep_alive()) close_after_response_ = true;
  if (match_oauth_endpoint(path, query)) return;

  header_views_.clear();
  for (auto& f : fields_) header_views_.push_back({f.name, f.value});
  request_view rv{method_, host_only, path, query, std::span<const header_view>(header_views_)};
  int route_index = snap_->routes_index->match(rv);
  if (route_index < 0) {
    w_.stats.no_route.add();
    local_status_ = 404;
    local_code_ = "not_found";
    local_message_ = "no route matches this request";
    return;
  }
  route_ = &snap_->routes[route_index];
  upstream_ = route_->upstream;
  const auto& rc = *route_->cfg;
  if (route_->max_body_bytes && cl && *cl > route_->max_body_bytes) {
    w_.stats.bad_requests.add();
    local_status_ = 413;
    local_code_ = "payload_too_large";
    local_message_ = "request body exceeds the route's limit";
    return;
  }
  if (rc.auth && !authenticate()) return;
  if (!rc.rate_limits.empty() && snap_->limiter && !check_rate_limits()) return;

  // Consistent-hash key.
  const auto& up = *upstream_;
  if (up.cfg->balance == balance_policy::consistent_hash) {
    hash_key_.clear();
    if (!up.hash_header.empty()) {
      for (auto& f : fields_) {
        if (iequals(f.name, up.hash_header)) {
          hash_key_.assign(f.value);
          break;
        }
      }
    } else {
      hash_key_.assign(client_ip_);
    }
  }

  // The upstream request head.
  std::string rewritten, default_host;
  upstream_head h;
  h.method = method_;
  h.path = upstream_path(path, rc, route_->rewrite ? &*route_->rewrite : nullptr, &rewritten);
  h.query = query;
  h.has_query = qpos != std::string_view::npos;
  h.query_rules = &rc.query;
  h.fields = fields_;
  h.drop = route_->request_drop;
  h.strip_authorization = strip_authorization_;
  if (route_->preserve_host && !host.empty()) {
    h.host = host;
  } else {
    // Without the client's Host, name the first target (like nginx's $proxy_host).
    default_host = up.targets.empty() ? "localhost" : up.targets[0].state->addr.to_string();
    h.host = default_host;
  }
  h.forwarded_host = host;
  h.client_ip = client_ip_;
  h.tls = tls_ != nullptr;
  h.version = version_;
  h.request_id = request_id_;
  h.set = rc.request_headers.set;
  h.add = rc.request_headers.add;
  h.identity = auth_headers_;
  h.chunked = req_chunked_;
  up_out_.clear();
  if (write_upstream_head(h, up_out_) != 0) w_.stats.bad_requests.add();  // auth refuses first

  if (!req_has_body_) retry_head_.assign(up_out_.data(), up_out_.size());
  // From here the parser reads bodies as far as the buffers allow; process_input dispatches.
  req_parser_->eager(true);
}

void client_session::on_request_body_limit(error_code& ec) {
  w_.stats.bad_requests.add();
  close_after_response_ = true;
  if (!resp_head_sent_) {
    release_upstream(false);
    send_error(413, "payload_too_large", "request body exceeds the route's limit");
  } else {
    close();
  }
  ec = http::error::body_limit;
}

void client_session::on_request_body(std::string_view body, error_code& ec) {
  req_body_bytes_ += body.size();
  if (oauth_endpoint_) {
    if (oauth_body_.size() + body.size() > max_oauth_body) {
      w_.stats.bad_requests.add();
      close_after_response_ = true;
      send_error(413, "payload_too_large", "OAuth request bodies are limited to 16 KiB");
      ec = http::error::body_limit;
      return;
    }
    oauth_body_.append(body);
    return;
  }
  if (route_->max_body_bytes && req_body_bytes_ > route_->max_body_bytes) {
    on_request_body_limit(ec);
    return;
  }
  if (req_chunked_) {
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
  if (oauth_endpoint_) return;  // on_request_body caps it
  // The declared size is known before the data: refuse at once rather than after forwarding.
  if (route_->max_body_bytes &&
      size > route_->max_body_bytes - std::min(req_body_bytes_, route_->max_body_bytes)) {
    on_request_body_limit(ec);
  }
}

void client_session::on_request_finish(error_code& ec) {
  if (req_chunked_ && !oauth_endpoint_) up_out_.append("0\r\n\r\n");
  req_done_ = true;
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
  // A request without a body can be sent again from retry_head_; one with a body only while none
  // of it has been taken from the client buffer.
  return !req_has_body_ || !body_started_;
}

void client_session::dispatch() {
  auto& up = *upstream_;
  int64_t now = w_.now;
  if (attempts_ == 0 && !exclude_) up.budget.on_request(now);
  const int64_t wall = unix_now_ms();
  auto pick = [&](const upstream_runtime& from, const target_state* exclude) {
    picked_ = pick_target(from, w_.index, hash_key_, exclude, now, wall);
    return picked_ ? picked_->state.get() : nullptr;
  };
  target_ = pick(up, exclude_);
  if (!target_ && !exclude_) {
    // Nothing usable here: the upstream's failover chain, in order.
    for (const upstream_runtime* next : up.failover_chain) {
      target_ = pick(*next, nullptr);
      if (target_) {
        up.failovers.fetch_add(1, std::memory_order_relaxed);
        upstream_ = next;
        break;
      }
    }
  }
  const auto& chosen = *upstream_;  // `up`, or the failover upstream that has a target
  probe_ = false;
  if (target_ && !target_->breaker.on_dispatch(wall, chosen.cfg->circuit_breaker,
                                               target_->may_probe.load(), &probe_)) {
    // Another worker took this half-open period's probe: choose again without this target.
    target_ = pick(chosen, target_);
    if (target_ && !target_->breaker.on_dispatch(wall, chosen.cfg->circuit_breaker,
                                                 target_->may_probe.load(), &probe_)) {
      target_ = nullptr;
    }
  }
  if (!target_) {
    if (!req_done_) close_after_response_ = true;
    send_error(503, "no_healthy_upstream", "no healthy target in upstream " + chosen.cfg->name);
    return;
  }
  target_->metrics->active_requests.fetch_add(1, std::memory_order_relaxed);
  target_->metrics->requests.fetch_add(1, std::memory_order_relaxed);
  counted_active_ = true;
  up_ = w_.take_idle(target_);
  if (up_) {
    reused_connection_ = true;
    w_.stats.upstream_connections_reused.add();
    up_->owner = shared_from_this();
    phase_ = phase::proxying;
    deadline_ = now + chosen.cfg->timeouts.request.count();
    send_upstream();
    return;
  }
  reused_connection_ = false;
  uint32_t cap = chosen.cfg->pool.max_connections_per_target;
  if (cap && target_->id < w_.open_by_target.size() && w_.open_by_target[target_->id] >= cap) {
    // Like Envoy's max_connections breaker: overflow is refused rather than queued.
    w_.stats.upstream_overflows.add();
    release_upstream(false);
    if (!req_done_) close_after_response_ = true;
    send_error(503, "upstream_overloaded",
               "connection limit reached for upstream " + chosen.cfg->name);
    return;
  }
  connect_upstream();
}

void client_session::connect_upstream() {
  phase_ = phase::connecting;
  deadline_ = w_.now + upstream_->cfg->timeouts.connect.count();
  up_ = std::make_shared<upstream_conn>(w_, target_);
  up_->owner = shared_from_this();
  w_.stats.upstream_connections_opened.add();
  error_code ec;
  const tcp::endpoint endpoint = to_endpoint(picked_->endpoint);
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
  deadline_ = w_.now + upstream_->cfg->timeouts.request.count();
  send_upstream();
  if (body_started_) process_input();
}

void client_session::send_upstream() {
  if (req_has_body_) body_started_ = true;
  // A body still to be parsed from in_ is checked against the route's limit before anything is
  // sent: process_input flushes the head together with it. A body the head's parse already took
  // whole (req_done_) is in up_out_ now, and whatever follows it in in_ is the next request.
  if (!req_has_body_ || req_done_ || in_.empty()) flush_upstream();
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
        if (!self->resp_head_sent_) {
          // The request timeout runs from the last byte written, not from the first.
          self->deadline_ = self->w_.now + self->upstream_->cfg->timeouts.request.count();
        }
        if (!self->up_out_.empty()) {
          self->flush_upstream();
        } else if (self->body_started_ && !self->req_done_) {
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
      upstream_keep_alive_ = false;
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
      if (verb_ == http::verb::head) resp_parser_->skip(true);
    }
    if (out_.size() >= high_water) {
      resp_paused_ = true;
      break;
    }
    error_code ec;
    size_t used = resp_parser_->put(asio::buffer(conn->in.data(), conn->in.size()), ec);
    if (phase_ == phase::closed || up_ != conn) return;
    if (retry_now_) {
      retry_now_ = false;
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
      if (!resp_head_sent_) status_ = 0;
      upstream_failed(failure::malformed);
      return;
    }
    conn->in.consume(used);
    if (resp_parser_->is_done()) {
      if (status_ / 100 == 1) {
        resp_parser_.reset();  // an interim response; the final one follows
        continue;
      }
      flush_client();
      finish_exchange();
      return;
    }
  }
  if (resp_head_sent_) deadline_ = w_.now + snap_->cfg.limits.idle_timeout.count();
  flush_client();
}

void client_session::record_breaker(bool success) {
  if (!target_) return;
  const auto& cb = upstream_->cfg->circuit_breaker;
  if (!cb.enabled) return;
  int64_t wall = unix_now_ms();
  bool was_probe = probe_;
  probe_ = false;
  if (target_->breaker.record(success, was_probe, wall, cb, snap_->cfg.node.id)) {
    auto v = target_->breaker.view();
    snap_->registry->count_transition();
    if (auto l = spdlog::get("node.http"))
      l->warn("breaker of upstream {} target {} is now {}", target_->upstream,
              target_->addr.to_string(), to_string(v.state));
    if (cb.scope != "local") snap_->registry->queue_publish(target_->key);
  }
}

void client_session::count_target_failure() {
  if (!target_) return;
  record_breaker(false);
  target_->metrics->failures.fetch_add(1, std::memory_order_relaxed);
  const auto& outlier = upstream_->cfg->outlier;
  uint32_t n = target_->consecutive_failures.fetch_add(1, std::memory_order_relaxed) + 1;
  if (outlier.consecutive_failures && n >= outlier.consecutive_failures) {
    target_->consecutive_failures.store(0, std::memory_order_relaxed);
    target_->ejected_until_ms.store(now_ms() + outlier.eject_for.count(),
                                    std::memory_order_relaxed);
    w_.stats.ejections.add();
    spdlog::get("node.http")
        ? spdlog::get("node.http")
              ->warn("upstream {} target {} ejected for {} ms after {} failures", target_->upstream,
                     target_->addr.to_string(), outlier.eject_for.count(), n)
        : void();
    // An ejection is an observation the other nodes should share: it opens the target's breaker
    // (published with the breaker's scope), or else the ejection would stop the traffic that
    // would have tripped the breaker and only this node would avoid the target.
    const auto& cb = upstream_->cfg->circuit_breaker;
    if (target_->breaker.force(false, unix_now_ms(), cb, snap_->cfg.node.id)) {
      snap_->registry->count_transition();
      if (cb.scope != "local") snap_->registry->queue_publish(target_->key);
    }
  }
}

void client_session::upstream_failed(failure why) {
  const auto& cfg = *upstream_->cfg;
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
      why == failure::reset && reused_connection_ && !got_response_bytes && status_ == 0;
  if (!stale_pooled && status_ == 0) count_target_failure();
  release_upstream(false);
  if (resp_head_sent_) {
    close();  // the response is cut short; the client sees the connection end
    return;
  }
  bool connect_failure = why == failure::connect || why == failure::connect_timeout;
  bool retryable_kind = (connect_failure && cfg.retries.on_connect_failure) ||
                        (why == failure::timeout && cfg.retries.on_timeout) ||
                        (why == failure::reset && status_ != 0);  // retry-on-status
  bool may_replay = request_replayable() && (connect_failure || is_idempotent(verb_));
  bool retry = false;
  if (may_replay && stale_pooled && attempts_ == 0) {
    retry = true;  // a pooled connection the target had closed: not the target's fault
  } else if (may_replay && retryable_kind && attempts_ < cfg.retries.attempts) {
    if (upstream_->budget.try_retry(w_.now)) {
      retry = true;
    } else {
      w_.stats.retries_budget_exhausted.add();
    }
  }
  if (retry) {
    ++attempts_;
    w_.stats.retries.add();
    if (!stale_pooled) exclude_ = target_;
    if (!req_has_body_) {
      up_out_.clear();
      up_out_.append(retry_head_);
    }
    status_ = 0;
    resp_fields_.clear();
    dispatch();
    return;
  }
  if (!req_done_) close_after_response_ = true;
  if (status_ != 0) {
    // Retries on status exhausted: pass the last status on as our own error.
    send_error(status_, "upstream_error", "upstream answered " + std::to_string(status_));
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
  if (counted_active_ && target_) {
    target_->metrics->active_requests.fetch_sub(1, std::memory_order_relaxed);
    counted_active_ = false;
  }
  resp_parser_.reset();
  writing_upstream_ = false;
  if (!up_) return;
  auto conn = std::move(up_);
  up_.reset();
  conn->owner.reset();
  if (reuse && conn->open && route_) {
    w_.give_back(std::move(conn), *upstream_->cfg);
  } else {
    conn->close();
  }
}

// --- response parser callbacks ---------------------------------------------------------------

void client_session::on_response_line(int status, std::string_view reason, int version,
                                      error_code& ec) {
  status_ = status;
  reason_ = reason;
  resp_version_ = version;
  resp_fields_.clear();
  resp_content_length_count_ = resp_transfer_encoding_count_ = 0;
  if (!valid_field_value(reason) || (version != 10 && version != 11) ||
      (!reason.empty() && !ends_line(reason, up_->in))) {
    resp_malformed_ = true;
    ec = http::error::bad_value;
  }
}

void client_session::on_response_field(http::field f, std::string_view name, std::string_view value,
                                       error_code& ec) {
  // What a client would misread must not pass: a response a smuggling-prone peer could frame
  // differently from us is refused as a whole (502), and its connection is not reused.
  auto malformed = [&] {
    resp_malformed_ = true;
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
      if (++resp_content_length_count_ > 1 || value.empty() || value.size() > 18 ||
          value.find_first_not_of("0123456789") != std::string_view::npos) {
        return malformed();
      }
      break;
    case http::field::transfer_encoding:
      if (++resp_transfer_encoding_count_ > 1 || !iequals(trim(value), "chunked")) {
        return malformed();
      }
      break;
    default:
      break;
  }
  resp_fields_.push_back({f, name, value});
}

void client_session::on_response_header(http::basic_parser<false>& parser, error_code& ec) {
  bool informational = status_ / 100 == 1;
  // A 101 nobody asked for (we never forward Upgrade), framing fields on a response that has no
  // body (RFC 9110 sections 8.6 and 6.4.1), or both Content-Length and Transfer-Encoding
  // (RFC 9112 section 6.3): the upstream is broken or hostile.
  bool bodyless = informational || status_ == 204;
  if (status_ == 101 || (resp_content_length_count_ && resp_transfer_encoding_count_) ||
      (bodyless && (resp_transfer_encoding_count_ ||
                    (parser.content_length() && *parser.content_length() != 0)))) {
    resp_malformed_ = true;
    ec = http::error::bad_value;
    return;
  }
  const auto& cfg = *upstream_->cfg;
  if (!informational) {
    bool retry_status = false;
    for (int s : cfg.retries.on_status) retry_status |= (s == status_);
    if (status_ >= 500) {
      count_target_failure();
    } else if (target_) {
      target_->consecutive_failures.store(0, std::memory_order_relaxed);
      // A slow answer counts against the breaker (slow_call) though the client still gets it.
      const auto& cb = upstream_->cfg->circuit_breaker;
      bool slow = cb.slow_call.count() > 0 &&
                  steady_clock::now() - started_ > std::chrono::milliseconds(cb.slow_call);
      record_breaker(!slow);
    }
    if (retry_status && attempts_ < cfg.retries.attempts && request_replayable() &&
        is_idempotent(verb_)) {
      retry_now_ = true;
      ec = http::error::bad_value;
      return;
    }
  }
  const auto& rc = *route_->cfg;
  response_head h;
  h.status = status_;
  h.reason = reason_;
  h.fields = resp_fields_;
  h.drop = route_->response_drop;
  h.set = rc.response_headers.set;
  h.add = rc.response_headers.add;
  h.informational = informational;
  if (!informational) {
    h.rate_limit_lines = rate_limit_headers_;
    h.request_id = request_id_;
    bool no_body = status_ == 204 || status_ == 304 || verb_ == http::verb::head;
    if (!no_body && (parser.chunked() || !parser.content_length())) {
      if (version_ == 11) {
        resp_chunked_out_ = true;
      } else {
        close_after_response_ = true;  // an HTTP/1.0 client reads to the end of the connection
      }
    }
    h.chunked = resp_chunked_out_;
    upstream_keep_alive_ = parser.keep_alive();
    if (!req_done_ || w_.draining) close_after_response_ = true;
    h.connection = close_after_response_ ? response_head::connection::close
                   : version_ == 10      ? response_head::connection::keep_alive
                                         : response_head::connection::as_is;
    resp_head_sent_ = true;
    if (route_) route_->metrics->per_worker[w_.index].status[status_slot(status_)].add();
  }
  write_response_head(h, out_);
}

void client_session::on_response_body(std::string_view body, error_code& ec) {
  resp_bytes_ += body.size();
  if (resp_chunked_out_) {
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
  if (status_ / 100 == 1) return;
  if (resp_chunked_out_) out_.append("0\r\n\r\n");
}

// --- finishing an exchange -------------------------------------------------------------------

void client_session::record_done() {
  auto elapsed =
      std::chrono::duration_cast<std::chrono::microseconds>(steady_clock::now() - started_);
  w_.stats.requests_total.add();
  if (route_) {
    auto& st = route_->metrics->per_worker[w_.index];
    size_t b = 0;
    uint64_t us = static_cast<uint64_t>(elapsed.count());
    while (b < latency_bounds_us.size() && us > latency_bounds_us[b]) ++b;
    st.latency[b].add();
    st.latency_sum_us.add(us);
    st.request_bytes.add(req_body_bytes_);
    st.response_bytes.add(resp_bytes_);
  }
  if (w_.access_log) log_access();
}

void client_session::log_access() {
  byte_buffer line;
  line.append("{\"request_id\":");
  append_json_string(line, request_id_);
  line.append(",\"client\":");
  append_json_string(line, client_ip_);
  line.append(",\"method\":");
  append_json_string(line, access_method_);
  line.append(",\"path\":");
  append_json_string(line, access_path_);
  line.append(",\"status\":");
  line.append_decimal(static_cast<uint64_t>(status_));
  line.append(",\"route\":");
  append_json_string(line, route_ ? std::string_view(route_->cfg->name) : std::string_view());
  line.append(",\"upstream\":");
  append_json_string(line, target_ ? target_->addr.to_string() : std::string());
  line.append(",\"attempts\":");
  line.append_decimal(attempts_ + 1);
  line.append(",\"request_bytes\":");
  line.append_decimal(req_body_bytes_);
  line.append(",\"response_bytes\":");
  line.append_decimal(resp_bytes_);
  line.append(",\"duration_ms\":");
  auto us =
      std::chrono::duration_cast<std::chrono::microseconds>(steady_clock::now() - started_).count();
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
  bool reuse = upstream_keep_alive_ && req_done_ && up_out_.empty() && !writing_upstream_ &&
               (!up_ || up_->in.empty());
  release_upstream(reuse);
  if (!req_done_) close_after_response_ = true;
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
  if (resp_head_sent_) {
    close();
    return;
  }
  if (request_id_.empty()) make_request_id();
  // A route's fallback answers in place of the gateway's own upstream errors.
  const fallback_config* fallback =
      route_ && route_->cfg->fallback && (status == 502 || status == 503 || status == 504)
          ? &*route_->cfg->fallback
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
  append_json_string(body, request_id_);
  body.append("}\n");
  send_local(status, "application/json", body.view(), {});
}

void client_session::send_local(int status, std::string_view content_type, std::string_view body,
                                std::span<const std::pair<std::string, std::string>> headers) {
  if (phase_ == phase::closed) return;
  if (resp_head_sent_) {
    close();
    return;
  }
  if (request_id_.empty()) make_request_id();
  status_ = status;
  out_.append("HTTP/1.1 ");
  out_.append_decimal(static_cast<uint64_t>(status));
  out_.append(' ');
  out_.append(reason_for(status));
  out_.append("\r\nContent-Type: ");
  out_.append(content_type);
  out_.append("\r\nContent-Length: ");
  out_.append_decimal(body.size());
  out_.append("\r\nX-Request-Id: ");
  out_.append(request_id_);
  for (const auto& [k, v] : headers) {
    out_.append("\r\n");
    out_.append(k);
    out_.append(": ");
    out_.append(v);
  }
  if (status == 401 && !www_authenticate_.empty()) {
    out_.append("\r\nWWW-Authenticate: ");
    out_.append(www_authenticate_);
  }
  if (!rate_limit_headers_.empty()) {
    out_.append("\r\n");
    out_.append(std::string_view(rate_limit_headers_).substr(0, rate_limit_headers_.size() - 2));
  }
  if (!req_done_) close_after_response_ = true;
  if (close_after_response_ || w_.draining) {
    close_after_response_ = true;
    out_.append("\r\nConnection: close");
  }
  out_.append("\r\n\r\n");
  if (verb_ != http::verb::head) out_.append(body);
  if (route_) route_->metrics->per_worker[w_.index].status[status_slot(status)].add();
  resp_head_sent_ = true;
  if (started_ == steady_clock::time_point()) started_ = steady_clock::now();
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
