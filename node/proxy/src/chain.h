#pragma once
// Chains of stages, in order, with one list per hook so that a hook no stage of the chain
// implements costs nothing. Two kinds, both built by the functions below and immutable and
// shared by the workers afterwards:
//   - the entry chain, once per snapshot: what every request passes before it has a route
//     (counting and logging, the OAuth endpoints, forwarding headers, the route match);
//   - a route's chain, once per route per snapshot: that route's policies.
// A request runs the entry chain, then its route's chain, then dispatch; its response runs
// the response hooks of both; the log hooks run when the exchange is over.

#include <memory>
#include <string_view>
#include <vector>

#include "stage.h"

namespace meridian::node {

class chain {
 public:
  // Appends s (the chain owns it) to the lists of the hooks it implements.
  void add(std::unique_ptr<stage> s);

  // Runs the request-head stages from position `from` (0, or the stage after a pause). Stops
  // at the first that does not answer next; *at is its position (to resume after a pause).
  verdict run_request_head(exchange& ex, stage_context& ctx, size_t from, size_t* at) const;
  // The request-head stage at position i (the one that paused).
  const stage& request_head_stage(size_t i) const { return *request_head_[i]; }
  // Runs the request-body stages over `size` more bytes; stops at the first refusal.
  verdict run_request_body(exchange& ex, std::string_view piece, uint64_t size,
                           bool announced) const;
  void run_upstream_head(exchange& ex, upstream_head& h) const {
    for (const stage* s : upstream_head_) s->on_upstream_head(ex, h);
  }
  void run_response_head(const exchange& ex, response_head& h) const {
    for (const stage* s : response_head_) s->on_response_head(ex, h);
  }
  void run_response_body(exchange& ex, std::string_view piece) const {
    for (const stage* s : response_body_) s->on_response_body(ex, piece);
  }
  void run_log(const exchange& ex, log_context& ctx) const {
    for (const stage* s : log_) s->on_log(ex, ctx);
  }
  bool reads_request_body() const { return !request_body_.empty(); }
  bool reads_response_body() const { return !response_body_.empty(); }
  size_t size() const { return stages_.size(); }

 private:
  std::vector<std::unique_ptr<stage>> stages_;
  std::vector<const stage*> request_head_;
  std::vector<const stage*> request_body_;
  std::vector<const stage*> upstream_head_;
  std::vector<const stage*> response_head_;
  std::vector<const stage*> response_body_;
  std::vector<const stage*> log_;
};

// Builds the entry chain of snap. What every request passes first, top to bottom.
std::unique_ptr<const chain> build_entry_chain(const snapshot& snap);
// Builds route's chain. The request flow of a route, top to bottom, is this function.
std::unique_ptr<const chain> build_chain(const route_runtime& route, const snapshot& snap);

}  // namespace meridian::node
