#include "meridian/proxy/health_checker.h"

#include "endpoint.h"

#include <spdlog/spdlog.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/asio/ssl/stream.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <cstring>
#include <thread>

#include <nghttp2/nghttp2.h>
#include <openssl/ssl.h>

#include "upstream_tls.h"

namespace meridian::node {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;

std::shared_ptr<spdlog::logger> logger() {
  auto l = spdlog::get("node.health");
  return l ? l : spdlog::default_logger();
}

// One probe of one target over the upstream's own protocol, with a deadline: connect, TLS when
// the upstream has it (the same verification and ALPN as requests), then GET path over HTTP/1.1
// (the status line is enough) or HTTP/2 (the :status; or, for health_check.grpc, a
// grpc.health.v1.Health/Check call answered SERVING).
class probe : public std::enable_shared_from_this<probe> {
 public:
  probe(asio::io_context& ioc, const upstream_target* target, const upstream_runtime& up,
        std::function<void(bool, std::string)> done)
      : socket_(ioc),
        timer_(ioc),
        target_(target),
        up_(up),
        cfg_(up.cfg->health_check),
        done_(std::move(done)) {}

  ~probe() {
    if (session_) nghttp2_session_del(session_);
  }

  void run() {
    timer_.expires_after(cfg_.timeout);
    timer_.async_wait([self = shared_from_this()](const error_code& ec) {
      if (!ec) self->finish(false, "timed out");
    });
    socket_.async_connect(to_endpoint(target_->endpoint),
                          [self = shared_from_this()](const error_code& ec) {
                            if (ec) return self->finish(false, "connect: " + ec.message());
                            self->on_connected();
                          });
  }

 private:
  bool h2() const { return up_.cfg->protocol != upstream_protocol::http1; }

  void on_connected() {
    if (!up_.client_tls) return start_request();
    auto& ctx = *std::static_pointer_cast<asio::ssl::context>(up_.client_tls);
    tls_ = std::make_unique<asio::ssl::stream<tcp::socket&>>(socket_, ctx);
    std::string name = upstream_server_name(*up_.cfg, target_->state->addr.host);
    error_code ec;
    asio::ip::make_address(name, ec);
    if (ec && !name.empty()) SSL_set_tlsext_host_name(tls_->native_handle(), name.c_str());
    if (SSL_CTX_get_verify_mode(ctx.native_handle()) != SSL_VERIFY_NONE) {
      tls_->set_verify_callback(asio::ssl::host_name_verification(name));
    }
    tls_->async_handshake(asio::ssl::stream_base::client,
                          [self = shared_from_this()](const error_code& ec) {
                            if (ec) return self->finish(false, "tls: " + ec.message());
                            self->start_request();
                          });
  }

  void start_request() {
    if (!h2()) {
      request_ = "GET " + cfg_.path + " HTTP/1.1\r\nHost: " + target_->state->addr.to_string() +
                 "\r\nUser-Agent: meridian-health-check\r\nConnection: close\r\n\r\n";
      return write(request_);
    }
    if (tls_) {
      const unsigned char* alpn = nullptr;
      unsigned int len = 0;
      SSL_get0_alpn_selected(tls_->native_handle(), &alpn, &len);
      if (std::string_view(reinterpret_cast<const char*>(alpn), len) != "h2") {
        return finish(false, "the target did not choose h2 (ALPN)");
      }
    }
    if (!start_h2()) return finish(false, "cannot start HTTP/2");
    write(request_);
  }

  // The preface, SETTINGS and one request as bytes in request_.
  bool start_h2() {
    nghttp2_session_callbacks* cb = nullptr;
    if (nghttp2_session_callbacks_new(&cb) != 0) return false;
    nghttp2_session_callbacks_set_on_header_callback(
        cb, [](nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name, size_t namelen,
               const uint8_t* value, size_t valuelen, uint8_t, void* user) {
          auto* p = static_cast<probe*>(user);
          std::string_view n(reinterpret_cast<const char*>(name), namelen);
          std::string_view v(reinterpret_cast<const char*>(value), valuelen);
          if (frame->hd.stream_id != p->stream_) return 0;
          if (n == ":status") p->h2_status_ = std::atoi(std::string(v).c_str());
          if (n == "grpc-status") p->grpc_status_ = std::atoi(std::string(v).c_str());
          if (n == "grpc-message") p->grpc_message_.assign(v.substr(0, 200));
          return 0;
        });
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(
        cb, [](nghttp2_session*, uint8_t, int32_t stream_id, const uint8_t* data, size_t len,
               void* user) {
          auto* p = static_cast<probe*>(user);
          if (stream_id == p->stream_ && p->body_.size() < 4096)
            p->body_.append(reinterpret_cast<const char*>(data), len);
          return 0;
        });
    nghttp2_session_callbacks_set_on_stream_close_callback(
        cb, [](nghttp2_session*, int32_t stream_id, uint32_t error_code, void* user) {
          auto* p = static_cast<probe*>(user);
          if (stream_id == p->stream_) p->stream_done_ = true, p->stream_error_ = error_code;
          return 0;
        });
    int rv = nghttp2_session_client_new(&session_, cb, this);
    nghttp2_session_callbacks_del(cb);
    if (rv != 0) return false;
    nghttp2_settings_entry settings[] = {{NGHTTP2_SETTINGS_ENABLE_PUSH, 0}};
    nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, 1);
    std::string authority = up_.cfg->tls && !up_.cfg->tls->server_name.empty()
                                ? up_.cfg->tls->server_name
                                : target_->state->addr.to_string();
    std::string path = cfg_.grpc ? "/grpc.health.v1.Health/Check" : cfg_.path;
    std::vector<std::pair<std::string, std::string>> fields = {
        {":method", cfg_.grpc ? "POST" : "GET"},
        {":scheme", up_.client_tls ? "https" : "http"},
        {":authority", authority},
        {":path", path},
        {"user-agent", "meridian-health-check"}};
    if (cfg_.grpc) {
      fields.emplace_back("content-type", "application/grpc");
      fields.emplace_back("te", "trailers");
      // HealthCheckRequest{service = grpc_service}: field 1, a string.
      std::string message;
      if (!cfg_.grpc_service.empty()) {
        message.push_back('\x0a');
        for (size_t n = cfg_.grpc_service.size();; n >>= 7) {  // the length as a varint
          message.push_back(static_cast<char>((n & 0x7f) | (n > 0x7f ? 0x80 : 0)));
          if (n <= 0x7f) break;
        }
        message.append(cfg_.grpc_service);
      }
      grpc_body_.push_back('\0');
      auto n = static_cast<uint32_t>(message.size());
      for (int shift : {24, 16, 8, 0}) grpc_body_.push_back(static_cast<char>((n >> shift) & 0xff));
      grpc_body_.append(message);
    }
    std::vector<nghttp2_nv> nv;
    for (auto& [k, v] : fields) {
      nv.push_back({reinterpret_cast<uint8_t*>(k.data()), reinterpret_cast<uint8_t*>(v.data()),
                    k.size(), v.size(), NGHTTP2_NV_FLAG_NONE});
    }
    nghttp2_data_provider provider{};
    provider.source.ptr = this;
    provider.read_callback = [](nghttp2_session*, int32_t, uint8_t* buf, size_t length,
                                uint32_t* flags, nghttp2_data_source* source, void*) -> ssize_t {
      auto* p = static_cast<probe*>(source->ptr);
      size_t n = std::min(length, p->grpc_body_.size() - p->grpc_sent_);
      std::memcpy(buf, p->grpc_body_.data() + p->grpc_sent_, n);
      p->grpc_sent_ += n;
      if (p->grpc_sent_ == p->grpc_body_.size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
      return static_cast<ssize_t>(n);
    };
    stream_ = nghttp2_submit_request(session_, nullptr, nv.data(), nv.size(),
                                     cfg_.grpc ? &provider : nullptr, nullptr);
    if (stream_ < 0) return false;
    request_.clear();
    return collect_output();
  }

  // Moves what nghttp2 has to send into request_.
  bool collect_output() {
    for (;;) {
      const uint8_t* data = nullptr;
      ssize_t n = nghttp2_session_mem_send(session_, &data);
      if (n < 0) return false;
      if (n == 0) return true;
      request_.append(reinterpret_cast<const char*>(data), static_cast<size_t>(n));
    }
  }

  void write(const std::string& bytes) {
    auto done = [self = shared_from_this()](const error_code& ec, size_t) {
      if (ec) return self->finish(false, "write: " + ec.message());
      self->request_.clear();  // sent; HTTP/2 may queue more (SETTINGS ACK) after the next read
      self->read();
    };
    if (tls_) {
      asio::async_write(*tls_, asio::buffer(bytes), std::move(done));
    } else {
      asio::async_write(socket_, asio::buffer(bytes), std::move(done));
    }
  }

  void read() {
    auto done = [self = shared_from_this()](const error_code& ec, size_t n) {
      self->on_read(ec, n);
    };
    if (tls_) {
      tls_->async_read_some(asio::buffer(buf_ + got_, sizeof(buf_) - got_), std::move(done));
    } else {
      socket_.async_read_some(asio::buffer(buf_ + got_, sizeof(buf_) - got_), std::move(done));
    }
  }

  void on_read(const error_code& ec, size_t n) {
    if (finished_) return;
    if (session_) {
      if (ec) return finish(false, "read: " + ec.message());
      if (nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t*>(buf_), n) < 0) {
        return finish(false, "the target broke HTTP/2");
      }
      if (stream_done_) return evaluate_h2();
      if (!collect_output()) return finish(false, "HTTP/2 session failed");
      if (!request_.empty()) return write(request_);  // SETTINGS ACK, window updates
      return read();
    }
    got_ += n;
    std::string_view text(buf_, got_);
    auto eol = text.find("\r\n");
    if (eol == std::string_view::npos) {
      if (ec || got_ == sizeof(buf_)) return finish(false, "no status line");
      return read();
    }
    evaluate(text.substr(0, eol));
  }

  void evaluate_h2() {
    if (stream_error_ != 0 || h2_status_ == 0) {
      return finish(false,
                    "stream reset (" + std::string(nghttp2_http2_strerror(stream_error_)) + ")");
    }
    if (!cfg_.grpc) return judge(h2_status_);
    // HealthCheckResponse{status = SERVING (1)}: field 1, a varint, in the one message.
    bool serving =
        grpc_status_ == 0 && body_.size() >= 7 && body_[5] == '\x08' && body_[6] == '\x01';
    std::string why = serving ? "SERVING"
                      : grpc_status_ != 0
                          ? "grpc-status " + std::to_string(grpc_status_) + " " + grpc_message_
                          : "not SERVING";
    finish(serving, std::move(why));
  }

  void evaluate(std::string_view line) {
    // "HTTP/1.1 200 OK"
    if (line.size() < 12 || line.substr(0, 5) != "HTTP/") return finish(false, "bad status line");
    judge(std::atoi(std::string(line.substr(9, 3)).c_str()));
  }

  void judge(int status) {
    bool ok;
    if (cfg_.expect_status.empty()) {
      ok = status >= 200 && status < 400;
    } else {
      ok = std::find(cfg_.expect_status.begin(), cfg_.expect_status.end(), status) !=
           cfg_.expect_status.end();
    }
    finish(ok, "status " + std::to_string(status));
  }

  void finish(bool ok, std::string detail) {
    if (finished_) return;
    finished_ = true;
    error_code ignored;
    timer_.cancel();
    socket_.close(ignored);
    done_(ok, std::move(detail));
  }

  tcp::socket socket_;
  asio::steady_timer timer_;
  std::unique_ptr<asio::ssl::stream<tcp::socket&>> tls_;
  const upstream_target* target_;  // in the snapshot that done_ keeps alive
  const upstream_runtime& up_;     // likewise
  health_check_config cfg_;
  std::function<void(bool, std::string)> done_;
  std::string request_;
  char buf_[16384];
  size_t got_ = 0;
  bool finished_ = false;
  // HTTP/2
  nghttp2_session* session_ = nullptr;
  int32_t stream_ = 0;
  int h2_status_ = 0;
  int grpc_status_ = -1;
  std::string grpc_message_;
  bool stream_done_ = false;
  uint32_t stream_error_ = 0;
  std::string body_;
  std::string grpc_body_;
  size_t grpc_sent_ = 0;
};

}  // namespace

struct health_checker::impl {
  asio::io_context ioc;
  asio::executor_work_guard<asio::io_context::executor_type> work{ioc.get_executor()};
  std::thread thread;
  uint64_t generation = 0;  // touched on the checker thread only
  std::vector<std::unique_ptr<asio::steady_timer>> timers;
  std::shared_ptr<const snapshot> snap;

  void schedule(uint64_t gen, asio::steady_timer* timer, const upstream_target* target,
                const upstream_runtime* up, duration delay) {
    const health_check_config* cfg = &up->cfg->health_check;
    timer->expires_after(delay);
    timer->async_wait([this, gen, timer, target, cfg, up](const error_code& ec) {
      if (ec || gen != generation) return;
      auto keep = snap;  // cfg, up and target point into it
      std::make_shared<probe>(
          ioc, target, *up,
          [this, gen, timer, target, cfg, up, keep](bool ok, std::string detail) {
            if (gen != generation) return;
            record(*target->state, *cfg, ok, detail, *keep);
            schedule(gen, timer, target, up, cfg->interval);
          })
          ->run();
    });
  }

  static void record(target_state& t, const health_check_config& cfg, bool ok,
                     const std::string& detail, const snapshot& snap) {
    bool healthy = t.healthy.load();
    if (ok == healthy) {
      t.health_streak.store(0);
      return;
    }
    uint32_t streak = t.health_streak.fetch_add(1) + 1;
    if (streak >= (healthy ? cfg.unhealthy_after : cfg.healthy_after)) {
      t.healthy.store(ok);
      t.health_streak.store(0);
      if (t.metrics) t.metrics->healthy.store(ok ? 1 : 0);
      if (ok) {
        logger()->info("upstream {} target {} is healthy again", t.upstream, t.addr.to_string());
      } else {
        logger()->warn("upstream {} target {} is unhealthy: {}", t.upstream, t.addr.to_string(),
                       detail);
      }
      // The verdict feeds the target's breaker, and through it (region/cluster scope) every
      // node: health is shared the way breaker states are.
      for (const auto& up : snap.upstreams) {
        if (up->cfg->name != t.upstream) continue;
        const auto& cb = up->cfg->circuit_breaker;
        int64_t wall = unix_now_ms();
        if (t.breaker.force(ok, wall, cb, snap.cfg.node.id) && cb.scope != "local" &&
            snap.registry) {
          snap.registry->queue_publish(t.key);
        }
      }
    }
  }
};

health_checker::health_checker() : impl_(std::make_unique<impl>()) {
  impl_->thread = std::thread([this] { impl_->ioc.run(); });
}

health_checker::~health_checker() {
  impl_->work.reset();
  asio::post(impl_->ioc, [this] {
    ++impl_->generation;
    impl_->timers.clear();
    impl_->ioc.stop();
  });
  impl_->thread.join();
}

void health_checker::update(std::shared_ptr<const snapshot> snap) {
  asio::post(impl_->ioc, [this, snap = std::move(snap)] {
    auto& d = *impl_;
    ++d.generation;
    for (auto& t : d.timers) t->cancel();
    d.timers.clear();
    d.snap = snap;
    for (const auto& up : snap->upstreams) {
      const auto& hc = up->cfg->health_check;
      if (!hc.enabled) {
        // Without active checks a target is never held down by an old verdict.
        for (auto& t : up->targets) {
          t.state->healthy.store(true);
          if (t.state->metrics) t.state->metrics->healthy.store(1);
        }
        continue;
      }
      size_t i = 0;
      for (auto& t : up->targets) {
        if (!t.resolved) continue;
        d.timers.push_back(std::make_unique<asio::steady_timer>(d.ioc));
        // Spread first probes over the interval so targets are not probed in lockstep.
        auto delay = hc.interval * static_cast<int64_t>(i++) /
                     static_cast<int64_t>(std::max<size_t>(1, up->targets.size()));
        d.schedule(d.generation, d.timers.back().get(), &t, up.get(),
                   std::chrono::duration_cast<duration>(delay));
      }
    }
  });
}

}  // namespace meridian::node
