// Balancing algorithms: deterministic pure functions behind one interface, found by name.
//
// Every algorithm takes a load matrix (MoE layers x logical experts), a shape and optionally the
// placement in use, and returns a valid placement: every logical expert has a replica and no rank
// holds two replicas of one expert. Ties are broken by explicit rules (load, then expert id, then
// rank id), so every rank computes the identical placement from the identical input.
// A Balancer is immutable after construction and may be called from any thread.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "eplb/placement.h"
#include "eplb/status.h"

namespace eplb {

// Tuning knobs of the algorithms; each documents its default. Unused knobs are ignored by the
// algorithms that have no use for them (deepseek has none).
struct AlgorithmOptions {
  // swift: a layer whose balancedness is at least this is left alone; a fresh placement (no
  // current one) is refined until each layer reaches it. Higher values cost time for little:
  // from scratch at 64 ranks x 5 slots, 0.997 takes about 40% more instructions than 0.99.
  double skip_balancedness = 0.99;
  // swift, incremental: a layer is improved until its balancedness reaches this. Higher targets
  // move more experts: on the DeepSeek-V3 statistics at 64 ranks x 5 slots, after a workload
  // shift, 0.97 changes about 11% of the slots, 0.98 about 13.5%, 0.99 about 17%.
  double target_balancedness = 0.97;
  // swift, incremental, with more than one node: a slot change whose expert no rank of that
  // slot's node holds in the current placement (so its weights must cross nodes) weighs this many
  // changes when steps are compared, and swaps also try the lightest ranks of the source rank's
  // own node. 1 ignores nodes. At 64 ranks x 5 slots on 8 nodes the default copies about 70%
  // fewer experts between nodes for about 16% more slots changed (README). At two slots per rank
  // the pair re-plan weighs them where it places its pairs, at no cost in balance but with less
  // effect (256 x 2 on 32 nodes: 23.8% of the slots copied between nodes instead of 26.6%).
  // Caps count slots.
  double inter_node_cost = 2.0;
  // swift, incremental: at most this many slots change per layer per call (-1: no cap). At two
  // slots per rank swift re-pairs a layer (pair_replan.cc), which has no cap: a cap here or per
  // cycle selects the excess search there too.
  int max_changes_per_layer = -1;
  // swift, incremental: at most this many slots change over all layers per call (-1: no cap);
  // the least balanced layers are served first.
  int64_t max_changes_per_cycle = -1;
  // swift, incremental (the excess search): a step must remove at least this fraction of the
  // mean rank load of excess load per slot it changes, or it is not worth its transfer.
  double min_gain_per_change = 1e-5;
  // swift: layers are balanced on up to this many threads, the calling thread included (1 to
  // kMaxThreads). Layers are independent, so the placement does not depend on it; with a
  // per-cycle cap they share one budget in order and run on the calling thread alone.
  int threads = 1;
  static constexpr int kMaxThreads = 256;
};

struct BalanceInput {
  const LoadMatrix* load = nullptr;  // shape.layers x shape.experts
  Shape shape;
  const Placement* current = nullptr;  // optional: the placement in use
};

struct BalanceResult {
  Placement placement;
  // deepseek: how many same-rank duplicate replicas were repaired (a documented deviation).
  int repairs = 0;
  // Layers the algorithm left unchanged because they were already balanced.
  std::vector<int> skipped_layers;
  // Whether expert groups were placed node by node (the hierarchical policy: groups divide over
  // several nodes) rather than over all ranks at once (the global policy).
  bool hierarchical = false;
};

class Balancer {
 public:
  virtual ~Balancer() = default;
  virtual std::string_view name() const = 0;
  // Whether this algorithm can balance placements of `shape` at all: Shape::Validate() plus the
  // algorithm's own limits (swift: ranks x experts <= 2^27). Balance() checks it too; a runtime
  // asks it once at start-up, so that a shape the algorithm refuses fails there and not at the
  // first rebalance.
  virtual Status CheckShape(const Shape& shape) const { return shape.Validate(); }
  // Checks the input (shape, load shape, current placement) and returns a new placement.
  virtual StatusOr<BalanceResult> Balance(const BalanceInput& input) const = 0;
};

// "deepseek" or "swift"; an unknown name gives an error listing the known ones, and swift
// rejects options outside their documented ranges (naming the option and its value).
StatusOr<std::unique_ptr<Balancer>> MakeBalancer(std::string_view name,
                                                 const AlgorithmOptions& options = {});
std::vector<std::string> BalancerNames();

// Checks that input.load and input.current agree with input.shape; shared by all algorithms.
Status ValidateBalanceInput(const BalanceInput& input);

}  // namespace eplb
