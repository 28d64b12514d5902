// Placeholder until the swift balancer lands.
#include "algorithms/swift.h"

namespace eplb {
namespace {
class Swift final : public Balancer {
 public:
  std::string_view name() const override { return "swift"; }
  StatusOr<BalanceResult> Balance(const BalanceInput&) const override {
    return Status::Internal("swift: not implemented yet");
  }
};
}  // namespace
std::unique_ptr<Balancer> MakeSwiftBalancer(const AlgorithmOptions&) { return std::make_unique<Swift>(); }
}  // namespace eplb
