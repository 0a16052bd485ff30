#include "meridian/common/calendar.h"

#include <gtest/gtest.h>

#include "utc_ms.h"

namespace meridian::node {
namespace {

int64_t utc(int y, int mo, int d, int h = 0, int mi = 0) {
  return test::utc_ms(y, mo, d, h, mi);
}

std::shared_ptr<const month_calendar> zone(const std::string& name) {
  std::string error;
  auto c = month_calendar::make(name, &error);
  EXPECT_TRUE(c) << name << ": " << error;
  return c;
}

TEST(month_calendar, utc_months_start_at_midnight_on_the_first_and_count_from_2024) {
  auto c = zone("UTC");
  auto m = c->at(utc(2026, 3, 15, 12));
  EXPECT_EQ(m.start_ms, utc(2026, 3, 1));
  EXPECT_EQ(m.end_ms, utc(2026, 4, 1));
  EXPECT_EQ(m.index, 2u * 12 + 2);
  EXPECT_EQ(c->at(utc(2026, 12, 31, 23, 59)).end_ms, utc(2027, 1, 1));
  EXPECT_EQ(c->at(utc(2027, 1, 1)).index, 3u * 12);
  // A leap February has 29 days.
  auto feb = c->at(utc(2028, 2, 10));
  EXPECT_EQ(feb.end_ms - feb.start_ms, 29LL * 86400 * 1000);
  EXPECT_EQ(c->at(utc(2020, 5, 1)).index, 0u) << "before 2024: month 0";
}

TEST(month_calendar, a_fixed_offset_moves_the_boundary_by_that_offset) {
  auto tokyo = zone("+09:00");
  EXPECT_EQ(tokyo->at(utc(2026, 1, 31, 15)).start_ms, utc(2026, 1, 31, 15));
  EXPECT_EQ(tokyo->at(utc(2026, 1, 31, 14, 59)).start_ms, utc(2025, 12, 31, 15));
  auto west = zone("-05:30");
  EXPECT_EQ(west->at(utc(2026, 6, 1, 3)).start_ms, utc(2026, 5, 1, 5, 30));
  std::string error;
  EXPECT_FALSE(month_calendar::make("+15:00", &error));
  EXPECT_FALSE(month_calendar::make("../../etc/passwd", &error));
  EXPECT_FALSE(month_calendar::make("Mars/Olympus_Mons", &error));
  EXPECT_NE(error.find("no such zone"), std::string::npos) << error;
}

TEST(month_calendar, iana_zones_follow_daylight_saving_north_and_south) {
  auto berlin = zone("Europe/Berlin");  // CET-1CEST,M3.5.0,M10.5.0/3
  EXPECT_EQ(berlin->month_start_ms(2026, 1), utc(2025, 12, 31, 23));
  EXPECT_EQ(berlin->month_start_ms(2026, 7), utc(2026, 6, 30, 22));
  auto ny = zone("America/New_York");
  EXPECT_EQ(ny->month_start_ms(2026, 4), utc(2026, 4, 1, 4));
  EXPECT_EQ(ny->month_start_ms(2026, 12), utc(2026, 12, 1, 5));
  auto sydney = zone("Australia/Sydney");  // summer in January
  EXPECT_EQ(sydney->month_start_ms(2026, 1), utc(2025, 12, 31, 13));
  EXPECT_EQ(sydney->month_start_ms(2026, 7), utc(2026, 6, 30, 14));
  auto kolkata = zone("Asia/Kolkata");
  EXPECT_EQ(kolkata->month_start_ms(2026, 2), utc(2026, 1, 31, 18, 30));
  auto tehran = zone("Asia/Tehran");  // a quoted name: <+0330>-3:30
  EXPECT_EQ(tehran->month_start_ms(2026, 2), utc(2026, 1, 31, 20, 30));
  // Across a boundary the month changes at that instant, not before.
  auto before = berlin->at(utc(2026, 6, 30, 21, 59));
  auto after = berlin->at(utc(2026, 6, 30, 22, 0));
  EXPECT_EQ(after.index, before.index + 1);
  EXPECT_EQ(before.end_ms, after.start_ms);
}

TEST(tz_rule, parses_posix_rules_and_refuses_garbage) {
  tz_rule r;
  std::string error;
  ASSERT_TRUE(tz_rule::parse("EST5EDT,M3.2.0,M11.1.0", &r, &error)) << error;
  EXPECT_EQ(r.std_offset, -5 * 3600);
  EXPECT_EQ(r.dst_offset, -4 * 3600);
  ASSERT_TRUE(tz_rule::parse("<+0330>-3:30", &r, &error)) << error;
  EXPECT_EQ(r.std_offset, 3 * 3600 + 1800);
  EXPECT_FALSE(r.has_dst);
  ASSERT_TRUE(tz_rule::parse("IST-1GMT0,M10.5.0,M3.5.0/1", &r, &error)) << error;  // Dublin
  EXPECT_EQ(r.std_offset, 3600);
  EXPECT_EQ(r.dst_offset, 0);
  ASSERT_TRUE(tz_rule::parse("XXX3XXY,J60/2,300/-1", &r, &error)) << error;
  for (const char* bad : {"", "E5", "EST", "EST5EDT,M13.1.0,M11.1.0", "EST5EDT,M3.2.0",
                          "EST5EDT,M3.2.0,M11.1.0,", "<>5", "EST99", "EST5EDT,J0,J400"}) {
    EXPECT_FALSE(tz_rule::parse(bad, &r, &error)) << bad;
  }
}

}  // namespace
}  // namespace meridian::node
