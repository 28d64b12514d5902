// Runtime benchmarks: the forward thread's hot path when no cycle step is due, and one full
// rebalancing cycle (gather, plan, move, commit) at the DeepSeek-V3 shape (58 MoE layers x 256
// experts, 64 redundant slots) with in-process ranks as threads.
#include <benchmark/benchmark.h>

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
constexpr int kRedundant = 64;

// RecordLoad for every layer plus Step(), as the engine calls them each forward step; reported
// per layer.
void BM_HotPath(benchmark::State& state) {
  auto world = MakeInProcessWorld(8);
  RuntimeConfig c;
  c.dynamic_eplb = true;
  c.num_redundant_experts = kRedundant;
  c.expert_heat_collection_interval = 1 << 30;  // no cycle step is ever due
  auto ctl =
      std::move(*Controller::Create(c, {.layers = kLayers, .experts = kExperts}, world[0].get()));
  const int S = ctl->slots_per_rank();
  std::vector<std::vector<std::byte>> memory(static_cast<size_t>(kLayers) * S,
                                             std::vector<std::byte>(64));
  for (int l = 0; l < kLayers; ++l) {
    for (int s = 0; s < S; ++s) (void)ctl->RegisterExpert(l, s, {std::span(memory[l * S + s])});
  }
  (void)ctl->Start();
  std::vector<int64_t> tokens(S, 17);
  for (auto _ : state) {
    for (int l = 0; l < kLayers; ++l) ctl->RecordLoad(l, tokens);
    benchmark::DoNotOptimize(ctl->Step());
  }
  // Time per layer (Step() once per 58 layers), shown by Google Benchmark as e.g. "14.5n".
  state.counters["per_layer"] = benchmark::Counter(
      kLayers, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
}
BENCHMARK(BM_HotPath);

// One cycle after a workload shift: state.range(0) ranks start from swift's placement for one
// workload and record another; experts of state.range(1) bytes (one tensor; every rank holds
// 58 x slots of them, so 64 KiB experts take 1.2 GB at 8 ranks). Wall time from the first step to
// the cycle's last commit, every rank stepping as fast as it can.
void BM_FullCycle(benchmark::State& state) {
  const int ranks = static_cast<int>(state.range(0));
  const size_t expert_bytes = static_cast<size_t>(state.range(1));
  const int S = (kExperts + kRedundant) / ranks;
  GeneratorOptions gen;
  const LoadMatrix before = GenerateLoad(gen);
  gen.shift = 1;
  const LoadMatrix after = GenerateLoad(gen);
  const Shape shape{.layers = kLayers, .experts = kExperts, .ranks = ranks, .slots_per_rank = S};
  const Placement start = (*MakeBalancer("swift"))->Balance({&before, shape, nullptr})->placement;
  const std::string map =
      (std::filesystem::temp_directory_path() / "eplb_runtime_bench_map.json").string();
  (void)WriteExpertMap(map, start, MapFormat::kVllmAscend);
  RuntimeConfig c;
  c.dynamic_eplb = true;
  c.num_redundant_experts = kRedundant;
  c.expert_heat_collection_interval = 4;
  c.algorithm_execution_interval = 1;
  c.expert_map_path = map;
  RuntimeMetrics m;
  for (auto _ : state) {
    state.PauseTiming();
    auto world = MakeInProcessWorld(ranks);
    std::vector<std::unique_ptr<Controller>> ctls;
    auto memory = std::make_unique<std::vector<std::vector<std::byte>>>(
        static_cast<size_t>(ranks) * kLayers * S, std::vector<std::byte>(expert_bytes));
    for (int r = 0; r < ranks; ++r) {
      ctls.push_back(std::move(
          *Controller::Create(c, {.layers = kLayers, .experts = kExperts}, world[r].get())));
      for (int l = 0; l < kLayers; ++l) {
        for (int s = 0; s < S; ++s) {
          (void)ctls[r]->RegisterExpert(l, s, {std::span((*memory)[(r * kLayers + l) * S + s])});
        }
      }
      (void)ctls[r]->Start();
    }
    state.ResumeTiming();
    std::vector<std::thread> threads;
    for (int r = 0; r < ranks; ++r) {
      threads.emplace_back([&, r] {
        std::vector<int64_t> tokens(S);
        Controller& ctl = *ctls[r];
        for (int step = 0; ctl.Metrics().cycles == 0 && step < 10000000; ++step) {
          for (int l = 0; l < kLayers; ++l) {
            auto snap = ctl.Routing(l);
            for (int s = 0; s < S; ++s) {
              const int e = snap->phy2log[r * S + s];
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
    state.PauseTiming();
    m = ctls[0]->Metrics();
    ctls.clear();
    memory.reset();
    world.clear();
    state.ResumeTiming();
  }
  state.counters["slots_changed"] = static_cast<double>(m.last_slots_changed);
  state.counters["slots_total"] = static_cast<double>(kLayers) * ranks * S;
  state.counters["algorithm_ms"] = m.last_algorithm_ms;
  state.counters["transfer_ms"] = m.last_transfer_ms;
  state.counters["rank0_MiB_in"] = static_cast<double>(m.last_bytes_moved) / 1048576.0;
  state.counters["balancedness_before"] = m.last_balancedness_before;
  state.counters["balancedness_after"] = m.last_balancedness_after;
  std::filesystem::remove(map);
}
BENCHMARK(BM_FullCycle)
    ->ArgNames({"ranks", "expert_bytes"})
    ->Args({8, 4096})
    ->Args({16, 4096})
    ->Args({8, 64 << 10})
    ->Unit(benchmark::kMillisecond)
    ->Iterations(3)
    ->UseRealTime();

}  // namespace
}  // namespace eplb
