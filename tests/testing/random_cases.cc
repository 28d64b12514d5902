#include "testing/random_cases.h"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <numeric>
#include <vector>

namespace eplb::testing {

Shape RandomShape(std::mt19937_64& rng, int max_layers) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  Shape s;
  s.layers = pick(1, max_layers);
  s.experts = pick(1, 64);
  s.ranks = pick(1, 16);
  const int min_slots = (s.experts + s.ranks - 1) / s.ranks;
  s.slots_per_rank = std::min(s.experts, min_slots + pick(0, 3));
  std::vector<int> node_choices;
  for (int n = 1; n <= s.ranks; ++n)
    if (s.ranks % n == 0) node_choices.push_back(n);
  s.nodes = node_choices[pick(0, static_cast<int>(node_choices.size()) - 1)];
  std::vector<int> group_choices;
  for (int g = 1; g <= s.experts; ++g)
    if (s.experts % g == 0) group_choices.push_back(g);
  s.groups = group_choices[pick(0, static_cast<int>(group_choices.size()) - 1)];
  return s;
}

Shape RandomPairShape(std::mt19937_64& rng, int max_layers, int max_ranks) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  Shape s;
  s.layers = pick(1, max_layers);
  s.ranks = pick(1, max_ranks);
  s.slots_per_rank = 2;
  s.experts = pick(2, 2 * s.ranks);
  return s;
}

LoadMatrix RandomLoad(std::mt19937_64& rng, const Shape& shape) {
  LoadMatrix m(shape.layers, shape.experts);
  std::lognormal_distribution<double> logn(0.0, 1.0);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  for (int l = 0; l < shape.layers; ++l) {
    for (int e = 0; e < shape.experts; ++e) {
      double v = std::floor(100.0 * logn(rng));
      if (u(rng) < 0.05) v *= 8;  // hot expert
      if (u(rng) < 0.05) v = 0;   // idle expert
      m.at(l, e) = v;
    }
  }
  return m;
}

Placement RandomPlacement(std::mt19937_64& rng, const Shape& shape) {
  std::vector<int> ids(static_cast<size_t>(shape.layers) * shape.slots());
  const int S = shape.slots_per_rank;
  for (int l = 0; l < shape.layers; ++l) {
    // Every expert once in a random slot, then each free slot a random expert its rank lacks.
    std::vector<int> order(shape.experts);
    std::iota(order.begin(), order.end(), 0);
    std::shuffle(order.begin(), order.end(), rng);
    int idx = 0;
    std::vector<int> slots(shape.slots());
    std::iota(slots.begin(), slots.end(), 0);
    std::shuffle(slots.begin(), slots.end(), rng);
    std::vector<int> layer(shape.slots(), -1);
    for (int e : order) layer[slots[idx++]] = e;
    for (int slot = 0; slot < shape.slots(); ++slot) {
      if (layer[slot] >= 0) continue;
      const int r = slot / S;
      std::vector<int> candidates;
      for (int e = 0; e < shape.experts; ++e) {
        bool present = false;
        for (int t = 0; t < S; ++t) present |= layer[r * S + t] == e;
        if (!present) candidates.push_back(e);
      }
      layer[slot] =
          candidates[std::uniform_int_distribution<size_t>(0, candidates.size() - 1)(rng)];
    }
    std::copy(layer.begin(), layer.end(), ids.begin() + static_cast<size_t>(l) * shape.slots());
  }
  return Placement(shape.layers, shape.ranks, S, shape.experts, std::move(ids));
}

std::string DataDir() {
  const char* env = std::getenv("EPLB_DATA_DIR");
  std::string dir = env && *env ? env : EPLB_DEFAULT_DATA_DIR;
  return std::filesystem::is_directory(dir) ? dir : "";
}

}  // namespace eplb::testing
