// Tests of the swift balancer: validity, determinism and the promises of incremental mode
// (never worse, caps respected, balanced layers untouched, no movement without need) on random
// cases; quality and movement on the real DeepSeek-V3 statistics when they are present.
#include <fmt/format.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>

#include "eplb/algorithm.h"
#include "eplb/formats.h"
#include "eplb/loads.h"
#include "eplb/planner.h"
#include "testing/random_cases.h"

namespace eplb {
namespace {

StatusOr<BalanceResult> RunSwift(const LoadMatrix& load, const Shape& shape,
                                 const Placement* current = nullptr,
                                 AlgorithmOptions options = {}) {
  auto balancer = MakeBalancer("swift", options);
  EXPECT_TRUE(balancer.ok());
  return (*balancer)->Balance({&load, shape, current});
}

// The promise of a re-plan from `current`: no layer less balanced in `placed`, and a layer that
// is not more balanced is left as it was.
void ExpectNoLayerWorseAndUnchangedWhereNotBetter(const LoadMatrix& load, const Placement& current,
                                                  const Placement& placed) {
  for (int l = 0; l < current.layers(); ++l) {
    const double before = LayerBalancedness(load.row(l), current, l);
    const double after = LayerBalancedness(load.row(l), placed, l);
    // Exactly, as measured here (before: allowed 1e-12 less, and changes for equal balance).
    EXPECT_GE(after, before) << "layer " << l;
    if (SlotsChangedInLayer(current, placed, l) > 0) EXPECT_GT(after, before) << "layer " << l;
  }
}

// Copies between nodes: expert copies whose source and destination nodes differ (the planner
// takes a source on the destination's node whenever one holds the expert).
int64_t CopiesBetweenNodes(const Placement& from, const Placement& to, const Shape& shape) {
  auto plan = PlanTransfers(from, to, shape, {.expert_bytes = 1});
  EXPECT_TRUE(plan.ok()) << plan.status().ToString();
  return plan.ok() ? plan->inter_node_bytes : -1;
}

// A generated workload shift at 256 ranks x 2 slots (16 layers): the loads before and after, and
// swift's placement for the loads before.
struct GeneratorShift {
  LoadMatrix before, after;
  Shape shape{.layers = 16, .experts = 256, .ranks = 256, .slots_per_rank = 2};
  Placement placed;
};
GeneratorShift MakeGeneratorShift() {
  GeneratorShift s;
  GeneratorOptions g{.layers = s.shape.layers};
  s.before = GenerateLoad(g);
  g.shift = 1;
  s.after = GenerateLoad(g);
  auto placed = RunSwift(s.before, s.shape);
  EXPECT_TRUE(placed.ok());
  if (placed.ok()) s.placed = placed->placement;
  return s;
}

TEST(SwiftTest, FromScratchIsValidAndDeterministic) {
  for (uint64_t seed = 1; seed <= 300; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const Shape shape = testing::RandomShape(rng);
    const LoadMatrix load = testing::RandomLoad(rng, shape);
    auto a = RunSwift(load, shape);
    ASSERT_TRUE(a.ok()) << a.status().ToString();
    ASSERT_TRUE(ValidatePlacement(a->placement, shape).ok())
        << ValidatePlacement(a->placement).message();
    auto b = RunSwift(load, shape);
    ASSERT_TRUE(b.ok());
    EXPECT_EQ(a->placement, b->placement);
  }
}

TEST(SwiftTest, IncrementalNeverMakesALayerWorseAndStaysValid) {
  for (uint64_t seed = 1; seed <= 300; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const Shape shape = testing::RandomShape(rng);
    const LoadMatrix load = testing::RandomLoad(rng, shape);
    const Placement current = testing::RandomPlacement(rng, shape);
    auto r = RunSwift(load, shape, &current);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_TRUE(ValidatePlacement(r->placement, shape).ok())
        << ValidatePlacement(r->placement).message();
    ExpectNoLayerWorseAndUnchangedWhereNotBetter(load, current, r->placement);
    auto again = RunSwift(load, shape, &current);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(r->placement, again->placement);
  }
}

// Found in review: with loads that tie but for their last bits, the searches' incremental
// figures said "better" where the measured balancedness was a few ulps worse, or equal.
TEST(SwiftTest, NearTiesNeverReturnALayerLessBalancedOrChangedForNothing) {
  const Shape shape{.layers = 1, .experts = 6, .ranks = 11, .slots_per_rank = 1};
  LoadMatrix load(1, 6);
  const double base = 9007199254740992.0;  // 2^53
  const double extra[] = {2, 2, 6, 4, 2, 6};
  for (int e = 0; e < 6; ++e) load.at(0, e) = base + extra[e];
  const Placement current(1, 11, 1, 6, {3, 0, 2, 2, 2, 2, 2, 0, 1, 5, 4});
  AlgorithmOptions o;
  o.target_balancedness = 0.97;
  o.skip_balancedness = 0.97;
  o.max_changes_per_cycle = 1;
  o.min_gain_per_change = 0.5;
  o.inter_node_cost = 1;
  auto r = RunSwift(load, shape, &current, o);
  ASSERT_TRUE(r.ok()) << r.status().ToString();
  ExpectNoLayerWorseAndUnchangedWhereNotBetter(load, current, r->placement);
  // Near-tie loads on random shapes, with and without caps.
  for (uint64_t seed = 1; seed <= 300; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const Shape s = testing::RandomShape(rng, 6);
    LoadMatrix tie(s.layers, s.experts);
    for (int l = 0; l < s.layers; ++l) {
      for (int e = 0; e < s.experts; ++e) tie.at(l, e) = base + 2.0 * (rng() % 4);
    }
    const Placement cur = testing::RandomPlacement(rng, s);
    AlgorithmOptions capped;
    capped.max_changes_per_cycle = static_cast<int64_t>(seed % 3);
    for (const AlgorithmOptions& opt : {AlgorithmOptions{}, capped}) {
      auto got = RunSwift(tie, s, &cur, opt);
      ASSERT_TRUE(got.ok()) << got.status().ToString();
      ExpectNoLayerWorseAndUnchangedWhereNotBetter(tie, cur, got->placement);
    }
  }
}

TEST(SwiftTest, IncrementalRespectsChangeCaps) {
  for (uint64_t seed = 1; seed <= 200; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const Shape shape = testing::RandomShape(rng, 6);
    const LoadMatrix load = testing::RandomLoad(rng, shape);
    const Placement current = testing::RandomPlacement(rng, shape);
    AlgorithmOptions per_layer;
    per_layer.target_balancedness = 1.0;
    per_layer.max_changes_per_layer = static_cast<int>(seed % 4);
    auto r = RunSwift(load, shape, &current, per_layer);
    ASSERT_TRUE(r.ok());
    for (int l = 0; l < shape.layers; ++l) {
      EXPECT_LE(SlotsChangedInLayer(current, r->placement, l), per_layer.max_changes_per_layer);
    }
    AlgorithmOptions per_cycle;
    per_cycle.target_balancedness = 1.0;
    per_cycle.max_changes_per_cycle = static_cast<int64_t>(seed % 7);
    auto c = RunSwift(load, shape, &current, per_cycle);
    ASSERT_TRUE(c.ok());
    EXPECT_LE(SlotsChanged(current, c->placement), per_cycle.max_changes_per_cycle);
  }
}

TEST(SwiftTest, BalancedLayersAreLeftAlone) {
  // Two ranks of two slots: layer 0 is perfectly balanced, layer 1 is not.
  auto load = LoadMatrix::FromRows({{5, 5, 5, 5}, {9, 1, 1, 1}});
  ASSERT_TRUE(load.ok());
  const Shape shape{.layers = 2, .experts = 4, .ranks = 2, .slots_per_rank = 2};
  const Placement current(2, 2, 2, 4, {0, 1, 2, 3, 0, 1, 2, 3});
  auto r = RunSwift(*load, shape, &current);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->skipped_layers, std::vector<int>{0});
  EXPECT_EQ(SlotsChangedInLayer(current, r->placement, 0), 0);
  // Layer 1: rank 0 carries 9 + 1 whatever its partner, so no change can help and none is made.
  EXPECT_EQ(SlotsChangedInLayer(current, r->placement, 1), 0);
  EXPECT_GE(LayerBalancedness(load->row(1), r->placement, 1),
            LayerBalancedness(load->row(1), current, 1));
}

TEST(SwiftTest, ShiftedHotExpertGetsAReplicaWithOneChange) {
  // Four ranks of two slots, four experts plus four spare slots replicating expert 0, which has
  // gone cold; expert 3 has become hot. One slot changing (a spare replica of 0 becomes one of 3)
  // is enough to balance the layer, and swift must find it.
  auto load = LoadMatrix::FromRows({{4, 10, 10, 30}});
  ASSERT_TRUE(load.ok());
  const Shape shape{.layers = 1, .experts = 4, .ranks = 4, .slots_per_rank = 2};
  const Placement current(1, 4, 2, 4, {0, 1, 0, 2, 0, 3, 0, 1});
  AlgorithmOptions options;
  options.target_balancedness = 0.9;
  auto r = RunSwift(*load, shape, &current, options);
  ASSERT_TRUE(r.ok());
  EXPECT_GT(LayerBalancedness(load->row(0), r->placement, 0),
            LayerBalancedness(load->row(0), current, 0));
  EXPECT_LE(SlotsChanged(current, r->placement), 2);
}

TEST(SwiftTest, ZeroLoadAndSingleRankShapesWork) {
  LoadMatrix zero(2, 6);
  const Shape shape{.layers = 2, .experts = 6, .ranks = 3, .slots_per_rank = 3};
  auto a = RunSwift(zero, shape);
  ASSERT_TRUE(a.ok());
  EXPECT_TRUE(ValidatePlacement(a->placement, shape).ok());
  auto b = RunSwift(zero, shape, &a->placement);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(SlotsChanged(a->placement, b->placement), 0);
  auto load = LoadMatrix::FromRows({{3, 1, 4, 1}});
  ASSERT_TRUE(load.ok());
  const Shape one{.layers = 1, .experts = 4, .ranks = 1, .slots_per_rank = 4};
  auto c = RunSwift(*load, one);
  ASSERT_TRUE(c.ok());
  EXPECT_TRUE(ValidatePlacement(c->placement, one).ok());
}

// Found by fuzz_balance: when adding a piece leaves a rank's load unchanged (zero loads, or loads
// below the others' rounding), the lightest rank takes piece after piece, and the last expert's
// replicas once found free slots only on a rank that already held it; the packer then wrote past
// the layer (heap corruption). Every small shape with such loads must give a valid placement.
TEST(SwiftTest, LoadsThatVanishInRankLoadsGiveValidPlacements) {
  const double tiny = 2.3e-289;  // vanishes next to 16421 in a double sum
  for (int ranks = 1; ranks <= 12; ++ranks) {
    for (int spr = 1; spr <= 5; ++spr) {
      for (int experts = spr; experts <= ranks * spr; ++experts) {
        for (double rest : {0.0, tiny}) {
          SCOPED_TRACE(
              fmt::format("{} ranks x {} slots, {} experts, rest {}", ranks, spr, experts, rest));
          const Shape shape{.layers = 1, .experts = experts, .ranks = ranks, .slots_per_rank = spr};
          LoadMatrix load(1, experts);
          for (int e = 0; e < experts; ++e) load.at(0, e) = e == 0 ? 16421 : rest;
          auto a = RunSwift(load, shape);
          ASSERT_TRUE(a.ok()) << a.status().ToString();
          ASSERT_TRUE(ValidatePlacement(a->placement, shape).ok())
              << ValidatePlacement(a->placement, shape).message();
        }
      }
    }
  }
}

TEST(SwiftTest, AnUnreachableTargetReturnsTheMostBalancedPlacementSeen) {
  // A cap on changes per layer selects the excess search at 2 slots per rank too; this one does
  // not bind (a layer has 512 slots). There the default target (0.97) is out of reach of the
  // excess search on most layers, and after the peak stops falling its descent goes on moving
  // load between the ranks below it. Swift returns the most balanced placement a search passed
  // through (the one with fewer changes among equals), not where it stopped: on this shift
  // 12.61% of the slots change, 14.09% when it returned where it stopped, at the same
  // balancedness (0.9427).
  const GeneratorShift s = MakeGeneratorShift();
  AlgorithmOptions capped;
  capped.max_changes_per_layer = s.shape.slots();
  auto pb = RunSwift(s.after, s.shape, &s.placed, capped);
  ASSERT_TRUE(pb.ok());
  const double changed =
      static_cast<double>(SlotsChanged(s.placed, pb->placement)) / (16.0 * s.shape.slots());
  EXPECT_GE(MeanBalancedness(s.after, pb->placement), 0.94);
  EXPECT_LE(changed, 0.135);
}

TEST(SwiftTest, TwoSlotsPerRankRePairTheLayerToTheTarget) {
  // Without caps, two slots per rank select the pairing re-plan (pair_replan.cc). On this shift
  // it reaches 0.9680 with 24.45% of the slots changed, where the excess search (above) stops at
  // 0.9427: most layers at the default target (0.97), the others as close as their replica
  // counts allow.
  const GeneratorShift s = MakeGeneratorShift();
  auto pb = RunSwift(s.after, s.shape, &s.placed);
  ASSERT_TRUE(pb.ok());
  const double changed =
      static_cast<double>(SlotsChanged(s.placed, pb->placement)) / (16.0 * s.shape.slots());
  std::printf("256x2 generator shift: stale %.4f, swift %.4f with %.2f%% changed\n",
              MeanBalancedness(s.after, s.placed), MeanBalancedness(s.after, pb->placement),
              100 * changed);
  EXPECT_GE(MeanBalancedness(s.after, pb->placement), 0.96);
  for (int l = 0; l < s.shape.layers; ++l) {
    EXPECT_GE(LayerBalancedness(s.after.row(l), pb->placement, l), 0.91) << "layer " << l;
  }
  EXPECT_LE(changed, 0.26);
}

TEST(SwiftTest, TwoSlotsPerRankOnNodesRePairTheLayerCopyingFewerExpertsBetweenNodes) {
  // The same shift on 32 nodes of 8 ranks: weighing copies between nodes (the default 2) keeps
  // the pairing re-plan (the excess search stops near 0.94) at the balancedness it reaches
  // ignoring nodes, and copies fewer experts between nodes. Now 0.9680 either way, with 1864
  // copies between nodes instead of 1943 (on 4 nodes 1244 instead of 1356) and 2001 slots
  // changed instead of 2003. Modest: the sorted pairing leaves little room (pool ranks end
  // within 2% of the cap), so which experts arrive where is mostly fixed by the loads.
  GeneratorShift s = MakeGeneratorShift();
  s.shape.nodes = 32;
  auto ignored = RunSwift(s.after, s.shape, &s.placed, {.inter_node_cost = 1});
  auto weighed = RunSwift(s.after, s.shape, &s.placed);
  ASSERT_TRUE(ignored.ok() && weighed.ok());
  ASSERT_TRUE(ValidatePlacement(weighed->placement, s.shape).ok());
  const double bal_ignored = MeanBalancedness(s.after, ignored->placement);
  const double bal_weighed = MeanBalancedness(s.after, weighed->placement);
  const int64_t between_ignored = CopiesBetweenNodes(s.placed, ignored->placement, s.shape);
  const int64_t between_weighed = CopiesBetweenNodes(s.placed, weighed->placement, s.shape);
  const int64_t changed_ignored = SlotsChanged(s.placed, ignored->placement);
  const int64_t changed_weighed = SlotsChanged(s.placed, weighed->placement);
  std::printf(
      "256x2 generator shift on 32 nodes: %.4f (ignoring nodes %.4f), %lld copies between nodes "
      "(%lld), %lld slots changed (%lld)\n",
      bal_weighed, bal_ignored, static_cast<long long>(between_weighed),
      static_cast<long long>(between_ignored), static_cast<long long>(changed_weighed),
      static_cast<long long>(changed_ignored));
  EXPECT_GE(bal_weighed, 0.96);
  EXPECT_GE(bal_weighed, bal_ignored - 0.001);
  EXPECT_LE(between_weighed, 0.97 * between_ignored);
  EXPECT_LE(changed_weighed, changed_ignored);
  auto again = RunSwift(s.after, s.shape, &s.placed, {.threads = 2});
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->placement, weighed->placement);
}

TEST(SwiftTest, TwoSlotsPerRankAnUnreachableTargetStillReachesTheReachableBalance) {
  // A target the replica counts cannot reach makes the pairing re-plan retry with looser caps;
  // the caps must stay close enough that asking for more never ends much below what the default
  // target reaches. Now 0.9755 / 0.9704 / 0.9673 at 0.98 / 0.99 / 1.0 against 0.9680; with a
  // single retry 5% looser it fell to 0.9529 at 0.99 and 0.9448 at 1.0.
  const GeneratorShift s = MakeGeneratorShift();
  auto reachable = RunSwift(s.after, s.shape, &s.placed);
  ASSERT_TRUE(reachable.ok());
  const double base = MeanBalancedness(s.after, reachable->placement);
  for (double target : {0.98, 0.99, 1.0}) {
    SCOPED_TRACE("target " + std::to_string(target));
    AlgorithmOptions options;
    options.target_balancedness = target;
    auto r = RunSwift(s.after, s.shape, &s.placed, options);
    ASSERT_TRUE(r.ok());
    const double got = MeanBalancedness(s.after, r->placement);
    std::printf("256x2 generator shift, target %.2f: %.4f (target 0.97: %.4f)\n", target, got,
                base);
    EXPECT_GE(got, base - 0.003);
  }
}

TEST(SwiftTest, PairReplanIsValidNeverWorseAndDeterministic) {
  // Two slots per rank on one node: every re-plan goes through the pairing re-plan (or, where it
  // finds nothing better, the excess search). Random shapes, loads (zeros, ties, hot experts) and
  // placements in use.
  for (uint64_t seed = 1; seed <= 300; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const Shape shape = testing::RandomPairShape(rng, 4, 40);
    const LoadMatrix load = testing::RandomLoad(rng, shape);
    const Placement current = testing::RandomPlacement(rng, shape);
    AlgorithmOptions options;
    options.target_balancedness = std::uniform_real_distribution<double>(0.8, 1.0)(rng);
    auto r = RunSwift(load, shape, &current, options);
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_TRUE(ValidatePlacement(r->placement, shape).ok())
        << ValidatePlacement(r->placement).message();
    ExpectNoLayerWorseAndUnchangedWhereNotBetter(load, current, r->placement);
    options.threads = 2;
    auto again = RunSwift(load, shape, &current, options);
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(r->placement, again->placement);
  }
}

TEST(SwiftTest, NodesWeighNothingAtInterNodeCostOneOrOnOneNode) {
  for (uint64_t seed = 1; seed <= 200; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    Shape shape = testing::RandomShape(rng);
    if (shape.nodes == 1 && shape.ranks % 2 == 0) shape.nodes = 2;
    shape.groups = 1;  // groups that divide over the nodes confine experts to nodes (below)
    const LoadMatrix load = testing::RandomLoad(rng, shape);
    const Placement current = testing::RandomPlacement(rng, shape);
    Shape one_node = shape;
    one_node.nodes = 1;
    auto plain = RunSwift(load, one_node, &current);
    ASSERT_TRUE(plain.ok()) << plain.status().ToString();
    auto ignored = RunSwift(load, shape, &current, {.inter_node_cost = 1});
    ASSERT_TRUE(ignored.ok()) << ignored.status().ToString();
    EXPECT_EQ(ignored->placement, plain->placement);
    auto heavy = RunSwift(load, one_node, &current, {.inter_node_cost = 5});
    ASSERT_TRUE(heavy.ok()) << heavy.status().ToString();
    EXPECT_EQ(heavy->placement, plain->placement);
  }
}

TEST(SwiftTest, WeighingNodesCopiesFewerExpertsBetweenNodes) {
  // The embedded generator's workload shift on 32 ranks x 5 slots in 4 nodes: weighing a copy
  // between nodes as 2 slot changes (the default) must keep most copies within their node and
  // still reach the target.
  const Shape shape{.layers = 8, .experts = 128, .ranks = 32, .slots_per_rank = 5, .nodes = 4};
  const LoadMatrix a = GenerateLoad({.layers = 8, .experts = 128});
  const LoadMatrix b = GenerateLoad({.layers = 8, .experts = 128, .shift = 1});
  auto start = RunSwift(a, shape);
  ASSERT_TRUE(start.ok());
  const Placement& old = start->placement;
  auto ignored = RunSwift(b, shape, &old, {.inter_node_cost = 1});
  auto weighed = RunSwift(b, shape, &old);
  ASSERT_TRUE(ignored.ok() && weighed.ok());
  const int64_t between_ignored = CopiesBetweenNodes(old, ignored->placement, shape);
  const int64_t between_weighed = CopiesBetweenNodes(old, weighed->placement, shape);
  std::printf(
      "between nodes: %lld copies ignoring nodes, %lld weighing them; slots changed %lld "
      "and %lld\n",
      static_cast<long long>(between_ignored), static_cast<long long>(between_weighed),
      static_cast<long long>(SlotsChanged(old, ignored->placement)),
      static_cast<long long>(SlotsChanged(old, weighed->placement)));
  EXPECT_LE(between_weighed * 2, between_ignored);
  EXPECT_GE(MeanBalancedness(b, weighed->placement), 0.97);
  EXPECT_GE(MeanBalancedness(b, ignored->placement), 0.97);
}

// The node of every replica of each expert group in a layer (-1: the group spans nodes).
std::vector<int> GroupNodes(const Placement& p, const Shape& shape, int layer) {
  std::vector<int> node(shape.groups, -2);  // -2: not seen yet
  const int per_group = shape.experts / shape.groups;
  const std::span<const int> ids = p.layer(layer);
  for (int i = 0; i < static_cast<int>(ids.size()); ++i) {
    int& n = node[ids[i] / per_group];
    const int here = shape.NodeOf(i / shape.slots_per_rank);
    n = n == -2 || n == here ? here : -1;
  }
  return node;
}

// Groups that divide over the nodes: each group's replicas on one node, groups / nodes groups per
// node, as deepseek's hierarchical policy; and a re-plan keeps every replica on its group's node.
TEST(SwiftTest, GroupsThatDivideOverNodesStayOnOneNode) {
  double swift_sum = 0, deepseek_sum = 0;
  for (uint64_t seed = 1; seed <= 60; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const int nodes = seed % 2 ? 2 : 4;
    const Shape shape{.layers = 3,
                      .experts = 32,
                      .ranks = 16,
                      .slots_per_rank = 2 + static_cast<int>(seed % 4),
                      .nodes = nodes,
                      .groups = 8};
    const LoadMatrix a = testing::RandomLoad(rng, shape), b = testing::RandomLoad(rng, shape);
    auto fresh = RunSwift(a, shape);
    ASSERT_TRUE(fresh.ok()) << fresh.status().ToString();
    ASSERT_TRUE(ValidatePlacement(fresh->placement, shape).ok());
    auto two_threads = RunSwift(a, shape, nullptr, {.threads = 2});
    ASSERT_TRUE(two_threads.ok());
    EXPECT_EQ(two_threads->placement, fresh->placement);
    auto replan = RunSwift(b, shape, &fresh->placement);
    ASSERT_TRUE(replan.ok()) << replan.status().ToString();
    ASSERT_TRUE(ValidatePlacement(replan->placement, shape).ok());
    for (int l = 0; l < shape.layers; ++l) {
      const std::vector<int> home = GroupNodes(fresh->placement, shape, l);
      std::vector<int> groups_on(nodes, 0);
      for (int n : home) {
        ASSERT_GE(n, 0) << "layer " << l << ": a group spans nodes";
        ++groups_on[n];
      }
      EXPECT_EQ(groups_on, std::vector<int>(nodes, shape.groups / nodes)) << "layer " << l;
      EXPECT_EQ(GroupNodes(replan->placement, shape, l), home) << "layer " << l;
    }
    auto deepseek = (*MakeBalancer("deepseek"))->Balance({&a, shape, nullptr});
    ASSERT_TRUE(deepseek.ok());
    swift_sum += MeanBalancedness(a, fresh->placement);
    deepseek_sum += MeanBalancedness(a, deepseek->placement);
  }
  EXPECT_GE(swift_sum, deepseek_sum);  // on average at least as balanced as the reference
}

// Otherwise (groups that do not divide over the nodes, or a node's experts too few to fill a
// rank's slots with distinct experts) swift balances globally: groups change nothing.
TEST(SwiftTest, OtherwiseGroupsChangeNothing) {
  const std::vector<Shape> shapes = {
      {.layers = 2, .experts = 24, .ranks = 8, .slots_per_rank = 4, .nodes = 4, .groups = 6},
      {.layers = 2, .experts = 8, .ranks = 8, .slots_per_rank = 3, .nodes = 4, .groups = 4}};
  for (const Shape& shape : shapes) {
    SCOPED_TRACE(shape.ToString());
    std::mt19937_64 rng(5);
    const LoadMatrix load = testing::RandomLoad(rng, shape);
    Shape global = shape;
    global.groups = 1;
    auto grouped = RunSwift(load, shape), plain = RunSwift(load, global);
    ASSERT_TRUE(grouped.ok() && plain.ok());
    EXPECT_EQ(grouped->placement, plain->placement);
    const Placement current = testing::RandomPlacement(rng, shape);
    grouped = RunSwift(load, shape, &current);
    plain = RunSwift(load, global, &current);
    ASSERT_TRUE(grouped.ok() && plain.ok());
    EXPECT_EQ(grouped->placement, plain->placement);
  }
}

TEST(SwiftTest, RejectsBadInputAndOptions) {
  LoadMatrix load(2, 8);
  const Shape shape{.layers = 2, .experts = 8, .ranks = 4, .slots_per_rank = 3};
  LoadMatrix wrong(3, 8);
  auto r = RunSwift(wrong, shape);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("load is 3 layers x 8 experts, shape expects 2 x 8"),
            std::string::npos)
      << r.status().message();
  // A shape past swift's working-state limit is refused before anything is allocated (before:
  // std::bad_alloc, or gigabytes taken).
  const Shape wide{.layers = 1, .experts = 131072, .ranks = 8192, .slots_per_rank = 16};
  r = RunSwift(LoadMatrix(1, 131072), wide);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(),
            "swift: ranks x experts = 8192 x 131072 is more than 2^27: its working state takes up "
            "to 6 bytes per rank and expert (deepseek has no such limit)");
  // The same answer without a load, for a caller that checks the shape up front.
  EXPECT_EQ((*MakeBalancer("swift"))->CheckShape(wide).message(), r.status().message());
  EXPECT_TRUE((*MakeBalancer("deepseek"))->CheckShape(wide).ok());
  EXPECT_FALSE((*MakeBalancer("swift"))->CheckShape(Shape{}).ok());  // Shape::Validate's errors
  // Loads whose sum overflows (before: the retry loop never ended on NaN balancedness).
  LoadMatrix huge(2, 8);
  for (int e = 0; e < 8; ++e) huge.at(1, e) = 1e308;
  auto fresh = RunSwift(load, shape);
  ASSERT_TRUE(fresh.ok());
  const Placement* currents[] = {nullptr, &fresh->placement};
  for (const Placement* current : currents) {
    auto h = RunSwift(huge, shape, current);
    ASSERT_FALSE(h.ok());
    EXPECT_EQ(h.status().message(),
              "loads of layer 1 sum to more than the largest double (1.7976931348623157e+308); "
              "scale them down");
  }
  const Placement bad(2, 4, 3, 8, std::vector<int>(24, 0));
  auto c = RunSwift(load, shape, &bad);
  ASSERT_FALSE(c.ok());
  EXPECT_NE(c.status().message().find("current placement: layer 0, rank 0"), std::string::npos)
      << c.status().message();
  // Options are checked when the balancer is made.
  auto bad_option = [](void (*set)(AlgorithmOptions&)) {
    AlgorithmOptions options;
    set(options);
    auto b = MakeBalancer("swift", options);
    EXPECT_FALSE(b.ok());
    return b.ok() ? std::string() : std::string(b.status().message());
  };
  EXPECT_EQ(bad_option([](AlgorithmOptions& o) { o.target_balancedness = 1.5; }),
            "swift: target_balancedness must be in (0, 1], got 1.5");
  EXPECT_EQ(bad_option([](AlgorithmOptions& o) { o.skip_balancedness = 0; }),
            "swift: skip_balancedness must be in (0, 1], got 0");
  EXPECT_EQ(bad_option([](AlgorithmOptions& o) { o.min_gain_per_change = -1; }),
            "swift: min_gain_per_change must be a finite number >= 0, got -1");
  EXPECT_EQ(bad_option([](AlgorithmOptions& o) { o.inter_node_cost = 0.5; }),
            "swift: inter_node_cost must be a finite number >= 1, got 0.5");
  EXPECT_EQ(bad_option([](AlgorithmOptions& o) { o.inter_node_cost = NAN; }),
            "swift: inter_node_cost must be a finite number >= 1, got nan");
  EXPECT_EQ(bad_option([](AlgorithmOptions& o) { o.max_changes_per_cycle = -2; }),
            "swift: change caps must be >= 0, or -1 for no cap, got -1 per layer and -2 per cycle");
  EXPECT_TRUE(MakeBalancer("deepseek", AlgorithmOptions{.target_balancedness = 1.5}).ok())
      << "deepseek has no options to check";
  auto unknown = MakeBalancer("nope");
  ASSERT_FALSE(unknown.ok());
  EXPECT_EQ(unknown.status().message(), "unknown algorithm 'nope'; known: deepseek, swift");
}

// ---- real DeepSeek-V3 statistics (skipped when absent) ----

class SwiftRealDataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const std::string dir = testing::DataDir();
    if (dir.empty() || !std::filesystem::is_directory(dir + "/deepseek-v3")) {
      GTEST_SKIP() << "expert-load data not found (set EPLB_DATA_DIR to the expert-load folder)";
    }
    dir_ = dir + "/deepseek-v3/";
  }
  LoadMatrix Load(const std::string& name) {
    auto f = ReadLoadFile(dir_ + name + ".json");
    EXPECT_TRUE(f.ok()) << f.status().ToString();
    return f->moe;
  }
  std::string dir_;
};

const char* const kWorkloads[] = {
    "prefill_in512",        "prefill_in1024",        "prefill_in2048",       "prefill_in4096",
    "prefill_in500out1500", "prefill_in1000out1000", "prefill_in1800out100", "prefill_in2000out100",
    "decode_in500out1500",  "decode_in1000out1000",  "decode_in1800out100",  "decode_in2000out100"};

TEST_F(SwiftRealDataTest, FromScratchBeatsTheReference) {
  auto deepseek = MakeBalancer("deepseek");
  ASSERT_TRUE(deepseek.ok());
  for (const char* name : kWorkloads) {
    const LoadMatrix load = Load(name);
    const Shape wide{.layers = 58, .experts = 256, .ranks = 64, .slots_per_rank = 5};
    auto s = RunSwift(load, wide);
    ASSERT_TRUE(s.ok());
    const double swift_wide = MeanBalancedness(load, s->placement);
    EXPECT_GE(swift_wide, 0.98) << name;
    const Shape narrow{.layers = 58, .experts = 256, .ranks = 256, .slots_per_rank = 2};
    auto n = RunSwift(load, narrow);
    auto d = (*deepseek)->Balance({&load, narrow, nullptr});
    ASSERT_TRUE(n.ok() && d.ok());
    const double swift_narrow = MeanBalancedness(load, n->placement);
    const double ref_narrow = MeanBalancedness(load, d->placement);
    EXPECT_GE(swift_narrow, ref_narrow) << name;
    std::printf("%-22s 64x5 swift %.4f | 256x2 swift %.4f deepseek %.4f\n", name, swift_wide,
                swift_narrow, ref_narrow);
  }
}

TEST_F(SwiftRealDataTest, RecoversFromAWorkloadShiftMovingFewExperts) {
  const Shape shape{.layers = 58, .experts = 256, .ranks = 64, .slots_per_rank = 5};
  const std::pair<const char*, const char*> shifts[] = {
      {"decode_in500out1500", "decode_in2000out100"},
      {"prefill_in512", "prefill_in4096"},
      {"prefill_in4096", "decode_in1000out1000"},
      {"decode_in2000out100", "prefill_in500out1500"}};
  for (auto [from, to] : shifts) {
    const LoadMatrix a = Load(from);
    const LoadMatrix b = Load(to);
    auto pa = RunSwift(a, shape);
    ASSERT_TRUE(pa.ok());
    auto pb = RunSwift(b, shape, &pa->placement);
    ASSERT_TRUE(pb.ok());
    const double stale = MeanBalancedness(b, pa->placement);
    const double after = MeanBalancedness(b, pb->placement);
    const double changed =
        static_cast<double>(SlotsChanged(pa->placement, pb->placement)) / (58.0 * shape.slots());
    std::printf("%s -> %s: stale %.4f, after %.4f, %.2f%% of slots changed\n", from, to, stale,
                after, 100 * changed);
    EXPECT_GE(after, 0.97) << from << " -> " << to;
    EXPECT_LE(changed, 0.15) << from << " -> " << to;
  }
}

TEST_F(SwiftRealDataTest, OnEightNodesFewCopiesCrossNodes) {
  // 64 ranks in 8 nodes: ignoring nodes, most copies cross them (7 of 8 partners are elsewhere);
  // weighing them (the default), few do, for a few more slots changed.
  const Shape shape{.layers = 58, .experts = 256, .ranks = 64, .slots_per_rank = 5, .nodes = 8};
  const std::pair<const char*, const char*> shifts[] = {
      {"prefill_in512", "prefill_in4096"}, {"decode_in500out1500", "decode_in2000out100"}};
  for (auto [from, to] : shifts) {
    const LoadMatrix a = Load(from);
    const LoadMatrix b = Load(to);
    auto pa = RunSwift(a, shape);
    ASSERT_TRUE(pa.ok());
    auto ignored = RunSwift(b, shape, &pa->placement, {.inter_node_cost = 1});
    auto weighed = RunSwift(b, shape, &pa->placement);
    ASSERT_TRUE(ignored.ok() && weighed.ok());
    const double slots = 58.0 * shape.slots();
    const double between_ignored =
        CopiesBetweenNodes(pa->placement, ignored->placement, shape) / slots;
    const double between_weighed =
        CopiesBetweenNodes(pa->placement, weighed->placement, shape) / slots;
    const double changed_ignored = SlotsChanged(pa->placement, ignored->placement) / slots;
    const double changed_weighed = SlotsChanged(pa->placement, weighed->placement) / slots;
    const double after = MeanBalancedness(b, weighed->placement);
    std::printf(
        "8 nodes, %s -> %s: %.4f; between nodes %.2f%% of slots (ignoring nodes %.2f%%), "
        "changed %.2f%% (%.2f%%)\n",
        from, to, after, 100 * between_weighed, 100 * between_ignored, 100 * changed_weighed,
        100 * changed_ignored);
    EXPECT_GE(after, 0.97) << from << " -> " << to;
    EXPECT_LE(between_weighed, 0.4 * between_ignored) << from << " -> " << to;
    EXPECT_LE(changed_weighed, 1.3 * changed_ignored) << from << " -> " << to;
  }
}

TEST_F(SwiftRealDataTest, AnUnreachableTargetStillLowersThePeak) {
  // At 2 slots per rank the default target (0.97) is beyond what most layers allow; swift must
  // still recover close to a full recomputation while moving far fewer slots.
  const Shape shape{.layers = 58, .experts = 256, .ranks = 256, .slots_per_rank = 2};
  const LoadMatrix a = Load("prefill_in512");
  const LoadMatrix b = Load("prefill_in4096");
  auto pa = RunSwift(a, shape);
  ASSERT_TRUE(pa.ok());
  auto pb = RunSwift(b, shape, &pa->placement);
  ASSERT_TRUE(pb.ok());
  auto deepseek = MakeBalancer("deepseek");
  ASSERT_TRUE(deepseek.ok());
  auto fresh = (*deepseek)->Balance({&b, shape, nullptr});
  ASSERT_TRUE(fresh.ok());
  const double after = MeanBalancedness(b, pb->placement);
  const double recompute = MeanBalancedness(b, fresh->placement);
  const double changed =
      static_cast<double>(SlotsChanged(pa->placement, pb->placement)) / (58.0 * shape.slots());
  std::printf(
      "256x2 prefill_in512 -> prefill_in4096: stale %.4f, swift %.4f with %.2f%% changed, "
      "deepseek recompute %.4f\n",
      MeanBalancedness(b, pa->placement), after, 100 * changed, recompute);
  EXPECT_GE(after, recompute - 0.01);
  EXPECT_LE(changed, 0.35);
}

}  // namespace
}  // namespace eplb
