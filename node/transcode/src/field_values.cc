#include "field_values.h"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <limits>

namespace meridian::transcode {
namespace {

using google::protobuf::EnumDescriptor;
using google::protobuf::EnumValueDescriptor;
using google::protobuf::FieldDescriptor;
using google::protobuf::FileDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

template <typename T>
bool parse_integer(std::string_view text, T* value) {
  if (text.empty()) return false;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *value);
  return ec == std::errc() && end == text.data() + text.size();
}

template <typename T>
bool parse_floating(std::string_view text, T* value) {
  if (text == "NaN") {
    *value = std::numeric_limits<T>::quiet_NaN();
    return true;
  }
  if (text == "Infinity" || text == "-Infinity") {
    *value =
        text[0] == '-' ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::infinity();
    return true;
  }
  if (text.empty()) return false;
  // from_chars would also take "inf" and "nan"; only JSON's spellings above are meant.
  for (char c : text) {
    if (!((c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E')) {
      return false;
    }
  }
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), *value);
  return ec == std::errc() && end == text.data() + text.size();
}

int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+' || c == '-') return 62;
  if (c == '/' || c == '_') return 63;
  return -1;
}

std::string quoted(std::string_view text) {
  constexpr size_t k_shown = 64;  // errors echo input: keep them short
  std::string out = "\"";
  out += text.substr(0, k_shown);
  if (text.size() > k_shown) out += "...";
  return out + "\"";
}

}  // namespace

bool valid_utf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t n;
    uint32_t cp;
    if ((c & 0xE0) == 0xC0) {
      n = 1;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3;
      cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= text.size()) return false;
    for (size_t k = 1; k <= n; ++k) {
      auto cc = static_cast<unsigned char>(text[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    static constexpr uint32_t k_min[] = {0, 0x80, 0x800, 0x10000};
    if (cp < k_min[n] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += n + 1;
  }
  return true;
}

bool decode_base64(std::string_view text, std::string* out) {
  while (!text.empty() && text.back() == '=') text.remove_suffix(1);
  if (text.size() % 4 == 1) return false;
  out->clear();
  out->reserve(text.size() * 3 / 4);
  uint32_t bits = 0;
  int count = 0;
  for (char c : text) {
    int v = base64_value(c);
    if (v < 0) return false;
    bits = (bits << 6) | static_cast<uint32_t>(v);
    count += 6;
    if (count >= 8) {
      count -= 8;
      out->push_back(static_cast<char>((bits >> count) & 0xFF));
    }
  }
  return true;
}

bool set_field_from_text(Message* message, const FieldDescriptor* field, std::string_view text,
                         std::string* why) {
  const Reflection* r = message->GetReflection();
  bool repeated = field->is_repeated();
  auto fail = [&](const char* type_name) {
    *why = quoted(text) + " is not " + type_name;
    return false;
  };
  switch (field->cpp_type()) {
    case FieldDescriptor::CPPTYPE_INT32: {
      int32_t v;
      if (!parse_integer(text, &v)) return fail("an int32");
      repeated ? r->AddInt32(message, field, v) : r->SetInt32(message, field, v);
      return true;
    }
    case FieldDescriptor::CPPTYPE_INT64: {
      int64_t v;
      if (!parse_integer(text, &v)) return fail("an int64");
      repeated ? r->AddInt64(message, field, v) : r->SetInt64(message, field, v);
      return true;
    }
    case FieldDescriptor::CPPTYPE_UINT32: {
      uint32_t v;
      if (!parse_integer(text, &v)) return fail("a uint32");
      repeated ? r->AddUInt32(message, field, v) : r->SetUInt32(message, field, v);
      return true;
    }
    case FieldDescriptor::CPPTYPE_UINT64: {
      uint64_t v;
      if (!parse_integer(text, &v)) return fail("a uint64");
      repeated ? r->AddUInt64(message, field, v) : r->SetUInt64(message, field, v);
      return true;
    }
    case FieldDescriptor::CPPTYPE_DOUBLE: {
      double v;
      if (!parse_floating(text, &v)) return fail("a double");
      repeated ? r->AddDouble(message, field, v) : r->SetDouble(message, field, v);
      return true;
    }
    case FieldDescriptor::CPPTYPE_FLOAT: {
      float v;
      if (!parse_floating(text, &v)) return fail("a float");
      repeated ? r->AddFloat(message, field, v) : r->SetFloat(message, field, v);
      return true;
    }
    case FieldDescriptor::CPPTYPE_BOOL: {
      if (text != "true" && text != "false") return fail("a bool (true or false)");
      bool v = text == "true";
      repeated ? r->AddBool(message, field, v) : r->SetBool(message, field, v);
      return true;
    }
    case FieldDescriptor::CPPTYPE_ENUM: {
      const EnumDescriptor* type = field->enum_type();
      int number;
      if (const EnumValueDescriptor* named = type->FindValueByName(std::string(text))) {
        number = named->number();
      } else if (parse_integer(text, &number)) {
        // proto3 enums are open: any number is a value; proto2's take only declared ones.
        bool open = type->file()->syntax() == FileDescriptor::SYNTAX_PROTO3;
        if (!open && type->FindValueByNumber(number) == nullptr) {
          *why = quoted(text) + " is not a value of " + type->full_name();
          return false;
        }
      } else {
        *why = quoted(text) + " is not a value of " + type->full_name();
        return false;
      }
      repeated ? r->AddEnumValue(message, field, number) : r->SetEnumValue(message, field, number);
      return true;
    }
    case FieldDescriptor::CPPTYPE_STRING: {
      std::string v;
      if (field->type() == FieldDescriptor::TYPE_BYTES) {
        if (!decode_base64(text, &v)) return fail("base64 (bytes)");
      } else {
        if (!valid_utf8(text)) return fail("valid UTF-8");
        v = std::string(text);
      }
      repeated ? r->AddString(message, field, std::move(v))
               : r->SetString(message, field, std::move(v));
      return true;
    }
    case FieldDescriptor::CPPTYPE_MESSAGE:
      break;
  }
  *why = field->full_name() + " is a message: name its fields";
  return false;
}

}  // namespace meridian::transcode
