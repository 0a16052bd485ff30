#pragma once
// The wire format: messages.h values encoded with Thrift's compact protocol (cluster/idl/
// gossip.thrift, generated into the build tree) and sealed with XChaCha20-Poly1305.
//
// Sealed layout: magic "MRD1" (4) | nonce (24) | ciphertext+tag. Associated data: the cluster
// label and the protocol version, so packets of another cluster or version fail to open; exactly
// the label's bytes, ':', then protocol_version as 2 bytes big-endian.
// Decoding never throws: malformed, oversized, unauthenticated or other-version input returns
// an error value. Thread-safe (no shared state).

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "meridian/cluster/keyring.h"
#include "meridian/cluster/messages.h"

namespace meridian::cluster {

enum class wire_error {
  none,
  too_short,
  bad_magic,
  unauthenticated,
  malformed,
  bad_version,
  too_large
};
const char* to_string(wire_error e);

// Plain (unsealed) encodings, for golden tests and the simulator's byte counts.
std::string encode(const packet& p);
std::string encode(const state_sync& s);
wire_error decode(std::string_view bytes, packet* out);
wire_error decode(std::string_view bytes, state_sync* out);
std::string encode(const strict_batch& b);
wire_error decode(std::string_view bytes, strict_batch* out);

// Seals plaintext with key (random nonce).
std::string seal(std::string_view plaintext, const cluster_key& key, std::string_view label);
// Opens sealed bytes with the first key of keys that authenticates them; sets *key_index.
wire_error open(std::string_view sealed, const std::vector<cluster_key>& keys,
                std::string_view label, std::string* plaintext, size_t* key_index = nullptr);

// The bytes that sealing adds to a plaintext.
inline constexpr size_t seal_overhead = 4 + 24 + 16;

// The largest plain encoding decode() accepts (and open() accepts, plus seal_overhead); larger
// input returns too_large. Senders keep packets and state syncs within it.
inline constexpr size_t max_encoded_size = 64 * 1024;

}  // namespace meridian::cluster
