#pragma once
// The traffic part's plain socket_address as Asio's endpoint type.

#include <boost/asio/ip/tcp.hpp>
#include <cstring>

#include "meridian/traffic/balancer.h"

namespace meridian::node {

inline boost::asio::ip::tcp::endpoint to_endpoint(const socket_address& a) {
  boost::asio::ip::tcp::endpoint ep;
  std::memcpy(ep.data(), &a.storage, a.size);
  ep.resize(a.size);
  return ep;
}

}  // namespace meridian::node
