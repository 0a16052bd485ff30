// Strict rate limits (strict_limiter.h) on a fake network and a fake clock: one owner per key
// that every node agrees on, exact counts through the owner, batching, timeouts, quorum and
// the hand-over after a view change. Real processes: tests/ratelimit/strict_test.py.
#include "meridian/traffic/strict_limiter.h"

#include <gtest/gtest.h>

#include <deque>
#include <map>
#include <set>

#include "meridian/cluster/hlc.h"
#include "meridian/cluster/replicated_state.h"
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
    std::unique_ptr<cluster::replicated_state> state;
    std::unique_ptr<rate_limiter> limiter;
    std::unique_ptr<strict_limiter> strict;
  };
  int64_t now = 1'000'000;
  int64_t unix_now = t0;  // the owners' wall clock
  std::vector<node> nodes;
  std::deque<std::tuple<std::string, std::string, std::string>> wire;  // to, from, message
  std::multimap<int64_t, std::function<void()>> jobs;
  std::set<std::string> down;
  size_t delivered = 0;
  size_t largest = 0;  // bytes of the largest message sent
  // What each node last kept of the members it counts (options::remember), by id.
  std::map<std::string, std::vector<strict_limiter::counted_member>> kept;
  // Options for the next build() (a restart): members remembered, seeds configured.
  std::function<void(node&, strict_limiter::options&)> configure;

  fake_cluster() {
    for (std::string id : {"a", "b", "c"}) {
      auto& n = nodes.emplace_back();
      n.id = id;
      n.address = id + ":7946";
      build(n);
    }
    set_alive({"a", "b", "c"});
    now += 10'000;  // past the first view's hand-over
    unix_now += 1;  // the first views began before this window: no take-over to start with
  }

  // (Re)creates a node's state, limiter and strict limiter: a restart when called again.
  void build(node& n) {
    n.strict.reset();
    n.limiter.reset();
    n.state = std::make_unique<cluster::replicated_state>(
        cluster::state_options{.self_id = n.id}, [this] { return unix_now; }, nullptr);
    n.limiter =
        std::make_unique<rate_limiter>(rate_limiter::options{.node_id = n.id}, n.state.get());
    auto* limiter = n.limiter.get();
    n.state->set_counter_observer(
        [limiter](uint64_t k, uint32_t w, uint64_t others) { limiter->on_remote(k, w, others); });
    strict_limiter::options o;
    o.self_id = n.id;
    o.region = "r";
    o.steady_ms = [this] { return now; };
    o.unix_ms = [this] { return unix_now; };
    o.remember = [this, id = n.id](const std::vector<strict_limiter::counted_member>& members) {
      kept[id] = members;
    };
    if (configure) configure(n, o);
    const std::string from = n.address;
    auto* state = n.state.get();
    n.strict = std::make_unique<strict_limiter>(
        o, *n.limiter,
        [this, from](const std::string& to, std::string m) {
          largest = std::max(largest, m.size());
          wire.emplace_back(to, from, std::move(m));
        },
        [this](std::function<void()> job, std::chrono::microseconds after) {
          jobs.emplace(now + after.count() / 1000, std::move(job));
        },
        [state](const std::string& owner, std::vector<strict_limiter::owner_count> counts) {
          std::vector<cluster::counter_update> updates;
          for (const auto& c : counts) updates.push_back({c.key, c.window_ms, c.window, c.count});
          state->merge_counts(owner, updates);
        });
  }

  void set_alive(std::set<std::string> alive) {
    std::vector<strict_limiter::member_view> view;
    for (auto& n : nodes) view.push_back({n.id, n.address, "r", alive.count(n.id) > 0});
    for (auto& n : nodes)
      if (alive.count(n.id)) n.strict->set_members(view);
  }
  node& at(const std::string& address) {
    for (auto& n : nodes)
      if (n.address == address) return n;
    throw std::runtime_error("no node at " + address);
  }
  node& by_id(const std::string& id) { return at(id + ":7946"); }
  void pump() {
    for (bool busy = true; busy;) {
      busy = false;
      while (!wire.empty()) {
        auto [to, from, m] = std::move(wire.front());
        wire.pop_front();
        if (down.count(to) || down.count(from)) continue;
        ++delivered;
        auto& sender = at(from);
        at(to).strict->on_message(sender.id, from, m);
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
  // Advances both clocks by ms, running what falls due.
  void advance(int64_t ms) {
    now += ms;
    unix_now += ms;
    pump();
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

// A member of region "r" at <id>:7946, as the membership lists it.
strict_limiter::member_view member(const std::string& id, bool alive) {
  return strict_limiter::member_view{id, id + ":7946", "r", alive};
}

// Has one request for key decided as the stage does (by its owner, through locate and ask);
// pump() delivers the answer to out.
void request(fake_cluster::node& n, uint64_t key, const limit_spec& spec,
             std::function<void(strict_limiter::outcome)> out) {
  n.strict->ask(n.strict->locate(key, spec), key, spec, out);
}

// The owner of key by node n's view ("" when none).
std::string owner_of(fake_cluster& c, fake_cluster::node& n, uint64_t key, const limit_spec& spec) {
  auto w = n.strict->locate(key, spec);
  if (w.kind == strict_limiter::location::here) return n.address;
  return w.address;
}

// Sends `count` requests for key through the nodes in turn and waits (on the fake clock) until
// all are answered; returns how many were admitted (*undecided: how many got no decision).
int admitted_of(fake_cluster& c, std::vector<fake_cluster::node*> through, uint64_t key,
                const limit_spec& spec, int count, int* undecided = nullptr) {
  auto admitted = std::make_shared<int>(0);
  auto none = std::make_shared<int>(0);
  auto answered = std::make_shared<int>(0);
  for (int i = 0; i < count; ++i) {
    request(*through[static_cast<size_t>(i) % through.size()], key, spec,
            [admitted, none, answered](strict_limiter::outcome o) {
              ++*answered;
              if (!o.decided) ++*none;
              *admitted += o.decided && o.decision.allowed;
            });
    if (i % 5 == 0) c.pump();
  }
  c.pump();
  for (int waited = 0; *answered < count && waited < 2000; waited += 5) c.advance(5);
  EXPECT_EQ(*answered, count) << "every request is answered within the strict timeout";
  if (undecided) *undecided = *none;
  return *admitted;
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
    request(c.nodes[static_cast<size_t>(i) % 3], 42, spec, [&](strict_limiter::outcome o) {
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

TEST(strict_limiter, every_member_holds_the_owner_s_count_before_an_admission_goes_on) {
  fake_cluster c;
  auto spec = strict_spec(100);
  uint64_t key = 1;
  while (owner_of(c, c.nodes[1], key, spec) != "a:7946") ++key;
  // b asks a; when b's answer arrives, b and c already hold a's count (the same datagram, or
  // one sent before it).
  for (int i = 1; i <= 5; ++i) {
    bool checked = false;
    request(c.nodes[1], key, spec, [&](strict_limiter::outcome o) {
      ASSERT_TRUE(o.decided && o.decision.allowed);
      uint32_t window = 0;
      EXPECT_EQ(c.nodes[1].limiter->known_total(key, spec, c.unix_now, &window),
                static_cast<uint64_t>(i));
      checked = true;
    });
    c.pump();
    EXPECT_TRUE(checked);
    uint32_t window = 0;
    EXPECT_EQ(c.nodes[2].limiter->known_total(key, spec, c.unix_now, &window),
              static_cast<uint64_t>(i));
  }
}

TEST(strict_limiter, asks_for_one_owner_travel_in_batches) {
  fake_cluster c;
  auto spec = strict_spec(1000);
  // Keys owned by a, asked from b: 100 asks before the gossip thread runs make 4 messages
  // (32 + 32 + 32 sent as they fill, the rest by the posted flush).
  auto& b = c.nodes[1];
  std::vector<uint64_t> keys;
  for (uint64_t key = 1; keys.size() < 100; ++key)
    if (owner_of(c, b, key, spec) == "a:7946") keys.push_back(key);
  int answered = 0;
  strict_limiter::location at_a{strict_limiter::location::remote, "a:7946"};
  for (auto key : keys) b.strict->ask(at_a, key, spec, [&](auto o) { answered += o.decided; });
  EXPECT_EQ(b.strict->stats().messages_out.load(), 3u);
  c.pump();
  EXPECT_EQ(answered, 100);
  // 4 asks, and 4 acknowledgements of a's counts (one per batch a decided).
  EXPECT_EQ(b.strict->stats().messages_out.load(), 8u);
  EXPECT_EQ(c.nodes[0].strict->stats().decided_for_others.load(), 100u);
  EXPECT_LE(c.largest, 1200u);
}

TEST(strict_limiter, a_batch_of_the_largest_asks_fits_one_direct_message) {
  fake_cluster c;
  auto spec = strict_spec(~0ull >> 1, ~0ull >> 2);
  std::string error;
  spec.calendar = month_calendar::make("UTC", &error);
  spec.timezone = std::string(60, 'z');
  strict_limiter::location at_a{strict_limiter::location::remote, "a:7946"};
  for (int i = 0; i < 200; ++i)
    c.nodes[1].strict->ask(at_a, ~0ull - static_cast<uint64_t>(i), spec, [](auto) {});
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
  c.nodes[1].strict->ask({strict_limiter::location::remote, "a:7946"}, 7, spec, [&](auto o) {
    ++calls;
    got = o;
  });
  c.pump();
  EXPECT_EQ(calls, 0);  // still waiting
  c.advance(99);
  EXPECT_EQ(calls, 0);
  c.advance(10);  // past the 100 ms timeout and the 5 ms sweep
  EXPECT_EQ(calls, 1);
  EXPECT_FALSE(got.decided);
  EXPECT_EQ(c.nodes[1].strict->stats().timed_out.load(), 1u);
  c.advance(1000);
  EXPECT_EQ(calls, 1);  // once
}

TEST(strict_limiter, without_a_majority_alive_no_node_decides) {
  fake_cluster c;
  auto spec = strict_spec(10);
  c.set_alive({"a"});  // b and c dead (not left): a sees 1 of 3
  for (uint64_t key = 1; key < 100; ++key)
    EXPECT_EQ(c.nodes[0].strict->locate(key, spec).kind, strict_limiter::location::none);
  bool decided = true;
  request(c.nodes[0], 1, spec, [&](auto o) { decided = o.decided; });  // at once, no decision
  EXPECT_FALSE(decided);
  c.set_alive({"a", "b"});  // 2 of 3
  for (uint64_t key = 1; key < 100; ++key)
    EXPECT_NE(c.nodes[0].strict->locate(key, spec).kind, strict_limiter::location::none);
  // A member that left is not counted: a alone of {a, b} after c left has no majority either.
  std::vector<strict_limiter::member_view> view = {
      {"a", "a:7946", "r", true}, {"b", "b:7946", "r", false}, {"c", "c:7946", "r", false, true}};
  c.nodes[0].strict->set_members(view);
  EXPECT_EQ(c.nodes[0].strict->locate(1, spec).kind, strict_limiter::location::none);
  view[1].left = true;  // b left too: a alone is the whole scope
  c.nodes[0].strict->set_members(view);
  EXPECT_EQ(c.nodes[0].strict->locate(1, spec).kind, strict_limiter::location::here);
}

// The membership forgets members dead for dead_reap_after (an hour): the side of a long
// partition that has no majority must not then count itself one.
TEST(strict_limiter, a_minority_keeps_counting_the_members_the_membership_forgot) {
  fake_cluster c;
  auto spec = strict_spec(10);
  auto& a = c.by_id("a");
  auto& b = c.by_id("b");
  c.kept.clear();
  // a is cut off from b and c; each side sees the other dead.
  a.strict->set_members({member("a", true), member("b", false), member("c", false)});
  b.strict->set_members({member("a", false), member("b", true), member("c", true)});
  EXPECT_EQ(a.strict->locate(1, spec).kind, strict_limiter::location::none);
  EXPECT_NE(b.strict->locate(1, spec).kind, strict_limiter::location::none);
  // An hour on, both memberships reap the dead. a still counts b and c: no majority.
  a.strict->set_members({member("a", true)});
  b.strict->set_members({member("b", true), member("c", true)});
  for (uint64_t key = 1; key < 50; ++key)
    EXPECT_EQ(a.strict->locate(key, spec).kind, strict_limiter::location::none);
  EXPECT_EQ(a.strict->counted_members().size(), 3u);
  EXPECT_EQ(c.kept.count("a"), 0u) << "a's counted members did not change";
  const auto metrics = a.strict->metrics_text();
  EXPECT_NE(
      metrics.find("meridian_ratelimit_strict_members{scope=\"global\",state=\"counted\"} 3\n"),
      std::string::npos)
      << metrics;
  EXPECT_NE(metrics.find("meridian_ratelimit_strict_members{scope=\"global\",state=\"alive\"} 1\n"),
            std::string::npos);
  EXPECT_NE(metrics.find("meridian_ratelimit_strict_total{result=\"no_quorum\"} "),
            std::string::npos);
  // b's side had the majority: it forgets a, and keeps that for its next start.
  ASSERT_EQ(b.strict->counted_members().size(), 2u);
  ASSERT_EQ(c.kept["b"].size(), 2u);
  EXPECT_EQ(c.kept["b"][0].id, "b");
  EXPECT_EQ(c.kept["b"][1].id, "c");
  // The partition heals: a is back in b's count, and a has its majority again.
  a.strict->set_members({member("a", true), member("b", true), member("c", true)});
  b.strict->set_members({member("a", true), member("b", true), member("c", true)});
  EXPECT_EQ(b.strict->counted_members().size(), 3u);
  for (uint64_t key = 1; key < 50; ++key) {
    EXPECT_NE(a.strict->locate(key, spec).kind, strict_limiter::location::none);
    EXPECT_EQ(owner_of(c, a, key, spec), owner_of(c, b, key, spec));
  }
}

// Members that join while this node sees no majority are not counted: new nodes started on the
// minority side of a partition do not make it a majority. With a majority alive they count.
TEST(strict_limiter, members_joining_a_minority_do_not_make_it_a_majority) {
  fake_cluster c;
  auto spec = strict_spec(10);
  auto& a = c.by_id("a");
  // a is cut off from b and c; f and g join through a.
  a.strict->set_members({member("a", true), member("b", false), member("c", false),
                         member("f", true), member("g", true)});
  EXPECT_EQ(a.strict->counted_members().size(), 3u);
  EXPECT_EQ(a.strict->locate(1, spec).kind, strict_limiter::location::none);
  // The partition heals: a majority of the count is alive, and the newcomers count.
  a.strict->set_members({member("a", true), member("b", true), member("c", true), member("f", true),
                         member("g", true)});
  EXPECT_EQ(a.strict->counted_members().size(), 5u);
  EXPECT_NE(a.strict->locate(1, spec).kind, strict_limiter::location::none);
  // A node that knows of nobody yet (first start with seeds) takes what it first hears as is.
  c.configure = [](fake_cluster::node&, strict_limiter::options& o) { o.expect_peers = true; };
  c.build(a);
  a.strict->set_members({member("a", true), member("b", false), member("c", false),
                         member("f", true), member("g", true)});
  EXPECT_EQ(a.strict->counted_members().size(), 5u);
}

// With region scope, a member of this node's region is forgotten only with a majority of the
// region alive too: a lone node of a region that sits with the cluster's majority does not
// become its region's majority when the rest of its region is reaped.
TEST(strict_limiter, a_region_member_is_forgotten_only_with_a_majority_of_the_region) {
  fake_cluster c;
  auto spec = strict_spec(10);
  spec.scope = limit_spec::scope_kind::region;
  auto& a = c.by_id("a");
  std::vector<strict_limiter::member_view> view = {
      {"a", "a:7946", "r", true},     {"b", "b:7946", "r", false},
      {"c", "c:7946", "r", false},    {"w", "w:7946", "other", true},
      {"x", "x:7946", "other", true}, {"y", "y:7946", "other", true},
      {"z", "z:7946", "other", false}};
  auto all_alive = view;
  for (auto& m : all_alive) m.alive = true;
  a.strict->set_members(all_alive);  // everyone counted
  a.strict->set_members(view);
  EXPECT_EQ(a.strict->locate(1, spec).kind, strict_limiter::location::none);  // 1 of 3 in r
  EXPECT_NE(a.strict->locate(1, strict_spec(10)).kind,
            strict_limiter::location::none);       // 4 of 7 in all
  view.erase(view.begin() + 1, view.begin() + 3);  // b and c reaped
  a.strict->set_members(view);
  EXPECT_EQ(a.strict->counted_members().size(), 7u);
  EXPECT_EQ(a.strict->locate(1, spec).kind, strict_limiter::location::none);
  // A member of another region is forgotten with the cluster's majority alone.
  view.pop_back();  // z reaped
  a.strict->set_members(view);
  EXPECT_EQ(a.strict->counted_members().size(), 6u);
}

// A restart: until the node sees the members it knew alive again, it is not a majority — not
// even for the moment before its first view, when it sees only itself.
TEST(strict_limiter, a_restarted_node_counts_the_members_it_remembers_until_it_sees_them) {
  fake_cluster c;
  auto spec = strict_spec(10);
  auto& a = c.by_id("a");
  // What a kept (every node writes its counted members when they change: here at the start).
  auto remembered = c.kept["a"];
  ASSERT_EQ(remembered.size(), 3u);
  c.configure = [&](fake_cluster::node& n, strict_limiter::options& o) {
    if (n.id == "a") o.remembered = remembered;
  };
  c.build(a);
  for (uint64_t key = 1; key < 50; ++key)
    EXPECT_EQ(a.strict->locate(key, spec).kind, strict_limiter::location::none);
  a.strict->set_members({{"a", "a:7946", "r", true}});  // not joined yet
  EXPECT_EQ(a.strict->locate(1, spec).kind, strict_limiter::location::none);
  c.set_alive({"a", "b", "c"});
  c.advance(10);
  EXPECT_EQ(admitted_of(c, {&c.nodes[0], &c.nodes[1], &c.nodes[2]}, 7, spec, 12), 10);
}

// Each scope's count changes with that scope's majority: a region cut off from the rest of the
// cluster keeps counting its own members (a member that left and came back counts again for the
// region), while the global count does not grow on that side.
TEST(strict_limiter, a_region_cut_off_counts_its_returning_members_for_the_region_only) {
  fake_cluster c;
  auto& n = c.by_id("c");
  auto region_spec = strict_spec(10);
  region_spec.scope = limit_spec::scope_kind::region;
  auto other = [](const std::string& id, bool alive) {
    return strict_limiter::member_view{id, id + ":7946", "other", alive};
  };
  auto others = [&](bool alive) {
    return std::vector<strict_limiter::member_view>{other("w", alive), other("x", alive),
                                                    other("y", alive), other("z", alive)};
  };
  auto with = [](std::vector<strict_limiter::member_view> a,
                 std::vector<strict_limiter::member_view> b) {
    a.insert(a.end(), b.begin(), b.end());
    return a;
  };
  n.strict->set_members(
      with({member("a", true), member("b", true), member("c", true)}, others(true)));
  ASSERT_EQ(n.strict->counted_members().size(), 7u);
  // Cut off from the other region; a restarts with SIGTERM: it leaves, then comes back.
  auto left_a = member("a", false);
  left_a.left = true;
  n.strict->set_members(with({left_a, member("b", true), member("c", true)}, others(false)));
  n.strict->set_members(
      with({member("a", true), member("b", true), member("c", true)}, others(false)));
  auto counted = n.strict->counted_members();
  auto a = std::find_if(counted.begin(), counted.end(), [](auto& m) { return m.id == "a"; });
  ASSERT_NE(a, counted.end()) << "a counts again for the region";
  EXPECT_TRUE(a->regional);
  EXPECT_FALSE(a->global) << "3 of 7 alive: the global count does not grow on this side";
  EXPECT_EQ(n.strict->locate(1, strict_spec(10)).kind, strict_limiter::location::none);
  // Then b restarts (leaves): the region counts a and c, both alive — not c alone.
  auto left_b = member("b", false);
  left_b.left = true;
  n.strict->set_members(with({member("a", true), left_b, member("c", true)}, others(false)));
  size_t regional = 0;
  for (const auto& m : n.strict->counted_members()) regional += m.regional;
  EXPECT_EQ(regional, 2u);
  EXPECT_NE(n.strict->locate(1, region_spec).kind, strict_limiter::location::none);
  // The partition heals: a counts for the whole cluster again.
  n.strict->set_members(
      with({member("a", true), member("b", true), member("c", true)}, others(true)));
  for (const auto& m : n.strict->counted_members()) EXPECT_TRUE(m.global) << m.id;
}

// A member this node does not count gets no acknowledgement and no answer to a count query:
// its majority is not this node's.
TEST(strict_limiter, counts_from_a_member_not_counted_here_are_not_acknowledged) {
  fake_cluster c;
  auto spec = strict_spec(10);
  auto& a = c.by_id("a");
  uint64_t key = 1;
  while (a.strict->locate(key, spec).kind != strict_limiter::location::here) ++key;
  // b and c do not count a (it left and, without a majority, was not counted again).
  auto left_a = member("a", false);
  left_a.left = true;
  for (const char* id : {"b", "c"})
    c.by_id(id).strict->set_members({left_a, member("b", true), member("c", true)});
  int undecided = 0;
  EXPECT_EQ(admitted_of(c, {&a}, key, spec, 3, &undecided), 0);
  EXPECT_EQ(undecided, 3);
  EXPECT_GT(c.by_id("b").strict->stats().not_counted.load() +
                c.by_id("c").strict->stats().not_counted.load(),
            0u);
}

// Exactly half alive is no majority: the unlisted are kept; one more alive and they go.
TEST(strict_limiter, the_unlisted_are_forgotten_only_with_more_than_half_alive) {
  fake_cluster c;
  auto& a = c.by_id("a");
  a.strict->set_members({member("a", true), member("b", true), member("c", false),
                         member("d", false), member("e", false)});
  a.strict->set_members({member("a", true), member("b", true), member("c", false),
                         member("d", false)});  // e reaped: 2 of 5 alive
  EXPECT_EQ(a.strict->counted_members().size(), 5u);
  a.strict->set_members({member("a", true), member("b", true), member("c", true),
                         member("d", false)});  // 3 of 5: e goes
  EXPECT_EQ(a.strict->counted_members().size(), 4u);
  a.strict->set_members({member("a", true), member("b", true), member("c", false)});
  EXPECT_EQ(a.strict->counted_members().size(), 4u) << "2 of 4 alive is no majority: d stays";
  a.strict->set_members({member("a", true), member("b", true), member("c", true)});
  EXPECT_EQ(a.strict->counted_members().size(), 3u);
}

// An operator's way out when most members are gone for good: forgotten members do not count
// while they are not alive; one that comes back counts again, and dying again does not make the
// old record apply again.
TEST(strict_limiter, members_an_operator_forgot_stop_counting_until_they_come_back) {
  fake_cluster c;
  auto spec = strict_spec(10);
  auto& a = c.by_id("a");
  std::vector<strict_limiter::member_view> view = {member("a", true), member("b", true),
                                                   member("c", false), member("d", false),
                                                   member("e", false)};
  a.strict->set_members(view);
  EXPECT_EQ(a.strict->locate(1, spec).kind, strict_limiter::location::none);  // 2 of 5
  a.strict->set_forgotten({{"c", 100}, {"d", 100}, {"x", 100}});
  a.strict->set_members(view);  // listed dead, forgotten: 2 of 3
  EXPECT_EQ(a.strict->counted_members().size(), 3u);
  EXPECT_NE(a.strict->locate(1, spec).kind, strict_limiter::location::none);
  view.erase(view.begin() + 3);  // the membership reaps d: still forgotten, still not counted
  a.strict->set_members(view);
  EXPECT_EQ(a.strict->counted_members().size(), 3u);
  view[2].alive = true;  // c comes back
  a.strict->set_members(view);
  EXPECT_EQ(a.strict->counted_members().size(), 4u);
  a.strict->set_forgotten({{"c", 100}, {"d", 100}});  // the same records, read again
  view[2].alive = false;                              // c dies again: it counts (2 of 4)
  a.strict->set_members(view);
  EXPECT_EQ(a.strict->counted_members().size(), 4u);
  EXPECT_EQ(a.strict->locate(1, spec).kind, strict_limiter::location::none);
  a.strict->set_forgotten({{"c", 200}, {"d", 100}});  // forgotten anew
  a.strict->set_members(view);
  EXPECT_EQ(a.strict->counted_members().size(), 3u);
}

// A region-scoped admission waits for a majority of its region to hold the count: members of
// other regions acknowledging do not count (a later take-over asks the region only).
TEST(strict_limiter, region_admissions_wait_for_acknowledgements_from_the_region) {
  fake_cluster c;
  c.configure = [](fake_cluster::node& n, strict_limiter::options& o) {
    if (n.id == "c") o.region = "other";
  };
  for (auto& n : c.nodes) c.build(n);
  std::vector<strict_limiter::member_view> view = {
      {"a", "a:7946", "r", true}, {"b", "b:7946", "r", true}, {"c", "c:7946", "other", true}};
  for (auto& n : c.nodes) n.strict->set_members(view);
  c.advance(10'000);
  auto spec = strict_spec(10);
  spec.scope = limit_spec::scope_kind::region;
  auto& a = c.by_id("a");
  uint64_t key = 1;
  while (a.strict->locate(key, spec).kind != strict_limiter::location::here) ++key;
  EXPECT_EQ(admitted_of(c, {&a}, key, spec, 2), 2) << "b acknowledges";
  c.down.insert("b:7946");  // b still alive in every view, but its acknowledgements are lost
  int undecided = 0;
  EXPECT_EQ(admitted_of(c, {&a}, key, spec, 2, &undecided), 0) << "c's acknowledgements alone";
  EXPECT_EQ(undecided, 2);
  EXPECT_GT(a.strict->stats().unacknowledged.load(), 0u);
  // A global key needs one acknowledgement of the two others: c's does.
  auto global = strict_spec(10);
  key = 1;
  while (a.strict->locate(key, global).kind != strict_limiter::location::here) ++key;
  EXPECT_EQ(admitted_of(c, {&a}, key, global, 2), 2);
}

TEST(strict_limiter, a_node_with_seeds_is_no_majority_before_it_hears_of_another_member) {
  fake_cluster c;
  auto spec = strict_spec(10);
  auto& a = c.by_id("a");
  c.configure = [](fake_cluster::node&, strict_limiter::options& o) { o.expect_peers = true; };
  c.build(a);
  EXPECT_EQ(a.strict->locate(1, spec).kind, strict_limiter::location::none);
  a.strict->set_members({{"a", "a:7946", "r", true}});
  EXPECT_EQ(a.strict->locate(1, spec).kind, strict_limiter::location::none);
  c.set_alive({"a", "b", "c"});
  EXPECT_NE(a.strict->locate(1, spec).kind, strict_limiter::location::none);
}

TEST(strict_limiter, a_new_owner_goes_on_from_the_dead_owner_s_count) {
  fake_cluster c;
  auto spec = strict_spec(10);
  // A key of c, half used through a and b.
  uint64_t key = 1;
  while (owner_of(c, c.nodes[0], key, spec) != "c:7946") ++key;
  EXPECT_EQ(admitted_of(c, {&c.nodes[0], &c.nodes[1]}, key, spec, 5), 5);
  // c dies. Its key moves to a or b, which asks the other survivor what it holds (c's count,
  // acknowledged before each admission went on) and goes on from there: 5 more, not 10.
  c.down.insert("c:7946");
  c.set_alive({"a", "b"});
  auto& owner = c.at(owner_of(c, c.nodes[0], key, spec));
  int undecided = 0;
  EXPECT_EQ(admitted_of(c, {&c.nodes[0], &c.nodes[1]}, key, spec, 20, &undecided), 5);
  EXPECT_EQ(undecided, 0);
  EXPECT_EQ(owner.strict->stats().takeovers.load(), 1u);
}

TEST(strict_limiter, a_restarted_owner_asks_what_happened_while_it_was_gone) {
  fake_cluster c;
  auto spec = strict_spec(10);
  uint64_t key = 1;
  while (owner_of(c, c.nodes[0], key, spec) != "c:7946") ++key;
  EXPECT_EQ(admitted_of(c, {&c.nodes[0]}, key, spec, 3), 3);
  // c goes; a or b owns the key for a while and admits 4 more.
  c.down.insert("c:7946");
  c.set_alive({"a", "b"});
  EXPECT_EQ(admitted_of(c, {&c.nodes[0], &c.nodes[1]}, key, spec, 4), 4);
  // c comes back empty (a restart that lost what its store had not written) and owns the key
  // again. It asks a and b, who hold its 3 and the other owner's 4, and admits the 3 left.
  c.build(c.by_id("c"));
  c.down.clear();
  c.set_alive({"a", "b", "c"});
  c.advance(10);
  EXPECT_EQ(admitted_of(c, {&c.nodes[0], &c.nodes[1], &c.nodes[2]}, key, spec, 20), 3);
  EXPECT_EQ(c.by_id("c").strict->stats().takeovers.load(), 1u);
}

TEST(strict_limiter, an_owner_cut_off_from_the_others_admits_nothing) {
  fake_cluster c;
  auto spec = strict_spec(10);
  uint64_t key = 1;
  while (owner_of(c, c.nodes[0], key, spec) != "c:7946") ++key;
  EXPECT_EQ(admitted_of(c, {&c.by_id("c")}, key, spec, 4), 4);
  // A partition: nothing c sends arrives, and c has not noticed (its view is unchanged). It
  // decides its own node's requests, but no majority acknowledges the counts: none goes on.
  c.down.insert("c:7946");
  int undecided = 0;
  EXPECT_EQ(admitted_of(c, {&c.by_id("c")}, key, spec, 5, &undecided), 0);
  EXPECT_EQ(undecided, 5);
  c.advance(10);  // the owner's wait ends with the asker's
  EXPECT_EQ(c.by_id("c").strict->stats().unacknowledged.load(), 5u);
  // The majority side takes the key over from what it holds (4) and admits the 6 left.
  c.set_alive({"a", "b"});
  EXPECT_EQ(admitted_of(c, {&c.nodes[0], &c.nodes[1]}, key, spec, 20), 6);
}

TEST(strict_limiter, an_old_owner_that_has_not_noticed_the_change_is_fenced_out) {
  fake_cluster c;
  auto spec = strict_spec(10);
  uint64_t key = 1;
  while (owner_of(c, c.nodes[0], key, spec) != "c:7946") ++key;
  EXPECT_EQ(admitted_of(c, {&c.by_id("c")}, key, spec, 2), 2);
  // a and b think c is dead; c still thinks it owns the key, and its messages arrive.
  c.set_alive({"a", "b"});
  auto& owner = c.at(owner_of(c, c.nodes[0], key, spec));
  EXPECT_EQ(admitted_of(c, {&owner}, key, spec, 3), 3);  // the take-over fences a and b
  int undecided = 0;
  EXPECT_EQ(admitted_of(c, {&c.by_id("c")}, key, spec, 5, &undecided), 0);
  EXPECT_EQ(undecided, 5);
  EXPECT_GE(c.nodes[0].strict->stats().fenced.load() + c.nodes[1].strict->stats().fenced.load(),
            1u);
  // c counted its attempts before it found no majority: they count on the safe side (no
  // G-counter goes down), so the new owner has at most the 5 left to admit.
  EXPECT_LE(admitted_of(c, {&owner}, key, spec, 20), 5);
}

TEST(strict_limiter, a_node_that_stood_still_decides_nothing_until_it_has_caught_up) {
  fake_cluster c;
  auto spec = strict_spec(10);
  auto& a = c.nodes[0];
  uint64_t mine = 0;
  for (uint64_t key = 1; !mine; ++key)
    if (a.strict->locate(key, spec).kind == strict_limiter::location::here) mine = key;
  a.strict->tick();
  c.advance(40);
  a.strict->tick();
  EXPECT_EQ(admitted_of(c, {&a}, mine, spec, 2), 2);
  c.now += 5000;  // SIGSTOP for 5 s: workers may run before the gossip thread ticks again
  c.unix_now += 5000;
  EXPECT_EQ(a.strict->locate(mine, spec).kind, strict_limiter::location::none);
  // Meanwhile b owned the key (in its view) and admitted 3; c holds those counts.
  c.nodes[2].state->merge_counts(
      "b", {{mine, static_cast<uint32_t>(spec.window_ms), spec.window_of(c.unix_now).index, 3}});
  a.strict->tick();  // a resumes: every key is taken over again
  EXPECT_EQ(a.strict->locate(mine, spec).kind, strict_limiter::location::here);
  EXPECT_EQ(admitted_of(c, {&a}, mine, spec, 20), 5);  // 10 - 2 - 3
  EXPECT_EQ(a.strict->stats().takeovers.load(), 1u);
}

TEST(strict_limiter, a_node_asked_for_a_key_it_does_not_own_answers_not_owner) {
  fake_cluster c;
  auto spec = strict_spec(10);
  uint64_t key = 1;
  while (owner_of(c, c.nodes[1], key, spec) != "a:7946") ++key;
  // c believes b owns it (a stale view): b answers that it does not.
  bool called = false, decided = true;
  c.nodes[2].strict->ask({strict_limiter::location::remote, "b:7946"}, key, spec, [&](auto o) {
    called = true;
    decided = o.decided;
  });
  c.pump();
  EXPECT_TRUE(called);
  EXPECT_FALSE(decided);
  EXPECT_EQ(c.nodes[2].strict->stats().not_owner.load(), 1u);
}

TEST(strict_limiter, stopping_ends_every_waiting_ask_and_every_later_one_at_once) {
  fake_cluster c;
  auto spec = strict_spec(10);
  c.down.insert("a:7946");  // nothing will answer
  int ended = 0;
  strict_limiter::location at_a{strict_limiter::location::remote, "a:7946"};
  for (int i = 0; i < 3; ++i)
    c.nodes[1].strict->ask(at_a, 7, spec, [&](auto o) { ended += !o.decided; });
  c.pump();
  EXPECT_EQ(ended, 0);
  c.nodes[1].strict->stop();
  EXPECT_EQ(ended, 3);
  c.nodes[1].strict->ask(at_a, 7, spec, [&](auto o) { ended += !o.decided; });
  EXPECT_EQ(ended, 4);
  c.advance(1000);  // nothing runs twice
  EXPECT_EQ(ended, 4);
}

TEST(strict_limiter, malformed_messages_are_counted_and_change_nothing) {
  fake_cluster c;
  auto& a = *c.nodes[0].strict;
  a.on_message("b", "b:7946", "");
  a.on_message("b", "b:7946", "\x14\x02\x29\x1c\x15\x0a\x13\x09\x00\x00");  // result 9
  a.on_message("b", "b:7946", std::string(2000, '\xff'));
  EXPECT_EQ(a.stats().malformed.load(), 3u);
  EXPECT_TRUE(c.wire.empty());
  // An answer for an ask that does not exist is ignored.
  cluster::strict_batch b;
  cluster::strict_answer stray;
  stray.id = 12345;
  stray.result = cluster::strict_result::admitted;
  b.answers.push_back(stray);
  a.on_message("b", "b:7946", cluster::encode(b));
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
  const auto owner = b.strict->locate(key, spec);
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
