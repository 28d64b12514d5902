// Movement report: plan for workload A, then re-plan for workload B from A's placement, over all
// ordered pairs of the 12 DeepSeek-V3 workloads at 64 ranks x 5 slots (or at the ranks and slots
// per rank given as the two arguments, e.g. `eplb_movement_report 256 2`). Prints, as a Markdown
// table, the balancedness reached on B and the share of slots changed: for the reference
// (deepseek, recomputed from scratch), for swift at several targets, and for swift with a cap on
// the slots changed per cycle (2.5%, 5%, 10%, 20%), and the wall time of each re-plan (Balance
// plus PlanTransfers, as the algorithm benchmarks time a rebalance; one run per pair, so a busy
// machine shows in the maximum). With a third argument, the number of nodes
// (e.g. `eplb_movement_report 64 5 8`), the rows are swift at target 0.97 with inter_node_cost
// 1, 1.5, 2 (the default) and 3, and a column gives the share of slots whose expert is copied
// between nodes. Loads come from EPLB_DATA_DIR (default ../shared/data/expert-load); exits 0 with
// a message when they are absent.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "data_dir.h"
#include "eplb/algorithm.h"
#include "eplb/formats.h"
#include "eplb/planner.h"

using namespace eplb;

int main(int argc, char** argv) {
  Shape shape{.layers = 58, .experts = 256, .ranks = 64, .slots_per_rank = 5};
  if (argc >= 3) {
    shape.ranks = std::atoi(argv[1]);
    shape.slots_per_rank = std::atoi(argv[2]);
  }
  if (argc == 4) shape.nodes = std::atoi(argv[3]);
  if (argc != 1 && argc != 3 && argc != 4) {
    fmt::print(stderr, "usage: {} [RANKS SLOTS_PER_RANK [NODES]]\n", argv[0]);
    return 1;
  }
  const bool nodes = shape.nodes > 1;
  if (Status s = shape.Validate(); !s.ok()) {
    fmt::print(stderr, "{}: {}\n", argv[0], s.ToString());
    return 1;
  }
  const std::string dir = eplb::bench::DeepSeekDir();
  const std::vector<std::string> names = {
      "prefill_in512",        "prefill_in1024",       "prefill_in2048",
      "prefill_in4096",       "prefill_in500out1500", "prefill_in1000out1000",
      "prefill_in1800out100", "prefill_in2000out100", "decode_in500out1500",
      "decode_in1000out1000", "decode_in1800out100",  "decode_in2000out100"};
  if (!std::filesystem::is_directory(dir)) {
    fmt::print("skipped: {} not found (set EPLB_DATA_DIR to the expert-load folder)\n", dir);
    return 0;
  }
  std::vector<LoadMatrix> loads;
  for (const auto& n : names) {
    auto f = ReadLoadFile(dir + n + ".json");
    if (!f.ok()) {
      fmt::print(stderr, "{}\n", f.status().ToString());
      return 1;
    }
    loads.push_back(f->moe);
  }
  const double total_slots = static_cast<double>(shape.layers) * shape.slots();
  auto swift = std::move(*MakeBalancer("swift"));
  std::vector<Placement> fresh;
  for (const auto& l : loads) fresh.push_back(swift->Balance({&l, shape, nullptr})->placement);

  struct Row {
    std::string label;
    std::string algorithm;
    AlgorithmOptions options;
  };
  std::vector<Row> rows;
  rows.push_back({"deepseek (recompute)", "deepseek", {}});
  if (nodes) {
    for (double cost : {1.0, 1.5, 2.0, 3.0}) {
      AlgorithmOptions o;
      o.inter_node_cost = cost;
      rows.push_back({fmt::format("swift, target 0.97, inter_node_cost {}", cost), "swift", o});
    }
  } else {
    for (double target : {0.97, 0.98, 0.99}) {
      AlgorithmOptions o;
      o.target_balancedness = target;
      rows.push_back({fmt::format("swift, target {:.2f}", target), "swift", o});
    }
    for (double cap : {0.025, 0.05, 0.10, 0.20}) {
      AlgorithmOptions o;
      o.target_balancedness = 0.99;
      o.max_changes_per_cycle = static_cast<int64_t>(cap * total_slots);
      rows.push_back(
          {fmt::format("swift, target 0.99, cap {:.1f}% of slots", 100 * cap), "swift", o});
    }
  }

  fmt::print(
      "| plan | balancedness on B (mean / min) | slots changed (mean / max) | pairs over 15% "
      "changed | max changed where stale >= 0.6 | ms per rebalance (median / max) |{}\n",
      nodes ? " copied between nodes (mean / max) |" : "");
  fmt::print("|---|---|---|---|---|---|{}\n", nodes ? "---|" : "");
  double stale_sum = 0;
  int pairs = 0, mild = 0;
  std::vector<std::vector<double>> stale(names.size(), std::vector<double>(names.size()));
  for (size_t a = 0; a < names.size(); ++a)
    for (size_t b = 0; b < names.size(); ++b)
      if (a != b) {
        stale[a][b] = MeanBalancedness(loads[b], fresh[a]);
        stale_sum += stale[a][b];
        ++pairs;
        mild += stale[a][b] >= 0.6;
      }
  fmt::print("| stale A placement on B | {:.4f} | 0% | 0 | 0% | - |{}\n", stale_sum / pairs,
             nodes ? " 0% |" : "");
  for (const Row& row : rows) {
    auto balancer = std::move(*MakeBalancer(row.algorithm, row.options));
    double sum = 0, min = 1, changed_sum = 0, changed_max = 0, mild_max = 0;
    std::vector<double> ms;  // per pair
    double between_sum = 0, between_max = 0;
    int over = 0;
    for (size_t a = 0; a < names.size(); ++a) {
      for (size_t b = 0; b < names.size(); ++b) {
        if (a == b) continue;
        const auto t0 = std::chrono::steady_clock::now();
        auto r = balancer->Balance({&loads[b], shape, &fresh[a]});
        auto plan = PlanTransfers(fresh[a], r->placement, shape, {.expert_bytes = 1});
        ms.push_back(
            std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                .count());
        const double bal = MeanBalancedness(loads[b], r->placement);
        const double changed = SlotsChanged(fresh[a], r->placement) / total_slots;
        sum += bal;
        min = std::min(min, bal);
        changed_sum += changed;
        changed_max = std::max(changed_max, changed);
        over += changed > 0.15;
        if (stale[a][b] >= 0.6) mild_max = std::max(mild_max, changed);
        if (nodes) {
          const double between = static_cast<double>(plan->inter_node_bytes) / total_slots;
          between_sum += between;
          between_max = std::max(between_max, between);
        }
      }
    }
    std::sort(ms.begin(), ms.end());
    fmt::print("| {} | {:.4f} / {:.4f} | {:.1f}% / {:.2f}% | {} | {:.2f}% | {:.1f} / {:.1f} |",
               row.label, sum / pairs, min, 100 * changed_sum / pairs, 100 * changed_max, over,
               100 * mild_max, ms[ms.size() / 2], ms.back());
    if (nodes) fmt::print(" {:.1f}% / {:.2f}% |", 100 * between_sum / pairs, 100 * between_max);
    fmt::print("\n");
  }
  fmt::print(
      "\n{} ordered pairs of DeepSeek-V3 workloads, 58 layers x 256 experts, {} ranks x {} "
      "slots{}; "
      "on {} of them the stale placement scores at least 0.6.\n",
      pairs, shape.ranks, shape.slots_per_rank,
      nodes ? fmt::format(" on {} nodes", shape.nodes) : "", mild);
  return 0;
}
