// Runtime benchmarks: the forward thread's hot path when no cycle step is due, and one full
// rebalancing cycle (gather, plan, move, commit) at the DeepSeek-V3 shape with 8 in-process ranks.
#include <benchmark/benchmark.h>

#include <atomic>
#include <filesystem>
#include <thread>

#include "eplb/algorithm.h"
#include "eplb/formats.h"
#include "eplb/loads.h"
#include "eplb/runtime.h"

namespace eplb {
namespace {

constexpr int kLayers = 58;
constexpr int kExperts = 256;

// RecordLoad for every layer plus Step(), reported per layer.
void BM_HotPath(benchmark::State& state) {
  auto world = MakeInProcessWorld(8);
  RuntimeConfig c;
  c.dynamic_eplb = true;
  c.num_redundant_experts = 64;
  c.expert_heat_collection_interval = 1 << 30;  // no cycle step is ever due
  auto ctl =
      std::move(*Controller::Create(c, {.layers = kLayers, .experts = kExperts}, world[0].get()));
  const int S = ctl->slots_per_rank();
  std::vector<std::vector<std::byte>> memory(static_cast<size_t>(kLayers) * S,
                                             std::vector<std::byte>(64));
  for (int l = 0; l < kLayers; ++l)
    for (int s = 0; s < S; ++s) (void)ctl->RegisterExpert(l, s, {std::span(memory[l * S + s])});
  (void)ctl->Start();
  std::vector<int64_t> tokens(S, 17);
  for (auto _ : state) {
    for (int l = 0; l < kLayers; ++l) ctl->RecordLoad(l, tokens);
    benchmark::DoNotOptimize(ctl->Step());
  }
  // Seconds per layer (Step() once per 58 layers), shown by Google Benchmark as e.g. "14.5n".
  state.counters["per_layer"] = benchmark::Counter(
      kLayers, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_HotPath);

// One cycle after a workload shift: 8 ranks start from swift's placement for one workload and
// record another; expert weights of state.range(0) bytes. Wall time from the first step to the
// last commit of the cycle.
void BM_FullCycle(benchmark::State& state) {
  const int ranks = 8;
  const size_t expert_bytes = static_cast<size_t>(state.range(0));
  GeneratorOptions gen;
  const LoadMatrix before = GenerateLoad(gen);
  gen.shift = 1;
  const LoadMatrix after = GenerateLoad(gen);
  const Shape shape{.layers = kLayers, .experts = kExperts, .ranks = ranks, .slots_per_rank = 40};
  const Placement start = (*MakeBalancer("swift"))->Balance({&before, shape, nullptr})->placement;
  const std::string map = (std::filesystem::temp_directory_path() / "eplb_bench_map.json").string();
  (void)WriteExpertMap(map, start, MapFormat::kVllmAscend);
  RuntimeConfig c;
  c.dynamic_eplb = true;
  c.num_redundant_experts = 64;
  c.expert_heat_collection_interval = 4;
  c.algorithm_execution_interval = 1;
  c.expert_map_path = map;
  int64_t slots_changed = 0;
  for (auto _ : state) {
    state.PauseTiming();
    auto world = MakeInProcessWorld(ranks);
    std::vector<std::unique_ptr<Controller>> ctls;
    std::vector<std::vector<std::byte>> memory(static_cast<size_t>(ranks) * kLayers * 40,
                                               std::vector<std::byte>(expert_bytes));
    for (int r = 0; r < ranks; ++r) {
      ctls.push_back(std::move(
          *Controller::Create(c, {.layers = kLayers, .experts = kExperts}, world[r].get())));
      for (int l = 0; l < kLayers; ++l)
        for (int s = 0; s < 40; ++s)
          (void)ctls[r]->RegisterExpert(l, s, {std::span(memory[(r * kLayers + l) * 40 + s])});
      (void)ctls[r]->Start();
    }
    state.ResumeTiming();
    std::vector<std::thread> threads;
    for (int r = 0; r < ranks; ++r) {
      threads.emplace_back([&, r] {
        std::vector<int64_t> tokens(40);
        Controller& ctl = *ctls[r];
        for (int step = 0; ctl.Metrics().cycles == 0 && step < 1000000; ++step) {
          for (int l = 0; l < kLayers; ++l) {
            auto snap = ctl.Routing(l);
            for (int s = 0; s < 40; ++s) {
              const int e = snap->phy2log[r * 40 + s];
              tokens[s] = static_cast<int64_t>(after.at(l, e)) /
                          static_cast<int64_t>(snap->log2phy.replicas(e).size());
            }
            ctl.RecordLoad(l, tokens);
          }
          (void)ctl.Step();
        }
      });
    }
    for (auto& t : threads) t.join();
    slots_changed = ctls[0]->Metrics().last_slots_changed;
    state.PauseTiming();
    ctls.clear();
    state.ResumeTiming();
  }
  state.counters["slots_changed"] = static_cast<double>(slots_changed);
  state.counters["slots_total"] = static_cast<double>(kLayers) * ranks * 40;
  std::filesystem::remove(map);
}
BENCHMARK(BM_FullCycle)
    ->Arg(4096)
    ->Arg(1 << 20)
    ->Unit(benchmark::kMillisecond)
    ->Iterations(3)
    ->UseRealTime();

}  // namespace
}  // namespace eplb
