// Helpers shared by the communicator backends: argument checks with messages that name the rank,
// peer and tag, deadlines that do not overflow, and element-wise reductions.
#pragma once

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <span>
#include <string>

#include "eplb/comm.h"
#include "eplb/status.h"

namespace eplb::comm_internal {

using Clock = std::chrono::steady_clock;

// now + timeout, saturating: a negative timeout means "now", a huge one means "in a year".
inline Clock::time_point DeadlineAfter(std::chrono::milliseconds timeout) {
  constexpr std::chrono::milliseconds kMax = std::chrono::hours(24 * 365);
  return Clock::now() + std::clamp(timeout, std::chrono::milliseconds(0), kMax);
}

// "<what> on rank <rank>", the prefix of every message about one call.
inline std::string Where(const char* what, int rank) {
  return std::string(what) + " on rank " + std::to_string(rank);
}

inline Status CheckPeer(const char* what, int rank, int size, const char* role, int peer) {
  if (peer < 0 || peer >= size) {
    return Status::Invalid(Where(what, rank) + ": " + role + " rank " + std::to_string(peer) +
                           " is outside 0.." + std::to_string(size - 1));
  }
  return Status::Ok();
}

inline Status CheckTag(const char* what, int rank, int tag) {
  if (tag < 0 || tag > kMaxTag) {
    return Status::Invalid(Where(what, rank) + ": tag " + std::to_string(tag) + " is outside 0.." +
                           std::to_string(kMaxTag));
  }
  return Status::Ok();
}

inline Status CheckAllGatherSizes(int rank, int size, std::size_t send_bytes,
                                  std::size_t recv_bytes) {
  if (recv_bytes != send_bytes * static_cast<std::size_t>(size)) {
    return Status::Invalid(Where("IAllGather", rank) + ": receive buffer has " +
                           std::to_string(recv_bytes) + " bytes, expected size " +
                           std::to_string(size) + " x " + std::to_string(send_bytes) + " = " +
                           std::to_string(send_bytes * static_cast<std::size_t>(size)));
  }
  return Status::Ok();
}

inline Status CheckAllReduceSizes(int rank, std::size_t in_count, std::size_t out_count) {
  if (in_count != out_count) {
    return Status::Invalid(Where("IAllReduce", rank) + ": input has " + std::to_string(in_count) +
                           " elements, output has " + std::to_string(out_count));
  }
  return Status::Ok();
}

// acc[i] = op(acc[i], x[i]) for every i; acc and x have the same length.
template <typename T>
void ReduceInto(ReduceOp op, std::span<T> acc, std::span<const T> x) {
  for (std::size_t i = 0; i < acc.size(); ++i) {
    switch (op) {
      case ReduceOp::kSum:
        acc[i] += x[i];
        break;
      case ReduceOp::kMin:
        if (x[i] < acc[i]) acc[i] = x[i];
        break;
      case ReduceOp::kMax:
        if (acc[i] < x[i]) acc[i] = x[i];
        break;
    }
  }
}

}  // namespace eplb::comm_internal
