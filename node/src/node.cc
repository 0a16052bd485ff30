#include "meridian/node/node.h"

#include <signal.h>
#include <sodium.h>
#include <spdlog/async.h>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <mutex>

#include "admin_server.h"
#include "cluster_glue.h"
#include "config_json.h"
#include "health_checker.h"
#include "http_proxy.h"
#include "runtime.h"

namespace meridian::node {
namespace {

std::shared_ptr<spdlog::logger> log() {
  auto l = spdlog::get("node");
  return l ? l : spdlog::default_logger();
}

std::string random_token() {
  if (sodium_init() < 0) std::abort();
  unsigned char raw[24];
  randombytes_buf(raw, sizeof raw);
  char hex[sizeof raw * 2 + 1];
  sodium_bin2hex(hex, sizeof hex, raw, sizeof raw);
  return hex;
}

// Reads the admin token from path, creating the file with a fresh token (mode 0600) when it does
// not exist. Returns false and sets *error when the file exists but is unusable.
bool load_or_create_token(const std::string& path, std::string* token, std::string* error) {
  std::error_code fec;
  if (std::filesystem::exists(path, fec)) {
    std::ifstream in(path);
    std::getline(in, *token);
    while (!token->empty() && std::isspace(static_cast<unsigned char>(token->back()))) {
      token->pop_back();
    }
    if (token->size() < 16) {
      *error = "admin.token_file " + path + ": token must be at least 16 characters";
      return false;
    }
    return true;
  }
  auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, fec);
  *token = random_token();
  {
    std::ofstream out(path);
    out << *token << "\n";
    if (!out) {
      *error = "admin.token_file " + path + ": cannot write";
      return false;
    }
  }
  ::chmod(path.c_str(), 0600);
  log()->info("wrote a new admin token to {}", path);
  return true;
}

std::shared_ptr<spdlog::logger> make_access_log(const access_log_section& cfg) {
  if (!cfg.enabled) return nullptr;
  spdlog::init_thread_pool(8192, 1);
  std::shared_ptr<spdlog::sinks::sink> sink;
  if (cfg.path == "stdout") {
    sink = std::make_shared<spdlog::sinks::stdout_sink_mt>();
  } else if (cfg.path == "stderr") {
    sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();
  } else {
    sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(cfg.path);
  }
  auto logger = std::make_shared<spdlog::async_logger>(
      "access", sink, spdlog::thread_pool(), spdlog::async_overflow_policy::overrun_oldest);
  logger->set_pattern("%v");
  logger->set_level(spdlog::level::info);
  // Registered so that the periodic flush reaches it: lines hit the file within a second.
  spdlog::drop("access");
  spdlog::register_logger(logger);
  spdlog::flush_every(std::chrono::seconds(1));
  return logger;
}

}  // namespace

void setup_logging(const std::string& level) {
  auto lvl = spdlog::level::from_str(level);
  for (const char* name : {"node", "node.http", "node.admin", "node.health", "node.config"}) {
    auto l = spdlog::get(name);
    if (!l) {
      auto sink = spdlog::default_logger()->sinks();
      l = std::make_shared<spdlog::logger>(name, sink.begin(), sink.end());
      spdlog::register_logger(l);
    }
    l->set_level(lvl);
  }
  spdlog::set_level(lvl);
}

struct node::impl {
  explicit impl(config c) : cfg(std::move(c)), metrics(cfg.node.workers), targets(metrics) {}

  config cfg;
  metrics_registry metrics;
  target_registry targets;
  std::string token;
  uint64_t version = 0;
  mutable std::mutex snap_mutex;
  std::shared_ptr<const snapshot> snap;
  std::unique_ptr<proxy_server> proxy;
  std::unique_ptr<admin_server> admin;
  std::unique_ptr<health_checker> health;
  std::unique_ptr<cluster_glue> cluster;  // null without a `cluster` section

  std::shared_ptr<const snapshot> current() const {
    std::lock_guard lock(snap_mutex);
    return snap;
  }
};

node::node(config cfg) : impl_(std::make_unique<impl>(std::move(cfg))) {}

node::~node() {
  if (impl_->proxy) impl_->proxy->stop();
  if (impl_->admin) impl_->admin->stop();
}

bool node::start(std::string* error) {
  auto& d = *impl_;
  std::string token_file =
      d.cfg.admin.token_file.empty()
          ? (std::filesystem::path(d.cfg.node.data_dir) / "admin.token").string()
          : d.cfg.admin.token_file;
  if (!load_or_create_token(token_file, &d.token, error)) return false;

  d.snap = build_snapshot(d.cfg, ++d.version, d.cfg.node.workers, d.targets, d.metrics, error);
  if (!d.snap) return false;
  for (const auto& w : d.snap->warnings) log()->warn("{}", w);

  d.proxy = std::make_unique<proxy_server>(d.cfg.node.workers, d.metrics,
                                           make_access_log(d.cfg.log.access_log));
  if (!d.proxy->start(d.cfg.listen.proxy, d.snap, error)) return false;

  if (d.cfg.cluster) {
    d.cluster = cluster_glue::start(d.cfg, error);
    if (!d.cluster) {
      d.proxy->stop();
      return false;
    }
  }

  admin_handlers handlers;
  handlers.metrics_text = [this] {
    auto text = impl_->metrics.render_prometheus();
    if (impl_->cluster) text += impl_->cluster->metrics_text();
    return text;
  };
  if (d.cluster) {
    handlers.cluster_members = [this] { return impl_->cluster->members_json(); };
    handlers.cluster_health = [this] {
      return impl_->cluster->health_json(impl_->current()->version);
    };
    handlers.cluster_leave = [this] {
      impl_->cluster->leave();
      return nlohmann::json{{"status", "left"}, {"node", impl_->cfg.node.id}};
    };
  }
  handlers.effective_config = [this] {
    auto snap = impl_->current();
    auto j = config_to_json(snap->cfg);
    j["version"] = snap->version;
    return j;
  };
  d.admin = std::make_unique<admin_server>(d.cfg.node.id, d.token, std::move(handlers));
  if (!d.admin->start(d.cfg.listen.admin.host, d.cfg.listen.admin.port, error)) {
    d.proxy->stop();
    return false;
  }
  d.health = std::make_unique<health_checker>();
  d.health->update(d.snap);
  log()->info("node {} (region {}) proxy on {}:{}, admin on {}:{}, {} worker(s)", d.cfg.node.id,
              d.cfg.node.region, d.cfg.listen.proxy.host, proxy_port(), d.cfg.listen.admin.host,
              admin_port(), d.cfg.node.workers);
  return true;
}

uint16_t node::proxy_port() const {
  return impl_->proxy ? impl_->proxy->port() : 0;
}
uint16_t node::admin_port() const {
  return impl_->admin ? impl_->admin->port() : 0;
}
const std::string& node::admin_token() const {
  return impl_->token;
}
const std::string& node::id() const {
  return impl_->cfg.node.id;
}

bool node::reload(std::string* error) {
  auto result = load_config(impl_->cfg.source);
  if (!result.value) {
    error->clear();
    for (const auto& e : result.errors) *error += e.to_string() + "\n";
    return false;
  }
  return apply(std::move(*result.value), error);
}

bool node::apply(config cfg, std::string* error) {
  auto& d = *impl_;
  if (!(cfg.listen.proxy == d.cfg.listen.proxy) || !(cfg.listen.admin == d.cfg.listen.admin) ||
      cfg.node.workers != d.cfg.node.workers) {
    log()->warn("listen addresses and node.workers change only on restart; keeping the old ones");
    cfg.listen = d.cfg.listen;
    cfg.node.workers = d.cfg.node.workers;
  }
  auto snap = build_snapshot(cfg, d.version + 1, d.cfg.node.workers, d.targets, d.metrics, error);
  if (!snap) return false;
  // The keyring is re-read on reload (key rotation: install, make primary, remove). The rest of
  // the cluster section (bind, seeds) changes only on restart.
  if (d.cluster && cfg.cluster && !d.cluster->reload_keys(cfg.cluster->keyring_file, error)) {
    return false;
  }
  for (const auto& w : snap->warnings) log()->warn("{}", w);
  ++d.version;
  {
    std::lock_guard lock(d.snap_mutex);
    d.snap = snap;
  }
  d.cfg = std::move(cfg);
  d.proxy->update(snap);
  d.health->update(snap);
  log()->info("config version {} applied: {} routes, {} upstreams", snap->version,
              snap->routes.size(), snap->upstreams.size());
  return true;
}

void node::drain(duration timeout) {
  auto& d = *impl_;
  log()->info("draining: {} open connection(s)", d.proxy ? d.proxy->connections() : 0);
  // Leave first, so that the others see `left` (not `dead`) while this node finishes requests.
  if (d.cluster) d.cluster->leave();
  if (d.proxy) d.proxy->drain(timeout);
  d.health.reset();
  if (d.admin) d.admin->stop();
  log()->info("stopped");
}

int run_node(const std::string& config_path) {
  auto result = load_config(config_path);
  if (!result.value) {
    for (const auto& e : result.errors) std::fprintf(stderr, "%s\n", e.to_string().c_str());
    return 1;
  }
  setup_logging(result.value->log.level);
  // Every client and upstream connection is a descriptor: take the whole hard limit.
  rlimit files{};
  if (::getrlimit(RLIMIT_NOFILE, &files) == 0 && files.rlim_cur < files.rlim_max) {
    files.rlim_cur = files.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &files);
  }

  // Signals are taken synchronously by this thread; every other thread inherits the mask.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  ::signal(SIGPIPE, SIG_IGN);

  node n(std::move(*result.value));
  std::string error;
  if (!n.start(&error)) {
    std::fprintf(stderr, "meridian: %s\n", error.c_str());
    return 1;
  }
  for (;;) {
    int sig = 0;
    sigwait(&set, &sig);
    if (sig == SIGHUP) {
      std::string reload_error;
      if (!n.reload(&reload_error)) {
        log()->error("reload of {} failed; keeping the running config:\n{}", config_path,
                     reload_error);
      }
      continue;
    }
    log()->info("received {}, draining", sig == SIGTERM ? "SIGTERM" : "SIGINT");
    n.drain(std::chrono::seconds(15));
    return 0;
  }
}

}  // namespace meridian::node
