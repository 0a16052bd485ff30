#include "meridian/admin/admin_client.h"

#include <httplib.h>

#include <algorithm>

namespace meridian::node {

admin_response admin_call(const admin_endpoint& endpoint, const std::string& method,
                          const std::string& path, const std::string& body) {
  admin_response out;
  std::unique_ptr<httplib::Client> client;
  try {
    if (!endpoint.cert_file.empty()) {
      client =
          std::make_unique<httplib::Client>(endpoint.url, endpoint.cert_file, endpoint.key_file);
    } else {
      client = std::make_unique<httplib::Client>(endpoint.url);
    }
  } catch (const std::exception& e) {
    out.error = std::string("bad admin URL ") + endpoint.url + ": " + e.what();
    return out;
  }
  if (!client->is_valid()) {
    out.error = "bad admin URL " + endpoint.url;
    return out;
  }
  const auto connect_ms = std::min(endpoint.timeout_ms, 5000);
  client->set_connection_timeout(connect_ms / 1000, (connect_ms % 1000) * 1000);
  client->set_read_timeout(endpoint.timeout_ms / 1000, (endpoint.timeout_ms % 1000) * 1000);
  client->set_write_timeout(endpoint.timeout_ms / 1000, (endpoint.timeout_ms % 1000) * 1000);
  if (!endpoint.ca_file.empty()) client->set_ca_cert_path(endpoint.ca_file.c_str());
  client->enable_server_certificate_verification(true);
  httplib::Headers headers;
  if (!endpoint.token.empty()) headers.emplace("Authorization", "Bearer " + endpoint.token);
  if (method != "GET" && method != "PUT" && method != "POST" && method != "DELETE") {
    out.error = "unsupported method " + method;
    return out;
  }
  httplib::Result r = method == "GET"    ? client->Get(path, headers)
                      : method == "PUT"  ? client->Put(path, headers, body, "application/json")
                      : method == "POST" ? client->Post(path, headers, body, "application/json")
                                         : client->Delete(path, headers);
  if (!r) {
    out.error = "cannot reach " + endpoint.url + ": " + httplib::to_string(r.error());
    return out;
  }
  out.status = r->status;
  out.body = r->body;
  return out;
}

}  // namespace meridian::node
