// client_session: the request head and body callbacks, OAuth endpoints, the route match,
// the stages and the upstream request head.
#include "proxy_internal.h"

namespace meridian::node {

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
  // Control characters (other than HT) and DEL in a value never get here: Beast's field scan
  // stops at the first one and fails the parse unless it starts the CRLF (RFC 9110 section 5.5;
  // the smuggling tests send NUL, ^A and DEL). A second pass over every byte cost more than the
  // rest of the field's handling.
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
  if (!ex_.has_body) retry_head_.assign(up_out_.data(), up_out_.size());
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

}  // namespace meridian::node
