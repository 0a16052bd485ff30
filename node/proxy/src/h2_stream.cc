// h2_stream: one HTTP/2 stream as one exchange: the request head into the exchange, the stages,
// the request body to the call within the flow-control window, the response to nghttp2. See
// h2_codec.h.
#include "h2_codec.h"
#include "proxy_internal.h"

namespace meridian::node {

namespace {

// A header list for nghttp2 (which copies it when the head is submitted). Names are lower-cased
// (RFC 9113 section 8.2.1); fields that describe a connection are left out (section 8.2.2).
class nv_list {
 public:
  explicit nv_list(h2_connection::nv_scratch& scratch) : s_(scratch) {
    s_.text.clear();
    s_.at.clear();
  }

  void add(std::string_view name, std::string_view value) {
    if (is_connection_specific(name)) return;
    size_t n = s_.text.size();
    s_.text.append(name);
    for (size_t i = n; i < s_.text.size(); ++i) {
      char& c = s_.text[i];
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + ('a' - 'A'));
    }
    s_.at.push_back({n, name.size(), s_.text.size(), value.size()});
    s_.text.append(value);
  }

  std::vector<nghttp2_nv>& build() {
    s_.nv.clear();
    auto* base = reinterpret_cast<uint8_t*>(s_.text.data());
    for (auto& a : s_.at) {
      s_.nv.push_back({base + a[0], base + a[2], a[1], a[3], NGHTTP2_NV_FLAG_NONE});
    }
    return s_.nv;
  }

 private:
  h2_connection::nv_scratch& s_;
};

ssize_t read_response(nghttp2_session*, int32_t, uint8_t*, size_t length, uint32_t* flags,
                      nghttp2_data_source* source, void*) {
  return static_cast<h2_stream*>(source->ptr)->response_ready(length, flags);
}

std::optional<uint64_t> parse_length(std::string_view v) {
  if (v.empty() || v.size() > 18) return std::nullopt;
  uint64_t n = 0;
  for (char c : v) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + static_cast<uint64_t>(c - '0');
  }
  return n;
}

}  // namespace

h2_stream::h2_stream(h2_connection& c, std::shared_ptr<client_session> owner, int32_t id)
    : exchange_flow(c.w(), *this, c.w().snap), c_(c), owner_(std::move(owner)), id_(id) {
  w_.stats.http2_streams_open.fetch_add(1, std::memory_order_relaxed);
  ex_.started = steady_clock::now();
  ex_.version = 20;
  ex_.tls = c.tls();
  ex_.client_ip = c.client_ip();
  at_.reserve(16);
  head_text_.reserve(256);
}

h2_stream::~h2_stream() {
  w_.stats.http2_streams_open.fetch_sub(1, std::memory_order_relaxed);
}

// --- the request head -------------------------------------------------------------------------

void h2_stream::on_header(std::string_view name, std::string_view value) {
  if (phase_ != phase::headers || head_too_large_) return;
  head_bytes_ += name.size() + value.size() + 32;
  if (head_bytes_ > snap_->cfg.limits.max_header_bytes || at_.size() >= max_fields) {
    head_too_large_ = true;
    return;
  }
  if (name == "cookie") {
    if (!cookie_.empty()) cookie_.append("; ");
    cookie_.append(value);
    return;
  }
  auto n = static_cast<uint32_t>(head_text_.size());
  head_text_.append(name);
  auto v = static_cast<uint32_t>(head_text_.size());
  head_text_.append(value);
  at_.push_back({n, static_cast<uint32_t>(name.size()), v, static_cast<uint32_t>(value.size())});
}

void h2_stream::refuse(int status, const char* code, const char* message) {
  w_.stats.bad_requests.add();
  ex_.local_status = status;
  ex_.local_code = code;
  ex_.local_message = message;
  answer_local();
}

void h2_stream::on_headers_done(bool end_stream) {
  end_stream_ = end_stream;
  std::string_view host_field;
  std::optional<uint64_t> length;
  bool bad_length = false;
  fields_.clear();
  for (const auto& a : at_) {
    std::string_view name(head_text_.data() + a.name, a.name_len);
    std::string_view value(head_text_.data() + a.value, a.value_len);
    if (!name.empty() && name.front() == ':') {
      if (name == ":method")
        method_ = value;
      else if (name == ":scheme")
        scheme_ = value;
      else if (name == ":authority")
        authority_ = value;
      else if (name == ":path")
        path_ = value;
      else if (name == ":protocol")
        protocol_ = value;
      continue;
    }
    http::field f = http::string_to_field(name);
    if (f == http::field::host) host_field = value;
    if (f == http::field::content_type || (f == http::field::unknown && name.size() == 12)) {
      note_grpc_field(ex_, f, name, value);
    }
    if (f == http::field::content_length) {
      length = parse_length(value);
      bad_length |= !length;
    }
    fields_.push_back({f, name, value});
  }
  if (!cookie_.empty()) fields_.push_back({http::field::cookie, "cookie", cookie_});
  ex_.verb = http::string_to_verb(method_);
  ex_.method = method_;
  ex_.request_target = path_;
  if (w_.access_log || snap_->spans) {  // the access log and spans name them
    ex_.access_method.assign(method_);
    ex_.access_path.assign(path_.substr(0, std::min<size_t>(path_.size(), 2048)));
  }
  make_request_id(fields_);
  if (head_too_large_) {
    return refuse(431, "headers_too_large", "request header block exceeds the limit");
  }
  if (ex_.verb == http::verb::connect) {
    // Extended CONNECT (RFC 8441): a WebSocket, which the upstream gets as an HTTP/1.1 upgrade
    // (a GET); nghttp2 has checked :scheme and :path are there. Plain CONNECT is not proxied.
    if (!iequals(protocol_, "websocket")) {
      return refuse(501, "not_implemented", "CONNECT is not supported");
    }
    ex_.verb = http::verb::get;
    ex_.method = "GET";
    ex_.extended_connect = true;
    ex_.wants_websocket = true;
    end_stream = true;  // no request body: what the client sends next is the tunnel's
  }
  if (path_.size() > snap_->cfg.limits.max_url_bytes) {
    return refuse(414, "uri_too_long", "request target exceeds the limit");
  }
  if (bad_length) return refuse(400, "bad_request", "invalid content-length");
  std::string_view authority = authority_.empty() ? host_field : authority_;
  if (authority.empty()) return refuse(400, "bad_request", "missing :authority");
  if (!valid_host(authority)) return refuse(400, "bad_request", "invalid :authority");
  ex_.host = authority;
  ex_.host_count = 1;
  if (const char* error = take_target(path_, authority)) {
    return refuse(400, "bad_request", error);
  }
  ex_.fields = fields_;
  ex_.content_length = length;
  ex_.has_body = !end_stream && !(length && *length == 0);
  ex_.chunked = ex_.has_body && !length;  // the gateway frames the body for the upstream
  if (!ex_.has_body) {
    body_ended_ = true;
    ex_.request_done = true;
  }
  act_on(run_stages({}));
  forward_body();
}

// --- the request body -------------------------------------------------------------------------

void h2_stream::consume(size_t n) {
  if (n && phase_ != phase::closed) nghttp2_session_consume_stream(c_.session(), id_, n);
}

void h2_stream::on_data(const uint8_t* data, size_t n) {
  std::string_view piece(reinterpret_cast<const char*>(data), n);
  switch (phase_) {
    case phase::awaiting_body:
      consume(n);
      if (paused_stage().on_request_body(ex_, piece, n, false) != verdict::next) {
        refuse_body_answer();
        answer_local();
        return;
      }
      ex_.body_bytes += n;
      return;
    case phase::answered:
    case phase::closed:
      consume(n);  // nobody wants it: give the window back
      return;
    case phase::tunnel:
      body_in_.append(piece);
      forward_tunnel();
      return;
    case phase::headers:
    case phase::paused:
    case phase::calling:
      body_in_.append(piece);  // the window comes back as the call takes it
      forward_body();
      return;
  }
}

void h2_stream::on_end_stream() {
  if (phase_ == phase::tunnel || ex_.extended_connect) {
    tunnel_end_ = true;
    forward_tunnel();
    return;
  }
  end_stream_ = true;
  if (phase_ == phase::awaiting_body) {
    ex_.request_done = true;
    end_awaited_body();
    forward_body();
    return;
  }
  forward_body();
}

void h2_stream::forward_body() {
  if (phase_ != phase::calling || !ex_.upstream_prepared || body_ended_) return;
  while (!body_in_.empty()) {
    size_t room = call_.body_room();
    if (!room) break;  // on_call_room when the upstream write drains
    size_t n = std::min(room, body_in_.size());
    std::string_view piece(body_in_.data(), n);
    if (ex_.route->stages->reads_request_body() &&
        ex_.route->stages->run_request_body(ex_, piece, n, false) != verdict::next) {
      refuse_body_answer();
      answer_local();
      return;
    }
    ex_.body_bytes += n;
    call_.send_body(piece);
    body_in_.consume(n);
    consume(n);
  }
  if (body_in_.empty()) body_in_.release_if_empty();
  if (body_in_.empty() && end_stream_) {
    body_ended_ = true;
    ex_.request_done = true;
    call_.end_body();
  }
  call_.flush();
  c_.pump();  // window updates
}

void h2_stream::forward_tunnel() {
  if (phase_ != phase::tunnel) return;
  while (!body_in_.empty()) {
    size_t room = call_.body_room();
    if (!room) break;  // on_call_room when the upstream write drains
    size_t n = std::min(room, body_in_.size());
    call_.send_body(std::string_view(body_in_.data(), n));
    body_in_.consume(n);
    consume(n);
  }
  call_.flush();
  call_.touch();
  if (body_in_.empty() && tunnel_end_) call_.end_tunnel_send();
  c_.pump();  // window updates
}

void h2_stream::on_call_tunnel() {
  phase_ = phase::tunnel;
  forward_tunnel();  // what the client sent right after its CONNECT
}

void h2_stream::on_call_room() {
  if (phase_ == phase::tunnel) {
    forward_tunnel();
  } else {
    forward_body();
  }
}

// --- exchange_flow ----------------------------------------------------------------------------

void h2_stream::on_flow_paused(int64_t deadline) {
  phase_ = phase::paused;
  deadline_ = deadline;
}

void h2_stream::on_flow_awaiting_body() {
  phase_ = phase::awaiting_body;
  deadline_ = w_.now + snap_->cfg.limits.header_timeout.count();
  if (!body_in_.empty()) {
    // What arrived while the exchange was paused before this stage asked for it.
    std::string held(body_in_.view());
    body_in_.clear();
    on_data(reinterpret_cast<const uint8_t*>(held.data()), held.size());
  }
  if (phase_ == phase::awaiting_body && end_stream_) {
    ex_.request_done = true;
    end_awaited_body();
    forward_body();
  }
}

void h2_stream::answer_local() {
  if (phase_ == phase::closed) return;
  if (ex_.response_head_sent) {
    reset(NGHTTP2_INTERNAL_ERROR);
    return;
  }
  if (ex_.request_id.empty()) make_request_id(fields_);
  response_head h;
  byte_buffer error_body;
  std::string_view content_type = "application/json";
  std::string_view body;
  if (ex_.local_reply.status) {
    auto& r = ex_.local_reply;
    h.status = std::exchange(r.status, 0);
    content_type = r.content_type;
    body = r.body;
    h.set = r.headers;
  } else if (ex_.grpc) {
    return answer_grpc_error();
  } else {
    h.status = std::exchange(ex_.local_status, 0);
    append_error_body(error_body, ex_.local_code, ex_.local_message, ex_.request_id);
    body = error_body.view();
  }
  h.rate_limit_lines = ex_.rate_limit_headers;
  h.request_id = ex_.request_id;
  ex_.status = h.status;
  nv_list nv(c_.nv());
  char status[8];
  std::snprintf(status, sizeof status, "%03d", h.status % 1000);
  nv.add(":status", status);
  nv.add("content-type", content_type);
  char length[24];
  std::snprintf(length, sizeof length, "%zu", body.size());
  nv.add("content-length", length);
  if (h.status == 401 && !ex_.www_authenticate.empty()) {
    nv.add("www-authenticate", ex_.www_authenticate);
  }
  for_each_response_field(h, [&](std::string_view k, std::string_view v) { nv.add(k, v); });
  bool with_body = ex_.verb != http::verb::head && !body.empty();
  if (with_body) response_.append(body);
  response_done_ = true;
  ex_.response_head_sent = true;
  if (ex_.route) ex_.route->metrics->per_worker[w_.index].status[status_slot(h.status)].add();
  log_once();
  end_flow();
  phase_ = phase::answered;
  deadline_ = w_.now + snap_->cfg.limits.idle_timeout.count();
  submit(nv.build(), with_body);
  c_.pump();
}

void h2_stream::answer_grpc_error() {
  // A trailers-only response (gRPC over HTTP/2): HTTP 200, the status in the one HEADERS frame.
  int http_status = std::exchange(ex_.local_status, 0);
  ex_.status = 200;
  ex_.grpc_status = grpc_status_for_http(http_status);
  nv_list nv(c_.nv());
  nv.add(":status", "200");
  nv.add("content-type", ex_.grpc_web_text ? "application/grpc-web-text+proto"
                         : ex_.grpc_web    ? "application/grpc-web+proto"
                                           : "application/grpc");
  char code[4];
  std::snprintf(code, sizeof code, "%d", ex_.grpc_status);
  nv.add("grpc-status", code);
  std::string message;
  append_grpc_message(message, ex_.local_message);
  nv.add("grpc-message", message);
  response_head h;  // the rate-limit lines and X-Request-Id
  h.rate_limit_lines = ex_.rate_limit_headers;
  h.request_id = ex_.request_id;
  for_each_response_field(h, [&](std::string_view k, std::string_view v) { nv.add(k, v); });
  response_done_ = true;
  ex_.response_head_sent = true;
  if (ex_.route) ex_.route->metrics->per_worker[w_.index].status[status_slot(200)].add();
  log_once();
  end_flow();
  phase_ = phase::answered;
  deadline_ = w_.now + snap_->cfg.limits.idle_timeout.count();
  submit(nv.build(), false);
  c_.pump();
}

// --- the response -----------------------------------------------------------------------------

void h2_stream::submit(std::vector<nghttp2_nv>& nv, bool with_body) {
  nghttp2_data_provider provider{};
  provider.source.ptr = this;
  provider.read_callback = read_response;
  if (nghttp2_submit_response(c_.session(), id_, nv.data(), nv.size(),
                              with_body ? &provider : nullptr) != 0) {
    reset(NGHTTP2_INTERNAL_ERROR);
  }
}

void h2_stream::on_call_head(response_head& h, bool) {
  if (h.informational) return;  // 1xx interim responses are not relayed over HTTP/2
  nv_list nv(c_.nv());
  char status[8];
  // The upstream's 101 to the upgrade is the extended CONNECT's 200 (RFC 8441 section 5).
  std::snprintf(status, sizeof status, "%03d", ex_.tunnel ? 200 : ex_.status % 1000);
  nv.add(":status", status);
  for_each_response_field(h, [&](std::string_view k, std::string_view v) {
    if (!ex_.tunnel || !iequals(k, "sec-websocket-accept")) nv.add(k, v);
  });
  bool no_body = ex_.verb == http::verb::head || ex_.status == 204 || ex_.status == 304 ||
                 ex_.response_bodyless;
  if (no_body) response_done_ = true;
  submit(nv.build(), !no_body);
}

void h2_stream::on_call_body(std::string_view piece) {
  if (phase_ == phase::closed) return;
  response_.append(piece);
  if (deferred_) {
    deferred_ = false;
    nghttp2_session_resume_data(c_.session(), id_);
  }
}

void h2_stream::flush_response() {
  c_.pump();
}

void h2_stream::on_call_done() {
  if (phase_ == phase::closed) return;
  response_done_ = true;
  if (deferred_) {
    deferred_ = false;
    nghttp2_session_resume_data(c_.session(), id_);
  }
  log_once();
  phase_ = phase::answered;
  deadline_ = w_.now + snap_->cfg.limits.idle_timeout.count();
  c_.pump();
}

void h2_stream::on_call_trailers(std::span<const field_view> trailers) {
  for (const auto& f : trailers) {
    if (f.name.empty() || f.name.front() == ':') continue;
    size_t n = trailer_text_.size();
    trailer_text_.append(f.name);
    for (size_t i = n; i < trailer_text_.size(); ++i) {
      char& c = trailer_text_[i];
      if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + ('a' - 'A'));
    }
    trailer_at_.push_back({n, f.name.size(), trailer_text_.size(), f.value.size()});
    trailer_text_.append(f.value);
  }
}

ssize_t h2_stream::response_ready(size_t length, uint32_t* flags) {
  size_t n = std::min(length, response_.size());
  if (n == 0 && !response_done_) {
    deferred_ = true;
    return NGHTTP2_ERR_DEFERRED;
  }
  *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
  if (response_done_ && n == response_.size()) {
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (!trailer_at_.empty()) {
      // The trailers end the stream (RFC 9113 section 8.1): a HEADERS frame after this DATA.
      std::vector<nghttp2_nv> nv;
      auto* base = reinterpret_cast<uint8_t*>(trailer_text_.data());
      for (auto& a : trailer_at_) {
        nv.push_back({base + a[0], base + a[2], a[1], a[3], NGHTTP2_NV_FLAG_NONE});
      }
      if (nghttp2_submit_trailer(c_.session(), id_, nv.data(), nv.size()) == 0) {
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
      }
      trailer_at_.clear();
    }
  }
  return static_cast<ssize_t>(n);
}

void h2_stream::send_response_data(byte_buffer& out, const uint8_t* frame_head, size_t length) {
  out.append(reinterpret_cast<const char*>(frame_head), 9);
  out.append(response_.data(), length);
  response_.consume(length);
  if (response_.empty()) response_.release_if_empty();
  deadline_ = w_.now + snap_->cfg.limits.idle_timeout.count();  // the response moves
  if (call_.active()) {
    call_.touch();
    if (response_.size() < response_high_water / 2) c_.stream_drained(this);
  }
}

void h2_stream::on_response_room() {
  if (phase_ == phase::calling) call_.resume_response();
}

void h2_stream::on_response_sent() {
  // The client still sending a body nobody will read is told to stop (RFC 9113 section 8.1).
  if (std::exchange(response_sent_, true)) return;
  if (!end_stream_ && !tunnel_end_) {
    nghttp2_submit_rst_stream(c_.session(), NGHTTP2_FLAG_NONE, id_, NGHTTP2_NO_ERROR);
  }
}

void h2_stream::reset(uint32_t error_code) {
  if (phase_ == phase::closed) return;
  reset_by_us_ = true;
  end_flow();
  phase_ = phase::answered;
  response_.clear();
  response_.release_if_empty();
  response_done_ = true;
  nghttp2_submit_rst_stream(c_.session(), NGHTTP2_FLAG_NONE, id_, error_code);
  c_.pump();
}

// --- the end ----------------------------------------------------------------------------------

void h2_stream::log_once() {
  if (logged_) return;
  logged_ = true;
  if (!ex_.method.empty()) record_done();  // a stream reset before its head is no request
}

void h2_stream::on_closed() {
  if (phase_ == phase::closed) return;
  log_once();
  end_flow();
  body_in_.clear();  // the connection's window had it back on arrival
  response_.clear();
  phase_ = phase::closed;
}

void h2_stream::abandon() {
  if (phase_ == phase::closed) return;
  log_once();
  end_flow();
  phase_ = phase::closed;
}

void h2_stream::check_deadline(int64_t now) {
  switch (phase_) {
    case phase::calling:
    case phase::tunnel:
      call_.check_deadline(now);  // connect, request and idle deadlines are the call's
      return;
    case phase::paused:
      if (now >= deadline_) expire_pause();
      return;
    case phase::awaiting_body:
      if (now < deadline_) return;
      w_.stats.header_timeouts.add();
      ex_.local_status = 408;
      ex_.local_code = "request_timeout";
      ex_.local_message = "the request did not arrive in time";
      answer_local();
      return;
    case phase::answered:
      // A response the client's window does not take (a window held at zero) is not kept.
      if (!response_sent_ && !reset_by_us_ && now >= deadline_) {
        w_.stats.idle_timeouts.add();
        reset(NGHTTP2_CANCEL);
      }
      return;
    case phase::headers:
    case phase::closed:
      return;
  }
}

}  // namespace meridian::node
