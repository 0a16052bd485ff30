// The replicated data types: merge is commutative, associative and idempotent over random
// histories (so delivery order, duplication and batching cannot make nodes disagree), plus the
// hybrid clock's promises and the counters' size bounds.
#include "meridian/cluster/crdt.h"

#include <gtest/gtest.h>
#include <malloc.h>

#include <algorithm>
#include <random>
#include <tuple>

#include "meridian/cluster/hlc.h"

namespace meridian::cluster {
namespace {

constexpr int histories = 10000;

lww_entry random_entry(std::mt19937_64& rng) {
  lww_entry e;
  e.version = rng() % 6;
  e.origin = std::string(1, static_cast<char>('a' + rng() % 3));
  e.deleted = rng() % 4 == 0;
  // Same (version, origin) names the same content, as on a real cluster.
  e.value = e.deleted ? "" : "v" + std::to_string(e.version) + e.origin;
  return e;
}

TEST(crdt, lww_map_merge_is_commutative_associative_and_idempotent_over_random_histories) {
  std::mt19937_64 rng(1);
  for (int h = 0; h < histories; ++h) {
    std::vector<std::pair<std::string, lww_entry>> ops;
    int n = 1 + static_cast<int>(rng() % 12);
    for (int i = 0; i < n; ++i)
      ops.emplace_back("k" + std::to_string(rng() % 3), random_entry(rng));

    lww_map in_order;
    for (const auto& [k, e] : ops) in_order.merge(k, e);

    auto shuffled = ops;
    std::shuffle(shuffled.begin(), shuffled.end(), rng);
    // Duplicate some (idempotence) and merge through two intermediate replicas
    // (associativity: (a ∪ b) ∪ c == a ∪ (b ∪ c)).
    for (int i = 0; i < n / 2; ++i) shuffled.push_back(ops[rng() % ops.size()]);
    lww_map left, right, combined;
    size_t cut = rng() % (shuffled.size() + 1);
    for (size_t i = 0; i < shuffled.size(); ++i)
      (i < cut ? left : right).merge(shuffled[i].first, shuffled[i].second);
    for (const auto& [k, e] : right.entries()) combined.merge(k, e);
    for (const auto& [k, e] : left.entries()) combined.merge(k, e);

    ASSERT_EQ(in_order.entries(), combined.entries()) << "history " << h;
    ASSERT_EQ(in_order.digest(), combined.digest()) << "history " << h;
    ASSERT_EQ(in_order.max_version(), combined.max_version()) << "history " << h;
  }
}

TEST(crdt, lww_map_highest_version_then_origin_wins_and_tombstones_beat_equal_stamps) {
  lww_map m;
  EXPECT_TRUE(m.merge("r", {5, "a", false, "one"}));
  EXPECT_FALSE(m.merge("r", {4, "z", false, "older"}));
  EXPECT_TRUE(m.merge("r", {5, "b", false, "two"}));
  EXPECT_EQ(m.find("r")->value, "two");
  EXPECT_TRUE(m.merge("r", {6, "a", true, ""}));
  EXPECT_TRUE(m.find("r")->deleted);
  EXPECT_EQ(m.live_size(), 0u);
  EXPECT_FALSE(m.merge("r", {6, "a", true, ""}));  // idempotent
}

TEST(crdt, lww_digest_covers_live_entries_only) {
  lww_map a, b;
  a.merge("x", {1, "n1", false, "v"});
  b.merge("x", {1, "n1", false, "v"});
  EXPECT_EQ(a.digest(), b.digest());
  a.merge("gone", {3, "n1", true, ""});  // a deleted a key b never had: same documents
  EXPECT_EQ(a.digest(), b.digest());
  b.merge("y", {2, "n2", false, "w"});
  EXPECT_NE(a.digest(), b.digest());
  b.merge("y", {4, "n2", true, ""});
  EXPECT_EQ(a.digest(), b.digest());
  EXPECT_EQ(a.collect_tombstones(4), 1u);
  EXPECT_EQ(a.find("gone"), nullptr);
  EXPECT_EQ(b.collect_tombstones(4), 0u);  // y's tombstone is at 4: not before 4
}

std::vector<std::tuple<uint16_t, uint64_t, uint32_t, uint32_t>> snapshot(const window_counters& c) {
  std::vector<std::tuple<uint16_t, uint64_t, uint32_t, uint32_t>> out;
  c.for_each([&](uint16_t node, const counter_update& u) {
    out.emplace_back(node, u.key, u.window, u.count);
  });
  std::sort(out.begin(), out.end());
  return out;
}

TEST(crdt, window_counter_merge_is_commutative_associative_and_idempotent_over_random_histories) {
  std::mt19937_64 rng(2);
  for (int h = 0; h < histories; ++h) {
    std::vector<std::pair<uint16_t, counter_update>> ops;
    int n = 1 + static_cast<int>(rng() % 16);
    for (int i = 0; i < n; ++i) {
      counter_update u{rng() % 3, 1000, static_cast<uint32_t>(100 + rng() % 4),
                       static_cast<uint32_t>(1 + rng() % 50)};  // zero counts never travel
      ops.emplace_back(static_cast<uint16_t>(1 + rng() % 3), u);
    }
    auto replica = [] {
      window_counters c(1000);
      for (const char* id : {"self", "n1", "n2", "n3"}) c.node_index(id);
      return c;
    };
    window_counters in_order = replica();
    for (const auto& [node, u] : ops) in_order.merge(node, u);

    auto shuffled = ops;
    std::shuffle(shuffled.begin(), shuffled.end(), rng);
    for (int i = 0; i < n / 2; ++i) shuffled.push_back(ops[rng() % ops.size()]);
    window_counters left = replica(), right = replica(), combined = replica();
    size_t cut = rng() % (shuffled.size() + 1);
    for (size_t i = 0; i < shuffled.size(); ++i)
      (i < cut ? left : right).merge(shuffled[i].first, shuffled[i].second);
    for (auto* part : {&right, &left})
      part->for_each([&](uint16_t node, const counter_update& u) { combined.merge(node, u); });

    ASSERT_EQ(snapshot(in_order), snapshot(combined)) << "history " << h;
  }
}

TEST(crdt, window_counter_read_sums_slots_and_keeps_the_previous_window) {
  window_counters c(100);
  c.node_index("self");
  uint16_t b = c.node_index("b");
  EXPECT_EQ(c.add(7, 1000, 10, 3), 3u);
  EXPECT_EQ(c.add(7, 1000, 10, 2), 5u);
  EXPECT_TRUE(c.merge(b, {7, 1000, 10, 4}));
  EXPECT_FALSE(c.merge(b, {7, 1000, 10, 3}));  // max, not sum: an old slot value changes nothing
  EXPECT_EQ(c.sum(7, 10), 9u);
  c.add(7, 1000, 11, 1);  // the next window: window 10 becomes the previous one
  EXPECT_EQ(c.sum(7, 11), 1u);
  EXPECT_EQ(c.sum(7, 10), 9u);
  EXPECT_FALSE(c.merge(b, {7, 1000, 9, 100}));  // older than the previous window: dropped
  c.add(7, 1000, 13, 1);                        // two windows on: both old ones are gone
  EXPECT_EQ(c.sum(7, 11), 0u);
  EXPECT_EQ(c.sum(7, 10), 0u);
}

TEST(crdt, window_counters_expire_after_their_window_stops_mattering) {
  window_counters c(100);
  c.node_index("self");
  int64_t now = hlc_epoch_unix_ms + 10'500;  // inside window 10 of 1 s windows
  c.add(1, 1000, 10, 1);
  c.add(2, 1000, 8, 1);
  EXPECT_EQ(c.expire(now), 1u);  // window 8 ended at 9 s, useless from 10 s
  EXPECT_EQ(c.sum(1, 10), 1u);
  EXPECT_EQ(c.expire(hlc_epoch_unix_ms + 12'000), 1u);
  EXPECT_EQ(c.size(), 0u);
}

TEST(crdt, window_counters_hold_at_most_max_keys_under_a_flood) {
  window_counters c(1000);
  c.node_index("self");
  for (uint64_t k = 0; k < 100'000; ++k) c.add(k * 0x9E3779B97F4A7C15ull, 1000, 5, 1);
  EXPECT_LE(c.size(), 1000u);
  EXPECT_EQ(c.evictions(), 99'000u);
}

TEST(crdt, requeue_own_sends_the_current_windows_replicated_counts_again) {
  // After a healed partition: keys that stopped changing (their side's share was spent) leave
  // again; local-only keys, keys of windows that are over and other nodes' slots do not.
  window_counters c(100);
  c.node_index("self");
  const uint16_t other = c.node_index("other");
  const int64_t now = hlc_epoch_unix_ms + 10'500;  // window 10 of 1 s windows
  c.add(1, 1000, 10, 3);                           // current window
  c.add(2, 1000, 9, 4);                            // the previous one (sliding windows read it)
  c.add(3, 1000, 8, 5);                            // over
  c.add(4, 1000, 10, 6, false, false);             // local only
  c.merge(other, {5, 1000, 10, 7});                // not this node's count
  c.take_dirty(SIZE_MAX);
  EXPECT_TRUE(c.take_dirty(SIZE_MAX).empty());
  EXPECT_EQ(c.requeue_own(now), 2u);
  auto again = c.take_dirty(SIZE_MAX);
  std::sort(again.begin(), again.end(),
            [](const counter_update& a, const counter_update& b) { return a.key < b.key; });
  ASSERT_EQ(again.size(), 2u);
  EXPECT_EQ(again[0], (counter_update{1, 1000, 10, 3}));
  EXPECT_EQ(again[1], (counter_update{2, 1000, 9, 4}));
  EXPECT_TRUE(c.take_dirty(SIZE_MAX).empty());
  // Bounded: the largest own counts first.
  EXPECT_EQ(c.requeue_own(now, 1), 1u);
  again = c.take_dirty(SIZE_MAX);
  ASSERT_EQ(again.size(), 1u);
  EXPECT_EQ(again[0].key, 2u);
}

TEST(crdt, dirty_counters_are_taken_once_urgent_first) {
  window_counters c(100);
  c.node_index("self");
  c.add(1, 1000, 5, 1);
  c.add(2, 1000, 5, 1, true);
  c.add(1, 1000, 5, 1);
  auto first = c.take_dirty(1);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].key, 2u);
  auto rest = c.take_dirty(10);
  ASSERT_EQ(rest.size(), 1u);
  EXPECT_EQ(rest[0], (counter_update{1, 1000, 5, 2}));
  EXPECT_TRUE(c.take_dirty(10).empty());
}

TEST(crdt, a_busy_key_is_taken_before_a_churn_of_one_off_keys) {
  // Issue 15 (9): 2 M distinct keys on one node starved the one key two nodes were both
  // limiting; it sat behind the churn until the others had admitted it twice over.
  window_counters c(1'000'000);
  c.node_index("self");
  const uint64_t busy = 0xB0B;
  c.add(busy, 1000, 5, 1);  // first seen as a one-off, before the churn
  for (uint64_t k = 1; k <= 200'000; ++k) {
    c.add(k * 0x9E3779B97F4A7C15ull, 1000, 5, 1);
    if (k % 1000 == 0) c.add(busy, 1000, 5, 1);
  }
  auto first = c.take_dirty(1);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0], (counter_update{busy, 1000, 5, 201}));
  // Taken, it starts over as a one-off; its second change makes it hot again.
  c.add(busy, 1000, 5, 1);
  c.add(3, 1000, 5, 1);
  c.add(busy, 1000, 5, 1);
  first = c.take_dirty(1);
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].key, busy);
}

TEST(crdt, the_backlog_of_one_off_keys_is_bounded_and_what_leaves_it_is_counted) {
  window_counters c(1'000'000, /*max_cold_backlog=*/1000);
  c.node_index("self");
  for (uint64_t k = 1; k <= 5000; ++k) c.add(k, 1000, 5, 1);
  EXPECT_EQ(c.dirty(), 1000u);
  EXPECT_EQ(c.dropped(), 4000u);
  EXPECT_EQ(c.size(), 5000u) << "the counts stay; only their place in the queue goes";
  // The newest ones wait, oldest first; a dropped key's next change queues it as hot.
  c.add(1, 1000, 5, 1);
  auto taken = c.take_dirty(2);
  ASSERT_EQ(taken.size(), 2u);
  EXPECT_EQ(taken[0], (counter_update{1, 1000, 5, 2}));
  EXPECT_EQ(taken[1].key, 4001u);
  EXPECT_EQ(c.take_dirty(SIZE_MAX).size(), 999u);
  EXPECT_EQ(c.dirty(), 0u);
}

TEST(crdt, a_key_moves_up_as_it_becomes_hot_or_urgent_and_is_taken_once) {
  window_counters c(100);
  c.node_index("self");
  c.add(1, 1000, 5, 1);        // cold
  c.add(2, 1000, 5, 1);        // cold
  c.add(3, 1000, 5, 1);        // cold
  c.add(2, 1000, 5, 1);        // hot
  c.add(3, 1000, 5, 1, true);  // urgent
  EXPECT_EQ(c.dirty(), 3u);
  auto taken = c.take_dirty(10);
  ASSERT_EQ(taken.size(), 3u);
  EXPECT_EQ(taken[0].key, 3u);
  EXPECT_EQ(taken[1].key, 2u);
  EXPECT_EQ(taken[2].key, 1u);
  EXPECT_TRUE(c.take_dirty(10).empty());
  EXPECT_EQ(c.dirty(), 0u);
}

TEST(crdt, a_counter_update_costs_at_most_24_bytes_on_the_wire_and_round_trips) {
  // A realistic worst case: a random 64-bit key, a one-day window, a window index in 2093,
  // a count of four billion.
  std::vector<counter_update> updates = {
      {0xFFFFFFFFFFFFFFFFull, 86'400'000, 0xFFFFFFFFu, 0xFFFFFFFFu}, {12345, 1000, 90'000'000, 7}};
  std::string packed = pack_counter_updates(updates);
  EXPECT_LE(pack_counter_updates({updates[0]}).size(), 24u);
  EXPECT_LE(pack_counter_updates({updates[1]}).size(), 16u);
  std::vector<counter_update> back;
  ASSERT_TRUE(unpack_counter_updates(packed, &back));
  EXPECT_EQ(back, updates);
  back.clear();
  EXPECT_FALSE(unpack_counter_updates(packed.substr(0, packed.size() - 1), &back));
  EXPECT_FALSE(unpack_counter_updates(std::string(12, '\xff'), &back));
}

TEST(crdt, one_million_counter_keys_fit_in_256_mib) {
  // Three nodes' slots in the current and previous window of every key: the shape of a busy
  // global limit. Heap use is read from the allocator, so the figure includes every overhead.
  size_t before = mallinfo2().uordblks;
  {
    window_counters c(2'000'000);
    c.node_index("self");
    uint16_t b = c.node_index("b"), d = c.node_index("c");
    for (uint64_t k = 0; k < 1'000'000; ++k) {
      uint64_t key = k * 0x9E3779B97F4A7C15ull;
      c.add(key, 60'000, 100, 1);
      c.merge(b, {key, 60'000, 100, 2});
      c.merge(d, {key, 60'000, 101, 3});
      c.merge(b, {key, 60'000, 101, 1});
    }
    c.take_dirty(SIZE_MAX);
    size_t used = mallinfo2().uordblks - before;
    RecordProperty("bytes_per_key", static_cast<int>(used / 1'000'000));
    std::printf("1M counter keys: %.1f MiB (%zu bytes a key)\n", used / 1048576.0,
                used / 1'000'000);
    EXPECT_LE(used, 256u << 20);
    EXPECT_EQ(c.size(), 1'000'000u);
  }
}

TEST(hlc, timestamps_increase_even_when_the_wall_clock_steps_back) {
  int64_t wall = hlc_epoch_unix_ms + 1'000'000;
  hybrid_clock c([&] { return wall; }, 30'000);
  hlc_time a = c.now();
  hlc_time b = c.now();
  EXPECT_GT(b, a);
  wall -= 5'000;  // NTP stepped the clock back
  hlc_time d = c.now();
  EXPECT_GT(d, b);
  EXPECT_EQ(hlc_unix_ms(a), hlc_epoch_unix_ms + 1'000'000);
  EXPECT_LT(a, 1ull << 53);  // exact in JSON
}

TEST(hlc, observing_a_remote_time_orders_later_events_after_it) {
  int64_t wall = hlc_epoch_unix_ms + 1'000'000;
  hybrid_clock c([&] { return wall; }, 30'000);
  hlc_time remote = hlc_from_unix_ms(wall + 10'000) + 5;  // a peer 10 s ahead
  EXPECT_TRUE(c.observe(remote));
  EXPECT_GT(c.now(), remote);
  EXPECT_EQ(c.max_observed_skew_ms(), 10'000);
}

TEST(hlc, a_remote_clock_beyond_max_skew_is_refused_and_reported) {
  int64_t wall = hlc_epoch_unix_ms + 1'000'000;
  hybrid_clock c([&] { return wall; }, 30'000);
  hlc_time before = c.now();
  EXPECT_FALSE(c.observe(hlc_from_unix_ms(wall + 3'600'000)));
  EXPECT_EQ(hlc_unix_ms(c.now()), wall);  // not dragged an hour ahead
  EXPECT_GT(c.now(), before);
  EXPECT_EQ(c.max_observed_skew_ms(), 3'600'000);
}

}  // namespace
}  // namespace meridian::cluster
