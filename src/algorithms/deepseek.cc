// Placeholder until the deepseek balancer lands.
#include "algorithms/deepseek.h"

namespace eplb {
namespace {
class DeepSeek final : public Balancer {
 public:
  std::string_view name() const override { return "deepseek"; }
  StatusOr<BalanceResult> Balance(const BalanceInput&) const override {
    return Status::Internal("deepseek: not implemented yet");
  }
};
}  // namespace
std::unique_ptr<Balancer> MakeDeepSeekBalancer() { return std::make_unique<DeepSeek>(); }
}  // namespace eplb
