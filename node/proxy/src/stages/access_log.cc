// Stage: one JSON line per exchange in the access log (when the node has one), when the
// exchange is over.
#include <spdlog/spdlog.h>

#include <chrono>
#include <cstdio>
#include <ctime>

#include "stage.h"

namespace meridian::node {
namespace {

class access_log_stage final : public stage {
 public:
  access_log_stage() : stage(log_hook) {}
  void on_log(const exchange& ex, log_context& ctx) const override {
    if (!ctx.access_log) return;
    byte_buffer line;
    // When the exchange ended, RFC 3339 in UTC with milliseconds.
    auto wall = std::chrono::system_clock::now();
    auto ms =
        std::chrono::duration_cast<std::chrono::milliseconds>(wall.time_since_epoch()).count();
    std::time_t secs = static_cast<std::time_t>(ms / 1000);
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char when[40];
    size_t wn = std::strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%S", &tm);
    wn += static_cast<size_t>(
        std::snprintf(when + wn, sizeof when - wn, ".%03dZ", static_cast<int>(ms % 1000)));
    line.append("{\"time\":\"");
    line.append(std::string_view(when, wn));
    line.append("\",\"request_id\":");
    append_json_string(line, ex.request_id);
    line.append(",\"client\":");
    append_json_string(line, ex.client_ip);
    line.append(",\"method\":");
    append_json_string(line, ex.access_method);
    line.append(",\"path\":");
    append_json_string(line, ex.access_path);
    line.append(",\"status\":");
    line.append_decimal(static_cast<uint64_t>(ex.status));
    if (ex.grpc_status >= 0) {
      line.append(",\"grpc_status\":");
      line.append_decimal(static_cast<uint64_t>(ex.grpc_status));
    }
    line.append(",\"route\":");
    append_json_string(line, ex.route ? std::string_view(ex.route->cfg->name) : std::string_view());
    line.append(",\"upstream\":");
    append_json_string(line, ex.target ? ex.target->addr.to_string() : std::string());
    if (ex.upstream_us >= 0) {
      line.append(",\"upstream_ms\":");
      char up[32];
      int un = std::snprintf(up, sizeof up, "%.3f", static_cast<double>(ex.upstream_us) / 1000.0);
      line.append(up, static_cast<size_t>(un));
    }
    line.append(",\"consumer\":");
    append_json_string(line, ex.consumer);
    line.append(",\"attempts\":");
    line.append_decimal(ex.attempts + 1);
    line.append(",\"request_bytes\":");
    line.append_decimal(ex.body_bytes);
    line.append(",\"response_bytes\":");
    line.append_decimal(ex.response_bytes);
    line.append(",\"duration_ms\":");
    char tmp[32];
    int n =
        std::snprintf(tmp, sizeof tmp, "%.3f", static_cast<double>(ctx.elapsed.count()) / 1000.0);
    line.append(tmp, static_cast<size_t>(n));
    line.append('}');
    ctx.access_log->info(std::string_view(line.data(), line.size()));
  }
};

}  // namespace

std::unique_ptr<stage> make_access_log() {
  return std::make_unique<access_log_stage>();
}

}  // namespace meridian::node
