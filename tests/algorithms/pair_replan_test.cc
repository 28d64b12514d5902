// Tests of swift's pair re-plan (src/algorithms/pair_replan.cc) on several nodes: weighing copies
// between nodes keeps the result valid and deterministic, keeps the balancedness of the pairing
// that ignores nodes, changes no more slots (inter_node_cost <= 2), and copies fewer experts
// between nodes.
#include "algorithms/pair_replan.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "eplb/placement.h"
#include "testing/random_cases.h"

namespace eplb {
namespace {

// Slots of `out` whose expert no rank of their node held in `current` (2 slots per rank).
int CopiesBetweenNodes(std::span<const int> current, std::span<const int> out, int ranks_per_node) {
  int copies = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    const size_t first = i / 2 / ranks_per_node * 2 * ranks_per_node;
    const auto node = current.subspan(first, 2 * ranks_per_node);
    copies += std::find(node.begin(), node.end(), out[i]) == node.end();
  }
  return copies;
}

// Every expert held, no rank holding one expert twice.
void ExpectValidLayer(std::span<const int> out, int experts) {
  std::vector<int> count(experts, 0);
  for (size_t r = 0; 2 * r < out.size(); ++r) {
    EXPECT_NE(out[2 * r], out[2 * r + 1]) << "rank " << r;
    ++count[out[2 * r]];
    ++count[out[2 * r + 1]];
  }
  for (int e = 0; e < experts; ++e) EXPECT_GT(count[e], 0) << "expert " << e;
}

TEST(PairReplanTest, OnNodesKeepsTheBalanceAndCopiesFewerExpertsBetweenNodes) {
  // Random layers on 2 to 8 nodes. Nodes change only which pool rank takes which new pair and
  // the exchanges after it, never the pairs' loads, so the peak is the same (or lower). Per layer
  // the copies between nodes may go either way (the matching takes another path); over all cases
  // they must fall clearly.
  int64_t between_blind = 0, between_nodes = 0;
  int replanned = 0;
  for (uint64_t seed = 1; seed <= 400; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const int nodes = std::uniform_int_distribution<int>(2, 8)(rng);
    const int ranks_per_node = std::uniform_int_distribution<int>(1, 8)(rng);
    Shape shape = testing::RandomPairShape(rng, 1, 1);
    shape.ranks = nodes * ranks_per_node;
    shape.nodes = nodes;
    shape.experts = std::uniform_int_distribution<int>(2, 2 * shape.ranks)(rng);
    const LoadMatrix load = testing::RandomLoad(rng, shape);
    const Placement current = testing::RandomPlacement(rng, shape);
    const double target = std::uniform_real_distribution<double>(0.8, 1.0)(rng);
    const double cost = std::uniform_int_distribution<int>(0, 1)(rng) ? 2.0 : 1.5;
    PairReplan blind, aware, again;
    std::vector<int> out_blind, out_aware, out_again;
    PairReplan::Result r_blind, r_aware, r_again;
    const bool ok_blind =
        blind.Run(load.row(0), current.layer(0), shape.ranks, 0, 1.0, target, out_blind, r_blind);
    const bool ok_aware = aware.Run(load.row(0), current.layer(0), shape.ranks, ranks_per_node,
                                    cost, target, out_aware, r_aware);
    ASSERT_EQ(ok_aware, ok_blind);
    if (!ok_aware) continue;
    ++replanned;
    ExpectValidLayer(out_aware, shape.experts);
    EXPECT_GE(r_aware.balancedness, r_blind.balancedness - 1e-12);
    EXPECT_LE(r_aware.changes, r_blind.changes);
    between_blind += CopiesBetweenNodes(current.layer(0), out_blind, ranks_per_node);
    between_nodes += CopiesBetweenNodes(current.layer(0), out_aware, ranks_per_node);
    // Deterministic, and a PairReplan reused from another layer gives the same.
    ASSERT_TRUE(blind.Run(load.row(0), current.layer(0), shape.ranks, ranks_per_node, cost, target,
                          out_again, r_again));
    EXPECT_EQ(out_again, out_aware);
  }
  std::printf(
      "%d layers re-planned; copies between nodes: %lld ignoring nodes, %lld weighing them\n",
      replanned, static_cast<long long>(between_blind), static_cast<long long>(between_nodes));
  EXPECT_GT(replanned, 200);
  EXPECT_LE(between_nodes, 0.9 * between_blind);
}

TEST(PairReplanTest, OneNodeOrCostOneIgnoresNodes) {
  // ranks_per_node 0 or == ranks (one node) and inter_node_cost 1 give exactly the node-blind
  // result.
  for (uint64_t seed = 1; seed <= 100; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    Shape shape = testing::RandomPairShape(rng, 1, 32);
    if (shape.ranks % 2) ++shape.ranks;
    const LoadMatrix load = testing::RandomLoad(rng, shape);
    const Placement current = testing::RandomPlacement(rng, shape);
    PairReplan p;
    std::vector<int> base, out;
    PairReplan::Result r;
    const bool ok = p.Run(load.row(0), current.layer(0), shape.ranks, 0, 1.0, 0.95, base, r);
    for (auto [rpn, cost] : {std::pair{shape.ranks, 3.0}, std::pair{shape.ranks / 2, 1.0}}) {
      out.clear();
      ASSERT_EQ(p.Run(load.row(0), current.layer(0), shape.ranks, rpn, cost, 0.95, out, r), ok);
      if (ok) {
        EXPECT_EQ(out, base);
      }
    }
  }
}

}  // namespace
}  // namespace eplb
