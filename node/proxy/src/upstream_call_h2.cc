// upstream_call towards HTTP/2 upstreams (protocol h2c or h2): the request head as a header
// list, the body as DATA frames within the stream's window, the response's heads, data and
// trailers back through the same response path as HTTP/1.1's. See upstream_call.h.
#include "proxy_internal.h"

namespace meridian::node {

namespace {

// What does not go to an HTTP/2 upstream: connection-specific fields (TE is handled by the
// caller), Host (it becomes :authority) and Expect (100-continue is between the client and the
// gateway).
bool not_for_h2(std::string_view name) {
  return is_connection_specific(name) || iequals(name, "host") || iequals(name, "expect");
}

void add_field(std::string& text, std::vector<std::array<uint32_t, 4>>& at, std::string_view name,
               std::string_view value) {
  auto n = static_cast<uint32_t>(text.size());
  text.append(name);
  for (size_t i = n; i < text.size(); ++i) {
    char& c = text[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c + ('a' - 'A'));
  }
  auto v = static_cast<uint32_t>(text.size());
  text.append(value);
  at.push_back({n, static_cast<uint32_t>(name.size()), v, static_cast<uint32_t>(value.size())});
}

}  // namespace

void upstream_call::h2_prepare() {
  // prepare() wrote an HTTP/1.1 head (every stage's changes in it) into out_: the same head as
  // an HTTP/2 header list. It is text the gateway wrote: one request line, then "name: value"
  // lines, each ending in CRLF.
  if (!h2_) h2_ = std::make_unique<h2_leg>();
  auto& l = *h2_;
  l.head_text.clear();
  l.head_at.clear();
  // Nothing of the last exchange's gRPC-Web state carries over.
  l.web_in = {};
  l.web_out = {};
  l.web_scratch.clear();
  l.web_trailers_sent = false;
  l.web_bad = false;
  std::string_view head = out_.view();
  size_t eol = head.find("\r\n");
  std::string_view line = head.substr(0, eol);
  size_t sp1 = line.find(' ');
  size_t sp2 = line.rfind(' ');
  std::string_view target = line.substr(sp1 + 1, sp2 - sp1 - 1);
  std::string_view authority;
  std::vector<std::pair<std::string_view, std::string_view>> fields;
  size_t at = eol + 2;
  while (at < head.size()) {
    size_t end = head.find("\r\n", at);
    if (end == std::string_view::npos || end == at) break;
    std::string_view f = head.substr(at, end - at);
    at = end + 2;
    size_t colon = f.find(':');
    if (colon == std::string_view::npos) continue;
    std::string_view name = f.substr(0, colon);
    std::string_view value = trim(f.substr(colon + 1));
    if (iequals(name, "host")) {
      authority = value;
      continue;
    }
    if (iequals(name, "te")) {
      if (has_token(value, "trailers")) fields.emplace_back("te", "trailers");
      continue;
    }
    if (not_for_h2(name)) continue;
    if (ex_.transcode && (iequals(name, "content-type") || iequals(name, "content-length"))) {
      continue;  // the body is the gRPC message now
    }
    if (ex_.grpc_web) {
      // gRPC-Web becomes gRPC (PROTOCOL-WEB.md): the content type, and a body whose length
      // changes when it was base64.
      if (iequals(name, "content-type")) {
        std::string_view grpc = grpc_content_type_for_web(value);
        if (!grpc.empty()) value = grpc;
      } else if (iequals(name, "content-length")) {
        continue;
      }
    }
    fields.emplace_back(name, value);
  }
  auto* job = ex_.transcode.get();
  if (job) target = job->transcoder->grpc_path(job->match);
  add_field(l.head_text, l.head_at, ":method", job ? std::string_view("POST") : ex_.method);
  add_field(l.head_text, l.head_at, ":scheme", ex_.upstream->cfg->tls ? "https" : "http");
  add_field(l.head_text, l.head_at, ":authority", authority);
  add_field(l.head_text, l.head_at, ":path", target);
  for (auto& [name, value] : fields) add_field(l.head_text, l.head_at, name, value);
  if (job) {
    add_field(l.head_text, l.head_at, "content-type", "application/grpc");
    add_field(l.head_text, l.head_at, "te", "trailers");
    out_.clear();
    out_.append(job->frame);
    l.body_end = true;  // the whole message is here
    return;
  }
  // The client's TE: trailers (a gRPC client's) is hop-by-hop for HTTP/1.1 and so not in the
  // head written above; HTTP/2 keeps it.
  bool te_trailers = ex_.grpc_web;  // gRPC needs it; a browser cannot send it
  for (const auto& f : ex_.fields)
    te_trailers |= iequals(f.name, "te") && has_token(f.value, "trailers");
  if (te_trailers) add_field(l.head_text, l.head_at, "te", "trailers");
  out_.clear();
  l.body_end = !ex_.has_body;
}

void upstream_call::h2_dispatch(const upstream_runtime& up) {
  auto conn = w_.h2_connection_for(ex_.target, up, *ex_.picked);
  if (!conn) {
    w_.stats.upstream_overflows.add();
    release(false);
    fail_with(503, "upstream_overloaded", "connection limit reached for upstream " + up.cfg->name);
    return;
  }
  auto& l = *h2_;
  if (auto* job = ex_.transcode.get()) {
    // A retry sends the message again and reads a new answer.
    out_.clear();
    out_.append(job->frame);
    l.body_end = true;
    job->reader = transcode::frame_reader(4 * 1024 * 1024);
    job->got_message = job->ended = false;
    job->json.clear();
    job->grpc_message.clear();
    ex_.grpc_status = -1;
  }
  l.conn = conn;
  l.stream = 0;
  l.deferred = l.end_stream = l.head_done = false;
  l.owed = 0;
  l.fields_text.clear();
  l.fields_at.clear();
  state_ = state::connecting;
  deadline_ = w_.now + up.cfg->timeouts.connect.count();
  conn->attach(self());
}

int32_t upstream_call::h2_submit(h2_upstream& conn) {
  auto& l = *h2_;
  // Not the HTTP/1.1 sense of reuse (a pooled connection the target may have closed): a
  // broken stream on a live connection is the target's doing. Only a refusal is free.
  ex_.reused_connection = false;
  refused_stream_ = false;
  std::vector<nghttp2_nv> nv;
  nv.reserve(l.head_at.size());
  auto* base = reinterpret_cast<uint8_t*>(l.head_text.data());
  for (auto& a : l.head_at) {
    nv.push_back({base + a[0], base + a[2], a[1], a[3], NGHTTP2_NV_FLAG_NONE});
  }
  int32_t id = conn.submit_request(nv, ex_.has_body || ex_.transcode);
  if (id < 0) return id;
  l.stream = id;
  l.body_sent = false;
  state_ = state::sending;
  deadline_ = w_.now + request_timeout();
  if (ex_.has_body) ex_.body_started = true;  // the codec hands the body over from now on
  if (ex_.has_body && !l.body_end) {          // (a transcoded call's message is whole)
    // The body goes as the codec hands it over; after this call returns (the connection files
    // the stream first).
    asio::post(w_.ioc, [this, keep = sink_.keep_alive(), conn = l.conn, id] {
      if (h2_ && h2_->stream == id && !h2_->body_end) sink_.on_call_room();
    });
  }
  return id;
}

void upstream_call::h2_on_refused() {
  auto keep = self();
  if (h2_) h2_->stream = 0;
  if (state_ == state::idle) return;
  refused_stream_ = true;
  ex_.reused_connection = true;  // retried once at no cost to the target
  ex_.status = 0;
  failed(failure::reset);
}

void upstream_call::h2_on_response_end(bool request_open) {
  if (!h2_) return;
  h2_->end_stream = true;
  if (!request_open || !h2_->head_done || ex_.transcode || state_ != state::sending) return;
  // Answered before the whole request went up: the call is over and its stream is reset.
  auto keep = self();
  finish();
}

long upstream_call::h2_body_ready(size_t length, uint32_t* flags) {
  auto& l = *h2_;
  size_t n = std::min(length, out_.size());
  if (n == 0 && !l.body_end) {
    l.deferred = true;
    return NGHTTP2_ERR_DEFERRED;
  }
  *flags |= NGHTTP2_DATA_FLAG_NO_COPY;
  if (l.body_end && n == out_.size()) *flags |= NGHTTP2_DATA_FLAG_EOF;
  return static_cast<long>(n);
}

bool upstream_call::h2_send_body(byte_buffer& out, const uint8_t* frame_head, size_t length) {
  if (length) h2_->body_sent = true;  // from here a retry cannot replay the body
  out.append(reinterpret_cast<const char*>(frame_head), 9);
  out.append(out_.data(), length);
  out_.consume(length);
  if (!ex_.response_head_sent) deadline_ = w_.now + request_timeout();
  return !h2_->body_end && out_.size() < high_water;
}

// --- the response -----------------------------------------------------------------------------

void upstream_call::h2_on_field(std::string_view name, std::string_view value) {
  auto& l = *h2_;
  if (l.fields_text.size() + name.size() + value.size() > 64 * 1024 ||
      l.fields_at.size() >= max_fields) {
    ex_.response_malformed = true;  // refused when the block ends
    return;
  }
  add_field(l.fields_text, l.fields_at, name, value);
}

void upstream_call::h2_on_headers(bool end_stream) {
  auto& l = *h2_;
  if (end_stream) l.end_stream = true;
  fields_.clear();
  int status = 0;
  bool bad = ex_.response_malformed;
  bool length_known = false;
  for (auto& a : l.fields_at) {
    std::string_view name(l.fields_text.data() + a[0], a[1]);
    std::string_view value(l.fields_text.data() + a[2], a[3]);
    if (!name.empty() && name.front() == ':') {
      // nghttp2 has checked the pseudo-fields (one :status, three digits, before the others).
      if (name == ":status" && !l.head_done) {
        status = (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0');
      }
      continue;
    }
    http::field f = http::string_to_field(name);
    if (f == http::field::content_length) length_known = true;
    fields_.push_back({f, name, value});
  }
  if (ex_.transcode) {
    transcode_headers(l.head_done ? 0 : status, bad);
    return;
  }
  if (l.head_done) {
    // Trailers.
    if (ex_.grpc) {
      for (const auto& f : fields_) {
        if (iequals(f.name, "grpc-status")) ex_.grpc_status = parse_grpc_status(f.value);
      }
    }
    if (bad) {
      // dropped
    } else if (ex_.grpc_web) {
      h2_web_end(fields_);
    } else {
      sink_.on_call_trailers(fields_);
    }
    fields_.clear();
    l.fields_text.clear();
    l.fields_at.clear();
    return;
  }
  if (bad || status < 100) {
    if (!ex_.response_head_sent) ex_.status = 0;
    auto keep = self();
    failed(failure::malformed);
    return;
  }
  if (status / 100 == 1) {
    // Interim responses are not relayed (an HTTP/2 101 does not exist), nor kept as the status.
    l.fields_text.clear();
    l.fields_at.clear();
    return;
  }
  ex_.status = status;
  ex_.reason = {};
  ex_.response_version = 20;
  auto keep = self();
  ex_.response_bodyless = l.end_stream;
  if (!deliver_head(true, length_known, false, false)) {
    failed(failure::reset);  // a status to retry: the stream is reset, the request goes again
    return;
  }
  l.head_done = true;
  // fields_ pointed into fields_text for the head's sake only.
  fields_.clear();
  l.fields_text.clear();
  l.fields_at.clear();
  if (l.end_stream && state_ != state::idle) sink_.flush_response();
}

void upstream_call::h2_on_data(std::string_view piece) {
  auto& l = *h2_;
  if (!l.head_done || state_ != state::sending) return;
  if (ex_.transcode) {
    auto conn = l.conn;
    int32_t stream = l.stream;
    uint64_t epoch = epoch_;
    transcode_data(piece);
    if (epoch != epoch_ || !h2_ || !h2_->conn) return;  // answered (an error) meanwhile
    if (sink_.sink_full() || response_paused_) {
      h2_->owed += piece.size();  // a server stream waits for its slow client
      response_paused_ = true;
    } else {
      conn->consume(stream, piece.size());
    }
    return;
  }
  ex_.response_bytes += piece.size();
  if (ex_.route->stages->reads_response_body()) ex_.route->stages->run_response_body(ex_, piece);
  h2_body_to_sink(piece);
  if (!h2_ || !l.conn) return;
  touch();
  if (sink_.sink_full() || response_paused_) {
    // The window stays shut by these bytes until the sink drains (resume_response).
    l.owed += piece.size();
    response_paused_ = true;
  } else {
    l.conn->consume(l.stream, piece.size());
  }
}

void upstream_call::h2_body_to_sink(std::string_view piece) {
  if (!ex_.grpc_web_text) {
    sink_.on_call_body(piece);
    return;
  }
  auto& scratch = h2_->web_scratch;
  scratch.clear();
  h2_->web_out.feed(piece, scratch);
  if (!scratch.empty()) sink_.on_call_body(scratch);
}

void upstream_call::h2_web_end(std::span<const field_view> trailers) {
  auto& l = *h2_;
  if (l.web_trailers_sent) return;
  l.web_trailers_sent = true;
  std::string frame;
  append_grpc_web_trailer_frame(frame, trailers);
  if (!ex_.grpc_web_text) {
    sink_.on_call_body(frame);
    return;
  }
  auto& scratch = l.web_scratch;
  scratch.clear();
  l.web_out.feed(frame, scratch);
  l.web_out.finish(scratch);
  sink_.on_call_body(scratch);
}

void upstream_call::h2_on_close(uint32_t error_code) {
  auto keep = self();
  auto& l = *h2_;
  l.stream = 0;  // closed: nothing to reset
  if (state_ == state::idle) return;
  if (error_code == NGHTTP2_NO_ERROR && l.head_done && l.end_stream && ex_.transcode &&
      !ex_.transcode->ended) {
    ex_.grpc_status = 2;  // the stream ended without a grpc-status
    ex_.transcode->grpc_message = "the upstream ended the call without a grpc-status";
    uint64_t epoch = epoch_;
    transcode_end();
    // An error answer may have ended this exchange and started the next on this call.
    if (epoch != epoch_ || state_ == state::idle) return;
  }
  if (error_code == NGHTTP2_NO_ERROR && l.head_done && l.end_stream) {
    // A gRPC-Web body ends with its trailer frame; a response that had none (a trailers-only
    // one carried its status in the head) still ends a text body's last group.
    if (ex_.grpc_web && !ex_.response_bodyless && !l.web_trailers_sent && ex_.grpc_web_text) {
      std::string& scratch = l.web_scratch;
      scratch.clear();
      l.web_out.finish(scratch);
      if (!scratch.empty()) sink_.on_call_body(scratch);
    }
    finish();
    return;
  }
  if (error_code == NGHTTP2_REFUSED_STREAM && !l.head_done) {
    // The upstream did not process the stream (RFC 9113 section 8.7): always safe to send again,
    // and no fault of the target's (as a pooled connection it had closed).
    h2_on_refused();
    return;
  }
  failed(error_code == NGHTTP2_PROTOCOL_ERROR ? failure::malformed : failure::reset);
}

// --- grpc_transcode -----------------------------------------------------------------------------

namespace {

std::string percent_decode(std::string_view v) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    auto hex = [](char c) {
      return c >= '0' && c <= '9'   ? c - '0'
             : c >= 'A' && c <= 'F' ? c - 'A' + 10
             : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                    : -1;
    };
    if (v[i] == '%' && i + 2 < v.size() + 0 && hex(v[i + 1]) >= 0 && hex(v[i + 2]) >= 0) {
      out.push_back(static_cast<char>(hex(v[i + 1]) * 16 + hex(v[i + 2])));
      i += 2;
    } else {
      out.push_back(v[i]);
    }
  }
  return out;
}

}  // namespace

void upstream_call::transcode_headers(int status, bool bad) {
  auto& l = *h2_;
  auto& job = *ex_.transcode;
  for (const auto& f : fields_) {
    if (iequals(f.name, "grpc-status")) ex_.grpc_status = parse_grpc_status(f.value);
    if (iequals(f.name, "grpc-message")) job.grpc_message = percent_decode(f.value);
  }
  fields_.clear();
  l.fields_text.clear();
  l.fields_at.clear();
  auto keep = self();
  if (!l.head_done) {
    if (bad || status < 100) {
      ex_.status = 0;
      failed(failure::malformed);
      return;
    }
    if (status / 100 == 1) return;
    if (status != 200) {
      // Not a gRPC answer (a proxy or a server that does not speak gRPC on this path).
      ex_.grpc_status = -1;
      transcode_error(14, "the upstream answered HTTP " + std::to_string(status) +
                              " instead of a gRPC response");
      return;
    }
    l.head_done = true;
    if (ex_.grpc_status < 0 && job.streaming) transcode_head(true, 0);
  }
  if (ex_.grpc_status >= 0) transcode_end();  // trailers, or a trailers-only answer
}

void upstream_call::transcode_head(bool streaming, size_t length) {
  auto& job = *ex_.transcode;
  ex_.status = 200;
  ex_.reason = {};
  job.fields.clear();
  job.fields.push_back({http::field::content_type, "content-type",
                        streaming ? "application/x-ndjson" : "application/json"});
  if (!streaming) {
    job.length = std::to_string(length);
    job.fields.push_back({http::field::content_length, "content-length", job.length});
  }
  fields_.assign(job.fields.begin(), job.fields.end());
  ex_.response_bodyless = false;
  deliver_head(true, !streaming, false, false);
  fields_.clear();
}

void upstream_call::transcode_data(std::string_view piece) {
  auto& job = *ex_.transcode;
  if (job.ended) return;
  auto keep = self();
  if (!job.reader.feed(piece)) {
    ex_.grpc_status = 13;
    return transcode_error(13, "the upstream's response is not gRPC: " + job.reader.error());
  }
  while (job.reader.next(&job.message)) {
    std::string json, error;
    if (!job.transcoder->response_to_json(job.match, job.message, &json, &error)) {
      ex_.grpc_status = 13;
      return transcode_error(13, "the upstream's response message: " + error);
    }
    if (job.streaming) {
      json.push_back('\n');
      ex_.response_bytes += json.size();
      sink_.on_call_body(json);
      touch();
    } else if (job.got_message) {
      ex_.grpc_status = 13;
      return transcode_error(13, "the upstream sent more than one message to a unary call");
    } else {
      job.json = std::move(json);
      job.got_message = true;
    }
  }
  if (job.streaming) sink_.flush_response();
}

void upstream_call::transcode_end() {
  auto& job = *ex_.transcode;
  if (job.ended) return;
  job.ended = true;
  int code = ex_.grpc_status < 0 ? 2 : ex_.grpc_status;
  if (ex_.response_head_sent) {
    // A server stream already under way: its end, or its error as the last line.
    if (code != 0) {
      byte_buffer line;
      line.append("{\"error\":");
      std::string name(transcode::grpc_code_name(code));
      for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      append_json_string(line, name);
      line.append(",\"message\":");
      append_json_string(line, job.grpc_message);
      line.append(",\"grpc_code\":");
      line.append_decimal(static_cast<uint64_t>(code));
      line.append("}\n");
      ex_.response_bytes += line.size();
      sink_.on_call_body(line.view());
      sink_.flush_response();
    }
    return;
  }
  if (code == 0 && !job.streaming && !job.got_message) {
    ex_.grpc_status = code = 13;
    job.grpc_message = "the upstream sent no response message";
  }
  if (code != 0) return transcode_error(code, job.grpc_message);
  std::string body = std::move(job.json);
  transcode_head(job.streaming, body.size());
  if (state_ == state::idle) return;
  if (!body.empty()) {
    ex_.response_bytes += body.size();
    sink_.on_call_body(body);
  }
  sink_.flush_response();
}

void upstream_call::transcode_error(int grpc_status, std::string_view message) {
  if (ex_.transcode) ex_.transcode->ended = true;
  if (ex_.response_head_sent) {
    // Too late for a status: the stream is cut.
    failed(failure::malformed);
    return;
  }
  if (ex_.grpc_status < 0) ex_.grpc_status = grpc_status;
  std::string name(transcode::grpc_code_name(grpc_status));
  for (char& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  byte_buffer body;
  body.append("{\"error\":");
  append_json_string(body, name);
  body.append(",\"message\":");
  append_json_string(body, message);
  body.append(",\"grpc_code\":");
  body.append_decimal(static_cast<uint64_t>(grpc_status));
  body.append(",\"request_id\":");
  append_json_string(body, ex_.request_id);
  body.append("}");
  ex_.local_reply = {
      transcode::http_status_for(grpc_status), "application/json", std::string(body.view()), {}};
  if (ex_.target) ex_.target->consecutive_failures.store(0, std::memory_order_relaxed);
  release(false);
  sink_.on_call_failed();
}

void upstream_call::h2_on_connection_failed(bool connect_failure) {
  auto keep = self();
  if (h2_) h2_->stream = 0;
  if (state_ == state::idle) return;
  failed(connect_failure ? failure::connect : failure::reset);
}

}  // namespace meridian::node
