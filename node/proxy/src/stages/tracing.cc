// Stage: distributed tracing (the `tracing` section). On the request head it joins the caller's
// trace (a valid traceparent: its trace id, its span as our parent, its sampled flag) or starts
// one (sampled at tracing.sampling), and has the upstream request carry a traceparent naming the
// upstream call's span. When the exchange is over, a sampled one becomes two spans handed to the
// node's span sink: the gateway's (server) and, when an upstream was called, the call's (client).
// tracestate passes through unchanged.
#include <chrono>
#include <random>

#include "stage.h"

namespace meridian::node {
namespace {

// A per-thread generator for ids (not for secrets): seeded from the random device once.
uint64_t next_id() {
  thread_local std::mt19937_64 rng{std::random_device{}()};
  uint64_t v;
  do v = rng();
  while (v == 0);
  return v;
}

int64_t unix_ns_now() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// The Unix time in ns at which steady time point t was, by the clocks' difference now.
int64_t unix_ns_at(std::chrono::steady_clock::time_point t) {
  auto ago = std::chrono::steady_clock::now() - t;
  return unix_ns_now() - std::chrono::duration_cast<std::chrono::nanoseconds>(ago).count();
}

class tracing_stage final : public stage {
 public:
  tracing_stage(span_sink& sink, double sampling, std::string node, std::string region)
      : stage(request_head | log_hook),
        sink_(sink),
        threshold_(sampling >= 1.0 ? UINT64_MAX
                                   : static_cast<uint64_t>(sampling * 18446744073709551615.0)),
        node_(std::move(node)),
        region_(std::move(region)) {}

  verdict on_request_head(exchange& ex, stage_context&) const override {
    auto& t = ex.trace;
    std::optional<trace_context> caller;
    for (const auto& f : ex.fields) {
      if (f.f == http::field::unknown && f.name.size() == 11 && iequals(f.name, "traceparent")) {
        caller = parse_traceparent(f.value);
        break;
      }
    }
    if (caller) {
      t.trace_id = caller->trace_id;
      t.parent_id = caller->parent_id;
      t.sampled = caller->sampled;  // parent-based: the caller decided
    } else {
      uint64_t a = next_id(), b = next_id();
      for (int i = 0; i < 8; ++i) {
        t.trace_id[i] = static_cast<uint8_t>(a >> (56 - 8 * i));
        t.trace_id[8 + i] = static_cast<uint8_t>(b >> (56 - 8 * i));
      }
      t.sampled = threshold_ == UINT64_MAX || (threshold_ != 0 && next_id() <= threshold_);
    }
    t.span_id = next_id();
    t.upstream_span_id = next_id();
    t.active = true;
    t.start_unix_ns = unix_ns_at(ex.started);
    ex.identity_headers.emplace_back("traceparent",
                                     format_traceparent(t.trace_id, t.upstream_span_id, t.sampled));
    return verdict::next;
  }

  void on_log(const exchange& ex, log_context&) const override {
    const auto& t = ex.trace;
    if (!t.active || !t.sampled) return;
    int64_t end = unix_ns_now();
    std::vector<span_record> spans;
    spans.reserve(2);
    span_record& s = spans.emplace_back();
    s.trace_id = t.trace_id;
    s.span_id = t.span_id;
    s.parent_id = t.parent_id;
    s.span_kind = span_record::kind::server;
    s.name = ex.route ? ex.access_method + " " + ex.route->cfg->name : ex.access_method;
    s.start_unix_ns = t.start_unix_ns;
    s.end_unix_ns = end;
    s.error = ex.status >= 500 || ex.status == 0;
    s.text = {{"http.request.method", ex.access_method},
              {"url.path", ex.access_path},
              {"meridian.node", node_},
              {"meridian.region", region_}};
    if (ex.route) s.text.emplace_back("meridian.route", ex.route->cfg->name);
    if (!ex.consumer.empty()) s.text.emplace_back("meridian.consumer", ex.consumer);
    s.text.emplace_back("client.address", std::string(ex.client_ip));
    s.numbers = {{"http.response.status_code", ex.status}};
    if (ex.grpc_status >= 0) s.numbers.emplace_back("rpc.grpc.status_code", ex.grpc_status);
    if (ex.target && ex.upstream_started != std::chrono::steady_clock::time_point()) {
      span_record& c = spans.emplace_back();
      c.trace_id = t.trace_id;
      c.span_id = t.upstream_span_id;
      c.parent_id = t.span_id;
      c.span_kind = span_record::kind::client;
      c.name = "upstream " + (ex.upstream ? ex.upstream->cfg->name : std::string("?"));
      c.start_unix_ns = unix_ns_at(ex.upstream_started);
      c.end_unix_ns = end;
      c.error = ex.status >= 500 || ex.status == 0;
      c.text = {{"server.address", ex.target->addr.to_string()},
                {"meridian.upstream", ex.upstream ? ex.upstream->cfg->name : std::string()}};
      c.numbers = {{"http.response.status_code", ex.status},
                   {"meridian.attempts", static_cast<int64_t>(ex.attempts) + 1}};
    }
    sink_.submit(std::move(spans));
  }

 private:
  span_sink& sink_;
  uint64_t threshold_;  // a new trace is sampled when a random 64-bit draw is at most this
  std::string node_;
  std::string region_;
};

}  // namespace

std::unique_ptr<stage> make_tracing(const snapshot& snap) {
  return std::make_unique<tracing_stage>(*snap.spans, snap.cfg.tracing->sampling, snap.cfg.node.id,
                                         snap.cfg.node.region);
}

}  // namespace meridian::node
