// Stages: the route's request and response transforms. Request: the path (strip_prefix, then
// rewrite), the query (add, remove, rename) and headers (set, add; removed and set names are
// dropped from the client's copy). Response: headers (set, add; remove).
#include "stage.h"

namespace meridian::node {
namespace {

class request_transform_stage final : public stage {
 public:
  request_transform_stage() : stage(upstream_head_hook) {}
  void on_upstream_head(exchange& ex, upstream_head& h) const override {
    const route_runtime& r = *ex.route;
    h.path = upstream_path(h.path, *r.cfg, r.rewrite ? &*r.rewrite : nullptr, &ex.upstream_path);
    h.query_rules = &r.cfg->query;
    h.set = r.cfg->request_headers.set;
    h.add = r.cfg->request_headers.add;
  }
};

class response_transform_stage final : public stage {
 public:
  response_transform_stage() : stage(response_head_hook) {}
  void on_response_head(const exchange& ex, response_head& h) const override {
    const route_runtime& r = *ex.route;
    h.drop = r.response_drop;
    h.set = r.cfg->response_headers.set;
    h.add = r.cfg->response_headers.add;
  }
};

}  // namespace

std::unique_ptr<stage> make_request_transform() {
  return std::make_unique<request_transform_stage>();
}
std::unique_ptr<stage> make_response_transform() {
  return std::make_unique<response_transform_stage>();
}

}  // namespace meridian::node
