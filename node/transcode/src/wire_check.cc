#include "wire_check.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>

#include "field_values.h"

namespace meridian::transcode {
namespace {

namespace pb = google::protobuf;
using pb::internal::WireFormatLite;

constexpr int k_max_depth = 100;  // protobuf's own default recursion limit

bool check_message(const pb::Descriptor* type, pb::io::CodedInputStream* in, int depth,
                   std::string* scratch, std::string* why) {
  for (;;) {
    if (in->BytesUntilLimit() == 0) return true;  // the end of this message
    uint32_t tag = in->ReadTag();
    if (tag == 0) {  // a malformed tag, or a literal zero
      *why = "malformed " + type->full_name();
      return false;
    }
    const pb::FieldDescriptor* field =
        type == nullptr ? nullptr : type->FindFieldByNumber(WireFormatLite::GetTagFieldNumber(tag));
    bool delimited =
        WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_LENGTH_DELIMITED;
    if (field != nullptr && delimited && field->type() == pb::FieldDescriptor::TYPE_STRING) {
      uint32_t length;
      if (!in->ReadVarint32(&length) || !in->ReadString(scratch, static_cast<int>(length))) {
        *why = "malformed " + type->full_name();
        return false;
      }
      if (!valid_utf8(*scratch)) {
        *why = field->full_name() + " is not valid UTF-8";
        return false;
      }
      continue;
    }
    if (field != nullptr && delimited && field->type() == pb::FieldDescriptor::TYPE_MESSAGE) {
      uint32_t length;
      if (!in->ReadVarint32(&length) || length > static_cast<uint32_t>(in->BytesUntilLimit())) {
        *why = "malformed " + type->full_name();
        return false;
      }
      if (depth >= k_max_depth) {
        *why = "messages nested deeper than " + std::to_string(k_max_depth);
        return false;
      }
      auto limit = in->PushLimit(static_cast<int>(length));
      if (!check_message(field->message_type(), in, depth + 1, scratch, why)) return false;
      in->PopLimit(limit);
      continue;
    }
    if (!WireFormatLite::SkipField(in, tag)) {
      *why = "malformed " + type->full_name();
      return false;
    }
  }
}

}  // namespace

bool check_wire(const pb::Descriptor* type, std::string_view bytes, std::string* why) {
  if (bytes.size() > 0x7fffffff) {
    *why = "larger than 2 GiB";
    return false;
  }
  pb::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                              static_cast<int>(bytes.size()));
  in.PushLimit(static_cast<int>(bytes.size()));
  std::string scratch;
  return check_message(type, &in, 0, &scratch, why);
}

std::string only_field(std::string_view bytes, int number) {
  pb::io::CodedInputStream in(reinterpret_cast<const uint8_t*>(bytes.data()),
                              static_cast<int>(bytes.size()));
  std::string out;
  for (;;) {
    int begin = in.CurrentPosition();
    uint32_t tag = in.ReadTag();
    if (tag == 0 || !WireFormatLite::SkipField(&in, tag)) break;
    if (WireFormatLite::GetTagFieldNumber(tag) == number) {
      out.append(bytes.substr(begin, in.CurrentPosition() - begin));
    }
  }
  return out;
}

}  // namespace meridian::transcode
