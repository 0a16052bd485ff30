// client_session: dispatching to an upstream (balancing, breakers, retries, failover),
// and the response callbacks.
#include "proxy_internal.h"

namespace meridian::node {

// --- dispatching to an upstream --------------------------------------------------------------

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

bool client_session::request_replayable() const {
  // A request without a body can be sent again from retry_head_; one with a body only while none
  // of it has been taken from the client buffer.
  return !ex_.has_body || !ex_.body_started;
}

void client_session::dispatch() {
  auto& up = *ex_.upstream;
  int64_t now = w_.now;
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
    if (!ex_.request_done) close_after_response_ = true;
    send_error(503, "no_healthy_upstream", "no healthy target in upstream " + chosen.cfg->name);
    return;
  }
  ex_.target->metrics->active_requests.fetch_add(1, std::memory_order_relaxed);
  ex_.target->metrics->requests.fetch_add(1, std::memory_order_relaxed);
  ex_.counted_active = true;
  up_ = w_.take_idle(ex_.target);
  if (up_) {
    ex_.reused_connection = true;
    w_.stats.upstream_connections_reused.add();
    up_->owner = shared_from_this();
    phase_ = phase::proxying;
    deadline_ = now + chosen.cfg->timeouts.request.count();
    send_upstream();
    return;
  }
  ex_.reused_connection = false;
  uint32_t cap = chosen.cfg->pool.max_connections_per_target;
  if (cap && ex_.target->id < w_.open_by_target.size() &&
      w_.open_by_target[ex_.target->id] >= cap) {
    // Like Envoy's max_connections breaker: overflow is refused rather than queued.
    w_.stats.upstream_overflows.add();
    release_upstream(false);
    if (!ex_.request_done) close_after_response_ = true;
    send_error(503, "upstream_overloaded",
               "connection limit reached for upstream " + chosen.cfg->name);
    return;
  }
  connect_upstream();
}

void client_session::connect_upstream() {
  phase_ = phase::connecting;
  deadline_ = w_.now + ex_.upstream->cfg->timeouts.connect.count();
  up_ = std::make_shared<upstream_conn>(w_, ex_.target);
  up_->owner = shared_from_this();
  w_.stats.upstream_connections_opened.add();
  error_code ec;
  const tcp::endpoint endpoint = to_endpoint(ex_.picked->endpoint);
  up_->socket.open(endpoint.protocol(), ec);
  if (ec) {
    upstream_failed(failure::connect);
    return;
  }
  up_->open = true;
  up_->socket.async_connect(endpoint,
                            [self = shared_from_this(), conn = up_](const error_code& ec) {
                              if (self->up_ != conn || self->phase_ == phase::closed) return;
                              self->on_connected(ec);
                            });
}

void client_session::on_connected(const error_code& ec) {
  if (ec) {
    upstream_failed(failure::connect);
    return;
  }
  error_code ignored;
  up_->socket.set_option(tcp::no_delay(true), ignored);
  up_->socket.non_blocking(true, ignored);
  phase_ = phase::proxying;
  deadline_ = w_.now + ex_.upstream->cfg->timeouts.request.count();
  send_upstream();
  if (ex_.body_started) process_input();
}

void client_session::send_upstream() {
  if (ex_.has_body) ex_.body_started = true;
  // A body still to be parsed from in_ is checked against the route's limit before anything is
  // sent: process_input flushes the head together with it. A body the head's parse already took
  // whole (ex_.request_done) is in up_out_ now, and whatever follows it in in_ is the next request.
  if (!ex_.has_body || ex_.request_done || in_.empty()) flush_upstream();
  up_->start_read_soon();
}

void client_session::flush_upstream() {
  if (writing_upstream_ || up_out_.empty() || !up_ || phase_ == phase::connecting) return;
  writing_upstream_ = true;
  up_->socket.async_write_some(
      asio::buffer(up_out_.data(), up_out_.size()),
      [self = shared_from_this(), conn = up_](const error_code& ec, size_t n) {
        if (self->up_ != conn || self->phase_ == phase::closed) return;
        self->writing_upstream_ = false;
        if (ec) {
          self->upstream_failed(failure::reset);
          return;
        }
        self->up_out_.consume(n);
        if (!self->ex_.response_head_sent) {
          // The request timeout runs from the last byte written, not from the first.
          self->deadline_ = self->w_.now + self->ex_.upstream->cfg->timeouts.request.count();
        }
        if (!self->up_out_.empty()) {
          self->flush_upstream();
        } else if (self->ex_.body_started && !self->ex_.request_done) {
          self->process_input();  // room again for request body
        }
      });
}

void client_session::on_upstream_data(const error_code& ec) {
  auto conn = up_;
  if (!conn || phase_ != phase::proxying) return;
  if (ec) {
    if (ec == asio::error::eof && resp_parser_ && resp_parser_->is_header_done() &&
        !resp_parser_->is_done() && conn->in.empty()) {
      // A response delimited by the end of the connection.
      error_code pec;
      resp_parser_->put_eof(pec);
      ex_.upstream_keep_alive = false;
      if (!pec) {
        flush_client();
        finish_exchange();
        return;
      }
    }
    if (!conn->in.empty()) parse_upstream();  // what arrived before the close still counts
    if (up_ == conn) upstream_failed(failure::reset);
    return;
  }
  parse_upstream();
  if (up_ == conn && phase_ == phase::proxying && !resp_paused_) conn->start_read();
}

void client_session::parse_upstream() {
  auto conn = up_;
  while (up_ == conn && !conn->in.empty()) {
    if (!resp_parser_) {
      resp_parser_.emplace(*this);
      resp_parser_->header_limit(64 * 1024);
      resp_parser_->body_limit(boost::none);
      resp_parser_->eager(true);
      if (ex_.verb == http::verb::head) resp_parser_->skip(true);
    }
    if (out_.size() >= high_water) {
      resp_paused_ = true;
      break;
    }
    error_code ec;
    size_t used = resp_parser_->put(asio::buffer(conn->in.data(), conn->in.size()), ec);
    if (phase_ == phase::closed || up_ != conn) return;
    if (ex_.retry_now) {
      ex_.retry_now = false;
      upstream_failed(failure::reset);
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
      upstream_failed(failure::malformed);
      return;
    }
    conn->in.consume(used);
    if (resp_parser_->is_done()) {
      if (ex_.status / 100 == 1) {
        resp_parser_.reset();  // an interim response; the final one follows
        continue;
      }
      flush_client();
      finish_exchange();
      return;
    }
  }
  if (ex_.response_head_sent) deadline_ = w_.now + snap_->cfg.limits.idle_timeout.count();
  flush_client();
}

void client_session::record_breaker(bool success) {
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

void client_session::count_target_failure() {
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
    spdlog::get("node.http")
        ? spdlog::get("node.http")
              ->warn("upstream {} target {} ejected for {} ms after {} failures",
                     ex_.target->upstream, ex_.target->addr.to_string(), outlier.eject_for.count(),
                     n)
        : void();
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

void client_session::upstream_failed(failure why) {
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
  bool got_response_bytes = resp_parser_ && resp_parser_->got_some();
  bool stale_pooled =
      why == failure::reset && ex_.reused_connection && !got_response_bytes && ex_.status == 0;
  if (!stale_pooled && ex_.status == 0) count_target_failure();
  release_upstream(false);
  if (ex_.response_head_sent) {
    close();  // the response is cut short; the client sees the connection end
    return;
  }
  bool connect_failure = why == failure::connect || why == failure::connect_timeout;
  bool retryable_kind = (connect_failure && cfg.retries.on_connect_failure) ||
                        (why == failure::timeout && cfg.retries.on_timeout) ||
                        (why == failure::reset && ex_.status != 0);  // retry-on-status
  bool may_replay = request_replayable() && (connect_failure || is_idempotent(ex_.verb));
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
    if (!ex_.has_body) {
      up_out_.clear();
      up_out_.append(retry_head_);
    }
    ex_.status = 0;
    resp_fields_.clear();
    dispatch();
    return;
  }
  if (!ex_.request_done) close_after_response_ = true;
  if (ex_.status != 0) {
    // Retries on status exhausted: pass the last status on as our own error.
    send_error(ex_.status, "upstream_error", "upstream answered " + std::to_string(ex_.status));
  } else if (connect_failure) {
    send_error(why == failure::connect ? 502 : 504,
               why == failure::connect ? "upstream_unavailable" : "upstream_timeout",
               why == failure::connect ? "cannot connect to upstream " + cfg.name
                                       : "connecting to upstream " + cfg.name + " timed out");
  } else if (why == failure::timeout) {
    send_error(504, "upstream_timeout", "upstream " + cfg.name + " did not answer in time");
  } else if (why == failure::malformed) {
    send_error(502, "bad_gateway", "upstream " + cfg.name + " sent a malformed response");
  } else {
    send_error(502, "bad_gateway", "upstream " + cfg.name + " closed the connection");
  }
  if (phase_ == phase::idle) process_input();
}

void client_session::release_upstream(bool reuse) {
  if (ex_.counted_active && ex_.target) {
    ex_.target->metrics->active_requests.fetch_sub(1, std::memory_order_relaxed);
    ex_.counted_active = false;
  }
  resp_parser_.reset();
  writing_upstream_ = false;
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

void client_session::on_response_line(int status, std::string_view reason, int version,
                                      error_code& ec) {
  ex_.status = status;
  ex_.reason = reason;
  ex_.response_version = version;
  resp_fields_.clear();
  ex_.response_content_length_count = ex_.response_transfer_encoding_count = 0;
  if (!valid_field_value(reason) || (version != 10 && version != 11) ||
      (!reason.empty() && !ends_line(reason, up_->in))) {
    ex_.response_malformed = true;
    ec = http::error::bad_value;
  }
}

void client_session::on_response_field(http::field f, std::string_view name, std::string_view value,
                                       error_code& ec) {
  // What a client would misread must not pass: a response a smuggling-prone peer could frame
  // differently from us is refused as a whole (502), and its connection is not reused.
  auto malformed = [&] {
    ex_.response_malformed = true;
    ec = http::error::bad_value;
  };
  if (resp_fields_.size() >= max_fields) {
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
  resp_fields_.push_back({f, name, value});
}

void client_session::on_response_header(http::basic_parser<false>& parser, error_code& ec) {
  bool informational = ex_.status / 100 == 1;
  // A 101 nobody asked for (we never forward Upgrade), framing fields on a response that has no
  // body (RFC 9110 sections 8.6 and 6.4.1), or both Content-Length and Transfer-Encoding
  // (RFC 9112 section 6.3): the upstream is broken or hostile.
  bool bodyless = informational || ex_.status == 204;
  if (ex_.status == 101 ||
      (ex_.response_content_length_count && ex_.response_transfer_encoding_count) ||
      (bodyless && (ex_.response_transfer_encoding_count ||
                    (parser.content_length() && *parser.content_length() != 0)))) {
    ex_.response_malformed = true;
    ec = http::error::bad_value;
    return;
  }
  const auto& cfg = *ex_.upstream->cfg;
  if (!informational) {
    bool retry_status = false;
    for (int s : cfg.retries.on_status) retry_status |= (s == ex_.status);
    if (ex_.status >= 500) {
      count_target_failure();
    } else if (ex_.target) {
      ex_.target->consecutive_failures.store(0, std::memory_order_relaxed);
      // A slow answer counts against the breaker (slow_call) though the client still gets it.
      const auto& cb = ex_.upstream->cfg->circuit_breaker;
      bool slow = cb.slow_call.count() > 0 &&
                  steady_clock::now() - ex_.started > std::chrono::milliseconds(cb.slow_call);
      record_breaker(!slow);
    }
    if (retry_status && ex_.attempts < cfg.retries.attempts && request_replayable() &&
        is_idempotent(ex_.verb)) {
      ex_.retry_now = true;
      ec = http::error::bad_value;
      return;
    }
  }
  response_head h;
  h.status = ex_.status;
  h.reason = ex_.reason;
  h.fields = resp_fields_;
  h.informational = informational;
  if (!informational) {
    h.rate_limit_lines = ex_.rate_limit_headers;
    h.request_id = ex_.request_id;
    bool no_body = ex_.status == 204 || ex_.status == 304 || ex_.verb == http::verb::head;
    if (!no_body && (parser.chunked() || !parser.content_length())) {
      if (ex_.version == 11) {
        ex_.response_chunked = true;
      } else {
        close_after_response_ = true;  // an HTTP/1.0 client reads to the end of the connection
      }
    }
    h.chunked = ex_.response_chunked;
    ex_.upstream_keep_alive = parser.keep_alive();
    if (!ex_.request_done || w_.draining) close_after_response_ = true;
    h.connection = close_after_response_ ? response_head::connection::close
                   : ex_.version == 10   ? response_head::connection::keep_alive
                                         : response_head::connection::as_is;
    ex_.response_head_sent = true;
    if (ex_.route) ex_.route->metrics->per_worker[w_.index].status[status_slot(ex_.status)].add();
  }
  ex_.route->stages->run_response_head(ex_, h);
  write_response_head(h, out_);
}

void client_session::on_response_body(std::string_view body, error_code& ec) {
  ex_.response_bytes += body.size();
  if (ex_.route->stages->reads_response_body()) ex_.route->stages->run_response_body(ex_, body);
  if (ex_.response_chunked) {
    if (body.empty()) return;
    out_.append_hex(body.size());
    out_.append("\r\n");
    out_.append(body);
    out_.append("\r\n");
  } else {
    out_.append(body);
  }
}

void client_session::on_response_chunk_header(uint64_t, error_code&) {}

void client_session::on_response_finish(error_code& ec) {
  if (ex_.status / 100 == 1) return;
  if (ex_.response_chunked) out_.append("0\r\n\r\n");
}

}  // namespace meridian::node
