#include "meridian/transcode/transcoder.h"

namespace meridian::transcode {
namespace {

struct code_entry {
  std::string_view name;
  int http;
};

// Indexed by gRPC status code; the HTTP mapping Envoy and grpc-gateway share.
constexpr code_entry k_codes[] = {
    {"OK", 200},
    {"CANCELLED", 499},
    {"UNKNOWN", 500},
    {"INVALID_ARGUMENT", 400},
    {"DEADLINE_EXCEEDED", 504},
    {"NOT_FOUND", 404},
    {"ALREADY_EXISTS", 409},
    {"PERMISSION_DENIED", 403},
    {"RESOURCE_EXHAUSTED", 429},
    {"FAILED_PRECONDITION", 400},
    {"ABORTED", 409},
    {"OUT_OF_RANGE", 400},
    {"UNIMPLEMENTED", 501},
    {"INTERNAL", 500},
    {"UNAVAILABLE", 503},
    {"DATA_LOSS", 500},
    {"UNAUTHENTICATED", 401},
};

constexpr int k_code_count = static_cast<int>(sizeof k_codes / sizeof k_codes[0]);

}  // namespace

int http_status_for(int grpc_status) {
  return grpc_status >= 0 && grpc_status < k_code_count ? k_codes[grpc_status].http : 500;
}

std::string_view grpc_code_name(int grpc_status) {
  return grpc_status >= 0 && grpc_status < k_code_count ? k_codes[grpc_status].name : "UNKNOWN";
}

}  // namespace meridian::transcode
