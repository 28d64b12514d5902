#include "eplb/planner.h"

#include <fmt/format.h>

#include <algorithm>
#include <cassert>
#include <climits>
#include <cstdint>
#include <numeric>
#include <span>
#include <utility>

namespace eplb {
namespace {

// Scratch reused across layers, so planning allocates only its outputs and a few O(E + R * S)
// buffers, never per copy. Expert-indexed stamps hold the rank that last wrote them; they are
// reset to -1 at the start of each layer.
struct Scratch {
  explicit Scratch(const Shape& shape)
      : in_old(shape.experts),
        in_target(shape.experts),
        holder_offsets(shape.experts + 1),
        holders(shape.slots()),
        holder_ranks(shape.slots()) {}

  std::vector<int> in_old;          // expert -> rank that holds it in the old layer (last stamped)
  std::vector<int> in_target;       // expert -> rank that holds it in the target layer
  std::vector<int> holder_offsets;  // CSR over experts of the old layer's physical slots
  std::vector<int> holders;         // physical slots, ascending (hence in rank order) per expert
  std::vector<int> holder_ranks;    // the rank of each entry of holders
};

// Orders candidate sources by the rule of PlanTransfers, smallest first: a slot that keeps its
// expert, then the destination's node, then fewest copies sent so far. A rank sends fewer than
// 2^61 copies (there are fewer slots than that), so the fields never overlap. The last rule,
// lowest rank, is the caller's: it visits candidates in rank order and keeps the first smallest.
int64_t SourceKey(bool stable, bool same_node, int64_t sends) {
  return (int64_t{!stable} << 62) | (int64_t{!same_node} << 61) | sends;
}

// The final layer when experts that stay keep their slot: each rank's freed slots (old expert not
// in the target rank), in ascending slot order, receive the arriving experts (target experts not
// in the old rank) in the order they appear in the target rank. final_layer starts as old_layer.
void KeepSlotsLayer(std::span<const int> old_layer, std::span<const int> target_layer,
                    std::span<int> final_layer, int ranks, int slots_per_rank, Scratch& scratch) {
  std::fill(scratch.in_old.begin(), scratch.in_old.end(), -1);
  std::fill(scratch.in_target.begin(), scratch.in_target.end(), -1);
  for (int r = 0; r < ranks; ++r) {
    const int base = r * slots_per_rank;
    for (int s = 0; s < slots_per_rank; ++s) {
      scratch.in_old[old_layer[base + s]] = r;
      scratch.in_target[target_layer[base + s]] = r;
    }
    // Both ranks hold slots_per_rank distinct experts, so arrivals and freed slots match in number.
    int freed = 0;
    for (int s = 0; s < slots_per_rank; ++s) {
      const int e = target_layer[base + s];
      if (scratch.in_old[e] == r) continue;
      while (scratch.in_target[old_layer[base + freed]] == r) ++freed;
      final_layer[base + freed] = e;
      ++freed;
    }
  }
}

// Fills scratch.holders / holder_ranks / holder_offsets with the old layer's slots of each expert:
// a counting sort that fills each expert's list from its end, last slot first, so that the lists
// come out ascending and holder_offsets[e] ends at the start of expert e's list.
void BuildHolders(std::span<const int> old_layer, int experts, int slots_per_rank,
                  Scratch& scratch) {
  auto& offsets = scratch.holder_offsets;
  std::fill(offsets.begin(), offsets.end(), 0);
  for (int e : old_layer) ++offsets[e];
  for (int e = 1; e <= experts; ++e) offsets[e] += offsets[e - 1];  // the end of each list
  const int ranks = static_cast<int>(old_layer.size()) / slots_per_rank;
  for (int p = static_cast<int>(old_layer.size()) - 1, r = ranks - 1; r >= 0; --r) {
    for (int s = slots_per_rank - 1; s >= 0; --s, --p) {
      const int i = --offsets[old_layer[p]];
      scratch.holders[i] = p;
      scratch.holder_ranks[i] = r;
    }
  }
}

}  // namespace

int64_t TransferPlan::bytes_moved() const {
  return std::accumulate(bytes_received.begin(), bytes_received.end(), int64_t{0});
}

StatusOr<TransferPlan> PlanTransfers(const Placement& old_placement, const Placement& target,
                                     const Shape& shape, const PlanOptions& options) {
  if (Status st = shape.Validate(); !st.ok()) return st.WithPrefix("shape");
  if (Status st = ValidatePlacement(old_placement, shape); !st.ok()) {
    return st.WithPrefix("old placement");
  }
  if (Status st = ValidatePlacement(target, shape); !st.ok()) {
    return st.WithPrefix("target placement");
  }
  if (options.expert_bytes < 0) {
    return Status::Invalid(
        fmt::format("plan options: expert_bytes must be >= 0, got {}", options.expert_bytes));
  }
  // Every byte total is at most one expert per slot of every layer: it must fit in an int64.
  const int64_t all_slots = int64_t{shape.layers} * shape.slots();
  if (options.expert_bytes > 0 && all_slots > INT64_MAX / options.expert_bytes) {
    return Status::Invalid(fmt::format(
        "plan options: expert_bytes {} x {} slots ({} layers x {}) exceeds the int64 range of "
        "the byte totals",
        options.expert_bytes, all_slots, shape.layers, shape.slots()));
  }

  const int layers = shape.layers;
  const int ranks = shape.ranks;
  const int spr = shape.slots_per_rank;
  Scratch scratch(shape);

  // Pass 1: the final placement, and the number of copies (slots whose id changes) to reserve.
  // With keep_slots it starts as the old placement, and KeepSlotsLayer writes only the arrivals.
  TransferPlan plan;
  plan.final_placement = options.keep_slots ? old_placement : target;
  if (options.keep_slots) {
    for (int l = 0; l < layers; ++l) {
      KeepSlotsLayer(old_placement.layer(l), target.layer(l), plan.final_placement.layer(l), ranks,
                     spr, scratch);
    }
  }
  size_t num_copies = 0;
  for (size_t i = 0; i < old_placement.phy2log().size(); ++i) {
    num_copies += old_placement.phy2log()[i] != plan.final_placement.phy2log()[i];
  }
  plan.copies.reserve(num_copies);

  // Pass 2: a source for every changed slot, in layer, destination rank, slot order; `sends`
  // counts the copies each rank has sent so far, which is what the balancing rule compares.
  std::vector<int> node_of(ranks);
  for (int r = 0; r < ranks; ++r) node_of[r] = shape.NodeOf(r);
  std::vector<int64_t> sends(ranks, 0);
  std::vector<int64_t> receives(ranks, 0);
  int64_t inter_node_copies = 0;
  for (int l = 0; l < layers; ++l) {
    const std::span<const int> old_layer = old_placement.layer(l);
    const std::span<const int> final_layer = plan.final_placement.layer(l);
    BuildHolders(old_layer, shape.experts, spr, scratch);
    for (int r = 0; r < ranks; ++r) {
      const int base = r * spr;
      const int node = node_of[r];
      for (int s = 0; s < spr; ++s) {
        const int e = final_layer[base + s];
        if (e == old_layer[base + s]) continue;
        // The holders of e, in rank order: the destination rank itself when it holds e (a local
        // copy, only without keep_slots), else the smallest SourceKey, the lowest rank on a tie.
        int src = -1;  // physical slot
        int src_rank = r;
        int64_t best_key = INT64_MAX;
        for (int i = scratch.holder_offsets[e]; i < scratch.holder_offsets[e + 1]; ++i) {
          const int p = scratch.holders[i];
          const int q = scratch.holder_ranks[i];
          if (q == r) {
            src = p;
            src_rank = r;
            break;
          }
          const int64_t key =
              SourceKey(final_layer[p] == old_layer[p], node_of[q] == node, sends[q]);
          if (key < best_key) {
            best_key = key;
            src = p;
            src_rank = q;
          }
        }
        assert(src >= 0 && "a valid placement holds every expert somewhere");
        ExpertCopy& c = plan.copies.emplace_back();
        c.layer = l;
        c.expert = e;
        c.dst_rank = r;
        c.dst_slot = s;
        c.src_rank = src_rank;
        c.src_slot = src - src_rank * spr;
        c.local = c.src_rank == r;
        c.reads_overwritten_slot = final_layer[src] != old_layer[src];
        ++receives[r];
        if (c.local) {
          ++plan.local_copies;
        } else {
          ++sends[c.src_rank];
          ++plan.slots_changed;
          inter_node_copies += node_of[c.src_rank] != node;
        }
      }
    }
  }

  const int64_t bytes = options.expert_bytes;
  plan.bytes_sent.resize(ranks);
  plan.bytes_received.resize(ranks);
  for (int r = 0; r < ranks; ++r) {
    plan.bytes_sent[r] = sends[r] * bytes;
    plan.bytes_received[r] = receives[r] * bytes;
  }
  plan.inter_node_bytes = inter_node_copies * bytes;
  return plan;
}

Placement ApplyPlan(const Placement& old_placement, const TransferPlan& plan) {
  Placement result = old_placement;
  for (const ExpertCopy& c : plan.copies) {
    assert(c.layer >= 0 && c.layer < old_placement.layers());
    assert(c.dst_rank >= 0 && c.dst_rank < old_placement.ranks());
    assert(c.src_rank >= 0 && c.src_rank < old_placement.ranks());
    assert(c.dst_slot >= 0 && c.dst_slot < old_placement.slots_per_rank());
    assert(c.src_slot >= 0 && c.src_slot < old_placement.slots_per_rank());
    result.at(c.layer, c.dst_rank, c.dst_slot) = old_placement.at(c.layer, c.src_rank, c.src_slot);
  }
  return result;
}

}  // namespace eplb
