// byte_buffer: appends, consumption, and the pin that keeps bytes a write in flight points at.
#include "meridian/common/byte_buffer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>

namespace meridian::node {
namespace {

std::string pattern(size_t n, char seed) {
  std::string s(n, '\0');
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>(seed + i % 23);
  return s;
}

TEST(byte_buffer, appends_and_consumes_across_growth) {
  byte_buffer b;
  std::string expect;
  for (int i = 0; i < 40; ++i) {
    auto piece = pattern(3000 + i, static_cast<char>('a' + i % 5));
    b.append(piece);
    expect += piece;
    if (i % 3 == 0) {
      b.consume(1000);
      expect.erase(0, 1000);
    }
    ASSERT_EQ(b.view(), expect) << "after piece " << i;
  }
}

TEST(byte_buffer, pinned_bytes_stay_put_through_growth_and_compaction) {
  // What a write in flight sees: the pointer and length taken when it started. Appends that
  // outgrow the block (growth) or would compact it must leave those bytes readable and intact
  // until unpin (ASan reports a read of a freed block; the comparison catches a moved one).
  for (size_t consumed : {size_t{0}, size_t{5000}}) {
    byte_buffer b;
    b.append(pattern(byte_buffer::block_size - 100, 'A'));
    b.consume(consumed);
    const std::string in_flight(b.data(), b.size());
    b.pin();
    const char* p = b.data();
    const size_t n = b.size();
    std::string more;
    for (int i = 0; i < 50; ++i) {
      auto piece = pattern(1000, static_cast<char>('k' + i % 7));
      b.append(piece);
      more += piece;
      ASSERT_EQ(std::string(p, n), in_flight) << "append " << i << ", consumed " << consumed;
    }
    EXPECT_EQ(b.view(), in_flight + more);
    b.release_if_empty();  // not empty: nothing happens
    b.consume(n);          // the write completed
    b.unpin();
    EXPECT_EQ(b.view(), more);
  }
}

TEST(byte_buffer, a_buffer_pinned_by_every_write_of_a_stream_that_never_drains_stays_small) {
  // A fast producer and a slow writer: each round a write of what is buffered starts (pinned),
  // more arrives, and the write takes only part of it. 64 MiB pass; the backlog stays ~48 KiB.
  byte_buffer b;
  b.append(pattern(48 * 1024, 'a'));
  size_t largest = 0;
  for (int round = 0; round < 4096; ++round) {
    b.pin();
    b.append(pattern(16 * 1024, static_cast<char>('a' + round % 26)));
    b.unpin();
    b.consume(16 * 1024);
    largest = std::max(largest, b.capacity());
  }
  EXPECT_LE(largest, size_t{256 * 1024});
}

TEST(byte_buffer, a_pinned_empty_buffer_keeps_its_block_until_unpinned) {
  byte_buffer b;
  b.append("hello");
  b.pin();
  const char* p = b.data();
  b.consume(5);
  b.release_if_empty();  // pinned: kept
  b.append(pattern(byte_buffer::block_size * 3, 'x'));
  EXPECT_EQ(std::string(p, 5), "hello");
  b.unpin();
  EXPECT_EQ(b.size(), byte_buffer::block_size * 3);
}

}  // namespace
}  // namespace meridian::node
