// h2_connection: the nghttp2 server session of one client connection, its callbacks and the
// defences. See h2_codec.h.
#include "h2_codec.h"
#include "proxy_internal.h"

namespace meridian::node {

bool token_bucket::take(int64_t now_ms) {
  if (last_ms_ == 0) last_ms_ = now_ms;
  if (now_ms > last_ms_) {
    tokens_ = std::min(burst_, tokens_ + rate_ * static_cast<double>(now_ms - last_ms_) / 1000.0);
    last_ms_ = now_ms;
  }
  if (tokens_ < 1.0) return false;
  tokens_ -= 1.0;
  return true;
}

// nghttp2's callbacks, each a static trampoline to the connection (user_data) and its streams.
struct h2_callbacks {
  static h2_connection& conn(void* user) { return *static_cast<h2_connection*>(user); }

  static ssize_t send(nghttp2_session*, const uint8_t* data, size_t length, int, void* user) {
    auto& c = conn(user);
    if (c.out_.size() >= high_water) return NGHTTP2_ERR_WOULDBLOCK;
    c.out_.append(reinterpret_cast<const char*>(data), length);
    return static_cast<ssize_t>(length);
  }

  static int send_data(nghttp2_session*, nghttp2_frame* frame, const uint8_t* framehd,
                       size_t length, nghttp2_data_source* source, void* user) {
    auto& c = conn(user);
    if (c.out_.size() >= high_water) return NGHTTP2_ERR_WOULDBLOCK;
    auto* s = static_cast<h2_stream*>(source->ptr);  // no padding is ever asked for
    s->send_response_data(c.out_, framehd, length);
    // A DATA frame sent this way gets no on_frame_send: its END_STREAM is seen here.
    if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) s->on_response_sent();
    return 0;
  }

  static int begin_frame(nghttp2_session*, const nghttp2_frame_hd* hd, void* user) {
    auto& c = conn(user);
    if (c.dead_) return NGHTTP2_ERR_CALLBACK_FAILURE;  // cut off: read nothing more
    if (hd->type == NGHTTP2_HEADERS) {
      c.continuations_ = 0;
      c.header_block_since_ = c.w_.now;
    } else if (hd->type == NGHTTP2_CONTINUATION) {
      if (++c.continuations_ > c.max_continuations_) {
        c.cut_off(c.w_.stats.http2_continuation_floods);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
      }
    }
    // The block ends with this frame (whether or not nghttp2 then takes or ignores the stream).
    if ((hd->type == NGHTTP2_HEADERS || hd->type == NGHTTP2_CONTINUATION) &&
        (hd->flags & NGHTTP2_FLAG_END_HEADERS)) {
      c.header_block_since_ = 0;
    }
    return 0;
  }

  static int begin_headers(nghttp2_session* session, const nghttp2_frame* frame, void* user) {
    auto& c = conn(user);
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) return 0;
    auto s =
        std::make_shared<h2_stream>(c, c.session_owner_.shared_from_this(), frame->hd.stream_id);
    nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, s.get());
    c.streams_[frame->hd.stream_id] = std::move(s);
    c.idle_since_ = 0;
    c.w_.stats.http2_streams.add();
    return 0;
  }

  static int header(nghttp2_session*, const nghttp2_frame* frame, const uint8_t* name,
                    size_t namelen, const uint8_t* value, size_t valuelen, uint8_t, void* user) {
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST) {
      return 0;  // trailers: not forwarded to an HTTP/1.1 upstream
    }
    if (auto* s = conn(user).stream(frame->hd.stream_id)) {
      s->on_header({reinterpret_cast<const char*>(name), namelen},
                   {reinterpret_cast<const char*>(value), valuelen});
    }
    return 0;
  }

  static int frame_recv(nghttp2_session*, const nghttp2_frame* frame, void* user) {
    auto& c = conn(user);
    const auto& hd = frame->hd;
    bool end_stream = (hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    switch (hd.type) {
      case NGHTTP2_HEADERS:
        if (auto* s = c.stream(hd.stream_id)) {
          if (frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
            s->on_headers_done(end_stream);
          } else if (end_stream) {
            s->on_end_stream();  // after trailers
          }
        }
        break;
      case NGHTTP2_DATA:
        if (hd.length == 0 && !end_stream && !c.control_frames_.take(c.w_.now)) {
          c.cut_off(c.w_.stats.http2_control_floods);
          break;
        }
        if (end_stream) {
          if (auto* s = c.stream(hd.stream_id)) s->on_end_stream();
        }
        break;
      case NGHTTP2_SETTINGS:
      case NGHTTP2_PING:
        if (hd.flags & NGHTTP2_FLAG_ACK) break;
        [[fallthrough]];
      case NGHTTP2_PRIORITY:
        if (!c.control_frames_.take(c.w_.now)) c.cut_off(c.w_.stats.http2_control_floods);
        break;
      default:
        break;
    }
    return 0;
  }

  static int data_chunk(nghttp2_session* session, uint8_t, int32_t stream_id, const uint8_t* data,
                        size_t len, void* user) {
    // The connection's window comes back at once; a stream's as its call takes the bytes (so
    // one slow upstream holds back its own stream, never the others).
    nghttp2_session_consume_connection(session, len);
    if (auto* s = conn(user).stream(stream_id)) s->on_data(data, len);
    return 0;
  }

  static int frame_send(nghttp2_session*, const nghttp2_frame* frame, void* user) {
    auto& c = conn(user);
    // The shutdown notice (last stream 2^31-1) is not the GOAWAY that ends the connection.
    if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.last_stream_id != 0x7fffffff) {
      c.goaway_sent_ = true;
    }
    if ((frame->hd.type == NGHTTP2_DATA || frame->hd.type == NGHTTP2_HEADERS) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
      if (auto* s = c.stream(frame->hd.stream_id)) s->on_response_sent();
    }
    return 0;
  }

  static int stream_close(nghttp2_session*, int32_t stream_id, uint32_t, void* user) {
    auto& c = conn(user);
    auto it = c.streams_.find(stream_id);
    if (it == c.streams_.end()) return 0;
    auto s = std::move(it->second);
    c.streams_.erase(it);
    if (c.streams_.empty()) c.idle_since_ = c.w_.now;
    // Rapid reset, whoever sent the RST_STREAM: a stream the client made end before it was
    // answered (its RST, or a frame that made nghttp2 reset it) left upstream work abandoned.
    if (s->ended_early() && !c.resets_.take(c.w_.now)) c.cut_off(c.w_.stats.http2_rapid_resets);
    s->on_closed();
    c.closed_streams_.push_back(std::move(s));  // freed once nghttp2 has returned
    return 0;
  }

  static ssize_t read_data(nghttp2_session*, int32_t, uint8_t*, size_t length, uint32_t* flags,
                           nghttp2_data_source* source, void*) {
    return static_cast<h2_stream*>(source->ptr)->response_ready(length, flags);
  }
};

h2_connection::h2_connection(client_session& session, worker& w, byte_buffer& out,
                             std::string_view client_ip, bool tls)
    : session_owner_(session),
      w_(w),
      out_(out),
      client_ip_(client_ip),
      tls_(tls),
      resets_(w.snap->cfg.http2.reset_burst, w.snap->cfg.http2.resets_per_second),
      control_frames_(w.snap->cfg.http2.control_frame_burst,
                      w.snap->cfg.http2.control_frames_per_second),
      max_continuations_(w.snap->cfg.http2.max_continuations) {}

h2_connection::~h2_connection() {
  close();
  if (session_) nghttp2_session_del(session_);
}

bool h2_connection::start() {
  const auto& cfg = w_.snap->cfg;
  nghttp2_session_callbacks* cbs = nullptr;
  if (nghttp2_session_callbacks_new(&cbs) != 0) return false;
  nghttp2_session_callbacks_set_send_callback(cbs, h2_callbacks::send);
  nghttp2_session_callbacks_set_send_data_callback(cbs, h2_callbacks::send_data);
  nghttp2_session_callbacks_set_on_begin_frame_callback(cbs, h2_callbacks::begin_frame);
  nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, h2_callbacks::begin_headers);
  nghttp2_session_callbacks_set_on_header_callback(cbs, h2_callbacks::header);
  nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, h2_callbacks::frame_recv);
  nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, h2_callbacks::data_chunk);
  nghttp2_session_callbacks_set_on_frame_send_callback(cbs, h2_callbacks::frame_send);
  nghttp2_session_callbacks_set_on_stream_close_callback(cbs, h2_callbacks::stream_close);
  nghttp2_option* opt = nullptr;
  if (nghttp2_option_new(&opt) != 0) {
    nghttp2_session_callbacks_del(cbs);
    return false;
  }
  nghttp2_option_set_no_auto_window_update(opt, 1);
  nghttp2_option_set_no_closed_streams(opt, 1);
  // nghttp2's own limits, behind ours (which fire first, and are counted).
  nghttp2_option_set_max_continuations(opt, cfg.http2.max_continuations + 8);
  nghttp2_option_set_stream_reset_rate_limit(opt, uint64_t{cfg.http2.reset_burst} * 2,
                                             uint64_t{cfg.http2.resets_per_second} * 2);
  nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096);
  int rv = nghttp2_session_server_new2(&session_, cbs, this, opt);
  nghttp2_option_del(opt);
  nghttp2_session_callbacks_del(cbs);
  if (rv != 0) {
    session_ = nullptr;
    return false;
  }
  nghttp2_settings_entry settings[] = {
      {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, cfg.http2.max_concurrent_streams},
      {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE,
       static_cast<uint32_t>(cfg.http2.initial_stream_window)},
      {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, static_cast<uint32_t>(cfg.http2.header_table_size)},
      {NGHTTP2_SETTINGS_MAX_FRAME_SIZE, static_cast<uint32_t>(cfg.http2.max_frame_size)},
      {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, static_cast<uint32_t>(cfg.limits.max_header_bytes)},
      {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
      {NGHTTP2_SETTINGS_ENABLE_CONNECT_PROTOCOL, 1},  // WebSocket over HTTP/2 (RFC 8441)
  };
  if (nghttp2_submit_settings(session_, NGHTTP2_FLAG_NONE, settings, std::size(settings)) != 0)
    return false;
  nghttp2_session_set_local_window_size(session_, NGHTTP2_FLAG_NONE, 0,
                                        static_cast<int32_t>(cfg.http2.connection_window));
  idle_since_ = w_.now;
  w_.stats.http2_connections.add();
  return true;
}

h2_stream* h2_connection::stream(int32_t id) {
  auto it = streams_.find(id);
  return it == streams_.end() ? nullptr : it->second.get();
}

void h2_connection::cut_off(counter& which) {
  if (dead_) return;
  dead_ = true;
  dead_since_ = w_.now;
  which.add();
  nghttp2_session_terminate_session(session_, NGHTTP2_ENHANCE_YOUR_CALM);
}

bool h2_connection::on_input(const char* data, size_t n) {
  if (dead_ || closed_) return false;
  in_nghttp2_ = true;
  ssize_t rv = nghttp2_session_mem_recv(session_, reinterpret_cast<const uint8_t*>(data), n);
  in_nghttp2_ = false;
  closed_streams_.clear();
  if (rv < 0 && !dead_) {
    // A protocol error nghttp2 found (it has queued its GOAWAY where one is owed), or a client
    // that did not open with the HTTP/2 preface.
    dead_ = true;
    dead_since_ = w_.now;
    if (rv != NGHTTP2_ERR_BAD_CLIENT_MAGIC) w_.stats.http2_protocol_errors.add();
  }
  return !dead_;
}

void h2_connection::pump() {
  // Inside nghttp2 the caller's loop produces on its way out. Otherwise once, after the handlers
  // already queued: the responses of every stream that completed meanwhile go out in one write.
  if (in_nghttp2_ || closed_ || pump_posted_) return;
  pump_posted_ = true;
  asio::post(w_.ioc, [session = session_owner_.shared_from_this(), this] {
    pump_posted_ = false;  // the session owns this connection
    session->h2_pump();
  });
}

void h2_connection::produce() {
  if (closed_ || in_nghttp2_) return;
  for (;;) {
    in_nghttp2_ = true;
    int rv = nghttp2_session_send(session_);
    in_nghttp2_ = false;
    closed_streams_.clear();
    if (rv != 0) {
      dead_ = true;
      dead_since_ = w_.now;
      return;
    }
    if (drained_.empty()) return;
    // Streams whose response buffer drained: their calls read on, which may add response body
    // (and so more to send).
    auto drained = std::move(drained_);
    drained_.clear();
    for (auto& s : drained) s->on_response_room();
  }
}

bool h2_connection::finished() const {
  if (closed_) return true;
  if (dead_) return nghttp2_session_want_write(session_) == 0;
  return nghttp2_session_want_read(session_) == 0 && nghttp2_session_want_write(session_) == 0;
}

bool h2_connection::wants_read() const {
  return !dead_ && !closed_ && nghttp2_session_want_read(session_) != 0;
}

bool h2_connection::check_deadline(int64_t now) {
  if (closed_) return false;
  if (dead_) return now - dead_since_ < 5000;  // its last frames did not get out: give up
  const auto& limits = w_.snap->cfg.limits;
  if (header_block_since_ && now - header_block_since_ > limits.header_timeout.count()) {
    w_.stats.header_timeouts.add();  // a header block that never ends
    dead_ = true;
    dead_since_ = now;
    nghttp2_session_terminate_session(session_, NGHTTP2_PROTOCOL_ERROR);
    return true;
  }
  if (drain_at_ && !goaway_sent_ && now - drain_at_ >= 1000) {
    nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE,
                          nghttp2_session_get_last_proc_stream_id(session_), NGHTTP2_NO_ERROR,
                          nullptr, 0);
    goaway_sent_ = true;
  }
  if (idle_since_ && streams_.empty() && now - idle_since_ > limits.idle_timeout.count()) {
    w_.stats.idle_timeouts.add();
    if (!goaway_sent_) {
      nghttp2_submit_goaway(session_, NGHTTP2_FLAG_NONE,
                            nghttp2_session_get_last_proc_stream_id(session_), NGHTTP2_NO_ERROR,
                            nullptr, 0);
    }
    dead_ = true;
    dead_since_ = now;
    return true;
  }
  std::vector<std::shared_ptr<h2_stream>> open;
  open.reserve(streams_.size());
  for (auto& [id, s] : streams_) open.push_back(s);
  for (auto& s : open) s->check_deadline(now);
  return true;
}

void h2_connection::begin_drain() {
  if (closed_ || drain_at_ || goaway_sent_) return;
  drain_at_ = w_.now;
  nghttp2_submit_shutdown_notice(session_);
}

void h2_connection::close_tunnels() {
  if (closed_) return;
  std::vector<std::shared_ptr<h2_stream>> open;
  for (auto& [id, s] : streams_) open.push_back(s);
  for (auto& s : open) s->close_tunnel();
}

void h2_connection::close() {
  if (closed_) return;
  closed_ = true;
  auto streams = std::move(streams_);
  streams_.clear();
  for (auto& [id, s] : streams) s->abandon();
  drained_.clear();
}

}  // namespace meridian::node
