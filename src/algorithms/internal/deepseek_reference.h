// The parts of the deepseek balancer that its tests reach directly: the unrepaired output of
// DeepSeek's reference EPLB (deepseek-ai/EPLB, eplb.py, rebalance_experts) and the repair of
// same-rank duplicate replicas. See algorithms/deepseek.cc for the exact contract.
#pragma once

#include <span>
#include <utility>
#include <vector>

#include "eplb/placement.h"

namespace eplb::internal {

// True when the reference takes its hierarchical policy with (shape.groups, shape.nodes), that
// is when groups % nodes == 0; otherwise it runs the same function with 1 group and 1 node (the
// global policy).
bool DeepSeekUsesHierarchicalPolicy(const Shape& shape);

// One layer at a time, with buffers sized once for a shape and reused for every layer, so a
// call allocates nothing per layer. Not thread-safe: one instance per thread.
class DeepSeekLayerSolver {
 public:
  // shape must have passed Shape::Validate(); only its per-layer fields are used.
  explicit DeepSeekLayerSolver(const Shape& shape);

  // Writes the reference's phy2log for one layer: load has shape.experts finite, non-negative
  // entries; phy2log has shape.slots() entries. The result may hold two replicas of one expert
  // on one rank, exactly as the reference does.
  void Reference(std::span<const double> load, std::span<int> phy2log);

  // Repairs every same-rank duplicate of phy2log in place (see deepseek.cc) and returns the
  // number of slots repaired; 0 leaves phy2log untouched. Any phy2log with ids in range and at
  // least one replica per expert comes out valid.
  int Repair(std::span<const double> load, std::span<int> phy2log);

 private:
  // balanced_packing of the reference: items weights.size(), num_packs packs of equal size.
  void BalancedPacking(std::span<const float> weights, int num_packs, std::span<int> pack,
                       std::span<int> rank_in_pack);
  // replicate_experts of the reference for one node: weights.size() logical experts onto
  // phy2log.size() physical experts; fills phy2log and count.
  void Replicate(std::span<const float> weights, std::span<int> phy2log, std::span<int> count);

  // Shape of the policy the reference runs (groups_ and nodes_ are 1 for the global policy).
  int experts_ = 0;
  int ranks_ = 0;
  int slots_per_rank_ = 0;
  int groups_ = 1;
  int nodes_ = 1;

  // Reference scratch.
  std::vector<float> weight_;                // experts: the load as float32
  std::vector<float> group_weight_;          // groups: float32 token sums per group
  std::vector<int> group_pack_;              // groups: node of each group
  std::vector<int> group_rank_;              // groups: position of each group within its node
  std::vector<int> mlog2log_;                // experts: node-major logical id -> logical id
  std::vector<float> node_weight_;           // experts per node
  std::vector<int> phy2mlog_;                // slots per node
  std::vector<int> mlog_count_;              // experts per node
  std::vector<float> phy_weight_;            // slots per node: load per replica
  std::vector<int> phy_pack_;                // slots per node
  std::vector<int> phy_rank_;                // slots per node
  std::vector<int> order_;                   // packing: items, heaviest first
  std::vector<int> pack_items_;              // packing: items per pack so far
  std::vector<std::pair<float, int>> heap_;  // packing (weight, pack), replication (load, expert)

  // Repair scratch.
  std::vector<int> seen_on_rank_;   // experts: last rank + 1 seen holding the expert
  std::vector<int> on_rank_;        // ranks x experts: replicas of each expert on each rank
  std::vector<int> count_;          // experts: replicas in the layer
  std::vector<float> per_replica_;  // experts: float32 load / count
};

// The reference's phy2log for every layer, without repair. load must be shape.layers x
// shape.experts with finite, non-negative values and shape must be valid.
Placement DeepSeekReferencePlacement(const LoadMatrix& load, const Shape& shape);

}  // namespace eplb::internal
