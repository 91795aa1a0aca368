// Assertions that stay on in release builds (TigerBeetle style): a broken invariant
// stops the process with the place and the expression, before it can write wrong data.
#pragma once

namespace imgstream {
[[noreturn]] void check_failed(const char* expr, const char* file, int line, const char* msg);
}

#define IMG_CHECK(cond)                                                        \
  do {                                                                         \
    if (!(cond)) [[unlikely]]                                                  \
      ::imgstream::check_failed(#cond, __FILE__, __LINE__, nullptr);           \
  } while (0)

#define IMG_CHECK_MSG(cond, msg)                                               \
  do {                                                                         \
    if (!(cond)) [[unlikely]]                                                  \
      ::imgstream::check_failed(#cond, __FILE__, __LINE__, (msg));             \
  } while (0)
