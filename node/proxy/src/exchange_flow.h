#pragma once
// The codec-independent part of handling one exchange: running the stages of the entry chain and
// the route's chain, holding a paused exchange and bringing it back (a timer, the awaited request
// body, a resume_handle from another thread, the pause's deadline), the call to the upstream, and
// the log hooks. A codec derives from it once per exchange slot: the HTTP/1.1 session (one
// exchange after another on its connection) and an HTTP/2 stream (one exchange per stream). The
// codec turns bytes into the exchange, answers locally in its own framing (answer_local) and
// implements the call_sink the call answers through; the hooks below tell it where the flow is.
//
// Threading: on the exchange's worker only (deliver_resume: any thread, through the mailbox).

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "exchange.h"
#include "stage.h"
#include "upstream_call.h"

#include <boost/asio/steady_timer.hpp>

namespace meridian::node {

class worker;

class exchange_flow : public resumable, public pause_control {
 public:
  // pause_control (stage.h): how a stage holds this exchange and brings it back.
  void resume_after(uint64_t ms) override;
  void await_body() override;
  resume_handle suspend(int64_t deadline_ms) override;
  // resumable: any thread.
  void deliver_resume(std::shared_ptr<resumable> self, uint64_t pause,
                      std::function<verdict(exchange&)> fn) override;

 protected:
  exchange_flow(worker& w, call_sink& sink, std::shared_ptr<const snapshot> snap);
  ~exchange_flow() override;

  // --- what the codec implements
  // An owning reference to this flow (its codec object), for timers and resume_handles.
  virtual std::shared_ptr<exchange_flow> flow_owner() = 0;
  // The call wrote the upstream head: body pieces go to call_ from now on.
  virtual void on_flow_prepared() {}
  // The exchange is held until `deadline` (a timer or a resume_handle brings it back).
  virtual void on_flow_paused(int64_t deadline) = 0;
  // The exchange waits for its request body, which goes to the pausing stage (paused_stage()).
  virtual void on_flow_awaiting_body() = 0;
  // The stages run again (after a pause or the awaited body).
  virtual void on_flow_resumed() = 0;
  // After a resumed exchange was acted on (the call started, or it was answered): the codec goes
  // on with its input.
  virtual void on_flow_continue() {}
  // The stages passed: the call starts right after this.
  virtual void on_flow_calling() = 0;
  // Sends the local answer a stage prepared (ex_.local_reply, or ex_.local_status, code and
  // message as SPEC's JSON error) in the codec's framing.
  virtual void answer_local() = 0;

  // Where in the chains a request is: the entry chain's stages, then the route's.
  struct chain_position {
    bool in_route = false;
    size_t at = 0;
  };
  stage_context make_stage_context();
  // Runs the request-head stages from `from` on: the rest of the entry chain, then the route's
  // chain. On `next` has the call write the upstream request head (then on_flow_prepared); on
  // `pause` remembers the pausing stage's position.
  verdict run_stages(chain_position from);
  // Acts on a verdict of the stages: start the call, answer, or hold the exchange as the
  // pausing stage asked.
  void act_on(verdict v);
  // The request body the pausing stage awaited is in: its on_request_end decides.
  void end_awaited_body();
  // The stage that paused.
  const stage& paused_stage() const;
  // The pause outlived its deadline: the stage's prepared answer (or 503) goes out, and a
  // resume_handle that comes back later finds the pause over.
  void expire_pause();
  // A request-body stage refused the body: 413 unless the stage set an answer of its own, and
  // the call (if any) is abandoned. The codec then answers (answer_local) or cuts the response.
  void refuse_body_answer();
  // The exchange ends otherwise (answered, the client left): a pending pause is over, the call
  // is abandoned.
  void end_flow();
  // Starts the next exchange in ex_'s place (nothing of the last one survives).
  void renew_flow();
  bool paused() const { return paused_; }
  // Runs the log hooks of the entry chain and the route's (metrics, access log).
  void record_done();
  // Fills the exchange's path (normalized), query, authority and host_only from the request
  // target and the Host field (an absolute-form target names the authority itself). Returns
  // why the request is refused (400), or nullptr.
  const char* take_target(std::string_view target, std::string_view host);
  // The request id: the client's valid X-Request-Id among fields, else a random UUID.
  void make_request_id(std::span<const field_view> fields);

  worker& w_;
  std::shared_ptr<const snapshot> snap_;
  exchange ex_;
  std::vector<header_view> header_views_;  // the router's view of the fields, reused

 private:
  // The exchange comes back from a pause with v (next: on with the stage after the pause).
  void resume_stages(verdict v);

  // A paused exchange: which stage paused, how it comes back, and which pause this is (a
  // resume_handle names it; one from an earlier pause finds it over and does nothing).
  enum class pause_kind { none, timer, body, handle };
  chain_position pause_at_;
  pause_kind pause_kind_ = pause_kind::none;
  bool paused_ = false;  // held by a timer or a handle
  uint64_t pause_delay_ms_ = 0;
  int64_t pause_deadline_ms_ = 0;
  uint64_t pause_id_ = 0;
  std::unique_ptr<boost::asio::steady_timer> delay_timer_;  // created on the first timed pause

 protected:
  // Dispatch: the exchange's call to its upstream. Last, so that it goes first.
  upstream_call call_;
};

}  // namespace meridian::node
