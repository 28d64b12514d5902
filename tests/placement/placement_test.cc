#include "eplb/placement.h"

#include <gtest/gtest.h>

#include <limits>
#include <random>

#include "testing/random_cases.h"

namespace eplb {
namespace {

Placement Make(int ranks, int slots, int experts, std::vector<int> ids) {
  const int layers = static_cast<int>(ids.size()) / (ranks * slots);
  return Placement(layers, ranks, slots, experts, std::move(ids));
}

TEST(ShapeTest, RejectsEachBadField) {
  Shape ok{.layers = 2, .experts = 8, .ranks = 4, .slots_per_rank = 3, .nodes = 2, .groups = 4};
  EXPECT_TRUE(ok.Validate().ok());
  auto bad = [&](auto mutate, const char* needle) {
    Shape s = ok;
    mutate(s);
    Status st = s.Validate();
    ASSERT_FALSE(st.ok());
    EXPECT_NE(st.message().find(needle), std::string::npos) << st.message();
  };
  bad([](Shape& s) { s.layers = 0; }, "layers");
  bad([](Shape& s) { s.experts = -1; }, "experts");
  bad([](Shape& s) { s.ranks = 0; }, "ranks");
  bad([](Shape& s) { s.slots_per_rank = 1; }, "fewer than the 8 logical experts");
  bad([](Shape& s) { s.slots_per_rank = 9; }, "exceeds the 8 logical experts");
  bad([](Shape& s) { s.nodes = 3; }, "nodes");
  bad([](Shape& s) { s.groups = 3; }, "groups");
}

TEST(LoadMatrixTest, ValidateLoadNamesLayerAndExpert) {
  LoadMatrix m(2, 3);
  EXPECT_TRUE(ValidateLoad(m).ok());
  m.at(1, 2) = -1;
  EXPECT_EQ(ValidateLoad(m).message(),
            "load of layer 1, expert 2 is -1; loads must be finite and >= 0");
  m.at(1, 2) = std::numeric_limits<double>::quiet_NaN();
  EXPECT_EQ(ValidateLoad(m).message(),
            "load of layer 1, expert 2 is nan; loads must be finite and >= 0");
  m.at(1, 2) = 1.5e308;
  m.at(1, 0) = 1.5e308;
  EXPECT_EQ(ValidateLoad(m).message(),
            "loads of layer 1 sum to more than the largest double (1.7976931348623157e+308); "
            "scale them down");
  auto rows = LoadMatrix::FromRows({{1, 2}, {1e308, 1e308}});
  ASSERT_FALSE(rows.ok());
  EXPECT_NE(rows.status().message().find("loads of layer 1 sum to more"), std::string::npos);
  EXPECT_TRUE(LoadMatrix::FromRows({{1, 2}, {1e308, 0}}).ok());
}

TEST(LoadMatrixTest, AddsElementByElementAndSplitsDenseRows) {
  LoadMatrix a = *LoadMatrix::FromRows({{0, 0}, {1, 2}});
  a += *LoadMatrix::FromRows({{0, 0}, {3, 0}});
  EXPECT_EQ(a.values(), (std::vector<double>{0, 0, 4, 2}));
  EXPECT_EQ(a.ZeroRows(), std::vector<int>{0});
}

TEST(PlacementTest, ValidationNamesLayerRankSlotAndExpert) {
  EXPECT_TRUE(ValidatePlacement(Make(2, 2, 3, {0, 1, 2, 0})).ok());
  Status out_of_range = ValidatePlacement(Make(2, 2, 3, {0, 1, 2, 3}));
  EXPECT_EQ(out_of_range.message(),
            "layer 0, rank 1, slot 1: logical expert id 3 is out of range [0, 3)");
  Status twice = ValidatePlacement(Make(2, 2, 3, {0, 1, 2, 0, 0, 1, 2, 2}));
  EXPECT_NE(twice.message().find("layer 1, rank 1: logical expert 2 is in both slot 0 and slot 1"),
            std::string::npos)
      << twice.message();
  Status missing = ValidatePlacement(Make(2, 2, 3, {0, 1, 0, 1}));
  EXPECT_EQ(missing.message(), "layer 0: logical expert 2 has no replica on any rank");
  Status count = ValidatePlacement(Placement(1, 2, 2, 3, {0, 1, 2}));
  EXPECT_NE(count.message().find("holds 3 ids, expected 1 layers x 4 slots"), std::string::npos);
}

TEST(PlacementTest, RoutingTableAndExpertMapAgreeWithPhy2Log) {
  for (uint64_t seed = 1; seed <= 50; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    Shape shape = testing::RandomShape(rng);
    Placement p = testing::RandomPlacement(rng, shape);
    ASSERT_TRUE(ValidatePlacement(p, shape).ok()) << ValidatePlacement(p).message();
    for (int l = 0; l < p.layers(); ++l) {
      RoutingTable t = RoutingTable::FromPlacement(p, l);
      auto counts = p.ReplicaCounts(l);
      int total = 0;
      for (int e = 0; e < p.experts(); ++e) {
        auto reps = t.replicas(e);
        ASSERT_EQ(static_cast<int>(reps.size()), counts[e]);
        for (size_t i = 0; i < reps.size(); ++i) {
          EXPECT_EQ(p.layer(l)[reps[i]], e);
          if (i > 0) {
            EXPECT_LT(reps[i - 1], reps[i]);
          }
        }
        total += counts[e];
      }
      EXPECT_EQ(total, p.slots());
      for (int r = 0; r < p.ranks(); ++r) {
        auto map = ExpertMap(p, l, r);
        int present = 0;
        for (int e = 0; e < p.experts(); ++e) {
          if (map[e] < 0) continue;
          ++present;
          EXPECT_EQ(p.at(l, r, map[e]), e);
        }
        EXPECT_EQ(present, p.slots_per_rank());
      }
    }
  }
}

}  // namespace
}  // namespace eplb
