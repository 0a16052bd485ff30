// h2_upstream: an HTTP/2 client connection to one target, multiplexing the streams of many
// calls. See proxy_internal.h.
#include <boost/asio/ssl/host_name_verification.hpp>

#include "proxy_internal.h"

namespace meridian::node {

namespace {

// Our SETTINGS towards upstreams: no push; stream windows of 256 KiB (a call's response waits
// in its sink beyond that), a connection window large enough for every stream's; header lists
// up to the response parser's limit.
constexpr int32_t stream_window = 256 * 1024;
constexpr int32_t connection_window = 16 * 1024 * 1024;
constexpr uint32_t max_header_list = 64 * 1024;

bool is_ip_literal(const std::string& host) {
  error_code ec;
  asio::ip::make_address(host, ec);
  return !ec;
}

}  // namespace

// nghttp2's callbacks, static trampolines to the connection (user_data) and its calls.
struct h2_upstream_callbacks {
  static h2_upstream& conn(void* user) { return *static_cast<h2_upstream*>(user); }

  static ssize_t send(nghttp2_session*, const uint8_t* data, size_t length, int, void* user) {
    auto& c = conn(user);
    if (c.out_.size() >= high_water) return NGHTTP2_ERR_WOULDBLOCK;
    c.out_.append(reinterpret_cast<const char*>(data), length);
    return static_cast<ssize_t>(length);
  }

  static ssize_t read_body(nghttp2_session*, int32_t stream_id, uint8_t*, size_t length,
                           uint32_t* flags, nghttp2_data_source*, void* user) {
    auto* call = conn(user).call_of(stream_id);
    if (!call) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;  // the call let go: reset it
    return call->h2_body_ready(length, flags);
  }

  static int send_data(nghttp2_session*, nghttp2_frame* frame, const uint8_t* framehd,
                       size_t length, nghttp2_data_source*, void* user) {
    auto& c = conn(user);
    if (c.out_.size() >= high_water) return NGHTTP2_ERR_WOULDBLOCK;
    auto it = c.calls_.find(frame->hd.stream_id);
    if (it == c.calls_.end()) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (it->second->h2_send_body(c.out_, framehd, length)) c.room_.push_back(it->second);
    return 0;
  }

  static int header(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                    size_t namelen, const uint8_t* value, size_t valuelen, uint8_t, void* user) {
    if (frame->hd.type != NGHTTP2_HEADERS) return 0;
    if (auto* call = conn(user).call_of(frame->hd.stream_id)) {
      call->h2_on_field({reinterpret_cast<const char*>(name), namelen},
                        {reinterpret_cast<const char*>(value), valuelen});
    }
    return 0;
  }

  static int frame_recv(nghttp2_session*, const nghttp2_frame* frame, void* user) {
    auto& c = conn(user);
    switch (frame->hd.type) {
      case NGHTTP2_HEADERS: {
        auto it = c.calls_.find(frame->hd.stream_id);
        if (it == c.calls_.end()) break;
        auto call = it->second;  // the call may let go of its stream in here
        bool end = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
        call->h2_on_headers(end);
        if (end) c.response_ended(frame->hd.stream_id);
        break;
      }
      case NGHTTP2_DATA:
        if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) c.response_ended(frame->hd.stream_id);
        break;
      case NGHTTP2_GOAWAY:
        // Streams above last_stream_id are closed by nghttp2 (REFUSED_STREAM: retried); the
        // others finish. No new stream goes on this connection, which no longer counts against
        // the target's connection cap.
        c.goaway_ = true;
        c.release_slot();
        break;
      default:
        break;
    }
    return 0;
  }

  static int data_chunk(nghttp2_session* session, uint8_t, int32_t stream_id, const uint8_t* data,
                        size_t len, void* user) {
    auto& c = conn(user);
    // The connection's window comes back at once; a stream's as its call's sink takes the bytes.
    nghttp2_session_consume_connection(session, len);
    auto it = c.calls_.find(stream_id);
    if (it == c.calls_.end()) return 0;
    auto call = it->second;
    call->h2_on_data({reinterpret_cast<const char*>(data), len});
    if (c.touched_.empty() || c.touched_.back() != call) c.touched_.push_back(std::move(call));
    return 0;
  }

  static int stream_close(nghttp2_session*, int32_t stream_id, uint32_t error_code, void* user) {
    auto& c = conn(user);
    auto it = c.calls_.find(stream_id);
    if (it == c.calls_.end()) return 0;
    auto call = std::move(it->second);
    c.calls_.erase(it);
    call->h2_on_close(error_code);
    return 0;
  }
};

h2_upstream::h2_upstream(worker& w, target_state* target, const upstream_runtime& up)
    : w(w),
      target(target),
      socket_(w.ioc.get_executor()),
      tls_ctx_(std::static_pointer_cast<asio::ssl::context>(up.client_tls)),
      idle_limit_ms_(up.cfg->timeouts.idle.count()),
      created_ms_(w.now),
      connect_limit_ms_(up.cfg->timeouts.connect.count()),
      tls_tag_(up.client_tls.get()),
      protocol_(up.cfg->protocol) {
  target->metrics->pool_open.fetch_add(1, std::memory_order_relaxed);
  if (target->id >= w.open_by_target.size()) w.open_by_target.resize(target->id + 1);
  ++w.open_by_target[target->id];
}

h2_upstream::~h2_upstream() {
  target->metrics->pool_open.fetch_sub(1, std::memory_order_relaxed);
  release_slot();
  if (session_) nghttp2_session_del(session_);
}

void h2_upstream::release_slot() {
  if (!std::exchange(counted_, false)) return;
  --w.open_by_target[target->id];
}

bool h2_upstream::accepting(uint32_t cap) const {
  if (closed_ || goaway_ || drain_when_ready_ || streams() >= cap) return false;
  if (!session_) return true;
  // Stream ids run out at 2^31: retire the connection well before.
  if (nghttp2_session_get_next_stream_id(session_) > (1u << 31) - 1024) return false;
  return streams() <
         nghttp2_session_get_remote_settings(session_, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
}

void h2_upstream::response_ended(int32_t stream_id) {
  auto it = calls_.find(stream_id);
  if (it == calls_.end()) return;
  auto call = it->second;
  // The response is complete while the request is still going up (an early answer to an
  // upload): the call ends now and the stream is reset (RFC 9113 section 8.1) rather than
  // waiting for a body nobody will read.
  bool request_open = nghttp2_session_get_stream_local_close(session_, stream_id) == 0;
  call->h2_on_response_end(request_open);
}

upstream_call* h2_upstream::call_of(int32_t stream_id) {
  auto it = calls_.find(stream_id);
  return it == calls_.end() ? nullptr : it->second.get();
}

// --- connecting -------------------------------------------------------------------------------

void h2_upstream::connect(const tcp::endpoint& endpoint, const std::string& server_name) {
  error_code ec;
  socket_.open(endpoint.protocol(), ec);
  if (ec) {
    // Fails the calls once they are attached (the caller attaches right after this returns).
    asio::post(w.ioc, [self = shared_from_this()] { self->close(); });
    return;
  }
  socket_.async_connect(endpoint, [self = shared_from_this(), server_name](const error_code& ec) {
    self->on_connected(ec, server_name);
  });
}

void h2_upstream::on_connected(const error_code& ec, const std::string& server_name) {
  if (closed_) return;
  if (ec) return close();
  error_code ignored;
  socket_.set_option(tcp::no_delay(true), ignored);
  socket_.non_blocking(true, ignored);
  if (!tls_ctx_) return on_ready();
  tls_ = std::make_unique<asio::ssl::stream<socket_t&>>(socket_, *tls_ctx_);
  if (!server_name.empty() && !is_ip_literal(server_name)) {
    SSL_set_tlsext_host_name(tls_->native_handle(), server_name.c_str());
  }
  if (tls_ctx_ && SSL_CTX_get_verify_mode(tls_ctx_->native_handle()) != SSL_VERIFY_NONE) {
    tls_->set_verify_callback(asio::ssl::host_name_verification(server_name));
  }
  tls_->async_handshake(
      asio::ssl::stream_base::client, [self = shared_from_this()](const error_code& ec) {
        if (self->closed_) return;
        const unsigned char* alpn = nullptr;
        unsigned int alpn_len = 0;
        if (!ec) SSL_get0_alpn_selected(self->tls_->native_handle(), &alpn, &alpn_len);
        if (ec || std::string_view(reinterpret_cast<const char*>(alpn), alpn_len) != "h2") {
          self->w.stats.upstream_tls_failures.add();
          if (auto l = spdlog::get("node.http")) {
            l->debug("upstream TLS to {} failed: {}", self->target->addr.to_string(),
                     ec ? ec.message() : "the server did not choose h2 (ALPN)");
          }
          return self->close();
        }
        self->on_ready();
      });
}

void h2_upstream::on_ready() {
  nghttp2_session_callbacks* cb = nullptr;
  nghttp2_option* opt = nullptr;
  if (nghttp2_session_callbacks_new(&cb) != 0 || nghttp2_option_new(&opt) != 0) {
    if (cb) nghttp2_session_callbacks_del(cb);
    return close();
  }
  nghttp2_session_callbacks_set_send_callback(cb, h2_upstream_callbacks::send);
  nghttp2_session_callbacks_set_send_data_callback(cb, h2_upstream_callbacks::send_data);
  nghttp2_session_callbacks_set_on_header_callback(cb, h2_upstream_callbacks::header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cb, h2_upstream_callbacks::frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, h2_upstream_callbacks::data_chunk);
  nghttp2_session_callbacks_set_on_stream_close_callback(cb, h2_upstream_callbacks::stream_close);
  nghttp2_option_set_no_auto_window_update(opt, 1);
  nghttp2_option_set_max_send_header_block_length(opt, 256 * 1024);
  int rv = nghttp2_session_client_new2(&session_, cb, this, opt);
  nghttp2_session_callbacks_del(cb);
  nghttp2_option_del(opt);
  if (rv != 0) return close();
  nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, stream_window},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, max_header_list},
  };
  nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, std::size(settings));
  nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0, connection_window);
  ready_ = true;
  auto waiting = std::move(waiting_);
  waiting_.clear();
  for (auto& call : waiting) submit(std::move(call));
  if (drain_when_ready_) {
    drain_when_ready_ = false;
    shut_down();
  }
  send();
  read();
}

// --- streams ----------------------------------------------------------------------------------

void h2_upstream::attach(std::shared_ptr<upstream_call> call) {
  idle_since_ = 0;
  if (closed_) {
    call->h2_on_connection_failed(!ready_);
    return;
  }
  if (!ready_) {
    waiting_.push_back(std::move(call));
    return;
  }
  submit(std::move(call));
  pump();
}

void h2_upstream::submit(std::shared_ptr<upstream_call> call) {
  int32_t id = call->h2_submit(*this);
  if (id > 0) {
    calls_[id] = std::move(call);
  } else if (id < 0) {
    // nghttp2 took no stream (ids exhausted, or the session is going away): no new ones here,
    // and the call goes again elsewhere.
    goaway_ = true;
    release_slot();
    call->h2_on_refused();
  }
}

int32_t h2_upstream::submit_request(const std::vector<nghttp2_nv>& nv, bool with_body) {
  nghttp2_data_provider provider{};
  provider.read_callback = h2_upstream_callbacks::read_body;
  return nghttp2_submit_request(session_, nullptr, nv.data(), nv.size(),
                                with_body ? &provider : nullptr, nullptr);
}

void h2_upstream::detach(upstream_call* call, int32_t stream_id) {
  for (size_t i = 0; i < waiting_.size(); ++i) {
    if (waiting_[i].get() == call) {
      waiting_.erase(waiting_.begin() + static_cast<std::ptrdiff_t>(i));
      return;
    }
  }
  if (stream_id <= 0) return;
  auto it = calls_.find(stream_id);
  if (it != calls_.end() && it->second.get() == call) calls_.erase(it);
  if (closed_ || !session_) return;
  // Also for a request nghttp2 still holds (not sent yet: no stream exists): it drops the
  // queued HEADERS instead of sending a request nobody waits for.
  nghttp2_submit_rst_stream(session_, NGHTTP2_FLAG_NONE, stream_id, NGHTTP2_CANCEL);
  pump();
}

void h2_upstream::consume(int32_t stream_id, size_t n) {
  if (closed_ || !session_ || n == 0) return;
  nghttp2_session_consume_stream(session_, stream_id, n);
  pump();
}

void h2_upstream::resume_data(int32_t stream_id) {
  if (closed_ || !session_) return;
  nghttp2_session_resume_data(session_, stream_id);
  pump();
}

// --- reading and writing ----------------------------------------------------------------------

void h2_upstream::read() {
  if (reading_ || closed_) return;
  reading_ = true;
  in_.clear();
  in_.prepare(read_chunk);
  auto done = [self = shared_from_this()](const error_code& ec, size_t n) { self->on_read(ec, n); };
  if (tls_) {
    tls_->async_read_some(asio::buffer(in_.tail(), in_.tail_size()), std::move(done));
  } else {
    socket_.async_read_some(asio::buffer(in_.tail(), in_.tail_size()), std::move(done));
  }
}

void h2_upstream::on_read(const error_code& ec, size_t n) {
  reading_ = false;
  if (closed_) return;
  if (ec) return close();
  in_.commit(n);
  in_nghttp2_ = true;
  auto rv =
      nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t*>(in_.data()), in_.size());
  in_nghttp2_ = false;
  in_.clear();
  if (rv < 0) {
    if (auto l = spdlog::get("node.http")) {
      l->debug("upstream {} broke HTTP/2: {}", target->addr.to_string(),
               nghttp2_strerror(static_cast<int>(rv)));
    }
    return close();
  }
  auto touched = std::move(touched_);
  touched_.clear();
  for (auto& call : touched) call->sink_.flush_response();
  send();
  if (closed_) return;
  if (!nghttp2_session_want_read(session_) && !nghttp2_session_want_write(session_)) {
    return close();  // nghttp2 ended the session (a GOAWAY sent or received, nothing left)
  }
  read();
}

void h2_upstream::pump() {
  if (in_nghttp2_ || closed_ || pump_posted_ || !session_) return;
  pump_posted_ = true;
  asio::post(w.ioc, [self = shared_from_this()] {
    self->pump_posted_ = false;
    self->send();
  });
}

void h2_upstream::send() {
  if (closed_ || !session_ || in_nghttp2_) return;
  for (;;) {
    in_nghttp2_ = true;
    int rv = nghttp2_session_send(session_);
    in_nghttp2_ = false;
    if (rv != 0) return close();
    if (room_.empty()) break;
    // Calls whose body went out take more (which may give nghttp2 more to send).
    auto room = std::move(room_);
    room_.clear();
    for (auto& call : room) {
      if (call->h2_ && call->h2_->stream && !call->h2_->body_end) call->sink_.on_call_room();
    }
  }
  write();
  if (goaway_ && streams() == 0 && !writing_ && out_.empty()) close();
}

void h2_upstream::write() {
  if (writing_ || out_.empty() || closed_) return;
  writing_ = true;
  out_.pin();
  auto done = [self = shared_from_this()](const error_code& ec, size_t n) {
    self->writing_ = false;
    self->out_.unpin();
    if (self->closed_) return;
    if (ec) return self->close();
    self->out_.consume(n);
    self->send();  // what nghttp2 held back while the buffer was full
  };
  if (tls_) {
    tls_->async_write_some(asio::buffer(out_.data(), out_.size()), std::move(done));
  } else {
    socket_.async_write_some(asio::buffer(out_.data(), out_.size()), std::move(done));
  }
}

// --- the end ----------------------------------------------------------------------------------

bool h2_upstream::check(int64_t now) {
  if (closed_) return false;
  if (!ready_ && now - created_ms_ > connect_limit_ms_) {
    // Connect or TLS never finished: its waiting calls fail as connect failures (each also has
    // its own connect deadline), and a new call opens a new connection.
    close();
    return false;
  }
  if (streams() != 0) {
    idle_since_ = 0;
    return true;
  }
  if (idle_since_ == 0) idle_since_ = now;
  if (goaway_ || now - idle_since_ > idle_limit_ms_) {
    close();
    return false;
  }
  return true;
}

void h2_upstream::shut_down() {
  if (closed_) return;
  if (!session_ && !waiting_.empty()) {
    drain_when_ready_ = true;  // its calls go out, then the GOAWAY
    return;
  }
  if (!session_ || streams() == 0) return close();
  goaway_ = true;  // no new streams; close when the last one ends
  release_slot();
  nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE,
                        nghttp2_session_get_last_proc_stream_id(session_), NGHTTP2_NO_ERROR,
                        nullptr, 0);
  pump();
}

void h2_upstream::close() {
  if (closed_) return;
  closed_ = true;
  release_slot();
  error_code ignored;
  socket_.close(ignored);
  touched_.clear();
  room_.clear();
  fail_all(!ready_);
}

void h2_upstream::fail_all(bool connect_failure) {
  std::vector<std::shared_ptr<upstream_call>> calls = std::move(waiting_);
  waiting_.clear();
  for (auto& [id, call] : calls_) calls.push_back(std::move(call));
  calls_.clear();
  for (auto& call : calls) call->h2_on_connection_failed(connect_failure);
}

}  // namespace meridian::node
