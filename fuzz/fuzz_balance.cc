// Fuzz target: the algorithms and the transfer planner on small shapes, loads of any spread
// (zeros, equal values, values that differ by hundreds of orders of magnitude, sums that overflow)
// and current placements that may or may not be valid. Every call must return a valid placement or
// an error (only for a bad shape, load or current placement); results must not depend on the
// thread count or on the call; the plan from the current placement must reproduce the new one.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <vector>

#include "bytes.h"
#include "eplb/algorithm.h"
#include "eplb/placement.h"
#include "eplb/planner.h"

namespace {

using eplb_fuzz::Bytes;

// A load: 0, a power of two from 2^-1024 up to overflow, or an ordinary count.
double Load(Bytes& in) {
  const uint8_t kind = in.Byte();
  if (kind < 32) return 0.0;
  if (kind < 40) return std::ldexp(1.0 + in.Byte(), (in.Byte() - 128) * 8);  // 2^-1024 .. inf
  return static_cast<double>(in.Byte() * 256 + in.Byte());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Bytes in(data, size);
  eplb::Shape shape;
  shape.layers = in.Int(1, 3);
  shape.ranks = in.Int(1, 12);
  shape.slots_per_rank = in.Int(1, 5);
  shape.experts = in.Int(1, shape.ranks * shape.slots_per_rank);
  shape.nodes = in.Int(1, shape.ranks);
  shape.groups = in.Int(1, shape.experts);
  const uint8_t pick = in.Byte();
  const bool swift = pick % 2 == 0;
  eplb::AlgorithmOptions options;
  options.inter_node_cost = 1 + pick / 2 % 4 * 0.5;  // 1, 1.5, 2 or 2.5
  options.target_balancedness = 0.5 + in.Byte() / 510.0;
  options.skip_balancedness = 0.5 + in.Byte() / 510.0;
  options.max_changes_per_layer = in.Int(-1, 20);
  options.max_changes_per_cycle = in.Int(-1, 40);

  eplb::LoadMatrix load(shape.layers, shape.experts);
  for (int l = 0; l < shape.layers; ++l) {
    for (int e = 0; e < shape.experts; ++e) load.at(l, e) = Load(in);
  }
  const bool with_current = in.Byte() % 2 == 0;
  std::vector<int> ids(static_cast<size_t>(shape.layers) * shape.slots());
  for (size_t i = 0; i < ids.size(); ++i) {
    // Mostly a valid id-order layout with some ids replaced (often making it invalid).
    ids[i] = in.Byte() < 200 ? static_cast<int>(i % shape.slots() % shape.experts)
                             : in.Int(-1, shape.experts);
  }
  const eplb::Placement current(shape.layers, shape.ranks, shape.slots_per_rank, shape.experts,
                                ids);

  auto balancer = eplb::MakeBalancer(swift ? "swift" : "deepseek", options);
  if (!balancer.ok()) std::abort();  // the options above are all in range
  const eplb::BalanceInput input{&load, shape, with_current ? &current : nullptr};
  auto result = (*balancer)->Balance(input);
  if (!result.ok()) {
    // Only a bad shape, load or current placement may be refused.
    const bool bad_current = with_current && !eplb::ValidatePlacement(current, shape).ok();
    if (shape.Validate().ok() && eplb::ValidateLoad(load).ok() && !bad_current) std::abort();
    return 0;
  }
  const eplb::Placement& out = result->placement;
  if (!eplb::ValidatePlacement(out, shape).ok()) std::abort();
  auto again = (*balancer)->Balance(input);
  if (!again.ok() || !(again->placement == out)) std::abort();
  if (swift) {
    options.threads = 3;
    auto threaded = eplb::MakeBalancer("swift", options);
    if (!threaded.ok()) std::abort();
    auto t = (*threaded)->Balance(input);
    if (!t.ok() || !(t->placement == out)) std::abort();
  }
  if (with_current) {
    const bool keep_slots = in.Byte() % 2 == 0;
    auto plan =
        eplb::PlanTransfers(current, out, shape, {.keep_slots = keep_slots, .expert_bytes = 8});
    if (!plan.ok()) std::abort();
    if (!(eplb::ApplyPlan(current, *plan) == plan->final_placement)) std::abort();
    // Every rank holds the same experts as in `out` (slot order aside).
    if (eplb::SlotsChanged(plan->final_placement, out) != 0) std::abort();
    if (!keep_slots && !(plan->final_placement == out)) std::abort();
    std::vector<char> written(static_cast<size_t>(shape.layers) * shape.slots(), 0);
    for (const eplb::ExpertCopy& c : plan->copies) {  // each destination slot written once
      char& w = written[static_cast<size_t>(c.layer) * shape.slots() +
                        c.dst_rank * shape.slots_per_rank + c.dst_slot];
      if (w++) std::abort();
    }
  }
  return 0;
}
