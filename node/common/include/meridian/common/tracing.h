#pragma once
// Distributed tracing: W3C Trace Context (traceparent) and the spans the gateway records for an
// exchange (its own work, and each upstream call), handed to a span_sink that exports them in
// batches off the workers (OTLP/HTTP: node/admin's otlp_exporter).

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace meridian {

// A parsed traceparent (https://www.w3.org/TR/trace-context/#traceparent-header), version 00.
struct trace_context {
  std::array<uint8_t, 16> trace_id{};
  uint64_t parent_id = 0;  // the caller's span
  bool sampled = false;
};

// Reads a traceparent value: "00-<32 hex>-<16 hex>-<2 hex>" (lower-case hex; all-zero ids and
// version ff are invalid; a later version's longer value is read by its first four fields).
// nullopt when it is not one (the caller then starts a new trace).
std::optional<trace_context> parse_traceparent(std::string_view value);

// Writes "00-<trace>-<span>-<flags>".
std::string format_traceparent(const std::array<uint8_t, 16>& trace_id, uint64_t span_id,
                               bool sampled);

// Lower-case hex of an id.
std::string hex_id(const uint8_t* bytes, size_t n);
std::string hex_span(uint64_t id);

// One finished span, in OTLP's terms.
struct span_record {
  enum class kind { server = 2, client = 3 };
  std::array<uint8_t, 16> trace_id{};
  uint64_t span_id = 0;
  uint64_t parent_id = 0;  // 0: a root span
  std::string name;
  kind span_kind = kind::server;
  int64_t start_unix_ns = 0;
  int64_t end_unix_ns = 0;
  bool error = false;                                     // OTLP status ERROR (else OK)
  std::vector<std::pair<std::string, std::string>> text;  // string attributes
  std::vector<std::pair<std::string, int64_t>> numbers;   // int attributes
};

// Where finished spans go. submit is called from the workers and must not block on I/O: an
// implementation queues (bounded) and exports on a thread of its own.
class span_sink {
 public:
  virtual ~span_sink() = default;
  virtual void submit(std::vector<span_record>&& spans) = 0;
};

}  // namespace meridian
