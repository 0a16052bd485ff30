// Stage: the forwarding headers of every proxied request (SPEC): X-Forwarded-For (the client's
// list plus the peer), X-Forwarded-Proto, X-Forwarded-Host (the client's Host), Via (the
// client's protocol version) and X-Request-Id. The head writer renders them
// (write_upstream_head); this stage says what they are.
#include "stage.h"

namespace meridian::node {
namespace {

class forwarding_headers_stage final : public stage {
 public:
  forwarding_headers_stage() : stage(upstream_head_hook) {}
  void on_upstream_head(exchange& ex, upstream_head& h) const override {
    h.forwarded_host = ex.authority;
    h.client_ip = ex.client_ip;
    h.tls = ex.tls;
    h.version = ex.version;
    h.request_id = ex.request_id;
  }
};

}  // namespace

std::unique_ptr<stage> make_forwarding_headers() {
  return std::make_unique<forwarding_headers_stage>();
}

}  // namespace meridian::node
