#include "eplb/planner.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "testing/random_cases.h"

namespace eplb {
namespace {

constexpr int64_t kExpertBytes = 1000;

Shape MakeShape(int layers, int experts, int ranks, int slots_per_rank, int nodes) {
  return Shape{.layers = layers,
               .experts = experts,
               .ranks = ranks,
               .slots_per_rank = slots_per_rank,
               .nodes = nodes,
               .groups = 1};
}

Placement Make(const Shape& shape, std::vector<int> ids) {
  return Placement(shape.layers, shape.ranks, shape.slots_per_rank, shape.experts, std::move(ids));
}

TransferPlan PlanOrDie(const Placement& old_placement, const Placement& target, const Shape& shape,
                       PlanOptions options) {
  StatusOr<TransferPlan> plan = PlanTransfers(old_placement, target, shape, options);
  EXPECT_TRUE(plan.ok()) << plan.status().message();
  return plan.ok() ? std::move(plan).value() : TransferPlan{};
}

std::vector<int> SortedRank(const Placement& p, int layer, int rank) {
  std::vector<int> ids;
  for (int s = 0; s < p.slots_per_rank(); ++s) ids.push_back(p.at(layer, rank, s));
  std::sort(ids.begin(), ids.end());
  return ids;
}

// Local slot of `expert` on `rank` in layer `layer`, or -1.
int SlotOf(const Placement& p, int layer, int rank, int expert) {
  for (int s = 0; s < p.slots_per_rank(); ++s) {
    if (p.at(layer, rank, s) == expert) return s;
  }
  return -1;
}

// The keep_slots final placement by the letter of the rule, written independently of the planner:
// experts that stay keep their slot; freed slots, ascending, receive the arriving experts in the
// order they appear in the target rank.
Placement ReferenceKeepSlots(const Placement& old_placement, const Placement& target) {
  Placement final_placement = old_placement;
  for (int l = 0; l < old_placement.layers(); ++l) {
    for (int r = 0; r < old_placement.ranks(); ++r) {
      std::vector<int> freed;
      for (int s = 0; s < old_placement.slots_per_rank(); ++s) {
        if (SlotOf(target, l, r, old_placement.at(l, r, s)) < 0) freed.push_back(s);
      }
      size_t next = 0;
      for (int s = 0; s < target.slots_per_rank(); ++s) {
        const int e = target.at(l, r, s);
        if (SlotOf(old_placement, l, r, e) < 0) final_placement.at(l, r, freed.at(next++)) = e;
      }
      EXPECT_EQ(next, freed.size());
    }
  }
  return final_placement;
}

// Checks every promise of a plan; the source choice is replayed with an independent reference of
// the ordering rule (stable source, same node, fewest sent so far, lowest rank).
void ExpectValidPlan(const Placement& old_placement, const Placement& target, const Shape& shape,
                     const PlanOptions& options, const TransferPlan& plan) {
  const Placement& fin = plan.final_placement;
  ASSERT_TRUE(ValidatePlacement(fin, shape).ok()) << ValidatePlacement(fin, shape).message();
  EXPECT_EQ(ApplyPlan(old_placement, plan), fin);
  for (int l = 0; l < shape.layers; ++l) {
    for (int r = 0; r < shape.ranks; ++r) {
      EXPECT_EQ(SortedRank(fin, l, r), SortedRank(target, l, r)) << "layer " << l << " rank " << r;
    }
  }
  if (options.keep_slots) {
    EXPECT_EQ(fin, ReferenceKeepSlots(old_placement, target));
  } else {
    EXPECT_EQ(fin, target);
  }

  std::set<std::tuple<int, int, int>> destinations;
  std::vector<int64_t> sent(shape.ranks, 0), received(shape.ranks, 0);
  int64_t local = 0, remote = 0, inter_node = 0;
  for (size_t i = 0; i < plan.copies.size(); ++i) {
    const ExpertCopy& c = plan.copies[i];
    SCOPED_TRACE("copy " + std::to_string(i));
    if (i > 0) {
      const ExpertCopy& p = plan.copies[i - 1];
      EXPECT_LT(std::tie(p.layer, p.dst_rank, p.dst_slot),
                std::tie(c.layer, c.dst_rank, c.dst_slot))
          << "copies out of order";
    }
    EXPECT_TRUE(destinations.emplace(c.layer, c.dst_rank, c.dst_slot).second)
        << "destination slot written twice";
    EXPECT_EQ(old_placement.at(c.layer, c.src_rank, c.src_slot), c.expert);
    EXPECT_EQ(fin.at(c.layer, c.dst_rank, c.dst_slot), c.expert);
    EXPECT_NE(old_placement.at(c.layer, c.dst_rank, c.dst_slot), c.expert)
        << "copy for a slot whose expert stays";
    EXPECT_EQ(c.local, c.src_rank == c.dst_rank);
    const bool overwritten = fin.at(c.layer, c.src_rank, c.src_slot) !=
                             old_placement.at(c.layer, c.src_rank, c.src_slot);
    EXPECT_EQ(c.reads_overwritten_slot, overwritten);
    const bool on_rank = SlotOf(old_placement, c.layer, c.dst_rank, c.expert) >= 0;
    EXPECT_EQ(c.local, on_rank) << "local exactly when the rank already holds the expert";
    if (options.keep_slots) {
      EXPECT_FALSE(c.local);
    }
    received[c.dst_rank] += options.expert_bytes;
    if (c.local) {
      ++local;
      continue;
    }
    ++remote;
    const bool same_node = shape.NodeOf(c.src_rank) == shape.NodeOf(c.dst_rank);
    inter_node += same_node ? 0 : options.expert_bytes;

    // Reference source choice, with sends counted in copies (bytes / expert_bytes).
    std::tuple<bool, bool, int64_t, int> best{true, true, INT64_MAX, shape.ranks};
    for (int q = 0; q < shape.ranks; ++q) {
      const int qs = SlotOf(old_placement, c.layer, q, c.expert);
      if (q == c.dst_rank || qs < 0) continue;
      const bool q_overwritten = fin.at(c.layer, q, qs) != c.expert;
      const bool q_remote = shape.NodeOf(q) != shape.NodeOf(c.dst_rank);
      best = std::min(best, std::make_tuple(q_overwritten, q_remote, sent[q], q));
    }
    EXPECT_EQ(std::get<3>(best), c.src_rank) << "source choice";
    if (c.reads_overwritten_slot) {
      EXPECT_TRUE(std::get<0>(best)) << "a stable source existed but an overwritten one was used";
    }
    ++sent[c.src_rank];
  }
  for (int64_t& s : sent) s *= options.expert_bytes;

  EXPECT_EQ(remote, plan.slots_changed);
  EXPECT_EQ(plan.slots_changed, SlotsChanged(old_placement, fin));
  EXPECT_EQ(local, plan.local_copies);
  EXPECT_EQ(plan.bytes_sent, sent);
  EXPECT_EQ(plan.bytes_received, received);
  EXPECT_EQ(plan.inter_node_bytes, inter_node);
  int64_t sum_sent = 0, sum_received = 0;
  for (int r = 0; r < shape.ranks; ++r) {
    sum_sent += plan.bytes_sent[r];
    sum_received += plan.bytes_received[r];
  }
  EXPECT_EQ(sum_sent, sum_received - plan.local_copies * options.expert_bytes);
  EXPECT_EQ(plan.bytes_moved(), sum_received);
  EXPECT_LE(plan.inter_node_bytes, sum_sent);
  if (shape.nodes == 1) {
    EXPECT_EQ(plan.inter_node_bytes, 0);
  }
}

// A target near `old_placement`, built by moves that keep it valid: swaps of two experts between
// ranks, replacements of a redundant replica, and reordering of some ranks' slots. Near targets
// exercise stable sources, slot reuse and local copies.
Placement NearTarget(std::mt19937_64& rng, const Shape& shape, const Placement& old_placement) {
  Placement near = old_placement;
  const int spr = shape.slots_per_rank;
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  for (int l = 0; l < shape.layers; ++l) {
    std::vector<int> counts = near.ReplicaCounts(l);
    const int moves = pick(0, std::max(1, shape.slots() / 4));
    for (int m = 0; m < moves; ++m) {
      const int r1 = pick(0, shape.ranks - 1), s1 = pick(0, spr - 1);
      const int e1 = near.at(l, r1, s1);
      if (pick(0, 1) == 0) {
        const int r2 = pick(0, shape.ranks - 1), s2 = pick(0, spr - 1);
        const int e2 = near.at(l, r2, s2);
        if (r1 != r2 && SlotOf(near, l, r1, e2) < 0 && SlotOf(near, l, r2, e1) < 0) {
          std::swap(near.at(l, r1, s1), near.at(l, r2, s2));
        }
      } else {
        const int e = pick(0, shape.experts - 1);
        if (counts[e1] > 1 && SlotOf(near, l, r1, e) < 0) {
          --counts[e1];
          ++counts[e];
          near.at(l, r1, s1) = e;
        }
      }
    }
    for (int r = 0; r < shape.ranks; ++r) {
      if (pick(0, 1) == 0) continue;
      auto rank = near.layer(l).subspan(static_cast<size_t>(r) * spr, spr);
      std::shuffle(rank.begin(), rank.end(), rng);
    }
  }
  EXPECT_TRUE(ValidatePlacement(near, shape).ok()) << ValidatePlacement(near, shape).message();
  return near;
}

class PlannerPropertyTest : public ::testing::TestWithParam<bool> {};

TEST_P(PlannerPropertyTest, RandomCasesKeepEveryInvariant) {
  for (uint64_t seed = 1; seed <= 400; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const Shape shape = testing::RandomShape(rng);
    const Placement old_placement = testing::RandomPlacement(rng, shape);
    const Placement target =
        seed % 2 ? testing::RandomPlacement(rng, shape) : NearTarget(rng, shape, old_placement);
    const PlanOptions options{.keep_slots = GetParam(), .expert_bytes = kExpertBytes};
    const TransferPlan plan = PlanOrDie(old_placement, target, shape, options);
    ExpectValidPlan(old_placement, target, shape, options, plan);
    if (::testing::Test::HasFailure()) return;
  }
}

TEST_P(PlannerPropertyTest, PlanningAPlacementToItselfCopiesNothing) {
  for (uint64_t seed = 1; seed <= 100; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const Shape shape = testing::RandomShape(rng);
    const Placement p = testing::RandomPlacement(rng, shape);
    const TransferPlan plan =
        PlanOrDie(p, p, shape, {.keep_slots = GetParam(), .expert_bytes = kExpertBytes});
    EXPECT_TRUE(plan.copies.empty());
    EXPECT_EQ(plan.final_placement, p);
    EXPECT_EQ(plan.slots_changed, 0);
    EXPECT_EQ(plan.local_copies, 0);
    EXPECT_EQ(plan.bytes_moved(), 0);
    EXPECT_EQ(plan.inter_node_bytes, 0);
    EXPECT_EQ(plan.bytes_sent, std::vector<int64_t>(shape.ranks, 0));
  }
}

TEST_P(PlannerPropertyTest, SameInputGivesTheSamePlan) {
  for (uint64_t seed = 1; seed <= 100; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const Shape shape = testing::RandomShape(rng);
    const Placement old_placement = testing::RandomPlacement(rng, shape);
    const Placement target = testing::RandomPlacement(rng, shape);
    const PlanOptions options{.keep_slots = GetParam(), .expert_bytes = kExpertBytes};
    const TransferPlan a = PlanOrDie(old_placement, target, shape, options);
    const TransferPlan b = PlanOrDie(old_placement, target, shape, options);
    EXPECT_EQ(a.final_placement, b.final_placement);
    EXPECT_EQ(a.copies, b.copies);
    EXPECT_EQ(a.bytes_sent, b.bytes_sent);
    EXPECT_EQ(a.bytes_received, b.bytes_received);
    EXPECT_EQ(a.inter_node_bytes, b.inter_node_bytes);
    EXPECT_EQ(a.local_copies, b.local_copies);
    EXPECT_EQ(a.slots_changed, b.slots_changed);
  }
}

// Models the runtime: phase 1 every copy reads its (old) source slot into staging, phase 2 the
// staged experts are written. Also runs the copies in place, in plan order, without staging: a
// copy that then reads a slot already rewritten must be one the plan flagged; a flag is set
// exactly when the source slot is the destination of some copy of the plan.
TEST_P(PlannerPropertyTest, NoUnflaggedCopyReadsASlotThePlanOverwrites) {
  for (uint64_t seed = 1; seed <= 300; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const Shape shape = testing::RandomShape(rng);
    const Placement old_placement = testing::RandomPlacement(rng, shape);
    const Placement target =
        seed % 2 ? testing::RandomPlacement(rng, shape) : NearTarget(rng, shape, old_placement);
    const TransferPlan plan =
        PlanOrDie(old_placement, target, shape, {.keep_slots = GetParam(), .expert_bytes = 1});

    std::vector<int> staging;
    for (const ExpertCopy& c : plan.copies) {
      staging.push_back(old_placement.at(c.layer, c.src_rank, c.src_slot));
    }
    Placement two_phase = old_placement;
    for (size_t i = 0; i < plan.copies.size(); ++i) {
      const ExpertCopy& c = plan.copies[i];
      two_phase.at(c.layer, c.dst_rank, c.dst_slot) = staging[i];
    }
    EXPECT_EQ(two_phase, plan.final_placement);

    std::set<std::tuple<int, int, int>> written_by_plan;
    for (const ExpertCopy& c : plan.copies)
      written_by_plan.emplace(c.layer, c.dst_rank, c.dst_slot);
    Placement in_place = old_placement;
    std::set<std::tuple<int, int, int>> written_so_far;
    for (const ExpertCopy& c : plan.copies) {
      const auto src = std::make_tuple(c.layer, c.src_rank, c.src_slot);
      EXPECT_EQ(c.reads_overwritten_slot, written_by_plan.count(src) == 1);
      if (written_so_far.count(src)) {
        EXPECT_TRUE(c.reads_overwritten_slot) << "unflagged copy read a rewritten slot";
      }
      if (!c.reads_overwritten_slot) {
        EXPECT_EQ(in_place.at(c.layer, c.src_rank, c.src_slot), c.expert);
      }
      in_place.at(c.layer, c.dst_rank, c.dst_slot) = in_place.at(c.layer, c.src_rank, c.src_slot);
      written_so_far.insert(std::make_tuple(c.layer, c.dst_rank, c.dst_slot));
    }
    if (::testing::Test::HasFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(KeepSlots, PlannerPropertyTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& info) {
                           return info.param ? std::string("KeepSlots") : std::string("ExactSlots");
                         });

TEST(PlannerTest, StayingExpertsKeepSlotsAndArrivalsFillFreedSlotsInOrder) {
  const Shape shape = MakeShape(1, 6, 2, 4, 1);
  const Placement old_placement = Make(shape, {0, 1, 2, 3, /**/ 4, 5, 0, 2});
  const Placement target = Make(shape, {5, 3, 4, 1, /**/ 4, 5, 0, 2});
  const TransferPlan plan =
      PlanOrDie(old_placement, target, shape, {.keep_slots = true, .expert_bytes = 10});
  // 1 and 3 stay in slots 1 and 3; freed slots 0, 2 receive 5, 4 (target order).
  EXPECT_EQ(plan.final_placement, Make(shape, {5, 1, 4, 3, /**/ 4, 5, 0, 2}));
  ASSERT_EQ(plan.copies.size(), 2u);
  EXPECT_EQ(
      plan.copies[0],
      (ExpertCopy{
          .layer = 0, .expert = 5, .dst_rank = 0, .dst_slot = 0, .src_rank = 1, .src_slot = 1}));
  EXPECT_EQ(
      plan.copies[1],
      (ExpertCopy{
          .layer = 0, .expert = 4, .dst_rank = 0, .dst_slot = 2, .src_rank = 1, .src_slot = 0}));
  EXPECT_EQ(plan.slots_changed, 2);
  EXPECT_EQ(plan.bytes_sent, (std::vector<int64_t>{0, 20}));
  EXPECT_EQ(plan.bytes_received, (std::vector<int64_t>{20, 0}));
  ExpectValidPlan(old_placement, target, shape, {.keep_slots = true, .expert_bytes = 10}, plan);
}

TEST(PlannerTest, ExactSlotsCopiesLocallyWhenTheRankHoldsTheExpert) {
  const Shape shape = MakeShape(1, 3, 2, 2, 1);
  const Placement old_placement = Make(shape, {0, 1, /**/ 2, 1});
  const Placement target = Make(shape, {1, 0, /**/ 2, 1});
  const TransferPlan kept =
      PlanOrDie(old_placement, target, shape, {.keep_slots = true, .expert_bytes = 10});
  EXPECT_TRUE(kept.copies.empty());
  EXPECT_EQ(kept.final_placement, old_placement);

  const PlanOptions exact{.keep_slots = false, .expert_bytes = 10};
  const TransferPlan plan = PlanOrDie(old_placement, target, shape, exact);
  EXPECT_EQ(plan.final_placement, target);
  ASSERT_EQ(plan.copies.size(), 2u);
  for (const ExpertCopy& c : plan.copies) {
    EXPECT_TRUE(c.local);
    EXPECT_TRUE(c.reads_overwritten_slot);  // a swap within the rank reads both slots it writes
  }
  EXPECT_EQ(plan.local_copies, 2);
  EXPECT_EQ(plan.slots_changed, 0);
  EXPECT_EQ(plan.bytes_sent, (std::vector<int64_t>{0, 0}));
  EXPECT_EQ(plan.bytes_received, (std::vector<int64_t>{20, 0}));
  EXPECT_EQ(plan.bytes_moved(), 20);
  ExpectValidPlan(old_placement, target, shape, exact, plan);
}

// Expert 0 is held by rank 0 (node 0) and rank 2 (node 1); rank 3 (node 1) needs it. Rank 2 has
// already sent expert 6 to rank 0, rank 0 has sent nothing: the same node still wins.
TEST(PlannerTest, SameNodeSourceBeatsARemoteOneWithFewerBytesSent) {
  const std::vector<int> old_ids = {0, 1, 2, /**/ 3, 4, 5, /**/ 6, 7, 0, /**/ 1, 2, 3};
  const std::vector<int> target_ids = {0, 1, 6, /**/ 3, 4, 5, /**/ 6, 7, 0, /**/ 1, 2, 0};
  const PlanOptions options{.keep_slots = true, .expert_bytes = 100};

  const Shape two_nodes = MakeShape(1, 8, 4, 3, 2);
  const TransferPlan plan =
      PlanOrDie(Make(two_nodes, old_ids), Make(two_nodes, target_ids), two_nodes, options);
  ASSERT_EQ(plan.copies.size(), 2u);
  EXPECT_EQ(plan.copies[0].src_rank, 2);  // expert 6 to rank 0: rank 2 is its only holder
  EXPECT_EQ(plan.copies[1].expert, 0);
  EXPECT_EQ(plan.copies[1].dst_rank, 3);
  EXPECT_EQ(plan.copies[1].src_rank, 2);
  EXPECT_EQ(plan.copies[1].src_slot, 2);
  EXPECT_EQ(plan.bytes_sent, (std::vector<int64_t>{0, 0, 200, 0}));
  EXPECT_EQ(plan.inter_node_bytes, 100);
  ExpectValidPlan(Make(two_nodes, old_ids), Make(two_nodes, target_ids), two_nodes, options, plan);

  // On one node the balancing rule decides instead: rank 0 has sent less.
  const Shape one_node = MakeShape(1, 8, 4, 3, 1);
  const TransferPlan flat =
      PlanOrDie(Make(one_node, old_ids), Make(one_node, target_ids), one_node, options);
  ASSERT_EQ(flat.copies.size(), 2u);
  EXPECT_EQ(flat.copies[1].src_rank, 0);
  EXPECT_EQ(flat.copies[1].src_slot, 0);
  EXPECT_EQ(flat.inter_node_bytes, 0);
}

// Expert 0 is held by ranks 0 and 1, both on node 0; rank 3 (node 1) needs it. Rank 0 has
// already sent expert 2 to rank 2, so rank 1 (fewer bytes sent) is chosen over the lower id.
TEST(PlannerTest, SendsAreBalancedAmongEqualSources) {
  const Shape shape = MakeShape(1, 8, 4, 3, 2);
  const Placement old_placement = Make(shape, {0, 1, 2, /**/ 3, 4, 0, /**/ 5, 6, 7, /**/ 4, 5, 6});
  const Placement target = Make(shape, {0, 1, 2, /**/ 3, 4, 0, /**/ 5, 2, 7, /**/ 6, 5, 0});
  const PlanOptions options{.keep_slots = true, .expert_bytes = 100};
  const TransferPlan plan = PlanOrDie(old_placement, target, shape, options);
  ASSERT_EQ(plan.copies.size(), 2u);
  EXPECT_EQ(plan.copies[0].expert, 2);
  EXPECT_EQ(plan.copies[0].src_rank, 0);
  EXPECT_EQ(plan.copies[1].expert, 0);
  EXPECT_EQ(plan.copies[1].dst_rank, 3);
  EXPECT_EQ(plan.copies[1].src_rank, 1);
  EXPECT_EQ(plan.bytes_sent, (std::vector<int64_t>{100, 100, 0, 0}));
  ExpectValidPlan(old_placement, target, shape, options, plan);

  // Without the earlier send the tie goes to the lowest rank id.
  const Placement target_alone = Make(shape, {0, 1, 2, /**/ 3, 4, 0, /**/ 5, 6, 7, /**/ 4, 5, 0});
  const TransferPlan alone = PlanOrDie(old_placement, target_alone, shape, options);
  ASSERT_EQ(alone.copies.size(), 1u);
  EXPECT_EQ(alone.copies[0].src_rank, 0);
}

// Expert 0 is held by rank 0 in a slot that receives expert 2, and by rank 1 in a slot that keeps
// it; rank 0 has the lower id and has sent less, yet the stable slot on rank 1 is read.
TEST(PlannerTest, StableSourceIsPreferredOverAnOverwrittenOne) {
  const Shape shape = MakeShape(1, 4, 3, 2, 1);
  const Placement old_placement = Make(shape, {0, 1, /**/ 2, 0, /**/ 3, 1});
  const Placement target = Make(shape, {2, 1, /**/ 2, 0, /**/ 3, 0});
  const PlanOptions options{.keep_slots = true, .expert_bytes = 1};
  const TransferPlan plan = PlanOrDie(old_placement, target, shape, options);
  ASSERT_EQ(plan.copies.size(), 2u);
  EXPECT_EQ(plan.copies[1].expert, 0);
  EXPECT_EQ(plan.copies[1].dst_rank, 2);
  EXPECT_EQ(plan.copies[1].src_rank, 1);
  EXPECT_EQ(plan.copies[1].src_slot, 1);
  EXPECT_FALSE(plan.copies[1].reads_overwritten_slot);
  EXPECT_FALSE(plan.copies[0].reads_overwritten_slot);
  ExpectValidPlan(old_placement, target, shape, options, plan);
}

// Two ranks swap experts 0 and 2: each copy must read a slot the other one overwrites. Run in
// place without staging, the second copy would read the first one's result.
TEST(PlannerTest, SwapIsFlaggedAndNeedsStaging) {
  const Shape shape = MakeShape(1, 3, 2, 2, 2);
  const Placement old_placement = Make(shape, {0, 1, /**/ 2, 1});
  const Placement target = Make(shape, {2, 1, /**/ 0, 1});
  const PlanOptions options{.keep_slots = true, .expert_bytes = 7};
  const TransferPlan plan = PlanOrDie(old_placement, target, shape, options);
  ASSERT_EQ(plan.copies.size(), 2u);
  EXPECT_TRUE(plan.copies[0].reads_overwritten_slot);
  EXPECT_TRUE(plan.copies[1].reads_overwritten_slot);
  EXPECT_EQ(ApplyPlan(old_placement, plan), target);
  EXPECT_EQ(plan.inter_node_bytes, 14);

  Placement in_place = old_placement;
  for (const ExpertCopy& c : plan.copies) {
    in_place.at(c.layer, c.dst_rank, c.dst_slot) = in_place.at(c.layer, c.src_rank, c.src_slot);
  }
  EXPECT_NE(in_place, target);
  ExpectValidPlan(old_placement, target, shape, options, plan);
}

TEST(PlannerTest, LargeShapePlansEveryLayer) {
  // DeepSeek-V3-like: 58 MoE layers, 256 experts on 32 ranks x 10 slots, 4 nodes.
  const Shape shape = MakeShape(58, 256, 32, 10, 4);
  std::mt19937_64 rng(7);
  const Placement old_placement = testing::RandomPlacement(rng, shape);
  const Placement target = NearTarget(rng, shape, old_placement);
  const PlanOptions options{.keep_slots = true, .expert_bytes = 44 << 20};
  const TransferPlan plan = PlanOrDie(old_placement, target, shape, options);
  EXPECT_EQ(ApplyPlan(old_placement, plan), plan.final_placement);
  EXPECT_EQ(plan.slots_changed, SlotsChanged(old_placement, plan.final_placement));
  EXPECT_GT(plan.slots_changed, 0);
}

TEST(PlannerTest, RejectsBadInputs) {
  const Shape shape = MakeShape(1, 3, 2, 2, 1);
  const Placement good = Make(shape, {0, 1, /**/ 2, 1});
  auto expect_error = [&](const Placement& old_placement, const Placement& target, const Shape& s,
                          PlanOptions options, const std::string& prefix,
                          const std::string& needle) {
    StatusOr<TransferPlan> plan = PlanTransfers(old_placement, target, s, options);
    ASSERT_FALSE(plan.ok());
    EXPECT_EQ(plan.status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(plan.status().message().rfind(prefix, 0), 0u) << plan.status().message();
    EXPECT_NE(plan.status().message().find(needle), std::string::npos) << plan.status().message();
  };
  EXPECT_TRUE(PlanTransfers(good, good, shape).ok());

  const Placement wider(1, 3, 2, 3, {0, 1, 2, 1, 0, 2});
  expect_error(wider, good, shape, {}, "old placement: ", "expected 1 layers x 2 ranks");
  expect_error(good, wider, shape, {}, "target placement: ", "expected 1 layers x 2 ranks");
  expect_error(Make(shape, {0, 0, 2, 1}), good, shape, {},
               "old placement: ", "rank 0: logical expert 0 is in both slot 0 and slot 1");
  expect_error(good, Make(shape, {0, 1, 3, 1}), shape, {}, "target placement: ",
               "layer 0, rank 1, slot 0: logical expert id 3 is out of range");
  expect_error(good, Make(shape, {0, 1, 0, 1}), shape, {},
               "target placement: ", "logical expert 2 has no replica");
  expect_error(good, Placement(1, 2, 2, 3, {0, 1, 2}), shape, {},
               "target placement: ", "holds 3 ids");
  Shape three_nodes = shape;
  three_nodes.nodes = 3;
  expect_error(good, good, three_nodes, {}, "shape: ", "nodes");
  expect_error(good, good, shape, {.expert_bytes = -1}, "plan options: ", "expert_bytes");
}

}  // namespace
}  // namespace eplb
