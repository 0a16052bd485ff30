// Issue 15 (12): replayed gossip datagrams and push-pull frames were acted on, even 15 minutes
// later. A real gossip_node on loopback gets sealed messages from this test (which holds the
// cluster key, as a recording of real traffic would be sealed): a fresh one is acted on, the same
// bytes again, the same message 15 minutes later (by the node's injected clock) and an unstamped
// one are refused, counted, and change nothing.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>

#include "meridian/cluster/gossip_node.h"
#include "meridian/cluster/keyring.h"
#include "meridian/cluster/wire.h"

namespace meridian::cluster {
namespace {

using namespace std::chrono_literals;
using steady = std::chrono::steady_clock;

bool eventually(const std::function<bool()>& cond, std::chrono::milliseconds limit = 10s) {
  auto deadline = steady::now() + limit;
  while (steady::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(10ms);
  }
  return cond();
}

int64_t real_unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

sockaddr_in loopback(uint16_t port) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  return a;
}

class replay : public ::testing::Test {
 protected:
  void SetUp() override {
    key_ = generate_key();
    gossip_options o;
    o.self = {"n0", "127.0.0.1:0", "eu-west", "a"};
    o.bind_port = 0;
    o.keys = {key_};
    o.wall_ms = [this] { return real_unix_ms() + clock_shift_ms_.load(); };
    node_ = std::make_unique<gossip_node>(std::move(o), nullptr);
    std::string error;
    ASSERT_TRUE(node_->start(&error)) << error;
    udp_ = ::socket(AF_INET, SOCK_DGRAM, 0);
    ASSERT_GE(udp_, 0);
  }
  void TearDown() override {
    if (udp_ >= 0) ::close(udp_);
    node_->stop(false);
  }

  // A packet from member "n9" (an address nobody answers on) telling of member `about`.
  packet from_n9(const std::string& about, send_stamp stamp) {
    packet p;
    p.sender_id = "n9";
    p.sender_address = "127.0.0.1:9";
    p.updates = {{{about, "127.0.0.1:9", "eu-west", "a"}, 1, member_state::alive, "n9"}};
    p.stamp = stamp;
    return p;
  }
  void send_datagram(const std::string& sealed) {
    auto to = loopback(node_->port());
    ASSERT_EQ(::sendto(udp_, sealed.data(), sealed.size(), 0, reinterpret_cast<sockaddr*>(&to),
                       sizeof(to)),
              static_cast<ssize_t>(sealed.size()));
  }
  bool knows(const std::string& id) const {
    for (const auto& m : node_->members())
      if (m.info.id == id) return true;
    return false;
  }
  // Sends one push-pull frame on a new connection; returns the node's reply frame, or "" when the
  // node closed the stream without one.
  std::string push_pull(const std::string& sealed) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    EXPECT_GE(fd, 0);
    timeval tv{5, 0};
    ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    auto to = loopback(node_->port());
    EXPECT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&to), sizeof(to)), 0);
    std::string frame(4, '\0');
    const uint32_t n = htonl(static_cast<uint32_t>(sealed.size()));
    std::memcpy(frame.data(), &n, 4);
    frame += sealed;
    EXPECT_EQ(::send(fd, frame.data(), frame.size(), MSG_NOSIGNAL),
              static_cast<ssize_t>(frame.size()));
    std::string reply;
    char buf[4096];
    for (ssize_t got; (got = ::recv(fd, buf, sizeof(buf), 0)) > 0;) reply.append(buf, got);
    ::close(fd);
    return reply.size() > 4 ? reply.substr(4) : "";
  }
  std::string seal_sync(const std::string& about, send_stamp stamp) {
    state_sync s;
    s.sender_id = "n9";
    s.members = {{{about, "127.0.0.1:9", "eu-west", "a"}, 1, member_state::alive, "n9"}};
    s.stamp = stamp;
    return seal(encode(s), key_, "meridian");
  }

  cluster_key key_;
  std::atomic<int64_t> clock_shift_ms_{0};
  std::unique_ptr<gossip_node> node_;
  int udp_ = -1;
};

TEST_F(replay, a_datagram_is_acted_on_once_and_not_when_replayed_or_stale_or_unstamped) {
  const auto& c = node_->counters();
  const int64_t now = real_unix_ms();
  const std::string fresh = seal(encode(from_n9("a1", {now, 77, 1})), key_, "meridian");
  // Recorded now, with sequence numbers the node has not seen yet: replayed later.
  const std::string later = seal(encode(from_n9("a2", {now, 77, 2})), key_, "meridian");
  const std::string unstamped = seal(encode(from_n9("a3", {})), key_, "meridian");

  send_datagram(fresh);
  ASSERT_TRUE(eventually([&] { return knows("a1"); }));
  EXPECT_EQ(c.replays_refused.load(), 0u);
  EXPECT_EQ(c.stale_refused.load(), 0u);

  send_datagram(fresh);  // the same bytes again
  ASSERT_TRUE(eventually([&] { return c.replays_refused.load() == 1; }));

  send_datagram(unstamped);
  ASSERT_TRUE(eventually([&] { return c.stale_refused.load() == 1; }));
  EXPECT_FALSE(knows("a3"));

  clock_shift_ms_ = 15 * 60'000;  // 15 minutes pass
  send_datagram(later);
  ASSERT_TRUE(eventually([&] { return c.stale_refused.load() == 2; }));
  EXPECT_FALSE(knows("a2"));
  EXPECT_EQ(c.replays_refused.load(), 1u);
  EXPECT_EQ(c.malformed.load(), 0u);
  EXPECT_EQ(c.auth_failures.load(), 0u);
}

TEST_F(replay, a_push_pull_frame_is_answered_once_and_not_when_replayed_or_stale) {
  const auto& c = node_->counters();
  const int64_t now = real_unix_ms();
  const std::string frame = seal_sync("b1", {now, 88, 1});
  const std::string later = seal_sync("b2", {now, 88, 2});

  std::string reply = push_pull(frame);
  ASSERT_FALSE(reply.empty());
  std::string plain;
  ASSERT_EQ(open(reply, {key_}, "meridian", &plain), wire_error::none);
  state_sync answer;
  ASSERT_EQ(decode(plain, &answer), wire_error::none);
  EXPECT_EQ(answer.sender_id, "n0");
  EXPECT_NE(answer.stamp, send_stamp{}) << "the node stamps what it sends";
  EXPECT_TRUE(knows("b1"));

  EXPECT_EQ(push_pull(frame), "") << "a replayed frame gets no answer";
  EXPECT_EQ(c.replays_refused.load(), 1u);

  clock_shift_ms_ = 15 * 60'000;
  EXPECT_EQ(push_pull(later), "");
  EXPECT_EQ(c.stale_refused.load(), 1u);
  EXPECT_FALSE(knows("b2"));
}

TEST_F(replay, datagrams_the_node_sends_are_stamped_in_sequence) {
  // The node's own packets (here: its probes of member n9, which it learns of from one packet)
  // carry its wall clock, one boot id and increasing sequence numbers.
  auto self_addr = loopback(0);
  ASSERT_EQ(::bind(udp_, reinterpret_cast<sockaddr*>(&self_addr), sizeof(self_addr)), 0);
  socklen_t len = sizeof(self_addr);
  ::getsockname(udp_, reinterpret_cast<sockaddr*>(&self_addr), &len);
  const std::string me = "127.0.0.1:" + std::to_string(ntohs(self_addr.sin_port));
  packet hello;
  hello.sender_id = "n9";
  hello.sender_address = me;
  hello.updates = {{{"n9", me, "eu-west", "a"}, 1, member_state::alive, "n9"}};
  hello.stamp = {real_unix_ms(), 99, 1};
  send_datagram(seal(encode(hello), key_, "meridian"));
  timeval tv{5, 0};
  ::setsockopt(udp_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::vector<send_stamp> stamps;
  char buf[65536];
  while (stamps.size() < 3) {
    ssize_t n = ::recv(udp_, buf, sizeof(buf), 0);
    ASSERT_GT(n, 0) << "no probe from the node";
    std::string plain;
    ASSERT_EQ(open(std::string_view(buf, n), {key_}, "meridian", &plain), wire_error::none);
    packet p;
    ASSERT_EQ(decode(plain, &p), wire_error::none);
    stamps.push_back(p.stamp);
  }
  for (size_t i = 0; i < stamps.size(); ++i) {
    EXPECT_NE(stamps[i].boot, 0u);
    EXPECT_EQ(stamps[i].boot, stamps[0].boot);
    EXPECT_LT(std::abs(stamps[i].sent_ms - real_unix_ms()), 10'000);
    if (i > 0) {
      EXPECT_GT(stamps[i].seq, stamps[i - 1].seq);
    }
  }
}

}  // namespace
}  // namespace meridian::cluster
