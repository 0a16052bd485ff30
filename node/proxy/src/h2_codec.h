#pragma once
// HTTP/2 towards clients (RFC 9113) with nghttp2: the second codec beside the HTTP/1.1 session.
// A client connection becomes HTTP/2 when TLS negotiated `h2` by ALPN or, on the plain listener,
// when its first bytes are the connection preface (h2c with prior knowledge). The
// client_session keeps the socket, the TLS stream, the reads and writes and the sweep's
// deadlines; it hands the bytes it reads to an h2_connection and writes what that puts in its
// output buffer.
//
// Each stream is an h2_stream: one exchange through the same entry chain, route chain and
// dispatch (upstream_call) as an HTTP/1.1 request. The stream is the call's call_sink; the
// response body waits in the stream until the client's flow-control window takes it (nghttp2
// pulls it, and the call stops reading its upstream while the stream holds a full buffer). The
// request body is taken from the client's window only as the call takes it (no automatic
// WINDOW_UPDATE), so a slow upstream slows the client instead of filling memory.
//
// Defences (each cuts the connection off with GOAWAY ENHANCE_YOUR_CALM and counts it): streams
// reset by the client faster than a token bucket allows (rapid reset, CVE-2023-44487); SETTINGS,
// PING, PRIORITY and empty frames likewise (control floods); more than max_continuations
// CONTINUATION frames in a header block (CONTINUATION flood). nghttp2's own limits of the same
// kinds sit behind ours as a backstop. A header list larger than max_header_bytes is answered
// 431 on its stream; SETTINGS_MAX_CONCURRENT_STREAMS, the windows and the HPACK table size are
// advertised in our SETTINGS and enforced by nghttp2.
//
// Threading: on the session's worker only.

#include <nghttp2/nghttp2.h>

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "exchange_flow.h"
#include "meridian/common/byte_buffer.h"

namespace meridian::node {

class client_session;
class h2_connection;

// A token bucket over a coarse millisecond clock.
class token_bucket {
 public:
  token_bucket(uint32_t burst, uint32_t per_second)
      : burst_(burst), rate_(per_second), tokens_(burst) {}
  // Takes one token; false when there is none.
  bool take(int64_t now_ms);

 private:
  double burst_;
  double rate_;
  double tokens_;
  int64_t last_ms_ = 0;
};

class h2_stream final : public std::enable_shared_from_this<h2_stream>,
                        public exchange_flow,
                        public call_sink {
 public:
  h2_stream(h2_connection& c, std::shared_ptr<client_session> owner, int32_t id);
  ~h2_stream() override;

  int32_t id() const { return id_; }
  // From the connection's nghttp2 callbacks.
  void on_header(std::string_view name, std::string_view value);
  void on_headers_done(bool end_stream);
  void on_data(const uint8_t* data, size_t n);
  void on_end_stream();
  // The stream closed (both ways, or reset by either side).
  void on_closed();
  // The response has been sent in full; the client may still be sending its body.
  void on_response_sent();
  // The stream closes before its response went out, and not because the gateway reset it: the
  // client reset it (or made nghttp2 do so). Counted against the rapid-reset bucket.
  bool ended_early() const { return !response_sent_ && !reset_by_us_; }
  // The data provider: how much of the response body may go out now (0 with *deferred: none
  // yet), and the bytes themselves (appended to out when nghttp2 sends the frame).
  ssize_t response_ready(size_t length, uint32_t* flags);
  void send_response_data(byte_buffer& out, const uint8_t* frame_head, size_t length);
  // The response buffer drained below its mark: the call reads its upstream again.
  void on_response_room();
  // The sweep: the stream's deadline (or its call's) passed.
  void check_deadline(int64_t now);
  // The connection ends: the exchange is abandoned.
  void abandon();
  // Drain: a tunnel's WebSocket closes with 1001.
  void close_tunnel() {
    if (phase_ == phase::tunnel) call_.close_tunnel(1001);
  }

  // call_sink (upstream_call.h).
  std::shared_ptr<void> keep_alive() override { return shared_from_this(); }
  bool body_waiting() const override { return !body_in_.empty(); }
  void on_call_room() override;
  void on_call_head(response_head& h, bool length_known) override;
  void on_call_body(std::string_view piece) override;
  void flush_response() override;
  void on_call_trailers(std::span<const field_view> trailers) override;
  void on_call_done() override;
  void on_call_failed() override { answer_local(); }
  void on_call_tunnel() override;
  void on_call_cut() override { reset(NGHTTP2_INTERNAL_ERROR); }
  bool sink_full() const override { return response_.size() >= response_high_water; }

 private:
  static constexpr size_t response_high_water = 64 * 1024;
  // tunnel: a WebSocket by extended CONNECT (RFC 8441) after the upstream's 101: DATA frames
  // carry the WebSocket bytes both ways.
  enum class phase { headers, awaiting_body, paused, calling, tunnel, answered, closed };

  // exchange_flow (exchange_flow.h).
  std::shared_ptr<exchange_flow> flow_owner() override { return shared_from_this(); }
  void on_flow_prepared() override {}
  void on_flow_paused(int64_t deadline) override;
  void on_flow_awaiting_body() override;
  void on_flow_resumed() override { phase_ = phase::headers; }
  void on_flow_continue() override { forward_body(); }
  void on_flow_calling() override { phase_ = phase::calling; }
  void answer_local() override;

  // The local answer of a gRPC request: a trailers-only response with the matching grpc-status.
  void answer_grpc_error();
  // Refuses the request head with a local answer.
  void refuse(int status, const char* code, const char* message);
  // Hands held request body to the call as far as it has room; ends the body after the last.
  void forward_body();
  // The same for a tunnel's bytes; the client's END_STREAM half-closes the upstream.
  void forward_tunnel();
  // Gives n bytes of the client's window back (they have been taken from the stream).
  void consume(size_t n);
  // Submits the response head (and the data provider unless the response has no body).
  void submit(std::vector<nghttp2_nv>& nv, bool with_body);
  void reset(uint32_t error_code);
  void log_once();

  h2_connection& c_;
  std::shared_ptr<client_session> owner_;  // the connection's session lives while a stream does
  int32_t id_;
  phase phase_ = phase::headers;
  int64_t deadline_ = 0;
  // The request head as received: names and values back to back in head_text_.
  struct field_at {
    uint32_t name, name_len, value, value_len;
  };
  std::string head_text_;
  std::vector<field_at> at_;
  std::vector<field_view> fields_;
  size_t head_bytes_ = 0;  // RFC 9113 section 6.5.2's measure (name + value + 32 each)
  bool head_too_large_ = false;
  std::string_view method_, scheme_, authority_, path_, protocol_;
  std::string cookie_;          // the cookie crumbs joined into one field (RFC 9113 section 8.2.3)
  bool end_stream_ = false;     // the client has sent all of its request
  bool body_ended_ = false;     // ... and the call has been told
  bool tunnel_end_ = false;     // the client ended a tunnel's stream (its half-close)
  byte_buffer body_in_;         // request body the call has no room for yet (within the window)
  byte_buffer response_;        // response body waiting for the client's window
  bool response_done_ = false;  // the last response byte is in response_
  // Trailer fields to send after the body (names lower-cased and values back to back).
  std::string trailer_text_;
  std::vector<std::array<size_t, 4>> trailer_at_;
  bool deferred_ = false;  // the data provider said "nothing yet"
  bool logged_ = false;
  bool response_sent_ = false;  // its last frame (END_STREAM) went out
  bool reset_by_us_ = false;
};

class h2_connection {
 public:
  h2_connection(client_session& session, worker& w, byte_buffer& out, std::string_view client_ip,
                bool tls);
  ~h2_connection();
  h2_connection(const h2_connection&) = delete;
  h2_connection& operator=(const h2_connection&) = delete;

  // Our SETTINGS. False when nghttp2 could not start (out of memory).
  bool start();
  // Bytes from the client. False when the connection must end once its output is written (a
  // protocol error, an attack cut off, or a client that is not speaking HTTP/2).
  bool on_input(const char* data, size_t n);
  // Moves the frames nghttp2 has ready into the output buffer, up to its high-water mark.
  void produce();
  // Neither side has anything more to say: close once the output is written.
  bool finished() const;
  bool wants_read() const;
  // The sweep: stream deadlines, the idle timeout, the drain's second GOAWAY. False: close now.
  bool check_deadline(int64_t now);
  // Graceful shutdown (RFC 9113 section 6.8): a GOAWAY announcing it, then one with the last
  // stream taken; open streams finish.
  void begin_drain();
  // The connection is gone: every stream's exchange is abandoned.
  void close();
  // Drain: the tunnels among the streams close with 1001 (going away).
  void close_tunnels();

  // For the streams.
  nghttp2_session* session() { return session_; }
  worker& w() { return w_; }
  std::string_view client_ip() const { return client_ip_; }
  bool tls() const { return tls_; }
  bool closed() const { return closed_; }
  // Frames (or window updates) are waiting: produce and write them soon (not from inside
  // nghttp2; after the handlers already queued, so that several streams' frames share a write).
  void pump();
  // A stream's response buffer drained below its mark: its call may read on.
  void stream_drained(h2_stream* s) { drained_.push_back(s->shared_from_this()); }
  // Scratch for a head being submitted (nghttp2 copies names and values).
  struct nv_scratch {
    std::string text;
    std::vector<std::array<size_t, 4>> at;
    std::vector<nghttp2_nv> nv;
  };
  nv_scratch& nv() { return nv_; }

 private:
  friend struct h2_callbacks;
  // A defence fired: GOAWAY with ENHANCE_YOUR_CALM, count it, read no more.
  void cut_off(counter& which);
  h2_stream* stream(int32_t id);

  client_session& session_owner_;
  worker& w_;
  byte_buffer& out_;
  std::string client_ip_;
  bool tls_;
  nghttp2_session* session_ = nullptr;
  std::unordered_map<int32_t, std::shared_ptr<h2_stream>> streams_;
  // Streams closed inside nghttp2's callbacks, freed once it has returned.
  std::vector<std::shared_ptr<h2_stream>> closed_streams_;
  std::vector<std::shared_ptr<h2_stream>> drained_;
  nv_scratch nv_;
  token_bucket resets_;
  token_bucket control_frames_;
  uint32_t max_continuations_;
  uint32_t continuations_ = 0;  // in the header block being received
  int64_t idle_since_ = 0;      // no stream open since (ms), 0 while streams are open
  int64_t header_block_since_ = 0;
  int64_t drain_at_ = 0;  // the first GOAWAY went out then; the second follows
  bool goaway_sent_ = false;
  bool in_nghttp2_ = false;  // inside mem_recv or send: no re-entry
  bool pump_posted_ = false;
  bool dead_ = false;  // read no more; close once the output is written
  int64_t dead_since_ = 0;
  bool closed_ = false;
};

}  // namespace meridian::node
