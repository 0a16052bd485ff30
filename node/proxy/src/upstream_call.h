#pragma once
// Dispatch, the step after the chains: one exchange's call to its upstream. It writes the
// upstream request head (with the head stages of both chains), chooses a target (balancing,
// the failover chain, circuit breakers), reuses a pooled connection or opens one, sends the head
// and the request body, parses the response and hands it on through the response stages,
// retries within the retry budget, and answers with the route's fallback in place of a gateway
// error. Breaker, outlier and target metrics are fed from here. On a route with `websocket: true`
// an upgrade request asks the upstream to switch too, and after its 101 the call relays the
// tunnel's bytes both ways (backpressure, half-close, an idle deadline, a per-node cap).
//
// The call knows nothing of the client's protocol. The codec that turned the client's bytes
// into the exchange (the HTTP/1.1 session; an HTTP/2 stream the same way) feeds the request
// body in with send_body/end_body and gets the response out through its call_sink: the head
// (after the response stages, framing left to the codec), body pieces, the end, or a failure
// left in the exchange as a local answer. Both directions have backpressure: body_room() and
// call_sink::on_call_room for the request, call_sink::sink_full and resume_response for the
// response.
//
// Threading: a call lives on its exchange's worker and is touched by no other thread.

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "exchange.h"
#include "grpc.h"
#include "http1_head.h"
#include "http1_parsers.h"
#include "meridian/common/byte_buffer.h"

namespace meridian::node {

class worker;
class upstream_conn;
class h2_upstream;
struct h2_upstream_callbacks;
struct snapshot;

// What a codec gives the call of one of its exchanges.
class call_sink {
 public:
  // What keeps the sink, and the call it holds, alive while an operation of the call is
  // pending (an aliasing pointer is fine).
  virtual std::shared_ptr<void> keep_alive() = 0;
  // True while the codec holds request body bytes it is about to send_body: the head then goes
  // out together with the first of them rather than in a packet of its own.
  virtual bool body_waiting() const = 0;
  // The call can take request body again (connected, or its output drained).
  virtual void on_call_room() = 0;
  // The response head after the response stages: a final one (ex.response_head_sent is set) or
  // an interim 1xx (h.informational) before it. `length_known`: the upstream gave a
  // Content-Length, so the body needs no framing of the codec's own.
  virtual void on_call_head(response_head& h, bool length_known) = 0;
  // A piece of the response body (after the response body stages).
  virtual void on_call_body(std::string_view piece) = 0;
  // What the last heads and pieces put out can go: they came from one read of the upstream.
  virtual void flush_response() = 0;
  // The response's trailer fields (an HTTP/2 upstream's trailing HEADERS: gRPC's grpc-status),
  // after the last body piece and before on_call_done.
  virtual void on_call_trailers(std::span<const field_view> trailers) = 0;
  // The response is complete. The call is over: its connection is pooled or closed, and the
  // codec may start its next exchange on the same call.
  virtual void on_call_done() = 0;
  // The call failed before the response head: the answer is in the exchange as a local answer
  // (ex.local_reply for the route's fallback, else ex.local_status, code and message).
  virtual void on_call_failed() = 0;
  // The upstream answered 101 to a WebSocket upgrade (the head went through on_call_head):
  // from now on the codec relays raw bytes both ways, client to upstream with send_body (then
  // end_tunnel_send at the client's end), upstream to client through on_call_body, until
  // on_call_done (the upstream closed) or on_call_cut.
  virtual void on_call_tunnel() = 0;
  // The call failed after the response head went out: the codec cuts the response short.
  virtual void on_call_cut() = 0;
  // The codec's output is full: the call stops reading the upstream until resume_response().
  virtual bool sink_full() const = 0;

 protected:
  ~call_sink() = default;
};

class upstream_call {
 public:
  upstream_call(worker& w, call_sink& sink, exchange& ex) : w_(w), sink_(sink), ex_(ex) {}
  ~upstream_call();
  upstream_call(const upstream_call&) = delete;
  upstream_call& operator=(const upstream_call&) = delete;

  // Writes the upstream request head for ex (route and upstream chosen by the stages); body
  // pieces may follow before start().
  void prepare(const snapshot& snap);
  // Dispatches: target, connection, send. The outcome comes through the sink.
  void start();
  // Request body from the codec, framed for the upstream. Keep within body_room().
  void send_body(std::string_view piece);
  void end_body();
  // Bytes of request body the call takes before its output drains (0: wait for on_call_room).
  size_t body_room() const;
  // Sends what the call holds (after send_body).
  void flush();
  // The codec's output drained: go on reading the upstream.
  void resume_response();
  // The codec wrote to the client: a response stream that moves is not idle.
  void touch();
  // Called by the worker's sweep through the codec: a connect, request or idle deadline passed.
  void check_deadline(int64_t now);
  // Ends the call at once (the client went away or was answered otherwise); idempotent.
  void abandon() { release(false); }
  // Frees the send buffer while it is empty (between exchanges).
  void shrink() { out_.release_if_empty(); }
  bool active() const { return state_ != state::idle; }
  bool connecting() const { return state_ == state::connecting; }
  // The client sent its last tunnel bytes (it half-closed): the upstream's write side closes
  // once they are written.
  void end_tunnel_send();

  // Drain: a tunnel's WebSocket is closed with `code` (1001, going away): a close frame to each
  // side that is between frames (one in the middle of a frame cannot take it, and is cut at the
  // stop), nothing more relayed after it, and the upstream's write side shut.
  void close_tunnel(uint16_t code);

  // From upstream_conn: a read completed (bytes in its buffer) or failed.
  void on_upstream_data(const error_code& ec);

  // From h2_upstream (HTTP/2 upstreams): the connection is up (submit the request), the
  // request body for nghttp2's DATA frames, the response's fields, heads, data and the stream's
  // end, and the connection's failure.
  // Returns the stream id, or a negative nghttp2 error (then h2_on_refused follows).
  int32_t h2_submit(h2_upstream& conn);
  // The connection could not take the request (or the upstream refused the stream unprocessed):
  // it goes again, on another connection, at no cost to the target.
  void h2_on_refused();
  // The response's END_STREAM arrived; request_open: the request is still going up.
  void h2_on_response_end(bool request_open);
  long h2_body_ready(size_t length, uint32_t* flags);
  // Appends a DATA frame (head and length bytes of body) to out. True: the body has room again.
  bool h2_send_body(byte_buffer& out, const uint8_t* frame_head, size_t length);
  void h2_on_field(std::string_view name, std::string_view value);
  void h2_on_headers(bool end_stream);
  void h2_on_data(std::string_view piece);
  void h2_on_close(uint32_t error_code);
  void h2_on_connection_failed(bool connect_failure);

  // Response parser callbacks.
  void on_response_line(int status, std::string_view reason, int version, error_code& ec);
  void on_response_field(http::field f, std::string_view name, std::string_view value,
                         error_code& ec);
  void on_response_header(http::basic_parser<false>& parser, error_code& ec);
  void on_response_body(std::string_view body, error_code& ec);
  void on_response_chunk_header(uint64_t, error_code&) {}
  void on_response_finish(error_code&) {}

 private:
  enum class state { idle, connecting, sending, tunnel };
  // Where a WebSocket byte stream is (RFC 6455 section 5.2): in a frame head (collected until its
  // length is known) or in a payload (how much is left). Only to find the frame boundaries.
  struct ws_frames {
    unsigned char head[14];
    size_t head_len = 0;
    uint64_t payload_left = 0;
    void feed(std::string_view bytes);
    bool at_boundary() const { return head_len == 0 && payload_left == 0; }
  };
  enum class failure { connect, connect_timeout, reset, timeout, malformed };

  // The HTTP/2 side of a call to an h2c/h2 upstream: the request head as a header list, the
  // stream, its flow-control debt and the response's fields as they arrive.
  struct h2_leg {
    std::shared_ptr<h2_upstream> conn;
    int32_t stream = 0;
    std::string head_text;  // names and values back to back; head_at has the offsets
    std::vector<std::array<uint32_t, 4>> head_at;
    bool body_end = false;    // the codec ended the request body
    bool body_sent = false;   // DATA of this attempt went out: the body cannot be replayed
    bool deferred = false;    // nghttp2 waits for request body (resume_data when it comes)
    bool end_stream = false;  // the response's END_STREAM arrived
    bool head_done = false;   // the final response head went to the sink
    size_t owed = 0;          // response bytes taken and not yet given back to the window
    std::string fields_text;  // the fields of the HEADERS frame being received
    std::vector<std::array<uint32_t, 4>> fields_at;
    // gRPC-Web: the client's grpc-web-text body decoded, the response encoded back, and the
    // response's trailers as the body's last frame.
    base64_stream_decoder web_in;
    base64_stream_encoder web_out;
    std::string web_scratch;
    bool web_trailers_sent = false;
    bool web_bad = false;  // the grpc-web-text body was not base64: answered at its end
  };
  // Hands a piece of response body to the sink (gRPC-Web text encoded).
  void h2_body_to_sink(std::string_view piece);
  // gRPC-Web: the trailers as the body's last frame, and the end of a text body.
  void h2_web_end(std::span<const field_view> trailers);
  // grpc_transcode (ex_.transcode): the gRPC answer back as JSON. The head's or the trailers'
  // fields (status: the head's :status, 0 for trailers), each response message, the end once
  // the grpc-status is known, and an error answered as JSON in place of the response.
  void transcode_headers(int status, bool bad);
  void transcode_data(std::string_view piece);
  void transcode_end();
  void transcode_error(int grpc_status, std::string_view message);
  // Sends the JSON response head (unary: with the body's length).
  void transcode_head(bool streaming, size_t length);
  // Turns the HTTP/1.1 head prepare() wrote into out_ into the leg's header list.
  void h2_prepare();
  // The request deadline from the last byte sent: the upstream's timeouts.request, or a gRPC
  // client's shorter grpc-timeout.
  int64_t request_timeout() const;
  void h2_dispatch(const upstream_runtime& up);
  // The response head's checks, breaker and retry accounting, the stages and the sink; false
  // when the status is to be retried (the caller fails the attempt).
  bool deliver_head(bool keep_alive, bool length_known, bool informational, bool upgrade);

  void dispatch();
  void connect();
  void on_connected(const error_code& ec);
  void send();
  void parse();
  void failed(failure why);
  // Leaves a gateway error (or the route's fallback for 502, 503, 504) in the exchange and
  // tells the sink.
  void fail_with(int status, const char* code, std::string message);
  void finish();
  void enter_tunnel();
  void relay_to_client();
  // relay_to_client, then the next upstream read unless the client's side is full.
  void pump_tunnel();
  void shut_down_send();
  void release(bool reuse);
  bool replayable() const;
  void record_breaker(bool success);
  void count_target_failure();
  std::shared_ptr<upstream_call> self();

  worker& w_;
  call_sink& sink_;
  exchange& ex_;
  const snapshot* snap_ = nullptr;
  state state_ = state::idle;
  int64_t deadline_ = 0;
  std::shared_ptr<upstream_conn> up_;
  byte_buffer out_;
  bool writing_ = false;
  bool body_chunked_ = false;  // the request body goes upstream in chunks of the call's own
  bool response_paused_ = false;
  bool shut_after_flush_ = false;      // end_tunnel_send came while bytes were still to be written
  std::string retry_head_;             // the request head again, for a retry of a bodiless request
  ws_frames to_upstream_, to_client_;  // a tunnel's frame boundaries, each way
  bool tunnel_closing_ = false;        // close_tunnel sent its close frames: relay nothing more
  std::optional<response_parser<upstream_call>> parser_;
  std::vector<field_view> fields_;
  std::unique_ptr<h2_leg> h2_;   // set for an h2c/h2 upstream
  bool refused_stream_ = false;  // the last attempt's stream was refused unprocessed
  // Changes with every exchange prepare() starts: code that called into the sink (which may
  // end this exchange and start the next on the same call) checks it before going on.
  uint64_t epoch_ = 0;

  friend class h2_upstream;
  friend struct h2_upstream_callbacks;
};

}  // namespace meridian::node
