#include <fmt/format.h>

#include "eplb/runtime.h"

namespace eplb {

std::string PrometheusText(const RuntimeMetrics& m, int rank) {
  std::string out;
  auto metric = [&](const char* name, const char* type, const char* help, double value) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{}{{rank=\"{}\"}} {}\n", name, help, name, type,
                       name, rank, value);
  };
  metric("eplb_balancedness", "gauge",
         "Mean rank load / max rank load of the last observed load on the placement in use, "
         "averaged over MoE layers (1 is perfect).",
         m.last_balancedness_after);
  metric("eplb_expert_load_balance_ratio", "gauge",
         "Max / mean rank load of the worst layer before the last rebalance.",
         m.last_max_mean_ratio);
  metric("eplb_rebalance_cycles_total", "counter", "Rebalancing cycles applied.",
         static_cast<double>(m.cycles));
  metric("eplb_rebalance_cycles_skipped_total", "counter",
         "Cycles skipped because ranks computed different plans.",
         static_cast<double>(m.cycles_skipped));
  metric("eplb_layers_committed_total", "counter", "Layers switched to a new placement.",
         static_cast<double>(m.layers_committed));
  metric("eplb_layers_rolled_back_total", "counter",
         "Layers kept on the old placement because a transfer failed or timed out.",
         static_cast<double>(m.layers_rolled_back));
  metric("eplb_slots_changed_total", "counter", "Physical slots that received another expert.",
         static_cast<double>(m.slots_changed_total));
  metric("eplb_bytes_moved_total", "counter", "Expert bytes received by this rank.",
         static_cast<double>(m.bytes_moved_total));
  metric("eplb_algorithm_seconds", "counter",
         "Time the worker spent in the algorithm and the transfer planner.",
         m.algorithm_seconds_total);
  metric("eplb_transfer_seconds", "counter",
         "Time from the start of a cycle's moves to its last commit.", m.transfer_seconds_total);
  metric("eplb_hook_seconds", "counter", "Forward-thread time spent in Step().",
         m.hook_seconds_total);
  return out;
}

}  // namespace eplb
