// swift's re-plan of one layer at two slots per rank (see pair_replan.cc).
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

namespace eplb {

// Owned by one thread and reused across layers, so a Balance() call allocates once per shape.
class PairReplan {
 public:
  // (value, expert), ordered as a pair; trivially copyable, so moving entries is a memmove.
  struct Entry {
    double value;
    int expert;
    bool operator<(const Entry& o) const {
      return value < o.value || (value == o.value && expert < o.expert);
    }
  };
  struct Result {
    double balancedness = 0;  // mean rank load / largest rank load of the new placement
    int changes = 0;          // slots whose expert the rank did not hold in the placement in use
  };
  // Re-plans a layer whose placement in use is `current` (2 x ranks expert ids, every expert held)
  // for the loads `w` towards balancedness `target`, writing the new layer to `out`. Returns false
  // when it found no placement (the caller keeps another one). Nodes are weighed when
  // ranks_per_node divides ranks into several nodes and inter_node_cost > 1: a slot whose expert
  // no rank of its node held in `current` (a copy between nodes) then weighs inter_node_cost
  // changes, which the pairing and Localize lower without raising the peak. Otherwise (0,
  // ranks_per_node == ranks, or inter_node_cost 1) nodes play no part.
  bool Run(std::span<const double> w, std::span<const int> current, int ranks, int ranks_per_node,
           double inter_node_cost, double target, std::vector<int>& out, Result& result);

 private:
  bool Attempt(double cap);  // one re-plan for the cap C on rank loads
  void Start();
  int Other(int r, int e) const { return pair_[2 * r] == e ? pair_[2 * r + 1] : pair_[2 * r]; }
  bool Over(int r) const { return piece_[pair_[2 * r]] + piece_[pair_[2 * r + 1]] > cap_; }
  const std::vector<int>& Holders(int e) const { return hold_[e]; }
  int Count(int e) const { return static_cast<int>(hold_[e].size()); }  // e's replicas
  // Whether e on rank r is new there (r did not hold it in the placement in use).
  bool Arrived(int r, int e) const { return e != current_[2 * r] && e != current_[2 * r + 1]; }
  void Move(int u, int r, int v);
  void Reorder(int e, int old_count);
  void RefreshOver(int e);
  void AddOverHolder(int e);     // e is on one more over rank
  void RemoveOverHolder(int e);  // e is on one over rank fewer
  void DropCandidate(int e);
  std::pair<int, int> BestRemoval(int v);  // (expert u, rank) or (-1, -1)
  struct Release {  // a rank's replica of u given up for one of another expert v
    int rank;
    int partner;  // the other expert of the rank
    int score;    // BestRemoval's score without v's part (1 more when v fits beside the partner)
    double partner_piece;
  };
  const std::vector<Release>& ReleasesOf(int u, double pu);
  void CountMoves();
  struct Growth {  // more replicas of an expert for the over ranks holding it (CountMoves)
    int k = 0;     // how many; 0: none helps
    int gain = 0;  // kOverWeight x ranks brought under - k
    // (ratio = gain / k, gain) as one integer that orders like the pair (GrowthKey); the lowest
    // int64_t when none helps.
    int64_t key = INT64_MIN;
  };
  const Growth& GrowthOf(int v);
  bool SettleCounts();
  bool Pool();
  bool Pair();
  // An expert rank r held in the placement in use goes back to the slot it was in (r's two
  // experts differ, so at most one order does that).
  void KeepSlots(int r) {
    if (pair_[2 * r] == current_[2 * r + 1] || pair_[2 * r + 1] == current_[2 * r]) {
      std::swap(pair_[2 * r], pair_[2 * r + 1]);
    }
  }
  template <typename Keys>
  void IndexPool(Keys keys);  // by_expert_ / offsets_ (see pair_replan.cc)
  template <bool kLocalOnly>
  bool Augment(int i);
  int TakeDonor(double need);
  // Nodes, where weighed (rpn_ > 0).
  void StartNodes();
  void Localize();
  // Whether a rank of r's node held e in the placement in use.
  bool Held(int r, int e) const { return node_has_[static_cast<size_t>(r / rpn_) * E_ + e]; }
  // What e on rank r weighs: 0 where r held it, else 1, or inter_node_cost_ where its node did not.
  double Weight(int r, int e) const {
    return !Arrived(r, e) ? 0 : Held(r, e) ? 1 : inter_node_cost_;
  }

  std::span<const double> w_;
  std::span<const int> current_;
  int R_ = 0, E_ = 0;
  double cap_ = 0;
  double last_peak_ = 0;  // the lowest sorted-pairing peak SettleCounts reached when it failed

  std::vector<int> pair_;                       // the layer being re-planned, 2 slots per rank
  std::vector<double> piece_;                   // w / count
  std::vector<std::vector<int>> hold_;          // per expert, the ranks holding it
  std::vector<uint8_t> over_;                   // per rank: load above the cap
  int over_ranks_ = 0;                          // how many ranks are over the cap
  std::vector<int> over_holders_;               // per expert, how many over ranks hold it
  std::vector<Entry> release_;                  // (w / (count - 1), e) of count >= 2, ascending
  std::vector<std::vector<Release>> releases_;  // per expert, ReleasesOf's list ...
  std::vector<int> release_top_;                // ... its highest score (kStale: out of date)
  std::vector<Growth> growth_;                  // per expert, GrowthOf's result ...
  std::vector<uint8_t> growth_valid_;           // ... and whether it is up to date
  std::vector<Entry> pieces_;                   // every replica's (piece, expert), ascending
  std::vector<Entry> experts_;                  // SettleCounts' scratch
  // CountMoves' candidates: the experts an over rank holds that it has not given up on, in no
  // particular order (its choice among them breaks ties by expert).
  std::vector<int> candidates_;
  std::vector<int> candidate_at_;  // per expert, its index in candidates_, or -1
  std::vector<uint8_t> given_up_;  // per expert: CountMoves will not try it again
  std::vector<int> needs_;
  std::vector<std::pair<int, int>> log_;
  // Pool() and Pair(): the ranks re-paired, their experts, the new pairs and their assignment.
  std::vector<int> pool_;
  std::vector<Entry> pool_pieces_;  // the pool's (piece, expert) in PoolOrder
  struct Donor {
    double lo, hi;  // its lighter and heavier piece
    int r;
  };
  // Ranks outside the pool, sorted by (lighter piece, rank) and never reordered: TakeDonor marks
  // the rank it takes in `best` instead of erasing it.
  struct Donors {
    std::vector<Donor> list;
    // A min tree over `list` by (heavier piece, rank): node leaves + i is entry i (a power of
    // two leaves, the ones past the list empty), node p < leaves covers nodes 2p and 2p + 1;
    // each holds the best entry not taken in its range, or -1.
    std::vector<int> best;
    size_t leaves = 1;
    size_t first = 0;  // the entries before it are taken
    int Better(int a, int b) const;
    void Build();
    int BestUpTo(double need) const;  // the best entry not taken with lo <= need, or -1
    int Take(int i);                  // marks entry i taken; returns its rank
  };
  std::array<Donors, 2> donors_;  // ranks outside the pool: changed, then the others
  std::vector<std::pair<int, int>> pairs_;
  std::vector<int> pair_rank_, rank_pair_, offsets_, by_expert_, fill_, seen_;
  struct Step {  // a pair on Augment's path
    int pair;
    int second;  // whether it is trying the ranks of its second expert
    int next;    // the next entry of by_expert_ to try ...
    int end;     // ... up to the end of the expert's entries
    int rank;    // the rank it tries now
  };
  std::vector<Step> path_;
  int seen_no_ = 0;
  // Nodes: ranks per node (0: nodes not weighed), what a copy between nodes weighs, and per
  // (node, expert) whether a rank of the node held the expert; per expert, those nodes
  // ascending (CSR).
  int rpn_ = 0;
  double inter_node_cost_ = 1;
  std::vector<uint8_t> node_has_;
  std::vector<int> node_offsets_, nodes_of_;
};

}  // namespace eplb
