// Algorithm and planning speed at the DeepSeek-V3 shape (58 MoE layers x 256 experts), single
// thread: a full-model rebalance is Balance() plus PlanTransfers(). Loads come from the real
// statistics in EPLB_DATA_DIR (default ../shared/data/expert-load) when present; a benchmark
// without its data is skipped with a message.
#include <benchmark/benchmark.h>

#include <filesystem>
#include <string>

#include "data_dir.h"
#include "eplb/algorithm.h"
#include "eplb/formats.h"
#include "eplb/planner.h"

namespace eplb {
namespace {

std::string DataFile(const std::string& name) {
  const std::string path = bench::DeepSeekDir() + name + ".json";
  return std::filesystem::exists(path) ? path : "";
}

bool LoadOrSkip(benchmark::State& state, const std::string& name, LoadMatrix* out) {
  const std::string path = DataFile(name);
  if (path.empty()) {
    state.SkipWithError(
        ("no " + name + ".json: set EPLB_DATA_DIR to the expert-load folder").c_str());
    return false;
  }
  auto f = ReadLoadFile(path);
  if (!f.ok()) {
    state.SkipWithError(f.status().ToString().c_str());
    return false;
  }
  *out = f->moe;
  return true;
}

Shape DeepSeekShape(int ranks, int slots_per_rank, int nodes = 1) {
  return {.layers = 58,
          .experts = 256,
          .ranks = ranks,
          .slots_per_rank = slots_per_rank,
          .nodes = nodes};
}

// Fresh placement of prefill_in4096 (algorithm + plan from the id-order placement).
void BM_FromScratch(benchmark::State& state, const char* algorithm) {
  LoadMatrix load;
  if (!LoadOrSkip(state, "prefill_in4096", &load)) return;
  const Shape shape =
      DeepSeekShape(static_cast<int>(state.range(0)), static_cast<int>(state.range(1)));
  auto balancer = std::move(*MakeBalancer(algorithm));
  const Placement id_order = Placement::IdOrder(shape);
  Placement last;
  for (auto _ : state) {
    auto r = balancer->Balance({&load, shape, nullptr});
    auto plan = PlanTransfers(id_order, r->placement, shape);
    benchmark::DoNotOptimize(plan);
    last = std::move(plan->final_placement);
  }
  state.counters["balancedness"] = MeanBalancedness(load, last);
}

// Times Balance() + PlanTransfers() from swift's placement for `before` to the load `after`.
void TimeReplan(benchmark::State& state, const char* algorithm, const LoadMatrix& before,
                const LoadMatrix& after, int threads = 1, int nodes = 1) {
  const Shape shape =
      DeepSeekShape(static_cast<int>(state.range(0)), static_cast<int>(state.range(1)), nodes);
  auto swift = std::move(*MakeBalancer("swift"));
  const Placement old = swift->Balance({&before, shape, nullptr})->placement;
  AlgorithmOptions options;
  options.threads = threads;
  auto balancer = std::move(*MakeBalancer(algorithm, options));
  Placement last;
  double changed = 0, between_nodes = 0;
  for (auto _ : state) {
    auto r = balancer->Balance({&after, shape, &old});
    auto plan = PlanTransfers(old, r->placement, shape, {.expert_bytes = 1});
    benchmark::DoNotOptimize(plan);
    changed = static_cast<double>(plan->slots_changed) / (shape.layers * shape.slots());
    between_nodes = static_cast<double>(plan->inter_node_bytes) / (shape.layers * shape.slots());
    last = std::move(plan->final_placement);
  }
  state.counters["stale"] = MeanBalancedness(after, old);
  state.counters["balancedness"] = MeanBalancedness(after, last);
  state.counters["slots_changed"] = changed;
  if (nodes > 1) state.counters["between_nodes"] = between_nodes;  // share of slots
}

// Re-plan after a workload shift: prefill_in512's placement, prefill_in4096's load.
void BM_AfterShift(benchmark::State& state, const char* algorithm) {
  LoadMatrix a, b;
  if (!LoadOrSkip(state, "prefill_in512", &a) || !LoadOrSkip(state, "prefill_in4096", &b)) return;
  TimeReplan(state, algorithm, a, b);
}

// The same on state.range(2) nodes: swift weighs copies between nodes (inter_node_cost).
void BM_AfterShiftNodes(benchmark::State& state) {
  LoadMatrix a, b;
  if (!LoadOrSkip(state, "prefill_in512", &a) || !LoadOrSkip(state, "prefill_in4096", &b)) return;
  TimeReplan(state, "swift", a, b, 1, static_cast<int>(state.range(2)));
}

// The same on state.range(2) threads (AlgorithmOptions::threads; the placement is the same).
void BM_AfterShiftThreads(benchmark::State& state) {
  LoadMatrix a, b;
  if (!LoadOrSkip(state, "prefill_in512", &a) || !LoadOrSkip(state, "prefill_in4096", &b)) return;
  TimeReplan(state, "swift", a, b, static_cast<int>(state.range(2)));
}

// Steady state: the placement swift built for prefill_in4096, and its load drifted (Drifted).
void BM_Drift(benchmark::State& state, const char* algorithm) {
  LoadMatrix a;
  if (!LoadOrSkip(state, "prefill_in4096", &a)) return;
  TimeReplan(state, algorithm, a, bench::Drifted(a));
}

BENCHMARK_CAPTURE(BM_FromScratch, swift, "swift")
    ->Args({64, 5})
    ->Args({256, 2})
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_FromScratch, deepseek, "deepseek")
    ->Args({64, 5})
    ->Args({256, 2})
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_AfterShift, swift, "swift")
    ->Args({64, 5})
    ->Args({256, 2})
    ->Unit(benchmark::kMillisecond);
BENCHMARK(BM_AfterShiftNodes)->Args({64, 5, 8})->Args({256, 2, 32})->Unit(benchmark::kMillisecond);
BENCHMARK(BM_AfterShiftThreads)
    ->Args({64, 5, 2})
    ->Args({256, 2, 2})
    ->UseRealTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_AfterShift, deepseek, "deepseek")
    ->Args({64, 5})
    ->Args({256, 2})
    ->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Drift, swift, "swift")
    ->Args({64, 5})
    ->Args({256, 2})
    ->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace eplb
