// The communicator: how ranks exchange load statistics (collectives) and expert weights
// (non-blocking point-to-point), with two backends: threads as ranks in one process (the embedded
// default and the tests' workhorse) and MPI processes (OpenMPI) for multi-process and multi-node
// runs.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "eplb/status.h"

namespace eplb {

// Element-wise reduction of AllReduce.
enum class ReduceOp { kSum, kMin, kMax };

// Largest tag a point-to-point message may carry; tags are 0..kMaxTag in every backend. It is the
// smallest MPI_TAG_UB that the MPI standard allows, so a program valid in-process stays valid on
// every MPI.
inline constexpr int kMaxTag = 32767;

// The state of one started operation, owned by the caller through a Request. Only the
// Communicator that started it reads it (Test/Wait); callers just hold and destroy it.
class RequestBase {
 public:
  RequestBase(const RequestBase&) = delete;
  RequestBase& operator=(const RequestBase&) = delete;
  virtual ~RequestBase() = default;

 protected:
  RequestBase() = default;
};
using Request = std::unique_ptr<RequestBase>;

// One rank's endpoint of a group of `size()` ranks.
//
// Thread safety: every member function may be called from any thread concurrently, with two
// exceptions. (1) A Request is used by one thread at a time (Test, Wait, destruction). (2)
// Collectives are matched by the order in which each rank starts them, so each rank starts its
// collectives one at a time, from one thread or threads that hand over with synchronisation, in
// the same order and with the same kind, type, op and size on every rank.
//
// Buffers and completion:
// - ISend and the collectives copy their input before they return: the caller may reuse or free
//   it at once. A send is delivered even if its Request is destroyed before it completes.
// - A send completes when the backend is done with it: in-process at once; over MPI a large
//   message (rendezvous, above a few KiB) only once the receiver has matched it, so a blocking
//   Send to a peer that has not posted its receive yet may time out although the message is
//   delivered later. Post receives before (or with) sends, as the runtime does.
// - Over MPI (OpenMPI without an asynchronous progress thread) a dropped send or collective
//   advances only while its rank keeps calling the communicator: a rank that drops one and then
//   makes no calls can leave its peers waiting until their timeouts.
// - Output buffers (IRecv's buffer, a collective's output) are written only by the Test or Wait
//   call that reports the request complete, on the calling thread; until then the buffer must
//   stay valid, and the caller must not read it. In exchange every backend pays one extra copy on
//   each side, which keeps a timed-out or abandoned request from ever writing into freed memory.
// - Messages from one source to one destination with the same tag are matched in the order they
//   were sent and the receives were posted. A receive's buffer must have exactly the size of the
//   message it matches; otherwise that receive fails with kInvalidArgument (the message is
//   consumed).
// - Destroying an incomplete Request is allowed and never blocks. A receive is cancelled (a message
//   already matched to it is discarded). A collective stays in the sequence: this rank's input
//   still counts for the other ranks and only its result is dropped, so later collectives remain
//   matched.
// - Test and Wait on a finished request repeat its outcome (true/ok, or the same error).
//
// Failure: every wait has a timeout and returns kDeadlineExceeded when it expires; the request
// stays pending and may be waited on again or destroyed. Abort() makes every pending and later
// operation fail with kAborted. A peer that is gone ends a wait with an error no later than the
// timeout; it never hangs.
//
// Requests must be destroyed before the Communicator that made them.
class Communicator {
 public:
  Communicator(const Communicator&) = delete;
  Communicator& operator=(const Communicator&) = delete;
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "in-process" or "mpi", for logs.
  virtual const char* backend() const = 0;

  // Starts sending `data` to rank `dst` with `tag` (0..kMaxTag). `data` is copied before return.
  virtual StatusOr<Request> ISend(int dst, int tag, std::span<const std::byte> data) = 0;
  // Starts receiving the next message from rank `src` with `tag` into `buffer`, which must have
  // the message's exact size and stay valid until the request completes or is destroyed.
  virtual StatusOr<Request> IRecv(int src, int tag, std::span<std::byte> buffer) = 0;

  // Starts an all-gather: every rank contributes `send` (the same size n on every rank) and
  // receives size() * n bytes in `recv`, rank r's contribution at offset r * n.
  virtual StatusOr<Request> IAllGather(std::span<const std::byte> send,
                                       std::span<std::byte> recv) = 0;
  // Starts an element-wise all-reduce of `in` into `out` (same length on every rank and for both;
  // they may alias). The in-process backend reduces in rank order, so double sums are identical
  // on every rank and every run; MPI reduces in an order of its choosing.
  virtual StatusOr<Request> IAllReduce(std::span<const int64_t> in, std::span<int64_t> out,
                                       ReduceOp op) = 0;
  virtual StatusOr<Request> IAllReduce(std::span<const double> in, std::span<double> out,
                                       ReduceOp op) = 0;

  // Returns true once `request` has completed (its output written), false while it is pending,
  // or the error that ended it. Never blocks.
  virtual StatusOr<bool> Test(Request& request) = 0;
  // Waits until `request` completes, at most `timeout`; kDeadlineExceeded leaves it pending.
  virtual Status Wait(Request& request, std::chrono::milliseconds timeout) = 0;

  // Declares that this rank will never receive `tag` again (the runtime retires the tag of a
  // layer that rolled back): messages to this rank with that tag, queued or arriving later, are
  // dropped and their memory freed (over MPI, received and dropped, which also completes the
  // senders' sends; those arriving within 60 s, far past any transfer timeout, so that polling
  // stays cheap however many tags a long run discards), instead of being kept for a receive that
  // never comes. A receive of that tag
  // still posted gets no message. The default does nothing (a backend that keeps no messages).
  virtual void DiscardTag(int tag) { (void)tag; }

  // Fails every pending and later operation of this communicator with kAborted and `reason`.
  // In-process, the whole world fails (every rank's waits wake up at once). MPI: only this
  // process's communicator; the other processes notice through their timeouts. Never kills the
  // process.
  virtual void Abort(std::string reason) = 0;

  // Waits for all of `requests` within one overall `timeout`; returns the first error, naming the
  // request's index. Requests that completed stay completed; the rest stay pending.
  Status WaitAll(std::span<Request> requests, std::chrono::milliseconds timeout);

  // Blocking forms: start, then Wait. On a timeout or error the request is destroyed (see above:
  // a receive is cancelled, a collective keeps its place in the sequence).
  Status Send(int dst, int tag, std::span<const std::byte> data, std::chrono::milliseconds timeout);
  Status Recv(int src, int tag, std::span<std::byte> buffer, std::chrono::milliseconds timeout);
  Status AllGather(std::span<const std::byte> send, std::span<std::byte> recv,
                   std::chrono::milliseconds timeout);
  Status AllReduce(std::span<const int64_t> in, std::span<int64_t> out, ReduceOp op,
                   std::chrono::milliseconds timeout);
  Status AllReduce(std::span<const double> in, std::span<double> out, ReduceOp op,
                   std::chrono::milliseconds timeout);

 protected:
  Communicator() = default;
};

// A world of `size` ranks that are threads of this process; element r is rank r. Each element
// may be moved to its own thread. Returns an empty vector when size < 1. Ranks' communicators may
// be destroyed in any order; a rank whose communicator is destroyed counts as gone for the others.
std::vector<std::unique_ptr<Communicator>> MakeInProcessWorld(int size);

// This process's rank among the processes started by mpirun. Initialises MPI with
// MPI_THREAD_MULTIPLE when it is not initialised yet (an error when that level is not provided),
// and duplicates MPI_COMM_WORLD. When this library initialised MPI, the last communicator made
// here finalises it in its destructor. Without MPI support built in (EPLB_WITH_MPI=OFF) it
// returns kFailedPrecondition.
StatusOr<std::unique_ptr<Communicator>> MakeMpiCommunicator(int* argc, char*** argv);

// "sum", "min" or "max".
const char* ReduceOpName(ReduceOp op);

}  // namespace eplb
