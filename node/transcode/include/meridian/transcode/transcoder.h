#pragma once
// REST→gRPC transcoding: the google.api.http bindings of gRPC services, read from a protobuf
// descriptor set; matching an HTTP request to a binding; building the gRPC request message from
// the path, the query string and a JSON body; and turning gRPC response messages back into JSON.
//
// Self-contained on purpose: no protobuf or Asio type appears here (the library links protobuf
// PRIVATE), so the proxy can use it without either in its headers.

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace meridian::transcode {

struct transcoder_state;  // src/transcoder_state.h

// Returns the HTTP status a gRPC status code maps to (the table Envoy and grpc-gateway use:
// OK 200, CANCELLED 499, INVALID_ARGUMENT 400, NOT_FOUND 404, UNAVAILABLE 503, ...); codes
// outside 0..16 map to 500.
int http_status_for(int grpc_status);

// Returns the canonical name of a gRPC status code ("NOT_FOUND"), or "UNKNOWN" outside 0..16.
std::string_view grpc_code_name(int grpc_status);

// Which binding an HTTP request matched, and the path variables it captured (percent-decoded).
// Cheap to move: the values share one string; it holds no pointer into the transcoder, but is
// meaningful only to the transcoder that produced it.
struct binding_match {
  // Bindings with more variables than this are refused by transcoder::load.
  static constexpr size_t k_max_variables = 8;

  uint32_t binding = 0;                          // index of the binding in the transcoder
  uint32_t variable_count = 0;                   // captured variables, in template order
  std::array<uint32_t, k_max_variables> ends{};  // end offset of each value in values
  std::string values;                            // the captured values, concatenated

  // Returns the value of the i-th variable of the template (i < variable_count).
  std::string_view value(size_t i) const {
    size_t begin = i == 0 ? 0 : ends[i - 1];
    return std::string_view(values).substr(begin, ends[i] - begin);
  }
};

// The HTTP bindings of a set of gRPC services, immutable once loaded: every const member may be
// called from any thread at the same time. Nothing here throws on the data path (match,
// build_request, response_to_json); failures come back as false/nullopt and an error string a
// client can be shown (the caller answers 400 for build_request's, 500 for response_to_json's;
// errors may quote client input, so escape them when writing them into a JSON body).
//
// Usage: load once per config; per request match(), refuse client_streaming() methods (501),
// build_request() and send the frame to grpc_path(); convert each response frame's message with
// response_to_json() (a server-streaming method yields one JSON value per message).
//
// Methods without a google.api.http annotation get no binding: a gateway exposes only what a
// service declares (there is no implicit "POST /pkg.Service/Method").
class transcoder {
 public:
  // Loads a FileDescriptorSet (protoc --include_imports --descriptor_set_out) and builds the
  // HTTP bindings of the named services (full names, "pkg.Service"; empty = every service in
  // the set that has google.api.http annotations). Returns the transcoder, or nullptr with
  // *error naming the file and what is wrong: unreadable, not a descriptor set, unknown service,
  // a service without annotations, a bad path template or field, two methods on one route.
  static std::unique_ptr<transcoder> load(const std::string& descriptor_set_path,
                                          const std::vector<std::string>& services,
                                          std::string* error);

  // The same from the bytes of a descriptor set already read (config shipped through the
  // cluster); `origin` names it in errors.
  static std::unique_ptr<transcoder> from_bytes(std::string_view descriptor_set,
                                                const std::vector<std::string>& services,
                                                std::string_view origin, std::string* error);

  ~transcoder();
  transcoder(const transcoder&) = delete;
  transcoder& operator=(const transcoder&) = delete;

  // Finds the binding for an HTTP request: `method` as sent ("GET"; case-sensitive) and the raw
  // path without the query string, still percent-encoded. Each segment is decoded here: a
  // single-segment variable takes its segment fully decoded ("a%2Fb" gives "a/b"; a raw '/'
  // never matches it); a multi-segment variable takes its segments decoded except "%2F", joined
  // by '/'. A custom verb (":publish") is matched only by bindings that declare it. Returns
  // nullopt when no binding matches (or the path's percent-encoding is malformed). The path is
  // taken as given: normalizing dot-segments is the caller's job, before matching. When several
  // match, the most specific wins: comparing segment by segment, a literal beats a single
  // wildcard, which beats "**"; then a binding with a verb beats one without; then the one
  // declared first.
  std::optional<binding_match> match(std::string_view method, std::string_view path) const;

  // Returns the gRPC path of the matched method: "/bookstore.v1.Bookstore/GetBook".
  std::string_view grpc_path(const binding_match& m) const;
  // Returns the field path a variable of the matched template fills ("book.id").
  std::string_view variable_field(const binding_match& m, size_t i) const;
  bool server_streaming(const binding_match& m) const;
  // Client-streaming (and bidirectional) methods are bound but cannot be transcoded: callers
  // refuse them (501), and build_request fails for them.
  bool client_streaming(const binding_match& m) const;

  // Builds the request message and returns true with *grpc_frame set to it as one gRPC frame
  // (5-byte prefix: flag 0, big-endian length; then the serialized message). Sources, the later
  // overriding the earlier: the JSON body as the binding's `body` says ("*" = the whole message,
  // a field name = that field; none = only an empty body is accepted), then the query string
  // (raw, as after '?', percent-decoded here with '+' as a space; dotted names reach nested
  // fields, proto or JSON names; repeated fields take repeated parameters; enums by name or
  // number; bools true/false; bytes in base64), then the path variables. Returns false with
  // *error set, for the client, when a query parameter names no field, a field the path or the
  // body binds, or a non-repeated field twice; when a value does not convert to its field's
  // type; when the JSON is malformed or names unknown fields; when a body is sent to a binding
  // without one; or when the method is client-streaming.
  bool build_request(const binding_match& m, std::string_view query, std::string_view json_body,
                     std::string* grpc_frame, std::string* error) const;

  // Converts one response message (the bytes inside one gRPC frame, without the prefix) to
  // JSON: the whole message, or the binding's `response_body` field (a JSON value of that
  // field's type; a message field unset gives {}, a repeated one []). Field names in
  // lowerCamelCase, fields at their default omitted (except a response_body scalar, which is
  // always printed). Returns false with *error set when the bytes are not that message:
  // malformed wire format, or a string field that is not UTF-8 (never silently dropped).
  bool response_to_json(const binding_match& m, std::string_view message, std::string* json,
                        std::string* error) const;

  explicit transcoder(std::unique_ptr<transcoder_state> state);

 private:
  std::unique_ptr<transcoder_state> state_;
};

// An incremental reader of gRPC length-prefixed messages (1 byte flag, 4 bytes big-endian
// length, then the message). feed() takes bytes split anywhere; next() yields whole messages in
// order. A message longer than max_message, a compressed message (flag 1: no decompression here)
// or any other flag puts the reader in an error state: error() says why, compressed() tells the
// compressed case apart, and the reader takes and yields nothing more. It holds at most the
// bytes fed since next() last returned false, and never buffers a message it will refuse: the
// length is checked as soon as the prefix is complete. One reader per stream; not thread-safe.
class frame_reader {
 public:
  explicit frame_reader(size_t max_message) : max_message_(max_message) {}

  // Appends bytes; returns false when the reader is (or has just entered) the error state.
  bool feed(std::string_view bytes);
  // Moves the next whole message into *message and returns true; false when none is complete
  // yet or the reader is in the error state.
  bool next(std::string* message);
  // Returns true when the reader has neither an error nor a partial message: a stream may end.
  bool at_boundary() const { return error_.empty() && buffer_.size() == offset_; }
  // Returns true when the error state was entered because of a compressed message.
  bool compressed() const { return compressed_; }
  // Returns why the reader is in the error state; empty when it is not.
  const std::string& error() const { return error_; }

 private:
  // Checks the prefix at offset_ once it is complete; sets error_ when it is refused.
  void check_prefix();

  size_t max_message_;
  std::string buffer_;
  size_t offset_ = 0;  // start of the first unread frame in buffer_
  bool compressed_ = false;
  std::string error_;
};

// Writes to *out the descriptor set without the files libprotobuf itself carries
// (google/protobuf/descriptor.proto, the well-known types): transcoder::load takes those from
// the runtime, and the set, shipped to every node in the route's config document, stays small.
// False with *error when the bytes are not a descriptor set.
bool compact_descriptor_set(std::string_view descriptor_set, std::string* out, std::string* error);

// Returns `message` as one gRPC frame: flag 0, big-endian length, the bytes.
std::string grpc_frame(std::string_view message);

}  // namespace meridian::transcode
