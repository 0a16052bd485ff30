#include "meridian/proxy/health_checker.h"

#include "endpoint.h"

#include <spdlog/spdlog.h>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>
#include <thread>

namespace meridian::node {
namespace {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;

std::shared_ptr<spdlog::logger> logger() {
  auto l = spdlog::get("node.health");
  return l ? l : spdlog::default_logger();
}

// One probe of one target: connect, send the request, read the status line, with a deadline.
class probe : public std::enable_shared_from_this<probe> {
 public:
  probe(asio::io_context& ioc, const upstream_target* target, const health_check_config& cfg,
        std::function<void(bool, std::string)> done)
      : socket_(ioc), timer_(ioc), target_(target), cfg_(cfg), done_(std::move(done)) {}

  void run() {
    timer_.expires_after(cfg_.timeout);
    timer_.async_wait([self = shared_from_this()](const error_code& ec) {
      if (!ec) self->finish(false, "timed out");
    });
    request_ = "GET " + cfg_.path + " HTTP/1.1\r\nHost: " + target_->state->addr.to_string() +
               "\r\nUser-Agent: meridian-health-check\r\nConnection: close\r\n\r\n";
    socket_.async_connect(
        to_endpoint(target_->endpoint), [self = shared_from_this()](const error_code& ec) {
          if (ec) return self->finish(false, "connect: " + ec.message());
          asio::async_write(self->socket_, asio::buffer(self->request_),
                            [self](const error_code& ec, size_t) {
                              if (ec) return self->finish(false, "write: " + ec.message());
                              self->read();
                            });
        });
  }

 private:
  void read() {
    socket_.async_read_some(asio::buffer(buf_ + got_, sizeof(buf_) - got_),
                            [self = shared_from_this()](const error_code& ec, size_t n) {
                              self->got_ += n;
                              std::string_view text(self->buf_, self->got_);
                              auto eol = text.find("\r\n");
                              if (eol == std::string_view::npos) {
                                if (ec || self->got_ == sizeof(self->buf_)) {
                                  return self->finish(false, "no status line");
                                }
                                return self->read();
                              }
                              self->evaluate(text.substr(0, eol));
                            });
  }

  void evaluate(std::string_view line) {
    // "HTTP/1.1 200 OK"
    if (line.size() < 12 || line.substr(0, 5) != "HTTP/") return finish(false, "bad status line");
    int status = std::atoi(std::string(line.substr(9, 3)).c_str());
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
  const upstream_target* target_;  // in the snapshot that done_ keeps alive
  health_check_config cfg_;
  std::function<void(bool, std::string)> done_;
  std::string request_;
  char buf_[1024];
  size_t got_ = 0;
  bool finished_ = false;
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
                const health_check_config* cfg, duration delay) {
    timer->expires_after(delay);
    timer->async_wait([this, gen, timer, target, cfg](const error_code& ec) {
      if (ec || gen != generation) return;
      auto keep = snap;  // cfg and target point into it
      std::make_shared<probe>(ioc, target, *cfg,
                              [this, gen, timer, target, cfg, keep](bool ok, std::string detail) {
                                if (gen != generation) return;
                                record(*target->state, *cfg, ok, detail, *keep);
                                schedule(gen, timer, target, cfg, cfg->interval);
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
        d.schedule(d.generation, d.timers.back().get(), &t, &hc,
                   std::chrono::duration_cast<duration>(delay));
      }
    }
  });
}

}  // namespace meridian::node
