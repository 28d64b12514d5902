// The MPI backend: one process per rank, on a duplicate of MPI_COMM_WORLD.
//
// Every operation is an MPI non-blocking call on buffers this backend owns (a copy of the input,
// a buffer for the output), so a request the caller drops or abandons after a timeout can never
// make MPI touch the caller's memory: its buffers move to the communicator's orphan list, which is
// polled until MPI completes them. Wait polls MPI_Test, which also drives MPI's progress, with a
// short yield or sleep between polls.
//
// Receives are matched with MPI_Improbe and received with MPI_Imrecv into a buffer of the
// message's own size: a posted MPI_Irecv smaller than its message is not safe in OpenMPI 4.1
// (a rendezvous message, above ~4 KiB, is written whole past the end of the posted buffer, the
// heap corrupted, while MPI_Test reports the truncation). Posted receives of one (source, tag)
// wait in a queue in posting order, and whichever of them is polled matches the messages that
// have arrived to the queue's head first, so messages still match receives in the order both
// were made, whatever the order of the polls.
#include <memory>
#include <string>

#include "comm/internal/common.h"
#include "eplb/comm.h"

#ifdef EPLB_HAVE_MPI

#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <climits>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <thread>
#include <utility>
#include <vector>

namespace eplb {
namespace {

using comm_internal::Clock;
using comm_internal::Where;

std::string MpiError(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) length = 0;
  return std::string(text, length) + " (MPI error " + std::to_string(code) + ")";
}

const char* ThreadLevelName(int level) {
  switch (level) {
    case MPI_THREAD_SINGLE:
      return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED:
      return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED:
      return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE:
      return "MPI_THREAD_MULTIPLE";
  }
  return "an unknown thread level";
}

// Process-wide: whether this library initialised MPI (then it finalises it when its last
// communicator is destroyed) and how many of its communicators are alive.
struct MpiLifetime {
  std::mutex mu;
  bool we_initialized = false;  // guarded by mu
  int live = 0;                 // guarded by mu
};

MpiLifetime& Lifetime() {
  static MpiLifetime* lifetime = new MpiLifetime();  // never destroyed: used from destructors
  return *lifetime;
}

// One started MPI operation and the buffers MPI reads or writes; they live until MPI completes
// the operation, even when the caller has dropped its request.
struct MpiOp {
  MPI_Request request = MPI_REQUEST_NULL;
  std::vector<std::byte> in;   // the caller's input, copied (sends, collectives)
  std::vector<std::byte> out;  // MPI's output (receives: sized to the message, collectives)
};

// A posted receive, queued by (source, tag) until a message is matched to it.
struct RecvSlot {
  int src = 0;
  int tag = 0;
  MpiOp* op = nullptr;  // the request's; its MPI request is the MPI_Imrecv once matched
  bool matched = false;
  int count = 0;            // the matched message's bytes
  int error = MPI_SUCCESS;  // MPI_Imrecv's error, if it failed
};

// The next message from src (or MPI_ANY_SOURCE) with tag, if one has arrived: matched, and
// received with MPI_Imrecv into op->out sized to it. Returns the MPI error of the probe or the
// receive (MPI_SUCCESS also when none has arrived; then *count is -1).
int ReceiveNext(MPI_Comm comm, int src, int tag, MpiOp& op, int* count) {
  *count = -1;
  int flag = 0;
  MPI_Message message = MPI_MESSAGE_NULL;
  MPI_Status status;
  if (const int rc = MPI_Improbe(src, tag, comm, &flag, &message, &status); rc != MPI_SUCCESS) {
    return rc;
  }
  if (!flag) return MPI_SUCCESS;
  MPI_Get_count(&status, MPI_BYTE, count);
  op.out.resize(static_cast<std::size_t>(std::max(*count, 0)));
  return MPI_Imrecv(op.out.data(), *count, MPI_BYTE, &message, &op.request);
}

// What a communicator shares with its requests.
class MpiCore {
 public:
  MpiCore(MPI_Comm comm, int rank, int size) : comm_(comm), rank_(rank), size_(size) {}

  MPI_Comm comm() const { return comm_; }
  int rank() const { return rank_; }
  int size() const { return size_; }

  bool aborted() const { return aborted_.load(std::memory_order_acquire); }
  Status AbortStatus(const std::string& where) {
    std::lock_guard lock(mu_);
    return Status::Aborted(where + ": " + abort_reason_);
  }
  void Abort(std::string reason) {
    {
      std::lock_guard lock(mu_);
      if (abort_reason_.empty()) {
        abort_reason_ = "the MPI communicator of rank " + std::to_string(rank_) +
                        " was aborted: " + std::move(reason);
      }
    }
    aborted_.store(true, std::memory_order_release);
  }

  // Takes over an operation whose request the caller dropped before it completed (a receive
  // only once matched: Unqueue drops one that is not).
  void Adopt(std::unique_ptr<MpiOp> op) {
    std::lock_guard lock(mu_);
    if (closed_) {
      // MPI may be finalised; leaking the buffers is the only safe thing left to do.
      op.release();  // NOLINT(bugprone-unused-return-value): intentional leak
      return;
    }
    orphans_.push_back(std::move(op));
    orphan_count_.store(static_cast<int>(orphans_.size()), std::memory_order_relaxed);
  }

  // Queues a posted receive behind the earlier ones of its source and tag.
  void Enqueue(RecvSlot* slot) {
    std::lock_guard lock(mu_);
    waiting_[{slot->src, slot->tag}].push_back(slot);
  }

  // Takes a receive out of its queue if no message was matched to it yet (then nothing of it is
  // left in MPI, and the next message goes to the next receive); returns whether it was queued.
  bool Unqueue(RecvSlot* slot) {
    std::lock_guard lock(mu_);
    const auto it = waiting_.find({slot->src, slot->tag});
    if (it == waiting_.end()) return false;
    const auto at = std::find(it->second.begin(), it->second.end(), slot);
    if (at == it->second.end()) return false;
    it->second.erase(at);
    if (it->second.empty()) waiting_.erase(it);
    return true;
  }

  // Matches the messages that have arrived from slot's source with its tag to that queue's
  // receives, oldest first, and returns whether slot has its message now. Each is received with
  // MPI_Imrecv into slot->op->out sized to the message.
  StatusOr<bool> Match(RecvSlot* slot) {
    std::lock_guard lock(mu_);
    if (slot->matched) return true;
    // A discarded tag's messages are drained, never matched.
    if (discarded_.contains(slot->tag)) return false;
    const auto it = waiting_.find({slot->src, slot->tag});
    if (it == waiting_.end()) return slot->matched;
    std::deque<RecvSlot*>& queue = it->second;
    while (!queue.empty()) {
      RecvSlot* head = queue.front();
      int count = -1;
      const int rc = ReceiveNext(comm_, slot->src, slot->tag, *head->op, &count);
      if (count < 0) {
        if (rc != MPI_SUCCESS) return Status::Internal("MPI_Improbe failed: " + MpiError(rc));
        break;  // nothing more has arrived
      }
      queue.pop_front();
      head->count = count;
      head->error = rc;
      head->matched = true;
    }
    const bool matched = slot->matched;
    if (queue.empty()) waiting_.erase(it);
    return matched;
  }

  // Frees the orphans MPI has completed, and (at most once a millisecond) receives and drops the
  // messages of discarded tags that have arrived.
  void PollOrphans() {
    if (draining_count_.load(std::memory_order_relaxed) > 0) {
      std::lock_guard lock(mu_);
      const Clock::time_point now = Clock::now();
      if (now >= next_drain_) {
        next_drain_ = now + std::chrono::milliseconds(1);
        DrainLocked();
      }
    }
    if (orphan_count_.load(std::memory_order_relaxed) == 0) return;
    std::lock_guard lock(mu_);
    PollOrphansLocked();
  }

  // This rank never receives `tag` again: what arrives with it is received and dropped.
  void Discard(int tag) {
    std::lock_guard lock(mu_);
    if (closed_ || !discarded_.insert(tag).second) return;
    draining_.emplace_back(tag, Clock::now() + kDrainFor);
    draining_count_.store(static_cast<int>(draining_.size()), std::memory_order_relaxed);
    DrainLocked();
  }

  // Called once by the communicator's destructor: gives the orphans up to `grace` to complete,
  // frees the duplicated communicator, and from then on leaks late orphans.
  void Close(std::chrono::milliseconds grace) {
    const Clock::time_point deadline = comm_internal::DeadlineAfter(grace);
    std::lock_guard lock(mu_);
    while (!orphans_.empty() && Clock::now() < deadline) {
      PollOrphansLocked();
      if (!orphans_.empty()) std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    for (auto& op : orphans_) op.release();  // NOLINT: MPI may still write into them
    orphans_.clear();
    MPI_Comm_free(&comm_);
    closed_ = true;
  }

 private:
  // Each message of a discarded tag that has arrived is received as an orphan (its buffer freed
  // once MPI completes it), which also completes its sender's send.
  void DrainLocked() {
    if (closed_) return;
    // A tag is drained for kDrainFor after it was discarded (messages sent before the layer
    // rolled back arrive within the transfer timeout): the polls' cost stays bounded however
    // many tags a long run discards.
    const Clock::time_point now = Clock::now();
    while (!draining_.empty() && draining_.front().second < now) draining_.pop_front();
    draining_count_.store(static_cast<int>(draining_.size()), std::memory_order_relaxed);
    for (const auto& [tag, until] : draining_) {
      while (true) {
        auto op = std::make_unique<MpiOp>();
        int count = -1;
        const int rc = ReceiveNext(comm_, MPI_ANY_SOURCE, tag, *op, &count);
        if (count < 0) break;  // nothing more has arrived (or the probe failed)
        if (rc != MPI_SUCCESS) {
          op.release();  // NOLINT: in an unknown state after an error, so never freed
          continue;
        }
        orphans_.push_back(std::move(op));
      }
    }
    orphan_count_.store(static_cast<int>(orphans_.size()), std::memory_order_relaxed);
  }

  void PollOrphansLocked() {
    std::erase_if(orphans_, [](std::unique_ptr<MpiOp>& op) {
      int flag = 0;
      if (MPI_Test(&op->request, &flag, MPI_STATUS_IGNORE) != MPI_SUCCESS) {
        op.release();  // NOLINT: in an unknown state after an error, so never freed
        return true;
      }
      return flag != 0;
    });
    orphan_count_.store(static_cast<int>(orphans_.size()), std::memory_order_relaxed);
  }

  MPI_Comm comm_;
  const int rank_;
  const int size_;
  std::atomic<bool> aborted_{false};
  std::atomic<int> orphan_count_{0};
  std::mutex mu_;
  std::string abort_reason_;                     // guarded by mu_
  bool closed_ = false;                          // guarded by mu_
  std::vector<std::unique_ptr<MpiOp>> orphans_;  // guarded by mu_
  // Posted receives not matched yet, per (source, tag), in posting order; guarded by mu_.
  std::map<std::pair<int, int>, std::deque<RecvSlot*>> waiting_;
  std::set<int> discarded_;  // guarded by mu_: tags this rank never receives again
  // guarded by mu_: the discarded tags still drained, and until when (in discard order)
  std::deque<std::pair<int, Clock::time_point>> draining_;
  std::atomic<int> draining_count_{0};
  static constexpr std::chrono::seconds kDrainFor{60};
  Clock::time_point next_drain_{};  // guarded by mu_
};

class MpiRequest final : public RequestBase {
 public:
  enum class Kind { kSend, kRecv, kCollective };

  MpiRequest(std::shared_ptr<MpiCore> core, Kind kind, std::string description,
             std::unique_ptr<MpiOp> op, std::span<std::byte> out)
      : core_(std::move(core)),
        kind_(kind),
        description_(std::move(description)),
        op_(std::move(op)),
        out_(out) {}

  // A receive of `out.size()` bytes from src with tag, queued behind the earlier ones.
  static std::unique_ptr<MpiRequest> Receive(std::shared_ptr<MpiCore> core, std::string description,
                                             int src, int tag, std::span<std::byte> out) {
    auto r = std::make_unique<MpiRequest>(std::move(core), Kind::kRecv, std::move(description),
                                          std::make_unique<MpiOp>(), out);
    r->slot_.src = src;
    r->slot_.tag = tag;
    r->slot_.op = r->op_.get();
    r->core_->Enqueue(&r->slot_);
    return r;
  }

  ~MpiRequest() override {
    // A receive without a message yet leaves its queue; once matched, its message is received
    // (and dropped) as an orphan.
    if (kind_ == Kind::kRecv && op_ != nullptr && core_->Unqueue(&slot_)) op_.reset();
    if (op_ != nullptr) core_->Adopt(std::move(op_));
  }

  const MpiCore* core() const { return core_.get(); }
  const std::string& description() const { return description_; }

  // Whether the operation has finished, or the error it finished with. Never blocks.
  StatusOr<bool> Poll() {
    if (!finished_) finished_ = Progress();
    if (!finished_) return false;
    if (!outcome_.ok()) return outcome_;
    return true;
  }

 private:
  bool Progress() {
    if (core_->aborted()) {
      outcome_ = core_->AbortStatus(description_);
      return true;
    }
    if (kind_ == Kind::kRecv && !matched_) {
      const StatusOr<bool> matched = core_->Match(&slot_);
      if (!matched.ok()) {
        outcome_ = matched.status().WithPrefix(description_);
        return true;
      }
      if (!*matched) return false;
      matched_ = true;  // slot_'s fields were set under the core's lock, before Match returned
      if (slot_.error != MPI_SUCCESS) {
        op_.release();  // NOLINT: in an unknown state after an error, so never freed
        outcome_ = Status::Internal(description_ + ": MPI_Imrecv failed: " + MpiError(slot_.error));
        return true;
      }
    }
    int flag = 0;
    MPI_Status status;
    const int rc = MPI_Test(&op_->request, &flag, &status);
    if (rc != MPI_SUCCESS) {
      int error_class = MPI_ERR_OTHER;
      MPI_Error_class(rc, &error_class);
      if (error_class == MPI_ERR_TRUNCATE) {
        op_.reset();  // a truncated receive has completed
        outcome_ = Status::Invalid(description_ + ": the message is larger than the receive " +
                                   "buffer of " + std::to_string(out_.size()) + " bytes");
      } else {
        op_.release();  // NOLINT: in an unknown state after an error, so never freed
        outcome_ = Status::Internal(description_ + ": MPI_Test failed: " + MpiError(rc));
      }
      return true;
    }
    if (!flag) return false;
    if (kind_ == Kind::kRecv && static_cast<std::size_t>(slot_.count) != out_.size()) {
      op_.reset();  // received whole into a buffer of its own size, and dropped
      outcome_ = Status::Invalid(description_ + ": the message has " + std::to_string(slot_.count) +
                                 " bytes, the receive buffer " + std::to_string(out_.size()));
      return true;
    }
    if (kind_ != Kind::kSend && !out_.empty()) {
      std::memcpy(out_.data(), op_->out.data(), out_.size());
    }
    op_.reset();
    outcome_ = Status::Ok();
    return true;
  }

  std::shared_ptr<MpiCore> core_;
  const Kind kind_;
  const std::string description_;
  std::unique_ptr<MpiOp> op_;  // null once MPI completed it
  std::span<std::byte> out_;
  RecvSlot slot_;         // receives: the queue entry (its address is queued: never moved)
  bool matched_ = false;  // receives: whether Match gave slot_ its message
  bool finished_ = false;
  Status outcome_;
};

MPI_Op ToMpi(ReduceOp op) {
  switch (op) {
    case ReduceOp::kSum:
      return MPI_SUM;
    case ReduceOp::kMin:
      return MPI_MIN;
    case ReduceOp::kMax:
      return MPI_MAX;
  }
  return MPI_SUM;
}

Status CheckCount(const std::string& where, std::size_t count, const char* unit) {
  if (count > static_cast<std::size_t>(INT_MAX)) {
    return Status::Invalid(where + ": " + std::to_string(count) + " " + unit +
                           " exceed the MPI limit of " + std::to_string(INT_MAX));
  }
  return Status::Ok();
}

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(std::shared_ptr<MpiCore> core) : core_(std::move(core)) {}

  ~MpiCommunicator() override {
    core_->Close(std::chrono::seconds(2));
    MpiLifetime& lifetime = Lifetime();
    std::lock_guard lock(lifetime.mu);
    if (--lifetime.live == 0 && lifetime.we_initialized) {
      MPI_Finalize();
      lifetime.we_initialized = false;
    }
  }

  int rank() const override { return core_->rank(); }
  int size() const override { return core_->size(); }
  const char* backend() const override { return "mpi"; }

  StatusOr<Request> ISend(int dst, int tag, std::span<const std::byte> data) override {
    EPLB_RETURN_IF_ERROR(comm_internal::CheckPeer("ISend", rank(), size(), "destination", dst));
    EPLB_RETURN_IF_ERROR(comm_internal::CheckTag("ISend", rank(), tag));
    const std::string where =
        Where("ISend", rank()) + " to rank " + std::to_string(dst) + " tag " + std::to_string(tag);
    EPLB_RETURN_IF_ERROR(CheckCount(where, data.size(), "bytes"));
    auto op = std::make_unique<MpiOp>();
    op->in.assign(data.begin(), data.end());
    EPLB_RETURN_IF_ERROR(Start(where, [&] {
      return MPI_Isend(op->in.data(), static_cast<int>(op->in.size()), MPI_BYTE, dst, tag,
                       core_->comm(), &op->request);
    }));
    return Request(std::make_unique<MpiRequest>(core_, MpiRequest::Kind::kSend, where,
                                                std::move(op), std::span<std::byte>()));
  }

  void DiscardTag(int tag) override { core_->Discard(tag); }

  StatusOr<Request> IRecv(int src, int tag, std::span<std::byte> buffer) override {
    EPLB_RETURN_IF_ERROR(comm_internal::CheckPeer("IRecv", rank(), size(), "source", src));
    EPLB_RETURN_IF_ERROR(comm_internal::CheckTag("IRecv", rank(), tag));
    const std::string where = Where("IRecv", rank()) + " from rank " + std::to_string(src) +
                              " tag " + std::to_string(tag);
    EPLB_RETURN_IF_ERROR(CheckCount(where, buffer.size(), "bytes"));
    if (core_->aborted()) return core_->AbortStatus(where);
    core_->PollOrphans();
    return Request(MpiRequest::Receive(core_, where, src, tag, buffer));
  }

  StatusOr<Request> IAllGather(std::span<const std::byte> send,
                               std::span<std::byte> recv) override {
    EPLB_RETURN_IF_ERROR(
        comm_internal::CheckAllGatherSizes(rank(), size(), send.size(), recv.size()));
    const std::string where =
        Where("IAllGather", rank()) + " of " + std::to_string(send.size()) + " bytes per rank";
    EPLB_RETURN_IF_ERROR(CheckCount(where, recv.size(), "bytes"));
    auto op = std::make_unique<MpiOp>();
    op->in.assign(send.begin(), send.end());
    op->out.resize(recv.size());
    EPLB_RETURN_IF_ERROR(Start(where, [&] {
      const int n = static_cast<int>(op->in.size());
      return MPI_Iallgather(op->in.data(), n, MPI_BYTE, op->out.data(), n, MPI_BYTE, core_->comm(),
                            &op->request);
    }));
    return Request(std::make_unique<MpiRequest>(core_, MpiRequest::Kind::kCollective, where,
                                                std::move(op), recv));
  }

  StatusOr<Request> IAllReduce(std::span<const int64_t> in, std::span<int64_t> out,
                               ReduceOp op) override {
    return StartAllReduce(std::as_bytes(in), std::as_writable_bytes(out), in.size(), out.size(),
                          MPI_INT64_T, "int64", op);
  }

  StatusOr<Request> IAllReduce(std::span<const double> in, std::span<double> out,
                               ReduceOp op) override {
    return StartAllReduce(std::as_bytes(in), std::as_writable_bytes(out), in.size(), out.size(),
                          MPI_DOUBLE, "double", op);
  }

  StatusOr<bool> Test(Request& request) override {
    EPLB_ASSIGN_OR_RETURN(MpiRequest * own, Own(request, "Test"));
    core_->PollOrphans();
    return own->Poll();
  }

  Status Wait(Request& request, std::chrono::milliseconds timeout) override {
    EPLB_ASSIGN_OR_RETURN(MpiRequest * own, Own(request, "Wait"));
    const Clock::time_point deadline = comm_internal::DeadlineAfter(timeout);
    for (int polls = 0;; ++polls) {
      // Every poll: a rank that waits still drains the messages of its discarded tags, which
      // its peers' sends may be waiting for.
      core_->PollOrphans();
      EPLB_ASSIGN_OR_RETURN(bool done, own->Poll());
      if (done) return Status::Ok();
      if (Clock::now() >= deadline) {
        return Status::Timeout(own->description() + ": not complete after " +
                               std::to_string(timeout.count()) + " ms");
      }
      // Spin politely first (most waits end within microseconds), then back off to a sleep
      // that still keeps the latency well under a millisecond.
      if (polls < 64) {
        std::this_thread::yield();
      } else {
        const int shift = std::min(polls - 64, 5);
        std::this_thread::sleep_for(std::chrono::microseconds(10 << shift));
      }
    }
  }

  void Abort(std::string reason) override { core_->Abort(std::move(reason)); }

 private:
  StatusOr<MpiRequest*> Own(Request& request, const char* what) const {
    if (request == nullptr) {
      return Status::Invalid(Where(what, rank()) + ": the request is empty");
    }
    auto* own = dynamic_cast<MpiRequest*>(request.get());
    if (own == nullptr || own->core() != core_.get()) {
      return Status::Invalid(Where(what, rank()) +
                             ": the request was started by another communicator");
    }
    return own;
  }

  // Runs `call` (an MPI non-blocking start) unless the communicator is aborted.
  template <typename Call>
  Status Start(const std::string& where, Call call) {
    if (core_->aborted()) return core_->AbortStatus(where);
    core_->PollOrphans();
    const int rc = call();
    if (rc != MPI_SUCCESS) return Status::Internal(where + ": " + MpiError(rc));
    return Status::Ok();
  }

  StatusOr<Request> StartAllReduce(std::span<const std::byte> in, std::span<std::byte> out,
                                   std::size_t in_count, std::size_t out_count, MPI_Datatype type,
                                   const char* type_name, ReduceOp reduce) {
    EPLB_RETURN_IF_ERROR(comm_internal::CheckAllReduceSizes(rank(), in_count, out_count));
    const std::string where = Where("IAllReduce", rank()) + "(" + ReduceOpName(reduce) + ") of " +
                              std::to_string(in_count) + " " + type_name;
    EPLB_RETURN_IF_ERROR(CheckCount(where, in_count, "elements"));
    auto op = std::make_unique<MpiOp>();
    op->in.assign(in.begin(), in.end());
    op->out.resize(out.size());
    EPLB_RETURN_IF_ERROR(Start(where, [&] {
      return MPI_Iallreduce(op->in.data(), op->out.data(), static_cast<int>(in_count), type,
                            ToMpi(reduce), core_->comm(), &op->request);
    }));
    return Request(std::make_unique<MpiRequest>(core_, MpiRequest::Kind::kCollective, where,
                                                std::move(op), out));
  }

  std::shared_ptr<MpiCore> core_;
};

}  // namespace

StatusOr<std::unique_ptr<Communicator>> MakeMpiCommunicator(int* argc, char*** argv) {
  MpiLifetime& lifetime = Lifetime();
  std::lock_guard lock(lifetime.mu);
  int finalized = 0;
  MPI_Finalized(&finalized);
  if (finalized) {
    return Status::Precondition(
        "MakeMpiCommunicator: MPI was already finalized in this process and cannot be "
        "initialised again");
  }
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) {
    int provided = MPI_THREAD_SINGLE;
    const int rc = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
    if (rc != MPI_SUCCESS) {
      return Status::Internal("MakeMpiCommunicator: MPI_Init_thread failed: " + MpiError(rc));
    }
    if (provided < MPI_THREAD_MULTIPLE) {
      MPI_Finalize();
      return Status::Precondition(
          std::string("MakeMpiCommunicator: MPI_Init_thread provided ") +
          ThreadLevelName(provided) +
          ", the communicator needs MPI_THREAD_MULTIPLE (build OpenMPI with thread support)");
    }
    lifetime.we_initialized = true;
  } else {
    int provided = MPI_THREAD_SINGLE;
    MPI_Query_thread(&provided);
    if (provided < MPI_THREAD_MULTIPLE) {
      return Status::Precondition(
          std::string("MakeMpiCommunicator: MPI was initialised elsewhere with ") +
          ThreadLevelName(provided) +
          ", the communicator needs MPI_THREAD_MULTIPLE (initialise with MPI_Init_thread)");
    }
  }
  // Balances a failure below: finalise only what this call initialised and nobody uses.
  auto fail = [&](Status status) -> Status {
    if (lifetime.live == 0 && lifetime.we_initialized) {
      MPI_Finalize();
      lifetime.we_initialized = false;
    }
    return status;
  };
  MPI_Comm comm = MPI_COMM_NULL;
  int rc = MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  if (rc != MPI_SUCCESS) {
    return fail(Status::Internal("MakeMpiCommunicator: MPI_Comm_dup failed: " + MpiError(rc)));
  }
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  int rank = 0;
  int size = 0;
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  void* tag_ub = nullptr;
  int has_tag_ub = 0;
  MPI_Comm_get_attr(comm, MPI_TAG_UB, &tag_ub, &has_tag_ub);
  if (has_tag_ub && *static_cast<int*>(tag_ub) < kMaxTag) {
    const int ub = *static_cast<int*>(tag_ub);
    MPI_Comm_free(&comm);
    return fail(Status::Precondition("MakeMpiCommunicator: MPI_TAG_UB is " + std::to_string(ub) +
                                     ", below the " + std::to_string(kMaxTag) +
                                     " the MPI standard guarantees"));
  }
  ++lifetime.live;
  return std::unique_ptr<Communicator>(
      std::make_unique<MpiCommunicator>(std::make_shared<MpiCore>(comm, rank, size)));
}

}  // namespace eplb

#else  // !EPLB_HAVE_MPI

namespace eplb {

StatusOr<std::unique_ptr<Communicator>> MakeMpiCommunicator(int*, char***) {
  return Status::Precondition(
      "MakeMpiCommunicator: MPI support was not built; configure with -DEPLB_WITH_MPI=ON and an "
      "MPI installation (e.g. OpenMPI) to use it");
}

}  // namespace eplb

#endif  // EPLB_HAVE_MPI
