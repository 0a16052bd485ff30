#pragma once
// Thrift compact-protocol plumbing shared by wire.cc and replicated_state.cc: bounded,
// non-throwing decoding of the generated types. Private to meridian_cluster.

#include <thrift/TConfiguration.h>
#include <thrift/protocol/TCompactProtocol.h>
#include <thrift/transport/TBufferTransports.h>

#include <memory>
#include <string>
#include <string_view>

#include "meridian/cluster/messages.h"
#include "meridian/cluster/wire.h"

namespace meridian::cluster::detail {

using apache::thrift::TConfiguration;
using apache::thrift::protocol::TCompactProtocolT;
using apache::thrift::protocol::TType;
using apache::thrift::transport::TMemoryBuffer;
using compact_protocol = TCompactProtocolT<TMemoryBuffer>;

// Per-container and per-string caps while decoding. Input is already capped at
// max_encoded_size, but a list header can declare 2^31 elements in five bytes, and Thrift
// resizes the vector before reading them.
inline constexpr int32_t max_container_elements = 4096;
inline constexpr int32_t max_string_bytes = 64 * 1024;

// ---- Thrift plumbing ----

template <typename G>
std::string write_compact(const G& g) {
  auto buffer = std::make_shared<TMemoryBuffer>();
  compact_protocol protocol(buffer);
  g.write(&protocol);
  return buffer->getBufferAsString();
}

inline std::unique_ptr<compact_protocol> reader(std::string_view bytes) {
  auto config = std::make_shared<TConfiguration>(static_cast<int>(max_encoded_size),
                                                 static_cast<int>(max_encoded_size));
  // OBSERVE never writes through the pointer; Thrift's signature just is not const-correct.
  auto buffer = std::make_shared<TMemoryBuffer>(
      reinterpret_cast<uint8_t*>(const_cast<char*>(bytes.data())),
      static_cast<uint32_t>(bytes.size()), TMemoryBuffer::OBSERVE, config);
  // Thrift 0.17 has the limit setters on the factory only; the constructor takes them too.
  return std::make_unique<compact_protocol>(buffer, max_string_bytes, max_container_elements);
}

// Reads field 1 (the version) without decoding the rest, so a packet of another protocol version
// reports bad_version even when the rest of its layout is unreadable to this one.
inline wire_error check_version(std::string_view bytes) {
  auto protocol = reader(bytes);
  std::string name;
  TType type;
  int16_t id = 0;
  protocol->readStructBegin(name);
  protocol->readFieldBegin(name, type, id);
  if (id != 1 || type != apache::thrift::protocol::T_I16) return wire_error::malformed;
  int16_t version = 0;
  protocol->readI16(version);
  if (static_cast<uint16_t>(version) != protocol_version) return wire_error::bad_version;
  return wire_error::none;
}

template <typename G>
wire_error read_compact(std::string_view bytes, G* g) {
  if (bytes.size() > max_encoded_size) return wire_error::too_large;
  try {
    if (wire_error e = check_version(bytes); e != wire_error::none) return e;
    auto protocol = reader(bytes);
    g->read(protocol.get());
    // check_version saw the first field; a repeated field 1 must not smuggle in another version.
    if (!g->__isset.version) return wire_error::malformed;
    if (static_cast<uint16_t>(g->version) != protocol_version) return wire_error::bad_version;
    // Trailing bytes mean the sender and this node disagree about the layout.
    if (protocol->getTransport()->peek()) return wire_error::malformed;
  } catch (...) {
    // TProtocolException, TTransportException, std::bad_alloc: all the same to the caller.
    return wire_error::malformed;
  }
  return wire_error::none;
}

}  // namespace meridian::cluster::detail
