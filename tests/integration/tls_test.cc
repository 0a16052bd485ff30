// TLS termination on the proxy: certificates chosen by SNI, a default for other names, and a
// reload that changes what new connections get while open ones keep working.
#include <gtest/gtest.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "test_support.h"

namespace meridian::testing {
namespace {

// Runs a shell command; returns its standard output (empty on failure).
std::string run(const std::string& cmd) {
  std::string out;
  std::unique_ptr<FILE, int (*)(FILE*)> p(popen(cmd.c_str(), "r"), pclose);
  if (!p) return out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p.get())) > 0) out.append(buf, n);
  return out;
}

// A client TLS connection to 127.0.0.1:port that sends `sni` and trusts ca.
class tls_client {
 public:
  tls_client(int port, const std::string& sni, const std::string& ca) {
    ctx_ = SSL_CTX_new(TLS_client_method());
    SSL_CTX_load_verify_locations(ctx_, ca.c_str(), nullptr);
    SSL_CTX_set_verify(ctx_, SSL_VERIFY_PEER, nullptr);
    fd_ = connect_to(port);
    ssl_ = SSL_new(ctx_);
    SSL_set_tlsext_host_name(ssl_, sni.c_str());
    SSL_set_fd(ssl_, fd_);
    ok_ = fd_ >= 0 && SSL_connect(ssl_) == 1;
  }
  ~tls_client() {
    if (ssl_) SSL_free(ssl_);
    if (fd_ >= 0) ::close(fd_);
    SSL_CTX_free(ctx_);
  }
  bool ok() const { return ok_; }
  // The subject CN and serial (hex) of the certificate the server sent.
  std::string peer() const {
    X509* cert = SSL_get1_peer_certificate(ssl_);
    if (!cert) return "";
    char cn[256] = {};
    X509_NAME_get_text_by_NID(X509_get_subject_name(cert), NID_commonName, cn, sizeof cn);
    BIGNUM* bn = ASN1_INTEGER_to_BN(X509_get_serialNumber(cert), nullptr);
    char* hex = BN_bn2hex(bn);
    std::string out = std::string(cn) + "/" + hex;
    OPENSSL_free(hex);
    BN_free(bn);
    X509_free(cert);
    return out;
  }
  // Sends a keep-alive GET and returns the response's status (0 on failure).
  int get(const std::string& host) {
    std::string req = "GET /hello HTTP/1.1\r\nHost: " + host + "\r\n\r\n";
    if (SSL_write(ssl_, req.data(), static_cast<int>(req.size())) <= 0) return 0;
    std::string resp;
    char buf[4096];
    while (resp.find("\r\n\r\n") == std::string::npos ||
           resp.size() < resp.find("\r\n\r\n") + 4 + content_length(resp)) {
      int n = SSL_read(ssl_, buf, sizeof buf);
      if (n <= 0) return 0;
      resp.append(buf, static_cast<size_t>(n));
    }
    return resp.size() > 12 ? std::atoi(resp.c_str() + 9) : 0;
  }

 private:
  static size_t content_length(const std::string& head) {
    auto p = head.find("Content-Length: ");
    return p == std::string::npos ? 0 : std::strtoul(head.c_str() + p + 16, nullptr, 10);
  }
  static int connect_to(int port) {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd);
      return -1;
    }
    return fd;
  }
  SSL_CTX* ctx_ = nullptr;
  SSL* ssl_ = nullptr;
  int fd_ = -1;
  bool ok_ = false;
};

class tls_termination : public ::testing::Test {
 protected:
  void SetUp() override {
    if (run("command -v openssl").empty()) GTEST_SKIP() << "openssl is not installed";
    up_.server().Get(".*", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("hello", "text/plain");
    });
    up_.start();
    std::string d = dir_.file("");
    ASSERT_EQ(std::system(("cd " + d +
                           " && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 "
                           "-nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca "
                           ">/dev/null 2>&1")
                              .c_str()),
              0);
    issue("a");
    issue("b");
  }
  // Issues <name>.pem/<name>.key for name.test and *.name.test (or the given subjectAltName),
  // signed by the test CA.
  void issue(const std::string& name, std::string san = "") {
    if (san.empty()) san = "DNS:" + name + ".test,DNS:*." + name + ".test";
    std::string d = dir_.file("");
    std::string cmd = "cd " + d + " && openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 " +
                      "-nodes -keyout " + name + ".key -out " + name + ".csr -subj /CN=" + name +
                      ".test >/dev/null 2>&1 && printf 'subjectAltName=" + san + "\\n' > " + name +
                      ".ext && " + "openssl x509 -req -in " + name +
                      ".csr -CA ca.pem -CAkey ca.key " + "-CAcreateserial -out " + name +
                      ".pem -days 2 -extfile " + name + ".ext >/dev/null 2>&1";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
  }
  std::string yaml() {
    return "tls:\n  listen: 127.0.0.1:0\n  certificates:\n"
           "    - {cert: " +
           dir_.file("a.pem") + ", key: " + dir_.file("a.key") +
           "}\n"
           "    - {cert: " +
           dir_.file("b.pem") + ", key: " + dir_.file("b.key") +
           "}\n"
           "upstreams:\n  - name: u\n    targets: [" +
           up_.address() +
           "]\nroutes:\n  - name: r\n    match: {path_prefix: /}\n    upstream: u\n";
  }
  std::string ca() { return dir_.file("ca.pem"); }

  temp_dir dir_;
  upstream up_;
};

TEST_F(tls_termination, curl_reaches_two_sni_names_with_the_right_certificates) {
  running_node n(yaml());
  ASSERT_TRUE(n.ok());
  ASSERT_GT(n.tls_port(), 0);
  const std::string port = std::to_string(n.tls_port());
  for (const std::string host : {"a.test", "b.test", "x.b.test"}) {
    // curl checks the certificate against the name: a wrong certificate fails, not 200.
    auto out = run("curl -s -o /dev/null -w '%{http_code}' --cacert " + ca() + " --resolve " +
                   host + ":" + port + ":127.0.0.1 https://" + host + ":" + port + "/hello");
    EXPECT_EQ(out, "200") << host;
  }
  tls_client a(n.tls_port(), "a.test", ca()), b(n.tls_port(), "b.test", ca());
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a.peer().substr(0, 7), "a.test/");
  EXPECT_EQ(b.peer().substr(0, 7), "b.test/");
  // No certificate for c.test: the default (the first) answers, so the client's check fails.
  tls_client c(n.tls_port(), "c.test", ca());
  EXPECT_EQ(c.peer().substr(0, 7), "a.test/");
  // The plain listener still speaks plain HTTP.
  EXPECT_EQ(n.client().Get("/hello")->status, 200);
}

TEST_F(tls_termination, a_reload_changes_certificates_for_new_connections_only) {
  running_node n(yaml());
  ASSERT_TRUE(n.ok());
  tls_client before(n.tls_port(), "a.test", ca());
  ASSERT_TRUE(before.ok());
  ASSERT_EQ(before.get("a.test"), 200);
  const std::string old_peer = before.peer();
  issue("a");  // a new certificate (new serial, new key) for a.test in the same files
  std::string error;
  ASSERT_TRUE(n.apply(yaml(), &error)) << error;
  ASSERT_TRUE(eventually(
      [&] {
        tls_client after(n.tls_port(), "a.test", ca());
        return after.ok() && after.peer() != old_peer && after.peer().substr(0, 7) == "a.test/";
      },
      3s));
  EXPECT_EQ(before.get("a.test"), 200) << "the connection opened before the reload goes on";
}

TEST_F(tls_termination, a_certificate_whose_key_does_not_match_is_a_clear_error) {
  std::string bad = yaml();
  auto at = bad.find(dir_.file("a.key"));
  bad.replace(at, dir_.file("a.key").size(), dir_.file("b.key"));
  auto text = "node: {id: t, region: r, data_dir: " + dir_.file("data2") +
              "}\nlisten: {proxy: 127.0.0.1:0, admin: 127.0.0.1:0}\n" + bad;
  auto result = node::parse_config(text, "test.yaml");
  ASSERT_TRUE(result.value);
  node::node n(*result.value);
  std::string error;
  EXPECT_FALSE(n.start(&error));
  EXPECT_NE(error.find("tls.certificates[0]"), std::string::npos) << error;
  EXPECT_NE(error.find("mismatch"), std::string::npos) << error;
}

TEST_F(tls_termination, the_admin_api_over_tls_requires_a_client_certificate_and_the_token) {
  issue("admin", "IP:127.0.0.1");
  issue("operator");
  running_node n("admin: {tls: {cert: " + dir_.file("admin.pem") +
                 ", key: " + dir_.file("admin.key") + ", client_ca: " + ca() + "}}\n" + yaml());
  ASSERT_TRUE(n.ok());
  httplib::SSLClient with_cert("127.0.0.1", n.admin_port(), dir_.file("operator.pem"),
                               dir_.file("operator.key"));
  with_cert.set_ca_cert_path(ca().c_str());
  with_cert.enable_server_certificate_verification(true);
  auto health = with_cert.Get("/health");
  ASSERT_TRUE(health) << httplib::to_string(health.error());
  EXPECT_EQ(health->status, 200);
  auto no_token = with_cert.Get("/config");
  ASSERT_TRUE(no_token);
  EXPECT_EQ(no_token->status, 401) << "a client certificate does not replace the token";
  auto with_token =
      with_cert.Get("/config", {{"Authorization", "Bearer " + n.get().admin_token()}});
  ASSERT_TRUE(with_token);
  EXPECT_EQ(with_token->status, 200);
  // Changes are audited with the certificate's subject (this node has no cluster: its trail is
  // kept locally, not replicated).
  const httplib::Headers auth = {{"Authorization", "Bearer " + n.get().admin_token()}};
  auto change = with_cert.Put("/config/routes/x", auth, "{}", "application/json");
  ASSERT_TRUE(change);
  auto trail = with_cert.Get("/audit", auth);
  ASSERT_TRUE(trail);
  auto entries = nlohmann::json::parse(trail->body)["entries"];
  ASSERT_FALSE(entries.empty()) << trail->body;
  EXPECT_EQ(entries[0]["path"], "/config/routes/x");
  EXPECT_EQ(entries[0]["status"], change->status);
  EXPECT_EQ(entries[0]["client_cert"], "CN=operator.test") << trail->body;
  EXPECT_EQ(nlohmann::json::parse(trail->body)["replicated"], false);
  // No client certificate: the handshake fails. Plain HTTP: no answer either.
  httplib::SSLClient without("127.0.0.1", n.admin_port());
  without.set_ca_cert_path(ca().c_str());
  without.enable_server_certificate_verification(true);
  EXPECT_FALSE(without.Get("/health"));
  httplib::Client plain("127.0.0.1", n.admin_port());
  plain.set_read_timeout(2, 0);
  auto r = plain.Get("/health");
  EXPECT_TRUE(!r || r->status != 200);
}

}  // namespace
}  // namespace meridian::testing
