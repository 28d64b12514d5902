// A C++ port of DeepSeek's reference EPLB (deepseek-ai/EPLB, eplb.py) that reproduces its
// output exactly, plus the repair of same-rank duplicates. The contract, the identity argument
// and the documented deviation are described at the top of algorithms/deepseek.cc.
#include "algorithms/internal/deepseek_reference.h"

#include <algorithm>
#include <cassert>
#include <cfloat>
#include <cmath>
#include <limits>
#include <utility>

namespace eplb::internal {
namespace {

// The reference computes in float32; the port relies on IEEE binary32 arithmetic done in float32
// (no excess precision), so every sum and quotient rounds exactly as torch's does.
static_assert(std::numeric_limits<float>::is_iec559, "float must be IEEE binary32");
static_assert(FLT_EVAL_METHOD == 0, "float arithmetic must not use excess precision");

// Heap order for replication: the top is the largest load per replica, then the lowest index
// (torch's max(dim=-1).indices returns the first maximal index).
struct ReplicaBelow {
  bool operator()(const std::pair<float, int>& a, const std::pair<float, int>& b) const {
    return a.first < b.first || (a.first == b.first && a.second > b.second);
  }
};

// Heap order for packing: the top is the lightest pack, then the lowest index (Python's min()
// returns the first minimal pack).
struct PackAbove {
  bool operator()(const std::pair<float, int>& a, const std::pair<float, int>& b) const {
    return a.first > b.first || (a.first == b.first && a.second > b.second);
  }
};

// |a - b| for float32 loads, 0 when equal (so two infinite loads count as equal, not NaN).
double Distance(float a, float b) {
  return a == b ? 0.0 : std::fabs(static_cast<double>(a) - static_cast<double>(b));
}

}  // namespace

bool DeepSeekUsesHierarchicalPolicy(const Shape& shape) { return shape.groups % shape.nodes == 0; }

DeepSeekLayerSolver::DeepSeekLayerSolver(const Shape& shape)
    : experts_(shape.experts), ranks_(shape.ranks), slots_per_rank_(shape.slots_per_rank) {
  if (DeepSeekUsesHierarchicalPolicy(shape)) {
    groups_ = shape.groups;
    nodes_ = shape.nodes;
  }
  const int slots_per_node = shape.slots() / nodes_;
  const int experts_per_node = experts_ / nodes_;
  weight_.resize(experts_);
  group_weight_.resize(groups_);
  group_pack_.resize(groups_);
  group_rank_.resize(groups_);
  mlog2log_.resize(experts_);
  node_weight_.resize(experts_per_node);
  phy2mlog_.resize(slots_per_node);
  mlog_count_.resize(experts_per_node);
  phy_weight_.resize(slots_per_node);
  phy_pack_.resize(slots_per_node);
  phy_rank_.resize(slots_per_node);
  order_.resize(std::max(slots_per_node, groups_));
  pack_items_.resize(std::max(ranks_ / nodes_, nodes_));
  heap_.reserve(std::max({slots_per_node, groups_, experts_per_node}));
  seen_on_rank_.resize(experts_);
  count_.resize(experts_);
  per_replica_.resize(experts_);
}

void DeepSeekLayerSolver::BalancedPacking(std::span<const float> weights, int num_packs,
                                          std::span<int> pack, std::span<int> rank_in_pack) {
  const int items = static_cast<int>(weights.size());
  const int per_pack = items / num_packs;
  assert(items % num_packs == 0);
  if (per_pack == 1) {
    // The reference short-cuts one item per pack to the identity, which is not what the greedy
    // below would give.
    for (int i = 0; i < items; ++i) {
      pack[i] = i;
      rank_in_pack[i] = 0;
    }
    return;
  }
  // sort(descending=True): heaviest first, ties to the lower index (a stable descending sort).
  std::span<int> order(order_.data(), items);
  for (int i = 0; i < items; ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&weights](int a, int b) {
    return weights[a] > weights[b] || (weights[a] == weights[b] && a < b);
  });
  // Each item goes to the lightest pack that still has room, ties to the lowest pack. A full
  // pack leaves the heap, so the heap holds exactly the packs the reference's min() scans, keyed
  // by the same float32 sums.
  heap_.clear();
  for (int p = 0; p < num_packs; ++p) {
    heap_.emplace_back(0.0f, p);
    pack_items_[p] = 0;
  }
  for (int i = 0; i < items; ++i) {
    const int item = order[i];
    std::pop_heap(heap_.begin(), heap_.end(), PackAbove());
    auto& [pack_weight, p] = heap_.back();
    pack[item] = p;
    rank_in_pack[item] = pack_items_[p]++;
    pack_weight += weights[item];
    if (pack_items_[p] == per_pack) {
      heap_.pop_back();
    } else {
      std::push_heap(heap_.begin(), heap_.end(), PackAbove());
    }
  }
}

void DeepSeekLayerSolver::Replicate(std::span<const float> weights, std::span<int> phy2log,
                                    std::span<int> count) {
  const int logical = static_cast<int>(weights.size());
  const int physical = static_cast<int>(phy2log.size());
  heap_.clear();
  for (int e = 0; e < logical; ++e) {
    phy2log[e] = e;
    count[e] = 1;
    heap_.emplace_back(weights[e], e);
  }
  std::make_heap(heap_.begin(), heap_.end(), ReplicaBelow());
  // Each redundant slot goes to the expert with the largest float32 load / count, ties to the
  // lowest index: the reference's argmax over weight / logcnt, here one pop and push per slot.
  for (int i = logical; i < physical; ++i) {
    std::pop_heap(heap_.begin(), heap_.end(), ReplicaBelow());
    const int e = heap_.back().second;
    phy2log[i] = e;
    ++count[e];
    heap_.back().first = weights[e] / static_cast<float>(count[e]);
    std::push_heap(heap_.begin(), heap_.end(), ReplicaBelow());
  }
}

void DeepSeekLayerSolver::Reference(std::span<const double> load, std::span<int> phy2log) {
  assert(static_cast<int>(load.size()) == experts_);
  assert(static_cast<int>(phy2log.size()) == ranks_ * slots_per_rank_);
  const int group_size = experts_ / groups_;
  const int groups_per_node = groups_ / nodes_;
  const int experts_per_node = experts_ / nodes_;
  const int slots_per_node = ranks_ * slots_per_rank_ / nodes_;
  const int ranks_per_node = ranks_ / nodes_;

  // weight.float()
  for (int e = 0; e < experts_; ++e) weight_[e] = static_cast<float>(load[e]);

  // Step 1: pack groups onto nodes by their float32 token sums; mlog2log lists the logical
  // experts node by node (node-major), each group's experts contiguous and in id order.
  for (int g = 0; g < groups_; ++g) {
    float sum = 0.0f;
    for (int j = 0; j < group_size; ++j) sum += weight_[g * group_size + j];
    group_weight_[g] = sum;
  }
  BalancedPacking(group_weight_, nodes_, group_pack_, group_rank_);
  for (int g = 0; g < groups_; ++g) {
    const int base = (group_pack_[g] * groups_per_node + group_rank_[g]) * group_size;
    for (int j = 0; j < group_size; ++j) mlog2log_[base + j] = g * group_size + j;
  }

  for (int n = 0; n < nodes_; ++n) {
    const int* node_experts = mlog2log_.data() + n * experts_per_node;
    // Step 2: replicate the node's experts onto the node's physical slots.
    for (int k = 0; k < experts_per_node; ++k) node_weight_[k] = weight_[node_experts[k]];
    Replicate(node_weight_, phy2mlog_, mlog_count_);
    // Step 3: pack the node's replicas onto its ranks by float32 load per replica.
    for (int k = 0; k < slots_per_node; ++k) {
      const int m = phy2mlog_[k];
      phy_weight_[k] = node_weight_[m] / static_cast<float>(mlog_count_[m]);
    }
    BalancedPacking(phy_weight_, ranks_per_node, phy_pack_, phy_rank_);
    int* node_slots = phy2log.data() + n * slots_per_node;
    for (int k = 0; k < slots_per_node; ++k) {
      node_slots[phy_pack_[k] * slots_per_rank_ + phy_rank_[k]] = node_experts[phy2mlog_[k]];
    }
  }
}

int DeepSeekLayerSolver::Repair(std::span<const double> load, std::span<int> phy2log) {
  const int E = experts_;
  const int S = slots_per_rank_;
  // A cheap scan first: most layers hold no duplicate and need nothing more.
  std::fill(seen_on_rank_.begin(), seen_on_rank_.end(), 0);
  bool any = false;
  for (int r = 0; r < ranks_ && !any; ++r) {
    for (int s = 0; s < S; ++s) {
      const int e = phy2log[r * S + s];
      if (seen_on_rank_[e] == r + 1) any = true;
      seen_on_rank_[e] = r + 1;
    }
  }
  if (!any) return 0;

  on_rank_.assign(static_cast<size_t>(ranks_) * E, 0);
  std::fill(count_.begin(), count_.end(), 0);
  for (int x = 0; x < ranks_ * S; ++x) {
    ++on_rank_[static_cast<size_t>(x / S) * E + phy2log[x]];
    ++count_[phy2log[x]];
  }
  for (int e = 0; e < E; ++e) weight_[e] = static_cast<float>(load[e]);
  auto refresh = [&](int e) {
    per_replica_[e] = count_[e] > 0 ? weight_[e] / static_cast<float>(count_[e]) : weight_[e];
  };
  for (int e = 0; e < E; ++e) refresh(e);
  auto on = [&](int r, int e) -> int& { return on_rank_[static_cast<size_t>(r) * E + e]; };

  const int ranks_per_node = ranks_ / nodes_;
  int repairs = 0;
  for (int r = 0; r < ranks_; ++r) {
    // From the last slot down, so the lowest slot of each duplicated expert keeps it.
    for (int s = S - 1; s >= 0; --s) {
      const int x = r * S + s;
      const int e = phy2log[x];
      if (on(r, e) <= 1) continue;
      // A partner slot y on another rank r2: r2 lacks e, r lacks y's expert f. Closest load per
      // replica wins, ties to the lower rank, then the lower slot; same node first.
      int best = -1;
      double best_distance = std::numeric_limits<double>::infinity();
      auto scan = [&](int rank_begin, int rank_end) {
        for (int r2 = rank_begin; r2 < rank_end; ++r2) {
          if (r2 == r || on(r2, e) > 0) continue;
          for (int s2 = 0; s2 < S; ++s2) {
            const int y = r2 * S + s2;
            const int f = phy2log[y];
            if (on(r, f) > 0) continue;
            const double d = Distance(per_replica_[f], per_replica_[e]);
            if (d < best_distance) {
              best = y;
              best_distance = d;
            }
          }
        }
      };
      const int node_begin = r / ranks_per_node * ranks_per_node;
      const int node_end = node_begin + ranks_per_node;
      scan(node_begin, node_end);
      if (best < 0) {
        scan(0, node_begin);
        scan(node_end, ranks_);
      }
      if (best >= 0) {
        const int r2 = best / S;
        const int f = phy2log[best];
        phy2log[x] = f;
        phy2log[best] = e;
        --on(r, e);
        ++on(r, f);
        --on(r2, f);
        ++on(r2, e);
      } else {
        // No swap can fix it (typically e has more replicas than there are ranks): the slot
        // becomes a replica of the expert missing from r with the largest load per replica, ties
        // to the lowest id (the reference's own replication rule).
        int f = -1;
        for (int g = 0; g < E; ++g) {
          if (on(r, g) == 0 && (f < 0 || per_replica_[g] > per_replica_[f])) f = g;
        }
        assert(f >= 0);  // r holds at most S - 1 <= E - 1 distinct experts
        phy2log[x] = f;
        --on(r, e);
        ++on(r, f);
        --count_[e];
        ++count_[f];
        refresh(e);
        refresh(f);
      }
      ++repairs;
    }
  }
  return repairs;
}

Placement DeepSeekReferencePlacement(const LoadMatrix& load, const Shape& shape) {
  DeepSeekLayerSolver solver(shape);
  std::vector<int> ids(static_cast<size_t>(shape.layers) * shape.slots());
  for (int l = 0; l < shape.layers; ++l) {
    solver.Reference(load.row(l),
                     std::span<int>(ids.data() + static_cast<size_t>(l) * shape.slots(),
                                    static_cast<size_t>(shape.slots())));
  }
  return Placement(shape.layers, shape.ranks, shape.slots_per_rank, shape.experts, std::move(ids));
}

}  // namespace eplb::internal
