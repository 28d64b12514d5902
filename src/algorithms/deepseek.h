// DeepSeek's reference EPLB (deepseek-ai/EPLB eplb.py), output-identical, with one documented
// deviation: same-rank duplicate replicas are repaired (see deepseek.cc).
#pragma once

#include <memory>

#include "eplb/algorithm.h"

namespace eplb {

std::unique_ptr<Balancer> MakeDeepSeekBalancer();

}  // namespace eplb
