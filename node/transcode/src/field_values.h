#pragma once
// Conversions of text (a path variable or a query parameter, already percent-decoded) to
// protobuf field values, as the google.api.http rules and the proto3 JSON mapping spell them.

#include <google/protobuf/message.h>

#include <string>
#include <string_view>

namespace meridian::transcode {

// Sets `field` of `message` (appends, when it is repeated) to `text` converted to the field's
// type: decimal integers in range, floats (also NaN, Infinity, -Infinity), bools true/false,
// enums by value name or number, strings as valid UTF-8, bytes as base64 (standard or URL-safe,
// padding optional). Returns false with *why (e.g. "\"x\" is not an int64") otherwise. The field
// must be a scalar or enum field of message's type.
bool set_field_from_text(google::protobuf::Message* message,
                         const google::protobuf::FieldDescriptor* field, std::string_view text,
                         std::string* why);

// Returns true when text is well-formed UTF-8 (no overlongs, surrogates or values past U+10FFFF).
bool valid_utf8(std::string_view text);

// Decodes base64 in either alphabet, padding optional; returns false on any other character.
bool decode_base64(std::string_view text, std::string* out);

}  // namespace meridian::transcode
