#pragma once
// Unix milliseconds of a UTC date and time: the injected clock of calendar tests.

#include <cstdint>
#include <ctime>

namespace meridian::test {

inline int64_t utc_ms(int year, int month, int day, int hour = 0, int minute = 0, int second = 0) {
  std::tm tm{};
  tm.tm_year = year - 1900;
  tm.tm_mon = month - 1;
  tm.tm_mday = day;
  tm.tm_hour = hour;
  tm.tm_min = minute;
  tm.tm_sec = second;
  return static_cast<int64_t>(timegm(&tm)) * 1000;
}

}  // namespace meridian::test
