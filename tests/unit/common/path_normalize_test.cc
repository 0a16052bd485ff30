#include "meridian/common/path_normalize.h"

#include <gtest/gtest.h>

#include <string>

namespace meridian::node {
namespace {

std::string norm(std::string_view in, path_policy p = {}) {
  std::string out;
  path_status st = normalize_path(in, p, &out);
  if (st != path_status::ok) return std::string("!") + to_string(st);
  return out;
}

TEST(path_normalize, dot_segments_are_removed_so_no_path_climbs_into_a_sibling) {
  EXPECT_EQ(norm("/pub/../priv/secret.txt"), "/priv/secret.txt");
  EXPECT_EQ(norm("/./priv/x"), "/priv/x");
  EXPECT_EQ(norm("/x/../priv/x"), "/priv/x");
  EXPECT_EQ(norm("/a/b/../../../../priv"), "/priv");
  EXPECT_EQ(norm("/a/b/.."), "/a/");
  EXPECT_EQ(norm("/a/b/."), "/a/b/");
  EXPECT_EQ(norm("/.."), "/");
  EXPECT_EQ(norm("/a/..b/c"), "/a/..b/c");  // not a dot segment
  EXPECT_EQ(norm("/a/.b"), "/a/.b");
}

TEST(path_normalize, encoded_unreserved_characters_are_decoded_before_dot_removal) {
  EXPECT_EQ(norm("/pub/%2e%2e/priv/x"), "/priv/x");
  EXPECT_EQ(norm("/pub/%2E./priv/x"), "/priv/x");
  EXPECT_EQ(norm("/%70riv/x"), "/priv/x");
  EXPECT_EQ(norm("/a%7Eb%2D%5f"), "/a~b-_");
}

TEST(path_normalize, other_encodings_stay_encoded_with_upper_case_hex) {
  EXPECT_EQ(norm("/a%20b"), "/a%20b");
  EXPECT_EQ(norm("/a%3fb"), "/a%3Fb");
  EXPECT_EQ(norm("/%e2%82%ac"), "/%E2%82%AC");
}

TEST(path_normalize, repeated_slashes_merge_unless_turned_off) {
  EXPECT_EQ(norm("//priv/x"), "/priv/x");
  EXPECT_EQ(norm("/a///b//"), "/a/b/");
  path_policy keep;
  keep.merge_slashes = false;
  EXPECT_EQ(norm("//priv/x", keep), "//priv/x");
  EXPECT_EQ(norm("/a//b/../c", keep), "/a//c");
  EXPECT_TRUE(path_is_normal("/a//b", keep));
  EXPECT_FALSE(path_is_normal("/a//b", path_policy{}));
}

TEST(path_normalize, encoded_slashes_are_refused_by_default_kept_or_decoded_on_request) {
  EXPECT_EQ(norm("/pub/..%2fpriv/x"), std::string("!") + to_string(path_status::escaped_slash));
  EXPECT_EQ(norm("/a%5Cb"), std::string("!") + to_string(path_status::escaped_slash));
  EXPECT_EQ(norm("/a\\b"), std::string("!") + to_string(path_status::escaped_slash));
  path_policy keep;
  keep.escaped_slashes = escaped_slash_action::keep;
  EXPECT_EQ(norm("/pub/..%2fpriv/x", keep), "/pub/..%2Fpriv/x");
  EXPECT_EQ(norm("/a\\b", keep), std::string("!") + to_string(path_status::escaped_slash));
  path_policy decode;
  decode.escaped_slashes = escaped_slash_action::decode;
  EXPECT_EQ(norm("/pub/..%2fpriv/x", decode), "/priv/x");
  EXPECT_EQ(norm("/pub\\..\\priv", decode), "/priv");
}

TEST(path_normalize, malformed_percent_encodings_and_nul_are_refused) {
  EXPECT_EQ(norm("/a%"), std::string("!") + to_string(path_status::bad_percent));
  EXPECT_EQ(norm("/a%4"), std::string("!") + to_string(path_status::bad_percent));
  EXPECT_EQ(norm("/a%zz"), std::string("!") + to_string(path_status::bad_percent));
  EXPECT_EQ(norm("/a%00b"), std::string("!") + to_string(path_status::nul));
}

TEST(path_normalize, a_normal_path_is_recognized_as_such_and_left_alone) {
  for (const char* p : {"/", "/a", "/api/users/7", "/a/b/", "/a.b/c..d/.e"}) {
    EXPECT_TRUE(path_is_normal(p, path_policy{})) << p;
    EXPECT_EQ(norm(p), p);
  }
  for (const char* p : {"/a/./b", "/a/../b", "/a/.", "/a/..", "/%41", "//"}) {
    EXPECT_FALSE(path_is_normal(p, path_policy{})) << p;
  }
}

TEST(path_normalize, normalizing_twice_changes_nothing) {
  path_policy decode;
  decode.escaped_slashes = escaped_slash_action::decode;
  for (const char* p : {"/pub/%2e%2e/priv/x", "//a/./b/../c//", "/%7e%2f%2e%2e/x", "/a%20b/%2E"}) {
    std::string once = norm(p, decode);
    ASSERT_NE(once.front(), '!') << p;
    EXPECT_EQ(norm(once, decode), once) << p;
  }
}

}  // namespace
}  // namespace meridian::node
