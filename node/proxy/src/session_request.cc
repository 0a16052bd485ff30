// client_session: the request head and body callbacks, the stages and pauses.
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
  if (w_.access_log || snap_->spans) {  // the access log and spans name them
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
    case http::field::upgrade:
      ex_.upgrade_websocket |= has_token(value, "websocket");
      break;
    case http::field::connection:
      ex_.connection_upgrade |= has_token(value, "upgrade");
      break;
    case http::field::content_type:
      note_grpc_field(ex_, f, name, value);  // gRPC-Web comes over HTTP/1.1
      break;
    case http::field::unknown:
      if (name.size() == 12) note_grpc_field(ex_, f, name, value);  // grpc-timeout
      break;
    default:
      break;
  }
  if (fields_.size() >= max_fields) {
    return reject(431, "headers_too_large", "too many header fields", ec);
  }
  fields_.push_back({f, name, value});
}

// --- stages and pauses -----------------------------------------------------------------------

void client_session::on_flow_prepared() {
  // From here the parser reads bodies as far as the buffers allow; process_input forwards.
  req_parser_->eager(true);
}

void client_session::on_flow_paused(int64_t deadline) {
  phase_ = phase::paused;
  deadline_ = deadline;
}

void client_session::answer_local() {
  // Answered by the gateway itself; a body it did not read means the connection ends.
  if (!ex_.request_done) close_after_response_ = true;
  if (ex_.local_reply.status) {
    auto& r = ex_.local_reply;
    send_local(std::exchange(r.status, 0), r.content_type, r.body, r.headers);
    return;
  }
  int status = ex_.local_status;
  ex_.local_status = 0;
  send_error(status, ex_.local_code, ex_.local_message);
}

void client_session::on_request_header(http::basic_parser<true>& parser, error_code& ec) {
  make_request_id(fields_);
  if (ex_.version == 11 && ex_.host_count != 1) {
    return reject(400, "bad_request", ex_.host_count ? "more than one Host" : "missing Host", ec);
  }
  if (ex_.host_count > 1) return reject(400, "bad_request", "more than one Host", ec);
  if (!valid_host(ex_.host)) return reject(400, "bad_request", "invalid Host", ec);
  ex_.chunked = parser.chunked();
  auto cl = parser.content_length();
  ex_.has_body = ex_.chunked || (cl && *cl > 0);

  if (const char* error = take_target(ex_.request_target, ex_.host)) {
    return reject(400, "bad_request", error, ec);
  }
  ex_.fields = fields_;
  if (cl) ex_.content_length = *cl;
  ex_.wants_websocket = ex_.upgrade_websocket && ex_.connection_upgrade &&
                        ex_.verb == http::verb::get && ex_.version == 11 && !ex_.has_body;
  if (!parser.keep_alive()) close_after_response_ = true;
  head_verdict_ = run_stages({});
}

// --- the request body ------------------------------------------------------------------

void client_session::refuse_body(error_code& ec) {
  close_after_response_ = true;
  refuse_body_answer();
  if (!ex_.response_head_sent) {
    answer_local();
  } else {
    close();
  }
  ec = http::error::body_limit;
}

void client_session::on_request_body(std::string_view body, error_code& ec) {
  if (phase_ == phase::awaiting_body) {
    if (paused_stage().on_request_body(ex_, body, body.size(), false) != verdict::next) {
      refuse_body(ec);
      return;
    }
    ex_.body_bytes += body.size();
    return;
  }
  if (ex_.route->stages->reads_request_body() &&
      ex_.route->stages->run_request_body(ex_, body, body.size(), false) != verdict::next) {
    refuse_body(ec);
    return;
  }
  ex_.body_bytes += body.size();
  call_.send_body(body);
}

void client_session::on_request_chunk_header(uint64_t size, error_code& ec) {
  // The declared size is known before the data: refuse at once rather than after forwarding.
  if (phase_ == phase::awaiting_body) {
    if (paused_stage().on_request_body(ex_, {}, size, true) != verdict::next) {
      refuse_body(ec);
    }
    return;
  }
  if (ex_.route->stages->reads_request_body() &&
      ex_.route->stages->run_request_body(ex_, {}, size, true) != verdict::next) {
    refuse_body(ec);
  }
}

void client_session::on_request_finish(error_code& ec) {
  if (phase_ != phase::awaiting_body && ex_.upstream_prepared) call_.end_body();
  ex_.request_done = true;
}

}  // namespace meridian::node
