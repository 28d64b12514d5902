// The embedded default workload generator (see eplb/loads.h).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "eplb/loads.h"

namespace eplb {
namespace {

// A uniform double in (0, 1) from 53 random bits: the same on every standard library.
double Uniform(std::mt19937_64& rng) {
  return (static_cast<double>(rng() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

// A standard normal by Box-Muller (one of the pair is used).
double Normal(std::mt19937_64& rng) {
  const double u = Uniform(rng), v = Uniform(rng);
  return std::sqrt(-2.0 * std::log(u)) * std::cos(6.283185307179586 * v);
}

// Share of experts whose popularity a shift redraws.
constexpr double kShiftShare = 0.1;
// top_k * tokens at most 2^53: every count and row sum is an exact double.
constexpr int64_t kMaxTotal = int64_t{1} << 53;
// sigma of the log-normal popularity; 4 already puts the hottest expert at thousands of times
// the median.
constexpr double kMaxSkew = 4.0;

}  // namespace

Status ValidateGeneratorOptions(const GeneratorOptions& o) {
  auto bad = [](const char* key, const std::string& expected, const std::string& got) {
    return Status::Invalid(
        fmt::format("generator options: {}: expected {}, got {}", key, expected, got));
  };
  if (o.layers < 1) return bad("layers", "an integer >= 1", std::to_string(o.layers));
  if (o.experts < 1) return bad("experts", "an integer >= 1", std::to_string(o.experts));
  if (o.top_k < 1 || o.top_k > o.experts) {
    return bad("top_k", fmt::format("an integer in [1, experts = {}]", o.experts),
               std::to_string(o.top_k));
  }
  if (o.tokens < 1 || o.tokens > kMaxTotal / o.top_k) {
    return bad("tokens", fmt::format("an integer in [1, 2^53 / top_k = {}]", kMaxTotal / o.top_k),
               std::to_string(o.tokens));
  }
  if (!(o.skew >= 0 && o.skew <= kMaxSkew)) {
    return bad("skew", fmt::format("a number in [0, {}]", kMaxSkew), fmt::format("{}", o.skew));
  }
  return Status::Ok();
}

LoadMatrix GenerateLoad(const GeneratorOptions& o) {
  if (!ValidateGeneratorOptions(o).ok()) return LoadMatrix();
  const int64_t total = static_cast<int64_t>(o.top_k) * o.tokens;
  LoadMatrix m(o.layers, o.experts);
  std::vector<double> weight(o.experts);
  std::vector<int64_t> count(o.experts);
  std::vector<std::pair<double, int>> remainder(o.experts);
  std::vector<char> capped(o.experts);
  for (int l = 0; l < o.layers; ++l) {
    // Popularity per layer: log-normal, so a few experts are several times the mean. A shift
    // redraws the popularity of a share of the experts, so a new set of experts runs hot.
    std::mt19937_64 rng(o.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(l) * 1000003u);
    std::mt19937_64 shift_rng(o.seed * 0xC2B2AE3D27D4EB4Full + static_cast<uint64_t>(l) * 1000033u +
                              static_cast<uint64_t>(o.shift) * 0xD1B54A32D192ED03ull);
    double sum = 0;
    for (int e = 0; e < o.experts; ++e) {
      weight[e] = std::exp(o.skew * Normal(rng)) * (0.9 + 0.2 * Uniform(rng));
      const double redraw = Uniform(shift_rng);
      const double fresh = std::exp(o.skew * Normal(shift_rng)) * (0.9 + 0.2 * Uniform(shift_rng));
      if (o.shift != 0 && redraw < kShiftShare) weight[e] = fresh;
      sum += weight[e];
    }
    // Shares by weight, but an expert receives each token at most once: shares above `tokens`
    // are capped and what they leave is shared out again by weight among the others.
    // (The weight left is summed afresh each pass: subtracting capped weights from the sum could
    // cancel to nothing when the weights span many orders of magnitude.)
    std::fill(capped.begin(), capped.end(), 0);
    double left = static_cast<double>(total), left_weight = sum;
    for (bool again = true; again;) {
      again = false;
      for (int e = 0; e < o.experts; ++e) {
        if (!capped[e] && left * weight[e] / left_weight > static_cast<double>(o.tokens)) {
          capped[e] = 1;
          left -= static_cast<double>(o.tokens);
          again = true;
        }
      }
      if (again) {
        left_weight = 0;
        for (int e = 0; e < o.experts; ++e) left_weight += capped[e] ? 0.0 : weight[e];
      }
    }
    // Largest-remainder rounding keeps the row sum exactly top_k * tokens.
    int64_t assigned = 0;
    for (int e = 0; e < o.experts; ++e) {
      // Uncapped shares are at most `tokens`: the loop above ended when none was above.
      const double exact =
          capped[e] ? static_cast<double>(o.tokens) : left * weight[e] / left_weight;
      count[e] = static_cast<int64_t>(std::floor(exact));
      assigned += count[e];
      remainder[e] = {exact - std::floor(exact), e};
    }
    std::sort(remainder.begin(), remainder.end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    // Ends: top_k <= experts, so the row has room for top_k * tokens.
    for (int i = 0; assigned < total; i = (i + 1) % o.experts) {
      const int e = remainder[i].second;
      if (count[e] < o.tokens) {
        ++count[e];
        ++assigned;
      }
    }
    for (int e = 0; e < o.experts; ++e) m.at(l, e) = static_cast<double>(count[e]);
  }
  return m;
}

}  // namespace eplb
