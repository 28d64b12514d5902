#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>
#include <vector>

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

// The generator uses std::mt19937_64 (whose output the standard fixes) and its own distribution
// math, so these values are the same with any compiler and standard library; a change here changes
// every generated workload and every number quoted from one.
TEST(GeneratorTest, GoldenValues) {
  GeneratorOptions o;
  o.layers = 2;
  o.experts = 8;
  o.top_k = 2;
  o.tokens = 1000;
  o.seed = 7;
  const std::vector<double> expected = {307, 564, 160, 43,  399, 148, 89,  290,
                                        152, 119, 147, 254, 225, 503, 251, 349};
  EXPECT_EQ(GenerateLoad(o).values(), expected);
}

// A token goes to top_k distinct experts, so no expert receives more than `tokens`: a share above
// that is capped and handed on to the others by weight, and rows still sum to top_k * tokens.
TEST(GeneratorTest, NoExpertReceivesMoreThanEveryToken) {
  GeneratorOptions o;
  o.layers = 3;
  o.experts = 8;
  o.top_k = 8;  // every token to every expert
  o.tokens = 1000;
  const LoadMatrix all = GenerateLoad(o);
  ASSERT_EQ(all.values().size(), 24u);
  for (double v : all.values()) EXPECT_EQ(v, 1000);
  for (double skew : {1.5, 4.0}) {
    o.experts = 64;
    o.top_k = 6;
    o.skew = skew;
    o.layers = 20;
    const LoadMatrix m = GenerateLoad(o);
    double largest = 0;
    for (int l = 0; l < m.layers(); ++l) {
      double sum = 0;
      for (double v : m.row(l)) {
        EXPECT_LE(v, 1000) << "skew " << skew << " layer " << l;
        EXPECT_GE(v, 0);
        largest = std::max(largest, v);
        sum += v;
      }
      EXPECT_EQ(sum, 6000) << "skew " << skew << " layer " << l;
    }
    EXPECT_EQ(largest, 1000) << "skew " << skew;  // the cap binds at these skews
  }
}

TEST(GeneratorTest, OptionsOutOfRangeAreNamedAndGiveAnEmptyMatrix) {
  auto error = [](auto change) {
    GeneratorOptions o;
    change(o);
    EXPECT_EQ(GenerateLoad(o).layers(), 0);
    EXPECT_EQ(GenerateLoad(o).experts(), 0);
    return ValidateGeneratorOptions(o).message();
  };
  EXPECT_TRUE(ValidateGeneratorOptions(GeneratorOptions{}).ok());
  EXPECT_EQ(error([](GeneratorOptions& o) { o.layers = 0; }),
            "generator options: layers: expected an integer >= 1, got 0");
  EXPECT_EQ(error([](GeneratorOptions& o) { o.experts = -2; }),
            "generator options: experts: expected an integer >= 1, got -2");
  EXPECT_EQ(error([](GeneratorOptions& o) { o.top_k = 0; }),
            "generator options: top_k: expected an integer in [1, experts = 256], got 0");
  EXPECT_EQ(error([](GeneratorOptions& o) { o.top_k = 257; }),
            "generator options: top_k: expected an integer in [1, experts = 256], got 257");
  EXPECT_EQ(error([](GeneratorOptions& o) { o.tokens = 0; }),
            "generator options: tokens: expected an integer in [1, 2^53 / top_k = "
            "1125899906842624], got 0");
  EXPECT_EQ(error([](GeneratorOptions& o) { o.tokens = int64_t{1} << 62; }),
            "generator options: tokens: expected an integer in [1, 2^53 / top_k = "
            "1125899906842624], got 4611686018427387904");
  EXPECT_EQ(error([](GeneratorOptions& o) { o.skew = std::nan(""); }),
            "generator options: skew: expected a number in [0, 4], got nan");
  EXPECT_EQ(error([](GeneratorOptions& o) { o.skew = -0.5; }),
            "generator options: skew: expected a number in [0, 4], got -0.5");
  EXPECT_EQ(error([](GeneratorOptions& o) { o.skew = 4.5; }),
            "generator options: skew: expected a number in [0, 4], got 4.5");
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

TEST(GeneratorTest, AShiftBringsNewHotExperts) {
  GeneratorOptions o;
  const LoadMatrix a = GenerateLoad(o);
  o.shift = 1;
  const LoadMatrix b = GenerateLoad(o);
  o.shift = 2;
  const LoadMatrix c = GenerateLoad(o);
  EXPECT_NE(b.values(), c.values());
  // The 16 hottest experts of each layer: some of them change with the shift.
  auto top = [](const LoadMatrix& m, int l) {
    std::vector<int> ids(m.experts());
    std::iota(ids.begin(), ids.end(), 0);
    std::sort(ids.begin(), ids.end(), [&](int x, int y) {
      return m.at(l, x) > m.at(l, y) || (m.at(l, x) == m.at(l, y) && x < y);
    });
    return std::set<int>(ids.begin(), ids.begin() + 16);
  };
  int replaced = 0;
  for (int l = 0; l < a.layers(); ++l) {
    const std::set<int> ta = top(a, l), tb = top(b, l);
    for (int e : tb) replaced += ta.count(e) == 0;
  }
  EXPECT_GT(replaced, a.layers() / 2);  // about 1.8 of 16 per layer
}

TEST(GeneratorTest, NoSkewIsNearlyUniformAndSmallShapesWork) {
  GeneratorOptions o;
  o.skew = 0;
  o.layers = 1;
  const LoadMatrix m = GenerateLoad(o);
  const double mean = 8.0 * 65536 / 256;
  for (double v : m.row(0)) {
    EXPECT_GE(v, 0.8 * mean);
    EXPECT_LE(v, 1.2 * mean);
  }
  o.experts = 1;
  o.tokens = 3;
  o.top_k = 1;
  EXPECT_EQ(GenerateLoad(o).values(), std::vector<double>{3});
}

}  // namespace
}  // namespace eplb
