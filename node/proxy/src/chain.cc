#include "chain.h"

namespace meridian::node {

void chain::add(std::unique_ptr<stage> s) {
  if (s->hooks() & stage::request_head) request_head_.push_back(s.get());
  if (s->hooks() & stage::request_body) request_body_.push_back(s.get());
  if (s->hooks() & stage::upstream_head_hook) upstream_head_.push_back(s.get());
  if (s->hooks() & stage::response_head_hook) response_head_.push_back(s.get());
  if (s->hooks() & stage::response_body_hook) response_body_.push_back(s.get());
  if (s->hooks() & stage::log_hook) log_.push_back(s.get());
  stages_.push_back(std::move(s));
}

verdict chain::run_request_head(exchange& ex, stage_context& ctx, size_t from, size_t* at) const {
  for (size_t i = from; i < request_head_.size(); ++i) {
    verdict v = request_head_[i]->on_request_head(ex, ctx);
    if (v != verdict::next) {
      *at = i;
      return v;
    }
  }
  *at = request_head_.size();
  return verdict::next;
}

verdict chain::run_request_body(exchange& ex, std::string_view piece, uint64_t size,
                                bool announced) const {
  for (const stage* s : request_body_) {
    verdict v = s->on_request_body(ex, piece, size, announced);
    if (v != verdict::next) return v;
  }
  return verdict::next;
}

// The stages (one file each in stages/).
std::unique_ptr<stage> make_metrics();
std::unique_ptr<stage> make_access_log();
std::unique_ptr<stage> make_oauth_endpoints();
std::unique_ptr<stage> make_forwarding_headers();
std::unique_ptr<stage> make_route_match();
std::unique_ptr<stage> make_request_size(uint64_t limit);
std::unique_ptr<stage> make_authenticate();
std::unique_ptr<stage> make_rate_limit();
std::unique_ptr<stage> make_request_transform();
std::unique_ptr<stage> make_response_transform();
std::unique_ptr<stage> make_grpc_transcode();
std::unique_ptr<stage> make_tracing(const snapshot& snap);
std::unique_ptr<stage> make_usage(usage_recorder& usage);

namespace {
bool has_request_transforms(const route_runtime& r) {
  const route_config& c = *r.cfg;
  return r.rewrite || !c.strip_prefix.empty() || !c.query.add.empty() || !c.query.remove.empty() ||
         !c.query.rename.empty() || !c.request_headers.set.empty() ||
         !c.request_headers.add.empty();
}
bool has_response_transforms(const route_runtime& r) {
  const route_config& c = *r.cfg;
  return !r.response_drop.empty() || !c.response_headers.add.empty();
}
}  // namespace

// Every request, in this order. The log stages act only when the exchange is over (on every
// exchange, refused heads included); the OAuth endpoints answer their paths before any route
// is looked at; the route match ends the entry chain and hands over to the route's chain.
std::unique_ptr<const chain> build_entry_chain(const snapshot& snap) {
  auto c = std::make_unique<chain>();
  c->add(make_metrics());
  c->add(make_access_log());
  if (snap.usage) c->add(make_usage(*snap.usage));
  if (snap.spans && snap.cfg.tracing) c->add(make_tracing(snap));  // every exchange is traced
  if (snap.oauth && snap.cfg.oauth) c->add(make_oauth_endpoints());
  c->add(make_forwarding_headers());
  c->add(make_route_match());
  return c;
}

// After the entry chain, a route's request passes these stages in this order, then dispatch
// (balancing, breakers, retries, failover, fallbacks: session_upstream.cc). The response passes
// the response-head stages on its way back.
std::unique_ptr<const chain> build_chain(const route_runtime& route, const snapshot& snap) {
  auto c = std::make_unique<chain>();
  if (route.max_body_bytes) c->add(make_request_size(route.max_body_bytes));
  if (route.cfg->auth) c->add(make_authenticate());
  if (!route.limits.empty() && snap.limiter) c->add(make_rate_limit());
  if (has_request_transforms(route)) c->add(make_request_transform());
  if (route.transcoder) c->add(make_grpc_transcode());  // matches the client's path
  if (has_response_transforms(route)) c->add(make_response_transform());
  return c;
}

}  // namespace meridian::node
