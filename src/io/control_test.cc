#include "io/control.h"

#include <gtest/gtest.h>

namespace imgstream {
namespace {

using nlohmann::json;

TEST(Utf8, AcceptsValidRejectsTheRest) {
  EXPECT_TRUE(valid_utf8(""));
  EXPECT_TRUE(valid_utf8("status"));
  EXPECT_TRUE(valid_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"));
  EXPECT_FALSE(valid_utf8("rate \xff"));
  EXPECT_FALSE(valid_utf8("\xc0\xaf"));          // overlong '/'
  EXPECT_FALSE(valid_utf8("\xe0\x80\xaf"));      // overlong, 3 bytes
  EXPECT_FALSE(valid_utf8("\xed\xa0\x80"));      // a surrogate
  EXPECT_FALSE(valid_utf8("\xf4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_FALSE(valid_utf8("\xc3"));              // cut short
  EXPECT_FALSE(valid_utf8("\x80"));              // a lone continuation byte
}

TEST(ControlReply, BadLinesNeverReachTheHandler) {
  int calls = 0;
  ControlServer::Handler h = [&](const std::string& line) {
    ++calls;
    return json{{"echo", line}};
  };
  EXPECT_EQ(control_reply(h, "status\r\nignored", true), "{\"echo\":\"status\"}\n");
  EXPECT_EQ(control_reply(h, "status", true), "{\"echo\":\"status\"}\n");  // no newline, EOF
  EXPECT_EQ(calls, 2);
  for (std::string_view bad : {std::string_view("rate \xff\n"), std::string_view("a\tb\n"),
                               std::string_view("a\0b\n", 4)}) {
    auto r = json::parse(control_reply(h, bad, true), nullptr, false);
    ASSERT_TRUE(r.is_object());
    EXPECT_TRUE(r.contains("error")) << r;
  }
  auto cut = json::parse(control_reply(h, std::string(100, 'x'), false), nullptr, false);
  EXPECT_NE(string_or(cut, "error", "").find("longer than"), std::string::npos);
  EXPECT_EQ(calls, 2);
}

TEST(ControlReply, ReplyWithInvalidUtf8IsDumpedNotThrown) {
  ControlServer::Handler h = [](const std::string&) { return json{{"source", "/img\xff.raw"}}; };
  const std::string r = control_reply(h, "status\n", true);
  EXPECT_EQ(r, "{\"source\":\"/img\xef\xbf\xbd.raw\"}\n");
}

TEST(ControlWords, SplitsAndParsesStrictly) {
  auto w = command_words("  take 1  2 3 ");
  ASSERT_EQ(w.size(), 4u);
  EXPECT_EQ(w[0], "take");
  EXPECT_EQ(w[3], "3");
  EXPECT_EQ(*parse_u64_word("18446744073709551615", "n"), UINT64_MAX);
  for (std::string_view bad : {"", "-1", "1x", "0x10", "18446744073709551616", "+1", " 1"})
    EXPECT_FALSE(parse_u64_word(bad, "n")) << bad;
}

TEST(ReplyReaders, NameTheField) {
  const json j = json::parse(R"({"n": 5, "neg": -1, "f": 1.5, "s": "x", "b": true,
                                 "runs": [[1, 2], [3, 4]], "bad_runs": [[1], 2]})");
  EXPECT_EQ(*get_u64(j, "n"), 5u);
  EXPECT_FALSE(get_u64(j, "neg"));
  EXPECT_FALSE(get_u64(j, "f"));
  auto missing = get_u64(j, "dirty");
  ASSERT_FALSE(missing);
  EXPECT_NE(missing.error().message.find("'dirty'"), std::string::npos);
  EXPECT_EQ(*get_double(j, "n"), 5.0);
  EXPECT_EQ(*get_double(j, "f"), 1.5);
  EXPECT_EQ(*get_string(j, "s"), "x");
  EXPECT_FALSE(get_string(j, "n"));
  EXPECT_TRUE(*get_bool(j, "b"));
  auto runs = get_u64_pairs(j, "runs");
  ASSERT_TRUE(runs);
  EXPECT_EQ(runs->size(), 2u);
  EXPECT_EQ((*runs)[1].second, 4u);
  EXPECT_FALSE(get_u64_pairs(j, "bad_runs"));
  EXPECT_FALSE(get_u64(json::array(), "n"));  // not an object
  EXPECT_EQ(u64_or(j, "s", 7), 7u);
  EXPECT_EQ(string_or(j, "n", "d"), "d");
}

}  // namespace
}  // namespace imgstream
