#include "admin_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

namespace meridian::node {
namespace {

int64_t now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

constexpr size_t max_linger_bytes = 1 << 20;

thread_local bool close_requested = false;
thread_local bool over_limit = false;  // the request read reached max_request_bytes

// One client connection, owned by exactly one of: the gate's lists, a pool's ready queue, a worker.
struct connection {
  int fd = -1;
  SSL* ssl = nullptr;
  bool handshake_done = false;
  bool want_write = false;  // the TLS handshake waits for the socket to be writable
  std::string in;           // bytes read and not yet consumed
  size_t scanned = 0;       // bytes of `in` already searched for the end of the head
  std::string ip, local_ip;
  int port = 0, local_port = 0;
  int64_t deadline = 0;  // steady ms: the head must be complete by then
  uint64_t seq = 0;      // arrival order of this wait, for eviction
  size_t requests = 0;
  // Closing with unread input would reset the connection and could destroy the response before
  // the client read it: after refusing a request with its body unread, the gate reads and drops
  // what still arrives until the client closes or the deadline (nginx's lingering_close).
  bool lingering = false;
  size_t drained = 0;  // bytes dropped while lingering: at most max_linger_bytes

  ~connection() {
    if (ssl) {
      SSL_shutdown(ssl);  // best effort: the socket is non-blocking
      SSL_free(ssl);
    }
    if (fd >= 0) ::close(fd);
  }
  // Whether the buffered request's target (origin form) starts with prefix.
  bool target_starts_with(const std::string& prefix) const {
    if (prefix.empty()) return false;
    size_t sp = in.find(' ');
    if (sp == std::string::npos || sp > 32) return false;
    return in.compare(sp + 1, prefix.size(), prefix) == 0;
  }
  // True once `in` holds a whole request head.
  bool head_complete() {
    size_t from = scanned > 3 ? scanned - 3 : 0;
    scanned = in.size();
    return in.find("\r\n\r\n", from) != std::string::npos ||
           in.find("\n\n", from) != std::string::npos;
  }
};

// Writes `text` without blocking, as far as the socket takes it (for the gate's own refusals).
void send_best_effort(connection& c, std::string_view text) {
  if (c.ssl) {
    if (c.handshake_done) SSL_write(c.ssl, text.data(), static_cast<int>(text.size()));
    return;
  }
  (void)::send(c.fd, text.data(), text.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
}

std::string refusal(int status, const char* reason, const char* code, const char* message) {
  std::string body = std::string("{\"error\":\"") + code + "\",\"message\":\"" + message + "\"}";
  return "HTTP/1.1 " + std::to_string(status) + " " + reason +
         "\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: " +
         std::to_string(body.size()) + "\r\n\r\n" + body;
}

// Waits until fd is ready for `events` or timeout_ms passes; true when ready.
bool wait_for(int fd, short events, int timeout_ms) {
  if (timeout_ms <= 0) return false;
  pollfd p{fd, events, 0};
  int r;
  do {
    r = ::poll(&p, 1, timeout_ms);
  } while (r < 0 && errno == EINTR);
  return r > 0;
}

// httplib's view of a connection while a worker serves one request: reads come first from the
// bytes the gate already read, then from the socket, each under io_timeout_ms and the request's
// deadline, and never more than max_request_bytes in all.
class buffered_stream final : public httplib::Stream {
 public:
  buffered_stream(connection& c, const admin_transport_limits& limits)
      : c_(c), limits_(limits), deadline_(now_ms() + limits.request_timeout_ms) {}

  bool failed() const { return failed_; }

  bool is_readable() const override {
    if (!c_.in.empty()) return true;
    if (c_.ssl && SSL_pending(c_.ssl) > 0) return true;
    return wait_for(c_.fd, POLLIN, timeout());
  }
  bool is_writable() const override { return wait_for(c_.fd, POLLOUT, limits_.io_timeout_ms); }

  ssize_t read(char* ptr, size_t size) override {
    if (size == 0) return 0;
    if (read_ >= limits_.max_request_bytes) {
      over_limit = true;
      return fail();
    }
    size = std::min(size, limits_.max_request_bytes - read_);
    if (!c_.in.empty()) {
      size_t n = std::min(size, c_.in.size());
      std::copy_n(c_.in.data(), n, ptr);
      c_.in.erase(0, n);
      c_.scanned = 0;
      read_ += n;
      return static_cast<ssize_t>(n);
    }
    for (;;) {
      ssize_t n;
      short wait = POLLIN;
      if (c_.ssl) {
        int r = SSL_read(c_.ssl, ptr, static_cast<int>(std::min<size_t>(size, 1 << 30)));
        if (r > 0) {
          n = r;
        } else {
          int err = SSL_get_error(c_.ssl, r);
          if (err == SSL_ERROR_ZERO_RETURN) return 0;
          if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) return fail();
          if (err == SSL_ERROR_WANT_WRITE) wait = POLLOUT;
          n = -1;
          errno = EAGAIN;
        }
      } else {
        n = ::recv(c_.fd, ptr, size, MSG_DONTWAIT);
        if (n == 0) return 0;
      }
      if (n > 0) {
        read_ += static_cast<size_t>(n);
        return n;
      }
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return fail();
      if (errno != EINTR && !wait_for(c_.fd, wait, timeout())) return fail();
    }
  }

  ssize_t write(const char* ptr, size_t size) override {
    size_t done = 0;
    while (done < size) {
      ssize_t n;
      short wait = POLLOUT;
      if (c_.ssl) {
        int r =
            SSL_write(c_.ssl, ptr + done, static_cast<int>(std::min<size_t>(size - done, 1 << 30)));
        if (r > 0) {
          n = r;
        } else {
          int err = SSL_get_error(c_.ssl, r);
          if (err != SSL_ERROR_WANT_READ && err != SSL_ERROR_WANT_WRITE) return fail();
          if (err == SSL_ERROR_WANT_READ) wait = POLLIN;
          n = -1;
          errno = EAGAIN;
        }
      } else {
        n = ::send(c_.fd, ptr + done, size - done, MSG_NOSIGNAL | MSG_DONTWAIT);
      }
      if (n > 0) {
        done += static_cast<size_t>(n);
        continue;
      }
      if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) return fail();
      if (errno != EINTR && !wait_for(c_.fd, wait, limits_.io_timeout_ms)) return fail();
    }
    return static_cast<ssize_t>(size);
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    ip = c_.ip;
    port = c_.port;
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    ip = c_.local_ip;
    port = c_.local_port;
  }
  socket_t socket() const override { return c_.fd; }

 private:
  ssize_t fail() {
    failed_ = true;
    return -1;
  }
  int timeout() const {
    return static_cast<int>(
        std::max<int64_t>(0, std::min<int64_t>(limits_.io_timeout_ms, deadline_ - now_ms())));
  }

  connection& c_;
  const admin_transport_limits& limits_;
  const int64_t deadline_;
  size_t read_ = 0;
  bool failed_ = false;
};

void describe(int fd, bool peer, std::string& ip, int& port) {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  int r = peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len)
               : ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (r != 0) return;
  char host[INET6_ADDRSTRLEN] = {};
  if (ss.ss_family == AF_INET) {
    auto* sa = reinterpret_cast<sockaddr_in*>(&ss);
    ::inet_ntop(AF_INET, &sa->sin_addr, host, sizeof host);
    port = ntohs(sa->sin_port);
  } else if (ss.ss_family == AF_INET6) {
    auto* sa = reinterpret_cast<sockaddr_in6*>(&ss);
    ::inet_ntop(AF_INET6, &sa->sin6_addr, host, sizeof host);
    port = ntohs(sa->sin6_port);
  }
  ip = host;
}

// httplib calls enqueue() on its accept thread with a task that calls process_and_close_socket;
// running it there at once is right, because that only hands the socket to the gate.
class inline_queue final : public httplib::TaskQueue {
 public:
  explicit inline_queue(std::function<void()> on_shutdown) : on_shutdown_(std::move(on_shutdown)) {}
  void enqueue(std::function<void()> fn) override { fn(); }
  void shutdown() override { on_shutdown_(); }

 private:
  std::function<void()> on_shutdown_;
};

}  // namespace

struct guarded_server::impl {
  impl(guarded_server& s, admin_transport_limits l) : server(s), limits(l) {}

  guarded_server& server;
  const admin_transport_limits limits;
  SSL_CTX* ctx = nullptr;
  std::string error;

  // The workers of one pool: the general one, or the lane's (see admin_transport.h).
  struct pool {
    std::condition_variable cv;
    std::deque<std::unique_ptr<connection>> ready;  // a complete head each
  };

  std::mutex mu;
  pool general, lane;
  std::vector<std::unique_ptr<connection>> incoming;  // to the gate: new or back from a worker
  std::unordered_map<std::string, size_t> per_address;
  size_t total = 0;
  bool running = false;
  bool stopping = false;
  uint64_t next_seq = 0;
  int wake_fd = -1;
  std::thread gate;
  std::vector<std::thread> workers;

  void start_threads() {
    std::lock_guard lock(mu);
    if (running) return;
    running = true;
    stopping = false;
    wake_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    gate = std::thread([this] { run_gate(); });
    for (size_t i = 0; i < limits.workers; ++i)
      workers.emplace_back([this] { run_worker(general); });
    for (size_t i = 0; i < lane_workers(); ++i) workers.emplace_back([this] { run_worker(lane); });
  }

  // ThreadSanitizer builds only (see the end of this file). httplib, built without TSan,
  // initializes function-local statics on first use — the set of methods parse_request_line
  // checks, shared by every httplib server in the process — and later callers pass the static's
  // guard by a plain load TSan does not see: two threads' first requests look like a race on that
  // set. One request parsed on the main thread before any other thread exists orders that
  // initialization before them all. The method is no method, so no handler runs.
  static void warm_up_httplib() {
    int fds[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return;
    guarded_server s(admin_transport_limits{}, "", "", "");
    connection c;
    c.fd = fds[0];  // closed by c
    c.handshake_done = true;
    c.in = "WARM-UP / HTTP/1.1\r\nHost: warm-up\r\n\r\n";
    buffered_stream stream(c, s.impl_->limits);
    bool closed = false;
    s.process_request(stream, true, closed, [](httplib::Request&) {});
    ::close(fds[1]);
  }

  size_t lane_workers() const { return limits.lane_prefix.empty() ? 0 : limits.lane_workers; }

  pool& pool_for(const connection& c) {
    return lane_workers() > 0 && c.target_starts_with(limits.lane_prefix) ? lane : general;
  }

  void stop_threads() {
    {
      std::lock_guard lock(mu);
      if (!running) return;
      stopping = true;
    }
    wake();
    general.cv.notify_all();
    lane.cv.notify_all();
    if (gate.joinable()) gate.join();
    for (auto& w : workers) w.join();
    workers.clear();
    std::lock_guard lock(mu);
    incoming.clear();
    general.ready.clear();
    lane.ready.clear();
    per_address.clear();
    total = 0;
    running = false;
    ::close(wake_fd);
    wake_fd = -1;
  }

  void wake() {
    uint64_t one = 1;
    if (wake_fd >= 0) (void)::write(wake_fd, &one, sizeof one);
  }

  // Accept thread: counts the connection and passes it to the gate.
  void admit(int fd) {
    int flags = ::fcntl(fd, F_GETFL, 0);
    ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    auto c = std::make_unique<connection>();
    c->fd = fd;
    describe(fd, true, c->ip, c->port);
    describe(fd, false, c->local_ip, c->local_port);
    if (ctx) {
      c->ssl = SSL_new(ctx);
      if (!c->ssl) return;  // closes fd
      SSL_set_fd(c->ssl, fd);
      SSL_set_accept_state(c->ssl);
      SSL_set_mode(c->ssl, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    } else {
      c->handshake_done = true;
    }
    c->deadline = now_ms() + limits.head_timeout_ms;
    {
      std::lock_guard lock(mu);
      if (!running || stopping) return;
      ++per_address[c->ip];
      ++total;
      c->seq = next_seq++;
      incoming.push_back(std::move(c));
    }
    wake();
  }

  // Any thread: forgets a connection for the caps, then closes it.
  void release(std::unique_ptr<connection> c) {
    if (!c) return;
    std::lock_guard lock(mu);
    auto it = per_address.find(c->ip);
    if (it != per_address.end() && --it->second == 0) per_address.erase(it);
    if (total > 0) --total;
    c.reset();
  }

  // Gate thread: reads what arrived; returns false when the connection is finished with.
  bool service(connection& c) {
    if (c.lingering) {
      char sink[16384];
      for (;;) {
        ssize_t n = ::recv(c.fd, sink, sizeof sink, MSG_DONTWAIT);
        if (n > 0) {
          c.drained += static_cast<size_t>(n);
          if (c.drained > max_linger_bytes) return false;  // a body being pushed at us: reset
          continue;
        }
        return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR);
      }
    }
    if (!c.handshake_done) {
      int r = SSL_do_handshake(c.ssl);
      if (r == 1) {
        c.handshake_done = true;
        c.want_write = false;
      } else {
        int err = SSL_get_error(c.ssl, r);
        if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
          c.want_write = err == SSL_ERROR_WANT_WRITE;
          return true;
        }
        ERR_clear_error();
        return false;
      }
    }
    char buf[16384];
    for (;;) {
      ssize_t n;
      if (c.ssl) {
        int r = SSL_read(c.ssl, buf, sizeof buf);
        if (r <= 0) {
          int err = SSL_get_error(c.ssl, r);
          if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
            c.want_write = err == SSL_ERROR_WANT_WRITE;
            break;
          }
          ERR_clear_error();
          return false;
        }
        n = r;
      } else {
        n = ::recv(c.fd, buf, sizeof buf, MSG_DONTWAIT);
        if (n == 0) return false;
        if (n < 0) {
          if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) break;
          return false;
        }
      }
      c.in.append(buf, static_cast<size_t>(n));
      if (c.in.size() > limits.max_head_bytes) break;
    }
    return true;
  }

  void run_gate() {
    std::vector<std::unique_ptr<connection>> waiting;
    std::vector<pollfd> fds;
    for (;;) {
      {
        std::lock_guard lock(mu);
        if (stopping) break;
        for (auto& c : incoming) waiting.push_back(std::move(c));
        incoming.clear();
      }
      enforce_caps(waiting);
      int64_t now = now_ms();
      int64_t next = now + 1000;
      fds.assign(1, pollfd{wake_fd, POLLIN, 0});
      for (auto& c : waiting) {
        fds.push_back(pollfd{c->fd, static_cast<short>(c->want_write ? POLLOUT : POLLIN), 0});
        next = std::min(next, c->deadline);
      }
      int r = ::poll(fds.data(), fds.size(), static_cast<int>(std::max<int64_t>(0, next - now)));
      if (r < 0 && errno != EINTR) break;
      if (fds[0].revents) {
        uint64_t drained;
        while (::read(wake_fd, &drained, sizeof drained) > 0) {
        }
      }
      now = now_ms();
      std::vector<std::unique_ptr<connection>> keep;
      keep.reserve(waiting.size());
      for (size_t i = 0; i < waiting.size(); ++i) {
        auto& c = waiting[i];
        bool ok = true;
        if (fds[i + 1].revents) ok = service(*c);
        // Data may wait inside the TLS layer after a handshake step that read it.
        if (!ok) {
          release(std::move(c));
          continue;
        }
        if (!c->lingering && c->handshake_done && !c->in.empty() && c->head_complete()) {
          hand_to_worker(std::move(c));
          continue;
        }
        if (c->in.size() > limits.max_head_bytes) {
          send_best_effort(*c, refusal(431, "Request Header Fields Too Large", "headers_too_large",
                                       "request head exceeds the limit"));
          release(std::move(c));
          continue;
        }
        if (now >= c->deadline) {
          if (!c->in.empty() && !c->lingering) {
            send_best_effort(*c, refusal(408, "Request Timeout", "request_timeout",
                                         "the request head did not arrive in time"));
          }
          release(std::move(c));
          continue;
        }
        keep.push_back(std::move(c));
      }
      waiting.swap(keep);
    }
    for (auto& c : waiting) release(std::move(c));
  }

  // Gate thread: at the per-address or total cap the oldest waiting connections make room
  // (a slow client cannot keep a newer one out; connections being served are never cut).
  void enforce_caps(std::vector<std::unique_ptr<connection>>& waiting) {
    std::vector<size_t> doomed;
    {
      std::lock_guard lock(mu);
      size_t over_total = total > limits.max_connections ? total - limits.max_connections : 0;
      bool over_address = false;
      for (const auto& [ip, n] : per_address)
        over_address = over_address || n > limits.max_per_address;
      if (!over_total && !over_address) return;
      // `waiting` is in arrival order (every push appends a higher seq): oldest first.
      std::unordered_map<std::string, size_t> counts = per_address;
      for (size_t i = 0; i < waiting.size(); ++i) {
        auto& n = counts[waiting[i]->ip];
        if (n > limits.max_per_address || over_total > 0) {
          doomed.push_back(i);
          --n;
          if (over_total > 0) --over_total;
        }
      }
    }
    if (doomed.empty()) return;
    for (size_t i : doomed) release(std::move(waiting[i]));
    waiting.erase(std::remove(waiting.begin(), waiting.end(), nullptr), waiting.end());
  }

  // Gate thread, or a worker with a pipelined request for the other pool.
  void hand_to_worker(std::unique_ptr<connection> c) {
    pool& p = pool_for(*c);
    {
      std::lock_guard lock(mu);
      p.ready.push_back(std::move(c));
    }
    p.cv.notify_one();
  }

  void run_worker(pool& p) {
    for (;;) {
      std::unique_ptr<connection> c;
      {
        std::unique_lock lock(mu);
        p.cv.wait(lock, [&] { return stopping || !p.ready.empty(); });
        if (stopping) return;
        c = std::move(p.ready.front());
        p.ready.pop_front();
      }
      serve(std::move(c), p);
    }
  }

  // Worker of pool p: serves requests on c while complete heads for p are buffered; a pipelined
  // request for the other pool goes there; otherwise c goes back to the gate.
  void serve(std::unique_ptr<connection> c, pool& p) {
    for (;;) {
      buffered_stream stream(*c, limits);
      bool closed = false;
      close_requested = false;
      over_limit = false;
      bool last = ++c->requests >= server.keep_alive_max_count_;
      SSL* ssl = c->ssl;
      bool ok = server.process_request(stream, last, closed,
                                       [ssl](httplib::Request& req) { req.ssl = ssl; });
      if (stream.failed() || close_requested) {
        linger(std::move(c));
        return;
      }
      if (!ok || closed || last) {
        release(std::move(c));
        return;
      }
      c->scanned = 0;
      if (!c->in.empty() && c->head_complete()) {  // pipelined
        if (&pool_for(*c) == &p) continue;
        hand_to_worker(std::move(c));
        return;
      }
      c->deadline = now_ms() + limits.head_timeout_ms;
      {
        std::lock_guard lock(mu);
        if (stopping) break;
        c->seq = next_seq++;
        incoming.push_back(std::move(c));
      }
      wake();
      return;
    }
    release(std::move(c));
  }

  // Worker: stops sending on c and gives it to the gate to drain briefly before closing.
  void linger(std::unique_ptr<connection> c) {
    if (c->ssl) {
      SSL_shutdown(c->ssl);
      SSL_free(c->ssl);
      c->ssl = nullptr;
    }
    ::shutdown(c->fd, SHUT_WR);
    c->lingering = true;
    c->in.clear();
    c->want_write = false;
    c->handshake_done = true;
    c->deadline = now_ms() + 2000;
    bool queued = false;
    {
      std::lock_guard lock(mu);
      if (!stopping) {
        c->seq = next_seq++;
        incoming.push_back(std::move(c));
        queued = true;
      }
    }
    if (queued) {
      wake();
    } else {
      release(std::move(c));
    }
  }

  bool load_tls(const std::string& cert, const std::string& key, const std::string& client_ca) {
    ctx = SSL_CTX_new(TLS_server_method());
    if (!ctx) return false;
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert.c_str()) != 1 ||
        SSL_CTX_use_PrivateKey_file(ctx, key.c_str(), SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(ctx) != 1) {
      return false;
    }
    if (!client_ca.empty()) {
      if (SSL_CTX_load_verify_locations(ctx, client_ca.c_str(), nullptr) != 1) return false;
      STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(client_ca.c_str());
      if (!names) return false;
      SSL_CTX_set_client_CA_list(ctx, names);
      SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
    }
    return true;
  }
};

guarded_server::guarded_server(admin_transport_limits limits, const std::string& tls_cert,
                               const std::string& tls_key, const std::string& tls_client_ca)
    : impl_(std::make_unique<impl>(*this, limits)) {
  if (!tls_cert.empty() && !impl_->load_tls(tls_cert, tls_key, tls_client_ca)) {
    ERR_clear_error();
    impl_->error = "cannot use " + tls_cert + " / " + tls_key +
                   (tls_client_ca.empty() ? "" : " / " + tls_client_ca) +
                   " (unreadable, not PEM, or the key does not match)";
  }
  new_task_queue = [this] {
    impl_->start_threads();
    return new inline_queue([this] { impl_->stop_threads(); });
  };
}

guarded_server::~guarded_server() {
  stop();
  impl_->stop_threads();
  if (impl_->ctx) SSL_CTX_free(impl_->ctx);
}

bool guarded_server::is_valid() const {
  return impl_->error.empty();
}

const std::string& guarded_server::error() const {
  return impl_->error;
}

void guarded_server::close_after_response() {
  close_requested = true;
}

bool guarded_server::request_over_limit() {
  return over_limit;
}

bool guarded_server::process_and_close_socket(socket_t sock) {
  impl_->admit(sock);
  return true;
}

#if defined(__SANITIZE_THREAD__)
#define MERIDIAN_TSAN_BUILD 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MERIDIAN_TSAN_BUILD 1
#endif
#endif
#if MERIDIAN_TSAN_BUILD
namespace {
// Runs during static initialization, on the main thread (guarded_server::impl::warm_up_httplib).
const bool httplib_warmed_up = (guarded_server::impl::warm_up_httplib(), true);
}  // namespace
#endif

}  // namespace meridian::node
