// Stage: the route's request body limit (max_body_bytes, or limits.max_body_bytes). A declared
// Content-Length over it is refused before any byte is read; a chunked body is refused at the
// chunk whose announced size would pass it, before its data is forwarded. 413 either way.
#include "stage.h"

namespace meridian::node {
namespace {

class request_size_stage final : public stage {
 public:
  explicit request_size_stage(uint64_t limit) : stage(request_head | request_body), limit_(limit) {}

  verdict on_request_head(exchange& ex, stage_context& ctx) const override {
    if (!ex.content_length || *ex.content_length <= limit_) return verdict::next;
    ctx.stats.bad_requests.add();
    return refuse(ex);
  }
  verdict on_request_body(exchange& ex, std::string_view, uint64_t size, bool) const override {
    return ex.body_bytes <= limit_ && size <= limit_ - ex.body_bytes ? verdict::next : refuse(ex);
  }

 private:
  static verdict refuse(exchange& ex) {
    ex.local_status = 413;
    ex.local_code = "payload_too_large";
    ex.local_message = "request body exceeds the route's limit";
    return verdict::respond;
  }
  uint64_t limit_;
};

}  // namespace

std::unique_ptr<stage> make_request_size(uint64_t limit) {
  return std::make_unique<request_size_stage>(limit);
}

}  // namespace meridian::node
