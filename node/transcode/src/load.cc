// transcoder::load and from_bytes: the descriptor set to a pool, the google.api.http options to
// bindings.
//
// The google.api.http option is read by its field number from the wire bytes of each method's
// options, not through a generated HttpRule class or the pool's extension: this works whether
// or not anything in the process links a generated google/api/http.pb.cc (two copies of which
// would abort at start-up), and whether or not the set carries google/api/http.proto.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>
#include <google/protobuf/unknown_field_set.h>
#include <google/protobuf/util/type_resolver_util.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <set>

#include "meridian/transcode/transcoder.h"
#include "transcoder_state.h"

namespace meridian::transcode {
namespace {

namespace pb = google::protobuf;

constexpr int k_http_extension = 72295728;  // google.api.http on MethodOptions
constexpr size_t k_max_descriptor_set = 64 << 20;

// What a google.api.HttpRule says, read off the wire.
struct http_rule {
  std::string method;
  std::string path;
  std::string body;
  std::string response_body;
  std::vector<http_rule> additional_bindings;
};

// HttpRule's field numbers (google/api/http.proto).
enum rule_field : int {
  rule_get = 2,
  rule_put = 3,
  rule_post = 4,
  rule_delete = 5,
  rule_patch = 6,
  rule_body = 7,
  rule_custom = 8,
  rule_additional_bindings = 11,
  rule_response_body = 12,
};

// The HTTP methods of the pattern fields get..patch, in field-number order.
constexpr const char* k_pattern_methods[] = {"GET", "PUT", "POST", "DELETE", "PATCH"};

// Parses an HttpRule's bytes; nested additional_bindings are refused, as http.proto says.
bool parse_http_rule(const std::string& bytes, bool nested, http_rule* rule, std::string* error) {
  pb::UnknownFieldSet fields;
  if (!fields.ParseFromString(bytes)) {
    *error = "the google.api.http option is not a valid HttpRule";
    return false;
  }
  for (int i = 0; i < fields.field_count(); ++i) {
    const pb::UnknownField& f = fields.field(i);
    if (f.number() == 1) continue;  // selector: for service config only
    bool known = f.number() >= rule_get && f.number() <= rule_response_body && f.number() != 9 &&
                 f.number() != 10;
    if (!known) continue;  // a field this reader predates: ignore, as protobuf would
    if (f.type() != pb::UnknownField::TYPE_LENGTH_DELIMITED) {
      *error = "the google.api.http option is not a valid HttpRule (field " +
               std::to_string(f.number()) + ")";
      return false;
    }
    const std::string& value = f.length_delimited();
    if (f.number() >= rule_get && f.number() <= rule_patch) {
      rule->method = k_pattern_methods[f.number() - rule_get];
      rule->path = value;
      continue;
    }
    switch (f.number()) {
      case rule_body:
        rule->body = value;
        break;
      case rule_response_body:
        rule->response_body = value;
        break;
      case rule_custom: {
        pb::UnknownFieldSet custom;
        if (!custom.ParseFromString(value)) {
          *error = "the google.api.http custom pattern is malformed";
          return false;
        }
        rule->method.clear();
        rule->path.clear();
        for (int k = 0; k < custom.field_count(); ++k) {
          const pb::UnknownField& c = custom.field(k);
          if (c.type() != pb::UnknownField::TYPE_LENGTH_DELIMITED) continue;
          if (c.number() == 1) rule->method = c.length_delimited();
          if (c.number() == 2) rule->path = c.length_delimited();
        }
        if (rule->method.empty()) {
          *error = "a google.api.http custom pattern has no kind";
          return false;
        }
        break;
      }
      case rule_additional_bindings: {
        if (nested) {
          *error = "additional_bindings may not have additional_bindings";
          return false;
        }
        http_rule extra;
        if (!parse_http_rule(value, true, &extra, error)) return false;
        rule->additional_bindings.push_back(std::move(extra));
        break;
      }
    }
  }
  if (rule->path.empty()) {
    *error = "the google.api.http option names no HTTP method and path";
    return false;
  }
  return true;
}

// Returns the google.api.http option's bytes in `options` (occurrences concatenated: on the
// wire that is a merge), or an empty string when it has none.
std::string http_option_bytes(const pb::MethodOptions& options) {
  pb::UnknownFieldSet fields;
  // Serializing covers both cases: the option as an unknown field (the usual one) and as an
  // extension known to the generated pool.
  if (!fields.ParseFromString(options.SerializeAsString())) return {};
  std::string bytes;
  for (int i = 0; i < fields.field_count(); ++i) {
    const pb::UnknownField& f = fields.field(i);
    if (f.number() == k_http_extension && f.type() == pb::UnknownField::TYPE_LENGTH_DELIMITED) {
      bytes += f.length_delimited();
    }
  }
  return bytes;
}

class first_error_collector : public pb::DescriptorPool::ErrorCollector {
 public:
  void AddError(const std::string& filename, const std::string& element_name, const pb::Message*,
                ErrorLocation, const std::string& message) override {
    if (error.empty()) error = filename + ": " + element_name + ": " + message;
  }
  std::string error;
};

// Adds a file libprotobuf itself carries (google/protobuf/descriptor.proto, the well-known
// types) to the pool, after its own imports. False when the runtime does not know it.
bool add_runtime_file(const std::string& name, pb::DescriptorPool* pool) {
  if (pool->FindFileByName(name) != nullptr) return true;
  const pb::FileDescriptor* known = pb::DescriptorPool::generated_pool()->FindFileByName(name);
  if (known == nullptr) return false;
  for (int i = 0; i < known->dependency_count(); ++i) {
    if (!add_runtime_file(known->dependency(i)->name(), pool)) return false;
  }
  pb::FileDescriptorProto proto;
  known->CopyTo(&proto);
  first_error_collector collector;
  return pool->BuildFileCollectingErrors(proto, &collector) != nullptr;
}

// Builds every file of the set into the pool, each after its dependencies. An import the set
// leaves out is taken from libprotobuf when it carries the file (compact_descriptor_set drops
// those).
bool build_pool(const pb::FileDescriptorSet& set, pb::DescriptorPool* pool, std::string* error) {
  std::map<std::string, const pb::FileDescriptorProto*> pending;
  for (const pb::FileDescriptorProto& file : set.file()) {
    if (!pending.emplace(file.name(), &file).second) {
      *error = "file " + file.name() + " appears twice";
      return false;
    }
  }
  while (!pending.empty()) {
    bool progress = false;
    for (auto it = pending.begin(); it != pending.end();) {
      bool ready = true;
      for (const std::string& dep : it->second->dependency()) {
        if (pending.count(dep) > 0) ready = false;
        if (pending.count(dep) == 0 && pool->FindFileByName(dep) == nullptr &&
            !add_runtime_file(dep, pool)) {
          *error = it->first + " imports " + dep +
                   ", which the set lacks (protoc needs --include_imports)";
          return false;
        }
      }
      if (!ready) {
        ++it;
        continue;
      }
      first_error_collector collector;
      if (pool->BuildFileCollectingErrors(*it->second, &collector) == nullptr) {
        *error = collector.error;
        return false;
      }
      it = pending.erase(it);
      progress = true;
    }
    if (!progress) {
      *error = "the imports of " + pending.begin()->first + " form a cycle";
      return false;
    }
  }
  return true;
}

// Resolves a variable's field path in `type`: singular message fields down to a singular
// scalar or enum, as http.proto requires of path variables.
bool resolve_variable(const pb::Descriptor* type, const std::string& path, field_chain* chain,
                      std::string* error) {
  size_t begin = 0;
  for (;;) {
    size_t dot = path.find('.', begin);
    std::string name = path.substr(begin, dot == std::string::npos ? dot : dot - begin);
    const pb::FieldDescriptor* f = type == nullptr ? nullptr : type->FindFieldByName(name);
    if (f == nullptr) {
      *error = "variable {" + path + "}: no field " + name + " in " +
               (type == nullptr ? std::string("a scalar") : type->full_name());
      return false;
    }
    if (f->is_repeated()) {
      *error = "variable {" + path + "}: " + f->full_name() + " is repeated";
      return false;
    }
    chain->push_back(f);
    if (dot == std::string::npos) {
      if (f->cpp_type() == pb::FieldDescriptor::CPPTYPE_MESSAGE) {
        *error = "variable {" + path + "}: " + f->full_name() + " is a message, not a scalar";
        return false;
      }
      return true;
    }
    type = f->message_type();
    begin = dot + 1;
  }
}

bool make_binding(transcoder_state& state, const pb::MethodDescriptor* method,
                  const http_rule& rule, binding* b, std::string* error) {
  b->http_method = rule.method;
  b->template_text = rule.path;
  b->method = method;
  auto tmpl = parse_path_template(rule.path, error);
  if (!tmpl) return false;
  b->tmpl = std::move(*tmpl);
  if (b->tmpl.variables.size() > binding_match::k_max_variables) {
    *error = "path template \"" + rule.path + "\" has more than " +
             std::to_string(binding_match::k_max_variables) + " variables";
    return false;
  }
  const pb::Descriptor* input = method->input_type();
  const pb::Descriptor* output = method->output_type();
  for (const path_variable& v : b->tmpl.variables) {
    field_chain chain;
    if (!resolve_variable(input, v.field_path, &chain, error)) return false;
    for (const field_chain& other : b->variable_fields) {
      if (other == chain) {
        *error = "path template \"" + rule.path + "\" binds " + v.field_path + " twice";
        return false;
      }
    }
    b->variable_fields.push_back(std::move(chain));
  }
  if (rule.body == "*") {
    b->body = body_kind::whole;
  } else if (!rule.body.empty()) {
    b->body = body_kind::field;
    b->body_field = input->FindFieldByName(rule.body);
    if (b->body_field == nullptr) {
      *error = "body \"" + rule.body + "\" is no field of " + input->full_name();
      return false;
    }
  }
  if (!rule.response_body.empty()) {
    b->response_field = output->FindFieldByName(rule.response_body);
    if (b->response_field == nullptr) {
      *error = "response_body \"" + rule.response_body + "\" is no field of " + output->full_name();
      return false;
    }
  }
  b->grpc_path = "/" + method->service()->full_name() + "/" + method->name();
  b->request_prototype = state.factory.GetPrototype(input);
  b->request_type_url = type_url(input);
  b->response_type_url = type_url(output);
  return true;
}

bool read_file(const std::string& path, std::string* bytes, std::string* error) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *error = "descriptor set " + path + ": cannot open: " + std::strerror(errno);
    return false;
  }
  struct stat st {};
  bool ok = ::fstat(fd, &st) == 0;
  if (ok && S_ISREG(st.st_mode) && static_cast<size_t>(st.st_size) > k_max_descriptor_set) {
    *error = "descriptor set " + path + ": larger than " +
             std::to_string(k_max_descriptor_set >> 20) + " MiB";
    ::close(fd);
    return false;
  }
  char chunk[65536];
  while (ok) {
    ssize_t n = ::read(fd, chunk, sizeof chunk);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      ok = n == 0;
      break;
    }
    bytes->append(chunk, static_cast<size_t>(n));
    if (bytes->size() > k_max_descriptor_set) {
      ::close(fd);
      *error = "descriptor set " + path + ": larger than " +
               std::to_string(k_max_descriptor_set >> 20) + " MiB";
      return false;
    }
  }
  if (!ok) *error = "descriptor set " + path + ": cannot read: " + std::strerror(errno);
  ::close(fd);
  return ok;
}

}  // namespace

std::string type_url(const pb::Descriptor* type) {
  return "type.googleapis.com/" + type->full_name();
}

transcoder::transcoder(std::unique_ptr<transcoder_state> state) : state_(std::move(state)) {}
transcoder::~transcoder() = default;

std::unique_ptr<transcoder> transcoder::load(const std::string& descriptor_set_path,
                                             const std::vector<std::string>& services,
                                             std::string* error) {
  std::string bytes;
  if (!read_file(descriptor_set_path, &bytes, error)) return nullptr;
  return from_bytes(bytes, services, descriptor_set_path, error);
}

bool compact_descriptor_set(std::string_view descriptor_set, std::string* out, std::string* error) {
  pb::FileDescriptorSet set;
  if (descriptor_set.size() > k_max_descriptor_set ||
      !set.ParsePartialFromArray(descriptor_set.data(), static_cast<int>(descriptor_set.size())) ||
      !set.IsInitialized() || set.file_size() == 0) {
    *error = "not a protobuf FileDescriptorSet (protoc --include_imports --descriptor_set_out=...)";
    return false;
  }
  pb::FileDescriptorSet kept;
  for (const pb::FileDescriptorProto& file : set.file()) {
    if (pb::DescriptorPool::generated_pool()->FindFileByName(file.name()) != nullptr) continue;
    *kept.add_file() = file;
  }
  // Deterministic, so that the same input gives the same document on every node.
  out->clear();
  pb::io::StringOutputStream stream(out);
  pb::io::CodedOutputStream coded(&stream);
  coded.SetSerializationDeterministic(true);
  kept.SerializeToCodedStream(&coded);
  return true;
}

std::unique_ptr<transcoder> transcoder::from_bytes(std::string_view descriptor_set,
                                                   const std::vector<std::string>& services,
                                                   std::string_view origin, std::string* error) {
  const std::string prefix = "descriptor set " + std::string(origin) + ": ";
  auto fail = [&](const std::string& what) {
    *error = prefix + what;
    return nullptr;
  };
  if (descriptor_set.size() > k_max_descriptor_set) return fail("too large");
  pb::FileDescriptorSet set;
  // ParsePartial + IsInitialized: the checked parse would log on missing required fields.
  if (!set.ParsePartialFromArray(descriptor_set.data(), static_cast<int>(descriptor_set.size())) ||
      !set.IsInitialized() || set.file_size() == 0) {
    return fail(
        "not a protobuf FileDescriptorSet (protoc --include_imports --descriptor_set_out=...)");
  }
  auto state = std::make_unique<transcoder_state>();
  std::string why;
  if (!build_pool(set, &state->pool, &why)) return fail(why);
  state->resolver.reset(
      pb::util::NewTypeResolverForDescriptorPool("type.googleapis.com", &state->pool));

  // Method full name -> its google.api.http option bytes.
  std::map<std::string, std::string> rules;
  for (const pb::FileDescriptorProto& file : set.file()) {
    for (const pb::ServiceDescriptorProto& service : file.service()) {
      std::string service_name =
          file.package().empty() ? service.name() : file.package() + "." + service.name();
      for (const pb::MethodDescriptorProto& method : service.method()) {
        std::string bytes = http_option_bytes(method.options());
        if (!bytes.empty()) rules[service_name + "." + method.name()] = std::move(bytes);
      }
    }
  }
  auto annotated = [&](const pb::ServiceDescriptor* s) {
    for (int i = 0; i < s->method_count(); ++i) {
      if (rules.count(s->method(i)->full_name()) > 0) return true;
    }
    return false;
  };

  std::vector<const pb::ServiceDescriptor*> selected;
  if (services.empty()) {
    for (const pb::FileDescriptorProto& file : set.file()) {
      const pb::FileDescriptor* fd = state->pool.FindFileByName(file.name());
      for (int i = 0; fd != nullptr && i < fd->service_count(); ++i) {
        if (annotated(fd->service(i))) selected.push_back(fd->service(i));
      }
    }
    if (selected.empty()) return fail("no service has google.api.http annotations");
  } else {
    std::set<std::string> seen;
    for (const std::string& name : services) {
      if (!seen.insert(name).second) continue;
      const pb::ServiceDescriptor* s = state->pool.FindServiceByName(name);
      if (s == nullptr) return fail("unknown service " + name);
      if (!annotated(s)) return fail("service " + name + " has no google.api.http annotations");
      selected.push_back(s);
    }
  }

  std::map<std::string, std::string> routes;  // "GET /v1/shelves/*" -> method, for duplicates
  for (const pb::ServiceDescriptor* s : selected) {
    for (int i = 0; i < s->method_count(); ++i) {
      const pb::MethodDescriptor* m = s->method(i);
      auto it = rules.find(m->full_name());
      if (it == rules.end()) continue;
      http_rule rule;
      if (!parse_http_rule(it->second, false, &rule, &why))
        return fail(m->full_name() + ": " + why);
      std::vector<const http_rule*> all{&rule};
      for (const http_rule& extra : rule.additional_bindings) all.push_back(&extra);
      for (const http_rule* r : all) {
        binding b;
        if (!make_binding(*state, m, *r, &b, &why)) return fail(m->full_name() + ": " + why);
        std::string route = b.http_method + " " + b.tmpl.canonical();
        auto [at, fresh] = routes.emplace(route, m->full_name());
        if (!fresh) {
          return fail(m->full_name() + ": " + b.http_method + " " + b.template_text +
                      " is already bound to " + at->second);
        }
        state->bindings.push_back(std::move(b));
      }
    }
  }
  return std::make_unique<transcoder>(std::move(state));
}

}  // namespace meridian::transcode
