#include "eplb/placement.h"

#include <fmt/format.h>

#include <algorithm>

namespace eplb {

Placement::Placement(int layers, int ranks, int slots_per_rank, int experts,
                     std::vector<int> phy2log)
    : layers_(layers),
      ranks_(ranks),
      slots_per_rank_(slots_per_rank),
      experts_(experts),
      phy2log_(std::move(phy2log)) {}

Placement Placement::IdOrder(const Shape& shape) {
  std::vector<int> ids(static_cast<size_t>(shape.layers) * shape.slots());
  for (size_t i = 0; i < ids.size(); ++i)
    ids[i] = static_cast<int>(i % shape.slots()) % shape.experts;
  return Placement(shape.layers, shape.ranks, shape.slots_per_rank, shape.experts, std::move(ids));
}

std::vector<int> Placement::ReplicaCounts(int l) const {
  std::vector<int> counts(experts_, 0);
  for (int id : layer(l)) {
    if (id >= 0 && id < experts_) ++counts[id];
  }
  return counts;
}

Status ValidatePlacement(const Placement& p) {
  if (p.layers() <= 0 || p.ranks() <= 0 || p.slots_per_rank() <= 0 || p.experts() <= 0) {
    return Status::Invalid(fmt::format(
        "placement has {} layers, {} ranks, {} slots per rank, {} experts; all must be > 0",
        p.layers(), p.ranks(), p.slots_per_rank(), p.experts()));
  }
  if (p.phy2log().size() != static_cast<size_t>(p.layers()) * p.slots()) {
    return Status::Invalid(fmt::format("placement holds {} ids, expected {} layers x {} slots",
                                       p.phy2log().size(), p.layers(), p.slots()));
  }
  if (p.slots() < p.experts()) {
    return Status::Invalid(fmt::format("placement has {} slots per layer for {} logical experts",
                                       p.slots(), p.experts()));
  }
  // Stamps instead of clearing: seen[e] is the last (layer, rank) found holding e, numbered
  // l * R + r, so e is present in layer l exactly when seen[e] >= l * R; an error is searched for
  // in detail only once one is found.
  const int E = p.experts(), R = p.ranks(), S = p.slots_per_rank();
  std::vector<int64_t> seen(E, -1);
  const int* ids = p.phy2log().data();
  for (int l = 0; l < p.layers(); ++l) {
    const int64_t layer_start = int64_t{l} * R;
    int distinct = 0;
    for (int r = 0; r < R; ++r) {
      const int64_t stamp = layer_start + r;
      const int* row = ids + stamp * S;
      for (int s = 0; s < S; ++s) {
        const int e = row[s];
        // e < 0 or e >= E in one comparison: a negative id converts to a value above E.
        if (static_cast<unsigned>(e) >= static_cast<unsigned>(E)) {
          return Status::Invalid(fmt::format(
              "layer {}, rank {}, slot {}: logical expert id {} is out of range [0, {})", l, r, s,
              e, E));
        }
        if (seen[e] == stamp) {
          const int first = static_cast<int>(std::find(row, row + s, e) - row);
          return Status::Invalid(fmt::format(
              "layer {}, rank {}: logical expert {} is in both slot {} and slot {}; a rank may "
              "hold at most one replica of an expert",
              l, r, e, first, s));
        }
        distinct += seen[e] < layer_start;
        seen[e] = stamp;
      }
    }
    if (distinct < E) {
      const int e =
          static_cast<int>(std::find_if(seen.begin(), seen.end(),
                                        [layer_start](int64_t x) { return x < layer_start; }) -
                           seen.begin());
      return Status::Invalid(
          fmt::format("layer {}: logical expert {} has no replica on any rank", l, e));
    }
  }
  return Status::Ok();
}

Status ValidatePlacement(const Placement& p, const Shape& shape) {
  if (p.layers() != shape.layers || p.ranks() != shape.ranks ||
      p.slots_per_rank() != shape.slots_per_rank || p.experts() != shape.experts) {
    return Status::Invalid(fmt::format(
        "placement is {} layers x {} ranks x {} slots for {} experts, expected {} layers x {} "
        "ranks x {} slots for {} experts",
        p.layers(), p.ranks(), p.slots_per_rank(), p.experts(), shape.layers, shape.ranks,
        shape.slots_per_rank, shape.experts));
  }
  return ValidatePlacement(p);
}

RoutingTable RoutingTable::FromPlacement(const Placement& p, int layer) {
  RoutingTable t;
  t.offsets.assign(p.experts() + 1, 0);
  auto ids = p.layer(layer);
  for (int id : ids) ++t.offsets[id + 1];
  for (int e = 0; e < p.experts(); ++e) t.offsets[e + 1] += t.offsets[e];
  t.slots.resize(ids.size());
  std::vector<int> next(t.offsets.begin(), t.offsets.end() - 1);
  // Slots are numbered in rank order, so filling in slot order keeps each list in rank order.
  for (int slot = 0; slot < static_cast<int>(ids.size()); ++slot) t.slots[next[ids[slot]]++] = slot;
  return t;
}

std::vector<int> ExpertMap(const Placement& p, int layer, int rank) {
  std::vector<int> map(p.experts(), -1);
  for (int s = 0; s < p.slots_per_rank(); ++s) map[p.at(layer, rank, s)] = s;
  return map;
}

}  // namespace eplb
