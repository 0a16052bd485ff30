#include "meridian/admin/admin_server.h"

#include "dashboard.h"

#include "admin_transport.h"
#include "meridian/common/failure_delay.h"
#include "meridian/common/json_depth.h"

#include <httplib.h>
#include <openssl/bio.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <sodium.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace meridian::node {
namespace {

using json = nlohmann::json;

// The subject of the client's certificate (RFC 2253, e.g. "CN=ops,O=Example") when the request
// came over mutual TLS; "" otherwise.
std::string client_certificate_subject(const httplib::Request& req) {
  if (!req.ssl) return "";
  X509* cert = SSL_get1_peer_certificate(req.ssl);
  if (!cert) return "";
  std::string out;
  if (BIO* bio = BIO_new(BIO_s_mem())) {
    if (X509_NAME_print_ex(bio, X509_get_subject_name(cert), 0, XN_FLAG_RFC2253) >= 0) {
      char* data = nullptr;
      long n = BIO_get_mem_data(bio, &data);
      if (n > 0 && data) out.assign(data, static_cast<size_t>(std::min<long>(n, 512)));
    }
    BIO_free(bio);
  }
  X509_free(cert);
  return out;
}

constexpr size_t max_body_bytes = 1 << 20;

std::shared_ptr<spdlog::logger> admin_log() {
  static const std::shared_ptr<spdlog::logger> logger = [] {
    if (auto existing = spdlog::get("node.admin")) return existing;
    try {
      return spdlog::stderr_color_mt("node.admin");
    } catch (const spdlog::spdlog_ex&) {  // created by another thread in between
      return spdlog::get("node.admin");
    }
  }();
  return logger;
}

// Serializes j; invalid UTF-8 (say, from a request path echoed in a message) is replaced rather
// than thrown about.
std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(dump(body), "application/json");
}

void send_error(httplib::Response& res, int status, std::string_view code,
                std::string_view message) {
  send_json(res, status, json{{"error", code}, {"message", message}});
}

// The error code for statuses httplib produces on its own (bad request line, body too large...).
std::string_view error_code_for(int status) {
  switch (status) {
    case 400:
      return "bad_request";
    case 401:
      return "unauthorized";
    case 404:
      return "not_found";
    case 405:
      return "method_not_allowed";
    case 413:
      return "payload_too_large";
    case 414:
      return "uri_too_long";
    case 431:
      return "headers_too_large";
    case 500:
      return "internal_error";
    case 503:
      return "unavailable";
    default:
      return status < 500 ? "bad_request" : "internal_error";
  }
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(a[i])) !=
        std::tolower(static_cast<unsigned char>(b[i]))) {
      return false;
    }
  }
  return true;
}

// Returns true when `header` is "Bearer <token>" (scheme case-insensitive, RFC 6750) with exactly
// `token`. The comparison takes the same time wherever the first difference is; only the length
// can leak, which says nothing useful about a random token.
bool bearer_matches(std::string_view header, std::string_view token) {
  if (token.empty()) return false;
  constexpr std::string_view scheme = "bearer";
  if (header.size() <= scheme.size() || !iequals(header.substr(0, scheme.size()), scheme)) {
    return false;
  }
  std::string_view rest = header.substr(scheme.size());
  if (rest.front() != ' ' && rest.front() != '\t') return false;
  while (!rest.empty() && (rest.front() == ' ' || rest.front() == '\t')) rest.remove_prefix(1);
  while (!rest.empty() && (rest.back() == ' ' || rest.back() == '\t')) rest.remove_suffix(1);
  if (rest.size() != token.size()) return false;
  return sodium_memcmp(rest.data(), token.data(), token.size()) == 0;
}

// Path parameters of a matched endpoint, in pattern order ("/config/routes/{name}" -> {name}).
using path_params = std::vector<std::string>;

// Splits "/a/b" into {"a", "b"}. Empty segments are kept, so "/metrics/" is not "/metrics".
std::vector<std::string_view> split_path(std::string_view path) {
  std::vector<std::string_view> parts;
  if (path.empty() || path.front() != '/') return parts;
  path.remove_prefix(1);
  for (;;) {
    size_t slash = path.find('/');
    parts.push_back(path.substr(0, slash));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return parts;
}

// One admin endpoint: a method and a path pattern of literal segments and "{param}" segments
// (each matches one non-empty segment and is passed to the handler).
struct endpoint {
  std::string method;
  std::string pattern;
  bool needs_token = true;
  std::function<void(const httplib::Request&, httplib::Response&, const path_params&)> handle;
  bool peer = false;  // the peer token (another node asking) is accepted as well as the token

  // Returns true and fills *params when the path segments fit the pattern.
  bool matches(const std::vector<std::string_view>& parts, path_params* params) const {
    auto want = split_path(pattern);
    if (want.size() != parts.size()) return false;
    params->clear();
    for (size_t i = 0; i < want.size(); ++i) {
      bool is_param = want[i].size() > 2 && want[i].front() == '{' && want[i].back() == '}';
      if (is_param) {
        if (parts[i].empty()) return false;
        params->emplace_back(parts[i]);
      } else if (want[i] != parts[i]) {
        return false;
      }
    }
    return true;
  }
};

}  // namespace

struct admin_server::impl {
  impl(std::string id, std::string bearer, std::string peer, admin_handlers h,
       const admin_server::tls_files& tls)
      : node_id(std::move(id)),
        token(std::move(bearer)),
        peer_token(std::move(peer)),
        handlers(std::move(h)) {
    admin_transport_limits limits;
    limits.max_request_bytes = max_body_bytes + limits.max_head_bytes;
    server = std::make_unique<guarded_server>(limits, tls.cert, tls.key, tls.client_ca);
    if (!server->is_valid()) tls_error = "admin.tls: " + server->error();
  }
  std::string tls_error;  // set when the TLS files are unusable: start() refuses

  void add_endpoints();
  void configure_server();
  struct resolved {
    const endpoint* hit = nullptr;
    path_params params;
    std::vector<const endpoint*> same_path;  // endpoints for this path with another method
    bool needs_token = true;
  };
  resolved resolve(const httplib::Request& req) const;
  bool admit(const httplib::Request& req, httplib::Response& res);
  void dispatch(const httplib::Request& req, httplib::Response& res);
  bool authorized(const httplib::Request& req, const endpoint* hit) const;

  const std::string node_id;
  const std::string token;
  const std::string peer_token;  // empty: no peer endpoints answer to a peer

  // Failed logins per client address: a growing delay rather than a lockout (failure_delay.h:
  // five free, then 1 s, 2 s, 4 s ... before the address's next attempt is looked at).
  std::mutex failures_mutex;
  failure_delay failed{5, 10000};
  static int64_t steady_ms() {
    return std::chrono::duration_cast<std::chrono::milliseconds>(
               std::chrono::steady_clock::now().time_since_epoch())
        .count();
  }
  int64_t wait_of(const std::string& addr) {
    std::lock_guard lock(failures_mutex);
    return failed.wait_ms(addr, steady_ms());
  }
  void note_failure(const std::string& addr) {
    std::lock_guard lock(failures_mutex);
    failed.failed(addr, steady_ms());
  }
  void note_success(const std::string& addr) {
    std::lock_guard lock(failures_mutex);
    failed.succeeded(addr);
  }
  const admin_handlers handlers;
  std::vector<endpoint> endpoints;

  std::unique_ptr<guarded_server> server;  // serves TLS itself with admin.tls
  std::thread thread;
  std::atomic<bool> listen_returned{false};
  int listen_fd = -1;  // the listening socket httplib created (to raise its backlog)
  std::atomic<uint16_t> port{0};
  std::mutex lifecycle_mutex;  // serializes start() and stop()
  bool started = false;
};

void admin_server::impl::add_endpoints() {
  // The dashboard: static assets, no token (the page asks for it and sends it with every call).
  auto asset = [](std::string_view body, const char* type) {
    return [body, type](const httplib::Request&, httplib::Response& res, const path_params&) {
      res.status = 200;
      res.set_header("Cache-Control", "no-store");
      res.set_header("X-Content-Type-Options", "nosniff");
      res.set_header("Referrer-Policy", "no-referrer");
      res.set_header("Content-Security-Policy",
                     "default-src 'none'; script-src 'self'; style-src 'self'; "
                     "connect-src 'self'; img-src 'self'; form-action 'self'; "
                     "frame-ancestors 'none'; base-uri 'none'");
      res.set_content(std::string(body), type);
    };
  };
  endpoints.push_back({"GET", "/ui", false, asset(dashboard_html(), "text/html; charset=utf-8")});
  endpoints.push_back(
      {"GET", "/ui/app.js", false, asset(dashboard_js(), "text/javascript; charset=utf-8")});
  endpoints.push_back(
      {"GET", "/ui/app.css", false, asset(dashboard_css(), "text/css; charset=utf-8")});
  endpoints.push_back({"GET", "/health", false,
                       [this](const httplib::Request&, httplib::Response& res, const path_params&) {
                         send_json(res, 200, json{{"status", "ok"}, {"node", node_id}});
                       }});
  if (handlers.metrics_text) {
    endpoints.push_back(
        {"GET", "/metrics", true,
         [this](const httplib::Request&, httplib::Response& res, const path_params&) {
           res.status = 200;
           res.set_content(handlers.metrics_text(), "text/plain; version=0.0.4");
         }});
  }
  if (handlers.effective_config) {
    endpoints.push_back(
        {"GET", "/config", true,
         [this](const httplib::Request&, httplib::Response& res, const path_params&) {
           send_json(res, 200, handlers.effective_config());
         }});
  }
  if (handlers.cluster_members) {
    endpoints.push_back(
        {"GET", "/cluster/members", true,
         [this](const httplib::Request&, httplib::Response& res, const path_params&) {
           send_json(res, 200, handlers.cluster_members());
         }});
  }
  if (handlers.cluster_forget) {
    endpoints.push_back(
        {"DELETE", "/cluster/members/{id}", true,
         [this](const httplib::Request&, httplib::Response& res, const path_params& p) {
           admin_reply r = handlers.cluster_forget(p[0]);
           send_json(res, r.status, r.body);
         }});
  }
  if (handlers.cluster_health) {
    endpoints.push_back(
        {"GET", "/cluster/health", true,
         [this](const httplib::Request&, httplib::Response& res, const path_params&) {
           send_json(res, 200, handlers.cluster_health());
         }});
  }
  if (handlers.config_write) {
    auto write = [this](const httplib::Request& req, httplib::Response& res, const path_params& p) {
      std::string kind(p[0]), name(p[1]);
      admin_reply r = handlers.config_write(kind, name, req.method == "PUT" ? &req.body : nullptr);
      send_json(res, r.status, r.body);
    };
    endpoints.push_back({"PUT", "/config/{kind}/{name}", true, write});
    endpoints.push_back({"DELETE", "/config/{kind}/{name}", true, write});
  }
  if (handlers.consumer_keys) {
    auto keys = [this](const httplib::Request& req, httplib::Response& res, const path_params& p) {
      admin_reply r = handlers.consumer_keys(req.method == "HEAD" ? "GET" : req.method, p[0],
                                             p.size() > 1 ? p[1] : "", req.body);
      send_json(res, r.status, r.body);
    };
    endpoints.push_back({"POST", "/config/consumers/{id}/keys", true, keys});
    endpoints.push_back({"GET", "/config/consumers/{id}/keys", true, keys});
    endpoints.push_back({"DELETE", "/config/consumers/{id}/keys/{key_id}", true, keys});
  }
  if (handlers.consumer_password) {
    auto password = [this](const httplib::Request& req, httplib::Response& res,
                           const path_params& p) {
      admin_reply r =
          handlers.consumer_password(req.method == "HEAD" ? "GET" : req.method, p[0], req.body);
      send_json(res, r.status, r.body);
    };
    endpoints.push_back({"GET", "/config/consumers/{id}/password", true, password});
    endpoints.push_back({"PUT", "/config/consumers/{id}/password", true, password});
    endpoints.push_back({"DELETE", "/config/consumers/{id}/password", true, password});
  }
  if (handlers.cluster_keys) {
    endpoints.push_back(
        {"GET", "/cluster/keys", true,
         [this](const httplib::Request&, httplib::Response& res, const path_params&) {
           send_json(res, 200, handlers.cluster_keys());
         }});
  }
  if (handlers.cluster_keys_write) {
    auto write = [this](const httplib::Request& req, httplib::Response& res, const path_params& p) {
      admin_reply r = handlers.cluster_keys_write(req.method, p.empty() ? "" : p[0], req.body);
      send_json(res, r.status, r.body);
    };
    endpoints.push_back({"POST", "/cluster/keys", true, write});
    endpoints.push_back({"PUT", "/cluster/keys/{fingerprint}/primary", true, write});
    endpoints.push_back({"DELETE", "/cluster/keys/{fingerprint}", true, write});
  }
  if (handlers.audit_view) {
    endpoints.push_back(
        {"GET", "/audit", true,
         [this](const httplib::Request& req, httplib::Response& res, const path_params&) {
           int64_t since = 0;
           size_t limit = 100;
           try {
             if (req.has_param("since")) since = std::stoll(req.get_param_value("since"));
             if (req.has_param("limit")) limit = std::stoul(req.get_param_value("limit"));
           } catch (const std::exception&) {
             return send_error(res, 400, "bad_request", "since and limit must be numbers");
           }
           send_json(res, 200, handlers.audit_view(since, std::min<size_t>(limit, 1000)));
         }});
  }
  if (handlers.breakers) {
    endpoints.push_back({"GET", "/breakers", true,
                         [this](const httplib::Request&, httplib::Response& res,
                                const path_params&) { send_json(res, 200, handlers.breakers()); }});
  }
  if (handlers.ratelimit_view) {
    endpoints.push_back(
        {"GET", "/ratelimits/{route}", true,
         [this](const httplib::Request& req, httplib::Response& res, const path_params& p) {
           admin_reply r =
               handlers.ratelimit_view(p[0], req.get_param_value("key"),
                                       req.get_param_value("limit"), req.get_param_value("top"));
           send_json(res, r.status, r.body);
         }});
  }
  // Query parameters, first value of each.
  auto query = [](const httplib::Request& req) {
    std::map<std::string, std::string> q;
    for (const auto& [k, v] : req.params) q.emplace(k, v);
    return q;
  };
  if (handlers.peer_health) {
    endpoints.push_back(
        {"GET", "/peer/health", true,
         [this](const httplib::Request&, httplib::Response& res, const path_params&) {
           send_json(res, 200, handlers.peer_health());
         },
         /*peer=*/true});
  }
  if (handlers.cluster_nodes) {
    endpoints.push_back(
        {"GET", "/cluster/nodes", true,
         [this](const httplib::Request&, httplib::Response& res, const path_params&) {
           send_json(res, 200, handlers.cluster_nodes());
         }});
  }
  if (handlers.analytics) {
    endpoints.push_back(
        {"GET", "/analytics", true,
         [this, query](const httplib::Request& req, httplib::Response& res, const path_params&) {
           admin_reply r = handlers.analytics(query(req), false);
           send_json(res, r.status, r.body);
         }});
    endpoints.push_back(
        {"GET", "/peer/analytics", true,
         [this, query](const httplib::Request& req, httplib::Response& res, const path_params&) {
           admin_reply r = handlers.analytics(query(req), true);
           send_json(res, r.status, r.body);
         },
         /*peer=*/true});
  }
  if (handlers.peer_ratelimit_keys) {
    endpoints.push_back(
        {"GET", "/peer/ratelimits/{route}", true,
         [this](const httplib::Request& req, httplib::Response& res, const path_params& p) {
           admin_reply r = handlers.peer_ratelimit_keys(p[0], req.get_param_value("limit"));
           send_json(res, r.status, r.body);
         },
         /*peer=*/true});
  }
  if (handlers.consumer_usage) {
    endpoints.push_back(
        {"GET", "/consumers/{id}/usage", true,
         [this](const httplib::Request&, httplib::Response& res, const path_params& p) {
           admin_reply r = handlers.consumer_usage(p[0]);
           send_json(res, r.status, r.body);
         }});
  }
  if (handlers.cluster_leave) {
    endpoints.push_back(
        {"POST", "/cluster/leave", true,
         [this](const httplib::Request&, httplib::Response& res, const path_params&) {
           send_json(res, 200, handlers.cluster_leave());
         }});
  }
}

bool admin_server::impl::authorized(const httplib::Request& req, const endpoint* hit) const {
  // Two Authorization headers are ambiguous; refuse rather than pick one.
  if (req.get_header_value_count("Authorization") != 1) return false;
  const std::string presented = req.get_header_value("Authorization");
  if (bearer_matches(presented, token)) return true;
  return hit && hit->peer && !peer_token.empty() && bearer_matches(presented, peer_token);
}

// Finds the endpoint for a request and whether it needs the token. Unknown paths need a token
// too, so an unauthenticated client learns nothing about which endpoints exist.
admin_server::impl::resolved admin_server::impl::resolve(const httplib::Request& req) const {
  resolved r;
  const std::string& method = req.method == "HEAD" ? std::string("GET") : req.method;
  const auto parts = split_path(req.path);
  for (const auto& e : endpoints) {
    path_params p;
    if (!e.matches(parts, &p)) continue;
    if (e.method == method) {
      r.hit = &e;
      r.params = std::move(p);
      break;
    }
    r.same_path.push_back(&e);
  }
  if (r.hit) {
    r.needs_token = r.hit->needs_token;
  } else if (!r.same_path.empty()) {
    r.needs_token = false;
    for (const auto* e : r.same_path) r.needs_token = r.needs_token || e->needs_token;
  }
  return r;
}

// Runs before httplib reads any body: refuses a request without the token, or one declaring a
// body over the limit, with the body unread (the connection then closes). A chunked body is cut
// off by the transport's byte cap instead.
bool admin_server::impl::admit(const httplib::Request& req, httplib::Response& res) {
  auto refuse = [&](int status, std::string_view code, std::string_view message) {
    send_error(res, status, code, message);
    res.set_header("Connection", "close");
    guarded_server::close_after_response();
    return false;
  };
  if (auto r = resolve(req); r.needs_token) {
    // The peer endpoints answer other nodes: their token is 192 random bits (no guessing to slow
    // down), and a node still holding a restarted peer's old token must not put its address,
    // often shared with operators, into the failed-login delay.
    const bool peer = r.hit && r.hit->peer;
    if (peer && !authorized(req, r.hit)) {
      res.set_header("WWW-Authenticate", "Bearer");
      return refuse(401, "unauthorized", "a valid 'Authorization: Bearer <token>' is required");
    }
    if (auto wait = peer ? 0 : wait_of(req.remote_addr); wait > 0) {
      const auto seconds = failure_delay::retry_after_s(wait);
      res.set_header("Retry-After", std::to_string(seconds));
      return refuse(429, "too_many_failures",
                    "too many failed admin logins from this address; retry in " +
                        std::to_string(seconds) + " s (the wait doubles with each failure)");
    }
    if (!authorized(req, r.hit)) {
      note_failure(req.remote_addr);
      admin_log()->info("admin: unauthorized {} {} from {}", req.method, req.path, req.remote_addr);
      res.set_header("WWW-Authenticate", "Bearer");
      return refuse(401, "unauthorized", "a valid 'Authorization: Bearer <token>' is required");
    }
    note_success(req.remote_addr);
  }
  if (req.has_header("Content-Length")) {
    const std::string cl = req.get_header_value("Content-Length");
    uint64_t n = 0;
    bool digits =
        !cl.empty() && cl.size() <= 18 && cl.find_first_not_of("0123456789") == std::string::npos;
    if (digits) n = std::stoull(cl);
    if (!digits || req.get_header_value_count("Content-Length") != 1) {
      return refuse(400, "bad_request", "invalid Content-Length");
    }
    if (n > max_body_bytes) {
      return refuse(413, "payload_too_large", "admin request bodies are limited to 1 MiB");
    }
  }
  return true;
}

// Routes one admitted request (admit() checked the token): run the handler, or 404/405.
void admin_server::impl::dispatch(const httplib::Request& req, httplib::Response& res) {
  const std::string& method = req.method == "HEAD" ? std::string("GET") : req.method;
  resolved r = resolve(req);
  const endpoint* hit = r.hit;
  const path_params& params = r.params;
  const std::vector<const endpoint*>& same_path = r.same_path;
  if (r.needs_token && !authorized(req, hit)) {  // admit() answers these; never reached
    send_error(res, 401, "unauthorized", "a valid 'Authorization: Bearer <token>' is required");
    return;
  }
  if (!req.body.empty() && json_too_deep(req.body)) {
    send_error(res, 400, "bad_request",
               "JSON nested deeper than " + std::to_string(max_json_depth) + " levels");
    return;
  }

  if (!hit) {
    if (same_path.empty()) {
      send_error(res, 404, "not_found", "no admin endpoint at " + req.path);
      return;
    }
    std::string allow;
    for (const auto* e : same_path) {
      if (!allow.empty()) allow += ", ";
      allow += e->method;
      if (e->method == "GET") allow += ", HEAD";
    }
    res.set_header("Allow", allow);
    send_error(res, 405, "method_not_allowed", req.method + " is not allowed on " + req.path);
    return;
  }

  try {
    hit->handle(req, res, params);
    if (method != "GET" && method != "OPTIONS") {
      // The audit trail of changes: who (address, and the client certificate's subject over
      // mutual TLS), what, when (the log line's time), outcome.
      std::string cert = client_certificate_subject(req);
      admin_log()->info("audit: {} {} from {}{}{} -> {}", req.method, req.path, req.remote_addr,
                        cert.empty() ? "" : " cert ", cert, res.status);
      if (handlers.audit) handlers.audit(req.method, req.path, req.remote_addr, cert, res.status);
    }
  } catch (const std::exception& e) {
    admin_log()->error("admin: {} {} failed: {}", req.method, req.path, e.what());
    res.headers.clear();
    send_error(res, 500, "internal_error", e.what());
  } catch (...) {
    admin_log()->error("admin: {} {} failed with an unknown exception", req.method, req.path);
    res.headers.clear();
    send_error(res, 500, "internal_error", "unknown error");
  }
}

void admin_server::impl::configure_server() {
  // Timeouts, connection caps and the byte cap live in the transport (admin_transport.h).
  server->set_payload_max_length(max_body_bytes);
  server->set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    return admit(req, res) ? httplib::Server::HandlerResponse::Unhandled
                           : httplib::Server::HandlerResponse::Handled;
  });
  server->set_default_headers({{"Cache-Control", "no-store"}});
  // httplib's default also sets SO_REUSEPORT, which lets a second process bind the same port and
  // silently take half the connections; a busy admin port must be an error instead.
  server->set_socket_options([this](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd = sock;
  });

  // Every method goes through dispatch(), which owns routing, 404/405 and authentication.
  auto handler = [this](const httplib::Request& req, httplib::Response& res) {
    dispatch(req, res);
  };
  server->Get(".*", handler);
  server->Post(".*", handler);
  server->Put(".*", handler);
  server->Patch(".*", handler);
  server->Delete(".*", handler);
  server->Options(".*", handler);

  // Errors httplib answers itself (malformed request, body over the limit) get the JSON shape
  // too; answers dispatch() already wrote are left alone.
  server->set_error_handler(
      httplib::Server::HandlerWithResponse([](const httplib::Request&, httplib::Response& res) {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        if (guarded_server::request_over_limit()) {
          send_error(res, 413, "payload_too_large", "admin request bodies are limited to 1 MiB");
          return httplib::Server::HandlerResponse::Handled;
        }
        send_error(res, res.status, error_code_for(res.status),
                   "request refused with HTTP status " + std::to_string(res.status));
        return httplib::Server::HandlerResponse::Handled;
      }));
  // dispatch() catches everything; this is the backstop should anything escape it.
  server->set_exception_handler(
      [](const httplib::Request& req, httplib::Response& res, std::exception_ptr) {
        admin_log()->error("admin: {} {} escaped with an exception", req.method, req.path);
        send_error(res, 500, "internal_error", "internal error");
      });
  server->set_logger([](const httplib::Request& req, const httplib::Response& res) {
    admin_log()->debug("admin: {} {} -> {} ({} bytes) from {}", req.method, req.path, res.status,
                       res.body.size(), req.remote_addr);
  });
}

admin_server::admin_server(std::string node_id, std::string bearer_token, admin_handlers handlers,
                           tls_files tls, std::string peer_token)
    : impl_(std::make_unique<impl>(std::move(node_id), std::move(bearer_token),
                                   std::move(peer_token), std::move(handlers), tls)) {
  if (sodium_init() < 0) {
    // Only sodium_memcmp is used, which does not depend on initialization; note it and go on.
    admin_log()->warn("admin: sodium_init failed");
  }
  impl_->add_endpoints();
  impl_->configure_server();
}

admin_server::~admin_server() {
  stop();
}

bool admin_server::start(const std::string& host, uint16_t port, std::string* error) {
  std::lock_guard lock(impl_->lifecycle_mutex);
  auto fail = [&](std::string message) {
    if (error) *error = std::move(message);
    return false;
  };
  if (impl_->started) return fail("admin server already started");
  if (!impl_->tls_error.empty()) return fail(impl_->tls_error);
  const std::string where = host + ":" + std::to_string(port);

  errno = 0;
  int bound = -1;
  if (port == 0) {
    bound = impl_->server->bind_to_any_port(host);
  } else if (impl_->server->bind_to_port(host, port)) {
    bound = port;
  }
  if (bound <= 0) {
    int err = errno;
    std::string message = "admin: cannot listen on " + where;
    if (err != 0) message += std::string(": ") + std::strerror(err);
    return fail(std::move(message));
  }
  // httplib listens with a backlog of 5: a burst of connections (200 slowloris clients, a
  // scrape storm) then drops SYNs and a legitimate client waits out a 1 s retransmit. Listening
  // again on the bound socket only raises the queue (Linux keeps the socket as it is).
  if (impl_->listen_fd >= 0) ::listen(impl_->listen_fd, SOMAXCONN);
  impl_->port = static_cast<uint16_t>(bound);
  impl_->started = true;

  impl_->thread = std::thread([this] {
    if (!impl_->server->listen_after_bind()) admin_log()->error("admin: listener stopped on error");
    impl_->listen_returned = true;
  });
  // The socket already listens, so clients can connect now; wait only until the accept loop is
  // marked running, because httplib's stop() does nothing before that point.
  while (!impl_->server->is_running() && !impl_->listen_returned) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  admin_log()->info("admin API listening on {}:{}", host, bound);
  return true;
}

uint16_t admin_server::port() const {
  return impl_->port;
}

void admin_server::stop() {
  std::lock_guard lock(impl_->lifecycle_mutex);
  if (!impl_->thread.joinable()) return;
  impl_->server->stop();
  impl_->thread.join();
  admin_log()->info("admin API stopped");
}

}  // namespace meridian::node
