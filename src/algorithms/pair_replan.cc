// swift's re-plan at two slots per rank.
//
// A rank is then a pair of replicas, and for given replica counts the pairing with the lowest
// peak puts the heaviest piece with the lightest, the second heaviest with the second lightest,
// and so on (the sorted pairing). After a workload shift the pieces the heavy ones need sit on
// other ranks, so a search that exchanges one replica at a time needs long chains of exchanges
// (the excess search spends ~12 M instructions a layer at 256 ranks); this re-plan instead works
// on the pairing as a whole. With C = mean rank load / target, a rank is over when its load
// exceeds C, and one attempt runs four phases:
//   1. Count moves. For each expert v on an over rank, and each k <= kMaxReplicas, the over ranks
//      holding v that k more replicas of v would bring under C: the (v, k) with the best
//      (kOverWeight x ranks fixed - k) / k takes its k replicas, each from the cheapest release
//      (BestRemoval: a replica of an expert u with a replica to spare, among the kCandidates with
//      the smallest piece after losing it, on the rank where the change fixes most and breaks
//      fewest ranks; ties: the smaller such piece, then the rank found first). A (v, k) whose
//      moves fix too little is undone and v is not tried again.
//   2. Settling counts: while the sorted pairing of all pieces has a pair above C, the heavier
//      expert of its worst pair takes a replica the same way; the attempt fails when that peak
//      stops falling for kStall moves (the counts cannot reach C).
//   3. Pool: the over ranks, and, while the sorted pairing of the pool's pieces has a pair above
//      C, the rank outside it that best helps its heaviest such piece h (a rank holding a piece
//      <= C - h, preferring ranks already changed, then the lightest other piece; else the rank
//      with the lightest piece).
//   4. Pairing: the pool's pieces in sorted pairing (a pair with one expert twice trades its
//      lighter piece with the nearest pair that can take it), then pairs are given to the pool's
//      ranks to keep most experts where they are: a pair that is a rank's current pair goes
//      there, the rest by maximum bipartite matching on "shares an expert" (augmenting paths),
//      the others to the ranks left. An expert a rank keeps keeps its slot.
// The stale pairing and the sorted one are both perfect matchings of the pool's pieces, so most
// pool ranks keep one of their experts: about one changed slot per pool rank.
// If the counts cannot reach C, the attempt is repeated with C just above the lowest peak
// phase 2 reached, then with caps 1%, 2.5% and 5% above the last one (or above the lowest peak
// reached, if higher); the first attempt that reaches its cap is kept.
//
// On several nodes, with copies between nodes weighed (Run's ranks_per_node, inter_node_cost >
// 1), a slot whose expert no rank of its node held weighs inter_node_cost changes. The phases
// and the pairs stay those that ignore nodes, so the rank loads and the peak do too; what nodes
// change is where the pairs go and what follows: phase 4's matching first takes only ranks whose
// node held the pair's other expert (which then arrives from inside the node) before it
// completes a maximum matching as before, so as many slots change; the pairs left over go to the
// ranks left whose node held most of their experts; then Localize exchanges experts that arrived
// from another node with slots on nodes that held them, where that lowers the weighed changes
// (above 2, trading a changed slot for a copy saved) and keeps every rank at most the peak. The
// room is small (after phase 4 most pool ranks sit within 2% of C, so which experts must arrive
// where is mostly fixed by the loads): after a shift at 256 x 2 on 32 nodes 23.8% of the slots
// are copied between nodes instead of 26.6%, at the same balancedness (0.968) and slots
// changed. Tried and left out: pairing the pool's pieces within nodes first (keeping the rest
// pairable by Hall's condition on a tree) reached 22.5% for 50% more instructions; growing the
// pool from the node of the piece that needs a partner, a pool per node first, and ties in
// BestRemoval towards ranks whose node held the expert gained nothing or changed more slots.
//
// Every loop runs in a fixed order and every tie goes to the first candidate (lower expert or
// rank), so the result is a deterministic function of its input.
#include "algorithms/pair_replan.h"

#include <algorithm>
#include <array>
#include <climits>
#include <cmath>
#include <limits>
#include <numeric>
#include <type_traits>
#include <utility>

namespace eplb {
namespace {

constexpr int kCandidates = 65;     // releases BestRemoval compares
constexpr int kMaxReplicas = 8;     // most replicas phase 1 adds to one expert at once
constexpr double kOverWeight = 2;   // an over rank fixed is worth this many slots changed
constexpr int kStall = 8;           // phase 2's moves without a lower peak before it gives up
constexpr int kLocalizePasses = 2;  // Localize's passes at most (a third found ~nothing)
// Attempts at a cap the counts cannot reach: the second just above the lowest peak they reached,
// then caps looser by these factors, each on the last (an attempt at a looser cap takes another
// greedy path, which may stop higher).
constexpr std::array<double, 3> kLooser = {1.01, 1.025, 1.05};
constexpr int kAttempts = 2 + static_cast<int>(kLooser.size());
// release_top_ of an expert whose releases are out of date (no list's top is: scores are <= 0),
// so one array tells BestRemoval both whether to list them again and how high they reach.
constexpr int kStale = INT_MAX;

// A growth's (gain / k, gain) as one integer with the same order, so CountMoves compares one
// number per expert: gain is a whole number (kOverWeight is), and k <= kMaxReplicas divides
// kRatioScale, so gain / k x kRatioScale is exact; below it, gain itself. A shape has at most
// 2^24 slots, so at two per rank |gain| <= kOverWeight x ranks < 2^25 fits in the low 26 bits
// and the ratio part (< 840 x 2^25 < 2^35) in the bits above.
constexpr int kRatioScale = 840;  // the least common multiple of 1, 2, ..., 8
static_assert(kMaxReplicas <= 8 && kOverWeight == static_cast<int>(kOverWeight));
static_assert(kOverWeight <= 2);
int64_t GrowthKey(int gain, int k) {
  return int64_t{gain} * (kRatioScale / k) * (int64_t{1} << 26) + gain;
}

// The largest sum of the i-th lightest and the i-th heaviest of `sorted` (ascending), and the
// first i where it is reached.
std::pair<double, size_t> SortedPeak(std::span<const PairReplan::Entry> sorted) {
  double peak = -std::numeric_limits<double>::infinity();
  if (sorted.empty()) return {peak, 0};
  // Two passes, cheaper than one that tracks where the peak is: the peak (a running maximum the
  // compiler keeps without branches), then the first pair that reaches it. lo and hi walk in from
  // both ends; an odd middle entry pairs with nothing.
  for (auto lo = sorted.begin(), hi = sorted.end() - 1; lo < hi; ++lo, --hi) {
    peak = std::max(peak, lo->value + hi->value);
  }
  auto lo = sorted.begin();
  for (auto hi = sorted.end() - 1; lo < hi && lo->value + hi->value != peak; ++lo, --hi) {
  }
  return {peak, static_cast<size_t>(lo - sorted.begin())};
}

// std::lower_bound of x in [first, last) (ascending Entry order), searching on the values alone
// and then stepping over the entries of equal value and lower expert (rare), which is cheaper
// than comparing both fields at every step.
std::vector<PairReplan::Entry>::iterator LowerBound(std::vector<PairReplan::Entry>::iterator first,
                                                    std::vector<PairReplan::Entry>::iterator last,
                                                    const PairReplan::Entry& x) {
  auto it = std::lower_bound(first, last, x.value,
                             [](const PairReplan::Entry& y, double v) { return y.value < v; });
  while (it != last && it->value == x.value && it->expert < x.expert) ++it;
  return it;
}

// Moves the run of `count` entries equal to `old` in `sorted` (ascending, no other entry of the
// same expert) to the place of `now`, as `count + delta` entries. The entries between the two
// places shift by the run's length and those after the new place by delta, where erasing the run
// and inserting the new one would shift everything after each place.
void MoveRun(std::vector<PairReplan::Entry>& sorted, PairReplan::Entry old, int count,
             PairReplan::Entry now, int delta) {
  const auto from = LowerBound(sorted.begin(), sorted.end(), old);
  auto to = from;   // where the new run starts
  if (old < now) {  // the entries between move down over the old run
    to = std::move(from + count, LowerBound(from + count, sorted.end(), now), from);
  } else {  // they move up over it
    to = LowerBound(sorted.begin(), from, now);
    std::move_backward(to, from, from + count);
  }
  const auto at = to - sorted.begin();
  if (delta > 0) {
    sorted.insert(to + count, delta, now);
  } else {
    sorted.erase(to + count + delta, to + count);
  }
  std::fill_n(sorted.begin() + at, count + delta, now);
}

// The order of the pool's pieces, Pair()'s: heaviest first, ties: lower expert. The pieces a
// donor rank brings are mostly light, so in this order they go in near the end and few move.
bool PoolOrder(const PairReplan::Entry& x, const PairReplan::Entry& y) {
  return x.value > y.value || (x.value == y.value && x.expert < y.expert);
}

}  // namespace

bool PairReplan::Run(std::span<const double> w, std::span<const int> current, int ranks,
                     int ranks_per_node, double inter_node_cost, double target,
                     std::vector<int>& out, Result& result) {
  w_ = w;
  current_ = current;
  R_ = ranks;
  E_ = static_cast<int>(w.size());
  const double total = std::accumulate(w.begin(), w.end(), 0.0);
  if (!(total > 0) || !(target > 0)) return false;
  const bool nodes = ranks_per_node > 0 && ranks_per_node < ranks && ranks % ranks_per_node == 0 &&
                     inter_node_cost > 1;
  rpn_ = nodes ? ranks_per_node : 0;
  inter_node_cost_ = nodes ? inter_node_cost : 1;
  if (nodes) StartNodes();
  double cap = total / R_ / target;
  last_peak_ = 0;
  for (int attempt = 1; attempt <= kAttempts; ++attempt) {
    if (Attempt(cap)) {
      double peak = 0;
      result.changes = 0;
      for (int r = 0; r < R_; ++r) {
        const int a = pair_[2 * r], b = pair_[2 * r + 1];
        if (a == b) return false;  // not reached: every phase keeps the experts of a rank distinct
        peak = std::max(peak, piece_[a] + piece_[b]);
        result.changes += Arrived(r, a) + Arrived(r, b);
      }
      result.balancedness = total / R_ / peak;
      out.assign(pair_.begin(), pair_.end());
      return true;
    }
    cap = attempt == 1 ? std::max(cap * 1.003, last_peak_ * 1.001)
                       : std::max(cap, last_peak_) * kLooser[attempt - 2];
  }
  return false;
}

bool PairReplan::Attempt(double cap) {
  cap_ = cap;
  Start();
  CountMoves();
  if (!(SettleCounts() && Pool() && Pair())) return false;
  if (rpn_ > 0) Localize();
  return true;
}

void PairReplan::Start() {
  pair_.assign(current_.begin(), current_.end());
  hold_.resize(E_);
  for (auto& h : hold_) h.clear();
  for (int i = 0; i < 2 * R_; ++i) hold_[pair_[i]].push_back(i / 2);
  piece_.resize(E_);
  release_.clear();
  for (int e = 0; e < E_; ++e) {
    piece_[e] = w_[e] / Count(e);
    if (Count(e) >= 2) release_.push_back({w_[e] / (Count(e) - 1), e});
  }
  std::sort(release_.begin(), release_.end());
  over_.assign(R_, 0);
  over_ranks_ = 0;
  over_holders_.assign(E_, 0);
  candidates_.clear();
  candidate_at_.assign(E_, -1);
  given_up_.assign(E_, 0);
  for (int r = 0; r < R_; ++r) {
    over_[r] = Over(r);
    if (!over_[r]) continue;
    ++over_ranks_;
    AddOverHolder(pair_[2 * r]);
    AddOverHolder(pair_[2 * r + 1]);
  }
  releases_.resize(E_);
  release_top_.assign(E_, kStale);
  growth_valid_.assign(E_, 0);
  growth_.resize(E_);
}

// Rank r's replica of u becomes a replica of v (r holds u, not v; u has a replica to spare).
void PairReplan::Move(int u, int r, int v) {
  pair_[pair_[2 * r] == u ? 2 * r : 2 * r + 1] = v;
  // r's over flag is still the one from before the move; RefreshOver(v) counts a change of it.
  if (over_[r]) {
    RemoveOverHolder(u);
    AddOverHolder(v);
  }
  std::vector<int>& holders = hold_[u];
  *std::find(holders.begin(), holders.end(), r) = holders.back();
  holders.pop_back();
  hold_[v].push_back(r);
  piece_[u] = w_[u] / Count(u);
  piece_[v] = w_[v] / Count(v);
  Reorder(u, Count(u) + 1);
  Reorder(v, Count(v) - 1);
  RefreshOver(u);
  RefreshOver(v);
}

// Moves e to its place in release_ after its count changed from old_count.
void PairReplan::Reorder(int e, int old_count) {
  const auto begin = release_.begin(), end = release_.end();
  const Entry now{Count(e) >= 2 ? w_[e] / (Count(e) - 1) : 0.0, e};
  if (old_count < 2) {
    release_.insert(LowerBound(begin, end, now), now);
    return;
  }
  const auto at = LowerBound(begin, end, Entry{w_[e] / (old_count - 1), e});
  if (Count(e) < 2) {
    release_.erase(at);
    return;
  }
  // The others stay sorted, so the entries between the old place and the new shift by one.
  *at = now;
  const auto to = LowerBound(begin, at, now);
  if (to != at) {
    std::rotate(to, at, at + 1);
  } else {
    std::rotate(at, at + 1, LowerBound(at + 1, end, now));
  }
}

void PairReplan::RefreshOver(int e) {
  for (int r : Holders(e)) {
    for (int x : {pair_[2 * r], pair_[2 * r + 1]}) {
      release_top_[x] = kStale;
      growth_valid_[x] = 0;
    }
    const bool over = Over(r);
    if (over == static_cast<bool>(over_[r])) continue;
    over_[r] = over;
    over_ranks_ += over ? 1 : -1;
    for (int x : {pair_[2 * r], pair_[2 * r + 1]}) {
      if (over) {
        AddOverHolder(x);
      } else {
        RemoveOverHolder(x);
      }
    }
  }
}

void PairReplan::AddOverHolder(int e) {
  if (++over_holders_[e] > 1 || given_up_[e]) return;
  candidate_at_[e] = static_cast<int>(candidates_.size());
  candidates_.push_back(e);
}

void PairReplan::RemoveOverHolder(int e) {
  if (--over_holders_[e] == 0) DropCandidate(e);
}

void PairReplan::DropCandidate(int e) {
  const int at = candidate_at_[e];
  if (at < 0) return;
  const int last = candidates_.back();
  candidates_[at] = last;
  candidate_at_[last] = at;
  candidates_.pop_back();
  candidate_at_[e] = -1;
}

std::pair<int, int> PairReplan::BestRemoval(int v) {
  const double pv = piece_[v];
  const double pv_more = w_[v] / (Count(v) + 1);
  std::pair<int, int> best{-1, -1};
  int best_score = INT_MIN;
  // The candidates: of the first kCandidates, those whose piece after losing a replica is still
  // below v's (ascending, so a prefix). v is not among them: w / (count - 1) > w / count.
  const auto first = release_.begin();
  const auto end =
      std::partition_point(first, first + std::min<size_t>(release_.size(), kCandidates),
                           [pv](const Entry& x) { return x.value < pv; });
  for (auto it = first; it != end; ++it) {
    const auto [pu, u] = *it;  // pu: u's piece with one replica fewer
    if (release_top_[u] == kStale) ReleasesOf(u, pu);
    // A release of u scores at most its list's best plus v's part (1), and only a higher score
    // than the best found replaces it.
    if (release_top_[u] + 1 <= best_score) continue;
    for (const Release& c : releases_[u]) {
      if (c.partner == v) continue;
      const int score = c.score + !(pv_more + c.partner_piece > cap_);
      if (score > best_score) {
        best_score = score;
        best = {u, c.rank};
      }
    }
  }
  return best;
}

// u's releases, one per rank holding it, scored without the receiving expert's part. The list
// depends only on u's count and on the loads and over flags of u's ranks, so it is computed again
// only after a move changed u's count or one of those ranks (Move, RefreshOver).
const std::vector<PairReplan::Release>& PairReplan::ReleasesOf(int u, double pu) {
  std::vector<Release>& list = releases_[u];
  if (release_top_[u] != kStale) return list;
  // harm: ranks holding u, not over, that u's larger piece would put over C. Every release of u
  // scores -harm, taken off once the one pass over u's ranks has counted it.
  int harm = 0;
  int top = INT_MIN;
  const std::vector<int>& holders = Holders(u);
  list.resize(holders.size());  // written in place: no capacity test per release
  for (size_t i = 0; i < holders.size(); ++i) {
    const int r = holders[i];
    const int x = Other(r, u);
    const bool broken = !over_[r] && pu + piece_[x] > cap_;
    harm += broken;
    // A rank not over that loses u was counted in harm (if u's piece broke it) and is not fixed
    // by v: it scores -1 more unless v fits; an over rank scores 1 if v fits.
    list[i] = {r, x, broken - !over_[r], piece_[x]};
    top = std::max(top, list[i].score);
  }
  for (Release& c : list) c.score -= harm;
  release_top_[u] = top - harm;
  return list;
}

void PairReplan::CountMoves() {
  for (int round = 0; round < R_; ++round) {
    // The best growth of an expert on an over rank (ties: lower expert), so the candidates'
    // order does not matter.
    int best_v = -1;
    int64_t best_key = INT64_MIN;  // best_v's growth's key; one that helps is above it
    for (int v : candidates_) {
      const int64_t key = (growth_valid_[v] ? growth_[v] : GrowthOf(v)).key;
      if (key > best_key || (key == best_key && v < best_v)) {
        best_v = v;
        best_key = key;
      }
    }
    if (best_v < 0 || !(growth_[best_v].gain > 0)) break;
    const int best_k = growth_[best_v].k;
    const int before = over_ranks_;
    log_.clear();
    for (int j = 0; j < best_k; ++j) {
      const auto [u, r] = BestRemoval(best_v);
      if (u < 0) break;
      Move(u, r, best_v);
      log_.emplace_back(u, r);
    }
    if (log_.empty() ||
        kOverWeight * (before - over_ranks_) - static_cast<double>(log_.size()) <= 0) {
      for (auto it = log_.rbegin(); it != log_.rend(); ++it) Move(best_v, it->second, it->first);
      given_up_[best_v] = 1;
      DropCandidate(best_v);
    }
  }
}

// v's best growth: per over rank holding v, how many more replicas of v bring it under C; the k
// whose (kOverWeight x ranks brought under - k) / k is largest (ties: more gained, then smaller
// k). Depends on what RefreshOver invalidates, as ReleasesOf.
const PairReplan::Growth& PairReplan::GrowthOf(int v) {
  Growth& g = growth_[v];
  if (growth_valid_[v]) return g;
  growth_valid_[v] = 1;
  g = Growth{};
  needs_.clear();
  for (int r : Holders(v)) {
    if (!over_[r]) continue;
    const double room = cap_ - piece_[Other(r, v)];
    if (!(room > 0)) continue;
    const double k = std::ceil(w_[v] / room - 1e-12) - Count(v);
    const int need = k > kMaxReplicas ? kMaxReplicas + 1 : std::max(1, static_cast<int>(k));
    needs_.push_back(need);  // kept sorted: a few entries
    for (size_t i = needs_.size() - 1; i > 0 && needs_[i - 1] > need; --i) {
      std::swap(needs_[i - 1], needs_[i]);
    }
  }
  for (size_t i = 0; i < needs_.size(); ++i) {
    const int k = needs_[i];
    if (k > kMaxReplicas || Count(v) + k > R_) break;
    if (i + 1 < needs_.size() && needs_[i + 1] == k) continue;
    const int gain = static_cast<int>(kOverWeight) * static_cast<int>(i + 1) - k;
    const int64_t key = GrowthKey(gain, k);
    if (key > g.key) g = {k, gain, key};
  }
  return g;
}

bool PairReplan::SettleCounts() {
  // Every replica's piece, ascending: the experts sorted, each repeated count times.
  experts_.clear();
  for (int e = 0; e < E_; ++e) experts_.push_back({piece_[e], e});
  std::sort(experts_.begin(), experts_.end());
  pieces_.clear();
  for (const Entry& p : experts_) pieces_.insert(pieces_.end(), Count(p.expert), p);
  double lowest = std::numeric_limits<double>::infinity();
  int stall = 0;
  for (int move = 0; move < 2 * R_; ++move) {
    const auto [peak, at] = SortedPeak(pieces_);
    if (peak <= cap_) return true;
    if (peak < lowest) {
      lowest = peak;
      stall = 0;
    } else if (++stall >= kStall) {
      break;
    }
    const int v = pieces_[pieces_.size() - 1 - at].expert;
    const auto [u, r] = BestRemoval(v);
    if (u < 0) break;
    const Entry old_u{piece_[u], u}, old_v{piece_[v], v};
    Move(u, r, v);
    MoveRun(pieces_, old_u, Count(u) + 1, {piece_[u], u}, -1);
    MoveRun(pieces_, old_v, Count(v) - 1, {piece_[v], v}, 1);
  }
  const double peak = SortedPeak(pieces_).first;
  if (peak <= cap_) return true;
  last_peak_ = std::min(lowest, peak);
  return false;
}

bool PairReplan::Pool() {
  pool_.clear();
  pool_pieces_.clear();
  // The pairs of the pool's sorted pairing before `from` are known to sum to at most C.
  size_t from = 0;
  auto add = [&](int r) {
    pool_.push_back(r);
    const int x = pair_[2 * r], y = pair_[2 * r + 1];
    const auto [hi, lo] = std::minmax({Entry{piece_[x], x}, Entry{piece_[y], y}}, PoolOrder);
    const size_t n = pool_pieces_.size();
    const auto begin = pool_pieces_.begin();
    // hi_at: the pieces above hi (entries equal to it are the same expert's, so where among them
    // a piece goes does not matter).
    const size_t hi_at = std::lower_bound(begin, begin + n, hi, PoolOrder) - begin;
    const size_t lo_at = std::lower_bound(begin + hi_at, begin + n, lo, PoolOrder) - begin;
    // The pieces above hi keep their places counted from the top, and each place counted from
    // the bottom can only get a lighter piece: a pair among those places does not grow.
    from = std::min(from, hi_at);
    // The pieces below lo move down two places, those between hi and lo one (one pass).
    pool_pieces_.resize(n + 2);
    Entry* p = pool_pieces_.data();
    std::copy_backward(p + lo_at, p + n, p + n + 2);
    std::copy_backward(p + hi_at, p + lo_at, p + lo_at + 1);
    p[hi_at] = hi;
    p[lo_at + 1] = lo;
  };
  for (Donors& d : donors_) d.list.clear();
  for (int r = 0; r < R_; ++r) {
    const int a = pair_[2 * r], b = pair_[2 * r + 1];
    if (Over(r)) {  // the over ranks' pieces are sorted once below instead of added one by one
      pool_.push_back(r);
      pool_pieces_.push_back({piece_[a], a});
      pool_pieces_.push_back({piece_[b], b});
      continue;
    }
    donors_[Arrived(r, a) || Arrived(r, b) ? 0 : 1].list.push_back(
        {std::min(piece_[a], piece_[b]), std::max(piece_[a], piece_[b]), r});
  }
  // Equal entries are the same expert's, so the order add() would give is the sorted one.
  std::sort(pool_pieces_.begin(), pool_pieces_.end(), PoolOrder);
  for (Donors& d : donors_) {
    std::sort(d.list.begin(), d.list.end(), [](const Donor& x, const Donor& y) {
      return x.lo < y.lo || (x.lo == y.lo && x.r < y.r);
    });
    d.Build();
  }
  for (;;) {
    // The heaviest piece of an over pair in the pool's sorted pairing, and the room it needs.
    const size_t n = pool_pieces_.size();
    double need = -1;
    for (size_t i = from; i < n / 2; ++i) {
      if (pool_pieces_[i].value + pool_pieces_[n - 1 - i].value > cap_) {
        need = cap_ - pool_pieces_[i].value;
        from = i;  // the pairs before it are at most C
        break;
      }
    }
    if (need < 0) return true;
    const int best = TakeDonor(need);
    if (best < 0) return false;
    add(best);
  }
}

// The entry with the lighter (heavier piece, rank) of entries a and b, where -1 is none. Ranks
// differ, so this is a total order and the tree's shape does not matter.
inline int PairReplan::Donors::Better(int a, int b) const {
  if (a < 0) return b;
  if (b < 0) return a;
  const Donor& x = list[a];
  const Donor& y = list[b];
  return y.hi < x.hi || (y.hi == x.hi && y.r < x.r) ? b : a;
}

// Takes the rank outside the pool that best helps a piece needing a partner <= need: one
// holding such a piece (a changed rank first, then the lightest other piece), else the one with
// the lightest piece (a changed rank first); ties: lower rank. Each list is sorted by (lighter
// piece, rank). Returns -1 when every rank is in the pool.
int PairReplan::TakeDonor(double need) {
  for (Donors& d : donors_) {
    const int best = d.BestUpTo(need);
    if (best >= 0) return d.Take(best);
  }
  for (Donors& d : donors_) {
    const size_t n = d.list.size();
    while (d.first < n && d.best[d.leaves + d.first] < 0) ++d.first;
    if (d.first < n) return d.Take(static_cast<int>(d.first));
  }
  return -1;
}

void PairReplan::Donors::Build() {
  const size_t n = list.size();
  for (leaves = 1; leaves < n;) leaves *= 2;
  best.assign(2 * leaves, -1);
  for (size_t i = 0; i < n; ++i) best[leaves + i] = static_cast<int>(i);
  for (size_t p = leaves; p-- > 1;) best[p] = Better(best[2 * p], best[2 * p + 1]);
  first = 0;
}

// The entries with lo <= need are a prefix of the list (sorted by lo), found on the way down
// instead of by a binary search first: each node visited starts inside the prefix, so where its
// right half does too, its whole left half is inside.
int PairReplan::Donors::BestUpTo(double need) const {
  if (list.empty() || !(list[0].lo <= need)) return -1;
  int found = -1;
  size_t p = 1, start = 0;  // node p covers the entries from `start`
  for (size_t width = leaves / 2; width > 0; width /= 2) {
    const size_t mid = start + width;
    if (mid < list.size() && list[mid].lo <= need) {
      found = Better(found, best[2 * p]);
      p = 2 * p + 1;
      start = mid;
    } else {
      p = 2 * p;
    }
  }
  return Better(found, best[p]);  // the leaf of entry `start`
}

int PairReplan::Donors::Take(int i) {
  best[leaves + i] = -1;
  // Only the nodes whose best was entry i change, and they are a path up from it.
  for (size_t p = (leaves + i) / 2; p >= 1 && best[p] == i; p /= 2) {
    best[p] = Better(best[2 * p], best[2 * p + 1]);
  }
  return list[i].r;
}

bool PairReplan::Pair() {
  // The pool's experts, heaviest piece first (ties: lower expert: Pool's order), in sorted
  // pairing.
  const size_t n = pool_pieces_.size(), k = n / 2;
  pairs_.resize(k);
  for (size_t i = 0; i < k; ++i) {
    pairs_[i] = {pool_pieces_[i].expert, pool_pieces_[n - 1 - i].expert};
  }
  for (size_t i = 0; i < k; ++i) {
    const int x = pairs_[i].first;
    if (pairs_[i].second != x) continue;
    // The nearest earlier pair holding no x, else the nearest later one, trades its lighter
    // piece for x's second copy.
    size_t j = i;
    while (j > 0 && (pairs_[j - 1].first == x || pairs_[j - 1].second == x)) --j;
    if (j > 0) {
      --j;
    } else {
      j = i + 1;
      while (j < k && (pairs_[j].first == x || pairs_[j].second == x)) ++j;
      if (j == k) return false;
    }
    std::swap(pairs_[i].second, pairs_[j].second);
  }
  // Pairs that are a pool rank's current pair go there (the last such rank in pool order). The
  // pool's ranks by the lower expert of their current pair (CSR, in pool order), so a pair looks
  // only at the few ranks sharing its lower expert.
  pair_rank_.assign(k, -1);
  rank_pair_.assign(R_, -1);
  auto lower = [&](int r) { return std::min(current_[2 * r], current_[2 * r + 1]); };
  auto upper = [&](int r) { return std::max(current_[2 * r], current_[2 * r + 1]); };
  IndexPool([&](int r, auto to) { to(lower(r)); });
  for (size_t i = 0; i < k; ++i) {
    const int a = std::min(pairs_[i].first, pairs_[i].second);
    const int b = std::max(pairs_[i].first, pairs_[i].second);
    for (int t = offsets_[a + 1]; t-- > offsets_[a];) {  // backwards: the last in pool order
      const int r = by_expert_[t];
      if (upper(r) != b || rank_pair_[r] >= 0) continue;
      rank_pair_[r] = static_cast<int>(i);
      pair_rank_[i] = r;
      break;
    }
  }
  // The others: ranks without a pair by the experts they hold now, then augmenting paths.
  IndexPool([&](int r, auto to) {
    if (rank_pair_[r] >= 0) return;
    to(current_[2 * r]);
    to(current_[2 * r + 1]);
  });
  // A pair first takes a free rank sharing an expert if there is one; augmenting paths then
  // complete a maximum matching. Every matched pair keeps exactly one expert on its rank (two
  // would make it that rank's current pair), so any maximum matching changes as few slots.
  // With nodes weighed, a first round matches only where the rank's node held the pair's other
  // expert (which then comes from the rank's own node); the second completes it to a maximum
  // matching (augmenting from any matching reaches one), its paths free to move those pairs
  // (paths that leave them in place changed more slots than they saved copies between nodes).
  auto match = [&](auto local_only) {  // std::true_type or std::false_type
    constexpr bool kLocalOnly = decltype(local_only)::value;
    for (size_t i = 0; i < k; ++i) {
      if (pair_rank_[i] >= 0) continue;
      for (const auto& [e, other] : {pairs_[i], std::pair{pairs_[i].second, pairs_[i].first}}) {
        for (int t = offsets_[e]; t < offsets_[e + 1] && pair_rank_[i] < 0; ++t) {
          const int r = by_expert_[t];
          if (rank_pair_[r] >= 0 || (kLocalOnly && !Held(r, other))) continue;
          rank_pair_[r] = static_cast<int>(i);
          pair_rank_[i] = r;
        }
      }
    }
    seen_.assign(R_, 0);
    // The marks of a search that found no path stay: the matching did not change, so no rank it
    // reached leads to a free rank in the next search either.
    seen_no_ = 1;
    for (size_t i = 0; i < k; ++i) {
      if (pair_rank_[i] < 0 && Augment<kLocalOnly>(static_cast<int>(i))) ++seen_no_;
    }
  };
  if (rpn_ > 0) match(std::true_type{});
  match(std::false_type{});
  std::vector<int>& left = fill_;  // the pool's ranks without a pair
  left.clear();
  for (int r : pool_) {
    if (rank_pair_[r] < 0) left.push_back(r);
  }
  // The others to the ranks left: the last one, or with nodes weighed the last of those whose
  // node held most of the pair's experts.
  for (size_t i = 0; i < k; ++i) {
    if (pair_rank_[i] >= 0) continue;
    size_t at = left.size() - 1;
    if (rpn_ > 0) {
      int most = -1;
      for (size_t t = left.size(); t-- > 0;) {
        const int held = Held(left[t], pairs_[i].first) + Held(left[t], pairs_[i].second);
        if (held > most) {
          most = held;
          at = t;
        }
      }
    }
    pair_rank_[i] = left[at];
    left.erase(left.begin() + at);
  }
  // Each pair onto its rank, an expert the rank keeps in its slot.
  for (size_t i = 0; i < k; ++i) {
    const int r = pair_rank_[i];
    pair_[2 * r] = pairs_[i].first;
    pair_[2 * r + 1] = pairs_[i].second;
    KeepSlots(r);
  }
  return true;
}

// by_expert_[offsets_[e] .. offsets_[e + 1]): the pool's ranks, in pool order, for which
// keys(r, to) calls to(e) (a counting sort; fill_ is its cursor per expert).
template <typename Keys>
void PairReplan::IndexPool(Keys keys) {
  offsets_.assign(E_ + 1, 0);
  for (int r : pool_) keys(r, [&](int e) { ++offsets_[e + 1]; });
  for (int e = 0; e < E_; ++e) offsets_[e + 1] += offsets_[e];
  by_expert_.resize(offsets_[E_]);
  fill_.assign(offsets_.begin(), offsets_.end() - 1);
  for (int r : pool_) keys(r, [&](int e) { by_expert_[fill_[e]++] = r; });
}

// Kuhn's augmenting path from pair `root` over the ranks sharing one of its experts, depth first
// with an explicit stack (a pool can hold every rank, too many for the call stack). kLocalOnly:
// only over ranks whose node held the pair's other expert.
template <bool kLocalOnly>
bool PairReplan::Augment(int root) {
  auto first_of = [&](int i) {  // pair i's step, at the ranks of its first expert
    const int e = pairs_[i].first;
    return Step{i, 0, offsets_[e], offsets_[e + 1], -1};
  };
  path_.clear();
  path_.push_back(first_of(root));
  while (!path_.empty()) {
    Step& f = path_.back();
    if (f.next == f.end) {
      if (!f.second) {
        const int e = pairs_[f.pair].second;
        f.second = 1;
        f.next = offsets_[e];
        f.end = offsets_[e + 1];
      } else {
        path_.pop_back();
      }
      continue;
    }
    const int r = by_expert_[f.next++];
    if (seen_[r] == seen_no_) continue;
    if (kLocalOnly && !Held(r, f.second ? pairs_[f.pair].first : pairs_[f.pair].second)) continue;
    seen_[r] = seen_no_;
    f.rank = r;
    if (rank_pair_[r] >= 0) {
      const int owner = rank_pair_[r];
      path_.push_back(first_of(owner));
      continue;
    }
    for (const Step& s : path_) {  // each pair on the path takes the rank it reached
      rank_pair_[s.rank] = s.pair;
      pair_rank_[s.pair] = s.rank;
    }
    return true;
  }
  return false;
}

// node_has_ and nodes_of_ from the placement in use (fill_ as the cursor): slots run node by node,
// so each expert's nodes come out ascending.
void PairReplan::StartNodes() {
  node_has_.assign(static_cast<size_t>(R_ / rpn_) * E_, 0);
  node_offsets_.assign(E_ + 1, 0);
  for (int i = 0; i < 2 * R_; ++i) {
    uint8_t& has = node_has_[static_cast<size_t>(i / 2 / rpn_) * E_ + current_[i]];
    if (!has) ++node_offsets_[current_[i] + 1];
    has = 1;
  }
  for (int e = 0; e < E_; ++e) node_offsets_[e + 1] += node_offsets_[e];
  nodes_of_.resize(node_offsets_[E_]);
  fill_.assign(node_offsets_.begin(), node_offsets_.end() - 1);
  for (int i = 0; i < 2 * R_; ++i) {
    const int n = i / 2 / rpn_, e = current_[i];
    if (fill_[e] == node_offsets_[e] || nodes_of_[fill_[e] - 1] != n) nodes_of_[fill_[e]++] = n;
  }
}

// Pair() keeps as many experts on their ranks as it can, and its first round of matching takes
// nodes into account, but the sorted pairing does not: most of its arrivals still come from
// other nodes. Here an expert e that arrived from another node on rank r is exchanged with the
// expert f in a slot of a rank r2 on a node that held e (only there can e weigh less), where that
// lowers the weighed changes (Weight) and keeps both ranks at most the layer's peak, so the
// balancedness stays what it was. Each exchange lowers the weighed sum, so passes would end by
// themselves; ties go to the first found (nodes, ranks and slots ascending). The holders (hold_)
// are not kept up to date: nothing after reads them.
void PairReplan::Localize() {
  double peak = 0;
  for (int r = 0; r < R_; ++r) {
    peak = std::max(peak, piece_[pair_[2 * r]] + piece_[pair_[2 * r + 1]]);
  }
  for (int pass = 0; pass < kLocalizePasses; ++pass) {
    bool exchanged = false;
    for (int i = 0; i < 2 * R_; ++i) {  // slot i of rank r holds e, beside x
      const int r = i / 2, e = pair_[i], x = pair_[i ^ 1];
      const double now = Weight(r, e);
      if (!(now > 1)) continue;
      int best = -1;
      double best_gain = 0;
      for (int t = node_offsets_[e]; t < node_offsets_[e + 1]; ++t) {
        const int first = 2 * nodes_of_[t] * rpn_;
        for (int j = first; j < first + 2 * rpn_; ++j) {  // slot j of rank r2 holds f, beside y
          const int r2 = j / 2, f = pair_[j], y = pair_[j ^ 1];
          // f == e changes nothing; f == x or y == e would put one expert twice on a rank.
          if (f == e || f == x || y == e) continue;
          if (piece_[x] + piece_[f] > peak || piece_[y] + piece_[e] > peak) continue;
          // Sums of the same few weights, so equal sums compare equal.
          const double gain = (now + Weight(r2, f)) - (Weight(r, f) + Weight(r2, e));
          if (gain > best_gain) {
            best_gain = gain;
            best = j;
          }
        }
      }
      if (best < 0) continue;
      std::swap(pair_[i], pair_[best]);
      KeepSlots(r);
      KeepSlots(best / 2);
      exchanged = true;
    }
    if (!exchanged) break;
  }
}

}  // namespace eplb
