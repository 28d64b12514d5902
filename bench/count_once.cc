// One full-model rebalance (Balance + PlanTransfers) at the DeepSeek-V3 shape, run once inside
// Measured(), for counting its instructions with callgrind, which are exact and the same on any
// run, where times on a shared machine move by tens of percent:
//
//   scripts/count-instructions.sh [fresh|replan|drift] [RANKS SLOTS_PER_RANK] [ALGORITHM] [NODES]
//
// `fresh` places prefill_in4096 from scratch (planned from the id-order placement); `replan`
// re-plans prefill_in4096's load from swift's placement for prefill_in512 (the after-shift case
// of eplb_algorithms_bench); `drift` re-plans prefill_in4096's load, every count scaled by a
// random factor in [0.8, 1.2], from swift's placement for the unscaled load (BM_Drift). Prints the
// result's balancedness, slots changed, a hash of the placement (equal hashes: equal placements)
// and one of the whole transfer plan (copies and totals). Loads come from EPLB_DATA_DIR (default
// ../shared/data/expert-load); exits 0 with a message when they are absent.
#include <fmt/format.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "data_dir.h"
#include "eplb/algorithm.h"
#include "eplb/formats.h"
#include "eplb/planner.h"

using namespace eplb;

namespace {

// The call callgrind counts (--toggle-collect='*Measured*').
[[gnu::noinline]] TransferPlan Measured(const Balancer& balancer, const LoadMatrix& load,
                                        const Shape& shape, const Placement& old, bool replan) {
  auto result = balancer.Balance({&load, shape, replan ? &old : nullptr});
  if (!result.ok()) {
    fmt::print(stderr, "eplb_count_once: {}\n", result.status().ToString());
    std::exit(1);
  }
  auto plan = PlanTransfers(old, result->placement, shape);
  if (!plan.ok()) {
    fmt::print(stderr, "eplb_count_once: {}\n", plan.status().ToString());
    std::exit(1);
  }
  return *std::move(plan);
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "replan";
  Shape shape{.layers = 58, .experts = 256, .ranks = 64, .slots_per_rank = 5};
  if (argc > 3) {
    shape.ranks = std::atoi(argv[2]);
    shape.slots_per_rank = std::atoi(argv[3]);
  }
  const std::string algorithm = argc > 4 ? argv[4] : "swift";
  if (argc > 5) shape.nodes = std::atoi(argv[5]);
  if ((mode != "fresh" && mode != "replan" && mode != "drift") || argc == 3 || argc > 6) {
    fmt::print(stderr,
               "usage: {} [fresh|replan|drift] [RANKS SLOTS_PER_RANK] [ALGORITHM] [NODES]\n",
               argv[0]);
    return 1;
  }
  if (Status s = shape.Validate(); !s.ok()) {
    fmt::print(stderr, "{}: {}\n", argv[0], s.ToString());
    return 1;
  }
  const std::string dir = eplb::bench::DeepSeekDir();
  if (!std::filesystem::exists(dir + "prefill_in4096.json")) {
    fmt::print("no {}prefill_in4096.json: set EPLB_DATA_DIR to the expert-load folder\n", dir);
    return 0;
  }
  auto a = ReadLoadFile(dir + "prefill_in512.json");
  auto b = ReadLoadFile(dir + "prefill_in4096.json");
  if (!a.ok() || !b.ok()) {
    fmt::print(stderr, "{}: {}\n", argv[0], (a.ok() ? b.status() : a.status()).ToString());
    return 1;
  }
  auto swift = MakeBalancer("swift");
  auto balancer = MakeBalancer(algorithm);
  if (!balancer.ok()) {
    fmt::print(stderr, "{}: {}\n", argv[0], balancer.status().ToString());
    return 1;
  }
  if (mode == "drift") {  // prefill_in4096's placement, its load drifted as BM_Drift's
    a = b;
    b->moe = bench::Drifted(b->moe);
  }
  const bool replan = mode != "fresh";
  const Placement old =
      replan ? (*swift)->Balance({&a->moe, shape, nullptr})->placement : Placement::IdOrder(shape);
  const TransferPlan plan = Measured(**balancer, b->moe, shape, old, replan);
  uint64_t hash = 1469598103934665603ull;  // FNV-1a over the final phy2log
  auto mix = [](uint64_t& h, int64_t v) { h = (h ^ static_cast<uint64_t>(v)) * 1099511628211ull; };
  for (int id : plan.final_placement.phy2log()) mix(hash, id);
  uint64_t plan_hash = hash;  // ... then every copy and the per-rank totals
  for (const ExpertCopy& c : plan.copies) {
    for (int64_t v : {c.layer, c.expert, c.dst_rank, c.dst_slot, c.src_rank, c.src_slot}) {
      mix(plan_hash, v);
    }
    mix(plan_hash, int64_t{c.local} * 2 + c.reads_overwritten_slot);
  }
  for (int64_t v : plan.bytes_sent) mix(plan_hash, v);
  for (int64_t v : plan.bytes_received) mix(plan_hash, v);
  for (int64_t v : {plan.inter_node_bytes, plan.local_copies, plan.slots_changed})
    mix(plan_hash, v);
  fmt::print(
      "{} {} {}x{}{}: balancedness {:.4f} -> {:.4f}, {:.2f}% of slots changed, hash {:016x}, "
      "plan hash {:016x}\n",
      mode, algorithm, shape.ranks, shape.slots_per_rank,
      shape.nodes > 1 ? fmt::format(" on {} nodes", shape.nodes) : "",
      MeanBalancedness(b->moe, old), MeanBalancedness(b->moe, plan.final_placement),
      100.0 * static_cast<double>(plan.slots_changed) / (shape.layers * shape.slots()), hash,
      plan_hash);
  return 0;
}
