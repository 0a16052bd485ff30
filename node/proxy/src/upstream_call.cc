// upstream_call: dispatch (balancing, failover, breakers), the connection, sending, the
// response parser callbacks, retries and fallbacks. See upstream_call.h.
#include <boost/asio/ssl/host_name_verification.hpp>

#include "proxy_internal.h"

namespace meridian::node {

namespace {

bool is_idempotent(http::verb v) {
  switch (v) {
    case http::verb::get:
    case http::verb::head:
    case http::verb::options:
    case http::verb::put:
    case http::verb::delete_:
    case http::verb::trace:
      return true;
    default:
      return false;
  }
}

}  // namespace

upstream_call::~upstream_call() {
  release(false);
}

std::shared_ptr<upstream_call> upstream_call::self() {
  return std::shared_ptr<upstream_call>(sink_.keep_alive(), this);
}

bool upstream_call::replayable() const {
  if (ex_.transcode) return true;  // the request message is whole in the exchange
  // HTTP/2: what the codec handed over stays in out_ until a DATA frame takes it.
  if (h2_) return !ex_.has_body || !h2_->body_sent;
  // A request without a body can be sent again from retry_head_; one with a body only while none
  // of it has been taken from the client.
  return !ex_.has_body || !ex_.body_started;
}

// --- the request ------------------------------------------------------------------------------

void upstream_call::prepare(const snapshot& snap) {
  snap_ = &snap;
  ++epoch_;
  refused_stream_ = false;
  fields_.clear();
  response_paused_ = false;
  const auto& up = *ex_.upstream;
  if (up.cfg->balance == balance_policy::consistent_hash) {
    ex_.hash_key.clear();
    if (!up.hash_header.empty()) {
      for (auto& f : ex_.fields) {
        if (iequals(f.name, up.hash_header)) {
          ex_.hash_key.assign(f.value);
          break;
        }
      }
    } else {
      ex_.hash_key.assign(ex_.client_ip);
    }
  }
  std::string default_host;
  upstream_head h;
  h.method = ex_.method;
  h.path = ex_.path;
  h.query = ex_.query;
  h.has_query = ex_.has_query;
  h.fields = ex_.fields;
  h.drop = ex_.route->request_drop;
  h.strip_authorization = ex_.strip_authorization;
  if (ex_.route->preserve_host && !ex_.authority.empty()) {
    h.host = ex_.authority;
  } else {
    // Without the client's Host, name the first target (like nginx's $proxy_host).
    default_host = up.targets.empty() ? "localhost" : up.targets[0].state->addr.to_string();
    h.host = default_host;
  }
  h.identity = ex_.identity_headers;
  const bool http1 = up.cfg->protocol == upstream_protocol::http1;
  h.chunked = ex_.chunked && http1;  // HTTP/2 frames the body itself
  body_chunked_ = h.chunked;
  ex_.upstream_prepared = true;
  ex_.websocket = ex_.wants_websocket && ex_.route->cfg->websocket;
  if (ex_.websocket) h.upgrade = "websocket";
  char key[24];
  if (ex_.websocket && ex_.extended_connect) {
    // 16 random bytes, base64 (RFC 6455 section 4.1): the upstream's accept is for the gateway,
    // the HTTP/2 client has none to check (RFC 8441 section 5).
    static constexpr char b64[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    uint64_t r[2] = {w_.next_random(), w_.next_random()};
    unsigned char bytes[16];
    std::memcpy(bytes, r, sizeof bytes);
    for (int i = 0; i < 5; ++i) {
      uint32_t v =
          uint32_t{bytes[3 * i]} << 16 | uint32_t{bytes[3 * i + 1]} << 8 | bytes[3 * i + 2];
      for (int j = 0; j < 4; ++j) key[4 * i + j] = b64[(v >> (18 - 6 * j)) & 63];
    }
    key[20] = b64[bytes[15] >> 2];
    key[21] = b64[(bytes[15] & 3) << 4];
    key[22] = key[23] = '=';
    h.websocket_key = std::string_view(key, sizeof key);
  }
  snap.entry->run_upstream_head(ex_, h);  // forwarding headers
  ex_.route->stages->run_upstream_head(ex_, h);
  out_.clear();
  if (write_upstream_head(h, out_) != 0) w_.stats.bad_requests.add();  // auth refuses first
  if (!http1) {
    h2_prepare();
    return;
  }
  h2_.reset();
  if (!ex_.has_body) retry_head_.assign(out_.data(), out_.size());
}

int64_t upstream_call::request_timeout() const {
  int64_t t = ex_.upstream->cfg->timeouts.request.count();
  return ex_.grpc_timeout_ms > 0 ? std::min(t, ex_.grpc_timeout_ms) : t;
}

void upstream_call::send_body(std::string_view piece) {
  if (h2_ && ex_.grpc_web_text) {
    if (h2_->web_bad) return;
    auto& scratch = h2_->web_scratch;
    scratch.clear();
    if (!h2_->web_in.feed(piece, scratch)) {
      // Not base64: the client's fault, answered when its body ends (end_body); nothing more
      // of it goes up.
      h2_->web_bad = true;
      return;
    }
    out_.append(scratch);
    return;
  }
  if (state_ == state::tunnel) {
    if (tunnel_closing_) return;
    w_.stats.websocket_bytes_to_upstream.add(piece.size());
    to_upstream_.feed(piece);
  }
  if (body_chunked_) {
    append_chunk(out_, piece);  // each piece its own chunk, whatever the client's were
  } else {
    out_.append(piece);
  }
}

void upstream_call::end_body() {
  if (h2_ && (h2_->web_bad || (ex_.grpc_web_text && !h2_->web_in.complete()))) {
    // A grpc-web-text body that is not base64 (or ends inside a group): a client error, no
    // fault of the target's.
    ex_.local_status = 400;
    ex_.local_code = "bad_request";
    ex_.local_message = "the grpc-web-text request body is not base64";
    release(false);
    if (ex_.response_head_sent) {
      sink_.on_call_cut();
    } else {
      sink_.on_call_failed();
    }
    return;
  }
  if (h2_) {
    h2_->body_end = true;
    if (h2_->deferred && h2_->conn && h2_->stream) {
      h2_->deferred = false;
      h2_->conn->resume_data(h2_->stream);
    }
    return;
  }
  if (body_chunked_) out_.append("0\r\n\r\n");
}

size_t upstream_call::body_room() const {
  return out_.size() >= high_water ? 0 : high_water - out_.size();
}

// --- dispatching to an upstream --------------------------------------------------------------

void upstream_call::start() {
  if (ex_.websocket && h2_) {
    ex_.local_status = 502;
    ex_.local_code = "bad_gateway";
    ex_.local_message = "WebSocket needs an upstream with protocol http1";
    sink_.on_call_failed();
    return;
  }
  if (ex_.extended_connect && !ex_.websocket) {
    ex_.local_status = 501;
    ex_.local_code = "not_implemented";
    ex_.local_message = "this route does not take WebSocket (websocket: true)";
    sink_.on_call_failed();
    return;
  }
  if (ex_.websocket &&
      w_.open_tunnels() >= static_cast<int64_t>(snap_->cfg.limits.max_websocket_tunnels)) {
    w_.stats.websocket_refused.add();
    ex_.local_status = 503;
    ex_.local_code = "too_many_tunnels";
    ex_.local_message = "this node has as many WebSocket tunnels open as it allows";
    sink_.on_call_failed();
    return;
  }
  dispatch();
}

void upstream_call::dispatch() {
  auto& up = *ex_.upstream;
  int64_t now = w_.now;
  ex_.upstream_started = steady_clock::now();
  if (ex_.attempts == 0 && !ex_.exclude) up.budget.on_request(now);
  const int64_t wall = unix_now_ms();
  auto pick = [&](const upstream_runtime& from, const target_state* exclude) {
    ex_.picked = pick_target(from, w_.index, ex_.hash_key, exclude, now, wall);
    return ex_.picked ? ex_.picked->state.get() : nullptr;
  };
  ex_.target = pick(up, ex_.exclude);
  if (!ex_.target && !ex_.exclude) {
    // Nothing usable here: the upstream's failover chain, in order.
    for (const upstream_runtime* next : up.failover_chain) {
      // The head was written for the route's upstream's protocol: a failover upstream that
      // speaks the other one (HTTP/1.1 against HTTP/2) cannot take it.
      if ((next->cfg->protocol == upstream_protocol::http1) != (h2_ == nullptr)) continue;
      ex_.target = pick(*next, nullptr);
      if (ex_.target) {
        up.failovers.fetch_add(1, std::memory_order_relaxed);
        ex_.upstream = next;
        break;
      }
    }
  }
  const auto& chosen = *ex_.upstream;  // `up`, or the failover upstream that has a target
  ex_.probe = false;
  if (ex_.target && !ex_.target->breaker.on_dispatch(wall, chosen.cfg->circuit_breaker,
                                                     ex_.target->may_probe.load(), &ex_.probe)) {
    // Another worker took this half-open period's probe: choose again without this target.
    ex_.target = pick(chosen, ex_.target);
    if (ex_.target && !ex_.target->breaker.on_dispatch(wall, chosen.cfg->circuit_breaker,
                                                       ex_.target->may_probe.load(), &ex_.probe)) {
      ex_.target = nullptr;
    }
  }
  if (!ex_.target) {
    fail_with(503, "no_healthy_upstream", "no healthy target in upstream " + chosen.cfg->name);
    return;
  }
  ex_.target->metrics->active_requests.fetch_add(1, std::memory_order_relaxed);
  ex_.target->metrics->requests.fetch_add(1, std::memory_order_relaxed);
  ex_.counted_active = true;
  if (h2_) {
    h2_dispatch(chosen);
    return;
  }
  up_ = w_.take_idle(ex_.target, chosen.client_tls.get());
  if (up_) {
    ex_.reused_connection = true;
    w_.stats.upstream_connections_reused.add();
    up_->owner = self();
    state_ = state::sending;
    deadline_ = now + request_timeout();
    send();
    return;
  }
  ex_.reused_connection = false;
  uint32_t cap = chosen.cfg->pool.max_connections_per_target;
  if (cap && ex_.target->id < w_.open_by_target.size() &&
      w_.open_by_target[ex_.target->id] >= cap) {
    // Like Envoy's max_connections breaker: overflow is refused rather than queued.
    w_.stats.upstream_overflows.add();
    release(false);
    fail_with(503, "upstream_overloaded",
              "connection limit reached for upstream " + chosen.cfg->name);
    return;
  }
  connect();
}

void upstream_call::connect() {
  state_ = state::connecting;
  deadline_ = w_.now + ex_.upstream->cfg->timeouts.connect.count();
  up_ = std::make_shared<upstream_conn>(w_, ex_.target);
  up_->tls_tag = ex_.upstream->client_tls.get();
  up_->owner = self();
  w_.stats.upstream_connections_opened.add();
  error_code ec;
  const tcp::endpoint endpoint = to_endpoint(ex_.picked->endpoint);
  up_->socket.open(endpoint.protocol(), ec);
  if (ec) {
    failed(failure::connect);
    return;
  }
  up_->open = true;
  up_->socket.async_connect(endpoint,
                            [this, keep = sink_.keep_alive(), conn = up_](const error_code& ec) {
                              if (up_ == conn) on_connected(ec);
                            });
}

void upstream_call::on_connected(const error_code& ec) {
  if (ec) {
    failed(failure::connect);
    return;
  }
  error_code ignored;
  up_->socket.set_option(tcp::no_delay(true), ignored);
  up_->socket.non_blocking(true, ignored);
  if (ex_.upstream->client_tls && !up_->tls) {
    // HTTPS to the target: the handshake (SNI, certificate and name checked) before the request,
    // within the connect deadline.
    auto& ctx = *std::static_pointer_cast<asio::ssl::context>(ex_.upstream->client_tls);
    up_->tls = std::make_unique<asio::ssl::stream<socket_t&>>(up_->socket, ctx);
    std::string name = upstream_server_name(*ex_.upstream->cfg, ex_.target->addr.host);
    error_code ec2;
    asio::ip::make_address(name, ec2);
    if (ec2 && !name.empty()) SSL_set_tlsext_host_name(up_->tls->native_handle(), name.c_str());
    if (SSL_CTX_get_verify_mode(ctx.native_handle()) != SSL_VERIFY_NONE) {
      up_->tls->set_verify_callback(asio::ssl::host_name_verification(name));
    }
    up_->tls->async_handshake(asio::ssl::stream_base::client, [this, keep = sink_.keep_alive(),
                                                               conn = up_](const error_code& ec) {
      if (up_ != conn) return;
      if (ec) {
        w_.stats.upstream_tls_failures.add();
        if (auto l = spdlog::get("node.http")) {
          l->debug("TLS to upstream {} failed: {}", ex_.target->addr.to_string(), ec.message());
        }
        failed(failure::connect);
        return;
      }
      on_connected({});
    });
    return;
  }
  state_ = state::sending;
  deadline_ = w_.now + request_timeout();
  send();
}

void upstream_call::send() {
  if (ex_.has_body) ex_.body_started = true;
  shut_after_flush_ = false;
  // A body the codec is about to hand over goes out together with the head (and is checked by
  // the body stages before anything is sent). A body the codec already handed over whole is
  // in out_ now.
  bool body_follows = ex_.has_body && !ex_.request_done;
  if (!body_follows || !sink_.body_waiting()) flush();
  up_->start_read_soon();
  if (body_follows) sink_.on_call_room();
}

void upstream_call::flush() {
  if (h2_) {
    if (h2_->deferred && h2_->conn && h2_->stream && !out_.empty()) {
      h2_->deferred = false;
      h2_->conn->resume_data(h2_->stream);
    }
    return;
  }
  if (writing_ || out_.empty() || !up_ || (state_ != state::sending && state_ != state::tunnel))
    return;
  writing_ = true;
  out_.pin();  // appends go on while the write is in flight
  up_->write_some(asio::buffer(out_.data(), out_.size()),
                  [this, keep = sink_.keep_alive(), conn = up_](const error_code& ec, size_t n) {
                    if (up_ != conn) return;
                    writing_ = false;
                    out_.unpin();
                    if (ec) {
                      failed(failure::reset);
                      return;
                    }
                    out_.consume(n);
                    if (!ex_.response_head_sent) {
                      // The request timeout runs from the last byte written, not from the first.
                      deadline_ = w_.now + request_timeout();
                    }
                    if (!out_.empty()) {
                      flush();
                    } else if (state_ == state::tunnel) {
                      touch();
                      if (shut_after_flush_) {
                        shut_down_send();
                      } else {
                        sink_.on_call_room();
                      }
                    } else if (ex_.body_started && !ex_.request_done) {
                      sink_.on_call_room();  // room again for request body
                    }
                  });
}

// --- the response ----------------------------------------------------------------------------

void upstream_call::on_upstream_data(const error_code& ec) {
  auto conn = up_;
  if (!conn) return;
  if (state_ == state::tunnel) {
    if (!ec) return pump_tunnel();
    relay_to_client();
    if (up_ == conn) finish();  // the upstream closed: the client's side closes after its bytes
    return;
  }
  if (state_ != state::sending) return;
  if (ec) {
    if (ec == asio::error::eof && parser_ && parser_->is_header_done() && !parser_->is_done() &&
        conn->in.empty()) {
      // A response delimited by the end of the connection.
      error_code pec;
      parser_->put_eof(pec);
      ex_.upstream_keep_alive = false;
      if (!pec) {
        finish();
        return;
      }
    }
    if (!conn->in.empty()) parse();  // what arrived before the close still counts
    if (up_ == conn) failed(failure::reset);
    return;
  }
  parse();  // may have entered the tunnel
  if (up_ == conn && (state_ == state::sending || state_ == state::tunnel) && !response_paused_)
    conn->start_read();
}

void upstream_call::parse() {
  auto conn = up_;
  while (up_ == conn && !conn->in.empty()) {
    if (!parser_) {
      parser_.emplace(*this);
      parser_->header_limit(64 * 1024);
      parser_->body_limit(boost::none);
      parser_->eager(true);
      if (ex_.verb == http::verb::head) parser_->skip(true);
    }
    if (sink_.sink_full()) {
      response_paused_ = true;
      break;
    }
    error_code ec;
    size_t used = parser_->put(asio::buffer(conn->in.data(), conn->in.size()), ec);
    if (up_ != conn) return;  // the sink ended the exchange
    if (ex_.retry_now) {
      ex_.retry_now = false;
      failed(failure::reset);
      return;
    }
    if (ec == http::error::need_more) {
      conn->in.consume(used);
      if (used == 0) break;
      continue;
    }
    if (ec) {
      // Whatever the upstream said before the bytes went wrong is not passed on as its answer.
      if (!ex_.response_head_sent) ex_.status = 0;
      failed(failure::malformed);
      return;
    }
    conn->in.consume(used);
    if (parser_->is_done()) {
      if (ex_.tunnel) {
        enter_tunnel();
        return;
      }
      if (ex_.status / 100 == 1) {
        parser_.reset();  // an interim response; the final one follows
        continue;
      }
      finish();
      return;
    }
  }
  touch();
  sink_.flush_response();
}

void upstream_call::resume_response() {
  if (!response_paused_) return;
  response_paused_ = false;
  if (h2_) {
    if (h2_->conn && h2_->stream && h2_->owed) h2_->conn->consume(h2_->stream, h2_->owed);
    h2_->owed = 0;
    return;
  }
  if (!up_) return;
  auto conn = up_;
  if (state_ == state::tunnel) return pump_tunnel();
  if (!conn->in.empty()) parse();
  if (up_ != conn || response_paused_) return;
  conn->start_read();
}

void upstream_call::touch() {
  if (state_ == state::tunnel) {
    deadline_ = w_.now + snap_->cfg.limits.websocket_idle_timeout.count();
  } else if (state_ == state::sending && ex_.response_head_sent) {
    deadline_ = w_.now + snap_->cfg.limits.idle_timeout.count();
  }
}

// --- a tunnel (WebSocket after the upstream's 101) -----------------------------------------

void upstream_call::enter_tunnel() {
  // The 101 head is out; what the upstream sent after it, and everything from here on, is the
  // new protocol's: relayed as it comes, both ways.
  parser_.reset();
  state_ = state::tunnel;
  body_chunked_ = false;
  w_.stats.websocket_upgrades.add();
  w_.stats.websocket_tunnels.fetch_add(1, std::memory_order_relaxed);
  touch();
  auto conn = up_;
  sink_.on_call_tunnel();
  if (up_ != conn) return;
  relay_to_client();
}

void upstream_call::relay_to_client() {
  auto& in = up_->in;
  if (in.empty()) return;
  if (sink_.sink_full()) {
    response_paused_ = true;
    return;
  }
  if (tunnel_closing_) {
    in.clear();  // after our close frame: nothing more for the client
    return;
  }
  w_.stats.websocket_bytes_to_client.add(in.size());
  to_client_.feed(in.view());
  sink_.on_call_body(in.view());
  in.clear();
  touch();
  sink_.flush_response();
  if (sink_.sink_full()) response_paused_ = true;
}

void upstream_call::pump_tunnel() {
  auto conn = up_;
  relay_to_client();
  if (up_ == conn && !response_paused_) conn->start_read();
}

void upstream_call::ws_frames::feed(std::string_view bytes) {
  size_t i = 0;
  while (i < bytes.size()) {
    if (payload_left) {
      uint64_t n = std::min<uint64_t>(payload_left, bytes.size() - i);
      payload_left -= n;
      i += static_cast<size_t>(n);
      continue;
    }
    head[head_len++] = static_cast<unsigned char>(bytes[i++]);
    if (head_len < 2) continue;
    size_t len7 = head[1] & 0x7f;
    size_t need = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0) + ((head[1] & 0x80) ? 4 : 0);
    if (head_len < need) continue;
    uint64_t len = len7;
    if (len7 == 126) len = uint64_t{head[2]} << 8 | head[3];
    if (len7 == 127) {
      len = 0;
      for (int k = 0; k < 8; ++k) len = len << 8 | head[2 + k];
    }
    payload_left = len;
    head_len = 0;
  }
}

void upstream_call::close_tunnel(uint16_t code) {
  if (state_ != state::tunnel || tunnel_closing_) return;
  unsigned char status[2] = {static_cast<unsigned char>(code >> 8),
                             static_cast<unsigned char>(code & 0xff)};
  if (to_client_.at_boundary()) {
    // Server to client: unmasked (RFC 6455 section 5.1).
    const char frame[4] = {'\x88', 2, static_cast<char>(status[0]), static_cast<char>(status[1])};
    sink_.on_call_body(std::string_view(frame, sizeof frame));
    sink_.flush_response();
  }
  if (to_upstream_.at_boundary()) {
    // Client to server: masked, with a mask of our own.
    uint64_t r = w_.next_random();
    unsigned char mask[4];
    std::memcpy(mask, &r, sizeof mask);
    char frame[8] = {'\x88', static_cast<char>(0x80 | 2)};
    std::memcpy(frame + 2, mask, 4);
    frame[6] = static_cast<char>(status[0] ^ mask[0]);
    frame[7] = static_cast<char>(status[1] ^ mask[1]);
    out_.append(frame, sizeof frame);
  }
  tunnel_closing_ = true;
  end_tunnel_send();
  flush();
}

void upstream_call::end_tunnel_send() {
  if (state_ != state::tunnel) return;
  shut_after_flush_ = true;
  if (!writing_ && out_.empty()) shut_down_send();
}

void upstream_call::shut_down_send() {
  error_code ignored;
  if (up_) up_->socket.shutdown(tcp::socket::shutdown_send, ignored);
}

void upstream_call::check_deadline(int64_t now) {
  if (state_ == state::idle || now < deadline_) return;
  if (state_ == state::connecting) {
    failed(failure::connect_timeout);
  } else if (state_ == state::sending && !ex_.response_head_sent) {
    failed(failure::timeout);
  } else {
    // A stalled stream in either direction.
    w_.stats.idle_timeouts.add();
    release(false);
    sink_.on_call_cut();
  }
}

void upstream_call::finish() {
  // Bytes after the end of a response (we never pipeline upstream) mean the peer frames
  // messages differently from us: never reuse that connection.
  // A tunnel's connection spoke another protocol: never.
  bool reuse = state_ != state::tunnel && ex_.upstream_keep_alive && ex_.request_done &&
               out_.empty() && !writing_ && (!up_ || up_->in.empty());
  release(reuse);
  sink_.on_call_done();
}

void upstream_call::record_breaker(bool success) {
  if (!ex_.target) return;
  const auto& cb = ex_.upstream->cfg->circuit_breaker;
  if (!cb.enabled) return;
  int64_t wall = unix_now_ms();
  bool was_probe = ex_.probe;
  ex_.probe = false;
  if (ex_.target->breaker.record(success, was_probe, wall, cb, snap_->cfg.node.id)) {
    auto v = ex_.target->breaker.view();
    snap_->registry->count_transition();
    if (auto l = spdlog::get("node.http"))
      l->warn("breaker of upstream {} target {} is now {}", ex_.target->upstream,
              ex_.target->addr.to_string(), to_string(v.state));
    if (cb.scope != "local") snap_->registry->queue_publish(ex_.target->key);
  }
}

void upstream_call::count_target_failure() {
  if (!ex_.target) return;
  record_breaker(false);
  ex_.target->metrics->failures.fetch_add(1, std::memory_order_relaxed);
  const auto& outlier = ex_.upstream->cfg->outlier;
  uint32_t n = ex_.target->consecutive_failures.fetch_add(1, std::memory_order_relaxed) + 1;
  if (outlier.consecutive_failures && n >= outlier.consecutive_failures) {
    ex_.target->consecutive_failures.store(0, std::memory_order_relaxed);
    ex_.target->ejected_until_ms.store(now_ms() + outlier.eject_for.count(),
                                       std::memory_order_relaxed);
    w_.stats.ejections.add();
    if (auto l = spdlog::get("node.http"))
      l->warn("upstream {} target {} ejected for {} ms after {} failures", ex_.target->upstream,
              ex_.target->addr.to_string(), outlier.eject_for.count(), n);
    // An ejection is an observation the other nodes should share: it opens the target's breaker
    // (published with the breaker's scope), or else the ejection would stop the traffic that
    // would have tripped the breaker and only this node would avoid the target.
    const auto& cb = ex_.upstream->cfg->circuit_breaker;
    if (ex_.target->breaker.force(false, unix_now_ms(), cb, snap_->cfg.node.id)) {
      snap_->registry->count_transition();
      if (cb.scope != "local") snap_->registry->queue_publish(ex_.target->key);
    }
  }
}

void upstream_call::failed(failure why) {
  const auto& cfg = *ex_.upstream->cfg;
  switch (why) {
    case failure::connect:
      w_.stats.upstream_connect_failures.add();
      break;
    case failure::connect_timeout:
    case failure::timeout:
      w_.stats.upstream_timeouts.add();
      break;
    case failure::reset:
      w_.stats.upstream_resets.add();
      break;
    case failure::malformed:
      w_.stats.upstream_malformed.add();
      break;
  }
  bool got_response_bytes = parser_ && parser_->got_some();
  bool stale_pooled =
      why == failure::reset && ex_.reused_connection && !got_response_bytes && ex_.status == 0;
  if (!stale_pooled && ex_.status == 0) count_target_failure();
  release(false);
  if (ex_.response_head_sent) {
    sink_.on_call_cut();  // the response is cut short; the client sees the stream end
    return;
  }
  bool connect_failure = why == failure::connect || why == failure::connect_timeout;
  bool retryable_kind = (connect_failure && cfg.retries.on_connect_failure) ||
                        (why == failure::timeout && cfg.retries.on_timeout) ||
                        (why == failure::reset && ex_.status != 0);  // retry-on-status
  // A refused stream was not processed (RFC 9113 section 8.7): any method may go again.
  bool may_replay = replayable() && (connect_failure || refused_stream_ || is_idempotent(ex_.verb));
  bool retry = false;
  if (may_replay && stale_pooled && ex_.attempts == 0) {
    retry = true;  // a pooled connection the target had closed: not the target's fault
  } else if (may_replay && retryable_kind && ex_.attempts < cfg.retries.attempts) {
    if (ex_.upstream->budget.try_retry(w_.now)) {
      retry = true;
    } else {
      w_.stats.retries_budget_exhausted.add();
    }
  }
  if (retry) {
    ++ex_.attempts;
    w_.stats.retries.add();
    if (!stale_pooled) ex_.exclude = ex_.target;
    if (!ex_.has_body && !h2_) {
      out_.clear();
      out_.append(retry_head_);
    }
    ex_.status = 0;
    fields_.clear();
    dispatch();
    return;
  }
  if (ex_.status != 0) {
    // Retries on status exhausted: pass the last status on as our own error.
    int status = ex_.status;
    fail_with(status, "upstream_error", "upstream answered " + std::to_string(status));
  } else if (connect_failure) {
    bool refused = why == failure::connect;
    fail_with(refused ? 502 : 504, refused ? "upstream_unavailable" : "upstream_timeout",
              refused ? "cannot connect to upstream " + cfg.name
                      : "connecting to upstream " + cfg.name + " timed out");
  } else if (why == failure::timeout) {
    fail_with(504, "upstream_timeout", "upstream " + cfg.name + " did not answer in time");
  } else if (why == failure::malformed) {
    fail_with(502, "bad_gateway", "upstream " + cfg.name + " sent a malformed response");
  } else {
    fail_with(502, "bad_gateway", "upstream " + cfg.name + " closed the connection");
  }
}

void upstream_call::fail_with(int status, const char* code, std::string message) {
  // A route's fallback answers in place of the gateway's own upstream errors.
  const fallback_config* fallback =
      ex_.route && ex_.route->cfg->fallback && (status == 502 || status == 503 || status == 504)
          ? &*ex_.route->cfg->fallback
          : nullptr;
  if (fallback) {
    w_.stats.fallbacks.add();
    ex_.local_reply = {fallback->status, fallback->content_type, fallback->body, fallback->headers};
  } else {
    ex_.local_status = status;
    ex_.local_code = code;
    ex_.local_message_storage = std::move(message);
    ex_.local_message = ex_.local_message_storage.c_str();
  }
  sink_.on_call_failed();
}

void upstream_call::release(bool reuse) {
  if (state_ == state::tunnel) w_.stats.websocket_tunnels.fetch_sub(1, std::memory_order_relaxed);
  state_ = state::idle;
  response_paused_ = false;
  if (ex_.counted_active && ex_.target) {
    ex_.target->metrics->active_requests.fetch_sub(1, std::memory_order_relaxed);
    ex_.counted_active = false;
  }
  parser_.reset();
  if (h2_ && h2_->conn) {
    auto conn = std::move(h2_->conn);
    h2_->conn.reset();
    conn->detach(this, std::exchange(h2_->stream, 0));
    return;
  }
  if (writing_) {
    writing_ = false;
    out_.unpin();  // the connection closes below: the write in flight is cancelled
  }
  if (!up_) return;
  auto conn = std::move(up_);
  up_.reset();
  conn->owner.reset();
  if (reuse && conn->open && ex_.route) {
    w_.give_back(std::move(conn), *ex_.upstream->cfg);
  } else {
    conn->close();
  }
}

// --- response parser callbacks ---------------------------------------------------------------

void upstream_call::on_response_line(int status, std::string_view reason, int version,
                                     error_code& ec) {
  ex_.status = status;
  ex_.reason = reason;
  ex_.response_version = version;
  fields_.clear();
  ex_.response_content_length_count = ex_.response_transfer_encoding_count = 0;
  if (!valid_field_value(reason) || (version != 10 && version != 11) ||
      (!reason.empty() && !ends_line(reason, up_->in))) {
    ex_.response_malformed = true;
    ec = http::error::bad_value;
  }
}

void upstream_call::on_response_field(http::field f, std::string_view name, std::string_view value,
                                      error_code& ec) {
  // What a client would misread must not pass: a response a smuggling-prone peer could frame
  // differently from us is refused as a whole (502), and its connection is not reused.
  auto malformed = [&] {
    ex_.response_malformed = true;
    ec = http::error::bad_value;
  };
  if (fields_.size() >= max_fields) {
    ec = http::error::header_limit;
    return;
  }
  // Control characters (other than HT) and DEL never get here: Beast's field scan fails the
  // parse at the first one that does not start the CRLF, as for requests (on_request_field).
  // Each line must end in CRLF (no bare LF) and may not be folded: the value is a view into the
  // receive buffer followed, after optional whitespace, by "\r\n".
  if (!value.empty() && !ends_line(value, up_->in)) return malformed();
  switch (f) {
    case http::field::content_length:
      if (++ex_.response_content_length_count > 1 || value.empty() || value.size() > 18 ||
          value.find_first_not_of("0123456789") != std::string_view::npos) {
        return malformed();
      }
      break;
    case http::field::transfer_encoding:
      if (++ex_.response_transfer_encoding_count > 1 || !iequals(trim(value), "chunked")) {
        return malformed();
      }
      break;
    default:
      break;
  }
  fields_.push_back({f, name, value});
}

void upstream_call::on_response_header(http::basic_parser<false>& parser, error_code& ec) {
  bool upgrade = ex_.status == 101;
  bool informational = ex_.status / 100 == 1 && !upgrade;
  // A 101 nobody asked for (Upgrade is forwarded only on websocket routes) or to another
  // protocol, framing fields on a response that has no body (RFC 9110 sections 8.6 and 6.4.1),
  // or both Content-Length and Transfer-Encoding (RFC 9112 section 6.3): the upstream is broken
  // or hostile.
  bool bodyless = informational || upgrade || ex_.status == 204;
  bool agreed = false;
  if (upgrade && ex_.websocket) {
    for (const auto& f : fields_)
      agreed |= f.f == http::field::upgrade && has_token(f.value, "websocket");
  }
  if ((upgrade && !agreed) ||
      (ex_.response_content_length_count && ex_.response_transfer_encoding_count) ||
      (bodyless && (ex_.response_transfer_encoding_count ||
                    (parser.content_length() && *parser.content_length() != 0)))) {
    ex_.response_malformed = true;
    ec = http::error::bad_value;
    return;
  }
  if (!deliver_head(parser.keep_alive(), parser.content_length() && !parser.chunked(),
                    informational, upgrade)) {
    ex_.retry_now = true;
    ec = http::error::bad_value;
  }
}

bool upstream_call::deliver_head(bool keep_alive, bool length_known, bool informational,
                                 bool upgrade) {
  const auto& cfg = *ex_.upstream->cfg;
  if (!informational) {
    bool retry_status = false;
    for (int s : cfg.retries.on_status) retry_status |= (s == ex_.status);
    if (ex_.status >= 500) {
      count_target_failure();
    } else if (ex_.target) {
      ex_.target->consecutive_failures.store(0, std::memory_order_relaxed);
      // A slow answer counts against the breaker (slow_call) though the client still gets it.
      const auto& cb = cfg.circuit_breaker;
      bool slow = cb.slow_call.count() > 0 &&
                  steady_clock::now() - ex_.started > std::chrono::milliseconds(cb.slow_call);
      record_breaker(!slow);
    }
    if (retry_status && ex_.attempts < cfg.retries.attempts && replayable() &&
        is_idempotent(ex_.verb)) {
      return false;
    }
  }
  if (ex_.grpc && !informational) {
    for (auto& f : fields_) {
      if (f.f == http::field::unknown && iequals(f.name, "grpc-status")) {
        ex_.grpc_status = parse_grpc_status(f.value);  // a trailers-only response
      } else if (ex_.grpc_web && h2_ && f.f == http::field::content_type) {
        std::string_view web = web_content_type_for_grpc(f.value, ex_.grpc_web_text);
        if (!web.empty()) f.value = web;
      }
    }
    if (ex_.grpc_web && h2_) {
      // The trailer frame follows the messages: the upstream's length is not the client's.
      std::erase_if(fields_,
                    [](const field_view& f) { return f.f == http::field::content_length; });
      length_known = false;
    }
  }
  response_head h;
  h.status = ex_.status;
  h.reason = ex_.reason;
  h.fields = fields_;
  h.informational = informational;
  if (upgrade) {
    h.upgrade = "websocket";
    ex_.tunnel = true;
  }
  if (!informational) {
    h.rate_limit_lines = ex_.rate_limit_headers;
    h.request_id = ex_.request_id;
    ex_.upstream_us = std::chrono::duration_cast<std::chrono::microseconds>(steady_clock::now() -
                                                                            ex_.upstream_started)
                          .count();
    ex_.upstream_keep_alive = keep_alive;
    ex_.response_head_sent = true;
    ex_.route->metrics->per_worker[w_.index].status[status_slot(ex_.status)].add();
  }
  ex_.route->stages->run_response_head(ex_, h);
  sink_.on_call_head(h, length_known);
  return true;
}

void upstream_call::on_response_body(std::string_view body, error_code&) {
  ex_.response_bytes += body.size();
  if (ex_.route->stages->reads_response_body()) ex_.route->stages->run_response_body(ex_, body);
  sink_.on_call_body(body);
}

}  // namespace meridian::node
