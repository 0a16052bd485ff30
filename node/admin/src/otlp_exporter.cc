#include "meridian/admin/otlp_exporter.h"

#include <httplib.h>

#include <nlohmann/json.hpp>

namespace meridian::node {
namespace {

using nlohmann::json;

json string_attribute(const std::string& key, const std::string& value) {
  return {{"key", key}, {"value", {{"stringValue", value}}}};
}

// OTLP/JSON (opentelemetry-proto's JSON mapping): ids as lower-case hex, 64-bit integers and
// nanosecond times as decimal strings, enums as numbers.
json encode(const otlp_options& opt, const std::vector<span_record>& batch) {
  json spans = json::array();
  for (const auto& s : batch) {
    json attrs = json::array();
    for (const auto& [k, v] : s.text) attrs.push_back(string_attribute(k, v));
    for (const auto& [k, v] : s.numbers) {
      attrs.push_back({{"key", k}, {"value", {{"intValue", std::to_string(v)}}}});
    }
    json span = {{"traceId", hex_id(s.trace_id.data(), 16)},
                 {"spanId", hex_span(s.span_id)},
                 {"name", s.name},
                 {"kind", static_cast<int>(s.span_kind)},
                 {"startTimeUnixNano", std::to_string(s.start_unix_ns)},
                 {"endTimeUnixNano", std::to_string(s.end_unix_ns)},
                 {"attributes", std::move(attrs)},
                 {"status", {{"code", s.error ? 2 : 1}}}};
    if (s.parent_id) span["parentSpanId"] = hex_span(s.parent_id);
    spans.push_back(std::move(span));
  }
  json resource = json::array({string_attribute("service.name", opt.service_name),
                               string_attribute("service.instance.id", opt.node_id),
                               string_attribute("cloud.region", opt.region)});
  return {{"resourceSpans",
           json::array({{{"resource", {{"attributes", std::move(resource)}}},
                         {"scopeSpans", json::array({{{"scope", {{"name", "meridian"}}},
                                                      {"spans", std::move(spans)}}})}}})}};
}

}  // namespace

otlp_exporter::otlp_exporter(otlp_options options) : opt_(std::move(options)) {
  thread_ = std::thread([this] { run(); });
}

otlp_exporter::~otlp_exporter() {
  stop();
}

void otlp_exporter::stop() {
  {
    std::lock_guard lock(mu_);
    if (stopping_) {
      if (!thread_.joinable()) return;
    }
    stopping_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

void otlp_exporter::submit(std::vector<span_record>&& spans) {
  bool wake = false;
  {
    std::lock_guard lock(mu_);
    if (stopping_ || queue_.size() + spans.size() > opt_.max_queue) {
      dropped_.fetch_add(spans.size());
      return;
    }
    for (auto& s : spans) queue_.push_back(std::move(s));
    wake = queue_.size() >= opt_.batch_size;
  }
  if (wake) cv_.notify_one();
}

void otlp_exporter::run() {
  std::unique_lock lock(mu_);
  for (;;) {
    cv_.wait_for(lock, opt_.flush_interval,
                 [&] { return stopping_ || queue_.size() >= opt_.batch_size; });
    bool last = stopping_;
    while (!queue_.empty()) {
      size_t n = std::min(queue_.size(), opt_.batch_size);
      std::vector<span_record> batch(std::make_move_iterator(queue_.begin()),
                                     std::make_move_iterator(queue_.begin() + n));
      queue_.erase(queue_.begin(), queue_.begin() + n);
      lock.unlock();
      bool ok = post(batch) || (!last && post(batch));
      if (ok) {
        exported_.fetch_add(batch.size());
      } else {
        failed_.fetch_add(1);
        dropped_.fetch_add(batch.size());
      }
      lock.lock();
      if (!last && queue_.size() < opt_.batch_size) break;  // wait for the next interval
    }
    if (last) return;
  }
}

bool otlp_exporter::post(const std::vector<span_record>& batch) {
  // The endpoint: scheme://host:port and the path after it.
  const std::string& url = opt_.endpoint;
  size_t scheme_end = url.find("://");
  size_t path_at =
      scheme_end == std::string::npos ? std::string::npos : url.find('/', scheme_end + 3);
  std::string origin = path_at == std::string::npos ? url : url.substr(0, path_at);
  std::string path = path_at == std::string::npos ? "/v1/traces" : url.substr(path_at);
  try {
    httplib::Client client(origin);
    client.set_connection_timeout(2, 0);
    client.set_read_timeout(5, 0);
    client.set_write_timeout(5, 0);
    auto body = encode(opt_, batch).dump();
    auto r = client.Post(path, body, "application/json");
    return r && r->status / 100 == 2;
  } catch (const std::exception&) {
    return false;
  }
}

}  // namespace meridian::node
