// exchange_flow: the stages, pauses and log hooks of one exchange, whatever its codec. See
// exchange_flow.h.
#include "exchange_flow.h"

#include "proxy_internal.h"

namespace meridian::node {

exchange_flow::exchange_flow(worker& w, call_sink& sink, std::shared_ptr<const snapshot> snap)
    : w_(w), snap_(std::move(snap)), call_(w, sink, ex_) {}

exchange_flow::~exchange_flow() = default;

stage_context exchange_flow::make_stage_context() {
  return {*snap_, w_.now, w_.index, w_.api_key_failures, w_.stats, *this, header_views_, &snap_};
}

verdict exchange_flow::run_stages(chain_position from) {
  stage_context ctx = make_stage_context();
  size_t at = 0;
  verdict v = verdict::next;
  if (!from.in_route) {
    v = snap_->entry->run_request_head(ex_, ctx, from.at, &at);
    if (v != verdict::next) {
      pause_at_ = {false, at};
      return v;
    }
    from = {true, 0};
  }
  v = ex_.route->stages->run_request_head(ex_, ctx, from.at, &at);
  if (v == verdict::pause) pause_at_ = {true, at};
  if (v == verdict::next) {
    call_.prepare(*snap_);
    on_flow_prepared();
  }
  return v;
}

void exchange_flow::act_on(verdict v) {
  pause_kind kind = std::exchange(pause_kind_, pause_kind::none);
  switch (v) {
    case verdict::next:
      on_flow_calling();
      call_.start();
      return;
    case verdict::respond:
      answer_local();
      return;
    case verdict::pause:
      break;
  }
  switch (kind) {
    case pause_kind::timer:
      paused_ = true;
      on_flow_paused(w_.now + static_cast<int64_t>(pause_delay_ms_) + 5000);
      if (!delay_timer_) delay_timer_ = std::make_unique<asio::steady_timer>(w_.ioc);
      delay_timer_->expires_after(std::chrono::milliseconds(pause_delay_ms_));
      delay_timer_->async_wait([self = flow_owner(), id = pause_id_](const error_code& ec) {
        if (ec || !self->paused_ || self->pause_id_ != id) return;
        self->resume_stages(verdict::next);
      });
      return;
    case pause_kind::body:
      if (ex_.request_done) {
        end_awaited_body();
      } else {
        on_flow_awaiting_body();  // within the head's deadline
      }
      return;
    case pause_kind::handle:
      paused_ = true;
      on_flow_paused(w_.now + pause_deadline_ms_);
      return;
    case pause_kind::none:
      // A stage paused without saying how it comes back: a bug, answered rather than hung.
      ex_.local_status = 500;
      ex_.local_code = "internal_error";
      ex_.local_message = "the request was held with no way to resume it";
      answer_local();
      return;
  }
}

void exchange_flow::resume_stages(verdict v) {
  paused_ = false;
  ++pause_id_;  // this pause is over
  on_flow_resumed();
  if (v == verdict::next) {
    chain_position next = pause_at_;
    ++next.at;
    v = run_stages(next);
  }
  act_on(v);
  on_flow_continue();
}

void exchange_flow::end_awaited_body() {
  on_flow_resumed();
  stage_context ctx = make_stage_context();
  verdict v = paused_stage().on_request_end(ex_, ctx);
  if (v == verdict::next) {
    chain_position next = pause_at_;
    ++next.at;
    v = run_stages(next);
  }
  act_on(v);
}

const stage& exchange_flow::paused_stage() const {
  const chain& c = pause_at_.in_route ? *ex_.route->stages : *snap_->entry;
  return c.request_head_stage(pause_at_.at);
}

void exchange_flow::expire_pause() {
  paused_ = false;
  ++pause_id_;
  on_flow_resumed();
  if (!ex_.local_status && !ex_.local_reply.status) {
    ex_.local_status = 503;
    ex_.local_code = "temporarily_unavailable";
    ex_.local_message = "the request could not be handled in time";
  }
  answer_local();
}

void exchange_flow::refuse_body_answer() {
  w_.stats.bad_requests.add();
  call_.abandon();
  if (!ex_.local_status && !ex_.local_reply.status) {
    ex_.local_status = 413;
    ex_.local_code = "payload_too_large";
    ex_.local_message = "request body exceeds the limit";
  }
}

void exchange_flow::end_flow() {
  paused_ = false;
  ++pause_id_;
  call_.abandon();
  if (delay_timer_) delay_timer_->cancel();
}

void exchange_flow::renew_flow() {
  exchange::renew(ex_);
  pause_kind_ = pause_kind::none;
}

void exchange_flow::resume_after(uint64_t ms) {
  pause_kind_ = pause_kind::timer;
  pause_delay_ms_ = ms;
  ++pause_id_;
}

void exchange_flow::await_body() {
  pause_kind_ = pause_kind::body;
  ++pause_id_;
}

resume_handle exchange_flow::suspend(int64_t deadline_ms) {
  pause_kind_ = pause_kind::handle;
  pause_deadline_ms_ = deadline_ms;
  return resume_handle(flow_owner(), ++pause_id_);
}

void exchange_flow::deliver_resume(std::shared_ptr<resumable> self, uint64_t pause,
                                   std::function<verdict(exchange&)> fn) {
  // Any thread. Everything the handle held moves into the mailbox job, so the flow (and what fn
  // captured) is released on this flow's worker. The worker's io_context runs without locks: no
  // other thread may post to it.
  w_.deliver([self = std::static_pointer_cast<exchange_flow>(std::move(self)), pause,
              fn = std::move(fn)]() mutable {
    if (!fn || !self->paused_ || self->pause_id_ != pause) return;
    self->resume_stages(fn(self->ex_));
  });
}

void exchange_flow::record_done() {
  log_context ctx{
      std::chrono::duration_cast<std::chrono::microseconds>(steady_clock::now() - ex_.started),
      w_.index, w_.stats, w_.access_log};
  snap_->entry->run_log(ex_, ctx);
  if (ex_.route) ex_.route->stages->run_log(ex_, ctx);
}

const char* exchange_flow::take_target(std::string_view target, std::string_view host) {
  // Split the target into path and query; accept absolute-form (RFC 9112 §3.2.2).
  if (target.size() > 7 &&
      (target.substr(0, 7) == "http://" || target.substr(0, 8) == "https://")) {
    auto rest = target.substr(target.find("://") + 3);
    auto slash = rest.find('/');
    host = rest.substr(0, slash);
    target = slash == std::string_view::npos ? std::string_view("/") : rest.substr(slash);
  }
  if (target.empty() || target.front() != '/') {
    if (!(ex_.verb == http::verb::options && target == "*")) {
      return "request target must be origin-form";
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
    if (st != path_status::ok) return to_string(st);
    path = ex_.normalized_path;
  }
  std::string_view host_only = host;
  if (!host_only.empty() && host_only.front() == '[') {
    auto end = host_only.find(']');
    host_only = host_only.substr(0, end == std::string_view::npos ? host_only.size() : end + 1);
  } else if (auto colon = host_only.rfind(':'); colon != std::string_view::npos) {
    host_only = host_only.substr(0, colon);
  }
  ex_.authority = host;
  ex_.host_only = host_only;
  ex_.path = path;
  ex_.query = query;
  ex_.has_query = qpos != std::string_view::npos;
  return nullptr;
}

void exchange_flow::make_request_id(std::span<const field_view> fields) {
  for (auto& f : fields) {
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

}  // namespace meridian::node
