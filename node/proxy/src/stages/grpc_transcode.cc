// Stage: REST to gRPC (routes[].grpc_transcode). A request whose method and path match a
// google.api.http binding of the route's descriptor set becomes a call of the bound gRPC method:
// the stage holds the exchange until the JSON body is in (at most the route's body limit), builds
// the request message from the path, the query and the body, and leaves it in the exchange; the
// call (upstream_call_h2.cc) sends it as a gRPC request and turns the answer back into JSON. A
// gRPC request on the route passes through as gRPC; a path no binding matches is a 404.
#include "stage.h"

namespace meridian::node {
namespace {

constexpr uint64_t default_max_body = 4 * 1024 * 1024;

class grpc_transcode_stage final : public stage {
 public:
  grpc_transcode_stage() : stage(request_head) {}

  verdict on_request_head(exchange& ex, stage_context& ctx) const override {
    if (ex.grpc) return verdict::next;  // already gRPC (or gRPC-Web): proxied as it is
    const transcode::transcoder& t = *ex.route->transcoder;
    auto match = t.match(ex.method, ex.path);
    if (!match) {
      ex.local_status = 404;
      ex.local_code = "not_found";
      ex.local_message = "no gRPC method of this route is bound to this method and path";
      return verdict::respond;
    }
    if (t.client_streaming(*match)) {
      ex.local_status = 501;
      ex.local_code = "not_implemented";
      ex.local_message = "a client-streaming gRPC method cannot be called as REST";
      return verdict::respond;
    }
    auto job = std::make_unique<exchange::transcode_job>();
    job->transcoder = &t;
    job->match = std::move(*match);
    job->streaming = t.server_streaming(job->match);
    job->max_body = ex.route->max_body_bytes ? ex.route->max_body_bytes : default_max_body;
    ex.transcode = std::move(job);
    if (!ex.has_body || ex.request_done) return build(ex);
    ex.transcode->body.reserve(
        std::min<uint64_t>(ex.content_length.value_or(0), ex.transcode->max_body));
    // The body comes to on_request_body, then on_request_end builds the message.
    ctx.pause.await_body();
    return verdict::pause;
  }

  verdict on_request_body(exchange& ex, std::string_view piece, uint64_t size,
                          bool announced) const override {
    auto& job = *ex.transcode;
    if (job.body.size() + size > job.max_body) {
      ex.local_status = 413;
      ex.local_code = "payload_too_large";
      ex.local_message = "the JSON body exceeds the route's limit";
      return verdict::respond;
    }
    if (!announced) job.body.append(piece);
    return verdict::next;
  }

  verdict on_request_end(exchange& ex, stage_context&) const override { return build(ex); }

 private:
  // Builds the gRPC request message; a client's mistake is a 400 naming it.
  static verdict build(exchange& ex) {
    auto& job = *ex.transcode;
    std::string error;
    if (!job.transcoder->build_request(job.match, ex.has_query ? ex.query : std::string_view(),
                                       job.body, &job.frame, &error)) {
      ex.local_status = 400;
      ex.local_code = "invalid_argument";
      ex.local_message_storage = std::move(error);
      ex.local_message = ex.local_message_storage.c_str();
      return verdict::respond;
    }
    job.body.clear();
    job.body.shrink_to_fit();
    return verdict::next;
  }
};

}  // namespace

std::unique_ptr<stage> make_grpc_transcode() {
  return std::make_unique<grpc_transcode_stage>();
}

}  // namespace meridian::node
