// SwiftBalancer: minimal-movement rebalancing.
//
// Both modes work on one layer at a time with three kinds of step, each keeping every expert
// replicated and never putting two replicas of an expert on one rank:
//   swap       expert x of rank h <-> expert y of rank j             (2 slots change)
//   replicate  a spare replica of y (count >= 2) on rank j becomes one more replica of x, so x's
//              load is split once more on every rank that holds it  (1 slot changes)
//   release    rank h gives up its spare replica of x for one more replica of y
//                                                                      (1 slot changes)
//
// With a current placement (incremental mode), experts stay where they are unless moving them
// pays. Let T = mean rank load / target_balancedness. The search descends on the layer's excess,
// the sum over ranks of max(0, load - T): each round takes, for each of the most overloaded ranks
// and for each expert that would gain from a replica, the step that removes the most excess per
// slot changed, and applies them best first. A step whose ranks an earlier step of the round
// changed is stale: an overloaded rank's step is searched again at once and goes back in line by
// its new value, a replication waits for the next round. A layer stops when no rank exceeds T (it
// has reached the target), when no step removes at least min_gain_per_change x mean per slot
// changed, or when its change budget is spent. A search's result is the most balanced placement it
// passed through (ties: the one with fewer changes), not where it stopped: with the target out of
// reach, the descent on the excess goes on moving load between ranks below the peak after the
// peak stops falling. Layers already at skip_balancedness are left alone, worst layers go first
// (so a per-cycle budget goes where it helps most), and a layer's result is kept only if it is
// better than before. A layer that ends clearly short of its target (the target is beyond what the
// shape or the change budget allows, where descending on the excess over an unreachable cap trades
// the peak for the other ranks) is searched again from its placement with targets lowered in steps
// of kRetryStep, keeping the most balanced result.
//
// At two slots per rank (no caps) a re-plan re-pairs the layer instead (pair_replan.cc): there
// each rank is a pair, and the pieces a heavy replica needs sit on other ranks, which the excess
// search reaches only by long chains of steps. The excess search runs where that finds nothing
// better than the placement in use.
//
// On several nodes, a change whose expert no rank of its node held originally weighs
// inter_node_cost changes in a step's value (its weights must cross nodes), and a source's swaps
// also try the lightest kLocalPartners ranks of its own node. The pair re-plan weighs them too,
// where it places its pairs (pair_replan.cc); it keeps its balance but has less room than the
// excess search to avoid such copies (at 256 x 2 on 32 nodes 0.968 with 23.8% of the slots
// copied between nodes, where the excess search reached 0.948 with 15.6%, 8 x slower).
//
// Without a current placement, a fresh placement is built: replicas to the largest load per
// replica, heaviest replica first onto the lightest rank with a free slot that lacks the expert,
// then the most loaded rank is repeatedly relieved by the step that lowers it most, until the
// layer reaches skip_balancedness: balanced enough that a re-plan would leave it alone (the last
// steps towards perfect balance cost the most).
//
// Groups that divide over several nodes (and nodes whose experts fill a rank's slots) select the
// hierarchical policy, as in the reference: a fresh placement packs the groups onto nodes
// (PackGroups) and balances each node's experts over its own ranks; a re-plan confines every
// replica it places to its group's node in the placement in use (HomesOf, LayerState::Allowed).
//
// Layers are independent unless a per-cycle cap makes them share a budget, so without one they
// may be balanced on several threads (AlgorithmOptions::threads) with the same result.
//
// Everything is a deterministic function of (load, shape, current placement, options): every
// loop runs in a fixed order, every tie goes to the first candidate found (lower slot, rank,
// expert), and no unordered container is used.
#include "algorithms/swift.h"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <cassert>
#include <cmath>
#include <limits>
#include <numeric>
#include <system_error>
#include <thread>
#include <utility>

#include "algorithms/pair_replan.h"

namespace eplb {
namespace {

// A double and a small non-negative id as one integer that orders as the pair (value, id): the
// IEEE bits of a double order as its value among doubles of one sign, so a sign bit flip and,
// for negatives, all bits flipped map every finite double and +inf to an ascending integer.
__extension__ typedef unsigned __int128 Key;
Key MakeKey(double v, int id) {
  uint64_t bits = std::bit_cast<uint64_t>(v);
  bits = bits >> 63 ? ~bits : bits | (uint64_t{1} << 63);
  return (Key{bits} << 32) | static_cast<uint32_t>(id);
}
double KeyValue(Key k) {
  const uint64_t bits = static_cast<uint64_t>(k >> 32);
  return std::bit_cast<double>(bits >> 63 ? bits & ~(uint64_t{1} << 63) : ~bits);
}
int KeyId(Key k) { return static_cast<int>(static_cast<uint32_t>(k)); }

// One step of a search: slot_a receives expert_a; a swap also gives slot_b expert_b.
struct Step {
  enum Kind { kNone, kSwap, kReplicate, kRelease } kind = kNone;
  int slot_a = -1;
  int expert_a = -1;
  int slot_b = -1;
  int expert_b = -1;
  int cost = 0;          // change in the number of slots that differ from the original placement
  double weight = 0;     // the same change with each slot weighted by Weight()
  double value = 0;      // what the step is worth to its search (higher is better)
  int evaluated_at = 0;  // ExcessSearch: how many steps had been applied when it was found
};

// The working state of one layer, shared by both searches: which expert each slot holds, replica
// counts, which ranks hold each expert, rank loads and the ranks in ascending load. Owned by one
// Balance() call and reused across layers, so a call allocates only once per shape.
class LayerState {
 public:
  // With track_changes, changes are counted from phy2log; ranks_per_node > 0 and
  // inter_node_cost > 1 weigh a change that must fetch its expert from another node. A non-empty
  // `home` (per expert, a node of ranks_per_node ranks) confines every replica a step places to
  // its expert's home node.
  void Reset(std::span<const double> w, std::span<const int> phy2log, int ranks, int slots_per_rank,
             bool track_changes, int ranks_per_node = 0, double inter_node_cost = 1.0,
             std::span<const int> home = {}) {
    home_ = home;
    home_rpn_ = home.empty() ? ranks : ranks_per_node;
    // Clears only the entries the previous layer set when the shape is the same.
    const bool same_shape =
        ranks == R_ && slots_per_rank == S_ && static_cast<int>(w.size()) == E_ && !slot_.empty();
    w_ = w;
    R_ = ranks;
    S_ = slots_per_rank;
    E_ = static_cast<int>(w.size());
    if (same_shape) {
      for (size_t i = 0; i < slot_.size(); ++i) holds_[i / S_ * E_ + slot_[i]] = 0;
    } else {
      holds_.assign(static_cast<size_t>(R_) * E_, 0);
    }
    slot_.assign(phy2log.begin(), phy2log.end());
    count_.assign(E_, 0);
    // Each expert's list is R_ ranks long; a stride of a whole number of cache lines plus one
    // keeps the lists' heads from sharing a few cache sets when R_ is a power of two.
    stride_ = (R_ + 15) / 16 * 16 + 16;
    holders_.resize(static_cast<size_t>(E_) * stride_);
    for (int i = 0; i < R_ * S_; ++i) {
      const int e = slot_[i];
      holders_[static_cast<size_t>(e) * stride_ + count_[e]++] = i / S_;
      holds_[static_cast<size_t>(i / S_) * E_ + e] = 1;
    }
    piece_.resize(E_);
    more_.resize(E_);
    less_.resize(E_);
    for (int e = 0; e < E_; ++e) Pieces(e);
    track_ = track_changes;
    if (track_) {
      // origin_: 0 where the rank holds the expert, else 1 where a rank of its node does (or
      // nodes are not weighed), else 2.
      const size_t row = E_;
      if (ranks_per_node > 0 && ranks_per_node < R_ && inter_node_cost > 1) {
        weight_of_ = {0.0, 1.0, inter_node_cost};
        rpn_ = ranks_per_node;
        origin_.resize(R_ * row);
        for (int first = 0; first < R_; first += rpn_) {  // a node's row, copied to its ranks
          uint8_t* o = &origin_[first * row];
          std::fill(o, o + row, 2);
          for (int i = first * S_; i < (first + rpn_) * S_; ++i) o[slot_[i]] = 1;
          for (int r = first + 1; r < first + rpn_; ++r) std::copy(o, o + row, &origin_[r * row]);
        }
      } else {
        weight_of_ = {0.0, 1.0, 1.0};
        rpn_ = R_;  // one node
        origin_.assign(R_ * row, 1);
      }
      for (int i = 0; i < R_ * S_; ++i) origin_[i / S_ * row + slot_[i]] = 0;
      orig_slot_ = slot_;
      arrived_.assign(R_, 0);
    }
    changes_ = 0;
    load_.resize(R_);
    total_ = 0;
    keys_.resize(R_);
    for (int r = 0; r < R_; ++r) {
      load_[r] = RankSum(r);
      total_ += load_[r];
      keys_[r] = MakeKey(load_[r], r);
    }
    std::sort(keys_.begin(), keys_.end());  // the order of Lighter()
    order_.resize(R_);
    for (int i = 0; i < R_; ++i) order_[i] = KeyId(keys_[i]);
  }

  double Mean() const { return total_ / R_; }
  int changes() const { return changes_; }
  const std::vector<int>& slots() const { return slot_; }

 protected:
  double Piece(int e) const { return piece_[e]; }
  double PieceMore(int e) const { return more_[e]; }  // e's piece with one more replica
  double PieceLess(int e) const { return less_[e]; }  // ... with one fewer (count >= 2)
  bool Holds(int r, int e) const { return holds_[static_cast<size_t>(r) * E_ + e] != 0; }
  // 1 if rank r did not hold e in the original placement (tracked mode only).
  int Changed(int r, int e) const {
    return track_ && origin_[static_cast<size_t>(r) * E_ + e] != 0 ? 1 : 0;
  }
  // What e on rank r weighs as a change (tracked mode only): 0 if r held e originally, else 1,
  // or inter_node_cost when no rank of r's node held it (its weights must cross nodes).
  double Weight(int r, int e) const { return weight_of_[origin_[static_cast<size_t>(r) * E_ + e]]; }
  double MostWeight() const { return weight_of_[2]; }
  // Whether changes are weighed by node; then node k is ranks [k * rpn_, (k + 1) * rpn_).
  bool NodeAware() const { return rpn_ < R_; }
  // Whether a step may place expert e on rank r (its home node, when experts have homes).
  bool Allowed(int r, int e) const { return home_.empty() || home_[e] == r / home_rpn_; }
  int RanksPerNode() const { return rpn_; }
  // How many of rank r's slots hold an expert r did not hold originally (tracked mode only).
  int Arrived(int r) const { return arrived_[r]; }
  // The expert slot i held originally (tracked mode only).
  int OrigSlot(int i) const { return orig_slot_[i]; }
  std::span<const int> Holders(int e) const {
    return {holders_.data() + static_cast<size_t>(e) * stride_, static_cast<size_t>(count_[e])};
  }

  // order_ lists all ranks in ascending load, ties by rank.
  bool Lighter(int a, int b) const {
    return load_[a] < load_[b] || (load_[a] == load_[b] && a < b);
  }
  // The largest rank load.
  double Peak() const { return load_[order_[R_ - 1]]; }
  // The most loaded rank (ties: the lowest).
  int Heaviest() const {
    int i = R_ - 1;
    while (i > 0 && load_[order_[i - 1]] == Peak()) --i;
    return order_[i];
  }

  // Applies a step and refreshes the loads of every rank it touched: the ranks of its slots and
  // every holder of an expert whose replica count changed. Returns whether counts changed.
  bool Apply(const Step& s) {
    const int old_a = slot_[s.slot_a];
    SetSlot(s.slot_a, s.expert_a);
    if (s.slot_b >= 0) SetSlot(s.slot_b, s.expert_b);
    RankLoad(s.slot_a / S_);
    if (s.slot_b >= 0) {
      RankLoad(s.slot_b / S_);
      return false;  // a swap changes no replica count
    }
    for (int e : {old_a, s.expert_a}) {
      for (int r : Holders(e)) RankLoad(r);
    }
    return true;
  }

  std::span<const double> w_;
  int R_ = 0, S_ = 0, E_ = 0;
  std::vector<int> slot_;       // phy2log of the layer
  std::vector<int> count_;      // replicas per expert
  std::vector<double> piece_;   // w_[e] / count_[e]
  std::vector<double> more_;    // w_[e] / (count_[e] + 1)
  std::vector<double> less_;    // w_[e] / (count_[e] - 1), 0 when count_[e] < 2
  std::vector<uint8_t> holds_;  // [rank][expert]
  std::vector<int> holders_;    // per expert, the ranks holding it (first count_[e] entries)
  size_t stride_ = 0;           // holders_ entries per expert
  std::vector<double> load_;    // per rank
  double total_ = 0;
  std::vector<int> order_;  // ranks, lightest first
  std::vector<Key> keys_;   // Reset's sort

 private:
  void SetSlot(int i, int e) {
    const int r = i / S_;
    const int old = slot_[i];
    const int delta = Changed(r, e) - Changed(r, old);
    changes_ += delta;
    if (track_) arrived_[r] += delta;
    holds_[static_cast<size_t>(r) * E_ + old] = 0;
    holds_[static_cast<size_t>(r) * E_ + e] = 1;
    int* old_list = &holders_[static_cast<size_t>(old) * stride_];
    *std::find(old_list, old_list + count_[old], r) = old_list[count_[old] - 1];
    --count_[old];
    holders_[static_cast<size_t>(e) * stride_ + count_[e]++] = r;
    Pieces(old);
    Pieces(e);
    slot_[i] = e;
  }
  void Pieces(int e) {
    piece_[e] = count_[e] > 0 ? w_[e] / count_[e] : 0.0;
    more_[e] = w_[e] / (count_[e] + 1);
    less_[e] = count_[e] > 1 ? w_[e] / (count_[e] - 1) : 0.0;
  }
  // The sum of rank r's pieces.
  double RankSum(int r) const {
    double sum = 0;
    for (int t = 0; t < S_; ++t) sum += Piece(slot_[r * S_ + t]);
    return sum;
  }
  // Recomputes rank r's load and moves r to its place in order_ (the other ranks stay sorted, so
  // one insertion step restores the order).
  void RankLoad(int r) {
    const double sum = RankSum(r);
    total_ += sum - load_[r];
    auto lighter = [&](int a, int b) { return Lighter(a, b); };
    const auto at = std::lower_bound(order_.begin(), order_.end(), r, lighter);  // old load
    load_[r] = sum;
    if (at != order_.begin() && Lighter(r, *(at - 1))) {
      std::rotate(std::upper_bound(order_.begin(), at, r, lighter), at, at + 1);
    } else if (at + 1 != order_.end() && Lighter(*(at + 1), r)) {
      std::rotate(at, at + 1, std::lower_bound(at + 1, order_.end(), r, lighter));
    }
  }

  bool track_ = false;
  std::vector<uint8_t> origin_;  // [rank][expert]: an index into weight_of_ (see Reset)
  std::array<double, 3> weight_of_{};
  int rpn_ = 0;                 // ranks per node (R_ when changes are not weighed by node)
  std::vector<int> orig_slot_;  // slot_ of the original placement
  std::vector<int> arrived_;    // per rank, see Arrived()
  int changes_ = 0;
  std::span<const int> home_;  // per expert, its home node (empty: none)
  int home_rpn_ = 0;           // ranks per node of home_
};

// From-scratch refinement: repeatedly lowers the most loaded rank h by the step that lowers it
// most without lifting any other rank to h's load. Used without movement tracking.
class PeakSearch : public LayerState {
 public:
  // Stops when the layer reaches `target`, when the best step lowers h by less than
  // min_gain x mean, or after max_steps steps.
  void Improve(double target, double min_gain, int max_steps) {
    if (total_ <= 0) return;
    const double mean = Mean();
    RefreshHot(kHot);  // many layers never change a replica count: no spares kept for them
    for (int step_no = 0; step_no < max_steps; ++step_no) {
      const int h = Heaviest();
      if (mean / load_[h] >= target) return;
      const Step best = FindStep(h);
      if (best.kind == Step::kNone || best.value < min_gain * mean) return;
      const int old_a = slot_[best.slot_a];
      if (Apply(best)) UpdateHot(old_a, best.expert_a);
    }
  }

 private:
  // How many of the lightest ranks a step may pair h with: more when ranks have few slots.
  int Partners() const { return std::min(R_, std::max(8, kPairBudget / (S_ * S_))); }

  // Largest load among the ranks holding e other than a and b (-1 if none).
  double MaxHolderExcept(int e, int a, int b = -1) const {
    double best = -1.0;
    for (int r : Holders(e)) {
      if (r != a && r != b) best = std::max(best, load_[r]);
    }
    return best;
  }

  // Keeps c if its new peak (the highest load among h and the ranks it lifts) is lower.
  static void Consider(Step& best, Step c, double lh, double peak) {
    c.value = lh - peak;
    if (c.value > best.value) best = c;
  }

  Step FindStep(int h) const {
    const double lh = load_[h];
    Step best;
    const int partners = Partners();
    for (int s = 0; s < S_; ++s) {
      const int hs = h * S_ + s;
      const int x = slot_[hs];
      const double px = Piece(x);
      // Swap: x moves to a light rank j, a lighter y of j moves to h.
      for (int pi = 0; pi < partners; ++pi) {
        const int j = order_[pi];
        // No swap with j or any heavier rank brings the peak under (lh + lj) / 2.
        if ((lh - load_[j]) / 2 <= best.value) break;
        if (j == h || Holds(j, x)) continue;
        for (int t = 0; t < S_; ++t) {
          const int jt = j * S_ + t;
          const int y = slot_[jt];
          const double py = Piece(y);
          if (py >= px || Holds(h, y)) continue;
          Consider(best, {Step::kSwap, hs, y, jt, x}, lh,
                   std::max(lh - px + py, load_[j] + px - py));
        }
      }
      // Replicate: a spare replica (expert y, count >= 2) on a light rank j becomes a replica
      // of x, splitting x's load once more on every rank that holds it, h included.
      // It lowers h by at most dx, x's saving per replica.
      const double dx = count_[x] < R_ ? px - PieceMore(x) : 0.0;
      if (dx > best.value) {
        for (int pi = 0; pi < partners; ++pi) {
          const int j = order_[pi];
          if (j == h || Holds(j, x)) continue;
          for (int t = 0; t < S_; ++t) {
            const int jt = j * S_ + t;
            const int y = slot_[jt];
            if (count_[y] < 2) continue;
            const double dy = PieceLess(y) - Piece(y);  // y's other holders carry more
            double peak = std::max(load_[j] - Piece(y) + px - dx, lh - dx + (Holds(h, y) ? dy : 0));
            if (lh - peak <= best.value) continue;
            const double other = MaxHolderExcept(y, j, h);
            if (other >= 0) peak = std::max(peak, other + dy);
            Consider(best, {Step::kReplicate, jt, x}, lh, peak);
          }
        }
      }
      // Release: h's spare replica of x becomes a replica of one of the experts with the largest
      // load per replica; x's other holders carry more.
      if (count_[x] >= 2) {
        const double dx = PieceLess(x) - px;
        const double other = MaxHolderExcept(x, h);
        for (int y : std::span(hot_).first(std::min(hot_.size(), size_t{kHot}))) {
          if (y == x || Holds(h, y) || count_[y] >= R_) continue;
          Consider(best, {Step::kRelease, hs, y}, lh, std::max(lh - px + PieceMore(y), other + dx));
        }
      }
    }
    return best;
  }

  // Whether expert a comes before b in hot_: a larger load per replica, or an equal one and a
  // lower id.
  bool Hotter(int a, int b) const { return Piece(a) > Piece(b) || (Piece(a) == Piece(b) && a < b); }

  // After a step changed the replica counts of experts a and b (and no other piece): hot_ stays
  // the first experts in Hotter order, without a pass over all experts. Each leaves the list and
  // comes back only if it goes before the last one kept (else the list is still a prefix of the
  // order, one shorter); the pass runs only when fewer than kHot are left. Out of line, as is
  // RefreshHot: both are rare, and inlined they keep FindStep from being inlined into Improve.
  [[gnu::noinline]] void UpdateHot(int a, int b) {
    for (int e : {a, b}) std::erase(hot_, e);
    for (int e : {a, b}) {
      if (hot_.empty() || !Hotter(e, hot_.back())) continue;
      hot_.insert(
          std::upper_bound(hot_.begin(), hot_.end(), e, [&](int u, int v) { return Hotter(u, v); }),
          e);
      if (hot_.size() > kHotKept) hot_.pop_back();
    }
    if (hot_.size() < static_cast<size_t>(std::min(E_, kHot)) || E_ <= kHotKept) {
      RefreshHot(kHotKept);
    }
  }

  // The `keep` experts with the largest load per replica in Hotter order (FindStep reads the
  // first kHot), in one pass: experts come in ascending id, so a later one goes in front of an
  // equal piece only if its piece is larger.
  [[gnu::noinline]] void RefreshHot(int keep) {
    const size_t k = static_cast<size_t>(std::min(E_, keep));
    hot_.clear();
    for (int e = 0; e < E_; ++e) {
      const double p = Piece(e);
      if (hot_.size() == k && !(p > Piece(hot_.back()))) continue;
      if (hot_.size() == k) hot_.pop_back();
      size_t i = hot_.size();
      hot_.push_back(e);
      for (; i > 0 && p > Piece(hot_[i - 1]); --i) hot_[i] = hot_[i - 1];
      hot_[i] = e;
    }
  }

  static constexpr int kPairBudget = 96;  // 24 partners at 2 slots per rank, 8 from 4 up
  static constexpr int kHot = 8;
  static constexpr int kHotKept = 16;  // so that a step's changes rarely call for a pass
  std::vector<int> hot_;
};

// Incremental refinement: greedy descent on the excess of one layer, the sum over ranks of
// max(0, load - cap) with cap = mean / target. Movement is tracked: a step's value is the excess
// it removes per slot changed.
class ExcessSearch : public LayerState {
 public:
  // Runs rounds until the excess is gone, no step removes at least min_gain x mean per slot
  // changed, or the change budget (-1: none) is spent, keeping the best placement it passes.
  void Improve(double target, int budget, double min_gain, int max_rounds) {
    mean_ = Mean();
    best_peak_ = Peak();
    best_changes_ = 0;
    best_slots_ = slot_;
    moves_.clear();
    best_moves_ = 0;
    if (total_ <= 0) return;
    cap_ = mean_ / target;
    touched_.assign(R_, 0);
    back_.assign(R_, 0);
    reserved_.assign(R_, 0);
    reserve_stamp_ = 0;
    back_stamp_ = 0;
    gain_add_.resize(E_);
    loss_remove_.resize(E_);
    hot_seen_.assign(E_, 0);
    hot_stamp_ = 0;
    applies_ = 0;
    refreshed_.assign(E_, 0);
    donor_cost_.assign(static_cast<size_t>(R_) * S_, kNotDonor);
    free_on_.assign(R_, 0);
    free_total_ = 0;
    paid_.clear();
    paid_at_.assign(static_cast<size_t>(R_) * S_, -1);
    terms_.resize(R_);
    for (int e = 0; e < E_; ++e) RefreshKept(e);  // donor_cost_ says no slot is a donor yet
    Descend(budget, min_gain, max_rounds);
    // best_slots_ still holds the placement the search started from: the slot writes up to the
    // best placement turn it into that one.
    for (size_t i = 0; i < best_moves_; ++i) best_slots_[moves_[i].first] = moves_[i].second;
  }
  // The most balanced placement Improve passed through (ties: fewer changes), its balancedness and
  // the slots it changes.
  const std::vector<int>& best_slots() const { return best_slots_; }
  double best_balancedness() const { return best_peak_ > 0 ? mean_ / best_peak_ : 1.0; }
  int best_changes() const { return best_changes_; }

 private:
  // Improve's rounds.
  void Descend(int budget, double min_gain, int max_rounds) {
    for (int round = 1; round <= max_rounds; ++round) {
      Prepare();
      if (overloaded_.empty()) return;
      CollectSteps();
      if (steps_.empty()) return;
      // Steps far below the round's best wait for the next round, where the best step of each
      // rank is chosen again after this round's changes.
      const double floor = std::max(min_gain * mean_, kRoundFraction * steps_[0].value);
      bool applied = false;
      for (size_t i = 0; i < steps_.size() && steps_[i].value >= floor; ++i) {
        const Step c = steps_[i];
        if (budget >= 0 && changes() + c.cost > budget) continue;
        if (Stale(c)) {
          // A source's step is searched again now and goes back in line by its new value;
          // a replication waits for the next round (its donors' costs are a round old).
          if (c.kind == Step::kReplicate || !(load_[c.slot_a / S_] > cap_)) continue;
          const Step again = BestFrom(c.slot_a / S_, floor);
          if (again.kind == Step::kNone) continue;
          steps_.insert(
              std::upper_bound(steps_.begin() + i + 1, steps_.end(), again,
                               [](const Step& a, const Step& b) { return a.value > b.value; }),
              again);
          continue;
        }
        ApplyStep(c);
        moves_.emplace_back(c.slot_a, c.expert_a);
        if (c.slot_b >= 0) moves_.emplace_back(c.slot_b, c.expert_b);
        KeepIfBest();
        applied = true;
      }
      if (!applied) return;
    }
  }
  double Exc(double l) const { return std::max(l - cap_, 0.0); }  // branch-free
  // Compares peaks, not balancedness: the mean is the same in every state of the layer, but its
  // running sum is not exact, and equal peaks must tie. The placement itself is rebuilt at the
  // end from the slot writes up to it (most steps that improve are followed by more that do).
  void KeepIfBest() {
    if (Peak() < best_peak_ || (Peak() == best_peak_ && changes() < best_changes_)) {
      best_peak_ = Peak();
      best_changes_ = changes();
      best_moves_ = moves_.size();
    }
  }
  // Refreshes e's gain, loss and the donor costs of its slots; these depend only on the loads of
  // e's holders and its replica count, so ApplyStep refreshes every expert of a changed rank.
  void Refresh(int e) {
    gain_add_[e] = GainAdd(e);
    const std::span<const int> holders = Holders(e);
    const bool spare = count_[e] >= 2;
    double loss = 0;
    for (size_t k = 0; spare && k < holders.size(); ++k) {
      terms_[k] = RemoveTerm(e, holders[k]);
      loss += terms_[k];
    }
    loss_remove_[e] = loss;
    for (size_t k = 0; k < holders.size(); ++k) {
      const int* slots = &slot_[holders[k] * S_];
      const int t = static_cast<int>(std::find(slots, slots + S_, e) - slots);
      const int slot = holders[k] * S_ + t;
      double& cost = donor_cost_[slot];
      const double now = spare ? loss - terms_[k] : kNotDonor;
      const int delta = (now <= 0) - (cost <= 0);
      free_on_[holders[k]] += delta;
      free_total_ += delta;
      if ((cost > 0 && cost < kNotDonor) != (now > 0 && now < kNotDonor)) {
        if (paid_at_[slot] < 0) {
          paid_at_[slot] = static_cast<int>(paid_.size());
          paid_.push_back(slot);
        } else {  // the last slot of the list takes its place
          paid_at_[paid_.back()] = paid_at_[slot];
          paid_[paid_at_[slot]] = paid_.back();
          paid_.pop_back();
          paid_at_[slot] = -1;
        }
      }
      cost = now;
    }
  }
  // Refresh for an expert whose replica count has not changed since its slots' donor costs were
  // last set: without a spare replica its loss is 0 and its one slot stays no donor, so of what
  // Refresh sets only the gain is left to work out.
  void RefreshKept(int e) {
    if (count_[e] >= 2) return Refresh(e);
    gain_add_[e] = GainAdd(e);
    loss_remove_[e] = 0;
  }
  // Excess removed from the holders of e when e gains a replica (-1 when it cannot).
  double GainAdd(int e) const {
    if (count_[e] >= R_) return -1.0;
    const double d = Piece(e) - PieceMore(e);
    double g = 0;
    for (int r : Holders(e)) g += Exc(load_[r]) - Exc(load_[r] - d);
    return g;
  }
  // Excess added on rank r when e (held by r, count >= 2) loses a replica elsewhere.
  double RemoveTerm(int e, int r) const {
    const double d = PieceLess(e) - Piece(e);
    return Exc(load_[r] + d) - Exc(load_[r]);
  }

  // The ranks whose load a step changes: the ranks of its slots and every holder of an expert
  // whose replica count it changes.
  template <typename F>
  void ForAffected(const Step& c, F&& f) const {
    f(c.slot_a / S_);
    if (c.slot_b >= 0) {
      f(c.slot_b / S_);
      return;
    }
    for (int r : Holders(slot_[c.slot_a])) f(r);
    for (int r : Holders(c.expert_a)) f(r);
  }
  // Whether a step applied after c was found changed a rank c affects (c's value may be wrong).
  bool Stale(const Step& c) const {
    bool hit = false;
    ForAffected(c, [&](int r) { hit |= touched_[r] > c.evaluated_at; });
    return hit;
  }
  // Applies c, stamps the ranks it changed and refreshes the gains and losses of their experts:
  // those depend only on the loads of an expert's holders and its replica count.
  void ApplyStep(const Step& c) {
    ++applies_;
    changed_.clear();
    was_.clear();
    auto stamp = [&](int r) {
      if (touched_[r] == applies_) return;
      touched_[r] = applies_;
      changed_.push_back(r);
      was_.push_back(load_[r]);
    };
    // The ranks c changes, listed before it is applied: after it, ForAffected lists no others
    // (the expert that gains a replica was already held by its other holders).
    ForAffected(c, stamp);
    auto refresh = [&](int e, bool kept) {
      if (refreshed_[e] == applies_) return;  // held by an earlier rank of changed_
      refreshed_[e] = applies_;
      if (kept) {
        RefreshKept(e);
      } else {
        Refresh(e);
      }
    };
    const int gone = slot_[c.slot_a];
    Apply(c);
    // The experts of c's slots changed holders (and maybe counts): always refreshed in full.
    refresh(gone, false);
    refresh(c.expert_a, false);
    // Any other expert of a changed rank r kept its count and holders. r's terms in its gain and
    // loss are exactly 0, before and after, when r stays at or below the cap even with the share
    // a lost replica elsewhere would add (as RemoveTerm computes it; none without a spare):
    // then only another changed holder can change them, and is tested in its turn.
    for (size_t k = 0; k < changed_.size(); ++k) {
      const int r = changed_[k];
      const double high = std::max(was_[k], load_[r]);
      for (int t = 0; t < S_; ++t) {
        const int e = slot_[r * S_ + t];
        if (high > cap_ || (count_[e] >= 2 && high + (PieceLess(e) - Piece(e)) > cap_)) {
          refresh(e, true);
        }
      }
    }
  }

  // Overloaded ranks (most loaded first), the donor slots and the hot experts of this round.
  void Prepare() {
    // The most loaded ranks first (ties: lower rank); a round looks for swaps and releases on
    // the first few only.
    overloaded_.clear();
    for (int i = R_ - 1; i >= 0 && load_[order_[i]] > cap_;) {
      int k = i;  // order_[k + 1 .. i] have the same load, ranks ascending
      while (k >= 0 && load_[order_[k]] == load_[order_[i]]) --k;
      for (int t = k + 1; t <= i; ++t) overloaded_.push_back(order_[t]);
      i = k;
    }
    // The donors of this round are listed as far as it reads them (Donor()).
    donors_.clear();
    donor_heap_.clear();
    donor_ranks_ = 0;
    donor_limit_ = std::numeric_limits<double>::infinity();
    // Experts that would gain from one more replica, best first (ties: lower id): only an expert
    // held by an overloaded rank can. A round tries the best kHot; the others mostly fall below
    // its threshold (kRoundFraction of its best step) and are tried again in later rounds if they
    // still gain. hot_ is kept sorted as it fills, and an expert that does not beat the last of a
    // full list is passed over at once, as most are (the last only gets better, so an expert
    // passed over or pushed out never gets back in, and hot_seen_ only needs to keep an expert
    // on several overloaded ranks from going in twice).
    hot_.clear();
    ++hot_stamp_;
    auto above = [&](int a, int b) {
      return gain_add_[a] > gain_add_[b] || (gain_add_[a] == gain_add_[b] && a < b);
    };
    for (int r : overloaded_) {
      for (int t = 0; t < S_; ++t) {
        const int e = slot_[r * S_ + t];
        if (!(gain_add_[e] > 0) || (hot_.size() == kHot && !above(e, hot_.back())) ||
            hot_seen_[e] == hot_stamp_) {
          continue;
        }
        hot_seen_[e] = hot_stamp_;
        if (hot_.size() == kHot) hot_.pop_back();
        hot_.insert(std::upper_bound(hot_.begin(), hot_.end(), e, above), e);
      }
    }
  }

  // Makes donors_[i] available and returns whether there is one. Donor slots (their expert has
  // a replica to spare) come cheapest first: the free ones on the lightest ranks first (listed
  // rank by rank), then the others by cost (a heap, sorted only as far as a round reads it).
  bool Donor(size_t i) {
    while (i >= donors_.size()) {
      if (donor_ranks_ < R_) {
        // The free donors, rank by rank (free_on_ counts them per rank) ...
        if (static_cast<int>(donors_.size()) < free_total_) {
          const int r = order_[donor_ranks_++];
          for (int t = 0; free_on_[r] > 0 && t < S_; ++t) {
            const double cost = donor_cost_[r * S_ + t];
            if (cost <= 0) donors_.push_back(MakeKey(cost, r * S_ + t));
          }
        } else {
          donor_ranks_ = R_;
        }
        if (donor_ranks_ == R_) {  // ... then the others, by cost
          // Refresh keeps them listed in paid_, so the rest of the slots are not read. Their
          // order there does not matter: the heap pops (cost, slot) pairs in their own order.
          for (int slot : paid_) {
            const double cost = donor_cost_[slot];
            if (cost < donor_limit_) donor_heap_.push_back(MakeKey(cost, slot));
          }
          std::make_heap(donor_heap_.begin(), donor_heap_.end(), std::greater<>());
        }
      } else if (!donor_heap_.empty()) {  // (cost, slot) pairs are unique
        std::pop_heap(donor_heap_.begin(), donor_heap_.end(), std::greater<>());
        donors_.push_back(donor_heap_.back());
        donor_heap_.pop_back();
      } else {
        return false;
      }
    }
    return true;
  }

  // Keeps c if it removes more excess per slot changed (weighted, at least 1) than best.
  // `estimate` may overstate what a re-replication removes (it ignores ranks holding both
  // experts); the exact value decides. Unweighted, a step changes at most 2 slots, so the value
  // is removed or removed / 2: a multiplication by 0.5 is exact and much cheaper than a division.
  void Consider(Step& best, Step& c, double estimate) const {
    const double per_inverse = c.weight > 1 ? (c.weight == 2 ? 0.5 : 1.0 / c.weight) : 1.0;
    if (estimate * per_inverse <= best.value) return;
    const double removed = c.kind == Step::kSwap ? estimate : ExactRemoved(c);
    c.value = removed * per_inverse;
    if (removed > 1e-12 * cap_ && c.value > best.value) best = c;
  }
  // Excess removed by a step that gives slot_a's replica to expert_a.
  double ExactRemoved(const Step& c) const {
    const int r0 = c.slot_a / S_;
    const int gone = slot_[c.slot_a];
    const int come = c.expert_a;
    const double d_gone = PieceLess(gone) - Piece(gone);
    const double d_come = PieceMore(come) - Piece(come);
    double removed = Exc(load_[r0]) - Exc(load_[r0] - Piece(gone) + PieceMore(come) +
                                          (Holds(r0, come) ? d_come : 0.0));
    for (int r : Holders(gone)) {
      if (r == r0) continue;
      const double d = d_gone + (Holds(r, come) ? d_come : 0.0);
      removed += Exc(load_[r]) - Exc(load_[r] + d);
    }
    for (int r : Holders(come)) {
      if (r == r0 || Holds(r, gone)) continue;
      removed += Exc(load_[r]) - Exc(load_[r] + d_come);
    }
    return removed;
  }

  // steps_ = the best step per overloaded rank (swap or release) and per hot expert
  // (replicate), best first; ties keep the order of collection.
  // A source's step below kRoundFraction of the round's best step is never applied in the round
  // (Descend's floor) and is searched again in the next, so each source is searched only for
  // steps at least kRoundFraction of the best step found before it: the best step only rises as
  // more are found, so the round's best, its floor and the steps above it stay what a full search
  // of every source gives. Replications are searched in full: each takes its donor rank from the
  // later ones, and which are searched depends on the round's best.
  void CollectSteps() {
    steps_.clear();
    double floor = 0;
    for (size_t k = 0; k < overloaded_.size() && k < kSources; ++k) {
      const Step best = BestFrom(overloaded_[k], floor);
      if (best.kind == Step::kNone) continue;
      steps_.push_back(best);
      floor = std::max(floor, kRoundFraction * best.value);
    }
    CollectReplications();
    std::stable_sort(steps_.begin(), steps_.end(),
                     [](const Step& a, const Step& b) { return a.value > b.value; });
  }

  // The best swap or release of source rank h worth at least `floor` (kNone if none removes
  // excess or none is worth that much).
  Step BestFrom(int h, double floor) {
    return NodeAware() ? BestFrom<true>(h, floor) : BestFrom<false>(h, floor);
  }
  // kNodes: changes are weighed by node (a separate instance keeps the single-node loop lean).
  template <bool kNodes>
  Step BestFrom(int h, double floor) {
    const int partners = std::min(R_, std::max(4, kPairBudget / (S_ * S_)));
    Step best;
    // A step replaces best only when worth more: just below the floor, a step worth exactly the
    // floor still does, and every bound below prunes what cannot reach it.
    if (floor > 0) best.value = std::nextafter(floor, 0.0);
    const double lh = load_[h];
    const double exc_h = Exc(lh);
    double top_gain = 0;  // hot_ is sorted by gain at the round's start, not after its steps
    for (int y : hot_) top_gain = std::max(top_gain, gain_add_[y]);
    // A swap changes 2 slots unless it undoes an earlier change: unless x had arrived on h or
    // had been on j, or j holds an expert that arrived there or that h held originally.
    ++back_stamp_;
    for (int s = 0; s < S_; ++s) {
      for (int r : Holders(OrigSlot(h * S_ + s))) back_[r] = back_stamp_;
    }
    // Weighing changes by node, the lightest kLocalPartners ranks of h's node after the lightest
    // `partners` ranks are partners too, and come first: a swap within the node weighs less, so
    // its value, found early, lets the bounds below skip more of the others.
    int n = 0;  // locals_ in use
    if constexpr (kNodes) {
      locals_.clear();
      const int rpn = RanksPerNode();
      const unsigned first = h / rpn * rpn;  // h's node is ranks [first, first + rpn)
      for (int pi = partners; pi < R_ && locals_.size() < kLocalPartners; ++pi) {
        const int j = order_[pi];
        if (j - first < static_cast<unsigned>(rpn) && j != h) locals_.push_back(j);
      }
      n = static_cast<int>(locals_.size());
    }
    // What the loop over partners reads of each, worked out once here rather than once per slot
    // of h. A partner without room under the cap ends that loop (its bound is at most 0, and
    // best.value is never below 0): so does every later one (they are heavier, h among them), and
    // of the locals, the next local too. Such partners are left out, and the rest have no excess.
    if (mates_.size() < static_cast<size_t>(n + partners)) mates_.resize(n + partners);
    int mates = 0;  // mates_ in use
    int locals = n;
    for (int pi = 0; pi < n + partners; ++pi) {
      const int j = pi < n ? locals_[pi] : order_[pi - n];
      const double room = cap_ - load_[j];
      if (!(room > 0)) {
        if (pi < n) {
          locals = mates;
          pi = n - 1;  // on to the lightest ranks
          continue;
        }
        break;
      }
      mates_[mates++] = {j, load_[j], room, Arrived(j) == 0, back_[j] != back_stamp_};
    }
    n = locals;
    for (int s = 0; s < S_; ++s) {
      const int hs = h * S_ + s;
      const int x = slot_[hs];
      const double px = Piece(x);
      // What the partners below share, worked out once per slot of h.
      const double head = std::min(lh - cap_, px);
      const bool x_was_on_h = !Changed(h, x);
      // Swap x with a lighter expert y of one of the partners j. It removes at most
      // min(excess of h, px, room under the cap on j); each list comes lightest first.
      for (int pi = 0; pi < mates; ++pi) {
        const Mate& m = mates_[pi];
        const int j = m.rank;
        const double lj = m.load;
        const double bound = std::min(head, m.room);
        if (bound <= best.value) {
          if (pi < n) {
            pi = n - 1;  // on to the lightest ranks
            continue;
          }
          break;
        }
        if (Holds(j, x) || !Allowed(j, x)) continue;
        // The swap's weight is at least x's part plus, when nothing has arrived on j (so every y
        // there is original) and j holds nothing h held originally, 1 for y on h. Skip j when
        // that leaves no chance to beat best. (Like the break above, this ignores candidates that
        // beat the bound by rounding alone.) Unweighted, the least weight is 2 exactly when, on
        // top of that, x is new on j and was on h originally.
        if constexpr (kNodes) {
          if (bound <= best.value * (1 + MostWeight()) && m.settled) {
            const double least = Weight(j, x) - Weight(h, x) + (m.apart ? 1 : 0);
            if (least > 1 && bound <= best.value * least) continue;
          }
        } else if (bound * 0.5 <= best.value && x_was_on_h && m.settled && m.apart &&
                   Changed(j, x)) {
          continue;
        }
        const double x_part = kNodes ? Weight(j, x) - Weight(h, x) : 0.0;
        for (int t = 0; t < S_; ++t) {
          const int jt = j * S_ + t;
          const int y = slot_[jt];
          const double py = Piece(y);
          if (py >= px) continue;
          const double removed = exc_h - Exc(lh - px + py) - Exc(lj + px - py);  // j: no excess
          if (removed <= best.value || Holds(h, y) || !Allowed(h, y)) continue;
          Step c{Step::kSwap, hs, y, jt, x};
          if constexpr (kNodes) {
            c.weight = x_part + Weight(h, y) - Weight(j, y);
            if (c.weight > 1 && removed <= best.value * c.weight) continue;  // as Consider would
          }
          c.cost = Changed(h, y) - Changed(h, x) + Changed(j, x) - Changed(j, y);
          if constexpr (!kNodes) c.weight = c.cost;
          Consider(best, c, removed);
        }
      }
      // Release: h's replica of x becomes a replica of a hot expert y.
      // Its estimate is at most the largest gain of a hot expert, minus what x's other holders
      // lose, plus h's own part (at most min(excess, px)).
      const double lost = count_[x] >= 2 ? loss_remove_[x] - RemoveTerm(x, h) : 0.0;
      if (count_[x] >= 2 && top_gain - lost + std::min(exc_h, px) > best.value) {
        for (int y : hot_) {
          if (y == x || Holds(h, y) || !Allowed(h, y)) continue;
          const double estimate = gain_add_[y] - lost + Exc(lh) - Exc(lh - px + PieceMore(y));
          Step c{Step::kRelease, hs, y};
          c.cost = Changed(h, y) - Changed(h, x);
          c.weight = kNodes ? Weight(h, y) - Weight(h, x) : c.cost;
          Consider(best, c, estimate);
        }
      }
    }
    best.evaluated_at = applies_;
    return best;
  }

  void CollectReplications() {
    // Replicate: a donor slot (expert y with a spare replica) becomes a replica of a hot x.
    // Such a step removes at most gain_add_[x], and hot_ is sorted by it: once that is below
    // what this round applies, no later x can contribute. Each x takes its donor on a rank that
    // no earlier x of the round took: all would take the cheapest, and only one could apply.
    double round_best = 0;
    for (const Step& c : steps_) round_best = std::max(round_best, c.value);
    ++reserve_stamp_;
    // A donor that costs at least the largest gain ends every x's scan (hot_ is sorted by gain
    // and no step is applied before the scans): it need not be listed.
    if (!hot_.empty()) donor_limit_ = gain_add_[hot_[0]];
    for (int x : hot_) {
      if (gain_add_[x] < kRoundFraction * round_best) break;
      Step best;
      const double px_new = PieceMore(x);
      for (size_t i = 0; Donor(i); ++i) {
        const double donor_cost = KeyValue(donors_[i]);
        const int jt = KeyId(donors_[i]);
        // Donors are sorted by cost; the rest cannot beat the best step for x.
        if (gain_add_[x] - donor_cost <= best.value) break;
        const int j = jt / S_;
        const int y = slot_[jt];
        if (y == x || Holds(j, x) || reserved_[j] == reserve_stamp_ || !Allowed(j, x)) continue;
        const double lj = load_[j];
        const double estimate = gain_add_[x] - donor_cost - (Exc(lj - Piece(y) + px_new) - Exc(lj));
        Step c{Step::kReplicate, jt, x};
        c.cost = Changed(j, x) - Changed(j, y);
        c.weight = NodeAware() ? Weight(j, x) - Weight(j, y) : c.cost;
        Consider(best, c, estimate);
      }
      if (best.kind != Step::kNone) {
        reserved_[best.slot_a / S_] = reserve_stamp_;
        best.evaluated_at = applies_;
        steps_.push_back(best);
        round_best = std::max(round_best, best.value);
      }
    }
  }

  static constexpr int kPairBudget = 256;
  static constexpr int kLocalPartners = 2;
  static constexpr double kRoundFraction = 0.5;
  // Sources and hot experts searched per round. With 8 and 16 the movement report's figures are
  // within noise of these, and the after-shift re-plan is 14% (64 x 5) and 10% (256 x 2) slower.
  static constexpr size_t kSources = 4;
  static constexpr size_t kHot = 8;

  double cap_ = 0;
  std::vector<int> overloaded_;
  std::vector<int> locals_;  // BestFrom's partners on the source's node
  // A partner of BestFrom, as it stands when BestFrom starts.
  struct Mate {
    int rank;
    double load;
    double room;   // cap_ - load, > 0
    bool settled;  // nothing has arrived on it (Arrived() is 0)
    bool apart;    // it holds none of the source's original experts (back_ is not stamped)
  };
  std::vector<Mate> mates_;  // BestFrom's partners with room under the cap, in the order tried
  std::vector<double> gain_add_, loss_remove_;
  // Per slot, what giving up its replica costs the expert's other holders in excess (Refresh);
  // kNotDonor where the expert has no replica to spare.
  static constexpr double kNotDonor = std::numeric_limits<double>::infinity();
  std::vector<double> donor_cost_;
  std::vector<int> free_on_;     // per rank, its donor slots that cost nothing
  int free_total_ = 0;           // ... and on all ranks
  std::vector<int> paid_;        // the donor slots that cost something, in no particular order
  std::vector<int> paid_at_;     // per slot, its index in paid_ (-1: not listed)
  std::vector<double> terms_;    // Refresh's RemoveTerm per holder
  std::vector<Key> donors_;      // (cost, slot), cheapest first
  std::vector<Key> donor_heap_;  // the donors not yet sorted into donors_
  int donor_ranks_ = 0;          // how many ranks of order_ Donor() has listed
  double donor_limit_ = 0;       // donors that cost this much or more are left out
  std::vector<int> hot_;         // the kHot experts with most gain_add_ > 0
  std::vector<int> hot_seen_;    // per expert: hot_stamp_ when last collected
  int hot_stamp_ = 0;
  std::vector<Step> steps_;
  std::vector<int> touched_;                // per rank, the applies_ at which its load last changed
  int applies_ = 0;                         // steps applied so far
  std::vector<int> best_slots_;             // see best_slots()
  std::vector<std::pair<int, int>> moves_;  // (slot, expert) written by the steps applied, in order
  size_t best_moves_ = 0;                   // how many of them lead to best_slots_
  double mean_ = 0;                         // the layer's mean rank load when Improve started
  double best_peak_ = 0;                    // the largest rank load of best_slots_
  int best_changes_ = 0;
  std::vector<int> changed_;    // ApplyStep's ranks
  std::vector<double> was_;     // ... and their loads before the step
  std::vector<int> refreshed_;  // per expert, the applies_ at which ApplyStep last refreshed it
  std::vector<int> back_;       // back_stamp_ on the ranks holding a source's original experts
  int back_stamp_ = 0;
  std::vector<int> reserved_;  // reserve_stamp_ on the donor ranks a round's replications chose
  int reserve_stamp_ = 0;
};

// Replaces the top of a binary heap (ordered by `above`) with `value`, which must not belong
// above the old top, and sifts it down: one sift instead of a pop and a push.
template <typename T, typename Above>
void ReplaceTop(std::span<T> heap, T value, Above above) {
  const size_t n = heap.size();
  size_t i = 0;
  for (size_t c = 1; c < n; c = 2 * i + 1) {
    if (c + 1 < n && above(heap[c + 1], heap[c])) ++c;
    if (!above(heap[c], value)) break;
    heap[i] = heap[c];
    i = c;
  }
  heap[i] = value;
}

// Replica counts: each extra slot to the expert with the largest load per replica (ties: lower
// id), at most one replica per rank.
//
// The greedy takes the candidates "replica k + 1 of e, worth w[e] / k" (k < ranks) in descending
// order of worth, so it takes every candidate worth more than tau = total / extra first: there
// are fewer than extra of them. Those are granted at once; the heap goes on from there.
//
// Leaves in `pieces` every expert's key (-load per replica, expert) for its final count, in no
// particular order: the packer sorts them, and they are the heap's keys at the end.
std::vector<int> Replicate(std::span<const double> w, int slots, int ranks,
                           std::vector<Key>& pieces) {
  const int E = static_cast<int>(w.size());
  std::vector<int> count(E, 1);
  int extra = slots - E;
  const double total = std::accumulate(w.begin(), w.end(), 0.0);
  if (extra > 0 && total > 0) {
    const double tau = total / extra;
    int granted = 0;
    for (int e = 0; e < E; ++e) {
      if (!(w[e] > tau)) continue;
      // k = how many k >= 1 have w[e] / k > tau, by the greedy's own division.
      int k = static_cast<int>(std::min<double>(ranks - 1, std::ceil(w[e] / tau) - 1));
      while (k >= 1 && !(w[e] / k > tau)) --k;
      while (k + 1 <= ranks - 1 && w[e] / (k + 1) > tau) ++k;
      count[e] = 1 + k;
      granted += k;
    }
    if (granted <= extra) {
      extra -= granted;
    } else {  // rounding: the plain greedy
      std::fill(count.begin(), count.end(), 1);
    }
  }
  // A min-heap of (-load per replica, expert): the top is the largest piece, ties the lowest id.
  std::vector<Key>& heap = pieces;
  heap.resize(E);
  for (int e = 0; e < E; ++e) heap[e] = MakeKey(-(w[e] / count[e]), e);
  std::make_heap(heap.begin(), heap.end(), std::greater<>());
  size_t full = 0;  // experts with a replica on every rank, at the end of `pieces` (rare)
  while (extra > 0 && heap.size() > full) {
    const int e = KeyId(heap.front());
    if (count[e] >= ranks) {  // out of the heap, kept past its end
      std::pop_heap(heap.begin(), heap.end() - full, std::greater<>());
      ++full;
      continue;
    }
    ++count[e];
    --extra;
    ReplaceTop(std::span(heap).first(heap.size() - full), MakeKey(-(w[e] / count[e]), e),
               std::less<>());
  }
  return count;
}

// Heaviest replica first onto the lightest rank with a free slot that lacks the expert (ties:
// lower rank). Reuses its buffers across layers.
class Packer {
 public:
  // `pieces`: every expert's key (-load per replica, expert) for `count`, in any order (sorted
  // here).
  std::span<const int> Pack(std::span<const double> w, const std::vector<int>& count,
                            std::vector<Key>& pieces, int ranks, int slots_per_rank) {
    // Experts by load per replica, largest first (ties: lower id); an expert's replicas are
    // placed one after another.
    std::sort(pieces.begin(), pieces.end());
    S_ = slots_per_rank;
    heap_.clear();
    for (int r = 0; r < ranks; ++r) heap_.push_back(MakeKey(0.0, r));  // already a min-heap
    load_.assign(ranks, 0.0);
    fill_.assign(ranks, 0);
    last_.assign(ranks, -1);  // the expert a rank received last: the only one it can hold twice
    phy2log_.assign(static_cast<size_t>(ranks) * slots_per_rank, -1);
    // While every rank is empty the heap hands out ranks 0, 1, 2, ... in turn: a positive piece
    // sinks each below the empty ones. Those placements skip the heap, which is then built once
    // from the same keys (they are distinct, so its top is the same at every step after).
    int fresh = 0;       // ranks [0, fresh) took the first replicas; -1 once the heap is in use
    bool pairs = false;  // the heap is a sorted list (two slots per rank)
    size_t next = 0;     // ... whose first next entries are taken
    for (const Key k : pieces) {
      const double piece = -KeyValue(k);
      const int e = KeyId(k);
      for (int c = 0; c < count[e]; ++c) {
        if (fresh >= 0) {
          if (fresh < ranks && piece > 0) {
            phy2log_[static_cast<size_t>(fresh) * S_] = e;
            fill_[fresh] = 1;
            last_[fresh] = e;
            load_[fresh] = piece;
            ++fresh;
            continue;
          }
          // Two slots per rank: each rank takes one more replica and is full, so the heap would
          // hand the ranks out in the order of their keys (skipping those holding the expert).
          // A sorted list does the same without the heap's upkeep, and needs no sort: every rank
          // holds one replica then, placed heaviest first, so the loads do not increase with the
          // rank, and the keys in ascending order are the ranks from the last, each run of equal
          // loads from its first rank.
          pairs = S_ == 2 && fresh == ranks;
          if (pairs) {
            for (int i = 0, end = ranks; end > 0;) {
              int begin = end - 1;
              while (begin > 0 && load_[begin - 1] == load_[end - 1]) --begin;
              for (int r = begin; r < end; ++r) heap_[i++] = MakeKey(load_[r], r);
              end = begin;
            }
            assert(std::is_sorted(heap_.begin(), heap_.end()));
          } else {  // the ranks that took a replica get their keys (the list writes its own)
            for (int r = 0; r < fresh; ++r) {
              heap_[r] = MakeKey(fill_[r] < S_ ? load_[r] : kFull, r);
            }
            std::make_heap(heap_.begin(), heap_.end(), std::greater<>());
          }
          fresh = -1;
        }
        if (pairs) {
          // heap_[next..] in order of keys; a taken rank is marked with kTaken. Only the expert
          // whose replicas straddle the first `ranks` can be skipped (an expert's replicas come
          // one after another), and it holds fewer of the ranks left than there are (it has at
          // most `ranks` replicas), so a rank to take is always found.
          size_t i = next;
          while (i < heap_.size() && (heap_[i] == kTaken || last_[KeyId(heap_[i])] == e)) ++i;
          assert(i < heap_.size());
          const int r = KeyId(heap_[i]);
          heap_[i] = kTaken;
          while (next < heap_.size() && heap_[next] == kTaken) ++next;
          phy2log_[static_cast<size_t>(r) * S_ + fill_[r]++] = e;
          last_[r] = e;
          load_[r] += piece;
          continue;
        }
        while (last_[KeyId(heap_.front())] == e) SkipTop();
        const int r = KeyId(heap_.front());
        if (fill_[r] == S_) {  // every rank with a free slot holds e already
          Relocate(e, w, count);
          continue;
        }
        phy2log_[static_cast<size_t>(r) * S_ + fill_[r]++] = e;
        last_[r] = e;
        load_[r] += piece;
        // A full rank sinks to the bottom for good.
        ReplaceTop(std::span(heap_), MakeKey(fill_[r] < S_ ? load_[r] : kFull, r), std::less<>());
        for (const Key s : skipped_) Push(s);
        skipped_.clear();
      }
    }
    return phy2log_;
  }

 private:
  static constexpr double kFull = std::numeric_limits<double>::infinity();
  static constexpr Key kTaken = ~Key{0};  // above every key of a rank
  // Places a replica of e when every rank with a free slot holds e. That happens only when adding
  // a piece leaves a load unchanged (zero loads, or pieces below the loads' rounding), so the
  // lightest rank takes piece after piece until the free slots are left on a few ranks. A free
  // slot's rank q takes an expert f from the first full rank p that lacks e and holds an f that q
  // lacks (p exists: q is not full, so it holds fewer experts than p), and e takes f's slot on p.
  void Relocate(int e, std::span<const double> w, const std::vector<int>& count) {
    for (const Key s : skipped_) Push(s);
    skipped_.clear();
    int q = 0;
    while (fill_[q] == S_) ++q;
    auto holds = [&](int r, int x) {
      const int* slots = &phy2log_[static_cast<size_t>(r) * S_];
      return std::find(slots, slots + fill_[r], x) != slots + fill_[r];
    };
    for (int p = 0; p < static_cast<int>(fill_.size()); ++p) {
      if (fill_[p] < S_ || holds(p, e)) continue;
      for (int t = 0; t < S_; ++t) {
        int& slot = phy2log_[static_cast<size_t>(p) * S_ + t];
        const int f = slot;
        if (holds(q, f)) continue;
        phy2log_[static_cast<size_t>(q) * S_ + fill_[q]++] = f;
        slot = e;
        last_[p] = e;
        load_[q] += w[f] / count[f];
        load_[p] += w[e] / count[e] - w[f] / count[f];
        heap_.clear();
        for (int r = 0; r < static_cast<int>(fill_.size()); ++r) {
          heap_.push_back(MakeKey(fill_[r] < S_ ? load_[r] : kFull, r));
        }
        std::make_heap(heap_.begin(), heap_.end(), std::greater<>());
        return;
      }
    }
  }
  // Sets the lightest rank aside (it holds the expert being placed) until the replica is placed.
  void SkipTop() {
    std::pop_heap(heap_.begin(), heap_.end(), std::greater<>());
    skipped_.push_back(heap_.back());
    heap_.pop_back();
  }
  void Push(Key k) {
    heap_.push_back(k);
    std::push_heap(heap_.begin(), heap_.end(), std::greater<>());
  }

  std::vector<Key> heap_;  // (load, rank), a min-heap
  std::vector<Key> skipped_;
  std::vector<double> load_;
  std::vector<int> fill_, last_, phy2log_;
  int S_ = 0;
};

// Calls fn(i, state) for every i in [0, n) on up to `threads` threads (the calling thread is one),
// each with a State of its own; indices are handed out in ascending order.
//
// The one place an algorithm starts threads (STYLE.md keeps algorithms free of them): it stays a
// pure function, since each index writes only its own output and reads nothing another index
// writes, so the result is the same for any thread count; only swift knows when its layers are
// independent (no per-cycle cap), which is why the split is here and not in the caller.
template <typename State, typename F>
void ParallelFor(int n, int threads, F fn) {
  std::atomic<int> next{0};
  auto work = [&] {
    State state;
    for (int i = next++; i < n; i = next++) fn(i, state);
  };
  std::vector<std::jthread> helpers;
  for (int t = 1; t < std::min(threads, n); ++t) {
    try {
      helpers.emplace_back(work);
    } catch (const std::system_error&) {
      break;  // no more threads to be had: the ones running share the work
    }
  }
  work();
}

// The hierarchical policy, as deepseek's: several nodes, and expert groups (consecutive blocks of
// experts) that divide evenly over them. Each group then lives on one node, so that group-limited
// routing also limits the nodes a token visits. A node's experts must fill a rank's slots with
// distinct experts (experts / nodes >= slots per rank); otherwise the global policy.
bool Hierarchical(const Shape& s) {
  return s.nodes > 1 && s.groups % s.nodes == 0 && s.experts / s.nodes >= s.slots_per_rank;
}

// Each expert's home node for a fresh placement: groups packed onto nodes, groups / nodes each,
// heaviest group first (ties: lower group) onto the lightest node with room (ties: lower node).
void PackGroups(std::span<const double> w, const Shape& s, std::vector<int>& home) {
  const int G = s.groups, N = s.nodes, per_group = s.experts / G;
  std::vector<double> group_load(G, 0.0), node_load(N, 0.0);
  std::vector<int> order(G), room(N, G / N), node_of(G);
  for (int e = 0; e < s.experts; ++e) group_load[e / per_group] += w[e];
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return group_load[a] > group_load[b]; });
  for (int g : order) {
    int best = -1;
    for (int n = 0; n < N; ++n) {
      if (room[n] > 0 && (best < 0 || node_load[n] < node_load[best])) best = n;
    }
    node_of[g] = best;
    --room[best];
    node_load[best] += group_load[g];
  }
  home.resize(s.experts);
  for (int e = 0; e < s.experts; ++e) home[e] = node_of[e / per_group];
}

// Each expert's home node in a placement in use: the node holding most replicas of its group's
// experts (ties: lower node).
void HomesOf(std::span<const int> phy2log, const Shape& s, std::vector<int>& home) {
  const int G = s.groups, N = s.nodes, per_group = s.experts / G;
  const int slots_per_node = s.ranks_per_node() * s.slots_per_rank;
  std::vector<int> count(static_cast<size_t>(G) * N, 0);
  for (int i = 0; i < static_cast<int>(phy2log.size()); ++i) {
    ++count[static_cast<size_t>(phy2log[i] / per_group) * N + i / slots_per_node];
  }
  home.resize(s.experts);
  for (int e = 0; e < s.experts; ++e) {
    const int* c = &count[static_cast<size_t>(e / per_group) * N];
    home[e] = static_cast<int>(std::max_element(c, c + N) - c);  // the first of the largest
  }
}

// The options' documented ranges (checked once, when the balancer is made).
Status ValidateOptions(const AlgorithmOptions& o) {
  if (!(o.target_balancedness > 0 && o.target_balancedness <= 1)) {
    return Status::Invalid(
        fmt::format("swift: target_balancedness must be in (0, 1], got {}", o.target_balancedness));
  }
  if (!(o.skip_balancedness > 0 && o.skip_balancedness <= 1)) {
    return Status::Invalid(
        fmt::format("swift: skip_balancedness must be in (0, 1], got {}", o.skip_balancedness));
  }
  if (!(o.min_gain_per_change >= 0) || !std::isfinite(o.min_gain_per_change)) {
    return Status::Invalid(fmt::format(
        "swift: min_gain_per_change must be a finite number >= 0, got {}", o.min_gain_per_change));
  }
  if (!(o.inter_node_cost >= 1) || !std::isfinite(o.inter_node_cost)) {
    return Status::Invalid(fmt::format(
        "swift: inter_node_cost must be a finite number >= 1, got {}", o.inter_node_cost));
  }
  if (o.max_changes_per_layer < -1 || o.max_changes_per_cycle < -1) {
    return Status::Invalid(fmt::format(
        "swift: change caps must be >= 0, or -1 for no cap, got {} per layer and {} per cycle",
        o.max_changes_per_layer, o.max_changes_per_cycle));
  }
  if (o.threads < 1 || o.threads > AlgorithmOptions::kMaxThreads) {
    return Status::Invalid(fmt::format("swift: threads must be in [1, {}], got {}",
                                       AlgorithmOptions::kMaxThreads, o.threads));
  }
  return Status::Ok();
}

class Swift final : public Balancer {
 public:
  explicit Swift(const AlgorithmOptions& o) : options_(o) {}
  std::string_view name() const override { return "swift"; }

  Status CheckShape(const Shape& shape) const override {
    EPLB_RETURN_IF_ERROR(shape.Validate());
    if (static_cast<int64_t>(shape.ranks) * shape.experts > kMaxRankExperts) {
      return Status::Invalid(fmt::format(
          "swift: ranks x experts = {} x {} is more than 2^27: its working state takes up to 6 "
          "bytes per rank and expert (deepseek has no such limit)",
          shape.ranks, shape.experts));
    }
    return Status::Ok();
  }

  StatusOr<BalanceResult> Balance(const BalanceInput& input) const override {
    EPLB_RETURN_IF_ERROR(ValidateBalanceInput(input));
    EPLB_RETURN_IF_ERROR(CheckShape(input.shape));
    const Shape& shape = input.shape;
    const LoadMatrix& load = *input.load;
    const int slots = shape.slots();
    const int max_steps = 8 * slots;
    BalanceResult result;
    std::vector<int> ids;

    if (input.current == nullptr) {
      ids.resize(static_cast<size_t>(shape.layers) * slots);
      struct Worker {
        PeakSearch search;
        Packer packer;
        std::vector<Key> pieces;         // Replicate's keys, which Pack sorts
        std::vector<int> home, experts;  // hierarchical: homes, and one node's experts
        std::vector<double> sub;         // ... and their loads
      };
      // Balances `w` over `ranks` ranks into out (ranks x slots per rank ids of w's experts),
      // refining until their balancedness reaches `target`.
      auto fresh = [&](Worker& wk, std::span<const double> w, int ranks, double target, int* out) {
        const std::vector<int> count = Replicate(w, ranks * shape.slots_per_rank, ranks, wk.pieces);
        auto packed = wk.packer.Pack(w, count, wk.pieces, ranks, shape.slots_per_rank);
        wk.search.Reset(w, packed, ranks, shape.slots_per_rank, /*track_changes=*/false);
        wk.search.Improve(target, kScratchMinGain, 8 * ranks * shape.slots_per_rank);
        std::copy(wk.search.slots().begin(), wk.search.slots().end(), out);
      };
      ParallelFor<Worker>(shape.layers, options_.threads, [&](int l, Worker& wk) {
        auto row = load.row(l);
        int* out = ids.data() + static_cast<size_t>(l) * slots;
        if (!Hierarchical(shape))
          return fresh(wk, row, shape.ranks, options_.skip_balancedness, out);
        // Each node balances its groups' experts over its own ranks. The layer reaches
        // skip_balancedness when every rank is at most mean / skip_balancedness, the layer's mean:
        // relative to its own mean a node's target is higher where its mean is (above 1: no
        // stop short of what its search can do).
        PackGroups(row, shape, wk.home);
        const double layer_mean = std::accumulate(row.begin(), row.end(), 0.0) / shape.ranks;
        const int rpn = shape.ranks_per_node(), node_slots = rpn * shape.slots_per_rank;
        for (int n = 0; n < shape.nodes; ++n) {
          wk.experts.clear();
          wk.sub.clear();
          for (int e = 0; e < shape.experts; ++e) {
            if (wk.home[e] != n) continue;
            wk.experts.push_back(e);
            wk.sub.push_back(row[e]);
          }
          int* node_out = out + static_cast<size_t>(n) * node_slots;
          const double node_mean = std::accumulate(wk.sub.begin(), wk.sub.end(), 0.0) / rpn;
          const double target =
              layer_mean > 0 ? options_.skip_balancedness * node_mean / layer_mean : 1.0;
          fresh(wk, wk.sub, rpn, target, node_out);
          for (int i = 0; i < node_slots; ++i) node_out[i] = wk.experts[node_out[i]];
        }
      });
    } else {
      const Placement& current = *input.current;
      ids = current.phy2log();
      // Per layer: balancedness now, and its need: the load above mean / target, in means.
      std::vector<double> before(shape.layers), need(shape.layers);
      double need_left = 0;
      for (int l = 0; l < shape.layers; ++l) {
        auto loads = RankLoads(load.row(l), current.layer(l), shape.ranks, shape.slots_per_rank,
                               shape.experts);
        const double mean = std::accumulate(loads.begin(), loads.end(), 0.0) / shape.ranks;
        const double max = *std::max_element(loads.begin(), loads.end());
        before[l] = max > 0 ? mean / max : 1.0;
        for (double v : loads) need[l] += std::max(0.0, v - mean / options_.target_balancedness);
        need[l] = mean > 0 ? need[l] / mean : 0;
        if (before[l] < options_.skip_balancedness) need_left += need[l];
      }
      // Worst layers first, so that a per-cycle budget goes where it helps most.
      std::vector<int> order(shape.layers);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int a, int b) { return before[a] < before[b]; });
      // Descending on the excess over an unreachable cap trades the peak for the rest, so a
      // layer that ends clearly short of its target is searched again from its placement with
      // lower targets; the best result is kept (ties: fewer changes). Returns the slots changed.
      // Hierarchical: every replica a step places stays on its expert's home node (of its group,
      // in the placement in use).
      struct Replan {
        ExcessSearch search;
        std::vector<int> home;
        PairReplan pairs;
        std::vector<int> paired;
      };
      // Two slots per rank without caps: the pairing re-plan (pair_replan.cc; on several nodes
      // it weighs copies between nodes as the excess search does); the excess search where it
      // finds nothing better than the placement in use.
      const bool by_pairs = shape.slots_per_rank == 2 && !Hierarchical(shape) &&
                            options_.max_changes_per_layer < 0 &&
                            options_.max_changes_per_cycle < 0;
      // Whether `layer` is more balanced than the placement in use, measured as before[] is
      // (RankLoads, mean / max), by more than rounding: the searches' own figures are kept
      // incrementally and can differ from it in the last bits, so near-ties (loads like 2^53 + k)
      // could return a layer a few ulps less balanced, or changes that gain nothing.
      auto improves = [&](int l, std::span<const int> layer) {
        const std::vector<double> loads =
            RankLoads(load.row(l), layer, shape.ranks, shape.slots_per_rank, shape.experts);
        const double max = *std::max_element(loads.begin(), loads.end());
        const double mean = std::accumulate(loads.begin(), loads.end(), 0.0) / shape.ranks;
        return max > 0 && mean / max > before[l] * (1 + kMeasurable);
      };
      auto balance_layer = [&](int l, int64_t budget, Replan& w) {
        PairReplan::Result paired;
        if (by_pairs &&
            w.pairs.Run(load.row(l), current.layer(l), shape.ranks, shape.ranks_per_node(),
                        options_.inter_node_cost, options_.target_balancedness, w.paired, paired) &&
            paired.changes > 0 && paired.balancedness > before[l] && improves(l, w.paired)) {
          std::copy(w.paired.begin(), w.paired.end(), ids.begin() + static_cast<size_t>(l) * slots);
          return paired.changes;
        }
        ExcessSearch& search = w.search;
        if (Hierarchical(shape)) HomesOf(current.layer(l), shape, w.home);
        double best = before[l];
        int best_changes = 0;
        for (double target = options_.target_balancedness;;) {
          search.Reset(load.row(l), current.layer(l), shape.ranks, shape.slots_per_rank,
                       /*track_changes=*/true, shape.ranks_per_node(), options_.inter_node_cost,
                       w.home);
          search.Improve(target, static_cast<int>(budget), options_.min_gain_per_change, max_steps);
          const double got = search.best_balancedness();
          if (search.best_changes() > 0 &&
              (got > best || (got == best && search.best_changes() < best_changes)) &&
              improves(l, search.best_slots())) {
            best = got;
            best_changes = search.best_changes();
            std::copy(search.best_slots().begin(), search.best_slots().end(),
                      ids.begin() + static_cast<size_t>(l) * slots);
          }
          target -= kRetryStep;
          if (got >= target || !(target > best)) break;
        }
        return best_changes;
      };
      std::vector<int> todo;  // worst first
      for (int l : order) {
        if (before[l] >= options_.skip_balancedness) {
          result.skipped_layers.push_back(l);
        } else {
          todo.push_back(l);
        }
      }
      const int64_t layer_cap =
          options_.max_changes_per_layer < 0 ? slots : options_.max_changes_per_layer;
      if (options_.max_changes_per_cycle < 0) {  // layers are independent
        ParallelFor<Replan>(static_cast<int>(todo.size()), options_.threads,
                            [&](int i, Replan& w) { balance_layer(todo[i], layer_cap, w); });
      } else {
        // A per-cycle budget is shared in proportion to need, and what a layer leaves unused
        // passes on to the layers after it.
        int64_t cycle_left = options_.max_changes_per_cycle;
        Replan w;
        for (int l : todo) {
          const double share = need_left > 0 ? cycle_left * (need[l] / need_left) : cycle_left;
          int64_t budget =
              std::min<int64_t>(layer_cap, static_cast<int64_t>(std::ceil(share - 1e-9)));
          budget = std::min(budget, cycle_left);
          need_left -= need[l];
          cycle_left -= balance_layer(l, budget, w);
        }
      }
      std::sort(result.skipped_layers.begin(), result.skipped_layers.end());
    }
    result.placement =
        Placement(shape.layers, shape.ranks, shape.slots_per_rank, shape.experts, std::move(ids));
    result.hierarchical = Hierarchical(shape);
    return result;
  }

 private:
  static constexpr double kScratchMinGain = 1e-4;
  static constexpr double kRetryStep = 0.015;
  // A re-planned layer is kept only when its balancedness beats the placement in use by more
  // than this (relative): far above rounding, far below any real step.
  static constexpr double kMeasurable = 1e-12;
  // LayerState keeps, per rank and expert, whether the rank holds it (1 byte), the expert's
  // holders (4) and, in a re-plan, whether the rank held it in the placement in use (1): up to
  // 6 bytes each, so 2^27 (128 Mi) of them is 768 MiB per thread.
  static constexpr int64_t kMaxRankExperts = int64_t{1} << 27;
  AlgorithmOptions options_;
};

}  // namespace

StatusOr<std::unique_ptr<Balancer>> MakeSwiftBalancer(const AlgorithmOptions& options) {
  EPLB_RETURN_IF_ERROR(ValidateOptions(options));
  return std::unique_ptr<Balancer>(std::make_unique<Swift>(options));
}

}  // namespace eplb
