#include "meridian/cluster/keyring.h"

#include <sodium.h>

#include <fstream>

namespace meridian::cluster {
namespace {

void ensure_sodium() {
  // sodium_init is thread-safe and idempotent; it returns 1 when already initialised.
  if (sodium_init() < 0) std::abort();
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) {
    s.remove_prefix(1);
  }
  while (!s.empty() &&
         (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) {
    s.remove_suffix(1);
  }
  return s;
}

}  // namespace

cluster_key generate_key() {
  ensure_sodium();
  cluster_key key;
  randombytes_buf(key.data(), key.size());
  return key;
}

std::string encode_key(const cluster_key& key) {
  ensure_sodium();
  std::string out(sodium_base64_ENCODED_LEN(key.size(), sodium_base64_VARIANT_ORIGINAL), '\0');
  sodium_bin2base64(out.data(), out.size(), key.data(), key.size(), sodium_base64_VARIANT_ORIGINAL);
  out.resize(out.size() - 1);  // drop the terminating NUL
  return out;
}

std::optional<cluster_key> decode_key(std::string_view text) {
  ensure_sodium();
  text = trim(text);
  cluster_key key;
  size_t len = 0;
  const char* end = nullptr;
  if (sodium_base642bin(key.data(), key.size(), text.data(), text.size(), nullptr, &len, &end,
                        sodium_base64_VARIANT_ORIGINAL) != 0 ||
      len != key.size() || end != text.data() + text.size()) {
    return std::nullopt;
  }
  return key;
}

keyring_result load_keyring(const std::string& path) {
  keyring_result result;
  std::ifstream in(path);
  if (!in) {
    result.error = path + ":0: cannot read keyring file";
    return result;
  }
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    auto text = trim(line);
    if (text.empty() || text.front() == '#') continue;
    auto key = decode_key(text);
    if (!key) {
      result.error = path + ":" + std::to_string(number) +
                     ": not a base64 32-byte key (generate one with `meridian keygen`)";
      result.keys.clear();
      return result;
    }
    result.keys.push_back(*key);
  }
  if (result.keys.empty()) result.error = path + ":0: keyring holds no keys";
  return result;
}

}  // namespace meridian::cluster
