// The runtime: the per-rank controller an inference engine drives from its forward loop.
//
// The cycle (see DESIGN.md): the engine records tokens per local slot after dispatch; every
// expert_heat_collection_interval steps the per-slot loads are all-gathered; a background worker
// computes the new placement and the transfer plan; ranks agree on a hash of the plan; the worker
// moves expert weights with non-blocking point-to-point transfers into staging buffers while the
// engine keeps running; at a step boundary, once every rank holds a layer's new weights, every
// rank switches that layer at the same step and publishes a new routing snapshot (epoch + 1).
//
// Step-determinism: every collective is started by the forward thread at a step number that is
// the same on every rank and completed one step later, so every decision that must agree (use
// this plan, commit this layer, roll it back) is taken at the same step everywhere.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "eplb/comm.h"
#include "eplb/config.h"
#include "eplb/placement.h"
#include "eplb/status.h"

namespace eplb {

// The model as the runtime sees it.
struct ModelInfo {
  int layers = 0;   // MoE layers
  int experts = 0;  // logical experts per layer
  int nodes = 1;    // nodes the ranks are spread over (rank / (ranks / nodes) is the node)
};

// An immutable routing snapshot of one layer. The engine may keep it for as long as it likes; the
// runtime never changes a published snapshot, it publishes a new one.
struct LayerRouting {
  int layer = 0;
  uint64_t epoch = 0;  // 0 for the initial placement, +1 per commit of this layer
  int ranks = 0;
  int slots_per_rank = 0;
  std::vector<int> phy2log;     // ranks * slots_per_rank logical ids
  RoutingTable log2phy;         // per logical expert, its physical slots in rank order
  std::vector<int> expert_map;  // this rank: logical expert -> local slot, or -1
};

// Per-cycle and running metrics. A snapshot; safe to copy.
struct RuntimeMetrics {
  int64_t cycles = 0;  // cycles whose plan was applied (all layers committed or rolled back)
  int64_t cycles_skipped = 0;  // plan-hash mismatches and cycles with nothing to change
  int64_t layers_committed = 0;
  int64_t layers_rolled_back = 0;  // a transfer failed or timed out on some rank
  int64_t slots_changed_total = 0;
  int64_t bytes_moved_total = 0;          // received by this rank (local copies included)
  double last_balancedness_before = 1.0;  // of the observed load on the placement in use
  double last_balancedness_after = 1.0;   // of the same load on the new placement
  double last_max_mean_ratio = 1.0;       // max / mean rank load before (1 / balancedness)
  std::vector<double> last_layer_balancedness_before;
  std::vector<double> last_layer_balancedness_after;
  int64_t last_slots_changed = 0;
  int64_t last_bytes_moved = 0;
  double last_algorithm_ms = 0;  // algorithm + transfer planning on the worker
  double last_transfer_ms = 0;   // from the start of the moves to the last commit
  double algorithm_seconds_total = 0;
  double transfer_seconds_total = 0;
  double hook_seconds_total = 0;  // forward-thread time spent in Step() and RecordLoad()
  int64_t steps = 0;
};

// Prometheus text exposition of the metrics (eplb_balancedness, eplb_expert_load_balance_ratio,
// eplb_rebalance_cycles_total, eplb_slots_changed_total, eplb_bytes_moved_total,
// eplb_algorithm_seconds, eplb_transfer_seconds, ...), labelled with the rank.
std::string PrometheusText(const RuntimeMetrics& m, int rank);

// One controller per rank.
//
// Threads: the forward thread (the engine's) calls RecordLoad(), Step() and CommitLog(); any thread
// may call Routing() and Metrics(). The controller owns one background worker thread that runs the
// algorithm, the planner and the weight moves; the worker never touches a slot that a published
// snapshot may route to until the forward thread commits the layer. The communicator is not owned
// and must outlive the controller; the controller is its only user while it lives.
class Controller {
 public:
  // Registers nothing yet: call RegisterExpert() for every (layer, local slot), then Start().
  static StatusOr<std::unique_ptr<Controller>> Create(const RuntimeConfig& config,
                                                      const ModelInfo& model, Communicator* comm);
  ~Controller();
  Controller(const Controller&) = delete;
  Controller& operator=(const Controller&) = delete;

  int slots_per_rank() const;
  // The placement the controller starts from (expert_map_path, or the default: experts in id
  // order, redundant slots replicating experts round-robin without duplicates on a rank). The
  // engine loads these experts' weights into its slots before Start().
  const Placement& initial_placement() const;

  // The engine's memory for one expert: all its tensors (weights, quantization scales, ...), as
  // byte spans that stay valid and at the same address for the controller's lifetime. Every slot
  // of every layer must be registered with the same tensor sizes. They move and commit together.
  Status RegisterExpert(int layer, int local_slot, std::vector<std::span<std::byte>> tensors);
  // Starts the worker. After this, only the hot-path calls below.
  Status Start();

  // Hot path: tokens per local slot of one layer in this step (the engine's expert_token_num after
  // dispatch). O(slots), no allocation, no lock.
  void RecordLoad(int layer, std::span<const int64_t> tokens_per_local_slot);
  // The step boundary: advances the cycle (starts or completes a collective, commits layers).
  // Returns a failure kept from the worker or a collective (sticky, reported once); the
  // controller keeps running on the placement in use.
  Status Step();

  // The current routing snapshot of a layer.
  std::shared_ptr<const LayerRouting> Routing(int layer) const;
  RuntimeMetrics Metrics() const;
  // (step, layer, epoch) of every commit so far, in order: ranks must agree on it.
  struct Commit {
    int64_t step;
    int layer;
    uint64_t epoch;
    bool operator==(const Commit&) const = default;
  };
  std::vector<Commit> CommitLog() const;
  // True while a cycle (gather, plan, moves, commits) is in progress.
  bool CycleInProgress() const;

 private:
  struct Impl;
  explicit Controller(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace eplb
