#include "cli/progress.h"

#include <gtest/gtest.h>

namespace imgstream::cli {
namespace {

TEST(FitLine, DropsTheLeastImportantFieldsFirst) {
  const std::vector<LineField> f = {{"streaming", 0}, {"42.0%", 0},   {"1/2 regions", 3},
                                    {"4.0 MB/s", 1},  {"ETA 5 s", 1}, {"demand 1 MiB", 2}};
  EXPECT_EQ(fit_line(f, 0), "streaming  42.0%  1/2 regions  4.0 MB/s  ETA 5 s  demand 1 MiB");
  EXPECT_EQ(fit_line(f, 200), fit_line(f, 0));
  EXPECT_EQ(fit_line(f, 50), "streaming  42.0%  4.0 MB/s  ETA 5 s  demand 1 MiB");
  EXPECT_EQ(fit_line(f, 40), "streaming  42.0%  4.0 MB/s  ETA 5 s");
  EXPECT_EQ(fit_line(f, 20), "streaming  42.0%");
  EXPECT_EQ(fit_line(f, 10), "streaming");  // cut: never wider than the terminal
  for (size_t w = 2; w < 80; ++w) EXPECT_LE(fit_line(f, w).size(), w - 1) << w;
}

TEST(FormatEta, ReadsWell) {
  EXPECT_EQ(format_eta(0.4), "0 s");
  EXPECT_EQ(format_eta(99), "99 s");
  EXPECT_EQ(format_eta(185), "3m05s");
  EXPECT_EQ(format_eta(7620), "2h07m");
  EXPECT_EQ(format_eta(-1), "?");
  EXPECT_EQ(format_eta(1.0 / 0.0), "?");
}

}  // namespace
}  // namespace imgstream::cli
