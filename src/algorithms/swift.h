// SwiftBalancer: minimal-movement incremental rebalancing (see swift.cc).
#pragma once

#include <memory>

#include "eplb/algorithm.h"

namespace eplb {

// Errors: an option outside its documented range (the message names it and its value).
StatusOr<std::unique_ptr<Balancer>> MakeSwiftBalancer(const AlgorithmOptions& options);

}  // namespace eplb
