// Workers (one thread and io_context each, their listeners, sweep timer, mailbox and
// upstream pools), upstream connections, and proxy_server, which starts and feeds them.
#include <sys/eventfd.h>
#include <unistd.h>

#include "proxy_internal.h"

namespace meridian::node {

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
  auto done = [self = shared_from_this()](const error_code& ec, size_t n) { self->on_read(ec, n); };
  if (tls) {
    tls->async_read_some(asio::buffer(in.tail(), in.tail_size()), std::move(done));
  } else {
    socket.async_read_some(asio::buffer(in.tail(), in.tail_size()), std::move(done));
  }
}

void upstream_conn::start_read_soon() {
  if (reading || !open) return;
  asio::post(socket.get_executor(), [self = shared_from_this()] { self->start_read(); });
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

worker::~worker() {
  doorbell.reset();  // its dup first, while ioc is alive
  if (doorbell_fd >= 0) ::close(doorbell_fd);
}

void worker::ring_doorbell() {
  if (doorbell_fd < 0) return;  // the sweep reads the mailbox anyway
  const uint64_t one = 1;
  [[maybe_unused]] auto n = ::write(doorbell_fd, &one, sizeof one);
}

void worker::await_doorbell() {
  if (!doorbell) {
    doorbell_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (doorbell_fd < 0) return;
    doorbell =
        std::make_unique<asio::posix::basic_stream_descriptor<asio::io_context::executor_type>>(
            ioc.get_executor(), ::dup(doorbell_fd));
  }
  doorbell->async_wait(asio::posix::stream_descriptor::wait_read, [this](const error_code& ec) {
    if (ec || stopping) return;
    uint64_t rings = 0;
    [[maybe_unused]] auto n = ::read(doorbell_fd, &rings, sizeof rings);
    read_mail();
    if (!stopping) await_doorbell();
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
  if (doorbell) {
    error_code ignored;
    doorbell->close(ignored);
  }
  accept_retry.cancel();
  tls_accept_retry.cancel();
  for (auto& s : owned_sessions()) s->close();
  for (auto& pool : idle) {
    for (auto& c : pool) c->close();
  }
  for (auto pool : h2_pool) {
    for (auto& c : pool) c->close();
  }
  ioc.stop();
}

void worker::on_sweep() {
  read_mail();
  if (stopping) return;
  now = now_ms();
  for (auto& s : owned_sessions()) s->check_deadline(now);
  for (auto& pool : h2_pool) {
    std::erase_if(pool, [&](const std::shared_ptr<h2_upstream>& c) { return !c->check(now); });
  }
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
        continue;
      }
      // Idle since the last sweep: watch for the target closing it (or sending what nobody
      // asked for), so that a dead connection is dropped, not reused.
      c->start_read();
      ++i;
    }
  }
}

void worker::begin_drain() {
  draining = true;
  error_code ignored;
  acceptor.close(ignored);
  tls_acceptor.close(ignored);
  for (auto& s : owned_sessions()) s->close_if_idle();
  // A copy: a call failed by a shutdown may retry and open another connection meanwhile.
  for (auto pool : h2_pool) {
    for (auto& c : pool) c->shut_down();
  }
  for (auto& pool : idle) {
    for (auto& c : pool) {
      c->close();
      c->target->metrics->pool_idle.fetch_sub(1, std::memory_order_relaxed);
    }
    pool.clear();
  }
}

void worker::close_tunnels() {
  for (auto& s : owned_sessions()) s->close_tunnels();
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

std::shared_ptr<upstream_conn> worker::take_idle(target_state* t, const void* tls_tag) {
  if (t->id >= idle.size()) return nullptr;
  auto& pool = idle[t->id];
  while (!pool.empty()) {
    auto c = std::move(pool.back());
    pool.pop_back();
    t->metrics->pool_idle.fetch_sub(1, std::memory_order_relaxed);
    c->pooled = false;
    if (c->open && c->tls_tag == tls_tag) return c;
    c->close();  // made under settings a reload replaced
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
  // No read yet: a connection reused within a sweep (the common case under load) would pay a
  // read that finds nothing (EAGAIN) for each request. The sweep arms it for the ones that stay.
  pool.push_back(std::move(conn));
}

std::shared_ptr<h2_upstream> worker::h2_connection_for(target_state* t, const upstream_runtime& up,
                                                       const upstream_target& picked) {
  if (t->id >= h2_pool.size()) h2_pool.resize(t->id + 1);
  auto& pool = h2_pool[t->id];
  std::erase_if(pool, [](const std::shared_ptr<h2_upstream>& c) { return c->closed(); });
  const uint32_t cap = up.cfg->pool.max_streams_per_connection;
  for (auto& c : pool) {
    if (c->made_for(up) && c->accepting(cap)) return c;
  }
  uint32_t max = up.cfg->pool.max_connections_per_target;
  if (max && t->id < open_by_target.size() && open_by_target[t->id] >= max) return nullptr;
  auto c = std::make_shared<h2_upstream>(*this, t, up);
  pool.push_back(c);
  stats.upstream_connections_opened.add();
  c->connect(to_endpoint(picked.endpoint), upstream_server_name(*up.cfg, t->addr.host));
  return c;
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
    w->await_doorbell();
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
  auto idle = [&] {
    for (auto& w : impl_->workers)
      if (w->open_sessions.load() != 0) return false;
    return true;
  };
  auto wait_until = [&](steady_clock::time_point until) {
    while (steady_clock::now() < until && !idle())
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
  };
  // Requests finish within the period; WebSocket tunnels, which do not end by themselves, get a
  // close frame (1001 going away) in its last second and a moment to pass it on.
  auto deadline = steady_clock::now() + timeout;
  auto grace = std::min<duration>(std::chrono::seconds(1), timeout / 2);
  wait_until(deadline - grace);
  if (!idle()) {
    for (auto& w : impl_->workers) {
      worker* target = w.get();
      w->deliver([target] { target->close_tunnels(); });
    }
    wait_until(deadline);
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
