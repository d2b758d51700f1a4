// Result<T>: a value or an Error {errno, message}. Errors the environment can cause
// travel as values, never as exceptions: unwinding through a half-seized tracee is unsafe.
// The method names follow std::expected so the type can move over later.
#pragma once

#include <cerrno>
#include <cstring>
#include <sstream>
#include <string>
#include <utility>
#include <variant>

namespace kleap {

class Error {
 public:
  Error() = default;
  explicit Error(int err) : errno_(err) {}
  Error(int err, std::string msg) : errno_(err), msg_(std::move(msg)) {}

  int code() const { return errno_; }
  const std::string& message() const { return msg_; }

  // "open /x: No such file or directory"
  std::string ToString() const {
    if (errno_ == 0) return msg_;
    return msg_ + ": " + std::strerror(errno_);
  }

  // Prepends context: Error(ENOENT, "open /x").Context("task 12") -> "task 12: open /x".
  Error&& Context(const std::string& ctx) && {
    msg_ = msg_.empty() ? ctx : ctx + ": " + msg_;
    return std::move(*this);
  }

  // Appends v as a stream would. The stream's state (std::hex, std::oct, std::showbase,
  // std::setw, std::setfill) carries over from one value to the next, as it does on a
  // std::ostream: `<< "0x" << std::hex << addr` prints hex.
  template <class V>
  Error&& operator<<(const V& v) && {
    Append(v);
    return std::move(*this);
  }
  template <class V>
  Error& operator<<(const V& v) & {
    Append(v);
    return *this;
  }

 private:
  template <class V>
  void Append(const V& v) {
    std::ostringstream os;
    os.flags(flags_);
    os.width(width_);
    os.fill(fill_);
    os << v;
    msg_ += os.str();
    flags_ = os.flags();
    width_ = os.width();
    fill_ = os.fill();
  }

  int errno_ = 0;
  std::string msg_;
  std::ios_base::fmtflags flags_ = std::ios_base::dec | std::ios_base::skipws;
  std::streamsize width_ = 0;
  char fill_ = ' ';
};

// Captures errno at the call site: `return ErrnoError() << "open " << path;`
inline Error ErrnoError() {
  return Error(errno);
}
// An error with a fixed errno and no OS cause: `return Err(EINVAL) << "bad field";`
inline Error Err(int code = EINVAL) {
  return Error(code);
}

template <class T>
class [[nodiscard]] Result {
 public:
  Result(const T& v) : v_(v) {}
  Result(T&& v) : v_(std::move(v)) {}
  Result(Error e) : v_(std::move(e)) {}
  template <class U>
  requires std::is_constructible_v<T, U&&> &&
      (!std::is_same_v<std::decay_t<U>, Error>)&&(!std::is_same_v<std::decay_t<U>, Result>)
          Result(U&& u)
      : v_(T(std::forward<U>(u))) {}

  bool has_value() const { return v_.index() == 0; }
  explicit operator bool() const { return has_value(); }
  T& value() & { return std::get<0>(v_); }
  const T& value() const& { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  // By value on a temporary: `for (auto& m : *ReadMaps(pid))` must not dangle.
  T operator*() && { return std::move(value()); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  const Error& error() const& { return std::get<1>(v_); }
  Error&& error() && { return std::get<1>(std::move(v_)); }
  T value_or(T alt) const { return has_value() ? value() : alt; }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error e) : err_(std::move(e)), ok_(false) {}
  bool has_value() const { return ok_; }
  explicit operator bool() const { return ok_; }
  void value() const {}
  const Error& error() const& { return err_; }
  Error&& error() && { return std::move(err_); }

 private:
  Error err_;
  bool ok_ = true;
};

inline Result<void> Ok() {
  return {};
}

}  // namespace kleap

// Evaluates to the value of a Result, or returns its error from the enclosing function.
#define KLEAP_TRY(expr)                                                    \
  ({                                                                       \
    auto&& kleap_try_r_ = (expr);                                          \
    if (!kleap_try_r_.has_value()) return std::move(kleap_try_r_).error(); \
    std::move(kleap_try_r_).value();                                       \
  })

// Same, adding context to the error: KLEAP_TRY_CTX(f(), "task " << pid).
#define KLEAP_TRY_CTX(expr, ctx)                                           \
  ({                                                                       \
    auto&& kleap_try_r_ = (expr);                                          \
    if (!kleap_try_r_.has_value()) {                                       \
      std::ostringstream kleap_try_os_;                                    \
      kleap_try_os_ << ctx;                                                \
      return std::move(kleap_try_r_).error().Context(kleap_try_os_.str()); \
    }                                                                      \
    std::move(kleap_try_r_).value();                                       \
  })

// An always-on check for true invariants (never for input or environment errors).
#define KLEAP_CHECK(cond)                                         \
  do {                                                            \
    if (!(cond)) ::kleap::CheckFailed(__FILE__, __LINE__, #cond); \
  } while (0)

namespace kleap {
[[noreturn]] void CheckFailed(const char* file, int line, const char* cond);
}
