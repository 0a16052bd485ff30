// gRPC status codes as HTTP statuses and names: the table Envoy and grpc-gateway share.
#include <gtest/gtest.h>

#include "meridian/transcode/transcoder.h"

namespace meridian::transcode {
namespace {

TEST(grpc_status, every_code_maps_to_the_envoy_and_grpc_gateway_http_status) {
  const int expected[] = {200, 499, 500, 400, 504, 404, 409, 403, 429,
                          400, 409, 400, 501, 500, 503, 500, 401};
  for (int code = 0; code < 17; ++code) {
    EXPECT_EQ(http_status_for(code), expected[code]) << grpc_code_name(code);
  }
}

TEST(grpc_status, codes_outside_the_table_map_to_500_and_unknown) {
  for (int code : {-1, 17, 1000}) {
    EXPECT_EQ(http_status_for(code), 500);
    EXPECT_EQ(grpc_code_name(code), "UNKNOWN");
  }
}

TEST(grpc_status, every_code_has_its_canonical_name) {
  const char* expected[] = {"OK",
                            "CANCELLED",
                            "UNKNOWN",
                            "INVALID_ARGUMENT",
                            "DEADLINE_EXCEEDED",
                            "NOT_FOUND",
                            "ALREADY_EXISTS",
                            "PERMISSION_DENIED",
                            "RESOURCE_EXHAUSTED",
                            "FAILED_PRECONDITION",
                            "ABORTED",
                            "OUT_OF_RANGE",
                            "UNIMPLEMENTED",
                            "INTERNAL",
                            "UNAVAILABLE",
                            "DATA_LOSS",
                            "UNAUTHENTICATED"};
  for (int code = 0; code < 17; ++code) EXPECT_EQ(grpc_code_name(code), expected[code]);
}

}  // namespace
}  // namespace meridian::transcode
