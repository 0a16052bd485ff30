// The gRPC length-prefixed message reader: whole messages in order however the bytes are split,
// and a bounded error state (never a crash or unbounded buffering) for oversized, compressed or
// malformed frames.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "meridian/transcode/transcoder.h"

namespace meridian::transcode {
namespace {

std::vector<std::string> drain(frame_reader& r) {
  std::vector<std::string> out;
  std::string m;
  while (r.next(&m)) out.push_back(m);
  return out;
}

std::string prefix(uint8_t flag, uint32_t length) {
  std::string p(5, '\0');
  p[0] = static_cast<char>(flag);
  p[1] = static_cast<char>(length >> 24);
  p[2] = static_cast<char>(length >> 16);
  p[3] = static_cast<char>(length >> 8);
  p[4] = static_cast<char>(length);
  return p;
}

TEST(frame_reader, grpc_frame_writes_flag_zero_and_a_big_endian_length) {
  EXPECT_EQ(grpc_frame(""), std::string("\0\0\0\0\0", 5));
  std::string body(0x0102, 'x');
  EXPECT_EQ(grpc_frame(body), prefix(0, 0x0102) + body);
}

TEST(frame_reader, three_frames_split_at_every_position_come_out_whole_and_in_order) {
  const std::vector<std::string> messages = {"", "hello", std::string(300, 'z')};
  std::string stream;
  for (const std::string& m : messages) stream += grpc_frame(m);
  for (size_t cut = 0; cut <= stream.size(); ++cut) {
    frame_reader r(1024);
    std::vector<std::string> got;
    ASSERT_TRUE(r.feed(std::string_view(stream).substr(0, cut)));
    for (auto& m : drain(r)) got.push_back(m);
    ASSERT_TRUE(r.feed(std::string_view(stream).substr(cut)));
    for (auto& m : drain(r)) got.push_back(m);
    EXPECT_EQ(got, messages) << "cut at " << cut;
    EXPECT_TRUE(r.at_boundary());
    EXPECT_TRUE(r.error().empty());
  }
}

TEST(frame_reader, three_frames_fed_byte_by_byte_come_out_whole_and_in_order) {
  const std::vector<std::string> messages = {"a", "", std::string(70000, 'q')};
  std::string stream;
  for (const std::string& m : messages) stream += grpc_frame(m);
  frame_reader r(1 << 20);
  std::vector<std::string> got;
  for (char c : stream) {
    ASSERT_TRUE(r.feed(std::string_view(&c, 1)));
    for (auto& m : drain(r)) got.push_back(m);
  }
  EXPECT_EQ(got, messages);
}

TEST(frame_reader, a_partial_frame_is_not_a_boundary) {
  frame_reader r(100);
  std::string frame = grpc_frame("abc");
  r.feed(std::string_view(frame).substr(0, 6));
  std::string m;
  EXPECT_FALSE(r.next(&m));
  EXPECT_FALSE(r.at_boundary());
  r.feed(std::string_view(frame).substr(6));
  EXPECT_TRUE(r.next(&m));
  EXPECT_EQ(m, "abc");
  EXPECT_TRUE(r.at_boundary());
}

TEST(frame_reader, a_message_of_exactly_the_limit_passes) {
  frame_reader r(8);
  EXPECT_TRUE(r.feed(grpc_frame("12345678")));
  EXPECT_EQ(drain(r), std::vector<std::string>{"12345678"});
}

TEST(frame_reader, an_oversized_message_is_an_error_as_soon_as_its_prefix_arrives) {
  frame_reader r(8);
  EXPECT_FALSE(r.feed(prefix(0, 9)));  // no body sent: refused on the length alone
  EXPECT_FALSE(r.error().empty());
  EXPECT_FALSE(r.compressed());
  std::string m;
  EXPECT_FALSE(r.next(&m));
  EXPECT_FALSE(r.feed(std::string(9, 'x')));  // takes nothing more
  EXPECT_FALSE(r.at_boundary());
}

TEST(frame_reader, a_four_gigabyte_length_is_refused_without_buffering) {
  frame_reader r(4 << 20);
  EXPECT_FALSE(r.feed(prefix(0, 0xffffffff) + "abc"));
  EXPECT_NE(r.error().find("exceeds"), std::string::npos) << r.error();
}

TEST(frame_reader, a_compressed_message_is_an_error_the_caller_can_tell_apart) {
  frame_reader r(100);
  EXPECT_FALSE(r.feed(prefix(1, 3) + "abc"));
  EXPECT_TRUE(r.compressed());
  EXPECT_NE(r.error().find("compressed"), std::string::npos) << r.error();
  std::string m;
  EXPECT_FALSE(r.next(&m));
}

TEST(frame_reader, an_unknown_flag_is_an_error) {
  frame_reader r(100);
  EXPECT_FALSE(r.feed(prefix(0x80, 1) + "a"));
  EXPECT_FALSE(r.compressed());
  EXPECT_FALSE(r.error().empty());
}

TEST(frame_reader, messages_before_a_bad_frame_are_delivered_then_the_error) {
  frame_reader r(100);
  EXPECT_TRUE(r.feed(grpc_frame("one") + grpc_frame("two") + prefix(1, 1) + "x"));
  std::string m;
  ASSERT_TRUE(r.next(&m));
  EXPECT_EQ(m, "one");
  ASSERT_TRUE(r.next(&m));
  EXPECT_EQ(m, "two");
  EXPECT_FALSE(r.next(&m));
  EXPECT_TRUE(r.compressed());
}

}  // namespace
}  // namespace meridian::transcode
