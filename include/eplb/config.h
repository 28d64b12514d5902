// Runtime configuration: the keys of vllm-ascend's `eplb_config`, plus SwiftBalancer's own.
//
// Parsed from a JSON object, either bare or wrapped as {"eplb_config": {...}}. Unknown keys, wrong
// types and out-of-range values are rejected with a message naming the key and what is allowed;
// nothing is silently ignored.
#pragma once

#include <optional>
#include <string>

#include "eplb/algorithm.h"
#include "eplb/placement.h"
#include "eplb/status.h"

namespace eplb {

struct RuntimeConfig {
  static constexpr int kMaxHeatWindows = 256;
  // vllm-ascend keys.
  bool dynamic_eplb = false;                  // rebalance while serving
  int expert_heat_collection_interval = 400;  // steps per load window (> 0)
  int algorithm_execution_interval = 30;  // steps the worker may take before its plan applies (> 0)
  int num_redundant_experts = 0;          // K >= 0; (E + K) % ranks == 0
  std::string expert_map_path;            // initial placement (static mode), "" for none
  std::string expert_map_record_path;     // where the placement in use is recorded, "" for none
  // SwiftBalancer keys.
  std::string algorithm = "swift";     // a name from BalancerNames()
  std::string expert_load_path;        // start from `algorithm`'s placement for these load
                                       // statistics (instead of expert_map_path), "" for none
  int expert_heat_windows = 1;         // the balancer sees the summed load of this many latest
                                       // windows, 1 to kMaxHeatWindows (smooths noisy windows)
  int max_layers_in_flight = 4;        // layers whose weights move at once (> 0)
  double imbalance_threshold = 0.99;   // layers at least this balanced are left alone (0, 1];
                                       // a fresh placement is refined until this balanced
  int transfer_timeout_ms = 10000;     // a layer's transfers past this roll back (> 0)
  int balancer_threads = 1;            // threads the worker's balancer may use, 1 to 256
  AlgorithmOptions algorithm_options;  // derived (BalancerOptions): skip_balancedness =
                                       // imbalance_threshold, threads = balancer_threads; the keys
                                       // target_balancedness, max_changes_per_layer,
                                       // max_changes_per_cycle, inter_node_cost and
                                       // min_gain_per_change set its fields
};

// config.algorithm_options with the fields the runtime keys name taken from those keys: what the
// balancer runs with. ParseRuntimeConfig stores it; Controller::Create applies it again, so a
// config built in code needs no extra step.
AlgorithmOptions BalancerOptions(const RuntimeConfig& config);

// Parses a JSON object (text). `origin` names the source in messages (a path, or "inline
// config"). Every error is one line:
//   "<origin>: line L, column C: not valid JSON: <why>"
//   "<origin>: expected a JSON object (...), got <value>"
//   "<origin>: eplb_config: expected the only top-level key when present, got also <key>"
//   "<origin>: eplb_config.<key>: expected <type and range>, got <value>"
//   "<origin>: eplb_config.<key>: expected once, given more than once"
//   "<origin>: eplb_config.<key>: unknown key (did you mean "<known>"?); known keys: ..."
// Integers must be JSON integers (2.0 and true are not); numbers accept integers.
StatusOr<RuntimeConfig> ParseRuntimeConfig(const std::string& json_text, const std::string& origin);
// Inline JSON text when the argument starts with '{' (after whitespace; origin "inline config"),
// else a file path read with ReadFile (origin: the path).
StatusOr<RuntimeConfig> LoadRuntimeConfig(const std::string& path_or_json);
// LoadRuntimeConfig's rule: whether the argument is inline JSON (else a path).
bool IsInlineConfig(const std::string& path_or_json);
// Checks every key's range in the words ParseRuntimeConfig uses, less the origin:
// "eplb_config.<key>: expected <type and range>, got <value>" (infinities and NaN are out of every
// range). What ParseRuntimeConfig returns always passes; it is for configurations built in code,
// and ResolveStart (so Controller::Create) runs it first.
Status ValidateRuntimeConfig(const RuntimeConfig& config);
// Checks the configuration's files without a model: not both expert_map_path and
// expert_load_path (the initial placement is one or the other); each given exists and is not a
// folder; expert_map_record_path passes CheckOutputFile (a regular file, or none in a folder that
// exists; not a device or pipe, which the atomic write would replace). ResolveStart runs it, so
// a record path that cannot be written fails Controller::Create, not a later cycle.
Status CheckConfigPaths(const RuntimeConfig& config);
// Where a configuration starts on a model of `experts` experts on `ranks` ranks.
struct RuntimeStart {
  int slots_per_rank = 0;          // S = (E + K) / ranks
  std::optional<Placement> map;    // expert_map_path's placement (ranks x S), when set
  std::optional<LoadMatrix> load;  // expert_load_path's MoE rows (E per row), when set
  size_t load_zero_rows = 0;       // all-zero (dense) rows of that file, left out of `load`
};
// Checks the configuration (ValidateRuntimeConfig) against a model and reads its files once:
// experts E > 0, ranks > 0, (E + K) % ranks == 0 (else the nearest valid K are suggested), S <= E,
// the map file (if any) readable with E experts and `ranks` ranks and of S slots per rank, and
// the load file (if any; not beside a map) readable with E experts per row. Errors name the key
// and the file.
StatusOr<RuntimeStart> ResolveStart(const RuntimeConfig& config, int experts, int ranks);
// ResolveStart's slots per rank.
StatusOr<int> ResolveSlotsPerRank(const RuntimeConfig& config, int experts, int ranks);
// The resolved configuration as pretty-printed JSON, {"eplb_config": {...}} with every key
// (defaults included) in the order above; ParseRuntimeConfig reads it back to an equal config.
std::string RuntimeConfigToJson(const RuntimeConfig& config);

}  // namespace eplb
