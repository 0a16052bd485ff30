#pragma once
// A blocking HTTP(S) GET for the few control-plane fetches the proxy part makes (a JWT issuer's
// JWKS). Never called on a worker thread.

#include <chrono>
#include <string>
#include <string_view>

namespace meridian::node {

struct http_get_options {
  std::chrono::milliseconds connect_timeout{3000};
  std::chrono::milliseconds timeout{5000};  // the whole exchange after connecting
  size_t max_body_bytes = 1 << 20;
};

// Fetches url (http:// or https://; https verifies the server's certificate against the
// system's trust store and its name against the URL's host). Returns true and sets *body on a
// 200 answer; otherwise returns false and sets *error to a reason an operator can act on.
bool http_get(std::string_view url, std::string* body, std::string* error,
              const http_get_options& options = {});

}  // namespace meridian::node
