// The backend-independent part of Communicator: blocking forms built on the non-blocking ones.
#include <string>

#include "comm/internal/common.h"
#include "eplb/comm.h"

namespace eplb {

using comm_internal::Clock;

const char* ReduceOpName(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return "sum";
    case ReduceOp::kMin:
      return "min";
    case ReduceOp::kMax:
      return "max";
  }
  return "unknown";
}

Status Communicator::WaitAll(std::span<Request> requests, std::chrono::milliseconds timeout) {
  const Clock::time_point deadline = comm_internal::DeadlineAfter(timeout);
  for (std::size_t i = 0; i < requests.size(); ++i) {
    const auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now());
    Status s = Wait(requests[i], left);
    if (!s.ok()) {
      return s.WithPrefix("WaitAll on rank " + std::to_string(rank()) + ", request " +
                          std::to_string(i) + " of " + std::to_string(requests.size()));
    }
  }
  return Status::Ok();
}

Status Communicator::Send(int dst, int tag, std::span<const std::byte> data,
                          std::chrono::milliseconds timeout) {
  EPLB_ASSIGN_OR_RETURN(Request request, ISend(dst, tag, data));
  return Wait(request, timeout);
}

Status Communicator::Recv(int src, int tag, std::span<std::byte> buffer,
                          std::chrono::milliseconds timeout) {
  EPLB_ASSIGN_OR_RETURN(Request request, IRecv(src, tag, buffer));
  return Wait(request, timeout);
}

Status Communicator::AllGather(std::span<const std::byte> send, std::span<std::byte> recv,
                               std::chrono::milliseconds timeout) {
  EPLB_ASSIGN_OR_RETURN(Request request, IAllGather(send, recv));
  return Wait(request, timeout);
}

Status Communicator::AllReduce(std::span<const int64_t> in, std::span<int64_t> out, ReduceOp op,
                               std::chrono::milliseconds timeout) {
  EPLB_ASSIGN_OR_RETURN(Request request, IAllReduce(in, out, op));
  return Wait(request, timeout);
}

Status Communicator::AllReduce(std::span<const double> in, std::span<double> out, ReduceOp op,
                               std::chrono::milliseconds timeout) {
  EPLB_ASSIGN_OR_RETURN(Request request, IAllReduce(in, out, op));
  return Wait(request, timeout);
}

}  // namespace eplb
