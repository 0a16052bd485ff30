// gRPC and gRPC-Web helpers of the proxy (grpc.h): the status of a gateway error, grpc-timeout,
// grpc-message's encoding, content types, base64 in pieces split anywhere, the trailer frame.
#include "grpc.h"

#include <gtest/gtest.h>

#include <string>

#include "exchange.h"

namespace meridian::node {
namespace {

std::string encode_whole(std::string_view in) {
  base64_stream_encoder e;
  std::string out;
  e.feed(in, out);
  e.finish(out);
  return out;
}

TEST(grpc, gateway_errors_map_to_the_grpc_status_a_client_can_act_on) {
  EXPECT_EQ(grpc_status_for_http(404), 12);  // no route: UNIMPLEMENTED
  EXPECT_EQ(grpc_status_for_http(429), 8);   // RESOURCE_EXHAUSTED
  EXPECT_EQ(grpc_status_for_http(401), 16);  // UNAUTHENTICATED
  EXPECT_EQ(grpc_status_for_http(403), 7);   // PERMISSION_DENIED
  EXPECT_EQ(grpc_status_for_http(503), 14);  // UNAVAILABLE
  EXPECT_EQ(grpc_status_for_http(502), 14);
  EXPECT_EQ(grpc_status_for_http(504), 4);  // DEADLINE_EXCEEDED
  EXPECT_EQ(grpc_status_for_http(400), 13);
  EXPECT_EQ(grpc_status_for_http(418), 2);
}

TEST(grpc, grpc_timeout_is_read_in_every_unit_and_rounded_up_to_milliseconds) {
  EXPECT_EQ(parse_grpc_timeout("1S"), 1000);
  EXPECT_EQ(parse_grpc_timeout("250m"), 250);
  EXPECT_EQ(parse_grpc_timeout("1500u"), 2);
  EXPECT_EQ(parse_grpc_timeout("1n"), 1);
  EXPECT_EQ(parse_grpc_timeout("2M"), 120000);
  EXPECT_EQ(parse_grpc_timeout("1H"), 3600000);
  EXPECT_EQ(parse_grpc_timeout("12345678m"), 12345678);
  for (const char* bad : {"", "S", "123456789S", "1s", "-1S", "1.5S", "1 S", "9"})
    EXPECT_EQ(parse_grpc_timeout(bad), 0) << bad;
}

TEST(grpc, grpc_message_is_percent_encoded_outside_printable_ascii) {
  std::string out;
  append_grpc_message(out, "ok 100% caf\xc3\xa9\n");
  EXPECT_EQ(out, "ok 100%25 caf%C3%A9%0A");
}

TEST(grpc, request_content_types_mark_grpc_and_grpc_web) {
  auto note = [](std::string_view ct) {
    exchange ex;
    note_grpc_field(ex, http::field::content_type, "content-type", ct);
    return std::to_string(ex.grpc) + std::to_string(ex.grpc_web) + std::to_string(ex.grpc_web_text);
  };
  EXPECT_EQ(note("application/grpc"), "100");
  EXPECT_EQ(note("application/grpc+proto"), "100");
  EXPECT_EQ(note("application/grpc-web+proto"), "110");
  EXPECT_EQ(note("application/grpc-web-text"), "111");
  EXPECT_EQ(note("application/grpcx"), "000");
  EXPECT_EQ(note("application/json"), "000");
  exchange ex;
  note_grpc_field(ex, http::field::unknown, "grpc-timeout", "3S");
  EXPECT_EQ(ex.grpc_timeout_ms, 3000);
  EXPECT_EQ(grpc_content_type_for_web("application/grpc-web-text+proto"), "application/grpc+proto");
  EXPECT_EQ(grpc_content_type_for_web("application/grpc-web"), "application/grpc");
  EXPECT_EQ(grpc_content_type_for_web("text/plain"), "");
  EXPECT_EQ(web_content_type_for_grpc("application/grpc", false), "application/grpc-web+proto");
  EXPECT_EQ(web_content_type_for_grpc("application/grpc+proto", true),
            "application/grpc-web-text+proto");
}

TEST(grpc, base64_pieces_split_at_every_byte_decode_to_the_same_bytes) {
  std::string data;
  for (int i = 0; i < 300; ++i) data.push_back(static_cast<char>(i * 7));
  // gRPC-Web text may carry padding inside the stream: two separately encoded pieces.
  std::string text = encode_whole(data.substr(0, 100)) + encode_whole(data.substr(100));
  for (size_t cut = 0; cut <= text.size(); ++cut) {
    base64_stream_decoder d;
    std::string out;
    ASSERT_TRUE(d.feed(std::string_view(text).substr(0, cut), out));
    ASSERT_TRUE(d.feed(std::string_view(text).substr(cut), out));
    ASSERT_TRUE(d.complete());
    ASSERT_EQ(out, data) << cut;
  }
  base64_stream_decoder bad;
  std::string out;
  EXPECT_FALSE(bad.feed("QUJD*", out));
  base64_stream_decoder early_pad;
  EXPECT_FALSE(early_pad.feed("Q===", out));
}

TEST(grpc, base64_encoding_in_pieces_equals_encoding_the_whole) {
  std::string data = "any carnal pleasure, split anywhere.";
  std::string whole = encode_whole(data);
  EXPECT_EQ(encode_whole("ab"), "YWI=");
  for (size_t cut = 0; cut <= data.size(); ++cut) {
    base64_stream_encoder e;
    std::string out;
    e.feed(std::string_view(data).substr(0, cut), out);
    e.feed(std::string_view(data).substr(cut), out);
    e.finish(out);
    ASSERT_EQ(out, whole) << cut;
  }
}

TEST(grpc, the_web_trailer_frame_carries_lower_cased_fields) {
  field_view fields[] = {{http::field::unknown, "Grpc-Status", "0"},
                         {http::field::unknown, "grpc-message", "fine"}};
  std::string frame;
  append_grpc_web_trailer_frame(frame, fields);
  std::string block = "grpc-status:0\r\ngrpc-message:fine\r\n";
  ASSERT_EQ(frame.size(), 5 + block.size());
  EXPECT_EQ(static_cast<unsigned char>(frame[0]), 0x80);
  EXPECT_EQ(frame.substr(1, 4), std::string("\0\0\0", 3) + static_cast<char>(block.size()));
  EXPECT_EQ(frame.substr(5), block);
}

}  // namespace
}  // namespace meridian::node
