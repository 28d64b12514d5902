#include "eplb/status.h"

namespace eplb {

std::string Status::ToString() const {
  const char* name = "ok";
  switch (code_) {
    case StatusCode::kOk:
      return "ok";
    case StatusCode::kInvalidArgument:
      name = "invalid argument";
      break;
    case StatusCode::kNotFound:
      name = "not found";
      break;
    case StatusCode::kIoError:
      name = "i/o error";
      break;
    case StatusCode::kFailedPrecondition:
      name = "failed precondition";
      break;
    case StatusCode::kDeadlineExceeded:
      name = "deadline exceeded";
      break;
    case StatusCode::kAborted:
      name = "aborted";
      break;
    case StatusCode::kInternal:
      name = "internal";
      break;
  }
  return std::string(name) + ": " + message_;
}

}  // namespace eplb
