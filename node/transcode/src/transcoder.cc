// The data path of a loaded transcoder: match, build_request, response_to_json. Nothing here
// throws or logs; every failure is a return value and an error string.

#include "meridian/transcode/transcoder.h"

#include <google/protobuf/struct.pb.h>
#include <google/protobuf/util/json_util.h>

#include <algorithm>

#include "field_values.h"
#include "transcoder_state.h"
#include "wire_check.h"

namespace meridian::transcode {
namespace {

namespace pb = google::protobuf;

std::string status_text(const pb::util::Status& status) {
  return std::string(status.message().data(), status.message().size());
}

bool is_blank(std::string_view text) {
  return std::all_of(text.begin(), text.end(),
                     [](char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; });
}

// Returns true when template a is more specific than b (both matched the same request).
bool more_specific(const path_template& a, const path_template& b) {
  auto kind_less = [](const path_segment& x, const path_segment& y) { return x.kind < y.kind; };
  if (std::lexicographical_compare(a.segments.begin(), a.segments.end(), b.segments.begin(),
                                   b.segments.end(), kind_less)) {
    return true;
  }
  if (std::lexicographical_compare(b.segments.begin(), b.segments.end(), a.segments.begin(),
                                   a.segments.end(), kind_less)) {
    return false;
  }
  return !a.verb.empty() && b.verb.empty();
}

std::string chain_name(const field_chain& chain) {
  std::string out;
  for (const pb::FieldDescriptor* f : chain) {
    if (!out.empty()) out += '.';
    out += f->name();
  }
  return out;
}

// Finds a field by its proto name or its JSON name.
const pb::FieldDescriptor* find_field(const pb::Descriptor* type, const std::string& name) {
  if (const pb::FieldDescriptor* f = type->FindFieldByName(name)) return f;
  for (int i = 0; i < type->field_count(); ++i) {
    if (type->field(i)->json_name() == name) return type->field(i);
  }
  return nullptr;
}

// Resolves a query parameter's dotted name: singular message fields down to a scalar or enum
// field, repeated or not.
bool resolve_query_name(const pb::Descriptor* type, std::string_view name, field_chain* chain,
                        std::string* error) {
  size_t begin = 0;
  for (;;) {
    size_t dot = name.find('.', begin);
    std::string part(name.substr(begin, dot == std::string_view::npos ? dot : dot - begin));
    const pb::FieldDescriptor* f = find_field(type, part);
    if (f == nullptr) {
      *error = "query parameter \"" + std::string(name) + "\": " + type->full_name() +
               " has no field \"" + part + "\"";
      return false;
    }
    chain->push_back(f);
    bool message = f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE;
    if (dot == std::string_view::npos) {
      if (message) {
        *error = "query parameter \"" + std::string(name) + "\": " + f->full_name() +
                 (f->is_map() ? " is a map" : " is a message: name its fields");
        return false;
      }
      return true;
    }
    if (!message || f->is_repeated()) {
      *error = "query parameter \"" + std::string(name) + "\": " + f->full_name() +
               (f->is_repeated() ? " is repeated" : " is not a message");
      return false;
    }
    type = f->message_type();
    begin = dot + 1;
  }
}

// Returns true when setting `a` and `b` would touch the same data: one is a prefix of the
// other, or they are members of one oneof in the same message.
bool overlaps(const field_chain& a, const field_chain& b) {
  size_t n = std::min(a.size(), b.size());
  if (std::equal(a.begin(), a.begin() + static_cast<std::ptrdiff_t>(n), b.begin())) return true;
  if (a.size() != b.size() || !std::equal(a.begin(), a.end() - 1, b.begin())) return false;
  const pb::OneofDescriptor* oneof = a.back()->real_containing_oneof();
  return oneof != nullptr && oneof == b.back()->real_containing_oneof();
}

// Walks to the message holding the chain's last field, creating the ones between.
pb::Message* parent_of(pb::Message* message, const field_chain& chain,
                       pb::MessageFactory* factory) {
  for (size_t i = 0; i + 1 < chain.size(); ++i) {
    message = message->GetReflection()->MutableMessage(message, chain[i], factory);
  }
  return message;
}

// The JSON of a field at its default value, for a response_body the printer left out.
std::string default_json(const pb::FieldDescriptor* f) {
  if (f->is_map()) return "{}";
  if (f->is_repeated()) return "[]";
  switch (f->cpp_type()) {
    case pb::FieldDescriptor::CPPTYPE_INT64:
    case pb::FieldDescriptor::CPPTYPE_UINT64:
      return "\"0\"";  // 64-bit integers are strings in proto3 JSON
    case pb::FieldDescriptor::CPPTYPE_BOOL:
      return "false";
    case pb::FieldDescriptor::CPPTYPE_STRING:
      return "\"\"";
    case pb::FieldDescriptor::CPPTYPE_ENUM:
      return "\"" + f->default_value_enum()->name() + "\"";
    case pb::FieldDescriptor::CPPTYPE_MESSAGE:
      return "{}";
    default:
      return "0";
  }
}

}  // namespace

std::optional<binding_match> transcoder::match(std::string_view method,
                                               std::string_view path) const {
  if (path.empty() || path[0] != '/') return std::nullopt;
  std::vector<std::string_view> raw;
  for (size_t begin = 1;;) {
    size_t slash = path.find('/', begin);
    raw.push_back(path.substr(begin, slash == std::string_view::npos ? slash : slash - begin));
    if (slash == std::string_view::npos) break;
    begin = slash + 1;
  }
  std::vector<std::string> decoded(raw.size());
  for (size_t i = 0; i < raw.size(); ++i) {
    if (!decode_segment(raw[i], false, &decoded[i])) return std::nullopt;
  }
  // The same path with a verb taken off its last segment, for bindings that declare one.
  std::string_view verb;
  std::vector<std::string> without_verb;
  size_t colon = raw.back().rfind(':');
  if (colon != std::string_view::npos) {
    verb = raw.back().substr(colon + 1);
    without_verb = decoded;
    if (!decode_segment(raw.back().substr(0, colon), false, &without_verb.back())) {
      return std::nullopt;
    }
  }

  const std::vector<binding>& bindings = state_->bindings;
  const binding* best = nullptr;
  for (const binding& b : bindings) {
    if (b.http_method != method) continue;
    if (!b.tmpl.verb.empty() && b.tmpl.verb != verb) continue;
    if (!segments_match(b.tmpl, b.tmpl.verb.empty() ? decoded : without_verb)) continue;
    if (best == nullptr || more_specific(b.tmpl, best->tmpl)) best = &b;
  }
  if (best == nullptr) return std::nullopt;

  binding_match m;
  m.binding = static_cast<uint32_t>(best - bindings.data());
  const std::vector<std::string>& segments = best->tmpl.verb.empty() ? decoded : without_verb;
  if (!best->tmpl.verb.empty()) raw.back() = raw.back().substr(0, colon);
  std::string piece;
  for (const path_variable& v : best->tmpl.variables) {
    if (v.single) {
      m.values += segments[v.begin];
    } else {
      // Multi-segment: each segment decoded but "%2F", joined by '/'. A trailing "**" takes
      // every segment left.
      bool rest = best->tmpl.segments[v.end - 1].kind == segment_kind::rest;
      size_t end = rest ? raw.size() : v.end;
      for (size_t i = v.begin; i < end; ++i) {
        if (i > v.begin) m.values += '/';
        decode_segment(raw[i], true, &piece);  // cannot fail: decoded fully above
        m.values += piece;
      }
    }
    m.ends[m.variable_count++] = static_cast<uint32_t>(m.values.size());
  }
  return m;
}

std::string_view transcoder::grpc_path(const binding_match& m) const {
  return state_->bindings[m.binding].grpc_path;
}

std::string_view transcoder::variable_field(const binding_match& m, size_t i) const {
  return state_->bindings[m.binding].tmpl.variables[i].field_path;
}

bool transcoder::server_streaming(const binding_match& m) const {
  return state_->bindings[m.binding].method->server_streaming();
}

bool transcoder::client_streaming(const binding_match& m) const {
  return state_->bindings[m.binding].method->client_streaming();
}

bool transcoder::build_request(const binding_match& m, std::string_view query,
                               std::string_view json_body, std::string* grpc_frame_out,
                               std::string* error) const {
  const binding& b = state_->bindings[m.binding];
  if (b.method->client_streaming()) {
    *error = b.method->full_name() + " is client-streaming: it cannot be called over HTTP/JSON";
    return false;
  }
  std::unique_ptr<pb::Message> request(b.request_prototype->New());
  const pb::Descriptor* type = b.method->input_type();
  pb::util::JsonParseOptions json_options;
  json_options.ignore_unknown_fields = false;

  // 1. The body.
  if (!is_blank(json_body)) {
    std::string binary;
    if (b.body == body_kind::none) {
      *error = b.http_method + " " + b.template_text + " takes no request body";
      return false;
    }
    if (b.body == body_kind::whole) {
      auto status = pb::util::JsonToBinaryString(state_->resolver.get(), b.request_type_url,
                                                 json_body, &binary, json_options);
      if (!status.ok()) {
        *error = "request body: " + status_text(status);
        return false;
      }
      if (!request->ParsePartialFromString(binary)) {
        *error = "request body: does not convert to " + type->full_name();
        return false;
      }
    } else if (b.body_field->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE &&
               !b.body_field->is_repeated()) {
      const pb::Descriptor* field_type = b.body_field->message_type();
      auto status = pb::util::JsonToBinaryString(state_->resolver.get(), type_url(field_type),
                                                 json_body, &binary, json_options);
      if (!status.ok()) {
        *error = "request body (" + field_type->full_name() + "): " + status_text(status);
        return false;
      }
      pb::Message* target =
          request->GetReflection()->MutableMessage(request.get(), b.body_field, &state_->factory);
      if (!target->ParsePartialFromString(binary)) {
        *error = "request body: does not convert to " + field_type->full_name();
        return false;
      }
    } else {
      // A scalar, repeated or map field: the body is its JSON value. Checked to be exactly one
      // JSON value first, so that wrapping it cannot smuggle in other fields.
      pb::Value value;
      auto status = pb::util::JsonStringToMessage(json_body, &value);
      if (!status.ok()) {
        *error = "request body: " + status_text(status);
        return false;
      }
      std::string wrapped = "{\"" + b.body_field->json_name() + "\":";
      wrapped.append(json_body.data(), json_body.size());
      wrapped += '}';
      status = pb::util::JsonToBinaryString(state_->resolver.get(), b.request_type_url, wrapped,
                                            &binary, json_options);
      if (!status.ok()) {
        *error = "request body (" + b.body_field->name() + "): " + status_text(status);
        return false;
      }
      if (!request->ParsePartialFromString(binary)) {
        *error = "request body: does not convert to " + type->full_name();
        return false;
      }
    }
  }

  // 2. The query string.
  std::vector<field_chain> set_by_query;
  field_chain body_chain;
  if (b.body == body_kind::field) body_chain.push_back(b.body_field);
  std::string name;
  std::string value;
  std::string why;
  for (size_t begin = 0; begin <= query.size();) {
    size_t amp = query.find('&', begin);
    std::string_view param =
        query.substr(begin, amp == std::string_view::npos ? std::string_view::npos : amp - begin);
    begin = amp == std::string_view::npos ? query.size() + 1 : amp + 1;
    if (param.empty()) continue;
    size_t eq = param.find('=');
    std::string_view raw_name = param.substr(0, eq);
    std::string_view raw_value = eq == std::string_view::npos ? "" : param.substr(eq + 1);
    if (!decode_query_component(raw_name, &name) || !decode_query_component(raw_value, &value)) {
      *error = "query parameter \"" + std::string(raw_name) + "\": malformed percent-encoding";
      return false;
    }
    if (name.empty()) {
      *error = "query parameter without a name";
      return false;
    }
    if (b.body == body_kind::whole) {
      *error = "query parameter \"" + name + "\": " + b.http_method + " " + b.template_text +
               " takes every field from the body";
      return false;
    }
    field_chain chain;
    if (!resolve_query_name(type, name, &chain, error)) return false;
    for (const field_chain& bound : b.variable_fields) {
      if (overlaps(chain, bound)) {
        *error = "query parameter \"" + name + "\": " + chain_name(bound) + " is bound by the path";
        return false;
      }
    }
    if (!body_chain.empty() && overlaps(chain, body_chain)) {
      *error =
          "query parameter \"" + name + "\": " + chain_name(body_chain) + " comes from the body";
      return false;
    }
    const pb::FieldDescriptor* leaf = chain.back();
    if (!leaf->is_repeated()) {
      for (const field_chain& earlier : set_by_query) {
        if (overlaps(chain, earlier)) {
          *error = "query parameter \"" + name + "\": " +
                   (earlier == chain ? "given more than once"
                                     : "in one oneof with " + chain_name(earlier));
          return false;
        }
      }
      set_by_query.push_back(chain);
    }
    pb::Message* parent = parent_of(request.get(), chain, &state_->factory);
    if (!set_field_from_text(parent, leaf, value, &why)) {
      *error = "query parameter \"" + name + "\": " + why;
      return false;
    }
  }

  // 3. The path variables: last, so that the URL wins over anything the body said.
  for (size_t i = 0; i < b.variable_fields.size() && i < m.variable_count; ++i) {
    const field_chain& chain = b.variable_fields[i];
    pb::Message* parent = parent_of(request.get(), chain, &state_->factory);
    if (!set_field_from_text(parent, chain.back(), m.value(i), &why)) {
      *error = "path variable {" + b.tmpl.variables[i].field_path + "}: " + why;
      return false;
    }
  }

  if (!request->IsInitialized()) {
    *error = "missing required fields: " + request->InitializationErrorString();
    return false;
  }
  size_t size = request->ByteSizeLong();
  if (size > 0x7fffffff) {
    *error = "the request message is larger than 2 GiB";
    return false;
  }
  std::string serialized;
  request->SerializePartialToString(&serialized);
  *grpc_frame_out = grpc_frame(serialized);
  return true;
}

bool transcoder::response_to_json(const binding_match& m, std::string_view message,
                                  std::string* json, std::string* error) const {
  const binding& b = state_->bindings[m.binding];
  json->clear();
  std::string why;
  if (!check_wire(b.method->output_type(), message, &why)) {
    *error = "response: " + why;
    return false;
  }
  pb::util::JsonPrintOptions options;  // lowerCamelCase names, defaults omitted
  const pb::FieldDescriptor* f = b.response_field;
  std::string printed;
  std::string bytes = f == nullptr ? std::string(message) : only_field(message, f->number());
  auto status = pb::util::BinaryToJsonString(state_->resolver.get(), b.response_type_url, bytes,
                                             f == nullptr ? json : &printed, options);
  if (!status.ok()) {
    *error = "response: " + status_text(status);
    return false;
  }
  if (f == nullptr) return true;
  // The message with only the response_body field printed as {"name":VALUE}: take VALUE. The
  // printer leaves the field out at its default; then the default is spelled here.
  if (printed == "{}") {
    *json = default_json(f);
    return true;
  }
  const std::string head = "{\"" + f->json_name() + "\":";
  if (printed.size() < head.size() + 1 || printed.compare(0, head.size(), head) != 0 ||
      printed.back() != '}') {
    *error = "response: unexpected JSON for " + f->full_name();
    return false;
  }
  json->assign(printed, head.size(), printed.size() - head.size() - 1);
  return true;
}

}  // namespace meridian::transcode
