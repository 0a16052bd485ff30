#pragma once
// Wire-format checks on a gRPC response before it is printed as JSON. protobuf's JSON printer
// passes some malformed input and drops invalid UTF-8 silently, and its parser logs on invalid
// UTF-8: this walks the bytes once, against the schema, without allocating a message or logging.

#include <google/protobuf/descriptor.h>

#include <string>
#include <string_view>

namespace meridian::transcode {

// Returns true when `bytes` are well-formed wire format (tags, lengths, nesting at most 100
// deep) and every string field of `type` and its sub-messages is valid UTF-8; false with *why.
bool check_wire(const google::protobuf::Descriptor* type, std::string_view bytes, std::string* why);

// Returns the top-level occurrences of field `number` in `bytes`, tags included: the message
// with every other field removed. `bytes` must have passed check_wire.
std::string only_field(std::string_view bytes, int number);

}  // namespace meridian::transcode
