// A small logger: one line per message on stderr, "imgstream: LEVEL: text". The level is
// process-wide, set once from the CLI (-v / -q); messages under it cost a load and a branch.
//
// Thread safety: any thread may log; g_level is an atomic read relaxed on every call and
// written by set_log_level (the CLI, tests); each message is one write(2), so lines from
// different threads never interleave. No lock is held.
#pragma once

#include <fmt/format.h>

#include <atomic>
#include <string_view>

namespace imgstream {

enum class LogLevel { Debug = 0, Info = 1, Warn = 2, Error = 3, Off = 4 };

namespace log_detail {
extern std::atomic<int> g_level;
void emit(LogLevel level, std::string_view text);
}  // namespace log_detail

inline void set_log_level(LogLevel l) { log_detail::g_level.store(static_cast<int>(l)); }
inline bool log_enabled(LogLevel l) {
  return static_cast<int>(l) >= log_detail::g_level.load(std::memory_order_relaxed);
}

template <typename... Args>
void log(LogLevel level, fmt::format_string<Args...> f, Args&&... args) {
  if (!log_enabled(level)) return;
  log_detail::emit(level, fmt::format(f, std::forward<Args>(args)...));
}

#define LOG_DEBUG(...) ::imgstream::log(::imgstream::LogLevel::Debug, __VA_ARGS__)
#define LOG_INFO(...) ::imgstream::log(::imgstream::LogLevel::Info, __VA_ARGS__)
#define LOG_WARN(...) ::imgstream::log(::imgstream::LogLevel::Warn, __VA_ARGS__)
#define LOG_ERROR(...) ::imgstream::log(::imgstream::LogLevel::Error, __VA_ARGS__)

}  // namespace imgstream
