// Stage: the OAuth 2.0 endpoints of the node's authority (token, introspect, revoke,
// authorize), answered by the gateway itself before any route is looked at. The stage holds
// the exchange until the form body is in (at most 16 KiB), then answers on the worker, or,
// for a password check (Argon2id, tens of ms), on the authority's thread: the exchange waits
// suspended and comes back with the answer. At most max_checks_per_address password checks a
// minute from one address (429 with Retry-After), and a bounded queue of them (503).
#include <chrono>

#include "stage.h"

namespace meridian::node {
namespace {

constexpr size_t max_body = 16 * 1024;

int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

void set_reply(exchange& ex, oauth_authority::reply r) {
  ex.local_reply.status = r.status;
  ex.local_reply.content_type = std::move(r.content_type);
  ex.local_reply.body = std::move(r.body);
  ex.local_reply.headers = std::move(r.headers);
}

class oauth_endpoints_stage final : public stage {
 public:
  oauth_endpoints_stage() : stage(request_head | request_body) {}

  verdict on_request_head(exchange& ex, stage_context& ctx) const override {
    const auto& o = *ctx.snap.cfg.oauth;
    using endpoint = oauth_authority::endpoint;
    endpoint kind;
    if (ex.path == o.token_path) {
      kind = endpoint::token;
    } else if (ex.path == o.introspect_path) {
      kind = endpoint::introspect;
    } else if (ex.path == o.revoke_path) {
      kind = endpoint::revoke;
    } else if (ex.path == o.authorize_path) {
      kind = endpoint::authorize;
    } else {
      return verdict::next;
    }
    bool get =
        kind == endpoint::authorize && (ex.verb == http::verb::get || ex.verb == http::verb::head);
    if (ex.verb != http::verb::post && !get) {
      ex.local_status = 405;
      ex.local_code = "method_not_allowed";
      ex.local_message = kind == endpoint::authorize
                             ? "the authorization endpoint takes GET or POST"
                             : "OAuth endpoints take POST";
      return verdict::respond;
    }
    ex.oauth.kind = kind;
    ex.oauth.post = !get;
    ex.oauth.query.assign(ex.query);
    for (const auto& f : ex.fields) {
      if (f.f == http::field::authorization) {
        ex.oauth.authorization.assign(trim(f.value));
        break;
      }
    }
    ctx.pause.await_body();
    return verdict::pause;
  }

  verdict on_request_body(exchange& ex, std::string_view piece, uint64_t size,
                          bool announced) const override {
    if (ex.oauth.body.size() + size > max_body) {
      refuse_size(ex);
      return verdict::respond;
    }
    ex.oauth.body.append(piece);
    return verdict::next;
  }

  verdict on_request_end(exchange& ex, stage_context& ctx) const override {
    const oauth_authority* authority = ctx.snap.oauth;
    // The context points into the snapshot: the session keeps it while the exchange lives, and a
    // password check on the authority's thread keeps it too (the exchange may be answered at its
    // deadline and the snapshot retired while the check still runs).
    oauth_authority::context octx{&*ctx.snap.cfg.oauth, ctx.snap.api_keys.get(),
                                  &ctx.snap.cfg.consumers, unix_ms(), std::string(ex.client_ip)};
    if (!oauth_authority::slow(ex.oauth)) {
      try {
        set_reply(ex, authority->handle(ex.oauth, octx));
      } catch (const std::exception&) {  // never let a request take the worker down
        ex.local_status = 500;
        ex.local_code = "internal_error";
        ex.local_message = "the OAuth request could not be answered";
      }
      ex.oauth = {};
      return verdict::respond;
    }
    int64_t retry_s = 0;
    if (!authority->admit_password_check(octx.client_address, octx.now_ms, &retry_s)) {
      ex.oauth = {};
      ex.local_reply.status = 429;
      ex.local_reply.content_type = "application/json";
      ex.local_reply.body =
          R"({"error":"slow_down","error_description":"too many password checks from )"
          R"(this address; retry later"})";
      ex.local_reply.headers = {{"Retry-After", std::to_string(retry_s)},
                                {"Cache-Control", "no-store"}};
      return verdict::respond;
    }
    // Answered if the check never comes back (the deadline passes first).
    ex.local_status = 503;
    ex.local_code = "temporarily_unavailable";
    ex.local_message = "the password check did not finish in time";
    auto req = std::make_shared<oauth_authority::request>(std::move(ex.oauth));
    ex.oauth = {};
    bool queued = authority->run_slow([handle = std::make_shared<resume_handle>(ctx.pause.suspend(
                                           ctx.snap.cfg.oauth->password_check_timeout.count())),
                                       keep = ctx.snap_owner ? *ctx.snap_owner : nullptr, authority,
                                       req, octx = std::move(octx)]() mutable {
      oauth_authority::reply r;
      try {
        r = authority->handle(*req, octx);
      } catch (const std::exception&) {
        r.status = 500;
        r.body = R"({"error":"server_error","error_description":"internal error"})";
      }
      *req = {};  // the password goes with it, here
      handle->resume([r = std::move(r)](exchange& ex) mutable {
        set_reply(ex, std::move(r));
        return verdict::respond;
      });
    });
    if (queued) return verdict::pause;
    // The handle the job held came back unused: the exchange is answered now instead.
    ex.local_message = "too many password checks waiting; retry shortly";
    return verdict::respond;
  }

 private:
  static void refuse_size(exchange& ex) {
    ex.local_status = 413;
    ex.local_code = "payload_too_large";
    ex.local_message = "OAuth request bodies are limited to 16 KiB";
  }
};

}  // namespace

std::unique_ptr<stage> make_oauth_endpoints() {
  return std::make_unique<oauth_endpoints_stage>();
}

}  // namespace meridian::node
