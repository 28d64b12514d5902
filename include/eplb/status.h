// Status and StatusOr: how every fallible public call of SwiftBalancer reports failure.
// No exception escapes the library; a message names the exact place (file, layer, rank, slot,
// key) and what was expected.
#pragma once

#include <cassert>
#include <string>
#include <utility>
#include <variant>

namespace eplb {

enum class StatusCode {
  kOk = 0,
  kInvalidArgument,  // bad user input: a value, a shape, a key, a file's contents
  kNotFound,         // a missing file, key or name
  kIoError,          // a file that cannot be read or written
  kFailedPrecondition,
  kDeadlineExceeded,  // a wait that timed out
  kAborted,           // a cycle abandoned (plan mismatch, peer failure)
  kInternal,
};

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return {}; }
  static Status Invalid(std::string m) { return {StatusCode::kInvalidArgument, std::move(m)}; }
  static Status NotFound(std::string m) { return {StatusCode::kNotFound, std::move(m)}; }
  static Status IoError(std::string m) { return {StatusCode::kIoError, std::move(m)}; }
  static Status Precondition(std::string m) {
    return {StatusCode::kFailedPrecondition, std::move(m)};
  }
  static Status Timeout(std::string m) { return {StatusCode::kDeadlineExceeded, std::move(m)}; }
  static Status Aborted(std::string m) { return {StatusCode::kAborted, std::move(m)}; }
  static Status Internal(std::string m) { return {StatusCode::kInternal, std::move(m)}; }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  // "invalid argument: <message>", or "ok".
  std::string ToString() const;

  // Returns a copy whose message is "<prefix>: <message>" (keeps the code).
  Status WithPrefix(const std::string& prefix) const {
    return ok() ? *this : Status(code_, prefix + ": " + message_);
  }

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// A value or the Status that explains why there is none.
template <typename T>
class [[nodiscard]] StatusOr {
 public:
  StatusOr(Status status) : v_(std::move(status)) {  // NOLINT: implicit by design
    assert(!std::get<Status>(v_).ok() && "StatusOr needs a value or an error");
  }
  StatusOr(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design

  bool ok() const { return std::holds_alternative<T>(v_); }
  Status status() const { return ok() ? Status::Ok() : std::get<Status>(v_); }

  T& value() & { return std::get<T>(v_); }
  const T& value() const& { return std::get<T>(v_); }
  T&& value() && { return std::get<T>(std::move(v_)); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }

 private:
  std::variant<Status, T> v_;
};

}  // namespace eplb

// Returns early with the status of `expr` when it is not ok.
#define EPLB_RETURN_IF_ERROR(expr)               \
  do {                                           \
    ::eplb::Status eplb_status_ = (expr);        \
    if (!eplb_status_.ok()) return eplb_status_; \
  } while (0)

#define EPLB_CONCAT_INNER_(a, b) a##b
#define EPLB_CONCAT_(a, b) EPLB_CONCAT_INNER_(a, b)
// Declares `lhs` from a StatusOr, or returns its error.
#define EPLB_ASSIGN_OR_RETURN(lhs, expr) \
  EPLB_ASSIGN_OR_RETURN_IMPL_(EPLB_CONCAT_(eplb_or_, __LINE__), lhs, expr)
#define EPLB_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(tmp).value()
