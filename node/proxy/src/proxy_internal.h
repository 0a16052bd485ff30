#pragma once
// The forwarding path (private to the proxy part). The classes are defined here and their
// members in worker.cc, session.cc, session_request.cc and session_upstream.cc.
//
// The forwarding path. Shaped by what was measured (PERFORMANCE.md): no http::message, no
// serializer, no tcp_stream. Requests and responses are parsed by basic_parser subclasses whose
// callbacks write the outgoing head straight into a per-connection output buffer; sockets are
// plain and non-blocking; one coarse sweep timer per worker enforces every deadline.
//
// Threading: everything in this file except proxy_server's public methods runs on one worker's
// thread. A client_session and the upstream_conns it uses belong to one worker.
//
// Reading: async_read_some. Asio's reactor first tries the read at once (speculatively), and
// only waits for the epoll edge when that finds nothing; the alternative, async_wait, costs an
// epoll_ctl per wait instead. So a read is started when there is likely something to read: an
// upstream read after a request is posted behind the handlers already queued
// (start_read_soon), and a pooled connection gets its close-watch read from the sweep, not at
// release. An idle client connection reads into a small inline buffer, so idle keep-alive
// connections hold no heap buffer.

#include "meridian/proxy/http_proxy.h"

#include "chain.h"
#include "endpoint.h"
#include "exchange.h"
#include "exchange_flow.h"
#include "grpc.h"
#include "h2_codec.h"
#include "http1_head.h"
#include "http1_parsers.h"
#include "upstream_call.h"
#include "upstream_tls.h"

#include <spdlog/spdlog.h>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
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
  // start_read after the handlers already queued on the worker have run: right after a request
  // went out the answer is not there yet, and a read started now would find nothing (EAGAIN)
  // before it waits. Started a little later, under load it usually finds the answer in.
  void start_read_soon();
  void close();
  // Writes some of b (through TLS when the upstream has it); handler(ec, n).
  template <class Handler>
  void write_some(asio::const_buffer b, Handler&& handler) {
    if (tls) {
      tls->async_write_some(b, std::forward<Handler>(handler));
    } else {
      socket.async_write_some(b, std::forward<Handler>(handler));
    }
  }

  worker& w;
  target_state* target;
  socket_t socket;
  // Set for an upstream with tls: reads and writes go through it after its handshake.
  std::unique_ptr<asio::ssl::stream<socket_t&>> tls;
  const void* tls_tag = nullptr;  // the TLS context it was made with (reuse only under the same)
  byte_buffer in;
  // The call using this connection (it keeps its session alive) while a request is in flight.
  std::shared_ptr<upstream_call> owner;
  bool reading = false;
  bool open = false;
  bool pooled = false;
  int64_t idle_since_ms = 0;
  int64_t idle_limit_ms = 60000;

 private:
  void on_read(const error_code& ec, size_t n);
};

// ---------------------------------------------------------------------------------------------
// h2_upstream: one HTTP/2 connection to a target (h2c, or h2 over TLS chosen by ALPN) carrying
// the streams of many calls at once. The worker's pool (by target) owns it for its whole life;
// a call holds it while its stream is open, and the connection holds the call (the call's
// keep_alive) until the stream ends or the call lets go (detach). Requests queue until the
// connection is up; beyond the upstream's SETTINGS_MAX_CONCURRENT_STREAMS nghttp2 holds them.
// Response bytes are given back to the stream's window only as the call's sink takes them.
//
// Threading: on its worker only.

class h2_upstream : public std::enable_shared_from_this<h2_upstream> {
 public:
  h2_upstream(worker& w, target_state* target, const upstream_runtime& up);
  ~h2_upstream();
  h2_upstream(const h2_upstream&) = delete;
  h2_upstream& operator=(const h2_upstream&) = delete;

  // Connects to endpoint (then TLS to server_name when the upstream has tls).
  void connect(const tcp::endpoint& endpoint, const std::string& server_name);
  // Takes call's request onto a new stream, now or once the connection is up.
  void attach(std::shared_ptr<upstream_call> call);
  // From the call being submitted: a stream for its request (with a body to come when
  // with_body). Returns the stream id, or a negative nghttp2 error.
  int32_t submit_request(const std::vector<nghttp2_nv>& nv, bool with_body);
  // The call is done with its stream (or never got one): an open stream is reset (CANCEL).
  void detach(upstream_call* call, int32_t stream_id);
  // Open or opening, no GOAWAY either way, stream ids left, fewer streams than cap and than the
  // upstream's SETTINGS_MAX_CONCURRENT_STREAMS.
  bool accepting(uint32_t cap) const;
  // Made for this TLS context and protocol (a reload that changes either retires the
  // connection: it takes no new streams).
  bool made_for(const upstream_runtime& up) const {
    return tls_tag_ == up.client_tls.get() && protocol_ == up.cfg->protocol;
  }
  size_t streams() const { return calls_.size() + waiting_.size(); }
  // Sends what nghttp2 has ready soon (after the handlers already queued).
  void pump();
  // The stream's response bytes were taken by its call: its window grows by n.
  void consume(int32_t stream_id, size_t n);
  // The stream's request body has more bytes.
  void resume_data(int32_t stream_id);
  // The sweep: closes a connection idle past its upstream's idle timeout. False once it is
  // closed (the pool drops it).
  bool check(int64_t now);
  // Ends the connection; its calls fail (as resets) and may retry elsewhere.
  void close();
  // Drain: a GOAWAY, and the connection closes when its streams are done.
  void shut_down();
  bool closed() const { return closed_; }

  worker& w;
  target_state* target;

 private:
  friend struct h2_upstream_callbacks;
  void on_connected(const error_code& ec, const std::string& server_name);
  void on_ready();
  // Gives the connection's place in its target's connection count back (closed, or winding
  // down after a GOAWAY); once.
  void release_slot();
  void submit(std::shared_ptr<upstream_call> call);
  void read();
  void on_read(const error_code& ec, size_t n);
  void send();
  void write();
  // The connection failed before (connect) or after it was up: every call hears of it.
  void fail_all(bool connect_failure);
  upstream_call* call_of(int32_t stream_id);
  // The response on stream_id has ended (END_STREAM from the upstream).
  void response_ended(int32_t stream_id);

  socket_t socket_;
  std::shared_ptr<asio::ssl::context> tls_ctx_;
  std::unique_ptr<asio::ssl::stream<socket_t&>> tls_;
  nghttp2_session* session_ = nullptr;
  byte_buffer in_;
  byte_buffer out_;
  std::unordered_map<int32_t, std::shared_ptr<upstream_call>> calls_;
  std::vector<std::shared_ptr<upstream_call>> waiting_;  // until the connection is up
  // Calls that got response bytes in this read (flushed once after it), and calls whose
  // request body went out (told there is room once nghttp2 has returned).
  std::vector<std::shared_ptr<upstream_call>> touched_;
  std::vector<std::shared_ptr<upstream_call>> room_;
  int64_t idle_since_ = 0;
  int64_t idle_limit_ms_;
  int64_t created_ms_;
  int64_t connect_limit_ms_;  // connect and TLS handshake together
  const void* tls_tag_;
  upstream_protocol protocol_;
  bool counted_ = true;  // holds a place in w.open_by_target
  bool drain_when_ready_ = false;
  bool ready_ = false;
  bool reading_ = false;
  bool writing_ = false;
  bool goaway_ = false;
  bool closed_ = false;
  bool in_nghttp2_ = false;
  bool pump_posted_ = false;
};

// ---------------------------------------------------------------------------------------------
// worker: one thread, one io_context, one listener; owns its sessions and upstream pools.

class worker {
 public:
  worker(unsigned index, metrics_registry& metrics, std::atomic<int64_t>& connections,
         spdlog::logger* access_log)
      : index(index),
        registry(metrics),
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
  ~worker();
  worker(const worker&) = delete;
  worker& operator=(const worker&) = delete;

  // Accepts connections on a (the plain listener, or the TLS one with tls set) forever.
  void start_accept(acceptor_t& a, bool tls);
  void start_sweep();
  void on_sweep();
  void begin_drain();
  // Drain, at the end of its period: every WebSocket tunnel gets its close frame (1001).
  void close_tunnels();
  void shut_down();
  // Takes what other threads left in the mailbox (new snapshot, drain, stop). On this thread.
  void read_mail();

  // The only way other threads talk to a worker: its io_context runs without locks
  // (BOOST_ASIO_CONCURRENCY_HINT_UNSAFE), so they may not post to it. A job rings the doorbell
  // (an eventfd the worker waits on), so it runs at once: a request paused for an answer from
  // another thread (a strict rate limit's owner) goes on within microseconds. The sweep timer
  // reads the mailbox too (snapshots, drain and stop take effect within one sweep interval).
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
    bool ring;
    {
      std::lock_guard lock(mail.mutex);
      mail.jobs.push_back(std::move(fn));
      ring = !mail.pending.exchange(true, std::memory_order_acq_rel);
    }
    if (ring) ring_doorbell();
  }
  // Any thread: wakes the worker to read its mailbox.
  void ring_doorbell();
  // On this thread: waits for the doorbell (once started, again after every ring).
  void await_doorbell();

  bool stopping = false;

  void add_session(client_session* s);
  // Returns owning references to every session, for loops that may close (and so remove) them.
  std::vector<std::shared_ptr<client_session>> owned_sessions();
  void remove_session(client_session* s);

  // Returns a pooled connection to target made with tls_tag (the upstream's TLS context, or
  // null), or nullptr.
  std::shared_ptr<upstream_conn> take_idle(target_state* t, const void* tls_tag);
  // An HTTP/2 connection to target with room for another stream (cap streams each), or a new
  // one when none has and the upstream's connection cap allows; nullptr when it does not.
  std::shared_ptr<h2_upstream> h2_connection_for(target_state* t, const upstream_runtime& up,
                                                 const upstream_target& picked);
  // Keeps conn for reuse if the pool has room; closes it otherwise.
  void give_back(std::shared_ptr<upstream_conn> conn, const upstream_config& cfg);
  void forget_idle(upstream_conn* conn);

  // WebSocket tunnels open on the node (all workers).
  int64_t open_tunnels() const {
    int64_t n = 0;
    for (unsigned i = 0; i < registry.workers(); ++i)
      n += registry.worker(i).websocket_tunnels.load(std::memory_order_relaxed);
    return n;
  }

  uint64_t next_random() {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return rng;
  }

  unsigned index;
  metrics_registry& registry;
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
  // The doorbell: an eventfd (open for the worker's life: other threads write to it) and the
  // worker's own descriptor of it (a dup), after ioc so that it goes first.
  int doorbell_fd = -1;
  std::unique_ptr<asio::posix::basic_stream_descriptor<asio::io_context::executor_type>> doorbell;
  worker_stats& stats;
  std::atomic<int64_t>& connections;
  spdlog::logger* access_log;
  std::shared_ptr<const snapshot> snap;
  std::vector<std::vector<std::shared_ptr<upstream_conn>>> idle;   // by target id
  std::vector<std::vector<std::shared_ptr<h2_upstream>>> h2_pool;  // by target id
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

class client_session final : public std::enable_shared_from_this<client_session>,
                             public exchange_flow,
                             public call_sink {
 public:
  client_session(worker& w, socket_t socket, bool tls = false);
  ~client_session();

  void start();
  // Closes the connection at once, abandoning any exchange in progress.
  void close();
  // Called by the sweep timer; closes or answers the session when a deadline passed.
  void check_deadline(int64_t now);
  // Closes the session if it is between requests (drain); an HTTP/2 one starts its GOAWAY.
  void close_if_idle();
  // HTTP/2: writes what the connection has to send, and reads on or closes as it wants.
  void h2_pump();
  // The drain period is over: WebSocket tunnels (this one, or the HTTP/2 connection's) are
  // closed with 1001 going away.
  void close_tunnels();

  // Request parser callbacks.
  void on_request_line(http::verb v, std::string_view method, std::string_view target, int version,
                       error_code& ec);
  void on_request_field(http::field f, std::string_view name, std::string_view value,
                        error_code& ec);
  void on_request_header(http::basic_parser<true>& parser, error_code& ec);
  void on_request_body(std::string_view body, error_code& ec);
  void on_request_chunk_header(uint64_t size, error_code& ec);
  void on_request_finish(error_code& ec);

  // call_sink (upstream_call.h): the call of the current exchange answers through these.
  std::shared_ptr<void> keep_alive() override { return shared_from_this(); }
  bool body_waiting() const override { return !in_.empty(); }
  void on_call_room() override { process_input(); }
  void on_call_head(response_head& h, bool length_known) override;
  void on_call_body(std::string_view piece) override;
  void flush_response() override { flush_client(); }
  void on_call_trailers(std::span<const field_view> trailers) override;
  void on_call_done() override;
  void on_call_failed() override;
  void on_call_cut() override { close(); }
  void on_call_tunnel() override;
  bool sink_full() const override { return out_.size() >= high_water; }

  size_t index_in_worker = 0;

 private:
  enum class phase {
    idle,
    head,
    awaiting_body,  // reading the body for the stage that paused for it (the OAuth endpoints)
    paused,         // held by a stage: a timer or a resume_handle brings it back
    calling,        // the upstream call (call_) is connecting, sending or streaming back
    tunnel,         // a WebSocket tunnel: the call relays raw bytes both ways
    h2,             // the connection speaks HTTP/2: h2_ has the streams
    closing,
    lingering,
    closed
  };
  void start_client_read();
  // The connection speaks HTTP/2 from here on (ALPN h2, or the h2c preface in in_).
  void enter_h2();
  // Hands what in_ holds to the HTTP/2 connection.
  void h2_input();
  // True while in_ may still be the start of the HTTP/2 preface (the first bytes only); enters
  // HTTP/2 when it is the whole preface.
  bool h2_preface_pending();
  void on_client_read(const error_code& ec, size_t n, bool inline_buffer);
  void linger();
  void process_input();
  bool read_head();
  void refuse_head(const error_code& ec);
  bool read_awaited_body();
  bool forward_body();
  bool forward_tunnel();
  // The call owns the exchange's deadlines and the response's flow (calling or tunnel).
  bool in_call() const { return phase_ == phase::calling || phase_ == phase::tunnel; }
  void begin_request();
  void finish_exchange();
  void flush_client();
  void on_client_written(const error_code& ec, size_t n);
  void send_error(int status, std::string_view code, std::string_view message);
  // send_error for a gRPC-Web request: a trailers-only response with the matching grpc-status.
  void send_grpc_error(int status, std::string_view message);
  // True once in_ holds the blank line that ends a request head (scans only new bytes).
  bool head_complete();
  // Answers the request with a response the gateway made (status, body, extra headers).
  void send_local(int status, std::string_view content_type, std::string_view body,
                  std::span<const std::pair<std::string, std::string>> headers);
  void reject(int status, std::string_view code, std::string_view message, error_code& ec);

  // exchange_flow (exchange_flow.h): where the flow of the current exchange is.
  std::shared_ptr<exchange_flow> flow_owner() override { return shared_from_this(); }
  void on_flow_prepared() override;
  void on_flow_paused(int64_t deadline) override;
  void on_flow_awaiting_body() override { phase_ = phase::awaiting_body; }
  void on_flow_resumed() override { phase_ = phase::head; }
  void on_flow_continue() override { process_input(); }
  void on_flow_calling() override { phase_ = phase::calling; }
  void answer_local() override;
  // A request-body stage refused the body: answer (before the response) or cut the connection.
  void refuse_body(error_code& ec);

  socket_t socket_;
  // Set on the TLS listener: reads and writes go through it; the handshake comes first.
  std::shared_ptr<const tls_store> tls_store_;  // the certificates this connection started with
  std::unique_ptr<asio::ssl::stream<socket_t&>> tls_;
  phase phase_ = phase::idle;
  int64_t deadline_ = 0;
  bool reading_client_ = false;   // a read is outstanding
  bool reading_into_in_ = false;  // ... into in_'s tail: in_ must not change until it completes
  char idle_buf_[512];            // idle connections read here and hold no heap buffer
  char client_ip_[48] = {};       // for X-Forwarded-For, looked up once per connection
  bool client_eof_ = false;
  bool writing_client_ = false;
  bool close_after_response_ = false;
  bool in_input_ = false;  // process_input is running (a nested call returns at once)

  byte_buffer in_;
  byte_buffer out_;
  std::optional<request_parser<client_session>> req_parser_;
  bool first_bytes_ = true;  // nothing has been parsed yet: the h2c preface may come
  std::unique_ptr<h2_connection> h2_;

  // The request being proxied: its codec state here, the rest in ex_.
  std::vector<field_view> fields_;
  size_t head_scanned_ = 0;               // bytes of in_ already searched for the end of the head
  verdict head_verdict_ = verdict::next;  // what the stages said in the header callback
};

}  // namespace meridian::node
