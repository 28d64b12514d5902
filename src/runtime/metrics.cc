// Prometheus text exposition (format 0.0.4) of RuntimeMetrics.
#include <fmt/format.h>

#include "eplb/runtime.h"

namespace eplb {

std::string PrometheusText(const RuntimeMetrics& m, int rank) {
  std::string out;
  auto header = [&](const char* name, const char* type, const char* help) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n", name, help, name, type);
  };
  auto metric = [&](const char* name, const char* type, const char* help, double value) {
    header(name, type, help);
    out += fmt::format("{}{{rank=\"{}\"}} {}\n", name, rank, value);
  };
  auto count = [&](const char* name, const char* help, int64_t value) {
    metric(name, "counter", help, static_cast<double>(value));
  };
  metric("eplb_balancedness", "gauge",
         "Mean rank load / max rank load of the last window's load on the placement in use after "
         "the last cycle, averaged over MoE layers (1 is perfect).",
         m.last_balancedness_after);
  metric("eplb_balancedness_before", "gauge",
         "The same load on the placement it was recorded under, averaged over MoE layers.",
         m.last_balancedness_before);
  header("eplb_layer_balancedness", "gauge",
         "Per MoE layer: balancedness of the last window's load on the placement in use.");
  for (size_t l = 0; l < m.last_layer_balancedness_after.size(); ++l) {
    out += fmt::format("eplb_layer_balancedness{{rank=\"{}\",layer=\"{}\"}} {}\n", rank, l,
                       m.last_layer_balancedness_after[l]);
  }
  metric("eplb_expert_load_balance_ratio", "gauge",
         "Max rank load / mean rank load of the last window's load on the placement in use, "
         "summed over MoE layers (1 is perfect).",
         m.last_max_mean_ratio);
  count("eplb_rebalance_cycles_total", "Load windows planned (and moved, in dynamic mode).",
        m.cycles);
  count("eplb_rebalance_cycles_skipped_total",
        "Cycles skipped because ranks computed different plans or planning failed.",
        m.cycles_skipped);
  count("eplb_rebalance_cycles_late_total",
        "Cycles whose plan was not ready on some rank after algorithm_execution_interval steps.",
        m.cycles_late);
  count("eplb_layers_committed_total", "Layers switched to a new placement.", m.layers_committed);
  count("eplb_layers_rolled_back_total",
        "Layers kept on the old placement because a transfer failed or timed out on some rank.",
        m.layers_rolled_back);
  count("eplb_transfers_failed_total", "Layers whose transfers failed or timed out on this rank.",
        m.transfers_failed);
  count("eplb_slots_changed_total", "Physical slots (all ranks) that received another expert.",
        m.slots_changed_total);
  count("eplb_bytes_moved_total", "Expert bytes received by this rank in committed layers.",
        m.bytes_moved_total);
  count("eplb_inter_node_bytes_total",
        "Expert bytes received by this rank in committed layers from a rank on another node.",
        m.inter_node_bytes_total);
  metric("eplb_algorithm_seconds", "gauge",
         "Time the worker spent in the algorithm and the transfer planner in the last cycle.",
         m.last_algorithm_ms / 1000);
  metric("eplb_transfer_seconds", "gauge",
         "Time from the start of the last cycle's moves to its last commit or rollback.",
         m.last_transfer_ms / 1000);
  metric("eplb_hook_seconds_total", "counter",
         "Forward-thread time spent in RecordLoad() and Step().", m.hook_seconds_total);
  metric("eplb_staging_bytes_peak", "gauge", "Most staging memory held at once.",
         static_cast<double>(m.staging_bytes_peak));
  metric("eplb_disabled", "gauge", "1 once a failed collective stopped rebalancing.",
         m.disabled ? 1.0 : 0.0);
  return out;
}

}  // namespace eplb
