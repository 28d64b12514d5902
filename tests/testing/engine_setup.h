// The small engine and the rebalancing configuration that the engine tests share, in-process and
// over MPI: 3 layers of 16 experts, 4 redundant slots, a cycle every 8 steps.
#pragma once

#include <string>

#include "eplb/config.h"
#include "eplb/engine.h"

namespace eplb::testing {

inline EngineOptions SmallEngineOptions(uint64_t seed, int timeout_ms) {
  EngineOptions o;
  o.layers = 3;
  o.experts = 16;
  o.top_k = 2;
  o.hidden = 32;
  o.ffn = 64;
  o.tokens = 16;
  o.seed = seed;
  o.timeout_ms = timeout_ms;
  return o;
}

inline RuntimeConfig SmallDynamicConfig(int timeout_ms, const std::string& algorithm = "swift") {
  RuntimeConfig c;
  c.algorithm = algorithm;
  c.dynamic_eplb = true;
  c.expert_heat_collection_interval = 8;
  c.algorithm_execution_interval = 2;
  c.num_redundant_experts = 4;  // 20 slots: 5 per rank at 4 ranks
  c.max_layers_in_flight = 2;
  c.transfer_timeout_ms = timeout_ms;
  c.algorithm_options.target_balancedness = 0.99;
  return c;
}

}  // namespace eplb::testing
