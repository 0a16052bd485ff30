#pragma once
// Cluster keys: 32-byte secrets shared by every member, written base64, one a line, in the
// keyring file. The first key is primary (used to seal); every key is tried when opening.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace meridian::cluster {

using cluster_key = std::array<uint8_t, 32>;

// Returns a new random key from libsodium's CSPRNG.
cluster_key generate_key();
// Returns key as standard base64 (44 characters with padding).
std::string encode_key(const cluster_key& key);
// Decodes base64 text (surrounding whitespace ignored) into a 32-byte key, or nullopt.
std::optional<cluster_key> decode_key(std::string_view text);

struct keyring_result {
  std::vector<cluster_key> keys;  // primary first; non-empty when error is empty
  std::string error;              // "FILE:LINE: message"
};

// Reads a keyring file: one base64 key a line; blank lines and lines starting with '#' skipped.
keyring_result load_keyring(const std::string& path);

}  // namespace meridian::cluster
