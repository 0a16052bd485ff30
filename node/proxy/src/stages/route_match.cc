// Stage: the route match, last of the entry chain. Picks the most specific route for the
// request (SPEC's match semantics; the router in traffic/), or answers 404. The route's own
// chain runs next.
#include "stage.h"

namespace meridian::node {
namespace {

class route_match_stage final : public stage {
 public:
  route_match_stage() : stage(request_head) {}
  verdict on_request_head(exchange& ex, stage_context& ctx) const override {
    auto& views = ctx.header_scratch;
    views.clear();
    for (const auto& f : ex.fields) views.push_back({f.name, f.value});
    request_view rv{ex.method, ex.host_only, ex.path, ex.query,
                    std::span<const header_view>(views)};
    int index = ctx.snap.routes_index->match(rv);
    if (index < 0) {
      ctx.stats.no_route.add();
      ex.local_status = 404;
      ex.local_code = "not_found";
      ex.local_message = "no route matches this request";
      return verdict::respond;
    }
    ex.route = &ctx.snap.routes[static_cast<size_t>(index)];
    ex.upstream = ex.route->upstream;
    return verdict::next;
  }
};

}  // namespace

std::unique_ptr<stage> make_route_match() {
  return std::make_unique<route_match_stage>();
}

}  // namespace meridian::node
