// W3C traceparent reading and writing (meridian/common/tracing.h).
#include "meridian/common/tracing.h"

#include <gtest/gtest.h>

namespace meridian {
namespace {

TEST(traceparent, a_valid_value_gives_trace_parent_and_flag) {
  auto t = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
  ASSERT_TRUE(t);
  EXPECT_EQ(hex_id(t->trace_id.data(), 16), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(hex_span(t->parent_id), "00f067aa0ba902b7");
  EXPECT_TRUE(t->sampled);
  auto u = parse_traceparent(" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00\t");
  ASSERT_TRUE(u);
  EXPECT_FALSE(u->sampled);
  // Other flag bits do not make it sampled.
  EXPECT_FALSE(
      parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-02")->sampled);
}

TEST(traceparent, malformed_values_start_a_new_trace) {
  for (const char* bad :
       {"",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",       // no flags
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",    // upper case
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",    // zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",    // zero parent
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",    // version ff
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",  // version 00 is exact
        "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01"}) {
    EXPECT_FALSE(parse_traceparent(bad)) << bad;
  }
}

TEST(traceparent, a_later_version_is_read_by_its_first_fields) {
  auto t = parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-next");
  ASSERT_TRUE(t);
  EXPECT_TRUE(t->sampled);
}

TEST(traceparent, what_is_written_reads_back) {
  std::array<uint8_t, 16> id{};
  for (int i = 0; i < 16; ++i) id[i] = static_cast<uint8_t>(i * 17);
  std::string v = format_traceparent(id, 0x0102030405060708ULL, true);
  EXPECT_EQ(v, "00-00112233445566778899aabbccddeeff-0102030405060708-01");
  auto t = parse_traceparent(v);
  ASSERT_TRUE(t);
  EXPECT_EQ(t->trace_id, id);
  EXPECT_EQ(t->parent_id, 0x0102030405060708ULL);
  EXPECT_EQ(format_traceparent(id, 1, false).substr(52), "-00");
}

}  // namespace
}  // namespace meridian
