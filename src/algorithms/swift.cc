// SwiftBalancer: minimal-movement incremental rebalancing.
//
// With a current placement, each layer is improved in place by a greedy local search that only
// ever touches the most loaded rank h, one step at a time, with three kinds of step:
//   swap      h's expert x <-> expert y of a lighter rank j            (2 slots change)
//   replicate a redundant replica elsewhere (expert x, count >= 2) becomes another replica of an
//             expert z on h, so z's load is split once more           (1 slot changes)
//   release   h gives up its replica of x (count >= 2) for a replica of another expert y
//                                                                      (1 slot changes)
// A step is taken only if it lowers h below its load without lifting any rank to it; among the
// steps, the one with the lowest new peak (plus a small charge per slot changed) wins, ties going
// to the first in a fixed enumeration order (slot, rank, expert ascending). A layer stops when it
// reaches the target balancedness, when no step gains at least `min_gain_per_change` of the mean
// rank load per slot changed, or when its change budget is spent. Layers already above
// `skip_balancedness` are left alone.
//
// Without a current placement, a fresh placement is built (replicas to the largest load per
// replica, then heaviest replica first onto the lightest rank with a free slot that does not hold
// the expert yet), then improved by the same local search without any movement charge.
//
// Everything is a deterministic function of (load, shape, current placement, options).
#include "algorithms/swift.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <queue>

namespace eplb {
namespace {

// One step of the local search.
struct Step {
  enum Kind { kNone, kSwap, kReplicate, kRelease } kind = kNone;
  int slot_a = -1;       // a physical slot that changes
  int expert_a = -1;     // the expert it receives
  int slot_b = -1;       // a second slot that changes (swap), or -1
  int expert_b = -1;
  double peak = 0;       // max load over the ranks the step raises, and h after the step
  int cost = 0;          // change in the number of slots that differ from the original
  double value = 0;      // gain per slot changed, see Value()
};

// The working state of one layer. Owned by one call; reused across layers to avoid allocation.
class LayerSearch {
 public:
  void Reset(std::span<const double> w, std::span<const int> phy2log, int ranks, int slots_per_rank,
             bool track_changes) {
    w_ = w;
    R_ = ranks;
    S_ = slots_per_rank;
    E_ = static_cast<int>(w.size());
    slot_.assign(phy2log.begin(), phy2log.end());
    count_.assign(E_, 0);
    holds_.assign(static_cast<size_t>(R_) * E_, 0);
    holders_.resize(static_cast<size_t>(E_) * R_);
    for (int i = 0; i < R_ * S_; ++i) {
      const int e = slot_[i];
      holders_[static_cast<size_t>(e) * R_ + count_[e]++] = i / S_;
      holds_[static_cast<size_t>(i / S_) * E_ + e] = 1;
    }
    track_ = track_changes;
    if (track_) orig_ = holds_;
    changes_ = 0;
    steps_ = 0;
    RecomputeLoads();
    order_.resize(R_);
    std::iota(order_.begin(), order_.end(), 0);
  }

  double Balancedness() const {
    const double max = *std::max_element(load_.begin(), load_.end());
    return max > 0 ? Mean() / max : 1.0;
  }
  double Mean() const { return total_ / R_; }
  int changes() const { return changes_; }
  const std::vector<int>& slots() const { return slot_; }

  // Runs the local search. Returns when no worthwhile step remains, the target is reached, or
  // the change budget (-1: none) would be exceeded.
  void Improve(double target, int budget, double min_gain, int max_steps) {
    if (total_ <= 0) return;
    const double mean = Mean();
    for (int step_no = 0; step_no < max_steps; ++step_no) {
      const int h = static_cast<int>(std::max_element(load_.begin(), load_.end()) - load_.begin());
      const double lh = load_[h];
      if (mean / lh >= target) return;
      SortRanks();
      // Gains beyond what the target needs buy nothing, so they do not outweigh a cheaper step.
      Step best = FindStep(h, track_ ? lh - mean / target : lh);
      if (best.kind == Step::kNone || best.value < min_gain * mean) return;
      if (budget >= 0 && changes_ + best.cost > budget) return;
      Apply(best);
      ++steps_;
      ++kinds_[best.kind];
    }
  }

 private:
  double Piece(int e) const { return w_[e] / count_[e]; }
  bool Holds(int r, int e) const { return holds_[static_cast<size_t>(r) * E_ + e] != 0; }
  int Changed(int r, int e) const {
    return track_ && !orig_[static_cast<size_t>(r) * E_ + e] ? 1 : 0;
  }

  void RecomputeLoads() {
    load_.assign(R_, 0.0);
    total_ = 0;
    for (int i = 0; i < R_ * S_; ++i) load_[i / S_] += Piece(slot_[i]);
    for (double v : load_) total_ += v;
  }

  std::span<const int> Holders(int e) const {
    return {holders_.data() + static_cast<size_t>(e) * R_, static_cast<size_t>(count_[e])};
  }
  // Keeps order_ = all ranks in ascending load (ties: lower rank). Loads change on a few ranks per
  // step, so an insertion sort over the nearly sorted order is close to linear.
  void SortRanks() {
    auto lighter = [&](int a, int b) {
      return load_[a] < load_[b] || (load_[a] == load_[b] && a < b);
    };
    for (int i = 1; i < R_; ++i) {
      const int r = order_[i];
      int k = i;
      for (; k > 0 && lighter(r, order_[k - 1]); --k) order_[k] = order_[k - 1];
      order_[k] = r;
    }
  }

  // Largest load among the ranks holding e other than a and b (-1 if none).
  double MaxHolderExcept(int e, int a, int b = -1) const {
    double best = -1.0;
    for (int r : Holders(e)) {
      if (r != a && r != b) best = std::max(best, load_[r]);
    }
    return best;
  }

  // A step's value: how far it lowers h (at most `useful`), per slot changed when movement is
  // tracked. Ties go to the lower peak, then to the first found.
  void Consider(Step& best, Step& c, double lh, double useful) const {
    if (c.peak >= lh) return;
    c.value = std::min(lh - c.peak, useful) / (track_ ? std::max(1, c.cost) : 1);
    if (c.value > best.value || (c.value == best.value && c.peak < best.peak)) best = c;
  }

  Step FindStep(int h, double useful) const {
    const double lh = load_[h];
    Step best;
    best.peak = lh;
    const int partners = Partners();
    for (int s = 0; s < S_; ++s) {
      const int hs = h * S_ + s;
      const int x = slot_[hs];
      const double px = Piece(x);
      // Swap: x moves to a light rank j, y of j moves to h.
      for (int pi = 0; pi < partners; ++pi) {
        const int j = order_[pi];
        // No swap with j or any heavier rank brings the peak under (lh + lj) / 2.
        if (best.kind != Step::kNone && std::min((lh - load_[j]) / 2, useful) <= best.value) break;
        if (j == h || Holds(j, x)) continue;
        for (int t = 0; t < S_; ++t) {
          const int jt = j * S_ + t;
          const int y = slot_[jt];
          const double py = Piece(y);
          if (py >= px || Holds(h, y)) continue;
          Step c{Step::kSwap, hs, y, jt, x};
          c.peak = std::max(lh - px + py, load_[j] + px - py);
          c.cost = Changed(h, y) - Changed(h, x) + Changed(j, x) - Changed(j, y);
          Consider(best, c, lh, useful);
        }
      }
      // Replicate: a redundant replica (expert y, count >= 2) on a light rank j becomes a replica
      // of x, splitting x's load once more on every rank that holds it, h included.
      if (count_[x] < R_) {
        const double px_new = w_[x] / (count_[x] + 1);
        const double dx = px - px_new;
        for (int pi = 0; pi < (track_ ? R_ : partners); ++pi) {
          const int j = order_[pi];
          if (j == h || Holds(j, x)) continue;
          for (int t = 0; t < S_; ++t) {
            const int jt = j * S_ + t;
            const int y = slot_[jt];
            if (count_[y] < 2) continue;
            const double py = Piece(y);
            const double py_new = w_[y] / (count_[y] - 1);
            double peak = load_[j] - py + px_new;
            double h_new = lh - dx;
            if (Holds(h, y)) h_new += py_new - py;
            peak = std::max(peak, h_new);
            // Other holders of y carry more; holders of x carry less (never the peak).
            const double other = MaxHolderExcept(y, j, h);
            if (other >= 0) peak = std::max(peak, other + py_new - py);
            Step c{Step::kReplicate, jt, x};
            c.peak = peak;
            c.cost = Changed(j, x) - Changed(j, y);
            Consider(best, c, lh, useful);
          }
        }
      }
      // Release: h's replica of x (count >= 2) becomes a replica of y; x's other holders carry
      // more. Candidates for y: the experts with the largest load per replica, which gain most.
      if (count_[x] >= 2) {
        const double px_new = w_[x] / (count_[x] - 1);
        const double other = MaxHolderExcept(x, h);
        for (int y : hot_) {
          if (y == x || Holds(h, y) || count_[y] >= R_) continue;
          const double py_new = w_[y] / (count_[y] + 1);
          Step c{Step::kRelease, hs, y};
          c.peak = std::max(lh - px + py_new, other + px_new - px);
          c.cost = Changed(h, y) - Changed(h, x);
          Consider(best, c, lh, useful);
        }
      }
    }
    return best;
  }

  void SetSlot(int i, int e) {
    const int r = i / S_;
    const int old = slot_[i];
    changes_ += Changed(r, e) - Changed(r, old);
    holds_[static_cast<size_t>(r) * E_ + old] = 0;
    holds_[static_cast<size_t>(r) * E_ + e] = 1;
    int* old_list = &holders_[static_cast<size_t>(old) * R_];
    *std::find(old_list, old_list + count_[old], r) = old_list[count_[old] - 1];
    --count_[old];
    holders_[static_cast<size_t>(e) * R_ + count_[e]++] = r;
    slot_[i] = e;
  }

  // Applies a step and refreshes the loads of every rank it touched: the ranks of the changed
  // slots and every holder of an expert whose replica count changed.
  void Apply(const Step& s) {
    const int old_a = slot_[s.slot_a];
    SetSlot(s.slot_a, s.expert_a);
    if (s.slot_b >= 0) SetSlot(s.slot_b, s.expert_b);
    RankLoad(s.slot_a / S_);
    if (s.slot_b >= 0) {
      RankLoad(s.slot_b / S_);
      return;  // a swap changes no replica count
    }
    for (int e : {old_a, s.expert_a}) {
      for (int r : Holders(e)) RankLoad(r);
    }
    RefreshHot();
  }
  void RankLoad(int r) {
    double sum = 0;
    for (int t = 0; t < S_; ++t) sum += Piece(slot_[r * S_ + t]);
    total_ += sum - load_[r];
    load_[r] = sum;
  }

 public:
  int steps_ = 0;
  int kinds_[4] = {0, 0, 0, 0};
  // The experts with the largest load per replica: the candidates a released slot goes to.
  void RefreshHot() {
    hot_.resize(E_);
    std::iota(hot_.begin(), hot_.end(), 0);
    const int k = std::min(E_, kHot);
    std::partial_sort(hot_.begin(), hot_.begin() + k, hot_.end(), [&](int a, int b) {
      const double pa = Piece(a), pb = Piece(b);
      return pa > pb || (pa == pb && a < b);
    });
    hot_.resize(k);
  }

 private:
  // How many of the lightest ranks a step may pair h with: more when ranks have few slots.
  int Partners() const { return std::clamp(kPairBudget / (S_ * S_), 8, R_); }
  static constexpr int kPairBudget = 512;
  static constexpr int kHot = 8;

  std::span<const double> w_;
  int R_ = 0, S_ = 0, E_ = 0;
  std::vector<int> slot_;
  std::vector<int> count_;
  std::vector<uint8_t> holds_;
  std::vector<uint8_t> orig_;
  bool track_ = false;
  int changes_ = 0;
  std::vector<double> load_;
  double total_ = 0;
  std::vector<int> holders_;  // per expert, the ranks holding it (first count_[e] entries)
  std::vector<int> order_;
  std::vector<int> hot_;
};

// Replica counts: each extra slot to the expert with the largest load per replica (ties: lower
// id), at most one replica per rank.
std::vector<int> Replicate(std::span<const double> w, int slots, int ranks) {
  const int E = static_cast<int>(w.size());
  std::vector<int> count(E, 1);
  auto less = [&](int a, int b) {
    const double pa = w[a] / count[a], pb = w[b] / count[b];
    return pa < pb || (pa == pb && a > b);
  };
  std::priority_queue<int, std::vector<int>, decltype(less)> heap(less);
  for (int e = 0; e < E; ++e) heap.push(e);
  for (int extra = slots - E; extra > 0 && !heap.empty();) {
    const int e = heap.top();
    heap.pop();
    if (count[e] >= ranks) continue;
    ++count[e];
    --extra;
    heap.push(e);
  }
  return count;
}

// Heaviest replica first onto the lightest rank with a free slot that lacks the expert.
std::vector<int> Pack(std::span<const double> w, const std::vector<int>& count, int ranks,
                      int slots_per_rank) {
  struct Item {
    double piece;
    int expert;
  };
  std::vector<Item> items;
  for (int e = 0; e < static_cast<int>(w.size()); ++e)
    for (int c = 0; c < count[e]; ++c) items.push_back({w[e] / count[e], e});
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    return a.piece > b.piece || (a.piece == b.piece && a.expert < b.expert);
  });
  using Entry = std::pair<double, int>;  // (load, rank), smallest first
  std::priority_queue<Entry, std::vector<Entry>, std::greater<>> heap;
  for (int r = 0; r < ranks; ++r) heap.push({0.0, r});
  std::vector<int> fill(ranks, 0);
  std::vector<int> phy2log(static_cast<size_t>(ranks) * slots_per_rank, -1);
  std::vector<uint8_t> holds(static_cast<size_t>(ranks) * w.size(), 0);
  std::vector<Entry> skipped;
  for (const Item& it : items) {
    while (holds[static_cast<size_t>(heap.top().second) * w.size() + it.expert]) {
      skipped.push_back(heap.top());
      heap.pop();
    }
    auto [load, r] = heap.top();
    heap.pop();
    phy2log[static_cast<size_t>(r) * slots_per_rank + fill[r]++] = it.expert;
    holds[static_cast<size_t>(r) * w.size() + it.expert] = 1;
    if (fill[r] < slots_per_rank) heap.push({load + it.piece, r});
    for (const Entry& s : skipped) heap.push(s);
    skipped.clear();
  }
  return phy2log;
}

class Swift final : public Balancer {
 public:
  explicit Swift(const AlgorithmOptions& o) : options_(o) {}
  std::string_view name() const override { return "swift"; }

  StatusOr<BalanceResult> Balance(const BalanceInput& input) const override {
    EPLB_RETURN_IF_ERROR(ValidateBalanceInput(input));
    const Shape& shape = input.shape;
    const LoadMatrix& load = *input.load;
    const int slots = shape.slots();
    std::vector<int> ids(static_cast<size_t>(shape.layers) * slots);
    BalanceResult result;
    LayerSearch search;
    const int max_steps = 8 * slots;

    if (input.current == nullptr) {
      for (int l = 0; l < shape.layers; ++l) {
        auto w = load.row(l);
        auto counts = Replicate(w, slots, shape.ranks);
        auto packed = Pack(w, counts, shape.ranks, shape.slots_per_rank);
        search.Reset(w, packed, shape.ranks, shape.slots_per_rank, /*track_changes=*/false);
        search.RefreshHot();
        double b0 = search.Balancedness();
        search.Improve(/*target=*/kScratchTarget, /*budget=*/-1, /*min_gain=*/1e-5,
                       max_steps);
        if (getenv("SWIFT_DEBUG")) fprintf(stderr, "layer %d pack %.4f -> %.4f steps %d\n", l, b0, search.Balancedness(), search.steps_);
        std::copy(search.slots().begin(), search.slots().end(),
                  ids.begin() + static_cast<size_t>(l) * slots);
      }
      result.placement = Placement(shape.layers, shape.ranks, shape.slots_per_rank,
                                   shape.experts, std::move(ids));
      return result;
    }

    // Incremental: worst layers first, so a per-cycle budget goes where it helps most.
    const Placement& current = *input.current;
    std::vector<double> before(shape.layers);
    for (int l = 0; l < shape.layers; ++l) before[l] = LayerBalancedness(load.row(l), current, l);
    std::vector<int> order(shape.layers);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(),
                     [&](int a, int b) { return before[a] < before[b]; });
    int64_t cycle_left = options_.max_changes_per_cycle;
    ids = current.phy2log();
    for (int l : order) {
      auto row = load.row(l);
      if (before[l] >= options_.skip_balancedness) {
        result.skipped_layers.push_back(l);
        continue;
      }
      int budget = options_.max_changes_per_layer;
      if (cycle_left >= 0) {
        budget = budget < 0 ? static_cast<int>(std::min<int64_t>(cycle_left, 1 << 30))
                            : static_cast<int>(std::min<int64_t>(budget, cycle_left));
      }
      search.Reset(row, current.layer(l), shape.ranks, shape.slots_per_rank,
                   /*track_changes=*/true);
      search.RefreshHot();
      search.Improve(options_.target_balancedness, budget, options_.min_gain_per_change,
                     max_steps);
      if (getenv("SWIFT_DEBUG")) fprintf(stderr, "L%d %.4f->%.4f ch %d swap %d repl %d rel %d\n", l, before[l], search.Balancedness(), search.changes(), search.kinds_[1], search.kinds_[2], search.kinds_[3]);
      // Keep the layer's result only if it is better.
      if (search.changes() > 0 && search.Balancedness() > before[l]) {
        std::copy(search.slots().begin(), search.slots().end(),
                  ids.begin() + static_cast<size_t>(l) * slots);
        if (cycle_left >= 0) cycle_left -= search.changes();
      }
    }
    std::sort(result.skipped_layers.begin(), result.skipped_layers.end());
    result.placement = Placement(shape.layers, shape.ranks, shape.slots_per_rank, shape.experts,
                                 std::move(ids));
    return result;
  }

 private:
  // From scratch, the local search stops at this balancedness.
  static constexpr double kScratchTarget = 0.997;
  AlgorithmOptions options_;
};

}  // namespace

std::unique_ptr<Balancer> MakeSwiftBalancer(const AlgorithmOptions& options) {
  return std::make_unique<Swift>(options);
}

}  // namespace eplb
