#pragma once
// What a loaded transcoder holds: the descriptor pool built from the descriptor set, the
// dynamic message factory over it, a JSON type resolver, and the bindings. Immutable after
// transcoder::from_bytes returns, so every lookup below is safe from any thread.

#include <google/protobuf/descriptor.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/util/type_resolver.h>

#include <memory>
#include <string>
#include <vector>

#include "path_template.h"

namespace meridian::transcode {

// A field reached from a message by a dotted path: the fields walked, outermost first.
using field_chain = std::vector<const google::protobuf::FieldDescriptor*>;

enum class body_kind : uint8_t { none, whole, field };

// One HTTP route to one gRPC method (a method has one per HttpRule and additional binding).
struct binding {
  std::string http_method;    // "GET", or a custom pattern's kind
  std::string template_text;  // as written, for errors
  path_template tmpl;
  std::vector<field_chain> variable_fields;  // one per tmpl.variables, in order
  const google::protobuf::MethodDescriptor* method = nullptr;
  std::string grpc_path;  // "/pkg.Service/Method"
  const google::protobuf::Message* request_prototype = nullptr;
  std::string request_type_url;
  std::string response_type_url;
  body_kind body = body_kind::none;
  const google::protobuf::FieldDescriptor* body_field = nullptr;      // for body_kind::field
  const google::protobuf::FieldDescriptor* response_field = nullptr;  // response_body, or null
};

struct transcoder_state {
  // Declared in dependency order: members are destroyed bottom-up, prototypes before the pool.
  google::protobuf::DescriptorPool pool;
  google::protobuf::DynamicMessageFactory factory{&pool};
  std::unique_ptr<google::protobuf::util::TypeResolver> resolver;
  std::vector<binding> bindings;
};

// Returns the type URL the JSON converter's resolver knows a message type by.
std::string type_url(const google::protobuf::Descriptor* type);

}  // namespace meridian::transcode
