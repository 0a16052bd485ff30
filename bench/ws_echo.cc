// WebSocket echo origin and load client for bench/websocket.sh (Boost.Beast, one thread each).
// bench/websocket.sh compiles it with g++ into BUILD_DIR/bench-bin, outside CMake.
//
// usage: ws_echo server PORT
//          Listens on 127.0.0.1:PORT, prints "ready PORT", and echoes every message on every
//          connection (text stays text, binary stays binary) until killed.
//        ws_echo client HOST PORT CONNECTIONS SECONDS SIZE
//          Opens CONNECTIONS WebSocket connections to ws://HOST:PORT/ and on each ping-pongs
//          binary messages of SIZE bytes, one in flight per connection, checking every echo byte
//          for byte. After a 0.5 s warm-up it counts round trips for SECONDS, then closes every
//          connection and prints "messages N seconds S rate R cpu C" (R: round trips per second;
//          C: the client's own CPU seconds, user + system, over those S seconds). Exits 1
//          on any connection error, short or wrong echo, or if the run overruns by 15 s.
#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/websocket.hpp>

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace websocket = beast::websocket;
using tcp = asio::ip::tcp;
using ws_stream = websocket::stream<beast::tcp_stream>;

namespace {

// Returns the CPU time (user + system) this process has used so far, in seconds.
double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return static_cast<double>(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         static_cast<double>(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

constexpr std::size_t max_message_bytes = 1 << 20;

// --- origin -------------------------------------------------------------------------------------

// One accepted connection of the origin: upgrade, then read a message and write it back, until
// the peer closes. Runs on the origin's only thread.
class echo_session : public std::enable_shared_from_this<echo_session> {
 public:
  explicit echo_session(tcp::socket socket) : ws_(std::move(socket)) {}

  void run() {
    beast::get_lowest_layer(ws_).socket().set_option(tcp::no_delay(true));
    ws_.set_option(websocket::stream_base::timeout::suggested(beast::role_type::server));
    ws_.read_message_max(max_message_bytes);
    ws_.async_accept([self = shared_from_this()](beast::error_code ec) {
      if (!ec) self->do_read();
    });
  }

 private:
  void do_read() {
    ws_.async_read(buffer_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      self->on_read(ec);
    });
  }

  void on_read(beast::error_code ec) {
    if (ec) return;  // closed by the peer, or failed: either way the session ends
    ws_.text(ws_.got_text());
    ws_.async_write(buffer_.data(), [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec) return;
      self->buffer_.consume(self->buffer_.size());
      self->do_read();
    });
  }

  ws_stream ws_;
  beast::flat_buffer buffer_;
};

void do_accept(tcp::acceptor& acceptor) {
  acceptor.async_accept([&acceptor](beast::error_code ec, tcp::socket socket) {
    if (!ec) std::make_shared<echo_session>(std::move(socket))->run();
    do_accept(acceptor);
  });
}

int run_server(unsigned short port) {
  asio::io_context io(1);
  tcp::acceptor acceptor(io);
  tcp::endpoint endpoint(asio::ip::make_address("127.0.0.1"), port);
  acceptor.open(endpoint.protocol());
  acceptor.set_option(asio::socket_base::reuse_address(true));
  acceptor.bind(endpoint);
  acceptor.listen(asio::socket_base::max_listen_connections);
  do_accept(acceptor);
  std::printf("ready %u\n", static_cast<unsigned>(acceptor.local_endpoint().port()));
  std::fflush(stdout);
  io.run();
  return 0;
}

// --- client -------------------------------------------------------------------------------------

// What every client connection shares: the counters and the phase of the run.
struct client_run {
  std::size_t connections = 0;
  std::size_t ready = 0;
  std::size_t closed = 0;
  unsigned long long round_trips = 0;
  bool stopping = false;
  int failures = 0;
  std::function<void()> on_all_ready;
};

// One client connection: connect, upgrade, then write a message and read its echo, again and
// again until the run is stopping, then close. Runs on the client's only thread.
class ping_pong : public std::enable_shared_from_this<ping_pong> {
 public:
  ping_pong(asio::io_context& io, client_run& run, tcp::endpoint endpoint, std::string host,
            std::size_t size)
      : ws_(io), run_(run), endpoint_(endpoint), host_(std::move(host)), message_(size, '\0') {
    for (std::size_t i = 0; i < size; ++i) message_[i] = static_cast<char>('a' + i % 26);
  }

  void start() {
    beast::get_lowest_layer(ws_).async_connect(
        endpoint_, [self = shared_from_this()](beast::error_code ec) { self->on_connect(ec); });
  }

 private:
  void fail(const char* what, beast::error_code ec) {
    std::fprintf(stderr, "ws_echo client: %s: %s\n", what, ec.message().c_str());
    ++run_.failures;
    run_.stopping = true;  // the others close after their next echo
    beast::get_lowest_layer(ws_).close();
    ++run_.closed;
  }

  void on_connect(beast::error_code ec) {
    if (ec) return fail("connect", ec);
    beast::get_lowest_layer(ws_).socket().set_option(tcp::no_delay(true));
    ws_.set_option(websocket::stream_base::timeout::suggested(beast::role_type::client));
    ws_.read_message_max(max_message_bytes);
    ws_.binary(true);
    ws_.async_handshake(host_, "/", [self = shared_from_this()](beast::error_code ec) {
      if (ec) return self->fail("handshake", ec);
      if (++self->run_.ready == self->run_.connections && self->run_.on_all_ready) {
        self->run_.on_all_ready();
      }
      self->do_write();
    });
  }

  void do_write() {
    ws_.async_write(
        asio::buffer(message_), [self = shared_from_this()](beast::error_code ec, std::size_t) {
          if (ec) return self->fail("write", ec);
          self->ws_.async_read(self->buffer_,
                               [self](beast::error_code ec, std::size_t) { self->on_read(ec); });
        });
  }

  void on_read(beast::error_code ec) {
    if (ec) return fail("read", ec);
    const auto data = buffer_.data();
    if (data.size() != message_.size() ||
        std::string_view(static_cast<const char*>(data.data()), data.size()) != message_) {
      std::fprintf(stderr, "ws_echo client: an echo of %zu bytes differs from the %zu sent\n",
                   data.size(), message_.size());
      ++run_.failures;
      run_.stopping = true;
      beast::get_lowest_layer(ws_).close();
      ++run_.closed;
      return;
    }
    buffer_.consume(buffer_.size());
    ++run_.round_trips;
    if (!run_.stopping) return do_write();
    ws_.async_close(websocket::close_code::normal,
                    [self = shared_from_this()](beast::error_code) { ++self->run_.closed; });
  }

  ws_stream ws_;
  client_run& run_;
  tcp::endpoint endpoint_;
  std::string host_;
  std::string message_;
  beast::flat_buffer buffer_;
};

int run_client(const std::string& host, unsigned short port, std::size_t connections,
               double seconds, std::size_t size) {
  using clock = std::chrono::steady_clock;
  asio::io_context io(1);
  client_run run;
  run.connections = connections;
  tcp::endpoint endpoint(asio::ip::make_address(host), port);
  const std::string host_field = host + ":" + std::to_string(port);

  asio::steady_timer phase(io);
  asio::steady_timer watchdog(io);
  clock::time_point counted_from;
  unsigned long long counted_base = 0;
  double cpu_from = 0;
  double measured_cpu = 0;
  double measured_seconds = 0;
  unsigned long long measured = 0;

  run.on_all_ready = [&] {
    phase.expires_after(std::chrono::milliseconds(500));  // warm-up
    phase.async_wait([&](beast::error_code) {
      counted_from = clock::now();
      counted_base = run.round_trips;
      cpu_from = cpu_seconds();
      phase.expires_after(
          std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(seconds)));
      phase.async_wait([&](beast::error_code) {
        measured = run.round_trips - counted_base;
        measured_seconds = std::chrono::duration<double>(clock::now() - counted_from).count();
        measured_cpu = cpu_seconds() - cpu_from;
        run.stopping = true;
      });
    });
  };
  watchdog.expires_after(
      std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(seconds + 15)));
  watchdog.async_wait([&](beast::error_code ec) {
    if (ec) return;
    std::fprintf(stderr, "ws_echo client: overran by 15 s (%zu of %zu connections ready)\n",
                 run.ready, connections);
    std::exit(1);
  });

  std::vector<std::shared_ptr<ping_pong>> all;
  for (std::size_t i = 0; i < connections; ++i) {
    all.push_back(std::make_shared<ping_pong>(io, run, endpoint, host_field, size));
    all.back()->start();
  }
  // Every connection ends (closed or failed) before io.run() could return; the watchdog stays
  // armed until then, so it is cancelled from a handler that polls for the end.
  asio::steady_timer end_poll(io);
  std::function<void()> poll = [&] {
    end_poll.expires_after(std::chrono::milliseconds(20));
    end_poll.async_wait([&](beast::error_code) {
      if (run.closed == connections) {
        watchdog.cancel();
        phase.cancel();
        return;
      }
      poll();
    });
  };
  poll();
  io.run();

  if (run.failures != 0 || measured_seconds <= 0) {
    std::fprintf(stderr, "ws_echo client: %d connection(s) failed, %zu of %zu were ready\n",
                 run.failures, run.ready, connections);
    return 1;
  }
  std::printf("messages %llu seconds %.3f rate %.1f cpu %.3f\n", measured, measured_seconds,
              static_cast<double>(measured) / measured_seconds, measured_cpu);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  if (mode == "server" && argc == 3)
    return run_server(static_cast<unsigned short>(std::atoi(argv[2])));
  if (mode == "client" && argc == 7) {
    const long connections = std::atol(argv[4]);
    const double seconds = std::atof(argv[5]);
    const long size = std::atol(argv[6]);
    if (connections < 1 || seconds <= 0 || size < 1 ||
        size > static_cast<long>(max_message_bytes)) {
      std::fprintf(stderr, "ws_echo client: CONNECTIONS >= 1, SECONDS > 0, SIZE 1..%zu\n",
                   max_message_bytes);
      return 2;
    }
    return run_client(argv[2], static_cast<unsigned short>(std::atoi(argv[3])),
                      static_cast<std::size_t>(connections), seconds,
                      static_cast<std::size_t>(size));
  }
  std::fprintf(stderr,
               "usage: %s server PORT\n"
               "       %s client HOST PORT CONNECTIONS SECONDS SIZE\n",
               argv[0], argv[0]);
  return 2;
}
