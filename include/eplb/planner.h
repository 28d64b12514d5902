// Transfer planning: old placement -> new placement becomes the fewest expert copies.
//
// Pure functions over plain values. Semantics of a plan: every copy reads its source slot as it
// was in the OLD placement; a slot that a copy reads is overwritten only after every copy that
// reads it has completed (the runtime stages received weights and commits a layer only after all
// its sends are done). `reads_overwritten_slot` marks the copies to which this rule matters.
#pragma once

#include <cstdint>
#include <vector>

#include "eplb/placement.h"
#include "eplb/status.h"

namespace eplb {

struct ExpertCopy {
  int layer = 0;
  int expert = 0;
  int dst_rank = 0;
  int dst_slot = 0;
  int src_rank = 0;
  int src_slot = 0;
  bool local = false;                   // src_rank == dst_rank
  bool reads_overwritten_slot = false;  // the source slot also receives a new expert in this plan

  bool operator==(const ExpertCopy&) const = default;
};

struct PlanOptions {
  // Keep an expert that stays on a rank in its old slot (the final placement may then differ
  // from the target in slot order, never in which experts each rank holds). Experts arriving on a
  // rank fill its freed slots in ascending slot order, taken in the order they appear in the
  // target's rank. When false the final placement is the target exactly, and experts already on
  // the rank are copied locally.
  bool keep_slots = true;
  int64_t expert_bytes = 0;  // bytes of one expert (all its tensors), for the byte totals; >= 0
};

struct TransferPlan {
  Placement final_placement;
  std::vector<ExpertCopy> copies;       // ordered by layer, then destination rank, then slot
  std::vector<int64_t> bytes_sent;      // per rank; local copies send nothing
  std::vector<int64_t> bytes_received;  // per rank; local copies included
  int64_t inter_node_bytes = 0;         // bytes of copies whose source and destination nodes differ
  int64_t local_copies = 0;
  int64_t slots_changed = 0;    // as SlotsChanged(old, final): the number of non-local copies
  int64_t bytes_moved() const;  // sum of bytes_received (local copies included)
};

// Plans old -> target. Both must be valid placements of `shape` (errors are prefixed "shape",
// "old placement" or "target placement"). A copy is local when its rank already holds the expert
// (only with keep_slots = false); otherwise its source is chosen among the ranks that hold the
// expert in the old placement: a slot that keeps its expert first, then the same node as the
// destination, then the rank that has sent the fewest copies so far in this plan (copies are
// chosen in the order of `copies`; experts all have the same size, so this balances bytes sent),
// then the lowest rank id.
StatusOr<TransferPlan> PlanTransfers(const Placement& old_placement, const Placement& target,
                                     const Shape& shape, const PlanOptions& options = {});

// Applies a plan's copies to `old_placement` with the plan's read-old semantics (every copy
// reads its source slot from `old_placement`) and returns the result; used by tests and by the
// in-process runtime's checks. The plan must come from PlanTransfers on a placement of this shape.
Placement ApplyPlan(const Placement& old_placement, const TransferPlan& plan);

}  // namespace eplb
