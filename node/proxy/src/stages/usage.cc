// Stage: usage analytics (node/analytics) per consumer, API key, route and API version, when
// an exchange is over (every exchange: refused heads and local answers count too).
#include "meridian/analytics/usage.h"
#include "stage.h"

namespace meridian::node {
namespace {

class usage_stage final : public stage {
 public:
  explicit usage_stage(usage_recorder& usage) : stage(log_hook), usage_(usage) {}
  void on_log(const exchange& ex, log_context& ctx) const override {
    usage_event e;
    if (ex.route) {
      e.route = ex.route->cfg->name;
      e.version = ex.route->cfg->api_version;
    }
    e.consumer = ex.consumer;
    e.key_id = ex.api_key_id;
    e.status = ex.status;
    e.bytes = ex.body_bytes + ex.response_bytes;
    // A tunnel's lifetime is no request latency: it counts as a request of no time.
    e.latency_us = ex.tunnel ? 0 : static_cast<uint64_t>(ctx.elapsed.count());
    usage_.record(ctx.worker, e);
  }

 private:
  usage_recorder& usage_;
};

}  // namespace

std::unique_ptr<stage> make_usage(usage_recorder& usage) {
  return std::make_unique<usage_stage>(usage);
}

}  // namespace meridian::node
