// The placement model: shapes, load matrices, placements (phy2log), routing tables (log2phy),
// per-rank expert maps, validation and balance metrics.
//
// All types here are plain values: copyable, no hidden sharing, safe to read from many threads
// once built. Vocabulary: a logical expert is the model's expert id; a physical slot is
// (rank, local slot), numbered rank * slots_per_rank + slot; a placement maps each physical slot
// of each MoE layer to the logical expert it holds.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "eplb/status.h"

namespace eplb {

// The shape of an expert-parallel deployment of one model.
struct Shape {
  int layers = 0;          // MoE layers L
  int experts = 0;         // logical experts per layer E
  int ranks = 0;           // ranks R (devices)
  int slots_per_rank = 0;  // physical slots per rank S; R * S >= E
  int nodes = 1;           // nodes N; R divisible by N
  int groups = 1;          // expert groups G (group-limited routing); E divisible by G

  int slots() const { return ranks * slots_per_rank; }
  int ranks_per_node() const { return ranks / nodes; }
  int NodeOf(int rank) const { return rank / ranks_per_node(); }
  // Checks every constraint above; the message names the offending field.
  Status Validate() const;
  std::string ToString() const;
};

// Token load per (layer, logical expert), row-major. Values are finite and non-negative and each
// row's sum is finite (FromRows and ValidateLoad check it; at() does not).
class LoadMatrix {
 public:
  LoadMatrix() = default;
  LoadMatrix(int layers, int experts)
      : layers_(layers), experts_(experts), values_(static_cast<size_t>(layers) * experts, 0.0) {}
  // Builds from rows; fails on ragged rows, negative or non-finite values.
  static StatusOr<LoadMatrix> FromRows(const std::vector<std::vector<double>>& rows);

  int layers() const { return layers_; }
  int experts() const { return experts_; }
  std::span<const double> row(int layer) const {
    return {values_.data() + static_cast<size_t>(layer) * experts_, static_cast<size_t>(experts_)};
  }
  std::span<double> row(int layer) {
    return {values_.data() + static_cast<size_t>(layer) * experts_, static_cast<size_t>(experts_)};
  }
  double at(int layer, int expert) const {
    return values_[static_cast<size_t>(layer) * experts_ + expert];
  }
  double& at(int layer, int expert) {
    return values_[static_cast<size_t>(layer) * experts_ + expert];
  }
  const std::vector<double>& values() const { return values_; }

  // Adds `other`, which must have the same shape, element by element.
  LoadMatrix& operator+=(const LoadMatrix& other);
  // Indices of rows whose sum is zero (dense layers in SGLang's statistics).
  std::vector<int> ZeroRows() const;
  // The matrix restricted to the given rows, in that order.
  LoadMatrix SelectRows(std::span<const int> rows) const;

 private:
  int layers_ = 0;
  int experts_ = 0;
  std::vector<double> values_;
};

// phy2log for every MoE layer: layers x (ranks * slots_per_rank) logical expert ids.
class Placement {
 public:
  Placement() = default;
  // Not validated: call ValidatePlacement() on anything that came from outside.
  Placement(int layers, int ranks, int slots_per_rank, int experts, std::vector<int> phy2log);
  // Experts in id order, no replicas beyond E: slot i holds expert i % E.
  static Placement IdOrder(const Shape& shape);

  int layers() const { return layers_; }
  int ranks() const { return ranks_; }
  int slots_per_rank() const { return slots_per_rank_; }
  int slots() const { return ranks_ * slots_per_rank_; }
  int experts() const { return experts_; }

  int at(int layer, int rank, int slot) const { return phy2log_[Index(layer, rank, slot)]; }
  int& at(int layer, int rank, int slot) { return phy2log_[Index(layer, rank, slot)]; }
  // The layer's phy2log, ranks * slots_per_rank ids.
  std::span<const int> layer(int l) const {
    return {phy2log_.data() + static_cast<size_t>(l) * slots(), static_cast<size_t>(slots())};
  }
  std::span<int> layer(int l) {
    return {phy2log_.data() + static_cast<size_t>(l) * slots(), static_cast<size_t>(slots())};
  }
  const std::vector<int>& phy2log() const { return phy2log_; }

  // Replicas per logical expert in layer l.
  std::vector<int> ReplicaCounts(int l) const;

  bool operator==(const Placement&) const = default;

 private:
  size_t Index(int layer, int rank, int slot) const {
    return (static_cast<size_t>(layer) * ranks_ + rank) * slots_per_rank_ + slot;
  }
  int layers_ = 0;
  int ranks_ = 0;
  int slots_per_rank_ = 0;
  int experts_ = 0;
  std::vector<int> phy2log_;
};

// Checks ids in range, every logical expert has a replica, no expert twice on one rank.
// Messages name layer, rank, slot and expert.
Status ValidatePlacement(const Placement& p);
// ValidatePlacement plus agreement with a shape (layers, experts, ranks, slots per rank).
Status ValidatePlacement(const Placement& p, const Shape& shape);

// log2phy of one layer: for each logical expert, its physical slots in rank order (CSR layout).
struct RoutingTable {
  std::vector<int> offsets;  // experts + 1 entries
  std::vector<int> slots;    // physical slot ids

  std::span<const int> replicas(int expert) const {
    return {slots.data() + offsets[expert],
            static_cast<size_t>(offsets[expert + 1] - offsets[expert])};
  }
  static RoutingTable FromPlacement(const Placement& p, int layer);
};

// Expert map of one rank for one layer: logical expert -> local slot, or -1 when absent.
std::vector<int> ExpertMap(const Placement& p, int layer, int rank);

// Every value finite and non-negative, every row's sum finite (so rank loads and means are);
// the message names the layer (row) and the expert (column).
Status ValidateLoad(const LoadMatrix& load);

// ---- metrics ----

// Load per rank for one layer; an expert's load is split evenly over its replicas.
std::vector<double> RankLoads(std::span<const double> load, std::span<const int> phy2log, int ranks,
                              int slots_per_rank, int experts);
// mean rank load / max rank load for one layer (1.0 when the layer carries no load).
double LayerBalancedness(std::span<const double> load, const Placement& p, int layer);
// Per-layer balancedness; load has p.layers() rows.
std::vector<double> Balancedness(const LoadMatrix& load, const Placement& p);
// Mean over layers of Balancedness().
double MeanBalancedness(const LoadMatrix& load, const Placement& p);

// A lower bound on the max rank load any placement of this shape (each expert replicated at
// least once, at most one replica per rank, load split evenly over replicas) can reach.
double MaxRankLoadLowerBound(std::span<const double> load, const Shape& shape);
// mean / MaxRankLoadLowerBound per layer, averaged: no placement can score higher.
double BalancednessUpperBound(const LoadMatrix& load, const Shape& shape);

// Slots whose expert changed between two placements of the same shape. An expert that stays on
// the same rank is not a change, even if its slot index differs.
int64_t SlotsChanged(const Placement& a, const Placement& b);
int64_t SlotsChangedInLayer(const Placement& a, const Placement& b, int layer);

}  // namespace eplb
