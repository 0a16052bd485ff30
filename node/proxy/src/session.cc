// client_session: accepting, reading, the input loop, finishing an exchange, writing to
// the client.
#include "proxy_internal.h"

namespace meridian::node {

// --- client_session: lifecycle and reading --------------------------------------------------

client_session::client_session(worker& w, socket_t socket, bool tls)
    : exchange_flow(w, *this, w.snap), socket_(std::move(socket)) {
  if (tls && snap_->tls) {
    tls_store_ = snap_->tls;
    tls_ = std::make_unique<asio::ssl::stream<socket_t&>>(socket_, tls_store_->default_context());
  }
  w_.connections.fetch_add(1, std::memory_order_relaxed);
  w_.stats.connections_accepted.add();
  w_.stats.connections_active.fetch_add(1, std::memory_order_relaxed);
  fields_.reserve(32);
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
          const unsigned char* proto = nullptr;
          unsigned len = 0;
          SSL_get0_alpn_selected(self->tls_->native_handle(), &proto, &len);
          if (len == 2 && proto[0] == 'h' && proto[1] == '2') {
            self->enter_h2();
            return;
          }
          self->start_client_read();
        });
    return;
  }
  start_client_read();
}

void client_session::close() {
  if (phase_ == phase::closed) return;
  phase_ = phase::closed;
  end_flow();
  if (h2_) h2_->close();
  w_.remove_session(this);
  error_code ignored;
  socket_.shutdown(tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
  req_parser_.reset();
}

void client_session::close_if_idle() {
  if (phase_ == phase::h2) {
    h2_->begin_drain();
    h2_pump();
    return;
  }
  if (phase_ == phase::idle && in_.empty() && out_.empty() && !writing_client_) {
    close();
  } else {
    close_after_response_ = true;
  }
}

void client_session::close_tunnels() {
  if (phase_ == phase::tunnel) {
    call_.close_tunnel(1001);
  } else if (phase_ == phase::h2) {
    h2_->close_tunnels();
  }
}

void client_session::check_deadline(int64_t now) {
  if (phase_ == phase::h2) {
    if (!h2_->check_deadline(now)) {
      close();
      return;
    }
    h2_pump();
    return;
  }
  if (in_call()) {
    call_.check_deadline(now);  // connect, request and idle deadlines are the call's
    return;
  }
  if (phase_ == phase::closed || now < deadline_) return;
  switch (phase_) {
    case phase::idle:
      w_.stats.idle_timeouts.add();
      close();
      break;
    case phase::head:
    case phase::awaiting_body:  // a body a stage reads itself: within the head's deadline
      w_.stats.header_timeouts.add();
      close_after_response_ = true;
      send_error(408, "request_timeout", "the request did not arrive in time");
      break;
    case phase::paused:
      expire_pause();
      process_input();  // nothing reads the connection while it is paused
      break;
    case phase::calling:  // handled above
    case phase::tunnel:
    case phase::h2:
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
  call_.abandon();
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
  if (ec && phase_ == phase::h2) {
    close();  // the client went away: its streams are abandoned
    return;
  }
  if (ec && phase_ == phase::tunnel) {
    // A client that half-closes has said all it will; the upstream's side goes on until it
    // closes too. A reset ends both.
    if (ec == asio::error::eof) {
      client_eof_ = true;
      call_.end_tunnel_send();
    } else {
      close();
    }
    return;
  }
  if (ec) {
    // EOF or reset. Between requests: just close. Mid-request: the client gave up.
    if (phase_ == phase::idle || phase_ == phase::head ||
        (phase_ == phase::calling && (call_.connecting() || !ex_.request_done))) {
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
  if (phase_ == phase::h2) {
    h2_input();
  } else {
    process_input();
  }
}

void client_session::begin_request() {
  req_parser_.emplace(*this);
  req_parser_->header_limit(static_cast<uint32_t>(snap_->cfg.limits.max_header_bytes));
  req_parser_->body_limit(boost::none);
  req_parser_->eager(false);
  fields_.clear();
  head_scanned_ = 0;
  renew_flow();
  ex_.client_ip = client_ip_;
  ex_.tls = tls_ != nullptr;
  head_verdict_ = verdict::next;
}

// Feeds buffered client bytes to the request parser as far as the current phase allows.
bool client_session::head_complete() {
  std::string_view buffered(in_.data(), in_.size());
  size_t from = head_scanned_ > 3 ? head_scanned_ - 3 : 0;
  head_scanned_ = buffered.size();
  return buffered.find("\r\n\r\n", from) != std::string_view::npos ||
         buffered.find("\n\n", from) != std::string_view::npos;
}

// Reads and handles the next request head (idle or head phase). Returns true to go on with
// the input loop, false when waiting (for bytes, the upstream, or a timer) or closing.
// Answers a head the parser refused, and ends the connection after the answer.
void client_session::refuse_head(const error_code& ec) {
  close_after_response_ = true;
  w_.stats.bad_requests.add();
  if (ec == http::error::header_limit) {
    send_error(431, "headers_too_large", "request header block exceeds the limit");
  } else if (ec == http::error::bad_transfer_encoding) {
    send_error(400, "bad_request", "invalid Transfer-Encoding");
  } else {
    send_error(400, "bad_request", ec.message());
  }
}

bool client_session::read_head() {
  if (in_.empty()) {
    in_.release_if_empty();
    start_client_read();
    return false;
  }
  if (first_bytes_ && h2_preface_pending()) return false;
  if (phase_ == phase::idle) {
    // If the config changed since the last request, pick up the new snapshot now.
    if (snap_ != w_.snap) snap_ = w_.snap;
    phase_ = phase::head;
    ex_.started = steady_clock::now();
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
    while (blank < in_.size() && (in_.data()[blank] == '\r' || in_.data()[blank] == '\n')) ++blank;
    if (blank > 0) {
      in_.consume(blank);
      if (in_.empty()) {
        start_client_read();
        return false;
      }
    }
  }
  bool complete = head_complete();
  error_code ec;
  size_t used = 0;
  if (complete) {
    used = req_parser_->put(asio::buffer(in_.data(), in_.size()), ec);
    if (phase_ == phase::closing || phase_ == phase::closed)
      return false;  // answered by a callback
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
      return false;
    }
    start_client_read();
    return false;
  }
  if (ec) {
    refuse_head(ec);
    return false;
  }
  in_.consume(used);
  head_scanned_ = 0;
  if (!req_parser_->is_header_done()) return true;
  if (req_parser_->is_done()) ex_.request_done = true;
  act_on(std::exchange(head_verdict_, verdict::next));
  return phase_ != phase::paused;
}

// Reads the body of a request for the stage that paused to await it (the OAuth endpoints).
// As read_head.
bool client_session::read_awaited_body() {
  if (in_.empty()) {
    start_client_read();
    return false;
  }
  error_code ec;
  size_t used = req_parser_->put(asio::buffer(in_.data(), in_.size()), ec);
  if (phase_ == phase::closing || phase_ == phase::closed) return false;
  if (ec == http::error::need_more) {
    in_.consume(used);
    if (used == 0) {
      if (in_.size() > snap_->cfg.limits.max_header_bytes) {  // a chunk line no client sends
        send_error(400, "bad_request", "malformed chunked body");
        return false;
      }
      start_client_read();
      return false;
    }
    return true;
  }
  if (ec) {
    w_.stats.bad_requests.add();
    close_after_response_ = true;
    send_error(400, "bad_request", "malformed request body: " + ec.message());
    return false;
  }
  in_.consume(used);
  if (req_parser_->is_done()) ex_.request_done = true;
  if (ex_.request_done) end_awaited_body();
  return phase_ != phase::paused;
}

// Forwards request body bytes from in_ to the call as far as it has room. As
// read_head.
bool client_session::forward_body() {
  if (in_.empty()) {
    call_.flush();
    if (call_.body_room()) start_client_read();
    return false;
  }
  size_t room = call_.body_room();
  if (!room) return false;  // on_call_room when the upstream write drains
  size_t n = std::min(room, in_.size());
  error_code ec;
  size_t used = req_parser_->put(asio::buffer(in_.data(), n), ec);
  if (phase_ == phase::closing || phase_ == phase::closed) return false;
  if (ec == http::error::need_more) {
    in_.consume(used);
    if (used == 0) {
      if (in_.size() >= high_water) {  // a chunk header longer than any sane one
        send_error(400, "bad_request", "malformed chunked body");
        return false;
      }
      call_.flush();
      start_client_read();
      return false;
    }
    call_.flush();
    return true;
  }
  if (ec) {
    w_.stats.bad_requests.add();
    close_after_response_ = true;
    if (!ex_.response_head_sent) {
      call_.abandon();
      send_error(400, "bad_request", "malformed request body: " + ec.message());
    } else {
      close();
    }
    return false;
  }
  in_.consume(used);
  call_.flush();
  return true;
}

// Relays client bytes into the tunnel as far as the call has room. As read_head.
bool client_session::forward_tunnel() {
  if (in_.empty()) {
    start_client_read();
    return false;
  }
  size_t room = call_.body_room();
  if (!room) return false;  // on_call_room when the upstream write drains
  size_t n = std::min(room, in_.size());
  call_.send_body(std::string_view(in_.data(), n));
  in_.consume(n);
  call_.flush();
  call_.touch();
  return true;
}

void client_session::process_input() {
  // Resumed when the read completes; or called from inside the loop (by the call, say), which
  // goes on by itself.
  if (reading_into_in_ || in_input_) return;
  in_input_ = true;
  struct done {
    bool& flag;
    ~done() { flag = false; }
  } guard{in_input_};
  while (phase_ != phase::closed && phase_ != phase::closing && phase_ != phase::lingering) {
    if (phase_ == phase::paused) return;  // resumed by a timer or a resume_handle
    if (phase_ == phase::idle || phase_ == phase::head) {
      if (read_head()) continue;
      return;
    }
    if (phase_ == phase::awaiting_body) {
      if (read_awaited_body()) continue;
      return;
    }
    if (phase_ == phase::tunnel) {
      if (forward_tunnel()) continue;
      return;
    }
    if (phase_ == phase::calling && ex_.body_started && !ex_.request_done) {
      if (forward_body()) continue;
      return;
    }
    return;  // waiting for the upstream; pipelined bytes stay in in_
  }
}

// --- finishing an exchange -------------------------------------------------------------------

void client_session::finish_exchange() {
  record_done();
  if (!ex_.request_done) close_after_response_ = true;
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
  if (ex_.response_head_sent) {
    close();
    return;
  }
  if (ex_.request_id.empty()) make_request_id(fields_);
  if (ex_.grpc) return send_grpc_error(status, message);
  byte_buffer body;
  append_error_body(body, code, message, ex_.request_id);
  send_local(status, "application/json", body.view(), {});
}

void client_session::send_grpc_error(int status, std::string_view message) {
  ex_.grpc_status = grpc_status_for_http(status);
  std::string grpc_message;
  append_grpc_message(grpc_message, message);
  std::pair<std::string, std::string> fields[] = {{"grpc-status", std::to_string(ex_.grpc_status)},
                                                  {"grpc-message", std::move(grpc_message)}};
  send_local(200,
             ex_.grpc_web_text ? "application/grpc-web-text+proto"
             : ex_.grpc_web    ? "application/grpc-web+proto"
                               : "application/grpc",
             {}, fields);
}

void client_session::send_local(int status, std::string_view content_type, std::string_view body,
                                std::span<const std::pair<std::string, std::string>> headers) {
  if (phase_ == phase::closed) return;
  if (ex_.response_head_sent) {
    close();
    return;
  }
  if (ex_.request_id.empty()) make_request_id(fields_);
  ex_.status = status;
  out_.append("HTTP/1.1 ");
  out_.append_decimal(static_cast<uint64_t>(status));
  out_.append(' ');
  out_.append(reason_for(status));
  out_.append("\r\nContent-Type: ");
  out_.append(content_type);
  out_.append("\r\nContent-Length: ");
  out_.append_decimal(body.size());
  out_.append("\r\nX-Request-Id: ");
  out_.append(ex_.request_id.view());
  for (const auto& [k, v] : headers) {
    out_.append("\r\n");
    out_.append(k);
    out_.append(": ");
    out_.append(v);
  }
  if (status == 401 && !ex_.www_authenticate.empty()) {
    out_.append("\r\nWWW-Authenticate: ");
    out_.append(ex_.www_authenticate);
  }
  if (!ex_.rate_limit_headers.empty()) {
    out_.append("\r\n");
    out_.append(
        std::string_view(ex_.rate_limit_headers).substr(0, ex_.rate_limit_headers.size() - 2));
  }
  if (!ex_.request_done) close_after_response_ = true;
  if (close_after_response_ || w_.draining) {
    close_after_response_ = true;
    out_.append("\r\nConnection: close");
  }
  out_.append("\r\n\r\n");
  if (ex_.verb != http::verb::head) out_.append(body);
  if (ex_.route) ex_.route->metrics->per_worker[w_.index].status[status_slot(status)].add();
  ex_.response_head_sent = true;
  if (ex_.started == steady_clock::time_point()) ex_.started = steady_clock::now();
  record_done();
  call_.abandon();
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
  out_.pin();  // the response goes on growing while the write is in flight
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
  out_.unpin();
  if (phase_ == phase::closed) return;
  if (ec) {
    close();
    return;
  }
  out_.consume(n);
  if (phase_ == phase::h2) {
    h2_pump();
    return;
  }
  if (in_call()) call_.touch();
  if (!out_.empty()) {
    flush_client();
  } else if (phase_ == phase::closing) {
    linger();
    return;
  } else if (phase_ == phase::idle) {
    out_.release_if_empty();
    call_.shrink();
    if (w_.draining && in_.empty()) {
      close();
      return;
    }
  }
  if (in_call() && out_.size() < high_water / 2) call_.resume_response();
}

// --- HTTP/2 ------------------------------------------------------------------------------------

bool client_session::h2_preface_pending() {
  static constexpr std::string_view preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
  size_t n = std::min(in_.size(), preface.size());
  if (!snap_->cfg.http2.enabled || std::string_view(in_.data(), n) != preface.substr(0, n)) {
    first_bytes_ = false;
    return false;
  }
  if (n < preface.size()) {
    start_client_read();  // a prefix of the preface: wait for the rest
    return true;
  }
  enter_h2();
  return true;
}

void client_session::enter_h2() {
  first_bytes_ = false;
  phase_ = phase::h2;
  req_parser_.reset();
  h2_ = std::make_unique<h2_connection>(*this, w_, out_, client_ip_, tls_ != nullptr);
  if (!h2_->start()) {
    close();
    return;
  }
  if (w_.draining) h2_->begin_drain();
  h2_input();
}

void client_session::h2_input() {
  bool ok = in_.empty() || h2_->on_input(in_.data(), in_.size());
  in_.clear();
  (void)ok;  // a connection that must end is finished(): h2_pump closes it once written
  h2_pump();
}

void client_session::h2_pump() {
  if (phase_ != phase::h2) return;
  h2_->produce();
  flush_client();
  if (h2_->finished()) {
    if (!writing_client_ && out_.empty()) {
      // Its last frames (a GOAWAY) are written: stop sending, and drop what the client still
      // sends for a moment, so that closing does not reset the connection before it read them.
      h2_->close();
      linger();
    }
    return;
  }
  if (out_.size() < high_water && h2_->wants_read()) start_client_read();
}

// --- call_sink: the upstream call's response ----------------------------------------------

void client_session::on_call_head(response_head& h, bool length_known) {
  if (ex_.tunnel) {
    close_after_response_ = true;  // when the tunnel ends, so does the connection
    write_response_head(h, out_);
    return;
  }
  if (!h.informational) {
    bool no_body = ex_.status == 204 || ex_.status == 304 || ex_.verb == http::verb::head;
    if (!no_body && !length_known && ex_.response_bodyless && ex_.version == 11) {
      h.content_length_zero = true;  // nothing follows the head (an HTTP/2 upstream said so)
    } else if (!no_body && !length_known) {
      if (ex_.version == 11) {
        ex_.response_chunked = true;
      } else {
        close_after_response_ = true;  // an HTTP/1.0 client reads to the end of the connection
      }
    }
    h.chunked = ex_.response_chunked;
    // An upgrade the upstream refused: bytes the client sent after its request may be frames of
    // the protocol it hoped for, never a next request.
    if (!ex_.request_done || w_.draining || ex_.websocket) close_after_response_ = true;
    h.connection = close_after_response_ ? response_head::connection::close
                   : ex_.version == 10   ? response_head::connection::keep_alive
                                         : response_head::connection::as_is;
  }
  write_response_head(h, out_);
}

void client_session::on_call_body(std::string_view piece) {
  if (ex_.response_chunked) {
    append_chunk(out_, piece);
  } else {
    out_.append(piece);
  }
}

void client_session::on_call_trailers(std::span<const field_view> trailers) {
  // A chunked body's trailer section (RFC 9112 section 7.1.2); a body with a length has none.
  if (!ex_.response_chunked) return;
  out_.append("0\r\n");
  for (const auto& f : trailers) {
    if (!valid_field_name(f.name) || !valid_field_value(f.value)) continue;
    out_.append(f.name);
    out_.append(": ");
    out_.append(f.value);
    out_.append("\r\n");
  }
  out_.append("\r\n");
  ex_.response_trailers_sent = true;
}

void client_session::on_call_done() {
  if (ex_.response_chunked && !ex_.response_trailers_sent) out_.append("0\r\n\r\n");
  finish_exchange();
}

void client_session::on_call_tunnel() {
  phase_ = phase::tunnel;
  flush_client();
  process_input();  // what the client sent after its upgrade request, and reads from now on
}

void client_session::on_call_failed() {
  answer_local();  // a body it did not read means the connection ends
  if (phase_ == phase::idle) process_input();
}

}  // namespace meridian::node
