#pragma once
// The stage interface: one policy of the data plane (authentication, a rate limit, a
// transform...) acting on an exchange. Stages are built once per route per snapshot by
// build_chain (chain.cc), shared by every worker, and so hold no per-request state: that lives
// in the exchange. Every hook is const and runs on the exchange's worker thread.
//
// A stage answers `next` (go on), `respond` (answer locally: the stage set ex.local_status,
// local_code and local_message, rendered as SPEC's JSON error), or `pause` (hold the exchange:
// the stage set ex.delay_ms; the session resumes the chain at the next stage on the same worker
// when the delay has passed, within the request deadline).

#include <cstdint>
#include <string_view>

#include "exchange.h"
#include "meridian/common/failure_delay.h"
#include "meridian/common/metrics.h"

namespace meridian::node {

enum class verdict { next, respond, pause };

// What a stage may use besides the exchange, valid for the call only.
struct stage_context {
  const snapshot& snap;
  int64_t now = 0;                  // the worker's steady clock, ms
  unsigned worker = 0;              // the worker's index (per-worker slots of shared state)
  failure_delay& api_key_failures;  // the worker's record of addresses presenting bad keys
  worker_stats& stats;              // the worker's counters
  std::string_view client_ip;       // the connection's peer address
};

class stage {
 public:
  // Which hooks a stage implements: the chain calls only those (no call for the others).
  enum hook : unsigned {
    request_head = 1,
    request_body = 2,
    upstream_head_hook = 4,
    response_head_hook = 8,
  };
  explicit stage(unsigned hooks) : hooks_(hooks) {}
  virtual ~stage() = default;
  unsigned hooks() const { return hooks_; }

  // The request head is parsed and routed (ex.route is set).
  virtual verdict on_request_head(exchange& ex, stage_context& ctx) const { return verdict::next; }
  // `size` more body bytes are coming: a piece in hand, or a chunk whose size the client has
  // announced (announced: true). ex.body_bytes counts the bytes before them. respond: refuse.
  virtual verdict on_request_body(exchange& ex, uint64_t size, bool announced) const {
    return verdict::next;
  }
  // The upstream request head is about to be written: adjust what it will say.
  virtual void on_upstream_head(exchange& ex, upstream_head& h) const {}
  // The client response head is about to be written: adjust what it will say.
  virtual void on_response_head(const exchange& ex, response_head& h) const {}

 private:
  unsigned hooks_;
};

}  // namespace meridian::node
