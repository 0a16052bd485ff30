#pragma once
// Under ASan and UBSan (make test-asan: a Debug build, MERIDIAN_SANITIZED defined for the tests)
// everything runs several times slower and RSS carries shadow memory and the allocator's
// quarantine. Tests whose bounds measure speed or memory, not behaviour, scale them by these;
// the release build (make test) checks the real figures.

namespace meridian::testing {

#ifdef MERIDIAN_SANITIZED
inline constexpr bool sanitized = true;
inline constexpr int slowdown = 6;         // deadlines that measure speed
inline constexpr int memory_overhead = 4;  // bounds on RSS growth
#else
inline constexpr bool sanitized = false;
inline constexpr int slowdown = 1;
inline constexpr int memory_overhead = 1;
#endif

}  // namespace meridian::testing
