// swift on several threads: the placement must not depend on the thread count (layers are
// independent), from scratch and incremental, with and without change caps. Runs under
// ThreadSanitizer (label "threads").
#include <gtest/gtest.h>

#include <random>
#include <string>

#include "eplb/algorithm.h"
#include "testing/random_cases.h"

namespace eplb {
namespace {

Placement Balanced(const LoadMatrix& load, const Shape& shape, const Placement* current,
                   AlgorithmOptions options) {
  auto balancer = MakeBalancer("swift", options);
  EXPECT_TRUE(balancer.ok());
  auto r = (*balancer)->Balance({&load, shape, current});
  EXPECT_TRUE(r.ok()) << r.status().ToString();
  EXPECT_TRUE(ValidatePlacement(r->placement, shape).ok());
  return r->placement;
}

TEST(SwiftThreadsTest, PlacementDoesNotDependOnTheThreadCount) {
  for (uint64_t seed = 1; seed <= 60; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const Shape shape = testing::RandomShape(rng, 9);
    const LoadMatrix load = testing::RandomLoad(rng, shape);
    const Placement current = testing::RandomPlacement(rng, shape);
    AlgorithmOptions options;
    if (seed % 3 == 1) options.max_changes_per_layer = static_cast<int>(seed % 5);
    if (seed % 3 == 2) options.max_changes_per_cycle = static_cast<int64_t>(seed % 11);
    const Placement scratch = Balanced(load, shape, nullptr, options);
    const Placement incremental = Balanced(load, shape, &current, options);
    for (int threads : {2, 3, 8}) {
      SCOPED_TRACE("threads " + std::to_string(threads));
      options.threads = threads;
      EXPECT_EQ(Balanced(load, shape, nullptr, options), scratch);
      EXPECT_EQ(Balanced(load, shape, &current, options), incremental);
    }
  }
}

TEST(SwiftThreadsTest, PairReplanDoesNotDependOnTheThreadCount) {
  // Two slots per rank on one node without caps: each thread re-pairs its layers with a
  // PairReplan of its own.
  for (uint64_t seed = 1; seed <= 20; ++seed) {
    SCOPED_TRACE("seed " + std::to_string(seed));
    std::mt19937_64 rng(seed);
    const Shape shape = testing::RandomPairShape(rng, 9, 32);
    const LoadMatrix load = testing::RandomLoad(rng, shape);
    const Placement current = testing::RandomPlacement(rng, shape);
    AlgorithmOptions options;
    const Placement incremental = Balanced(load, shape, &current, options);
    for (int threads : {2, 3, 8}) {
      SCOPED_TRACE("threads " + std::to_string(threads));
      options.threads = threads;
      EXPECT_EQ(Balanced(load, shape, &current, options), incremental);
    }
  }
}

TEST(SwiftThreadsTest, RejectsAThreadCountOutOfRange) {
  for (int threads : {0, -1, 257}) {
    AlgorithmOptions options;
    options.threads = threads;
    auto balancer = MakeBalancer("swift", options);
    ASSERT_FALSE(balancer.ok());
    EXPECT_EQ(balancer.status().message(),
              "swift: threads must be in [1, 256], got " + std::to_string(threads));
  }
}

}  // namespace
}  // namespace eplb
