// The "deepseek" balancer: DeepSeek's reference EPLB (deepseek-ai/EPLB, eplb.py:
// rebalance_experts, rebalance_experts_hierarchical, replicate_experts, balanced_packing),
// ported to C++ so that it returns the same phy2log as the reference, plus one documented
// deviation (below). It ignores the current placement, as the reference does.
//
// Policy, as in rebalance_experts: if groups % nodes == 0, the hierarchical policy with
// (groups, nodes): pack expert groups onto nodes by their token sums, replicate each node's
// experts onto the node's slots, pack each node's replicas onto its ranks. Otherwise the same
// function with 1 group and 1 node (the global policy).
//
// How the output stays identical to the reference (internal/deepseek_reference.cc):
// - All arithmetic is float32, as after the reference's weight.float(): the load is rounded to
//   float32 once; group sums, load / replica count and pack weights are float32 sums and
//   quotients. A group sum adds the group's experts in id order; torch's vectorized reduction
//   adds in another order, which gives the same float32 whenever the partial sums are exact
//   (integer token counts with group sums below 2^24). Beyond that the reference itself may
//   differ in the last bit between machines (its order depends on the SIMD width).
// - sort(descending=True) is a stable descending sort: equal weights keep the lower index first.
//   torch's default CPU sort (std::sort or x86-simd-sort) leaves the order of ties unspecified;
//   a stable order is what it gives with stable=True and on short rows (std::sort sorts 16 or
//   fewer items by insertion), as in the README example. Tie order never changes a pack's float32
//   weight, only which of the tied items sits where.
// - max(dim=-1).indices picks the first maximal index; Python's min(..., key=) the first lightest
//   pack that still has room; balanced_packing with one item per pack is the identity.
// - Replication uses a max-heap keyed by (float32 load / count, lowest index) and packing a
//   min-heap keyed by (float32 pack weight, lowest pack) over the packs with room: the same
//   choices as the reference's O(n^2) scans, in O(n log n).
//
// Deviation: the reference may put two replicas of one logical expert on one rank, which a
// per-rank expert map cannot express. After computing the reference result, each rank is
// scanned from its last slot down and every such extra replica (the lowest slot keeps the
// expert) is repaired with the smallest change:
// - swap it with a slot on another rank that does not hold the expert and whose own expert is
//   not on this rank, choosing the slot whose float32 load per replica is closest to the
//   duplicate's (ties: lower rank, then lower slot), looking first in the same node and only then
//   on the other nodes (under the hierarchical policy, so experts stay node-local; the global
//   policy treats all ranks as one node);
// - if no such slot exists (an expert with more replicas than ranks can take them), replace the
//   extra replica with one of the expert missing from the rank with the largest load per replica
//   (ties: lowest id), which changes two replica counts by one.
// BalanceResult::repairs counts the repaired slots; replica counts and all other slots match the
// reference whenever only swaps were needed.
#include "algorithms/deepseek.h"

#include <span>
#include <vector>

#include "algorithms/internal/deepseek_reference.h"

namespace eplb {
namespace {

class DeepSeek final : public Balancer {
 public:
  std::string_view name() const override { return "deepseek"; }

  StatusOr<BalanceResult> Balance(const BalanceInput& input) const override {
    EPLB_RETURN_IF_ERROR(ValidateBalanceInput(input));
    const Shape& shape = input.shape;
    const LoadMatrix& load = *input.load;

    const size_t slots = static_cast<size_t>(shape.slots());
    std::vector<int> ids(static_cast<size_t>(shape.layers) * slots);
    internal::DeepSeekLayerSolver solver(shape);
    BalanceResult result;
    for (int l = 0; l < shape.layers; ++l) {
      std::span<int> layer(ids.data() + static_cast<size_t>(l) * slots, slots);
      solver.Reference(load.row(l), layer);
      result.repairs += solver.Repair(load.row(l), layer);
    }
    result.placement =
        Placement(shape.layers, shape.ranks, shape.slots_per_rank, shape.experts, std::move(ids));
    result.hierarchical = shape.nodes > 1 && internal::DeepSeekUsesHierarchicalPolicy(shape);
    return result;
  }
};

}  // namespace

std::unique_ptr<Balancer> MakeDeepSeekBalancer() { return std::make_unique<DeepSeek>(); }

}  // namespace eplb
