#pragma once
// gRPC through the gateway (gRPC over HTTP/2, grpc/doc/PROTOCOL-HTTP2.md) and gRPC-Web
// (grpc/doc/PROTOCOL-WEB.md): what the codecs and the call need beyond plain HTTP — the status a
// gateway error maps to, grpc-timeout, grpc-message's encoding, and the gRPC-Web translation
// (content types, base64 for grpc-web-text, trailers as the body's last frame).

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "http1_head.h"

namespace meridian::node {

// The grpc-status for an error the gateway answers itself with an HTTP status: the gRPC
// specification's mapping of HTTP statuses, made exact where the gateway knows more (a rate limit
// is RESOURCE_EXHAUSTED, a timeout DEADLINE_EXCEEDED, no route UNIMPLEMENTED).
int grpc_status_for_http(int http_status);

// A grpc-status value (0..16 and beyond), or 2 (UNKNOWN) when it is not a number.
int parse_grpc_status(std::string_view value);

// grpc-timeout ("1S", "250m", "100u", "2H": an ASCII integer of at most 8 digits and a unit) in
// milliseconds, rounded up; 0 when the value is not one.
int64_t parse_grpc_timeout(std::string_view value);

// Appends message percent-encoded as grpc-message wants it (bytes outside 0x20..0x7e and '%').
void append_grpc_message(std::string& out, std::string_view message);

// The gRPC content type a gRPC-Web one stands for ("application/grpc-web-text+proto" ->
// "application/grpc+proto"), and back for the response. Empty when ct is not one.
std::string_view grpc_content_type_for_web(std::string_view ct);
std::string_view web_content_type_for_grpc(std::string_view ct, bool text);

// Base64 in pieces split anywhere, for grpc-web-text. The decoder takes groups of four
// characters, padded ones included (gRPC-Web lets each piece carry its own padding), and skips
// line breaks; anything else is an error.
class base64_stream_decoder {
 public:
  // Appends the bytes of the complete groups in `in` to out. False on a character that is not
  // base64.
  bool feed(std::string_view in, std::string& out);
  // True when no partial group is left over.
  bool complete() const { return held_ == 0; }

 private:
  char group_[4];
  size_t held_ = 0;
};

class base64_stream_encoder {
 public:
  // Appends the encoding of whole 3-byte groups; keeps the rest for the next piece.
  void feed(std::string_view in, std::string& out);
  // Appends the rest with its padding.
  void finish(std::string& out);

 private:
  unsigned char held_[3];
  size_t count_ = 0;
};

// Appends the gRPC-Web trailer frame (flag 0x80, length, "name:value\r\n" lines, names lower-cased)
// carrying trailers.
void append_grpc_web_trailer_frame(std::string& out, std::span<const field_view> trailers);

}  // namespace meridian::node
