// SwiftBalancer: minimal-movement incremental rebalancing (see swift.cc).
#pragma once

#include <memory>

#include "eplb/algorithm.h"

namespace eplb {

std::unique_ptr<Balancer> MakeSwiftBalancer(const AlgorithmOptions& options);

}  // namespace eplb
