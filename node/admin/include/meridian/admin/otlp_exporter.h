#pragma once
// Exports spans over OTLP/HTTP with the JSON encoding (POST {endpoint} with
// {"resourceSpans":[...]}) from a thread of its own: the workers' submit only queues (bounded;
// beyond max_queue new spans are dropped and counted). A batch goes when it holds batch_size
// spans or flush_interval has passed; a failed POST is retried once, then its spans are dropped
// (counted). stop() (and the destructor) sends what is queued, within two seconds.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "meridian/common/clock.h"
#include "meridian/common/tracing.h"

namespace meridian::node {

struct otlp_options {
  std::string endpoint;  // http(s)://host:port/v1/traces
  std::string service_name = "meridian";
  std::string node_id;
  std::string region;
  size_t batch_size = 512;
  std::chrono::milliseconds flush_interval{1000};
  size_t max_queue = 8192;
};

class otlp_exporter final : public span_sink {
 public:
  explicit otlp_exporter(otlp_options options);
  ~otlp_exporter() override;
  otlp_exporter(const otlp_exporter&) = delete;
  otlp_exporter& operator=(const otlp_exporter&) = delete;

  // Any thread; never blocks on I/O.
  void submit(std::vector<span_record>&& spans) override;
  void stop();

  uint64_t exported() const { return exported_.load(); }
  uint64_t dropped() const { return dropped_.load(); }
  uint64_t failed_exports() const { return failed_.load(); }

 private:
  void run();
  bool post(const std::vector<span_record>& batch);

  otlp_options opt_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<span_record> queue_;
  bool stopping_ = false;
  std::atomic<uint64_t> exported_{0};
  std::atomic<uint64_t> dropped_{0};
  std::atomic<uint64_t> failed_{0};
  std::thread thread_;
};

}  // namespace meridian::node
