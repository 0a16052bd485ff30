#include "meridian/cluster/keyring.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

namespace meridian::cluster {
namespace {

TEST(keyring, encoded_key_decodes_to_the_same_bytes) {
  auto key = generate_key();
  auto text = encode_key(key);
  EXPECT_EQ(text.size(), 44u);
  auto back = decode_key(text + "\n");
  ASSERT_TRUE(back);
  EXPECT_EQ(*back, key);
}

TEST(keyring, generated_keys_differ) {
  EXPECT_NE(generate_key(), generate_key());
}

TEST(keyring, short_or_malformed_keys_are_refused) {
  EXPECT_FALSE(decode_key(""));
  EXPECT_FALSE(decode_key("c2hvcnQ="));  // "short"
  EXPECT_FALSE(decode_key(encode_key(generate_key()) + "AAAA"));
  EXPECT_FALSE(decode_key("!!!!"));
}

TEST(keyring, file_keeps_order_skips_comments_and_reports_bad_line) {
  auto path = std::filesystem::temp_directory_path() / "meridian-keyring-test";
  auto a = generate_key(), b = generate_key();
  {
    std::ofstream out(path);
    out << "# primary first\n" << encode_key(a) << "\n\n" << encode_key(b) << "\n";
  }
  auto ring = load_keyring(path.string());
  ASSERT_TRUE(ring.error.empty()) << ring.error;
  ASSERT_EQ(ring.keys.size(), 2u);
  EXPECT_EQ(ring.keys[0], a);
  EXPECT_EQ(ring.keys[1], b);
  {
    std::ofstream out(path);
    out << encode_key(a) << "\nnot-a-key\n";
  }
  ring = load_keyring(path.string());
  EXPECT_EQ(ring.error.rfind(path.string() + ":2: ", 0), 0u) << ring.error;
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace meridian::cluster
