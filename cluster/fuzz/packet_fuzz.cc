// libFuzzer entry point for everything that reads gossip bytes from the network: the sealed
// envelope (open) and both plain decodings. Run through `make fuzz`.
//
// Claims checked on every input: nothing throws or crashes (ASan/UBSan watch memory and UB), and
// whatever decodes re-encodes to something that decodes to the same value.
//
// With MERIDIAN_FUZZ_SEEDS=DIR set, the binary writes a seed corpus (encoded and sealed sample
// messages, built from the current code so they never go stale) into DIR and exits.

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "meridian/cluster/wire.h"

namespace {

using namespace meridian::cluster;

cluster_key fixed_key() {
  cluster_key k;
  for (size_t i = 0; i < k.size(); ++i) k[i] = static_cast<uint8_t>(i);
  return k;
}

const char* const label = "fuzz";

void write_seeds(const std::string& dir) {
  member_update u{
      {"node-b", "10.0.0.2:7946", "eu-west", "eu-west-1a"}, 42, member_state::suspect, "node-a"};
  packet full;
  full.sender_id = "node-a";
  full.sender_address = "10.0.0.1:7946";
  full.pings = {{7, "node-b"}};
  full.ping_reqs = {{8, "node-c", "10.0.0.3:7946"}};
  full.acks = {{9}};
  full.nacks = {{10}};
  full.updates = {u};
  full.payloads = {"delta-1"};
  packet ping_only;
  ping_only.sender_id = "node-a";
  ping_only.pings = {{1, "node-b"}};
  state_sync sync;
  sync.sender_id = "node-a";
  sync.join = true;
  sync.members = {u, u};
  sync.app_state = "digest";
  const std::pair<const char*, std::string> seeds[] = {
      {"packet_empty", encode(packet{})},
      {"packet_ping", encode(ping_only)},
      {"packet_full", encode(full)},
      {"state_sync", encode(sync)},
      {"sealed_packet", seal(encode(full), fixed_key(), label)},
      {"sealed_ping", seal(encode(ping_only), fixed_key(), label)},
  };
  for (const auto& [name, bytes] : seeds) {
    std::ofstream out(dir + "/" + name, std::ios::binary);
    out << bytes;
    if (!out) std::exit(1);
  }
  std::exit(0);
}

template <typename T>
void check_round_trip(std::string_view bytes) {
  T value;
  if (decode(bytes, &value) != wire_error::none) return;
  T again;
  if (decode(encode(value), &again) != wire_error::none || !(again == value)) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = std::getenv("MERIDIAN_FUZZ_SEEDS")) write_seeds(dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::vector<cluster_key> keys = {fixed_key()};
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  check_round_trip<packet>(bytes);
  check_round_trip<state_sync>(bytes);
  std::string plaintext;
  if (open(bytes, keys, label, &plaintext) == wire_error::none) {
    check_round_trip<packet>(plaintext);
    check_round_trip<state_sync>(plaintext);
  }
  return 0;
}
