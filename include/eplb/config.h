// Runtime configuration: the keys of vllm-ascend's `eplb_config`, plus SwiftBalancer's own.
//
// Parsed from a JSON object, either bare or wrapped as {"eplb_config": {...}}. Unknown keys, wrong
// types and out-of-range values are rejected with a message naming the key and what is allowed;
// nothing is silently ignored.
#pragma once

#include <string>

#include "eplb/algorithm.h"
#include "eplb/status.h"

namespace eplb {

struct RuntimeConfig {
  // vllm-ascend keys.
  bool dynamic_eplb = false;                  // rebalance while serving
  int expert_heat_collection_interval = 400;  // steps per load window (> 0)
  int algorithm_execution_interval = 30;  // steps the worker may take before its plan applies (> 0)
  int num_redundant_experts = 0;          // K >= 0; (E + K) % ranks == 0
  std::string expert_map_path;            // initial placement (static mode), "" for none
  std::string expert_map_record_path;     // where the placement in use is recorded, "" for none
  // SwiftBalancer keys.
  std::string algorithm = "swift";     // a name from BalancerNames()
  int max_layers_in_flight = 4;        // layers whose weights move at once (> 0)
  double imbalance_threshold = 0.99;   // layers at least this balanced are left alone (0, 1]
  int transfer_timeout_ms = 10000;     // a layer's transfers past this roll back (> 0)
  AlgorithmOptions algorithm_options;  // derived: skip_balancedness = imbalance_threshold
};

// Parses a JSON object (text). `origin` names the source in messages (a path or "inline").
StatusOr<RuntimeConfig> ParseRuntimeConfig(const std::string& json_text, const std::string& origin);
// A file path, or inline JSON text when the argument starts with '{'.
StatusOr<RuntimeConfig> LoadRuntimeConfig(const std::string& path_or_json);
// Checks the configuration against a model: E + K divisible by ranks, the map file (if any)
// readable and matching the shape. Returns slots per rank.
StatusOr<int> ResolveSlotsPerRank(const RuntimeConfig& config, int experts, int ranks);
// The resolved configuration as JSON (every key, defaults included).
std::string RuntimeConfigToJson(const RuntimeConfig& config);

}  // namespace eplb
