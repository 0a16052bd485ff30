#pragma once
// A route's chain of stages, in order, with one list per hook so that a hook no stage of the
// route implements costs nothing. Built once per route per snapshot; immutable and shared by
// the workers afterwards.

#include <memory>
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
  // Runs the request-body stages over `size` more bytes; stops at the first refusal.
  verdict run_request_body(exchange& ex, uint64_t size, bool announced) const;
  void run_upstream_head(exchange& ex, upstream_head& h) const {
    for (const stage* s : upstream_head_) s->on_upstream_head(ex, h);
  }
  void run_response_head(const exchange& ex, response_head& h) const {
    for (const stage* s : response_head_) s->on_response_head(ex, h);
  }
  bool reads_request_body() const { return !request_body_.empty(); }
  size_t size() const { return stages_.size(); }

 private:
  std::vector<std::unique_ptr<stage>> stages_;
  std::vector<const stage*> request_head_;
  std::vector<const stage*> request_body_;
  std::vector<const stage*> upstream_head_;
  std::vector<const stage*> response_head_;
};

// Builds route's chain. The request flow of a route, top to bottom, is this function.
std::unique_ptr<const chain> build_chain(const route_runtime& route, const snapshot& snap);

}  // namespace meridian::node
