#pragma once
// The stage interface: one policy of the data plane (authentication, a rate limit, a
// transform, the OAuth endpoints...) acting on an exchange. Stages are built once per snapshot
// (the entry chain) or once per route per snapshot (the route's chain) by chain.cc, shared by
// every worker, and so hold no per-request state: that lives in the exchange. Every hook is
// const and runs on the exchange's worker thread.
//
// A request-head stage answers
//   next     go on with the next stage;
//   respond  answer locally: the stage set ex.local_status, local_code and local_message
//            (rendered as SPEC's JSON error), or a whole reply in ex.local_reply;
//   pause    hold the exchange. Before answering pause the stage says how it comes back,
//            through ctx.pause: after a delay on the worker (resume_after), once the request
//            body has been read (await_body: the body goes to this stage's on_request_body,
//            then on_request_end decides), or from any thread through a resume_handle
//            (suspend), within a deadline. A resumed exchange goes on at the next stage.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include "exchange.h"
#include "meridian/common/failure_delay.h"
#include "meridian/common/metrics.h"

namespace spdlog {
class logger;
}

namespace meridian::node {

enum class verdict { next, respond, pause };

// What a session does for a paused exchange. Implemented by the codec's session.
class resumable {
 public:
  virtual ~resumable() = default;
  // Any thread: hands fn to the exchange's worker, which runs it there (fn empty: the handle
  // was dropped unused) unless that pause is over. Takes the reference that keeps the session.
  virtual void deliver_resume(std::shared_ptr<resumable> self, uint64_t pause,
                              std::function<verdict(exchange&)> fn) = 0;
};

// Brings a suspended exchange back, from any thread, at most once. fn runs on the exchange's
// worker and answers how the chain goes on (next: the stage after the one that paused;
// respond: the local answer fn set). It does not run if the exchange ended meanwhile (the
// client left, or the deadline passed and the session answered). Dropping a handle without
// resuming leaves the exchange to its deadline. Moving only.
class resume_handle {
 public:
  resume_handle() = default;
  resume_handle(std::shared_ptr<resumable> target, uint64_t pause)
      : target_(std::move(target)), pause_(pause) {}
  resume_handle(resume_handle&&) = default;
  resume_handle& operator=(resume_handle&& o) noexcept {
    if (this != &o) {
      release();
      target_ = std::move(o.target_);
      pause_ = o.pause_;
    }
    return *this;
  }
  ~resume_handle() { release(); }

  void resume(std::function<verdict(exchange&)> fn) {
    if (!target_) return;
    auto* t = target_.get();
    t->deliver_resume(std::move(target_), pause_, std::move(fn));
  }

 private:
  // The session must be released on its worker, never on the thread that drops the handle.
  void release() {
    if (target_) resume({});
  }
  std::shared_ptr<resumable> target_;
  uint64_t pause_ = 0;
};

// How a stage that answers pause comes back (one of these, before answering pause).
class pause_control {
 public:
  // On the worker after ms milliseconds (a rate limit's max_delay).
  virtual void resume_after(uint64_t ms) = 0;
  // When the request body has been read: its pieces go to the pausing stage's
  // on_request_body, then its on_request_end decides.
  virtual void await_body() = 0;
  // Through the returned handle, from any thread. If deadline_ms passes first, the session
  // answers with the local answer the stage set before pausing (ex.local_status...), or 503.
  virtual resume_handle suspend(int64_t deadline_ms) = 0;

 protected:
  ~pause_control() = default;
};

// What a stage may use besides the exchange, valid for the call only.
struct stage_context {
  const snapshot& snap;
  int64_t now = 0;                  // the worker's steady clock, ms
  unsigned worker = 0;              // the worker's index (per-worker slots of shared state)
  failure_delay& api_key_failures;  // the worker's record of addresses presenting bad keys
  worker_stats& stats;              // the worker's counters
  pause_control& pause;             // for a stage that answers pause
  std::vector<header_view>& header_scratch;  // the worker's, for the router's view of fields
  // The session's hold on snap, for work that may outlive the exchange (a job on another
  // thread that reads the snapshot must keep it: a pause can end at its deadline first).
  const std::shared_ptr<const snapshot>* snap_owner = nullptr;
};

// What the log hooks may use: the exchange is over (answered, or abandoned).
struct log_context {
  std::chrono::microseconds elapsed;  // from the first byte of the request to now
  unsigned worker = 0;
  worker_stats& stats;
  spdlog::logger* access_log = nullptr;  // null: no access log configured
};

class stage {
 public:
  // Which hooks a stage implements: the chain calls only those (no call for the others).
  enum hook : unsigned {
    request_head = 1,
    request_body = 2,
    upstream_head_hook = 4,
    response_head_hook = 8,
    response_body_hook = 16,
    log_hook = 32,
  };
  explicit stage(unsigned hooks) : hooks_(hooks) {}
  virtual ~stage() = default;
  unsigned hooks() const { return hooks_; }

  // The request head is parsed (entry chain), and routed (the route's chain: ex.route is set).
  virtual verdict on_request_head(exchange& ex, stage_context& ctx) const { return verdict::next; }
  // `size` more body bytes are coming: `piece` in hand (size == piece.size()), or a chunk
  // whose size the client has announced (announced: true, piece empty). ex.body_bytes counts
  // the bytes before them. respond: refuse (413 unless the stage set another local answer).
  virtual verdict on_request_body(exchange& ex, std::string_view piece, uint64_t size,
                                  bool announced) const {
    return verdict::next;
  }
  // The whole request has been read, for the stage that paused with await_body: decides as
  // on_request_head does.
  virtual verdict on_request_end(exchange& ex, stage_context& ctx) const { return verdict::next; }
  // The upstream request head is about to be written: adjust what it will say.
  virtual void on_upstream_head(exchange& ex, upstream_head& h) const {}
  // The client response head is about to be written: adjust what it will say.
  virtual void on_response_head(const exchange& ex, response_head& h) const {}
  // A piece of the response body on its way to the client (before the gateway's framing).
  virtual void on_response_body(exchange& ex, std::string_view piece) const {}
  // The exchange is over: count it, log it.
  virtual void on_log(const exchange& ex, log_context& ctx) const {}

 private:
  unsigned hooks_;
};

}  // namespace meridian::node
