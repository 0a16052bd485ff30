#pragma once
// Shared helpers for integration tests: temp dirs, a programmable upstream on a real socket, a
// raw client for exact bytes, and an in-process node built from YAML text.

#include <arpa/inet.h>
#include <fcntl.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <thread>

#include "meridian/config/config.h"
#include "meridian/node/node.h"

namespace meridian::testing {

using namespace std::chrono_literals;

class temp_dir {
 public:
  temp_dir() {
    path_ = std::filesystem::temp_directory_path() / ("meridian-it-" + std::to_string(::getpid()) +
                                                      "-" + std::to_string(std::random_device{}()));
    std::filesystem::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  std::string str() const { return path_.string(); }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

// Polls cond every 10 ms until it holds or the deadline passes; returns its last value.
// every: the pause between tries (for conditions whose check writes, such as an admin call
// that lands in the audit trail).
inline bool eventually(const std::function<bool()>& cond, std::chrono::milliseconds limit = 5s,
                       std::chrono::milliseconds every = 10ms) {
  auto deadline = std::chrono::steady_clock::now() + limit;
  while (std::chrono::steady_clock::now() < deadline) {
    if (cond()) return true;
    std::this_thread::sleep_for(every);
  }
  return cond();
}

// An upstream HTTP server on 127.0.0.1:<ephemeral>. Counts every request it receives.
class upstream {
 public:
  upstream() {
    server_.new_task_queue = [] { return new httplib::ThreadPool(8); };
    server_.set_keep_alive_max_count(100000);
    server_.set_tcp_nodelay(true);  // else Nagle + delayed ACK add 40 ms per response
    server_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response&) {
      hits.fetch_add(1);
      std::lock_guard lock(mutex_);
      last_ = req;
      return httplib::Server::HandlerResponse::Unhandled;
    });
  }
  ~upstream() { stop(); }

  httplib::Server& server() { return server_; }
  void start() {
    port_ = server_.bind_to_any_port("127.0.0.1");
    ASSERT_GT(port_, 0);
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    ASSERT_TRUE(eventually([this] { return server_.is_running(); }));
  }
  void stop() {
    server_.stop();
    if (thread_.joinable()) thread_.join();
  }
  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  httplib::Request last() {
    std::lock_guard lock(mutex_);
    return last_;
  }

  std::atomic<int> hits{0};

 private:
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
  std::mutex mutex_;
  httplib::Request last_;
};

// A blocking TCP client that sends exact bytes and reads with a deadline.
class raw_client {
 public:
  // from: the loopback address to connect from (127.0.0.0/8), e.g. "127.0.0.2"; default any.
  explicit raw_client(int port, const char* from = nullptr) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    if (from) {
      sockaddr_in local{};
      local.sin_family = AF_INET;
      ::inet_pton(AF_INET, from, &local.sin_addr);
      ::bind(fd_, reinterpret_cast<sockaddr*>(&local), sizeof local);
    }
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(static_cast<uint16_t>(port));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
    int one = 1;
    ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  ~raw_client() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool connected() const { return connected_; }
  bool send(std::string_view data) {
    while (!data.empty()) {
      ssize_t n = ::send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
      if (n <= 0) return false;
      data.remove_prefix(static_cast<size_t>(n));
    }
    return true;
  }
  // Reads until `until` returns true for what was read, the peer closes, or the deadline.
  std::string read(const std::function<bool(const std::string&)>& until,
                   std::chrono::milliseconds limit = 3s) {
    auto deadline = std::chrono::steady_clock::now() + limit;
    while (!until(buf_) && !closed_) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
          deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0) break;
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
      char tmp[65536];
      ssize_t n = ::recv(fd_, tmp, sizeof tmp, 0);
      if (n <= 0) {
        closed_ = true;
        break;
      }
      buf_.append(tmp, static_cast<size_t>(n));
    }
    return buf_;
  }
  // Reads one complete response with a Content-Length body (or none) and removes it from the
  // buffer. Returns "" on timeout.
  std::string read_response(std::chrono::milliseconds limit = 3s) {
    std::string out;
    read(
        [&](const std::string& b) {
          auto end = b.find("\r\n\r\n");
          if (end == std::string::npos) return false;
          size_t len = 0;
          auto head = b.substr(0, end);
          auto lower = head;
          for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
          auto cl = lower.find("\r\ncontent-length:");
          if (cl != std::string::npos) len = std::stoul(head.substr(cl + 17));
          if (b.size() < end + 4 + len) return false;
          out = b.substr(0, end + 4 + len);
          return true;
        },
        limit);
    if (!out.empty()) buf_.erase(0, out.size());
    return out;
  }
  // True when the peer closed the connection (reads until close or deadline).
  bool closed_by_peer(std::chrono::milliseconds limit = 3s) {
    read([](const std::string&) { return false; }, limit);
    return closed_;
  }
  const std::string& buffer() const { return buf_; }
  int fd() const { return fd_; }

 private:
  int fd_ = -1;
  bool connected_ = false;
  bool closed_ = false;
  std::string buf_;
};

// Whether both a TCP and a UDP socket can bind 127.0.0.1:port right now.
inline bool port_bindable(int port) {
  for (int kind : {SOCK_STREAM, SOCK_DGRAM}) {
    int fd = ::socket(AF_INET, kind, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    sa.sin_port = htons(static_cast<uint16_t>(port));
    const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0;
    ::close(fd);
    if (!ok) return false;
  }
  return true;
}

// Returns a loopback port (TCP and UDP) that nothing uses right now and that no other test is
// handed before the sequence wraps: ports come in order from below the kernel's ephemeral range
// (no outgoing connection and no bind to port 0 can take one before the node binds it), and the
// sequence is shared by every test process through a locked counter file — the scheme of
// free_port() in tests/pylib/harness.py. Falls back to the kernel's choice if either is missing.
inline int unused_port() {
  int low = 10000, high = 10000;
  if (FILE* f = std::fopen("/proc/sys/net/ipv4/ip_local_port_range", "r")) {
    if (std::fscanf(f, "%d", &high) != 1) high = low;
    std::fclose(f);
  }
  const char* tmp = std::getenv("TMPDIR");
  const std::string path = std::string(tmp ? tmp : "/tmp") + "/meridian-test-ports";
  const int fd = high - low >= 1000 ? ::open(path.c_str(), O_RDWR | O_CREAT, 0666) : -1;
  if (fd < 0) {
    int s = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ::bind(s, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
    socklen_t len = sizeof sa;
    ::getsockname(s, reinterpret_cast<sockaddr*>(&sa), &len);
    ::close(s);
    return ntohs(sa.sin_port);
  }
  ::flock(fd, LOCK_EX);
  char text[32] = {};
  const auto n = ::read(fd, text, sizeof text - 1);
  long offset =
      n > 0 && std::isdigit(static_cast<unsigned char>(text[0])) ? std::atol(text) : ::getpid();
  int port = low;
  for (int i = 0; i < high - low; ++i) {
    port = low + static_cast<int>(offset % (high - low));
    ++offset;
    if (port_bindable(port)) break;
  }
  const std::string next = std::to_string(offset % (high - low));
  ::lseek(fd, 0, SEEK_SET);
  if (::ftruncate(fd, 0) == 0 && ::write(fd, next.data(), next.size()) < 0) {
    // the next caller starts from its pid instead; the bind check still holds
  }
  ::close(fd);  // releases the lock
  return port;
}

inline int status_of(const std::string& response) {
  if (response.size() < 12 || response.rfind("HTTP/1.", 0) != 0) return 0;
  return std::stoi(response.substr(9, 3));
}

// A node running in this process, built from YAML text. Listeners use port 0.
class running_node {
 public:
  explicit running_node(const std::string& yaml) {
    auto text = "node: {id: test-1, region: eu-west, data_dir: " + dir_.file("data") +
                "}\nlisten: {proxy: 127.0.0.1:0, admin: 127.0.0.1:0}\n" + yaml;
    auto result = node::parse_config(text, "test.yaml");
    std::string errors;
    for (auto& e : result.errors) errors += e.to_string() + "\n";
    EXPECT_TRUE(result.value) << errors << "\n" << text;
    if (!result.value) return;
    node_ = std::make_unique<node::node>(*result.value);
    std::string error;
    started_ = node_->start(&error);
    EXPECT_TRUE(started_) << error;
  }
  ~running_node() {
    if (node_ && started_) node_->drain(std::chrono::seconds(2));
  }
  bool ok() const { return started_; }
  node::node& get() { return *node_; }
  int port() const { return node_->proxy_port(); }
  int admin_port() const { return node_->admin_port(); }
  int tls_port() const { return node_->tls_port(); }
  // Applies new YAML (same header as the constructor's).
  bool apply(const std::string& yaml, std::string* error) {
    auto text = "node: {id: test-1, region: eu-west, data_dir: " + dir_.file("data") +
                "}\nlisten: {proxy: 127.0.0.1:0, admin: 127.0.0.1:0}\n" + yaml;
    auto result = node::parse_config(text, "test.yaml");
    if (!result.value) {
      *error = result.errors.empty() ? "?" : result.errors[0].to_string();
      return false;
    }
    return node_->apply(*result.value, error);
  }
  httplib::Client client() {
    httplib::Client c("127.0.0.1", port());
    c.set_read_timeout(5, 0);
    c.set_tcp_nodelay(true);
    return c;
  }
  std::string metrics() {
    httplib::Client c("127.0.0.1", admin_port());
    auto res = c.Get("/metrics", {{"Authorization", "Bearer " + node_->admin_token()}});
    return res ? res->body : "";
  }

 private:
  temp_dir dir_;
  std::unique_ptr<node::node> node_;
  bool started_ = false;
};

}  // namespace meridian::testing
