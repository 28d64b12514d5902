#include <fmt/format.h>

#include "eplb/placement.h"

namespace eplb {

Status Shape::Validate() const {
  if (layers <= 0) return Status::Invalid(fmt::format("layers must be > 0, got {}", layers));
  if (experts <= 0) return Status::Invalid(fmt::format("experts must be > 0, got {}", experts));
  if (ranks <= 0) return Status::Invalid(fmt::format("ranks must be > 0, got {}", ranks));
  if (slots_per_rank <= 0) {
    return Status::Invalid(fmt::format("slots per rank must be > 0, got {}", slots_per_rank));
  }
  if (static_cast<int64_t>(ranks) * slots_per_rank < experts) {
    return Status::Invalid(
        fmt::format("ranks x slots per rank = {} x {} = {} is fewer than the {} logical experts",
                    ranks, slots_per_rank, static_cast<int64_t>(ranks) * slots_per_rank, experts));
  }
  if (slots_per_rank > experts) {
    return Status::Invalid(fmt::format(
        "slots per rank ({}) exceeds the {} logical experts; a rank holds at most one replica of "
        "each expert",
        slots_per_rank, experts));
  }
  if (static_cast<int64_t>(ranks) * slots_per_rank > (1 << 24)) {
    return Status::Invalid("ranks x slots per rank is larger than 16777216");
  }
  if (nodes <= 0 || ranks % nodes != 0) {
    return Status::Invalid(
        fmt::format("nodes must be > 0 and divide the {} ranks, got {}", ranks, nodes));
  }
  if (groups <= 0 || experts % groups != 0) {
    return Status::Invalid(
        fmt::format("groups must be > 0 and divide the {} experts, got {}", experts, groups));
  }
  return Status::Ok();
}

std::string Shape::ToString() const {
  return fmt::format("{} layers x {} experts on {} ranks x {} slots ({} nodes, {} groups)", layers,
                     experts, ranks, slots_per_rank, nodes, groups);
}

}  // namespace eplb
