#include "meridian/cluster/replay_guard.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <vector>

namespace meridian::cluster {
namespace {

using namespace std::chrono_literals;

constexpr int64_t t0 = 1'800'000'000'000;  // Unix ms

send_stamp at(int64_t ms, uint64_t seq, uint64_t boot = 7) {
  return {.sent_ms = ms, .boot = boot, .seq = seq};
}

TEST(replay_guard, a_message_is_accepted_once) {
  replay_guard g;
  EXPECT_EQ(g.check("n1", at(t0, 1), t0), replay_verdict::fresh);
  EXPECT_EQ(g.check("n1", at(t0, 1), t0), replay_verdict::repeated);
  EXPECT_EQ(g.check("n1", at(t0, 2), t0), replay_verdict::fresh);
  EXPECT_EQ(g.check("n1", at(t0, 2), t0 + 10), replay_verdict::repeated);
  EXPECT_EQ(g.check("n1", at(t0, 1), t0 + 10), replay_verdict::repeated);
}

TEST(replay_guard, senders_and_boots_count_separately) {
  replay_guard g;
  EXPECT_EQ(g.check("n1", at(t0, 1), t0), replay_verdict::fresh);
  EXPECT_EQ(g.check("n2", at(t0, 1), t0), replay_verdict::fresh);
  EXPECT_EQ(g.check("n1", at(t0, 1, /*boot=*/8), t0), replay_verdict::fresh);  // restarted
  EXPECT_EQ(g.check("n1", at(t0, 1, 8), t0), replay_verdict::repeated);
  EXPECT_EQ(g.entries(), 3u);
  // A sender id that is a prefix of another cannot alias it.
  EXPECT_EQ(g.check("n", at(t0, 1), t0), replay_verdict::fresh);
}

TEST(replay_guard, stamps_outside_the_clock_window_are_stale_both_ways) {
  replay_guard g(30s);
  EXPECT_EQ(g.check("n1", at(t0 - 30'000, 1), t0), replay_verdict::fresh);
  EXPECT_EQ(g.check("n1", at(t0 + 30'000, 2), t0), replay_verdict::fresh);
  EXPECT_EQ(g.check("n1", at(t0 - 30'001, 3), t0), replay_verdict::stale);
  EXPECT_EQ(g.check("n1", at(t0 + 30'001, 4), t0), replay_verdict::stale);
  // A message recorded 15 minutes ago, resent now, with a sequence number never seen.
  EXPECT_EQ(g.check("n3", at(t0 - 15 * 60'000, 1), t0), replay_verdict::stale);
  EXPECT_EQ(g.entries(), 1u);  // refused messages leave nothing behind
}

TEST(replay_guard, unstamped_messages_are_refused) {
  replay_guard g;
  EXPECT_EQ(g.check("n1", send_stamp{}, t0), replay_verdict::unstamped);
  EXPECT_EQ(g.check("n1", at(0, 1), t0), replay_verdict::unstamped);
  EXPECT_EQ(g.check("n1", at(t0, 1, /*boot=*/0), t0), replay_verdict::unstamped);
  EXPECT_EQ(g.check("n1", at(t0, 0), t0), replay_verdict::unstamped);
}

TEST(replay_guard, reordered_messages_within_the_window_pass_once_each) {
  replay_guard g;
  std::vector<uint64_t> seqs(3000);
  std::iota(seqs.begin(), seqs.end(), 1);
  // Each block of 500 shuffled: reordering of up to 499 places, well within 1,024.
  std::mt19937 rng(5);
  for (size_t i = 0; i < seqs.size(); i += 500)
    std::shuffle(seqs.begin() + i, seqs.begin() + i + 500, rng);
  for (uint64_t s : seqs) EXPECT_EQ(g.check("n1", at(t0, s), t0), replay_verdict::fresh) << s;
  for (uint64_t s = 3000 - replay_guard::seq_window + 1; s <= 3000; ++s)
    EXPECT_EQ(g.check("n1", at(t0, s), t0), replay_verdict::repeated) << s;
}

TEST(replay_guard, sequence_numbers_behind_the_window_are_too_old_even_if_unseen) {
  replay_guard g;
  EXPECT_EQ(g.check("n1", at(t0, 2000), t0), replay_verdict::fresh);
  EXPECT_EQ(g.check("n1", at(t0, 2000 - 1023), t0), replay_verdict::fresh);
  EXPECT_EQ(g.check("n1", at(t0, 2000 - 1024), t0), replay_verdict::too_old);
  EXPECT_EQ(g.check("n1", at(t0, 1), t0), replay_verdict::too_old);
}

TEST(replay_guard, the_bitmap_shifts_exactly_at_every_distance) {
  // For every jump d, the numbers seen before the jump are still remembered where the window
  // covers them and too old where it does not; none is forgotten or invented.
  for (uint64_t d : {1ull, 2ull, 63ull, 64ull, 65ull, 127ull, 128ull, 500ull, 1023ull, 1024ull,
                     1025ull, 5000ull}) {
    replay_guard g;
    const uint64_t base = 10'000;
    for (uint64_t s = base - 99; s <= base; s += 3)
      ASSERT_EQ(g.check("n1", at(t0, s), t0), replay_verdict::fresh);
    ASSERT_EQ(g.check("n1", at(t0, base + d), t0), replay_verdict::fresh) << d;
    for (uint64_t s = base - 99; s <= base; ++s) {
      const bool seen = (s - (base - 99)) % 3 == 0;
      const bool covered = base + d - s < replay_guard::seq_window;
      auto expected = !covered ? replay_verdict::too_old
                      : seen   ? replay_verdict::repeated
                               : replay_verdict::fresh;
      EXPECT_EQ(g.check("n1", at(t0, s), t0), expected) << "jump " << d << ", seq " << s;
    }
  }
}

TEST(replay_guard, the_table_is_bounded_and_forgets_only_what_the_clock_refuses_anyway) {
  replay_guard g(30s, /*max_entries=*/3);
  EXPECT_EQ(g.check("n1", at(t0, 1), t0), replay_verdict::fresh);
  EXPECT_EQ(g.check("n2", at(t0, 1), t0), replay_verdict::fresh);
  EXPECT_EQ(g.check("n3", at(t0 + 20'000, 1), t0 + 20'000), replay_verdict::fresh);
  // Full, and every entry still within the window: a fourth sender is refused, nothing forgotten.
  EXPECT_EQ(g.check("n4", at(t0 + 25'000, 1), t0 + 25'000), replay_verdict::table_full);
  EXPECT_EQ(g.check("n1", at(t0, 1), t0 + 25'000), replay_verdict::repeated);
  // n1 and n2 last sent at t0; past t0 + 30 s their entries go, and their old messages are stale.
  EXPECT_EQ(g.check("n4", at(t0 + 31'000, 1), t0 + 31'000), replay_verdict::fresh);
  EXPECT_EQ(g.entries(), 2u);
  EXPECT_EQ(g.check("n1", at(t0, 1), t0 + 31'000), replay_verdict::stale);
  EXPECT_EQ(g.check("n3", at(t0 + 20'000, 1), t0 + 31'000), replay_verdict::repeated);
}

TEST(replay_guard, verdict_names_are_stable) {
  EXPECT_STREQ(to_string(replay_verdict::fresh), "fresh");
  EXPECT_STREQ(to_string(replay_verdict::unstamped), "unstamped");
  EXPECT_STREQ(to_string(replay_verdict::stale), "stale");
  EXPECT_STREQ(to_string(replay_verdict::repeated), "repeated");
  EXPECT_STREQ(to_string(replay_verdict::too_old), "too_old");
  EXPECT_STREQ(to_string(replay_verdict::table_full), "table_full");
}

}  // namespace
}  // namespace meridian::cluster
