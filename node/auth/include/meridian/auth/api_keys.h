#pragma once
// Consumer API keys: issued by the admin API, spread to every node as cluster documents
// ("keys/<key_id>"), stored only as salted, keyed BLAKE2b-256 hashes.
//
// A key reads "mk_<key_id>_<secret>": key_id is 16 hex digits (public, it names the key in the
// admin API and finds its record in one lookup), secret is 32 bytes of randomness in hex. The
// record holds the consumer, a 16-byte random salt and BLAKE2b-256(key = "meridian api key v1",
// salt || secret); a presented key is hashed the same way and compared in constant time. The
// plaintext exists only in the answer to the POST that created it.

#include <array>
#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace meridian::node {

// Requests and last use of one key on this node (the admin API sums nothing across nodes).
struct key_usage {
  std::atomic<uint64_t> requests{0};
  std::atomic<int64_t> last_used_ms{0};
};

// Usage counters by key id; entries live as long as the registry (stable pointers).
class key_usage_registry {
 public:
  key_usage* get(const std::string& key_id);

 private:
  std::mutex mu_;
  std::map<std::string, std::unique_ptr<key_usage>> usage_;
};

struct api_key_record {
  std::string key_id;
  std::string consumer;
  std::array<uint8_t, 16> salt{};
  std::array<uint8_t, 32> hash{};
  int64_t created_ms = 0;
  int64_t expires_ms = 0;  // 0: never
  key_usage* usage = nullptr;
};

// What node.cc stores as the document "keys/<key_id>" and what it parses back.
struct issued_key {
  std::string key_id;
  std::string plaintext;  // shown once
  std::string document;   // JSON without the plaintext
};
issued_key issue_api_key(const std::string& consumer, int64_t now_ms, int64_t expires_ms);
std::optional<api_key_record> parse_api_key_document(const std::string& key_id,
                                                     const std::string& json);
// Splits a presented key into key_id and secret; false when it is not shaped like one.
bool split_api_key(std::string_view key, std::string_view* key_id, std::string_view* secret);
// Returns true when secret matches the record (constant time).
bool verify_api_key(const api_key_record& r, std::string_view secret);

using api_key_table = std::unordered_map<std::string, api_key_record>;

}  // namespace meridian::node
