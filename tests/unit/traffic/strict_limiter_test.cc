// Strict rate limits (strict_limiter.h) on a fake network and a fake clock: one owner per key
// that every node agrees on, exact counts through the owner, batching, timeouts, quorum and
// the hand-over after a view change. Real processes: tests/ratelimit/strict_test.py.
#include "meridian/traffic/strict_limiter.h"

#include <gtest/gtest.h>

#include <deque>
#include <map>
#include <set>

#include "meridian/cluster/hlc.h"
#include "meridian/cluster/wire.h"

namespace meridian::node {
namespace {

using namespace std::chrono_literals;

constexpr int64_t t0 = cluster::hlc_epoch_unix_ms + 1'000'000'000'000;  // window-aligned

// Three nodes a, b, c wired through a fake network: send() and post() queue, pump() delivers
// (a message to an address in `down` is lost) and runs jobs that are due on the fake clock.
struct fake_cluster {
  struct node {
    std::string id, address;
    std::unique_ptr<rate_limiter> limiter;
    std::unique_ptr<strict_limiter> strict;
  };
  int64_t now = 1'000'000;
  int64_t unix_now = t0;  // the owners' wall clock for asks
  std::vector<node> nodes;
  std::deque<std::tuple<std::string, std::string, std::string>> wire;  // to, from, message
  std::multimap<int64_t, std::function<void()>> jobs;
  std::set<std::string> down;
  size_t delivered = 0;
  size_t largest = 0;  // bytes of the largest message sent

  explicit fake_cluster(int64_t handover_ms = 1000) {
    for (std::string id : {"a", "b", "c"}) {
      auto& n = nodes.emplace_back();
      n.id = id;
      n.address = id + ":7946";
      n.limiter = std::make_unique<rate_limiter>(rate_limiter::options{.node_id = id}, nullptr);
      strict_limiter::options o;
      o.self_id = id;
      o.region = "r";
      o.handover_ms = handover_ms;
      o.steady_ms = [this] { return now; };
      o.unix_ms = [this] { return unix_now; };
      const std::string from = n.address;
      n.strict = std::make_unique<strict_limiter>(
          o, *n.limiter,
          [this, from](const std::string& to, std::string m) {
            largest = std::max(largest, m.size());
            wire.emplace_back(to, from, std::move(m));
          },
          [this](std::function<void()> job, std::chrono::microseconds after) {
            jobs.emplace(now + after.count() / 1000, std::move(job));
          });
    }
    set_alive({"a", "b", "c"});
    now += 10'000;  // past the first view's hand-over
  }

  void set_alive(std::set<std::string> alive) {
    std::vector<strict_limiter::member_view> view;
    for (auto& n : nodes) view.push_back({n.id, n.address, "r", alive.count(n.id) > 0});
    for (auto& n : nodes) n.strict->set_members(view);
  }
  node& at(const std::string& address) {
    for (auto& n : nodes)
      if (n.address == address) return n;
    throw std::runtime_error("no node at " + address);
  }
  void pump() {
    for (bool busy = true; busy;) {
      busy = false;
      while (!wire.empty()) {
        auto [to, from, m] = std::move(wire.front());
        wire.pop_front();
        if (down.count(to) || down.count(from)) continue;
        ++delivered;
        at(to).strict->on_message(from, m);
        busy = true;
      }
      while (!jobs.empty() && jobs.begin()->first <= now) {
        auto job = std::move(jobs.begin()->second);
        jobs.erase(jobs.begin());
        job();
        busy = true;
      }
    }
  }
};

limit_spec strict_spec(uint64_t limit, uint64_t window_ms = 10'000) {
  limit_spec s;
  s.strict = true;
  s.limit = limit;
  s.window_ms = window_ms;
  s.sliding = false;
  s.scope = limit_spec::scope_kind::global;
  s.on_partition = limit_spec::partition_policy::fail_closed;
  s.strict_timeout_ms = 100;
  return s;
}

// Decides one request for key on node n as the stage does: here, or by asking the owner.
// Returns through *out (set once the answer arrives; pump() delivers it).
void request(fake_cluster::node& n, uint64_t key, const limit_spec& spec, int64_t now_ms,
             std::function<void(strict_limiter::outcome)> out) {
  auto where = n.strict->locate(key, spec);
  if (where.kind == strict_limiter::location::remote) {
    n.strict->ask(where.address, key, spec, out);
  } else if (where.kind == strict_limiter::location::here) {
    out(n.strict->decide_here(key, spec, now_ms, 0));
  } else {
    out({});
  }
}

TEST(strict_limiter, every_node_agrees_on_one_owner_per_key) {
  fake_cluster c;
  auto spec = strict_spec(10);
  std::map<std::string, int> owned;
  for (uint64_t key = 1; key <= 3000; ++key) {
    std::string owner;
    int here = 0;
    for (auto& n : c.nodes) {
      auto where = n.strict->locate(key, spec);
      if (where.kind == strict_limiter::location::here) {
        ++here;
        owner = n.address;
      }
    }
    ASSERT_EQ(here, 1) << key;
    for (auto& n : c.nodes) {
      auto where = n.strict->locate(key, spec);
      if (where.kind == strict_limiter::location::remote) {
        EXPECT_EQ(where.address, owner);
      }
    }
    ++owned[owner];
  }
  for (const auto& [owner, n] : owned) EXPECT_GT(n, 800) << owner;  // spread evenly
}

TEST(strict_limiter, a_dead_member_moves_only_its_own_keys) {
  fake_cluster c;
  auto spec = strict_spec(10);
  std::map<uint64_t, std::string> before;
  for (uint64_t key = 1; key <= 1000; ++key) {
    auto w = c.nodes[0].strict->locate(key, spec);
    before[key] = w.kind == strict_limiter::location::here ? c.nodes[0].address : w.address;
  }
  c.set_alive({"a", "b"});
  for (uint64_t key = 1; key <= 1000; ++key) {
    auto w = c.nodes[0].strict->locate(key, spec);
    std::string now = w.kind == strict_limiter::location::here ? c.nodes[0].address : w.address;
    if (before[key] != "c:7946") {
      EXPECT_EQ(now, before[key]) << key;
    }
    EXPECT_NE(now, "c:7946");
  }
}

TEST(strict_limiter, admissions_from_every_node_stop_exactly_at_the_limit) {
  fake_cluster c;
  auto spec = strict_spec(100);
  int admitted = 0, refused = 0, undecided = 0;
  for (int i = 0; i < 300; ++i) {
    request(c.nodes[i % 3], 42, spec, t0 + i, [&](strict_limiter::outcome o) {
      if (!o.decided) {
        ++undecided;
      } else {
        ++(o.decision.allowed ? admitted : refused);
        EXPECT_EQ(o.decision.limit, 100u);
      }
    });
    if (i % 7 == 0) c.pump();
  }
  c.pump();
  EXPECT_EQ(admitted, 100);
  EXPECT_EQ(refused, 200);
  EXPECT_EQ(undecided, 0);
}

TEST(strict_limiter, asks_for_one_owner_travel_in_batches) {
  fake_cluster c;
  auto spec = strict_spec(1000);
  // Keys owned by a, asked from b: 100 asks before the gossip thread runs make 4 messages
  // (32 + 32 + 32 sent as they fill, the rest by the posted flush), answered in 4.
  auto& b = c.nodes[1];
  std::vector<uint64_t> keys;
  for (uint64_t key = 1; keys.size() < 100; ++key) {
    auto w = b.strict->locate(key, spec);
    if (w.kind == strict_limiter::location::remote && w.address == "a:7946") keys.push_back(key);
  }
  int answered = 0;
  for (auto key : keys) b.strict->ask("a:7946", key, spec, [&](auto o) { answered += o.decided; });
  EXPECT_EQ(b.strict->stats().messages_out.load(), 3u);
  c.pump();
  EXPECT_EQ(answered, 100);
  EXPECT_EQ(b.strict->stats().messages_out.load(), 4u);
  EXPECT_EQ(c.nodes[0].strict->stats().messages_out.load(), 4u);
  EXPECT_EQ(c.nodes[0].strict->stats().decided_for_others.load(), 100u);
  EXPECT_EQ(c.delivered, 8u);
}

TEST(strict_limiter, a_batch_of_the_largest_asks_fits_one_direct_message) {
  fake_cluster c;
  auto spec = strict_spec(~0ull >> 1, ~0ull >> 2);
  std::string error;
  spec.calendar = month_calendar::make("UTC", &error);
  spec.timezone = std::string(60, 'z');
  for (int i = 0; i < 200; ++i)
    c.nodes[1].strict->ask("a:7946", ~0ull - static_cast<uint64_t>(i), spec, [](auto) {});
  c.pump();
  // The ids count up to 2^32 over a life (the test's are small: 4 more bytes each).
  EXPECT_LE(c.largest + 4 * 32, 1200u);
  EXPECT_GE(c.nodes[1].strict->stats().messages_out.load(), 200u / 32);
}

TEST(strict_limiter, an_owner_that_does_not_answer_leaves_the_ask_undecided_at_its_timeout) {
  fake_cluster c;
  auto spec = strict_spec(10);
  c.down.insert("a:7946");
  int calls = 0;
  strict_limiter::outcome got;
  got.decided = true;
  c.nodes[1].strict->ask("a:7946", 7, spec, [&](auto o) {
    ++calls;
    got = o;
  });
  c.pump();
  EXPECT_EQ(calls, 0);  // still waiting
  c.now += 99;
  c.pump();
  EXPECT_EQ(calls, 0);
  c.now += 10;  // past the 100 ms timeout and the 5 ms sweep
  c.pump();
  EXPECT_EQ(calls, 1);
  EXPECT_FALSE(got.decided);
  EXPECT_EQ(c.nodes[1].strict->stats().timed_out.load(), 1u);
  c.now += 1000;
  c.pump();
  EXPECT_EQ(calls, 1);  // once
}

TEST(strict_limiter, without_a_majority_alive_no_node_decides) {
  fake_cluster c;
  auto spec = strict_spec(10);
  c.set_alive({"a"});  // b and c dead (not left): a sees 1 of 3
  for (uint64_t key = 1; key < 100; ++key)
    EXPECT_EQ(c.nodes[0].strict->locate(key, spec).kind, strict_limiter::location::none);
  c.set_alive({"a", "b"});  // 2 of 3
  c.now += 2000;
  for (uint64_t key = 1; key < 100; ++key)
    EXPECT_NE(c.nodes[0].strict->locate(key, spec).kind, strict_limiter::location::none);
  // A member that left is not counted: a alone of {a, b} after c left has no majority either.
  std::vector<strict_limiter::member_view> view = {{"a", "a:7946", "r", true},
                                                   {"b", "b:7946", "r", false}};
  c.nodes[0].strict->set_members(view);
  EXPECT_EQ(c.nodes[0].strict->locate(1, spec).kind, strict_limiter::location::none);
  view.pop_back();  // b left too: a alone is the whole scope
  c.nodes[0].strict->set_members(view);
  EXPECT_EQ(c.nodes[0].strict->locate(1, spec).kind, strict_limiter::location::here);
}

TEST(strict_limiter, a_new_owner_decides_a_taken_over_key_only_after_the_hand_over) {
  fake_cluster c(1000);
  auto spec = strict_spec(10);
  // Keys of c, and keys that a owned all along.
  uint64_t moved = 0, stayed = 0;
  for (uint64_t key = 1; !moved || !stayed; ++key) {
    auto w = c.nodes[0].strict->locate(key, spec);
    if (w.kind == strict_limiter::location::remote && w.address == "c:7946" && !moved) moved = key;
    if (w.kind == strict_limiter::location::here && !stayed) stayed = key;
  }
  c.set_alive({"a", "b"});
  auto& a = c.nodes[0];
  // `moved` now belongs to a or b; have its new owner try.
  auto& owner = a.strict->locate(moved, spec).kind == strict_limiter::location::here
                    ? a
                    : c.at(a.strict->locate(moved, spec).address);
  EXPECT_FALSE(owner.strict->decide_here(moved, spec, t0, 0).decided);
  EXPECT_TRUE(a.strict->decide_here(stayed, spec, t0, 0).decided);  // no hand-over for it
  // An ask for the moved key is answered "handing over" (undecided), not with a decision.
  bool decided = true;
  auto& asker = &owner == &c.nodes[0] ? c.nodes[1] : c.nodes[0];
  asker.strict->ask(owner.address, moved, spec, [&](auto o) { decided = o.decided; });
  c.pump();
  EXPECT_FALSE(decided);
  EXPECT_EQ(asker.strict->stats().not_owner.load(), 1u);
  c.now += 1001;
  EXPECT_TRUE(owner.strict->decide_here(moved, spec, t0, 0).decided);
}

TEST(strict_limiter, a_node_that_stood_still_decides_nothing_until_it_has_caught_up) {
  fake_cluster c(1000);
  auto spec = strict_spec(10);
  auto& a = c.nodes[0];
  uint64_t mine = 0;
  for (uint64_t key = 1; !mine; ++key)
    if (a.strict->locate(key, spec).kind == strict_limiter::location::here) mine = key;
  a.strict->tick();
  c.now += 40;
  a.strict->tick();
  EXPECT_TRUE(a.strict->decide_here(mine, spec, t0, 0).decided);
  c.now += 5000;  // SIGSTOP for 5 s: workers may run before the gossip thread ticks again
  EXPECT_EQ(a.strict->locate(mine, spec).kind, strict_limiter::location::none);
  a.strict->tick();
  EXPECT_EQ(a.strict->locate(mine, spec).kind, strict_limiter::location::here);
  EXPECT_FALSE(a.strict->decide_here(mine, spec, t0, 0).decided);  // handing over to itself
  for (int i = 0; i < 11; ++i) {                                   // ticking on as usual
    c.now += 100;
    a.strict->tick();
  }
  EXPECT_TRUE(a.strict->decide_here(mine, spec, t0, 0).decided);
}

TEST(strict_limiter, a_node_asked_for_a_key_it_does_not_own_answers_not_owner) {
  fake_cluster c;
  auto spec = strict_spec(10);
  uint64_t key = 1;
  while (c.nodes[1].strict->locate(key, spec).kind == strict_limiter::location::here) ++key;
  bool called = false, decided = true;
  // b believes c owns everything (a stale view); c is asked for a key it does not own.
  for (auto& n : c.nodes) {
    if (n.strict->locate(key, spec).kind == strict_limiter::location::here) continue;
    if (n.id == "a") continue;
    n.strict->ask(n.id == "b" ? "c:7946" : "b:7946", key, spec, [&](auto o) {
      called = true;
      decided = o.decided;
    });
    break;
  }
  c.pump();
  EXPECT_TRUE(called);
  EXPECT_FALSE(decided);
}

TEST(strict_limiter, malformed_messages_are_counted_and_change_nothing) {
  fake_cluster c;
  auto& a = *c.nodes[0].strict;
  a.on_message("b:7946", "");
  a.on_message("b:7946", "\x14\x02\x29\x1c\x15\x0a\x13\x09\x00\x00");  // result 9
  a.on_message("b:7946", std::string(2000, '\xff'));
  EXPECT_EQ(a.stats().malformed.load(), 3u);
  EXPECT_TRUE(c.wire.empty());
  // An answer for an ask that does not exist is ignored.
  cluster::strict_batch b;
  cluster::strict_answer stray;
  stray.id = 12345;
  stray.result = cluster::strict_result::admitted;
  b.answers.push_back(stray);
  a.on_message("b:7946", cluster::encode(b));
  EXPECT_EQ(a.stats().answered.load(), 0u);
}

TEST(strict_limiter, month_windows_are_decided_in_the_limit_s_time_zone_by_the_owner) {
  fake_cluster c;
  auto spec = strict_spec(2);
  std::string error;
  spec.calendar = month_calendar::make("+05:00", &error);
  spec.timezone = "+05:00";
  spec.window_ms = 31ull * 24 * 3600 * 1000;
  uint64_t key = 1;
  while (c.nodes[1].strict->locate(key, spec).kind != strict_limiter::location::remote) ++key;
  auto& b = c.nodes[1];
  const auto owner = b.strict->locate(key, spec).address;
  // 2026-01-31 20:00 UTC is already February in +05:00: a fresh month for the owner, which
  // rebuilds the calendar from the zone the ask carries.
  const int64_t jan31_20z = 1'769'889'600'000;
  int admitted = 0;
  auto ask = [&] {
    b.strict->ask(owner, key, spec, [&](auto o) { admitted += o.decided && o.decision.allowed; });
    c.pump();
  };
  c.unix_now = jan31_20z - 2 * 3600'000;  // 23:00 on the 31st in +05:00
  for (int i = 0; i < 3; ++i) ask();
  EXPECT_EQ(admitted, 2);
  c.unix_now = jan31_20z;  // 01:00 on February 1st in +05:00
  ask();
  EXPECT_EQ(admitted, 3);
}

}  // namespace
}  // namespace meridian::node
