// The weight mover and what it works on: the engine's slot memory (WeightStore), one cycle's moves
// as seen by this rank (MovePlan), and the per-layer handshake between the mover (worker thread)
// and the commit protocol (forward thread).
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "eplb/comm.h"
#include "eplb/planner.h"
#include "eplb/status.h"

namespace eplb::runtime_internal {

// The engine's memory for every (layer, local slot): the expert's tensors as byte spans, all
// experts with the same tensor sizes. Not owned. Filled by Register() before the worker starts and
// never changed afterwards, so any thread may read the spans; the bytes behind them follow the
// rules of Controller (the mover reads, the forward thread writes at commit).
class WeightStore {
 public:
  WeightStore(int layers, int slots_per_rank);

  Status Register(int layer, int slot, std::vector<std::span<std::byte>> tensors);
  // Every slot registered?
  Status CheckComplete() const;

  size_t expert_bytes() const { return expert_bytes_; }
  const std::vector<size_t>& tensor_bytes() const { return tensor_bytes_; }
  const std::vector<std::span<std::byte>>& tensors(int layer, int slot) const {
    return tensors_[static_cast<size_t>(layer) * slots_ + slot];
  }
  // All tensors of a slot back to back into `dst` (expert_bytes()), and back.
  void Gather(int layer, int slot, std::byte* dst) const;
  void Scatter(const std::byte* src, int layer, int slot) const;

 private:
  int layers_;
  int slots_;
  std::vector<std::vector<std::span<std::byte>>> tensors_;
  std::vector<size_t> tensor_bytes_;
  size_t expert_bytes_ = 0;
};

// One layer of a cycle's transfer plan, from this rank's point of view.
struct LayerMoves {
  int tag = -1;                    // message tag of the layer; -1: nothing moves in this layer
  std::vector<ExpertCopy> copies;  // every copy of the layer, on every rank, in plan order
  std::vector<int> incoming;       // indices into `copies` with dst_rank == this rank, in order;
                                   // incoming[i] lands at staging offset i * expert_bytes
  int64_t slots_changed = 0;       // copies that bring an expert to a rank (all ranks)
  int64_t incoming_from_other_nodes = 0;  // of `incoming`, those sent from another node's rank
};

// A cycle's moves. Built by the forward thread when the ranks agree on a plan, immutable after,
// shared with the mover.
struct MovePlan {
  uint64_t cycle = 0;
  std::vector<LayerMoves> layers;
};

// Message tags for the layers of a cycle, the same on every rank (the forward thread hands them
// out at the same step everywhere, and rollbacks are decided at the same step everywhere). Tags go
// round-robin over 0..size-1, skipping tags poisoned by a rollback: a rolled-back layer may leave
// an unmatched message behind that a later receive with the same tag and source would take. A
// committed layer leaves none (every receive and every send of the layer completed, one message
// per receive), so its tag is reused.
class TagPool {
 public:
  explicit TagPool(int size = kMaxTag + 1) : poisoned_(size, false) {}
  // The next usable tag, or -1 when every tag is poisoned.
  int Next();
  void Poison(int tag);
  int usable() const { return static_cast<int>(poisoned_.size()) - poisoned_count_; }

 private:
  std::vector<bool> poisoned_;
  int next_ = 0;
  int poisoned_count_ = 0;
};

// Per-layer state of the commit protocol, as contributed to the all-reduce(min).
enum LayerState : int64_t { kFailed = -1, kPending = 0, kReady = 1 };

// One cycle's moves and the per-layer handshake between the mover (worker thread) and the commit
// protocol (forward thread). Created by the forward thread when the ranks agree on a plan and
// shared with the worker; each cycle has its own, so a mover still finishing an old cycle never
// touches the new one's state.
//
// Per layer: the mover writes the layer's staging buffer, then publishes kReady or kFailed
// (release); the forward thread reads the state (acquire), reads the staging buffer of a layer
// that is ready on every rank, writes the slots and calls Release(); the mover then frees the
// staging buffer. The mover reads a layer's source slots only between starting the layer and
// publishing its state, so a commit (which needs kReady on every rank) never races with a read.
class MoveSession {
 public:
  // Layers that move start kPending and unreleased; the others kReady and released.
  explicit MoveSession(MovePlan plan);

  const MovePlan& plan() const { return plan_; }
  LayerState state(int layer) const {
    return LayerState(gates_[layer].state.load(std::memory_order_acquire));
  }
  // Forward thread, for a layer it read as kReady: the staged experts, in LayerMoves::incoming
  // order.
  const std::vector<std::byte>& Staging(int layer) const { return staging_[layer]; }
  // Forward thread: the layer is committed or rolled back; its staging may go.
  void Release(int layer);
  // Any thread: makes a mover waiting on this session look at its stop condition again.
  void Wake();

 private:
  friend class Mover;
  struct Gate {
    std::atomic<int64_t> state{kPending};
    std::atomic<bool> released{true};
  };
  bool released(int layer) const { return gates_[layer].released.load(std::memory_order_acquire); }
  void Publish(int layer, LayerState s) { gates_[layer].state.store(s, std::memory_order_release); }

  MovePlan plan_;
  std::unique_ptr<Gate[]> gates_;
  std::vector<std::vector<std::byte>> staging_;  // per layer; see the handshake above
  std::mutex mu_;                                // guards woken_
  std::condition_variable cv_;
  bool woken_ = false;
};

// Moves the weights of one session at a time into its staging buffers.
//
// Threads: Run() on the worker thread only (one session after another); staging_bytes_peak()
// from any thread.
class Mover {
 public:
  Mover(Communicator* comm, const WeightStore* weights, int rank, int max_layers_in_flight,
        std::chrono::milliseconds timeout);

  // Posts receives (into staging) and sends (from slot memory) and does local copies, at most
  // max_layers_in_flight unreleased layers at a time in layer order, and polls them; a layer
  // whose requests all completed becomes kReady, one whose request failed or that is not done
  // after `timeout` becomes kFailed (and `on_error` hears why). Returns when every layer of the
  // session is released, or when `stopping()` is true (checked at least every 20 ms).
  void Run(MoveSession& session, const std::function<bool()>& stopping,
           const std::function<void(Status)>& on_error);

  int64_t staging_bytes_peak() const { return staging_peak_.load(std::memory_order_relaxed); }

 private:
  struct InFlight {
    int layer = 0;
    std::vector<Request> requests;
    std::chrono::steady_clock::time_point start;
  };

  Status StartLayer(MoveSession& session, int layer, InFlight* f);
  // Tests the layer's pending requests; publishes kReady or kFailed when it is decided. Returns
  // whether anything changed.
  bool Poll(MoveSession& session, InFlight& f, const std::function<void(Status)>& on_error);
  void Fail(MoveSession& session, int layer, Status why,
            const std::function<void(Status)>& on_error);
  void FreeStaging(MoveSession& session, int layer);

  Communicator* comm_;
  const WeightStore* weights_;
  int rank_;
  int max_in_flight_;
  std::chrono::milliseconds timeout_;
  int64_t staging_bytes_ = 0;  // worker thread
  std::atomic<int64_t> staging_peak_{0};
};

}  // namespace eplb::runtime_internal
