#include <algorithm>
#include <cmath>
#include <numeric>

#include "eplb/placement.h"

namespace eplb {

std::vector<double> RankLoads(std::span<const double> load, std::span<const int> phy2log, int ranks,
                              int slots_per_rank, int experts) {
  std::vector<int> count(experts, 0);
  for (int id : phy2log) ++count[id];
  std::vector<double> out(ranks, 0.0);
  for (int r = 0; r < ranks; ++r) {
    double sum = 0;
    for (int s = 0; s < slots_per_rank; ++s) {
      const int e = phy2log[static_cast<size_t>(r) * slots_per_rank + s];
      sum += load[e] / count[e];
    }
    out[r] = sum;
  }
  return out;
}

double LayerBalancedness(std::span<const double> load, const Placement& p, int layer) {
  auto loads = RankLoads(load, p.layer(layer), p.ranks(), p.slots_per_rank(), p.experts());
  const double max = *std::max_element(loads.begin(), loads.end());
  if (max <= 0) return 1.0;
  const double mean = std::accumulate(loads.begin(), loads.end(), 0.0) / loads.size();
  return mean / max;
}

std::vector<double> Balancedness(const LoadMatrix& load, const Placement& p) {
  std::vector<double> out(p.layers());
  for (int l = 0; l < p.layers(); ++l) out[l] = LayerBalancedness(load.row(l), p, l);
  return out;
}

double MeanBalancedness(const LoadMatrix& load, const Placement& p) {
  auto b = Balancedness(load, p);
  return b.empty() ? 1.0 : std::accumulate(b.begin(), b.end(), 0.0) / b.size();
}

namespace {

// Whether some replication could reach max rank load `m`, by two necessary conditions:
// every piece (an expert's load over its replica count, at most one replica per rank) is at most
// m, and at most R pieces exceed m / 2 (two of any R + 1 pieces share a rank). The second is
// relaxed to a fractional knapsack, so "false" is a proof that m cannot be reached.
bool MaybeReachable(std::span<const double> load, int ranks, int64_t slots, double m,
                    std::vector<std::pair<double, int64_t>>& scratch) {
  int64_t slots_needed = 0;
  int64_t big_pieces = 0;
  scratch.clear();
  for (double w : load) {
    if (w <= 0) {
      ++slots_needed;
      continue;
    }
    const int64_t a = std::max<int64_t>(1, static_cast<int64_t>(std::ceil(w / m)));
    if (a > ranks) return false;
    slots_needed += a;
    if (w / a > m / 2) {
      big_pieces += a;
      const int64_t b = static_cast<int64_t>(std::ceil(2 * w / m));
      // Converting this expert to small pieces costs b - a extra slots and frees a big pieces.
      if (b <= ranks) scratch.push_back({static_cast<double>(b - a) / a, a});
    }
    if (slots_needed > slots) return false;
  }
  // Again after the loop: zero-load experts after the last loaded one skip the check above
  // (the bound depended on the order of the experts).
  if (slots_needed > slots) return false;
  if (big_pieces > ranks) {
    std::sort(scratch.begin(), scratch.end());
    double extra = 0;
    int64_t excess = big_pieces - ranks;
    for (auto [cost_per_piece, pieces] : scratch) {
      const int64_t take = std::min(excess, pieces);
      extra += cost_per_piece * take;
      excess -= take;
      if (excess == 0) break;
    }
    if (excess > 0) return false;
    if (static_cast<double>(slots_needed) + extra > static_cast<double>(slots) + 1e-9) return false;
  }
  return true;
}

}  // namespace

double MaxRankLoadLowerBound(std::span<const double> load, const Shape& shape) {
  const double total = std::accumulate(load.begin(), load.end(), 0.0);
  if (total <= 0) return 0.0;
  const double wmax = *std::max_element(load.begin(), load.end());
  double lo = std::max(total / shape.ranks, wmax / shape.ranks);
  double hi = std::max(total, lo);
  std::vector<std::pair<double, int64_t>> scratch;
  if (MaybeReachable(load, shape.ranks, shape.slots(), lo, scratch)) return lo;
  // Invariant: lo is unreachable, hi is reachable in the relaxation.
  for (int it = 0; it < 50 && hi - lo > 1e-9 * hi; ++it) {
    const double mid = 0.5 * (lo + hi);
    if (MaybeReachable(load, shape.ranks, shape.slots(), mid, scratch)) {
      hi = mid;
    } else {
      lo = mid;
    }
  }
  return lo;
}

double BalancednessUpperBound(const LoadMatrix& load, const Shape& shape) {
  if (load.layers() == 0) return 1.0;
  double sum = 0;
  for (int l = 0; l < load.layers(); ++l) {
    auto row = load.row(l);
    const double total = std::accumulate(row.begin(), row.end(), 0.0);
    const double bound = MaxRankLoadLowerBound(row, shape);
    sum += bound > 0 ? std::min(1.0, (total / shape.ranks) / bound) : 1.0;
  }
  return sum / load.layers();
}

int64_t SlotsChangedInLayer(const Placement& a, const Placement& b, int layer) {
  std::vector<int> stamp(std::max(a.experts(), b.experts()), -1);
  int64_t changed = 0;
  for (int r = 0; r < a.ranks(); ++r) {
    for (int s = 0; s < a.slots_per_rank(); ++s) stamp[a.at(layer, r, s)] = r;
    for (int s = 0; s < b.slots_per_rank(); ++s) changed += stamp[b.at(layer, r, s)] != r;
  }
  return changed;
}

int64_t SlotsChanged(const Placement& a, const Placement& b) {
  int64_t changed = 0;
  for (int l = 0; l < a.layers(); ++l) changed += SlotsChangedInLayer(a, b, l);
  return changed;
}

}  // namespace eplb
