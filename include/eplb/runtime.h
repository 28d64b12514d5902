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
// the same on every rank, and every decision that must agree (use this plan, skip this cycle,
// commit this layer, roll it back) is taken from a collective's result at a step number that is
// the same on every rank, so every rank decides alike at the same step.
//
// Timeline of a cycle, in steps (H = expert_heat_collection_interval, A =
// algorithm_execution_interval): at step g, H steps after the window started, the per-slot loads
// are all-gathered. The forward thread tests the gather at the following steps and, as soon as it
// is complete, folds it into per-expert loads with the placement the loads were recorded on and
// hands them to the worker (it waits for the gather only if it is still incomplete at step
// g + 1 + A). With expert_heat_windows N > 1 the worker balances the sum of the latest N windows'
// per-expert loads (each folded with its own placement), which smooths noisy windows at the cost
// of following a workload shift more slowly. At step g + 1 + A the ranks all-gather their plan
// hashes and compare them one step later. All equal: the moves start. A mismatch, or planning that
// failed on some rank: the cycle is skipped (logged, counted). A plan not ready on some rank (the
// worker is late): the engine keeps the placement in use, a warning is logged once, and the hashes
// are compared again every A steps until every plan is there. While weights move, every step runs
// the commit protocol (see Controller). When every layer is committed or rolled back, the cycle
// ends (one info log line, the record file) and the next window starts.
//
// Static mode (dynamic_eplb false): after each window the worker computes the placement the
// algorithm proposes for the observed load and writes it to expert_map_record_path; the placement
// in use never changes. A worker slower than a window skips to the latest window. In dynamic mode
// the file gets the placement in use after each cycle. Either way it is written atomically
// (vllm-ascend layout) by the lowest rank of each node, and a run started with expert_map_path
// set to it starts from it.
#pragma once

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
// runtime never changes a published snapshot, it publishes a new one. The weights behind it are
// only guaranteed until the engine's next Step() call, which may commit the layer.
struct LayerRouting {
  int layer = 0;
  uint64_t epoch = 0;  // 0 for the initial placement, +1 per commit of this layer
  int ranks = 0;
  int slots_per_rank = 0;
  std::vector<int> phy2log;     // ranks * slots_per_rank logical ids
  RoutingTable log2phy;         // per logical expert, its physical slots in rank order
  std::vector<int> expert_map;  // this rank: logical expert -> local slot, or -1
};

// Running totals and the last cycle's figures. A snapshot; safe to copy.
//
// Balancedness is mean rank load / max rank load of the load the balancer saw: the cycle's window,
// or the latest expert_heat_windows windows summed (an expert's load split evenly over its
// replicas); "before" is on the placement in use when the window closed, "after" on the placement
// in use once the cycle ended (rolled-back layers keep their "before"; in static mode nothing
// changes, so after == before), "proposed" on the algorithm's placement.
struct RuntimeMetrics {
  int64_t steps = 0;
  int64_t cycles = 0;          // load windows that went through planning (and moving, if dynamic)
  int64_t cycles_skipped = 0;  // plan-hash mismatch or failed planning on some rank
  int64_t cycles_late = 0;     // some worker missed algorithm_execution_interval
  int64_t layers_committed = 0;
  int64_t layers_rolled_back = 0;   // a transfer failed or timed out on some rank
  int64_t transfers_failed = 0;     // layers whose transfers failed or timed out on this rank
  int64_t slots_changed_total = 0;  // in committed layers, all ranks
  int64_t bytes_moved_total = 0;    // received by this rank in committed layers (local copies too)
  int64_t inter_node_bytes_total = 0;  // of those, the bytes sent from a rank of another node
  int64_t staging_bytes_peak = 0;      // most staging memory held at once
  bool disabled = false;  // a collective failed: rebalancing stopped for good (see Step())
  double last_balancedness_before = 1.0;    // mean over layers
  double last_balancedness_after = 1.0;     // mean over layers
  double last_balancedness_proposed = 1.0;  // mean over layers
  double last_max_mean_ratio = 1.0;         // sum over layers of max rank load / sum of mean, after
  std::vector<double> last_layer_balancedness_before;
  std::vector<double> last_layer_balancedness_after;
  int64_t last_slots_changed = 0;
  int64_t last_bytes_moved = 0;
  int64_t last_inter_node_bytes = 0;
  double last_algorithm_ms = 0;  // algorithm + transfer planning on the worker
  double last_transfer_ms = 0;   // from the start of the moves to the last commit or rollback
  double algorithm_seconds_total = 0;
  double transfer_seconds_total = 0;
  // Forward-thread time spent in Step() and RecordLoad() (RecordLoad sampled: one call in 64 is
  // timed and counts for 64).
  double hook_seconds_total = 0;
};

// Prometheus text exposition of the metrics, labelled with the rank: eplb_balancedness (after),
// eplb_balancedness_before, eplb_layer_balancedness{layer}, eplb_expert_load_balance_ratio
// (max / mean rank load), eplb_rebalance_cycles_total, eplb_rebalance_cycles_skipped_total,
// eplb_layers_committed_total, eplb_layers_rolled_back_total, eplb_transfers_failed_total,
// eplb_slots_changed_total, eplb_bytes_moved_total, eplb_inter_node_bytes_total,
// eplb_algorithm_seconds and eplb_transfer_seconds (last cycle), eplb_hook_seconds_total,
// eplb_staging_bytes_peak, eplb_disabled; each with HELP and TYPE lines.
std::string PrometheusText(const RuntimeMetrics& m, int rank);

// One controller per rank.
//
// Threads: the forward thread (the engine's) calls RegisterExpert(), Start(), RecordLoad(),
// Step(), CommitLog() and CycleInProgress(); any thread may call Routing(), Metrics() and the const
// accessors. The controller owns one background worker thread that runs the algorithm, the
// transfer planner, the weight moves, the per-cycle log line and the map recording. The
// communicator is not owned, must outlive the controller, and the controller must be its only
// user while it lives.
//
// Memory: the engine owns every slot's memory (RegisterExpert). The worker only reads slots (the
// sources of sends and local copies, as they are in the placement in use); received experts go to
// staging buffers that the controller allocates per in-flight layer (at most
// max_layers_in_flight layers at once) and frees after the layer is committed or rolled back.
// Slot memory is written only by Step(), on the forward thread, when it commits a layer.
//
// Commit protocol: while weights move, every Step() waits for the small all-reduce(min) started
// by the previous Step() (each rank's per-layer state: 1 ready, 0 not yet, -1 failed), then acts
// on it identically on every rank: layers ready everywhere are committed (staging -> slots,
// then a new routing snapshot), failed layers are rolled back (old placement kept), and a new
// all-reduce is started. A layer is ready on a rank only when all its receives and all its sends
// on that rank have completed, so no slot is overwritten while a send may still read it.
class Controller {
 public:
  // Checks the configuration and the model, resolves slots per rank ((E + K) / ranks) and the
  // initial placement: expert_map_path when set (checked against the shape; errors name the key,
  // the file and what was expected), or the algorithm's placement for the load statistics in
  // expert_load_path (its MoE rows must match the model's layers and experts; every rank computes
  // the same placement), else the default: experts in id order, slot i holding expert
  // i % E, so the K redundant slots replicate experts 0, 1, ... round-robin and no rank holds an
  // expert twice. Registers nothing yet: call RegisterExpert() for every (layer, local slot), then
  // Start().
  static StatusOr<std::unique_ptr<Controller>> Create(const RuntimeConfig& config,
                                                      const ModelInfo& model, Communicator* comm);
  // Stops the worker (abandoning transfers in flight, after a plan being computed is done); never
  // waits for other ranks.
  ~Controller();
  Controller(const Controller&) = delete;
  Controller& operator=(const Controller&) = delete;

  int rank() const;
  int slots_per_rank() const;
  // The communicator the controller uses (an engine's own traffic must go over another one).
  Communicator* communicator() const;
  // The placement the controller starts from. The engine loads these experts' weights into its
  // slots before Start().
  const Placement& initial_placement() const;

  // The engine's memory for one expert: all its tensors (weights, quantization scales, ...), as
  // byte spans that stay valid and at the same address for the controller's lifetime. Every slot
  // of every layer must be registered with the same tensor sizes. The tensors move and commit
  // together.
  Status RegisterExpert(int layer, int local_slot, std::vector<std::span<std::byte>> tensors);
  // Starts the worker once every slot is registered. After this, only the hot-path calls below.
  Status Start();

  // Hot path: tokens per local slot of one layer in this step (the engine's expert_token_num after
  // dispatch). O(slots), no allocation, no lock. A wrong layer or length, a negative count, or a
  // count that would take the window's count of its slot past the int64 range is reported by the
  // next Step() and the call's counts are left out.
  void RecordLoad(int layer, std::span<const int64_t> tokens_per_local_slot);
  void RecordLoad(int layer, std::span<const int32_t> tokens_per_local_slot);
  // The step boundary, once per forward step on every rank: advances the cycle (starts or
  // completes a collective, commits or rolls back layers). Never waits for the worker or a
  // transfer. It waits only for a collective that every rank started at an earlier step, at most
  // transfer_timeout_ms: the previous step's commit all-reduce while weights move, the plan-hash
  // all-gather at the step after it started, and the load all-gather if it is still incomplete
  // when plans are due. Returns, once each and one per call, a failure kept from the worker
  // (planning, transfers, map recording; the oldest first, up to 64 kept: later ones are logged
  // and counted in the message of the last one kept), a bad RecordLoad, or a failed collective.
  // The engine keeps running on the placement in use in every case. A failed collective (a rank
  // gone or stalled past transfer_timeout_ms) stops rebalancing for good (metrics.disabled):
  // ranks can no longer be sure they decide alike, and a rank that timed out while others
  // committed may now route differently from them, which the engine should treat as a failure of
  // the deployment.
  Status Step();

  // The current routing snapshot of a layer (nullptr for a layer out of range).
  std::shared_ptr<const LayerRouting> Routing(int layer) const;
  RuntimeMetrics Metrics() const;
  // (step, layer, epoch) of the latest kCommitLogCapacity commits, oldest first: all ranks hold
  // the same log. Metrics().layers_committed counts every commit.
  struct Commit {
    int64_t step;
    int layer;
    uint64_t epoch;
    bool operator==(const Commit&) const = default;
  };
  static constexpr size_t kCommitLogCapacity = 4096;
  std::vector<Commit> CommitLog() const;
  // True while a cycle (gather, plan, moves, commits) is in progress. Changes only at steps that
  // are the same on every rank, so ranks that stop stepping when it is false stop together.
  bool CycleInProgress() const;

 private:
  struct Impl;
  explicit Controller(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace eplb
