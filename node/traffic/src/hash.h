#pragma once
// Hashing shared by the limiters: counter keys (rate_limiter.cc) and owners (strict_limiter.cc).

#include <cstdint>

namespace meridian::node {

// splitmix64's finaliser: spreads every input bit over the whole word.
inline uint64_t mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

}  // namespace meridian::node
