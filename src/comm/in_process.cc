// The in-process backend: ranks are threads of one process sharing a World.
//
// Point-to-point: a mailbox per (source, destination) pair holds, under its mutex and per tag,
// the messages sent and not yet matched and the receives posted and not yet matched; at most one
// of the two queues is non-empty, and a tag's entry is erased when both are, so memory does not
// grow with the number of tags ever used. ISend copies the bytes into a message and hands it to
// the oldest posted receive or queues it; IRecv takes the oldest queued message or queues itself.
// So matching is FIFO per (source, destination, tag), and a receive's bytes reach its buffer only
// in the Test/Wait of its owner.
//
// Collectives: each rank numbers its collectives 0, 1, 2, ...; collective number g of every rank
// meets in Round g of a map guarded by one mutex. The last rank to arrive computes the result
// (concatenation, or a reduction in rank order); each rank copies it out in its own Test/Wait, and
// the round is erased once every rank has copied it out or dropped its request.
#include <atomic>
#include <cassert>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "comm/internal/common.h"
#include "eplb/comm.h"

namespace eplb {
namespace {

using comm_internal::Clock;
using comm_internal::Where;
using Deadline = std::optional<Clock::time_point>;

// A posted receive. Both fields are guarded by the mailbox's mutex; once `matched` is true the
// sender has finished with it and `payload` belongs to the receive's owner.
struct PendingRecv {
  bool matched = false;
  std::vector<std::byte> payload;
};

struct TagQueues {
  std::deque<std::vector<std::byte>> messages;        // sent, not yet matched
  std::deque<std::shared_ptr<PendingRecv>> receives;  // posted, not yet matched
};

struct Mailbox {
  std::mutex mu;
  std::condition_variable cv;       // a receive was matched (any tag), or abort / gone changed
  std::map<int, TagQueues> by_tag;  // guarded by mu; no entry with both queues empty
  std::set<int> discarded;          // guarded by mu; tags the destination will never receive
};

enum class CollKind { kAllGather, kAllReduceInt64, kAllReduceDouble };

// What one rank asked for in a collective; every rank of a round must ask for the same.
struct CollSignature {
  CollKind kind = CollKind::kAllGather;
  ReduceOp op = ReduceOp::kSum;
  std::size_t bytes = 0;  // input bytes per rank

  bool operator==(const CollSignature&) const = default;

  std::string ToString() const {
    switch (kind) {
      case CollKind::kAllGather:
        return "AllGather of " + std::to_string(bytes) + " bytes per rank";
      case CollKind::kAllReduceInt64:
        return std::string("AllReduce(") + ReduceOpName(op) + ") of " +
               std::to_string(bytes / sizeof(int64_t)) + " int64";
      case CollKind::kAllReduceDouble:
        return std::string("AllReduce(") + ReduceOpName(op) + ") of " +
               std::to_string(bytes / sizeof(double)) + " double";
    }
    return "?";
  }
};

// Collective number g of every rank. Guarded by World::coll_mu.
struct Round {
  bool started = false;
  CollSignature signature;  // of the first rank to arrive
  int first_rank = -1;
  std::vector<std::vector<std::byte>> inputs;  // per rank; cleared once the result is computed
  std::vector<char> arrived;                   // per rank
  int num_arrived = 0;
  bool done = false;  // result or error is final
  Status error;
  std::vector<std::byte> result;
  int released = 0;  // ranks that copied the result out or dropped their request
};

template <typename T>
std::vector<std::byte> ReduceInRankOrder(ReduceOp op, const std::vector<std::vector<std::byte>>& in,
                                         std::size_t bytes) {
  const std::size_t n = bytes / sizeof(T);
  std::vector<T> acc(n);
  std::vector<T> x(n);
  if (n > 0) std::memcpy(acc.data(), in[0].data(), bytes);
  for (std::size_t r = 1; r < in.size(); ++r) {
    if (n > 0) std::memcpy(x.data(), in[r].data(), bytes);
    comm_internal::ReduceInto<T>(op, acc, x);
  }
  std::vector<std::byte> out(bytes);
  if (n > 0) std::memcpy(out.data(), acc.data(), bytes);
  return out;
}

// Everything the ranks of one in-process world share.
class World {
 public:
  explicit World(int size)
      : size_(size), gone_(size), boxes_(static_cast<std::size_t>(size) * size) {}

  int size() const { return size_; }

  Mailbox& Box(int src, int dst) { return boxes_[static_cast<std::size_t>(src) * size_ + dst]; }

  bool aborted() const { return aborted_.load(std::memory_order_acquire); }
  bool gone(int rank) const { return gone_[rank].load(std::memory_order_acquire); }

  // The error of any operation described by `where` once the world is aborted.
  Status AbortStatus(const std::string& where) {
    std::lock_guard lock(state_mu_);
    return Status::Aborted(where + ": " + abort_reason_);
  }

  void Abort(int rank, std::string reason) {
    {
      std::lock_guard lock(state_mu_);
      if (abort_reason_.empty()) {
        abort_reason_ = "the in-process world was aborted by rank " + std::to_string(rank) + ": " +
                        std::move(reason);
      }
    }
    aborted_.store(true, std::memory_order_release);
    WakeAll();
  }

  void Leave(int rank) {
    gone_[rank].store(true, std::memory_order_release);
    WakeAll();
  }

  // The lowest rank that has not joined `round` and is gone, or -1. Needs coll_mu.
  int MissingAndGone(const Round& round) const {
    for (int r = 0; r < size_; ++r) {
      if (!round.arrived[r] && gone(r)) return r;
    }
    return -1;
  }

  std::mutex coll_mu;
  std::condition_variable coll_cv;
  std::map<int64_t, Round> rounds;  // guarded by coll_mu

 private:
  // Wakes every waiter so that it re-reads the abort and gone flags. Each mutex is taken once
  // after the flag was stored, so a waiter either saw the flag or is already waiting.
  void WakeAll() {
    for (Mailbox& box : boxes_) {
      { std::lock_guard lock(box.mu); }
      box.cv.notify_all();
    }
    { std::lock_guard lock(coll_mu); }
    coll_cv.notify_all();
  }

  const int size_;
  std::vector<std::atomic<bool>> gone_;  // per rank: its communicator was destroyed
  std::atomic<bool> aborted_{false};
  std::mutex state_mu_;
  std::string abort_reason_;    // guarded by state_mu_
  std::vector<Mailbox> boxes_;  // [src * size + dst]
};

// The base of this backend's requests: keeps the outcome once the request has finished.
class InProcRequest : public RequestBase {
 public:
  InProcRequest(std::shared_ptr<World> world, int rank) : world_(std::move(world)), rank_(rank) {}

  const World* world() const { return world_.get(); }
  int rank() const { return rank_; }

  // Finishes the request if it can, waiting until `deadline` when one is given. Returns whether
  // it has finished, or the error it finished with.
  StatusOr<bool> Advance(Deadline deadline) {
    if (!finished_) finished_ = Progress(deadline, &outcome_);
    if (!finished_) return false;
    if (!outcome_.ok()) return outcome_;
    return true;
  }

  // Names the operation in messages: "IRecv on rank 0 from rank 1 tag 5".
  virtual std::string Describe() const = 0;

 protected:
  // Returns true when the request has finished, with *outcome set.
  virtual bool Progress(Deadline deadline, Status* outcome) = 0;

  std::shared_ptr<World> world_;
  const int rank_;

 private:
  bool finished_ = false;
  Status outcome_;
};

// A send: complete once ISend has handed the copied bytes to the mailbox.
class SendRequest final : public InProcRequest {
 public:
  SendRequest(std::shared_ptr<World> world, int rank, int dst, int tag)
      : InProcRequest(std::move(world), rank), dst_(dst), tag_(tag) {}

  std::string Describe() const override {
    return Where("ISend", rank_) + " to rank " + std::to_string(dst_) + " tag " +
           std::to_string(tag_);
  }

 protected:
  bool Progress(Deadline, Status* outcome) override {
    *outcome = Status::Ok();
    return true;
  }

 private:
  const int dst_;
  const int tag_;
};

class RecvRequest final : public InProcRequest {
 public:
  RecvRequest(std::shared_ptr<World> world, int rank, int src, int tag,
              std::shared_ptr<PendingRecv> pending, std::span<std::byte> buffer)
      : InProcRequest(std::move(world), rank),
        src_(src),
        tag_(tag),
        box_(&world_->Box(src, rank)),
        pending_(std::move(pending)),
        buffer_(buffer) {}

  // Cancels a receive that no message has matched yet, so that no later message is given to it.
  ~RecvRequest() override {
    std::lock_guard lock(box_->mu);
    if (pending_->matched) return;
    auto queues = box_->by_tag.find(tag_);
    if (queues == box_->by_tag.end()) return;
    std::erase(queues->second.receives, pending_);
    if (queues->second.receives.empty() && queues->second.messages.empty()) {
      box_->by_tag.erase(queues);
    }
  }

  std::string Describe() const override {
    return Where("IRecv", rank_) + " from rank " + std::to_string(src_) + " tag " +
           std::to_string(tag_);
  }

 protected:
  bool Progress(Deadline deadline, Status* outcome) override {
    std::vector<std::byte> payload;
    {
      std::unique_lock lock(box_->mu);
      if (deadline) {
        box_->cv.wait_until(lock, *deadline, [&] {
          return pending_->matched || world_->aborted() || world_->gone(src_);
        });
      }
      if (world_->aborted()) {
        *outcome = world_->AbortStatus(Describe());
        return true;
      }
      if (!pending_->matched) {
        if (!world_->gone(src_)) return false;
        *outcome = Status::Aborted(Describe() + ": rank " + std::to_string(src_) +
                                   " is gone (its communicator was destroyed) and sent no "
                                   "message that this receive can match");
        return true;
      }
      payload = std::move(pending_->payload);
    }
    if (payload.size() != buffer_.size()) {
      *outcome =
          Status::Invalid(Describe() + ": the message has " + std::to_string(payload.size()) +
                          " bytes, the receive buffer " + std::to_string(buffer_.size()));
      return true;
    }
    if (!payload.empty()) std::memcpy(buffer_.data(), payload.data(), payload.size());
    *outcome = Status::Ok();
    return true;
  }

 private:
  const int src_;
  const int tag_;
  Mailbox* box_;  // owned by world_
  std::shared_ptr<PendingRecv> pending_;
  std::span<std::byte> buffer_;
};

class CollectiveRequest final : public InProcRequest {
 public:
  CollectiveRequest(std::shared_ptr<World> world, int rank, int64_t generation,
                    CollSignature signature, std::span<std::byte> out)
      : InProcRequest(std::move(world), rank),
        generation_(generation),
        signature_(signature),
        out_(out) {}

  // Drops this rank's claim on the result; its input still counts for the others.
  ~CollectiveRequest() override {
    if (released_) return;
    std::lock_guard lock(world_->coll_mu);
    Release(world_->rounds.find(generation_));
  }

  std::string Describe() const override {
    return Where(signature_.ToString().c_str(), rank_) + " (collective #" +
           std::to_string(generation_) + ")";
  }

 protected:
  bool Progress(Deadline deadline, Status* outcome) override {
    std::unique_lock lock(world_->coll_mu);
    auto it = world_->rounds.find(generation_);
    assert(it != world_->rounds.end() && "a round lives until every rank released it");
    Round& round = it->second;
    if (deadline) {
      world_->coll_cv.wait_until(lock, *deadline, [&] {
        return round.done || world_->aborted() || world_->MissingAndGone(round) >= 0;
      });
    }
    if (world_->aborted()) {
      *outcome = world_->AbortStatus(Describe());
    } else if (!round.done) {
      const int missing = world_->MissingAndGone(round);
      if (missing < 0) return false;
      *outcome = Status::Aborted(Describe() + ": rank " + std::to_string(missing) +
                                 " is gone (its communicator was destroyed) before joining");
    } else if (!round.error.ok()) {
      *outcome = round.error;
    } else {
      assert(round.result.size() == out_.size());
      if (!out_.empty()) std::memcpy(out_.data(), round.result.data(), out_.size());
      *outcome = Status::Ok();
    }
    Release(it);
    return true;
  }

 private:
  // Needs coll_mu.
  void Release(std::map<int64_t, Round>::iterator it) {
    released_ = true;
    if (++it->second.released == world_->size()) world_->rounds.erase(it);
  }

  const int64_t generation_;
  const CollSignature signature_;
  std::span<std::byte> out_;
  bool released_ = false;
};

class InProcessCommunicator final : public Communicator {
 public:
  InProcessCommunicator(std::shared_ptr<World> world, int rank)
      : world_(std::move(world)), rank_(rank) {}
  ~InProcessCommunicator() override { world_->Leave(rank_); }

  int rank() const override { return rank_; }
  int size() const override { return world_->size(); }
  const char* backend() const override { return "in-process"; }

  StatusOr<Request> ISend(int dst, int tag, std::span<const std::byte> data) override {
    EPLB_RETURN_IF_ERROR(comm_internal::CheckPeer("ISend", rank_, size(), "destination", dst));
    EPLB_RETURN_IF_ERROR(comm_internal::CheckTag("ISend", rank_, tag));
    auto request = std::make_unique<SendRequest>(world_, rank_, dst, tag);
    if (world_->aborted()) return world_->AbortStatus(request->Describe());
    if (world_->gone(dst)) {
      return Status::Aborted(request->Describe() + ": rank " + std::to_string(dst) +
                             " is gone (its communicator was destroyed)");
    }
    std::vector<std::byte> bytes(data.begin(), data.end());
    Mailbox& box = world_->Box(rank_, dst);
    bool matched = false;
    {
      std::lock_guard lock(box.mu);
      if (box.discarded.contains(tag)) return Request(std::move(request));  // dropped
      TagQueues& queues = box.by_tag[tag];
      if (!queues.receives.empty()) {
        std::shared_ptr<PendingRecv> receive = std::move(queues.receives.front());
        queues.receives.pop_front();
        receive->payload = std::move(bytes);
        receive->matched = true;
        matched = true;
        if (queues.receives.empty()) box.by_tag.erase(tag);
      } else {
        queues.messages.push_back(std::move(bytes));
      }
    }
    if (matched) box.cv.notify_all();
    return Request(std::move(request));
  }

  void DiscardTag(int tag) override {
    for (int src = 0; src < size(); ++src) {
      Mailbox& box = world_->Box(src, rank_);
      std::lock_guard lock(box.mu);
      box.discarded.insert(tag);
      const auto it = box.by_tag.find(tag);
      if (it == box.by_tag.end()) continue;
      it->second.messages.clear();
      if (it->second.receives.empty()) box.by_tag.erase(it);
    }
  }

  StatusOr<Request> IRecv(int src, int tag, std::span<std::byte> buffer) override {
    EPLB_RETURN_IF_ERROR(comm_internal::CheckPeer("IRecv", rank_, size(), "source", src));
    EPLB_RETURN_IF_ERROR(comm_internal::CheckTag("IRecv", rank_, tag));
    Mailbox& box = world_->Box(src, rank_);
    auto pending = std::make_shared<PendingRecv>();
    {
      std::lock_guard lock(box.mu);
      TagQueues& queues = box.by_tag[tag];
      if (!queues.messages.empty()) {
        pending->payload = std::move(queues.messages.front());
        queues.messages.pop_front();
        pending->matched = true;
        if (queues.messages.empty()) box.by_tag.erase(tag);
      } else {
        queues.receives.push_back(pending);
      }
    }
    return Request(
        std::make_unique<RecvRequest>(world_, rank_, src, tag, std::move(pending), buffer));
  }

  StatusOr<Request> IAllGather(std::span<const std::byte> send,
                               std::span<std::byte> recv) override {
    EPLB_RETURN_IF_ERROR(
        comm_internal::CheckAllGatherSizes(rank_, size(), send.size(), recv.size()));
    return StartCollective({CollKind::kAllGather, ReduceOp::kSum, send.size()}, send, recv);
  }

  StatusOr<Request> IAllReduce(std::span<const int64_t> in, std::span<int64_t> out,
                               ReduceOp op) override {
    EPLB_RETURN_IF_ERROR(comm_internal::CheckAllReduceSizes(rank_, in.size(), out.size()));
    return StartCollective({CollKind::kAllReduceInt64, op, in.size_bytes()}, std::as_bytes(in),
                           std::as_writable_bytes(out));
  }

  StatusOr<Request> IAllReduce(std::span<const double> in, std::span<double> out,
                               ReduceOp op) override {
    EPLB_RETURN_IF_ERROR(comm_internal::CheckAllReduceSizes(rank_, in.size(), out.size()));
    return StartCollective({CollKind::kAllReduceDouble, op, in.size_bytes()}, std::as_bytes(in),
                           std::as_writable_bytes(out));
  }

  StatusOr<bool> Test(Request& request) override {
    EPLB_ASSIGN_OR_RETURN(InProcRequest * own, Own(request, "Test"));
    return own->Advance(std::nullopt);
  }

  Status Wait(Request& request, std::chrono::milliseconds timeout) override {
    EPLB_ASSIGN_OR_RETURN(InProcRequest * own, Own(request, "Wait"));
    EPLB_ASSIGN_OR_RETURN(bool done, own->Advance(comm_internal::DeadlineAfter(timeout)));
    if (done) return Status::Ok();
    return Status::Timeout(own->Describe() + ": not complete after " +
                           std::to_string(timeout.count()) + " ms");
  }

  void Abort(std::string reason) override { world_->Abort(rank_, std::move(reason)); }

 private:
  // The request as this backend's type, when this communicator started it.
  StatusOr<InProcRequest*> Own(Request& request, const char* what) const {
    auto* own = dynamic_cast<InProcRequest*>(request.get());
    if (request == nullptr) {
      return Status::Invalid(Where(what, rank_) + ": the request is empty");
    }
    if (own == nullptr || own->world() != world_.get() || own->rank() != rank_) {
      return Status::Invalid(Where(what, rank_) +
                             ": the request was started by another communicator");
    }
    return own;
  }

  StatusOr<Request> StartCollective(CollSignature signature, std::span<const std::byte> input,
                                    std::span<std::byte> out) {
    if (world_->aborted()) {
      return world_->AbortStatus(Where(signature.ToString().c_str(), rank_));
    }
    const int64_t generation = next_collective_.fetch_add(1, std::memory_order_relaxed);
    const int n = size();
    bool notify = false;
    {
      std::lock_guard lock(world_->coll_mu);
      Round& round = world_->rounds[generation];
      if (!round.started) {
        round.started = true;
        round.signature = signature;
        round.first_rank = rank_;
        round.inputs.resize(n);
        round.arrived.assign(n, 0);
      } else if (!round.done && !(round.signature == signature)) {
        round.error = Status::Invalid(
            "collective #" + std::to_string(generation) + ": rank " +
            std::to_string(round.first_rank) + " started " + round.signature.ToString() +
            " but rank " + std::to_string(rank_) + " started " + signature.ToString() +
            "; every rank must start the same collectives in the same order");
        round.done = true;
        notify = true;
      }
      round.inputs[rank_].assign(input.begin(), input.end());
      round.arrived[rank_] = 1;
      if (++round.num_arrived == n && !round.done) {
        Finish(round);
        notify = true;
      }
    }
    if (notify) world_->coll_cv.notify_all();
    return Request(std::make_unique<CollectiveRequest>(world_, rank_, generation, signature, out));
  }

  // Computes a round's result once every rank's input is in. Needs coll_mu.
  static void Finish(Round& round) {
    const std::size_t bytes = round.signature.bytes;
    switch (round.signature.kind) {
      case CollKind::kAllGather:
        round.result.reserve(bytes * round.inputs.size());
        for (const auto& input : round.inputs) {
          round.result.insert(round.result.end(), input.begin(), input.end());
        }
        break;
      case CollKind::kAllReduceInt64:
        round.result = ReduceInRankOrder<int64_t>(round.signature.op, round.inputs, bytes);
        break;
      case CollKind::kAllReduceDouble:
        round.result = ReduceInRankOrder<double>(round.signature.op, round.inputs, bytes);
        break;
    }
    round.inputs.clear();
    round.inputs.shrink_to_fit();
    round.done = true;
  }

  std::shared_ptr<World> world_;
  const int rank_;
  std::atomic<int64_t> next_collective_{0};
};

}  // namespace

std::vector<std::unique_ptr<Communicator>> MakeInProcessWorld(int size) {
  std::vector<std::unique_ptr<Communicator>> ranks;
  if (size < 1) return ranks;
  auto world = std::make_shared<World>(size);
  ranks.reserve(size);
  for (int r = 0; r < size; ++r) {
    ranks.push_back(std::make_unique<InProcessCommunicator>(world, r));
  }
  return ranks;
}

}  // namespace eplb
