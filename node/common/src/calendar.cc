#include "meridian/common/calendar.h"

#include <cctype>
#include <fstream>
#include <sstream>

namespace meridian::node {
namespace {

constexpr int64_t day_s = 86400;

// Days since 1970-01-01 of a proleptic Gregorian date (the well-known era arithmetic: 400-year
// eras of 146097 days, years starting in March so that leap days come last).
int64_t days_from_civil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const auto yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

struct civil {
  int64_t year;
  unsigned month, day;
};

civil civil_from_days(int64_t z) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const auto doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  const unsigned d = doy - (153 * mp + 2) / 5 + 1;
  const unsigned m = mp < 10 ? mp + 3 : mp - 9;
  return {static_cast<int64_t>(yoe) + era * 400 + (m <= 2), m, d};
}

unsigned weekday_of(int64_t days) {  // 0 = Sunday; 1970-01-01 was a Thursday
  return static_cast<unsigned>(days >= -4 ? (days + 4) % 7 : (days + 5) % 7 + 6);
}

bool leap(int64_t y) {
  return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

unsigned days_in_month(int64_t y, unsigned m) {
  static constexpr unsigned len[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && leap(y) ? 29 : len[m - 1];
}

int64_t floor_div(int64_t a, int64_t b) {
  return a / b - ((a % b != 0) && ((a < 0) != (b < 0)));
}

// Local wall-clock seconds of a transition in year y.
int64_t transition_local(const tz_rule::transition& t, int64_t y) {
  int64_t days = 0;
  if (t.kind == 'M') {
    const int64_t first = days_from_civil(y, static_cast<unsigned>(t.month), 1);
    const unsigned wd = weekday_of(first);
    int64_t day = (t.weekday - static_cast<int>(wd) + 7) % 7 + (t.week - 1) * 7;
    const auto len = static_cast<int64_t>(days_in_month(y, static_cast<unsigned>(t.month)));
    while (day >= len) day -= 7;  // week 5: the last such weekday
    days = first + day;
  } else if (t.kind == 'J') {
    days = days_from_civil(y, 1, 1) + t.day - 1 + (leap(y) && t.day >= 60 ? 1 : 0);
  } else {
    days = days_from_civil(y, 1, 1) + t.day;
  }
  return days * day_s + t.time_s;
}

// A reader over a POSIX TZ string.
struct tz_reader {
  std::string_view s;
  size_t i = 0;
  bool at_end() const { return i >= s.size(); }
  char peek() const { return at_end() ? '\0' : s[i]; }

  bool name() {
    if (peek() == '<') {
      size_t close = s.find('>', i);
      if (close == std::string_view::npos || close == i + 1) return false;
      i = close + 1;
      return true;
    }
    size_t from = i;
    while (!at_end() && std::isalpha(static_cast<unsigned char>(s[i]))) ++i;
    return i - from >= 3;
  }
  bool number(int max, int* out) {
    if (!std::isdigit(static_cast<unsigned char>(peek()))) return false;
    int v = 0;
    while (std::isdigit(static_cast<unsigned char>(peek()))) {
      v = v * 10 + (s[i++] - '0');
      if (v > max) return false;
    }
    *out = v;
    return true;
  }
  // [+-]hh[:mm[:ss]] -> seconds (sign as written).
  bool hms(int max_hours, int64_t* out) {
    int sign = 1;
    if (peek() == '+' || peek() == '-') sign = s[i++] == '-' ? -1 : 1;
    int h = 0, m = 0, sec = 0;
    if (!number(max_hours, &h)) return false;
    if (peek() == ':') {
      ++i;
      if (!number(59, &m)) return false;
      if (peek() == ':') {
        ++i;
        if (!number(59, &sec)) return false;
      }
    }
    *out = sign * (h * 3600LL + m * 60LL + sec);
    return true;
  }
  bool transition(tz_rule::transition* t) {
    if (peek() == 'M') {
      ++i;
      t->kind = 'M';
      if (!number(12, &t->month) || t->month < 1 || peek() != '.') return false;
      ++i;
      if (!number(5, &t->week) || t->week < 1 || peek() != '.') return false;
      ++i;
      if (!number(6, &t->weekday)) return false;
    } else if (peek() == 'J') {
      ++i;
      t->kind = 'J';
      if (!number(365, &t->day) || t->day < 1) return false;
    } else {
      t->kind = 'N';
      if (!number(365, &t->day)) return false;
    }
    t->time_s = 7200;
    if (peek() == '/') {
      ++i;
      if (!hms(167, &t->time_s)) return false;
    }
    return true;
  }
};

}  // namespace

bool tz_rule::parse(std::string_view text, tz_rule* out, std::string* error) {
  tz_reader r{text};
  tz_rule rule;
  int64_t west = 0;
  if (!r.name() || !r.hms(24, &west)) {
    *error = "'" + std::string(text) + "' is not a POSIX TZ rule (name and offset)";
    return false;
  }
  rule.std_offset = -west;  // POSIX offsets count west of Greenwich
  if (!r.at_end()) {
    if (!r.name()) {
      *error = "'" + std::string(text) + "': bad daylight-saving name";
      return false;
    }
    rule.has_dst = true;
    rule.dst_offset = rule.std_offset + 3600;
    if (!r.at_end() && r.peek() != ',') {
      if (!r.hms(24, &west)) {
        *error = "'" + std::string(text) + "': bad daylight-saving offset";
        return false;
      }
      rule.dst_offset = -west;
    }
    if (r.at_end()) {
      // No rule given: POSIX leaves it to the implementation; the US rule, as glibc does.
      rule.start = {'M', 3, 2, 0, 0, 7200};
      rule.end = {'M', 11, 1, 0, 0, 7200};
    } else {
      bool ok = r.peek() == ',';
      if (ok) ++r.i;
      ok = ok && r.transition(&rule.start) && r.peek() == ',';
      if (ok) ++r.i;
      ok = ok && r.transition(&rule.end) && r.at_end();
      if (!ok) {
        *error = "'" + std::string(text) + "': bad daylight-saving rule";
        return false;
      }
    }
  }
  *out = rule;
  return true;
}

int64_t tz_rule::offset_at_local(int64_t local_s) const {
  if (!has_dst) return std_offset;
  const int64_t y = civil_from_days(floor_div(local_s, day_s)).year;
  // The start is given in standard time, the end in daylight time: both as wall clocks.
  const int64_t s = transition_local(start, y), e = transition_local(end, y);
  const bool dst = s < e ? local_s >= s && local_s < e : local_s >= s || local_s < e;
  return dst ? dst_offset : std_offset;
}

std::shared_ptr<const month_calendar> month_calendar::make(const std::string& zone,
                                                           std::string* error,
                                                           const std::string& zoneinfo_dir) {
  tz_rule rule;
  if (zone.empty() || zone == "UTC" || zone == "Z" || zone == "GMT") {
    return std::shared_ptr<const month_calendar>(new month_calendar("UTC", rule));
  }
  // A fixed offset east of UTC, ISO 8601 style: +09:00, -05:30.
  if (zone.size() == 6 && (zone[0] == '+' || zone[0] == '-') && zone[3] == ':' &&
      std::isdigit(static_cast<unsigned char>(zone[1])) &&
      std::isdigit(static_cast<unsigned char>(zone[2])) &&
      std::isdigit(static_cast<unsigned char>(zone[4])) &&
      std::isdigit(static_cast<unsigned char>(zone[5]))) {
    const int h = (zone[1] - '0') * 10 + (zone[2] - '0');
    const int m = (zone[4] - '0') * 10 + (zone[5] - '0');
    if (h > 14 || m > 59) {
      *error = "timezone " + zone + ": an offset is at most +14:00 / -14:00";
      return nullptr;
    }
    rule.std_offset = (zone[0] == '-' ? -1 : 1) * (h * 3600LL + m * 60LL);
    return std::shared_ptr<const month_calendar>(new month_calendar(zone, rule));
  }
  // An IANA name: letters, digits, '_', '-', '+', '/' between parts; never a path outside.
  bool valid = zone.front() != '/' && zone.find("..") == std::string::npos && zone.size() < 64;
  for (char c : zone)
    valid = valid && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' ||
                      c == '+' || c == '/');
  if (!valid) {
    *error = "timezone '" + zone + "' is not UTC, an offset like +09:00, or an IANA zone name";
    return nullptr;
  }
  std::ifstream in(zoneinfo_dir + "/" + zone, std::ios::binary);
  if (!in) {
    *error = "timezone '" + zone + "': no such zone in " + zoneinfo_dir;
    return nullptr;
  }
  std::ostringstream buf;
  buf << in.rdbuf();
  const std::string data = buf.str();
  if (data.size() < 45 || data.compare(0, 4, "TZif") != 0 || data.size() > (1 << 20)) {
    *error = "timezone '" + zone + "': " + zoneinfo_dir + "/" + zone + " is not a TZif file";
    return nullptr;
  }
  // Version 2+ files end with "\n<POSIX TZ string>\n" (RFC 8536 section 3.3).
  const size_t last = data.size() - 1;
  const size_t open = data[last] == '\n' ? data.rfind('\n', last - 1) : std::string::npos;
  if (data[4] < '2' || open == std::string::npos || open + 1 >= last) {
    *error = "timezone '" + zone + "': its zoneinfo file has no rule for the present";
    return nullptr;
  }
  std::string why;
  if (!tz_rule::parse(std::string_view(data).substr(open + 1, last - open - 1), &rule, &why)) {
    *error = "timezone '" + zone + "': " + why;
    return nullptr;
  }
  return std::shared_ptr<const month_calendar>(new month_calendar(zone, rule));
}

int64_t month_calendar::month_start_ms(int year, unsigned month) const {
  const int64_t local = days_from_civil(year, month, 1) * day_s;
  return (local - rule_.offset_at_local(local)) * 1000;
}

month_calendar::month month_calendar::at(int64_t unix_ms) const {
  {
    std::lock_guard lock(mu_);
    if (have_cached_ && unix_ms >= cached_.start_ms && unix_ms < cached_.end_ms) return cached_;
  }
  // The local date by the standard offset, then corrected by the month's real start.
  const int64_t local_s = floor_div(unix_ms, 1000) + rule_.std_offset;
  civil c = civil_from_days(floor_div(local_s, day_s));
  int64_t y = c.year;
  int m = static_cast<int>(c.month);
  auto step = [&](int by) {
    m += by;
    if (m == 0) {
      m = 12;
      --y;
    } else if (m == 13) {
      m = 1;
      ++y;
    }
  };
  if (unix_ms < month_start_ms(static_cast<int>(y), static_cast<unsigned>(m))) step(-1);
  int next_y = static_cast<int>(y), next_m = m + 1;
  if (next_m == 13) {
    next_m = 1;
    ++next_y;
  }
  if (unix_ms >= month_start_ms(next_y, static_cast<unsigned>(next_m))) step(1);
  month out;
  out.start_ms = month_start_ms(static_cast<int>(y), static_cast<unsigned>(m));
  next_y = static_cast<int>(y);
  next_m = m + 1;
  if (next_m == 13) {
    next_m = 1;
    ++next_y;
  }
  out.end_ms = month_start_ms(next_y, static_cast<unsigned>(next_m));
  const int64_t index = (y - 2024) * 12 + (m - 1);
  out.index = index < 0 ? 0 : static_cast<uint32_t>(index);
  std::lock_guard lock(mu_);
  cached_ = out;
  have_cached_ = true;
  return out;
}

}  // namespace meridian::node
