// The embedded default workload generator (see eplb/loads.h).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
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

}  // namespace

LoadMatrix GenerateLoad(const GeneratorOptions& o) {
  const int64_t total = static_cast<int64_t>(o.top_k) * o.tokens;
  if (o.layers <= 0 || o.experts <= 0) return LoadMatrix();
  LoadMatrix m(o.layers, o.experts);
  if (total <= 0) return m;
  std::vector<double> weight(o.experts);
  std::vector<int64_t> count(o.experts);
  std::vector<std::pair<double, int>> remainder(o.experts);
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
    // Largest-remainder rounding keeps the row sum exactly top_k * tokens.
    int64_t assigned = 0;
    for (int e = 0; e < o.experts; ++e) {
      const double exact = static_cast<double>(total) * weight[e] / sum;
      count[e] = static_cast<int64_t>(std::floor(exact));
      assigned += count[e];
      remainder[e] = {exact - std::floor(exact), e};
    }
    std::sort(remainder.begin(), remainder.end(), [](const auto& a, const auto& b) {
      return a.first > b.first || (a.first == b.first && a.second < b.second);
    });
    for (int64_t i = 0; assigned < total; ++i, ++assigned) ++count[remainder[i % o.experts].second];
    for (int e = 0; e < o.experts; ++e) m.at(l, e) = static_cast<double>(count[e]);
  }
  return m;
}

}  // namespace eplb
