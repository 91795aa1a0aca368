// Errors as values: Result<T> holds either a T or an Error, with the surface of
// std::expected (which g++ 12 lacks in C++20). TRY(expr) returns the error from the
// enclosing function, or yields the value. No exceptions are thrown by our code.
#pragma once

#include <cerrno>
#include <string>
#include <string_view>
#include <utility>
#include <variant>

#include "base/check.h"

namespace imgstream {

// An error is an errno value (the NBD protocol and the kernel both speak errno, so we keep
// the code exact all the way to the wire) plus a message for humans saying what failed
// on which input.
// strerror(err), but thread-safe (strerror_r): errors are made on pool threads too.
std::string errno_text(int err);

struct Error {
  int code = EIO;
  std::string message;

  static Error from_errno(int err, std::string_view what);
  static Error invalid(std::string_view what) { return Error{EINVAL, std::string(what)}; }
  static Error io(std::string_view what) { return Error{EIO, std::string(what)}; }
  // "The operation would have to wait": a fast path declines and the caller takes
  // the slow one. Not a failure.
  static Error would_block() { return Error{EAGAIN, "would block"}; }
  bool is_would_block() const { return code == EAGAIN; }

  // Prefixes context: Error::from_errno(ENOENT, "open x").context("loading store")
  // gives "loading store: open x: No such file or directory".
  Error context(std::string_view what) &&;
};

// Wrapper that marks a value as the error alternative, like std::unexpected.
struct Unexpected {
  Error error;
  explicit Unexpected(Error e) : error(std::move(e)) {}
};

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT
  Result(Unexpected u) : v_(std::in_place_index<1>, std::move(u.error)) {}  // NOLINT
  Result(Error e) : v_(std::in_place_index<1>, std::move(e)) {}  // NOLINT

  bool has_value() const { return v_.index() == 0; }
  explicit operator bool() const { return has_value(); }

  T& value() & { IMG_CHECK(has_value()); return std::get<0>(v_); }
  const T& value() const& { IMG_CHECK(has_value()); return std::get<0>(v_); }
  T&& value() && { IMG_CHECK(has_value()); return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

  const Error& error() const& { IMG_CHECK(!has_value()); return std::get<1>(v_); }
  Error&& error() && { IMG_CHECK(!has_value()); return std::get<1>(std::move(v_)); }

  T value_or(T fallback) const& { return has_value() ? std::get<0>(v_) : std::move(fallback); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Unexpected u) : err_(std::move(u.error)), ok_(false) {}  // NOLINT
  Result(Error e) : err_(std::move(e)), ok_(false) {}  // NOLINT

  bool has_value() const { return ok_; }
  explicit operator bool() const { return ok_; }
  void value() const { IMG_CHECK(ok_); }
  const Error& error() const& { IMG_CHECK(!ok_); return err_; }
  Error&& error() && { IMG_CHECK(!ok_); return std::move(err_); }

 private:
  Error err_{0, {}};
  bool ok_ = true;
};

inline Result<void> ok() { return {}; }

}  // namespace imgstream

// TRY(expr): evaluate a Result; on error return it from the current function, otherwise
// the expression's value is the contained value (GNU statement expression, as
// SerenityOS's TRY).
#define TRY(expr)                                                          \
  ({                                                                       \
    auto _img_try_result = (expr);                                         \
    if (!_img_try_result) [[unlikely]]                                     \
      return ::imgstream::Unexpected(std::move(_img_try_result).error());  \
    std::move(_img_try_result).value();                                    \
  })

// TRY_CTX(expr, "what"): as TRY, adding context to the error message.
#define TRY_CTX(expr, what)                                                          \
  ({                                                                                 \
    auto _img_try_result = (expr);                                                   \
    if (!_img_try_result) [[unlikely]]                                               \
      return ::imgstream::Unexpected(std::move(_img_try_result).error().context(what)); \
    std::move(_img_try_result).value();                                              \
  })
