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
// result's balancedness, slots changed and a hash of the placement (equal hashes: equal
// placements). Loads come from EPLB_DATA_DIR (default
// ../shared/data/expert-load); exits 0 with a message when they are absent.
#include <fmt/format.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <random>
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
  if (mode == "drift") {  // prefill_in4096's placement, its load scaled as BM_Drift scales it
    a = b;
    std::mt19937_64 rng(7);
    std::uniform_real_distribution<double> factor(0.8, 1.2);
    for (int l = 0; l < b->moe.layers(); ++l) {
      for (double& v : b->moe.row(l)) v *= factor(rng);
    }
  }
  const bool replan = mode != "fresh";
  const Placement old =
      replan ? (*swift)->Balance({&a->moe, shape, nullptr})->placement : Placement::IdOrder(shape);
  const TransferPlan plan = Measured(**balancer, b->moe, shape, old, replan);
  uint64_t hash = 1469598103934665603ull;  // FNV-1a over the final phy2log
  for (int id : plan.final_placement.phy2log())
    hash = (hash ^ static_cast<uint64_t>(id)) * 1099511628211ull;
  fmt::print(
      "{} {} {}x{}{}: balancedness {:.4f} -> {:.4f}, {:.2f}% of slots changed, hash {:016x}\n",
      mode, algorithm, shape.ranks, shape.slots_per_rank,
      shape.nodes > 1 ? fmt::format(" on {} nodes", shape.nodes) : "",
      MeanBalancedness(b->moe, old), MeanBalancedness(b->moe, plan.final_placement),
      100.0 * static_cast<double>(plan.slots_changed) / (shape.layers * shape.slots()), hash);
  return 0;
}
