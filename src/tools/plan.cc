// eplb plan: a placement for a load (from a file or the embedded generator), the transfer plan
// from the current placement to it, a human summary, and optionally the map and a JSON report.
#include <fmt/format.h>

#include <chrono>
#include <nlohmann/json.hpp>

#include "eplb/algorithm.h"
#include "eplb/formats.h"
#include "eplb/loads.h"
#include "eplb/planner.h"
#include "tools/commands.h"

namespace eplb::tools {
namespace {

// DeepSeek-V3's routed expert in FP8: gate, up and down projections of 7168 x 2048 bytes each.
constexpr int64_t kDeepSeekV3ExpertBytes = 3LL * 7168 * 2048;

struct PlanArgs {
  std::string load_path;
  bool generate = false;
  GeneratorOptions gen;
  Shape shape;
  std::string algorithm = "swift";
  AlgorithmOptions options;
  std::string current_path;
  int64_t expert_bytes = kDeepSeekV3ExpertBytes;
  std::string out_path;
  std::string format = "vllm-ascend";
  std::string report_path;
};

std::string Join(const std::vector<int>& v) {
  return v.empty() ? "none" : fmt::format("{}", fmt::join(v, ", "));
}

int RunPlan(const PlanArgs& a) {
  const std::string cmd = "plan";
  if (a.load_path.empty() == !a.generate) {
    return Fail(cmd, Status::Invalid("give exactly one of --load FILE or --generate"));
  }
  auto format = ParseMapFormat(a.format);
  if (!format.ok()) return Fail(cmd, format.status());

  // The load: MoE rows only; dense (all-zero) rows are reported and left out.
  LoadMatrix load;
  std::vector<int> dense_rows, moe_rows;
  std::string source;
  if (a.generate) {
    load = GenerateLoad(a.gen);
    for (int l = 0; l < load.layers(); ++l) moe_rows.push_back(l);
    source =
        fmt::format("generated (seed {}, skew {}, shift {})", a.gen.seed, a.gen.skew, a.gen.shift);
  } else {
    auto file = ReadLoadFile(a.load_path);
    if (!file.ok()) return Fail(cmd, file.status());
    load = file->moe;
    dense_rows = file->zero_rows;
    moe_rows = file->moe_rows;
    source = a.load_path;
  }
  Shape shape = a.shape;
  shape.layers = load.layers();
  shape.experts = load.experts();
  if (Status s = shape.Validate(); !s.ok()) return Fail(cmd, s);

  Placement before = Placement::IdOrder(shape);
  const bool has_current = !a.current_path.empty();
  if (has_current) {
    auto map = ReadExpertMap(a.current_path, shape.experts, shape.ranks);
    if (!map.ok()) return Fail(cmd, map.status());
    if (Status s = ValidatePlacement(map->placement, shape); !s.ok()) {
      return Fail(cmd, s.WithPrefix(fmt::format("{} does not fit the load {}", a.current_path,
                                                a.load_path.empty() ? "" : a.load_path)));
    }
    before = map->placement;
  }

  auto balancer = MakeBalancer(a.algorithm, a.options);
  if (!balancer.ok()) return Fail(cmd, balancer.status());
  const auto t0 = std::chrono::steady_clock::now();
  auto result = (*balancer)->Balance({&load, shape, has_current ? &before : nullptr});
  if (!result.ok()) return Fail(cmd, result.status());
  auto plan = PlanTransfers(before, result->placement, shape,
                            {.keep_slots = true, .expert_bytes = a.expert_bytes});
  const double compute_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  if (!plan.ok()) return Fail(cmd, plan.status());
  const Placement& after = plan->final_placement;

  const double b_before = MeanBalancedness(load, before);
  const double b_after = MeanBalancedness(load, after);
  const double bound = BalancednessUpperBound(load, shape);
  const int64_t slots_total = static_cast<int64_t>(shape.layers) * shape.slots();

  nlohmann::json report = {
      {"algorithm", a.algorithm},
      {"load", source},
      {"layers", shape.layers},
      {"experts", shape.experts},
      {"ranks", shape.ranks},
      {"slots_per_rank", shape.slots_per_rank},
      {"nodes", shape.nodes},
      {"groups", shape.groups},
      {"dense_rows", dense_rows},
      {"moe_rows", moe_rows},
      {"baseline", has_current ? "current" : "id-order"},
      {"balancedness_before", b_before},
      {"balancedness_after", b_after},
      {"balancedness_upper_bound", bound},
      {"per_layer_balancedness_after", Balancedness(load, after)},
      {"slots_changed", plan->slots_changed},
      {"slots_total", slots_total},
      {"copies", plan->copies.size()},
      {"local_copies", plan->local_copies},
      {"expert_bytes", a.expert_bytes},
      {"bytes_moved", plan->bytes_moved()},
      {"inter_node_bytes", plan->inter_node_bytes},
      {"max_bytes_sent_per_rank",
       *std::max_element(plan->bytes_sent.begin(), plan->bytes_sent.end())},
      {"max_bytes_received_per_rank",
       *std::max_element(plan->bytes_received.begin(), plan->bytes_received.end())},
      {"repairs", result->repairs},
      {"skipped_layers", result->skipped_layers},
      {"compute_ms", compute_ms},
  };
  // Outputs only after everything succeeded, each written atomically.
  if (!a.out_path.empty()) {
    if (Status s = WriteExpertMap(a.out_path, after, *format); !s.ok()) return Fail(cmd, s);
  }
  if (!a.report_path.empty()) {
    if (Status s = WriteFileAtomic(a.report_path, report.dump(2) + "\n"); !s.ok()) {
      return Fail(cmd, s);
    }
  }

  fmt::print("load        {}: {} MoE layers x {} experts; dense rows left out: {}\n", source,
             shape.layers, shape.experts, Join(dense_rows));
  fmt::print(
      "shape       {} ranks x {} slots ({} nodes, {} groups), {} redundant slots per layer\n",
      shape.ranks, shape.slots_per_rank, shape.nodes, shape.groups, shape.slots() - shape.experts);
  fmt::print("algorithm   {}{}\n", a.algorithm,
             result->repairs > 0
                 ? fmt::format(" ({} same-rank duplicates repaired)", result->repairs)
                 : "");
  fmt::print("balancedness {:.4f} ({}) -> {:.4f}; upper bound {:.4f}\n", b_before,
             has_current ? "current" : "id order, no replicas", b_after, bound);
  fmt::print(
      "movement    {} of {} slots changed ({:.2f}%), {} copies, {:.1f} MiB moved, {:.1f} MiB "
      "between nodes\n",
      plan->slots_changed, slots_total, 100.0 * plan->slots_changed / slots_total,
      plan->copies.size(), plan->bytes_moved() / 1048576.0, plan->inter_node_bytes / 1048576.0);
  fmt::print("compute     {:.2f} ms (algorithm + transfer plan)\n", compute_ms);
  if (!a.out_path.empty()) fmt::print("wrote       {} ({})\n", a.out_path, a.format);
  if (!a.report_path.empty()) fmt::print("wrote       {}\n", a.report_path);
  return 0;
}

}  // namespace

Action AddPlan(CLI::App& app) {
  auto a = std::make_shared<PlanArgs>();
  app.add_option("--load", a->load_path,
                 "load statistics: SGLang JSON (logical_count or counts) or CSV");
  app.add_flag("--generate", a->generate, "use the embedded workload generator instead of --load");
  app.add_option("--seed", a->gen.seed, "generator seed")->capture_default_str();
  app.add_option("--layers", a->gen.layers, "generator: MoE layers")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  app.add_option("--experts", a->gen.experts, "generator: logical experts")
      ->capture_default_str()
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--skew", a->gen.skew, "generator: log-normal sigma of expert popularity")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 4.0));
  app.add_option("--shift", a->gen.shift, "generator: workload shift (another set of hot experts)")
      ->capture_default_str();
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
                 "bytes of one expert (all its tensors), for the byte totals")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  app.add_option("--out", a->out_path, "write the new placement as an expert map");
  app.add_option("--format", a->format, "layout of --out: vllm-ascend or sglang")
      ->capture_default_str();
  app.add_option("--report", a->report_path, "write a JSON report");
  app.add_option("--target-balancedness", a->options.target_balancedness,
                 "swift: stop improving a layer at this balancedness")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--skip-balancedness", a->options.skip_balancedness,
                 "swift: leave layers at least this balanced alone")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 1.0));
  app.add_option("--max-changes-per-layer", a->options.max_changes_per_layer,
                 "swift: cap on slots changed per layer (-1: none)")
      ->capture_default_str()
      ->check(CLI::Range(-1, 1 << 30));
  app.add_option("--max-changes-per-cycle", a->options.max_changes_per_cycle,
                 "swift: cap on slots changed in all (-1: none)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{-1}, int64_t{1} << 40));
  return [a] { return RunPlan(*a); };
}

}  // namespace eplb::tools
