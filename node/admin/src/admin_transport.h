#pragma once
// The admin API's connection handling: cpp-httplib parses requests and runs handlers, but the
// connections are ours, so that slow or hostile clients cannot take the admin API down.
//
// httplib serves one connection per pool thread, and a thread waits as long as the client takes
// to send its head: five clients sending a header line every few seconds held all four threads
// and /health stopped answering (slowloris). Here one gate thread watches every connection that
// has not yet sent a complete request head (new ones, TLS handshakes, idle keep-alive ones) with
// poll(), under a deadline for the whole head; only a connection whose head is complete is handed
// to a worker, which runs httplib's request processing on a buffered stream over it, then hands
// it back to the gate while it waits for its next request. Each address may hold at most
// max_per_address connections: at the cap the address's oldest waiting connection makes room.
// Bytes read per request are capped, so no body can grow the process beyond that.
//
// Requests whose target starts with lane_prefix (the peer endpoints, /peer/) have workers of
// their own (lane_workers): a handler that asks the other nodes (a cluster-wide view) holds its
// worker while it waits for their peer endpoints, so with one pool, nodes each busy with such
// views would wait on each other's full pools until the peer calls timed out.
//
// Thread use: start() and stop() from one thread; everything else runs on the gate thread, the
// workers and httplib's accept thread.

#include <httplib.h>

#include <cstddef>
#include <memory>
#include <string>

namespace meridian::node {

struct admin_transport_limits {
  size_t workers = 4;
  size_t lane_workers = 2;             // for requests whose target starts with lane_prefix
  std::string lane_prefix = "/peer/";  // empty: one pool for all
  size_t max_connections = 512;        // in all; beyond, the oldest waiting one is closed
  size_t max_per_address = 64;         // per client address, likewise
  int head_timeout_ms = 10'000;        // the whole request head, from the start of the wait
  int io_timeout_ms = 5'000;           // each read or write once a request is being served
  int request_timeout_ms = 30'000;     // reading one request's body
  size_t max_head_bytes = 64 * 1024;   // 431 beyond
  size_t max_request_bytes = (1 << 20) + 64 * 1024;  // head and body; the stream fails beyond
};

// An httplib::Server whose connections are served as described above. Configure handlers as on
// any httplib::Server; call listen_after_bind() on its own thread as usual.
class guarded_server : public httplib::Server {
 public:
  // tls_cert empty: plain HTTP. With tls_client_ca, clients must present a certificate it signed.
  guarded_server(admin_transport_limits limits, const std::string& tls_cert,
                 const std::string& tls_key, const std::string& tls_client_ca);
  ~guarded_server() override;

  // False when the TLS files were unusable (error() says why).
  bool is_valid() const override;
  const std::string& error() const;
  // Called by a handler (on the worker serving the request): the connection closes once this
  // response is written, e.g. after refusing a request whose body was left unread.
  static void close_after_response();
  // True (on the worker serving it) when the current request was cut off at max_request_bytes.
  static bool request_over_limit();

  struct impl;

 private:
  // Called on httplib's accept thread for each accepted socket: hands it to the gate.
  bool process_and_close_socket(socket_t sock) override;

  friend struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace meridian::node
