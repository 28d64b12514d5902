// eplb plan: a placement for a load (from a file or the embedded generator), the transfer plan
// from the current placement to it, a human summary, and optionally the map and a JSON report.
//
// Without --current every slot is placed fresh: no transfer plan is computed, slots_changed is
// slots_total, bytes_moved is slots_total x expert_bytes (every slot loads its expert), and --out
// writes the algorithm's placement as it is. balancedness_before is then measured on the id-order
// placement (Placement::IdOrder: slot i of a layer holds expert i mod E, so the R*S - E slots
// beyond E hold a second replica of the lowest ids). With --current, the transfers old -> new are
// planned slot-stably (an expert that stays on a rank keeps its slot) and --out writes that final
// placement.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <nlohmann/json.hpp>
#include <optional>

#include "eplb/algorithm.h"
#include "eplb/formats.h"
#include "eplb/planner.h"
#include "tools/commands.h"

namespace eplb::tools {
namespace {

// DeepSeek-V3's routed expert in FP8: gate, up and down projections of 7168 x 2048 bytes each.
constexpr int64_t kDeepSeekV3ExpertBytes = 3LL * 7168 * 2048;

struct PlanArgs {
  LoadArgs load;
  Shape shape;
  std::string algorithm = "swift";
  AlgorithmOptions options;
  std::string current_path;
  int64_t expert_bytes = kDeepSeekV3ExpertBytes;
  std::string out_path;
  std::string format = "vllm-ascend";
  std::string report_path;
  std::vector<CLI::Option*> swift_only;    // options that only the swift algorithm reads
  std::vector<CLI::Option*> replan_only;   // ... and only in a re-plan (with --current)
  CLI::Option* inter_node_cost = nullptr;  // read only with --nodes > 1
};

int RunPlan(const PlanArgs& a) {
  const std::string cmd = "plan";
  auto format = ParseMapFormat(a.format);
  if (!format.ok()) return Fail(cmd, format.status().WithPrefix("--format"));
  auto balancer = MakeBalancer(a.algorithm, a.options);
  if (!balancer.ok()) {
    // An unknown name (NotFound), or a swift option out of range (its message names the option).
    const bool unknown = balancer.status().code() == StatusCode::kNotFound;
    return Fail(cmd, unknown ? balancer.status().WithPrefix("--algorithm") : balancer.status());
  }
  if (a.algorithm != "swift") {
    for (const CLI::Option* o : a.swift_only) {
      if (o->count() > 0) {
        return Fail(cmd, Status::Invalid(fmt::format("{} applies to --algorithm swift only, not {}",
                                                     o->get_name(), a.algorithm)));
      }
    }
  }

  // The load statistics are never overwritten (a map written in place of --current is fine: the
  // usual way to move on from the placement in use). Checked before any work is done.
  std::vector<std::string> outputs_named;
  for (const std::string* path : {&a.out_path, &a.report_path}) {
    if (!path->empty()) outputs_named.push_back(*path);
  }
  if (Status s = CheckOutputsAreNotInputs(outputs_named, a.load.paths, "--load"); !s.ok()) {
    return Fail(cmd, s);
  }
  if (Status s = CheckOutputsUpFront(outputs_named); !s.ok()) return Fail(cmd, s);
  if (a.current_path.empty()) {
    for (const CLI::Option* o : a.replan_only) {
      // -1 is "no cap", which a fresh placement keeps too.
      if (o->count() > 0 && o->as<int64_t>() != -1) {
        return Fail(cmd, Status::Invalid(fmt::format(
                             "{} caps a re-plan from --current; without it every slot is placed "
                             "fresh",
                             o->get_name())));
      }
    }
  }
  if (a.inter_node_cost->count() > 0 && a.shape.nodes == 1) {
    return Fail(cmd, Status::Invalid("--inter-node-cost applies with --nodes > 1 only"));
  }
  auto input = ReadLoad(a.load);
  if (!input.ok()) return Fail(cmd, input.status());
  const LoadMatrix& load = input->moe;
  Shape shape = a.shape;
  shape.layers = load.layers();
  shape.experts = load.experts();
  if (shape.layers == 0) {
    return Fail(cmd,
                Status::Invalid(fmt::format("{}: no MoE rows (every row is zero)", input->source)));
  }
  if (Status s = shape.Validate(); !s.ok()) {
    return Fail(cmd, s.WithPrefix(fmt::format("{} on {} ranks x {} slots", input->source,
                                              shape.ranks, shape.slots_per_rank)));
  }

  // The byte totals (below and the planner's) count at most one expert per slot of every layer.
  const int64_t slots_total = static_cast<int64_t>(shape.layers) * shape.slots();
  if (a.expert_bytes > 0 && slots_total > INT64_MAX / a.expert_bytes) {
    return Fail(cmd, Status::Invalid(fmt::format(
                         "--expert-bytes {}: x {} slots ({} layers x {}) exceeds the int64 range "
                         "of the byte totals",
                         a.expert_bytes, slots_total, shape.layers, shape.slots())));
  }
  const bool has_current = !a.current_path.empty();
  Placement before = Placement::IdOrder(shape);
  if (has_current) {
    auto map = ReadExpertMap(a.current_path, shape.experts, shape.ranks);
    if (!map.ok()) return Fail(cmd, map.status());
    if (Status s = ValidatePlacement(map->placement, shape); !s.ok()) {
      return Fail(cmd, s.WithPrefix(fmt::format("{} does not fit the load {} ({} MoE rows)",
                                                a.current_path, input->source, shape.layers)));
    }
    before = std::move(map->placement);
  }

  // Timed: the algorithm and the transfer plan, nothing else.
  const auto t0 = std::chrono::steady_clock::now();
  auto result = (*balancer)->Balance({&load, shape, has_current ? &before : nullptr});
  if (!result.ok()) return Fail(cmd, result.status());
  std::optional<TransferPlan> plan;
  if (has_current) {
    auto p = PlanTransfers(before, result->placement, shape,
                           {.keep_slots = true, .expert_bytes = a.expert_bytes});
    if (!p.ok()) return Fail(cmd, p.status());
    plan = std::move(*p);
  }
  const double compute_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const Placement& after = plan ? plan->final_placement : result->placement;
  if (Status s = ValidatePlacement(after, shape); !s.ok()) {
    return Fail(cmd, s.WithPrefix("internal error: the new placement is invalid"));
  }

  const double b_before = MeanBalancedness(load, before);
  const double b_after = MeanBalancedness(load, after);
  const double bound = BalancednessUpperBound(load, shape);
  const int64_t slots_changed = plan ? plan->slots_changed : slots_total;
  const int64_t bytes_moved = plan ? plan->bytes_moved() : slots_total * a.expert_bytes;
  const int64_t max_sent =
      plan ? *std::max_element(plan->bytes_sent.begin(), plan->bytes_sent.end()) : 0;
  const int64_t max_received =
      plan ? *std::max_element(plan->bytes_received.begin(), plan->bytes_received.end())
           : static_cast<int64_t>(shape.layers) * shape.slots_per_rank * a.expert_bytes;

  // The options the algorithm ran with (swift's; deepseek has none), so a report reproduces.
  nlohmann::json options = nlohmann::json::object();
  if (a.algorithm == "swift") {
    options = {{"target_balancedness", a.options.target_balancedness},
               {"skip_balancedness", a.options.skip_balancedness},
               {"min_gain_per_change", a.options.min_gain_per_change},
               {"max_changes_per_layer", a.options.max_changes_per_layer},
               {"max_changes_per_cycle", a.options.max_changes_per_cycle},
               {"inter_node_cost", a.options.inter_node_cost},
               {"threads", a.options.threads}};
  }
  const nlohmann::json report = {
      {"algorithm", a.algorithm},
      {"policy", result->hierarchical ? "hierarchical" : "global"},
      {"options", options},
      {"load", input->source},
      {"layers", shape.layers},
      {"experts", shape.experts},
      {"ranks", shape.ranks},
      {"slots_per_rank", shape.slots_per_rank},
      {"nodes", shape.nodes},
      {"groups", shape.groups},
      {"dense_rows", input->dense_rows},
      {"moe_rows", input->moe_rows},
      {"baseline", has_current ? "current" : "id-order"},
      {"fresh", !has_current},
      {"balancedness_before", b_before},
      {"balancedness_after", b_after},
      {"balancedness_upper_bound", bound},
      {"per_layer_balancedness_after", Balancedness(load, after)},
      {"slots_changed", slots_changed},
      {"slots_total", slots_total},
      {"copies", plan ? plan->copies.size() : 0},
      {"local_copies", plan ? plan->local_copies : 0},
      {"expert_bytes", a.expert_bytes},
      {"bytes_moved", bytes_moved},
      {"inter_node_bytes", plan ? plan->inter_node_bytes : 0},
      {"max_bytes_sent_per_rank", max_sent},
      {"max_bytes_received_per_rank", max_received},
      {"repairs", result->repairs},
      {"skipped_layers", result->skipped_layers},
      {"compute_ms", compute_ms},
  };
  // Outputs only after everything succeeded; all of them or none.
  std::vector<std::pair<std::string, std::string>> outputs;
  if (!a.out_path.empty()) outputs.emplace_back(a.out_path, SerializeExpertMap(after, *format));
  if (!a.report_path.empty()) outputs.emplace_back(a.report_path, report.dump(2) + "\n");
  if (Status s = WriteOutputs(outputs); !s.ok()) return Fail(cmd, s);

  fmt::print("load         {}: {} MoE layers x {} experts; dense rows left out: {}\n",
             input->source, shape.layers, shape.experts, JoinIds(input->dense_rows));
  fmt::print(
      "shape        {} ranks x {} slots = {} slots per layer ({} redundant), {} node{}, {} "
      "expert group{}\n",
      shape.ranks, shape.slots_per_rank, shape.slots(), shape.slots() - shape.experts, shape.nodes,
      shape.nodes == 1 ? "" : "s", shape.groups, shape.groups == 1 ? "" : "s");
  std::string algorithm_note =
      result->hierarchical ? fmt::format(", hierarchical policy ({} groups packed onto {} nodes)",
                                         shape.groups, shape.nodes)
                           : ", global policy";
  if (a.algorithm == "deepseek") {
    algorithm_note += fmt::format("; {} same-rank duplicate replicas repaired", result->repairs);
  }
  if (!result->skipped_layers.empty()) {
    algorithm_note +=
        fmt::format("; {} layers already balanced, left alone", result->skipped_layers.size());
  }
  fmt::print("algorithm    {}{}\n", a.algorithm, algorithm_note);
  fmt::print("balancedness {:.4f} ({}) -> {:.4f}; upper bound {:.4f}\n", b_before,
             has_current ? "current" : "id order", b_after, bound);
  if (plan) {
    fmt::print(
        "movement     {} of {} slots changed ({:.2f}%), {} copies, {} moved, {} between nodes\n",
        slots_changed, slots_total, 100.0 * slots_changed / slots_total, plan->copies.size(),
        FormatBytes(bytes_moved), FormatBytes(plan->inter_node_bytes));
  } else {
    fmt::print(
        "movement     {} of {} slots changed (100.00%): a fresh placement (no --current), {} "
        "loaded\n",
        slots_changed, slots_total, FormatBytes(bytes_moved));
  }
  fmt::print("compute      {:.2f} ms ({})\n", compute_ms,
             plan ? "algorithm + transfer plan" : "algorithm");
  if (!a.out_path.empty()) fmt::print("wrote        {} ({})\n", a.out_path, a.format);
  if (!a.report_path.empty()) fmt::print("wrote        {}\n", a.report_path);
  return 0;
}

}  // namespace

Action AddPlan(CLI::App& app) {
  auto a = std::make_shared<PlanArgs>();
  AddLoadOptions(app, a->load);
  app.add_option("--ranks", a->shape.ranks, "ranks (devices)")
      ->required()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--slots-per-rank", a->shape.slots_per_rank, "physical expert slots per rank")
      ->required()
      ->check(CLI::Range(1, 1 << 20));
  a->shape.nodes = 1;
  a->shape.groups = 1;
  app.add_option("--nodes", a->shape.nodes, "nodes (ranks divide evenly over nodes)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--groups", a->shape.groups, "expert groups (group-limited routing)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--algorithm", a->algorithm, "swift or deepseek")->capture_default_str();
  app.add_option("--current", a->current_path,
                 "the placement in use (expert map); swift then moves few experts");
  app.add_option("--expert-bytes", a->expert_bytes,
                 "bytes of one expert (all its tensors), for the byte totals; the default is one "
                 "DeepSeek-V3 expert in FP8, 3 x 7168 x 2048")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 40));
  CLI::Option* out =
      app.add_option("--out", a->out_path, "write the new placement as an expert map");
  app.add_option("--format", a->format, "layout of --out: vllm-ascend or sglang")
      ->capture_default_str()
      ->needs(out);
  app.add_option("--report", a->report_path, "write a JSON report");
  a->inter_node_cost =
      app.add_option("--inter-node-cost", a->options.inter_node_cost,
                     "swift, with --nodes > 1: what a change that must fetch its expert from "
                     "another node weighs, in slot changes (1: ignore nodes)")
          ->capture_default_str();
  a->replan_only = {
      app.add_option("--max-changes-per-layer", a->options.max_changes_per_layer,
                     "swift, with --current: cap on slots changed per layer (-1: none)")
          ->capture_default_str()
          ->check(CLI::Range(-1, 1 << 30)),
      app.add_option("--max-changes-per-cycle", a->options.max_changes_per_cycle,
                     "swift, with --current: cap on slots changed in all layers (-1: none)")
          ->capture_default_str()
          ->check(CLI::Range(int64_t{-1}, int64_t{1} << 40)),
  };
  a->swift_only = {
      app.add_option("--target-balancedness", a->options.target_balancedness,
                     "swift: stop improving a layer at this balancedness")
          ->capture_default_str()
          ->check(CLI::Range(0.0, 1.0)),
      app.add_option("--skip-balancedness", a->options.skip_balancedness,
                     "swift: leave layers at least this balanced alone; from scratch, refine "
                     "each layer until it is this balanced")
          ->capture_default_str()
          ->check(CLI::Range(0.0, 1.0)),
      a->inter_node_cost,
      a->replan_only[0],
      a->replan_only[1],
      app.add_option("--threads", a->options.threads,
                     "swift: balance layers on this many threads (same placement)")
          ->capture_default_str()
          ->check(CLI::Range(1, AlgorithmOptions::kMaxThreads)),
  };
  return [a] { return RunPlan(*a); };
}

}  // namespace eplb::tools
