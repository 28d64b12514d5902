#include <fmt/format.h>

#include "algorithms/deepseek.h"
#include "algorithms/swift.h"
#include "eplb/algorithm.h"

namespace eplb {

std::vector<std::string> BalancerNames() { return {"deepseek", "swift"}; }

StatusOr<std::unique_ptr<Balancer>> MakeBalancer(std::string_view name,
                                                 const AlgorithmOptions& options) {
  if (name == "deepseek") return MakeDeepSeekBalancer();
  if (name == "swift") return MakeSwiftBalancer(options);
  return Status::NotFound(
      fmt::format("unknown algorithm '{}'; known: {}", name, fmt::join(BalancerNames(), ", ")));
}

Status ValidateBalanceInput(const BalanceInput& input) {
  EPLB_RETURN_IF_ERROR(input.shape.Validate());
  if (input.load == nullptr) return Status::Invalid("no load given");
  if (input.load->layers() != input.shape.layers || input.load->experts() != input.shape.experts) {
    return Status::Invalid(fmt::format("load is {} layers x {} experts, shape expects {} x {}",
                                       input.load->layers(), input.load->experts(),
                                       input.shape.layers, input.shape.experts));
  }
  EPLB_RETURN_IF_ERROR(ValidateLoad(*input.load));
  if (input.current != nullptr) {
    EPLB_RETURN_IF_ERROR(
        ValidatePlacement(*input.current, input.shape).WithPrefix("current placement"));
  }
  return Status::Ok();
}

}  // namespace eplb
