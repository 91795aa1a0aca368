#include "base/result.h"

#include <gtest/gtest.h>

#include <cstring>
#include <memory>
#include <string>

namespace imgstream {
namespace {

Result<int> parse_digit(char c) {
  if (c < '0' || c > '9') return Error::invalid(std::string("not a digit: ") + c);
  return c - '0';
}

// TRY yields the value or returns the error.
Result<int> add_digits(char a, char b) {
  int x = TRY(parse_digit(a));
  int y = TRY(parse_digit(b));
  return x + y;
}

Result<void> check_digit(char c) {
  TRY(parse_digit(c));
  return ok();
}

Result<int> digit_with_context(char c) {
  int v = TRY_CTX(parse_digit(c), "reading the header");
  return v;
}

Result<void> void_chain(char c) {
  TRY_CTX(check_digit(c), "step one");
  TRY(check_digit(c));
  return ok();
}

int evaluations = 0;
Result<int> counted() {
  ++evaluations;
  return 7;
}

TEST(Result, HoldsAValue) {
  Result<int> r = 42;
  ASSERT_TRUE(r.has_value());
  EXPECT_TRUE(static_cast<bool>(r));
  EXPECT_EQ(r.value(), 42);
  EXPECT_EQ(*r, 42);
  EXPECT_EQ(r.value_or(1), 42);
}

TEST(Result, HoldsAnError) {
  Result<int> r = Error::from_errno(ENOENT, "open x");
  ASSERT_FALSE(r.has_value());
  EXPECT_FALSE(static_cast<bool>(r));
  EXPECT_EQ(r.error().code, ENOENT);
  EXPECT_EQ(r.error().message, std::string("open x: ") + errno_text(ENOENT));
  EXPECT_EQ(r.value_or(1), 1);
}

TEST(Result, UnexpectedMarksTheError) {
  Result<std::string> r = Unexpected(Error::io("disk on fire"));
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EIO);
  EXPECT_EQ(r.error().message, "disk on fire");
}

TEST(Result, ArrowAndMoveOnlyValues) {
  Result<std::string> s = std::string("abc");
  EXPECT_EQ(s->size(), 3u);
  Result<std::unique_ptr<int>> p = std::make_unique<int>(5);
  ASSERT_TRUE(p);
  std::unique_ptr<int> owned = std::move(p).value();
  EXPECT_EQ(*owned, 5);
}

TEST(Result, ErrorCanBeMovedOut) {
  Result<int> r = Error::invalid("bad");
  Error e = std::move(r).error();
  EXPECT_EQ(e.code, EINVAL);
  EXPECT_EQ(e.message, "bad");
}

TEST(Result, VoidResult) {
  Result<void> good = ok();
  EXPECT_TRUE(good.has_value());
  good.value();  // does not abort
  Result<void> bad = Error::from_errno(ENOSPC, "write");
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, ENOSPC);
  Result<void> bad2 = Unexpected(Error::io("x"));
  EXPECT_FALSE(bad2.has_value());
}

TEST(Result, ErrorHelpers) {
  EXPECT_EQ(Error::invalid("x").code, EINVAL);
  EXPECT_EQ(Error::io("x").code, EIO);
  Error wb = Error::would_block();
  EXPECT_TRUE(wb.is_would_block());
  EXPECT_FALSE(Error::io("x").is_would_block());
  Error def;
  EXPECT_EQ(def.code, EIO);  // a default error is still an error
}

TEST(Result, ContextPrefixes) {
  Error e = Error::from_errno(ENOENT, "open x").context("loading store");
  EXPECT_EQ(e.code, ENOENT);  // the code is kept exact
  EXPECT_EQ(e.message, std::string("loading store: open x: ") + errno_text(ENOENT));
  Error twice = Error::io("inner").context("middle").context("outer");
  EXPECT_EQ(twice.message, "outer: middle: inner");
}

TEST(Try, YieldsTheValue) {
  Result<int> r = add_digits('3', '4');
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, 7);
}

TEST(Try, ReturnsTheFirstError) {
  Result<int> r = add_digits('3', 'x');
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL);
  EXPECT_EQ(r.error().message, "not a digit: x");
  r = add_digits('y', 'x');
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().message, "not a digit: y");
}

TEST(Try, EvaluatesItsExpressionOnce) {
  auto f = []() -> Result<int> { return TRY(counted()) + TRY(counted()); };
  evaluations = 0;
  Result<int> r = f();
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, 14);
  EXPECT_EQ(evaluations, 2);
}

TEST(Try, WorksInVoidFunctionsAndOnVoidResults) {
  EXPECT_TRUE(check_digit('1'));
  Result<void> r = check_digit('z');
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error().code, EINVAL);
  EXPECT_TRUE(void_chain('5'));
  Result<void> chained = void_chain('q');
  ASSERT_FALSE(chained);
  EXPECT_EQ(chained.error().message, "step one: not a digit: q");
}

TEST(Try, ContextIsAddedOnlyOnError) {
  Result<int> good = digit_with_context('9');
  ASSERT_TRUE(good);
  EXPECT_EQ(*good, 9);
  Result<int> bad = digit_with_context('!');
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, EINVAL);
  EXPECT_EQ(bad.error().message, "reading the header: not a digit: !");
}

TEST(Try, MovesMoveOnlyValues) {
  auto make = []() -> Result<std::unique_ptr<int>> { return std::make_unique<int>(3); };
  auto use = [&]() -> Result<int> {
    std::unique_ptr<int> p = TRY(make());
    return *p;
  };
  Result<int> r = use();
  ASSERT_TRUE(r);
  EXPECT_EQ(*r, 3);
}

using ResultDeathTest = testing::Test;

TEST_F(ResultDeathTest, ValueOfAnErrorStopsTheProcess) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  Result<int> r = Error::io("boom");
  EXPECT_DEATH((void)r.value(), "assertion failed");
  Result<int> v = 1;
  EXPECT_DEATH((void)v.error(), "assertion failed");
  Result<void> e = Error::io("boom");
  EXPECT_DEATH(e.value(), "assertion failed");
}

}  // namespace
}  // namespace imgstream
