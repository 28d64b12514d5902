#include <gtest/gtest.h>

#include <algorithm>
#include <numeric>

#include "eplb/loads.h"

namespace eplb {
namespace {

TEST(GeneratorTest, DeterministicIntegerRowsSummingToTopKTimesTokens) {
  GeneratorOptions o;
  o.layers = 5;
  o.experts = 64;
  o.tokens = 1000;
  const LoadMatrix a = GenerateLoad(o);
  const LoadMatrix b = GenerateLoad(o);
  EXPECT_EQ(a.values(), b.values());
  for (int l = 0; l < a.layers(); ++l) {
    double sum = 0;
    for (double v : a.row(l)) {
      EXPECT_EQ(v, static_cast<double>(static_cast<int64_t>(v)));
      EXPECT_GE(v, 0);
      sum += v;
    }
    EXPECT_EQ(sum, 8.0 * 1000);
  }
  o.seed = 2;
  EXPECT_NE(GenerateLoad(o).values(), a.values());
}

TEST(GeneratorTest, DefaultSkewResemblesDeepSeekV3) {
  const LoadMatrix m = GenerateLoad({});
  ASSERT_EQ(m.layers(), 58);
  ASSERT_EQ(m.experts(), 256);
  double ratio = 0;
  for (int l = 0; l < m.layers(); ++l) {
    auto row = m.row(l);
    const double mean = std::accumulate(row.begin(), row.end(), 0.0) / row.size();
    ratio += *std::max_element(row.begin(), row.end()) / mean;
  }
  ratio /= m.layers();
  // Real DeepSeek-V3 statistics: the hottest expert carries 5.6x to 8.1x the mean.
  EXPECT_GE(ratio, 5.0);
  EXPECT_LE(ratio, 9.0);
}

TEST(GeneratorTest, AShiftChangesSomeExpertsNotAll) {
  GeneratorOptions o;
  const LoadMatrix a = GenerateLoad(o);
  o.shift = 1;
  const LoadMatrix b = GenerateLoad(o);
  int differ = 0, total = 0;
  for (int l = 0; l < a.layers(); ++l) {
    for (int e = 0; e < a.experts(); ++e) {
      // Renormalisation moves every count a little; a redrawn expert moves a lot.
      differ += std::abs(a.at(l, e) - b.at(l, e)) > 0.3 * std::max(a.at(l, e), b.at(l, e));
      ++total;
    }
  }
  EXPECT_GT(differ, total / 50);
  EXPECT_LT(differ, total / 4);
}

}  // namespace
}  // namespace eplb
