#pragma once
// Calendar months in a time zone, for quotas that reset at midnight on the 1st (rate_limit
// window `1mo`, docs/configuration.md).
//
// A zone is "UTC", a fixed offset east of UTC ("+09:00", "-05:30"), or an IANA name
// ("Europe/Berlin") whose current rule is read once from the system's zoneinfo file: the POSIX
// TZ string at the end of a version 2+ TZif file (RFC 8536 section 3.3), e.g.
// "CET-1CEST,M3.5.0,M10.5.0/3". Daylight saving follows that rule in every year (a zone whose
// rules changed in the past is off by the change for months before it).
//
// Hand-written rather than Boost.DateTime's posix_time_zone: Boost reads the offsets with the
// opposite sign to POSIX and does not take quoted names ("<+0330>-3:30"), so every zoneinfo rule
// would need rewriting first; the grammar is small enough to read directly.
//
// Thread-safety: at() from any thread (a mutex guards the one cached month; the computation runs
// only when a month ends).

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>

namespace meridian::node {

// A POSIX TZ rule ("std offset [dst [offset] [,start[/time],end[/time]]]"), offsets in seconds
// east of UTC (local = UTC + offset).
struct tz_rule {
  struct transition {
    char kind = 'M';  // 'M': month.week.day; 'J': Julian day 1..365 (no Feb 29); 'N': 0..365
    int month = 0, week = 0, weekday = 0, day = 0;
    int64_t time_s = 7200;  // local time of day the change happens (may be negative or > 24 h)
  };
  int64_t std_offset = 0;
  bool has_dst = false;
  int64_t dst_offset = 0;
  transition start, end;

  // Parses text; false (and *error set) when it is not a POSIX TZ rule.
  static bool parse(std::string_view text, tz_rule* out, std::string* error);
  // Returns the offset in effect at a local wall-clock time (seconds since 1970-01-01T00:00 in
  // the zone's local time).
  int64_t offset_at_local(int64_t local_s) const;
};

class month_calendar {
 public:
  struct month {
    uint32_t index = 0;    // months since January 2024 (the cluster's HLC epoch)
    int64_t start_ms = 0;  // Unix ms of midnight on the 1st, in the zone
    int64_t end_ms = 0;    // the next month's start
  };

  // Returns the calendar of zone, or nullptr with *error saying why (unknown zone, unreadable
  // zoneinfo file, a rule that does not parse). zoneinfo_dir: where IANA zones are read.
  static std::shared_ptr<const month_calendar> make(
      const std::string& zone, std::string* error,
      const std::string& zoneinfo_dir = "/usr/share/zoneinfo");

  // Returns the month that holds Unix ms t (instants before January 2024 are in month 0).
  month at(int64_t unix_ms) const;
  const std::string& zone() const { return zone_; }
  // Unix ms of midnight on the 1st of month (1..12) of year, in the zone.
  int64_t month_start_ms(int year, unsigned month) const;

 private:
  month_calendar(std::string zone, tz_rule r) : zone_(std::move(zone)), rule_(r) {}

  std::string zone_;
  tz_rule rule_;
  mutable std::mutex mu_;
  mutable month cached_{};
  mutable bool have_cached_ = false;
};

}  // namespace meridian::node
