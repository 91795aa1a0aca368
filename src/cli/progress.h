// Progress on a terminal. Progress: a line on stderr for long work (pack, unpack,
// verify): percent, bytes, MB/s, at most ten updates a second, only when stderr is a
// terminal (logs stay clean). fit_line / terminal_columns: a redrawn line that never
// wraps (status --watch, migrate), since a line wider than the terminal wraps and each
// redraw (\r) then scrolls a new copy instead of replacing the last.
#pragma once

#include <fmt/format.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "base/units.h"

namespace imgstream::cli {

// The width of the terminal on `fd` (TIOCGWINSZ), or 0 when it is not a terminal or
// does not say.
inline size_t terminal_columns(int fd) {
  winsize w{};
  if (::ioctl(fd, TIOCGWINSZ, &w) != 0) return 0;
  return w.ws_col;
}

// One field of a line; fields of a higher `drop_order` go first when the line is too wide.
struct LineField {
  std::string text;
  int drop_order = 0;  // 0: kept always (cut at the width if it must)
};

// The fields in order, two spaces apart, leaving out those of the highest drop_order
// until the line fits in `width` - 1 columns (the last column left free: a line that
// reaches it wraps on some terminals). 0: no limit. ASCII text assumed (a byte a column).
inline std::string fit_line(const std::vector<LineField>& fields, size_t width) {
  std::vector<bool> keep(fields.size(), true);
  auto join = [&] {
    std::string line;
    for (size_t i = 0; i < fields.size(); ++i) {
      if (!keep[i] || fields[i].text.empty()) continue;
      if (!line.empty()) line += "  ";
      line += fields[i].text;
    }
    return line;
  };
  std::string line = join();
  while (width > 0 && line.size() > width - 1) {
    size_t worst = fields.size();
    for (size_t i = 0; i < fields.size(); ++i)
      if (keep[i] && fields[i].drop_order > 0 &&
          (worst == fields.size() || fields[i].drop_order > fields[worst].drop_order))
        worst = i;
    if (worst == fields.size()) {
      line.resize(width - 1);
      break;
    }
    keep[worst] = false;
    line = join();
  }
  return line;
}

// "42 s", "3m05s", "2h07m"; "?" for none.
inline std::string format_eta(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const uint64_t s = static_cast<uint64_t>(std::llround(seconds));
  if (s < 100) return fmt::format("{} s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  if (s < 100 * 3600) return fmt::format("{}h{:02}m", s / 3600, s / 60 % 60);
  return fmt::format("{} h", s / 3600);
}

class Progress {
 public:
  Progress(std::string what, bool quiet = false)
      : what_(std::move(what)), on_(!quiet && ::isatty(STDERR_FILENO)) {}
  ~Progress() { finish(); }

  void update(uint64_t done, uint64_t total) {
    if (!on_) return;
    const auto now = std::chrono::steady_clock::now();
    if (done < total && now - last_ < std::chrono::milliseconds(100)) return;
    last_ = now;
    const double s = std::chrono::duration<double>(now - start_).count();
    std::fprintf(stderr, "\r%s %5.1f%%  %s / %s  %.1f MB/s\033[K", what_.c_str(),
                 total ? 100.0 * double(done) / double(total) : 100.0, format_size(done).c_str(),
                 format_size(total).c_str(), s > 0 ? double(done) / s / 1e6 : 0.0);
    shown_ = true;
  }
  void finish() {
    if (shown_) std::fprintf(stderr, "\n");
    shown_ = false;
  }
  double seconds() const {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }

 private:
  std::string what_;
  bool on_;
  bool shown_ = false;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_{};
};

}  // namespace imgstream::cli
