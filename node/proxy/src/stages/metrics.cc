// Stage: the node's request counters and the route's latency histogram and byte counts, when
// an exchange is over (every exchange: refused heads and local answers included).
#include "stage.h"

namespace meridian::node {
namespace {

class metrics_stage final : public stage {
 public:
  metrics_stage() : stage(log_hook) {}
  void on_log(const exchange& ex, log_context& ctx) const override {
    ctx.stats.requests_total.add();
    // A tunnel's lifetime is no request latency, and its bytes have counters of their own.
    if (!ex.route || ex.tunnel) return;
    auto& st = ex.route->metrics->per_worker[ctx.worker];
    uint64_t us = static_cast<uint64_t>(ctx.elapsed.count());
    size_t b = 0;
    while (b < latency_bounds_us.size() && us > latency_bounds_us[b]) ++b;
    st.latency[b].add();
    st.latency_sum_us.add(us);
    st.request_bytes.add(ex.body_bytes);
    st.response_bytes.add(ex.response_bytes);
    if (ex.grpc_status >= 0 && ex.grpc_status < static_cast<int>(st.grpc_status.size())) {
      st.grpc_status[static_cast<size_t>(ex.grpc_status)].add();
    }
  }
};

}  // namespace

std::unique_ptr<stage> make_metrics() {
  return std::make_unique<metrics_stage>();
}

}  // namespace meridian::node
