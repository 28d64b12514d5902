// eplb demo: a real expert-parallel MoE model on CPU (src/engine), balanced while it runs.
//
// Ranks are threads (--comm inproc, the default) or MPI processes (--comm mpi, under mpirun).
// Modes: off (no balancing), sync (stop-the-world: once a cycle starts, the forward loop stops
// until every layer has moved, as today's systems do), async (SwiftBalancer: the forward loop never
// waits). Every step, each rank's outputs are compared with the dense single-process reference.
//
// Wall time on a 2-core machine cannot show balance (all ranks share the cores); the critical path
// can: the sum over layers of the slowest rank's expert compute time (thread CPU clock), the step
// time the model would have if every rank had its own device.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <mutex>
#include <nlohmann/json.hpp>
#include <numeric>
#include <thread>

#include "eplb/config.h"
#include "eplb/engine.h"
#include "eplb/formats.h"
#include "eplb/runtime.h"
#include "tools/commands.h"

namespace eplb::tools {
namespace {

struct DemoArgs {
  EngineOptions engine;
  int ranks = 4;
  int nodes = 1;  // the ranks are spread evenly over this many nodes (for swift and the metrics)
  int steps = 160;
  int shift_at = 80;
  std::string mode = "async";
  std::string config;  // --eplb-config: JSON text or file
  std::string comm = "inproc";
  std::string report_path;
  std::string csv_path;
  bool verify = true;
};

// What rank 0 records per step.
struct StepRow {
  int64_t step = 0;
  uint64_t epoch = 0;         // sum over layers of the routing epoch used
  double balancedness = 1.0;  // of the tokens this step, mean over layers
  double step_ms = 0;         // wall time of the step on rank 0, stalls included
  double critical_path_ms = 0;
  bool cycle_in_progress = false;
};

struct RankOutcome {
  std::string error;
  // Failures the controller's Step() returned (a layer rolled back, a plan failed): the engine
  // keeps running on the placement in use, so the demo does too, and counts them.
  int64_t balancer_errors = 0;
  std::string first_balancer_error;
  double max_rel_diff = 0;
  double checksum = 0;  // sum of every output of this rank, all steps
  RuntimeMetrics metrics;
};

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = static_cast<size_t>(std::ceil(p * static_cast<double>(v.size()))) - 1;
  return v[std::min(i, v.size() - 1)];
}

double MeanOf(const std::vector<StepRow>& rows, size_t from, size_t to, double StepRow::*field) {
  to = std::min(to, rows.size());
  if (from >= to) return 0;
  double s = 0;
  for (size_t i = from; i < to; ++i) s += rows[i].*field;
  return s / static_cast<double>(to - from);
}

// One rank's whole run. `stats` is a third communicator used only to gather per-step statistics.
RankOutcome RunRank(const DemoArgs& a, const RuntimeConfig& cfg, Communicator* engine_comm,
                    Communicator* control_comm, Communicator* stats,
                    const DenseReference* reference, std::vector<StepRow>* rows) {
  RankOutcome out;
  const int rank = engine_comm->rank();
  StatusOr<std::unique_ptr<MoeEngine>> engine = Status::Internal("not created");
  if (a.mode == "off") {
    engine = MoeEngine::Create(
        a.engine, engine_comm,
        Placement::IdOrder(
            Shape{.layers = a.engine.layers,
                  .experts = a.engine.experts,
                  .ranks = a.ranks,
                  .slots_per_rank = (a.engine.experts + cfg.num_redundant_experts) / a.ranks}));
  } else {
    auto ctl = Controller::Create(
        cfg, {.layers = a.engine.layers, .experts = a.engine.experts, .nodes = a.nodes},
        control_comm);
    if (!ctl.ok()) {
      out.error = ctl.status().message();
      return out;
    }
    engine = MoeEngine::Create(a.engine, engine_comm, std::move(*ctl));
  }
  if (!engine.ok()) {
    out.error = engine.status().message();
    return out;
  }
  MoeEngine& e = **engine;
  Controller* ctl = e.controller();
  const int L = a.engine.layers;
  std::vector<int64_t> rank_tokens(L), all_tokens(static_cast<size_t>(a.ranks) * L);
  for (int64_t step = 0; step < a.steps; ++step) {
    const int shift = step >= a.shift_at ? 1 : 0;
    bool in_cycle = ctl != nullptr && ctl->CycleInProgress();
    const auto t0 = std::chrono::steady_clock::now();
    auto r = e.Forward(step, shift);
    if (!r.ok()) {
      out.error = fmt::format("step {}: {}", step, r.status().message());
      return out;
    }
    auto balancer_error = [&](const Status& s) {
      if (s.ok()) return;
      if (out.balancer_errors++ == 0)
        out.first_balancer_error = fmt::format("step {}: {}", step, s.message());
    };
    balancer_error(r->controller_status);
    // Stop-the-world: once a cycle runs, nothing else does until it is over. The cycle starts
    // inside this step's Forward, so the step counts as one that rebalanced. Each Step() counts
    // as a step of the cycle (algorithm_execution_interval is counted in them): a pause between
    // them gives the worker the time a forward step would have (without it the plan was "not
    // ready" every cycle and the spin took the planner's CPU).
    while (a.mode == "sync" && ctl->CycleInProgress()) {
      in_cycle = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
      balancer_error(ctl->Step());
    }
    const double step_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (reference != nullptr) {
      const std::vector<float> expected = reference->Forward(step, shift, rank);
      out.max_rel_diff = std::max(out.max_rel_diff, MaxRelativeDifference(r->outputs, expected));
    }
    for (float v : r->outputs) out.checksum += v;
    // Balance of this step's tokens: every rank's token total per layer.
    for (int l = 0; l < L; ++l) {
      rank_tokens[l] =
          std::accumulate(r->tokens_per_slot[l].begin(), r->tokens_per_slot[l].end(), int64_t{0});
    }
    if (Status s = stats->AllGather(std::as_bytes(std::span(rank_tokens)),
                                    std::as_writable_bytes(std::span(all_tokens)),
                                    std::chrono::milliseconds(a.engine.timeout_ms));
        !s.ok()) {
      out.error = s.message();
      return out;
    }
    if (rank == 0) {
      StepRow row;
      row.step = step;
      for (uint64_t ep : r->epochs) row.epoch += ep;
      double bal = 0;
      for (int l = 0; l < L; ++l) {
        int64_t max = 0, sum = 0;
        for (int q = 0; q < a.ranks; ++q) {
          const int64_t t = all_tokens[static_cast<size_t>(q) * L + l];
          max = std::max(max, t);
          sum += t;
        }
        bal += max > 0 ? static_cast<double>(sum) / a.ranks / static_cast<double>(max) : 1.0;
      }
      row.balancedness = bal / L;
      row.step_ms = step_ms;
      row.critical_path_ms = r->critical_path_ms;
      row.cycle_in_progress = in_cycle;
      rows->push_back(row);
    }
  }
  if (ctl != nullptr) out.metrics = ctl->Metrics();
  return out;
}

// The experts' weights this process would hold (every rank's slots in-process, its own under MPI,
// plus every expert once more for the dense reference) must fit in half of the machine's memory:
// a larger model fails here with the sizes, not by running out of memory on the way.
Status CheckMemory(const DemoArgs& a, int slots_per_rank) {
  const double expert = 3.0 * a.engine.hidden * a.engine.ffn * sizeof(float);
  const double slots = static_cast<double>(slots_per_rank) * (a.comm == "inproc" ? a.ranks : 1) +
                       (a.verify ? a.engine.experts : 0);
  const double need = a.engine.layers * slots * expert;
  const double memory = static_cast<double>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGE_SIZE);
  if (memory > 0 && need > memory / 2) {
    constexpr double kGiB = 1024.0 * 1024 * 1024;
    return Status::Invalid(fmt::format(
        "the experts' weights would take {:.1f} GiB in this process ({} layers x {:.0f} experts of "
        "{:.2f} MiB: {}{}), more than half of this machine's {:.1f} GiB of memory; lower "
        "--experts, --layers, --hidden or --ffn",
        need / kGiB, a.engine.layers, slots, expert / (1024.0 * 1024),
        a.comm == "inproc" ? "every rank's slots" : "this rank's slots",
        a.verify ? " and the dense reference" : "", memory / kGiB));
  }
  // A step's activations, per token at the least: its router logits (one per expert), its hidden
  // state and the top-k rows it is dispatched as, and the FFN's gate and up rows; every rank's in
  // this process, and the dense reference's (all ranks' tokens) too.
  const double per_token =
      (static_cast<double>(a.engine.experts) +
       static_cast<double>(a.engine.hidden) * (2 + a.engine.top_k) + 2.0 * a.engine.ffn) *
      sizeof(float);
  const double tokens = static_cast<double>(a.engine.tokens) *
                        ((a.comm == "inproc" ? a.ranks : 1) + (a.verify ? a.ranks : 0));
  const double activations = tokens * per_token;
  if (memory > 0 && activations > memory / 2) {
    return Status::Invalid(fmt::format(
        "a step's activations would take {:.1f} GiB in this process ({:.0f} tokens x {:.2f} KiB: "
        "router logits over {} experts, hidden {} with top-{}, ffn {}), more than half of this "
        "machine's {:.1f} GiB of memory; lower --tokens, --experts, --hidden or --ffn",
        activations / (1024.0 * 1024 * 1024), tokens, per_token / 1024, a.engine.experts,
        a.engine.hidden, a.engine.top_k, a.engine.ffn, memory / (1024.0 * 1024 * 1024)));
  }
  return Status::Ok();
}

int RunDemo(const DemoArgs& a) {
  const std::string cmd = "demo";
  if (a.mode != "off" && a.mode != "sync" && a.mode != "async") {
    return Fail(cmd, Status::Invalid("--eplb: expected off, sync or async, got " + a.mode));
  }
  if (a.comm != "inproc" && a.comm != "mpi") {
    return Fail(cmd, Status::Invalid("--comm: expected inproc or mpi, got " + a.comm));
  }
  if (a.mode == "off" && a.nodes != 1) {
    return Fail(cmd, Status::Invalid("--nodes applies to --eplb sync or async only"));
  }
  if (Status s = ValidateEngineOptions(a.engine); !s.ok()) return Fail(cmd, s);
  // The runtime configuration: the demo's defaults, then --eplb-config on top.
  // One redundant slot per rank, none on a single rank (it holds each expert once).
  nlohmann::json base = {{"dynamic_eplb", a.mode != "off"},
                         {"num_redundant_experts", a.ranks > 1 ? a.ranks : 0},
                         {"expert_heat_collection_interval", 20},
                         {"algorithm_execution_interval", 3},
                         {"max_layers_in_flight", 2}};
  if (!a.config.empty()) {
    // Read once, checked on its own (errors name the file or "inline config" and the key), then
    // its keys override the demo's defaults.
    const bool is_inline = IsInlineConfig(a.config);
    auto text = is_inline ? StatusOr<std::string>(a.config) : ReadFile(a.config);
    if (!text.ok()) return Fail(cmd, text.status());
    auto user = ParseRuntimeConfig(*text, is_inline ? "inline config" : a.config);
    if (!user.ok()) return Fail(cmd, user.status());
    nlohmann::json given = nlohmann::json::parse(*text, nullptr, false);
    if (given.contains("eplb_config")) given = given["eplb_config"];
    // --eplb decides whether the demo balances; a dynamic_eplb that says otherwise would be
    // ignored (off) or would turn the balancing asked for off (sync, async).
    if (given.contains("dynamic_eplb") && user->dynamic_eplb != (a.mode != "off")) {
      return Fail(cmd, Status::Invalid(fmt::format(
                           "--eplb-config: dynamic_eplb {} contradicts --eplb {}; leave it out "
                           "(--eplb off runs without balancing, sync and async balance)",
                           user->dynamic_eplb, a.mode)));
    }
    for (const auto& [key, value] : given.items()) base[key] = value;  // the user's keys win
  }
  auto cfg = ParseRuntimeConfig(base.dump(), "demo configuration");
  if (!cfg.ok()) return Fail(cmd, cfg.status());
  if (a.mode == "off") {
    cfg->dynamic_eplb = false;
    // Without the runtime the model runs on the id-order placement: its files would be ignored.
    for (const auto& [key, path] :
         {std::pair{"expert_map_path", &cfg->expert_map_path},
          std::pair{"expert_load_path", &cfg->expert_load_path},
          std::pair{"expert_map_record_path", &cfg->expert_map_record_path}}) {
      if (!path->empty()) {
        return Fail(cmd, Status::Invalid(fmt::format(
                             "--eplb-config: {} applies with --eplb sync or async (--eplb off runs "
                             "without the runtime, on the id-order placement)",
                             key)));
      }
    }
  }
  std::vector<std::string> outputs_named;  // checked before the run, not only after it
  for (const std::string* path : {&a.report_path, &a.csv_path}) {
    if (!path->empty()) outputs_named.push_back(*path);
  }
  if (Status s = CheckOutputsUpFront(outputs_named); !s.ok()) return Fail(cmd, s);
  // Nor over the files the run reads (the configuration and the files it names).
  std::vector<std::string> inputs = {cfg->expert_map_path, cfg->expert_load_path,
                                     cfg->expert_map_record_path};
  if (!a.config.empty() && !IsInlineConfig(a.config)) inputs.push_back(a.config);
  std::erase(inputs, std::string());
  if (Status s = CheckOutputsAreNotInputs(outputs_named, inputs, "a file of the run:"); !s.ok()) {
    return Fail(cmd, s);
  }
  auto slots_per_rank = ResolveSlotsPerRank(*cfg, a.engine.experts, a.ranks);
  if (!slots_per_rank.ok()) return Fail(cmd, slots_per_rank.status());
  if (Status s = CheckMemory(a, *slots_per_rank); !s.ok()) return Fail(cmd, s);
  std::optional<DenseReference> reference;
  if (a.verify) {
    auto ref = DenseReference::Create(a.engine);
    if (!ref.ok()) return Fail(cmd, ref.status());
    reference = std::move(*ref);
  }

  std::vector<StepRow> rows;
  std::vector<RankOutcome> outcomes;
  int my_rank = 0;
  if (a.comm == "inproc") {
    auto engine_world = MakeInProcessWorld(a.ranks);
    auto control_world = MakeInProcessWorld(a.ranks);
    auto stats_world = MakeInProcessWorld(a.ranks);
    outcomes.resize(a.ranks);
    std::vector<std::thread> threads;
    for (int r = 0; r < a.ranks; ++r) {
      threads.emplace_back([&, r] {
        outcomes[r] =
            RunRank(a, *cfg, engine_world[r].get(), control_world[r].get(), stats_world[r].get(),
                    reference ? &*reference : nullptr, r == 0 ? &rows : nullptr);
        if (!outcomes[r].error.empty()) {
          engine_world[r]->Abort(outcomes[r].error);
          control_world[r]->Abort(outcomes[r].error);
          stats_world[r]->Abort(outcomes[r].error);
        }
      });
    }
    for (auto& t : threads) t.join();
  } else {
    // Under mpirun: this process is one rank. Three communicators over MPI_COMM_WORLD.
    int argc = 0;
    char** argv = nullptr;
    auto engine_comm = MakeMpiCommunicator(&argc, &argv);
    if (!engine_comm.ok()) return Fail(cmd, engine_comm.status());
    auto control_comm = MakeMpiCommunicator(&argc, &argv);
    auto stats_comm = MakeMpiCommunicator(&argc, &argv);
    if (!control_comm.ok() || !stats_comm.ok()) {
      return Fail(cmd, Status::Internal("cannot create MPI communicators"));
    }
    if ((*engine_comm)->size() != a.ranks) {
      return Fail(cmd, Status::Invalid(fmt::format("--ranks {} but mpirun started {} processes",
                                                   a.ranks, (*engine_comm)->size())));
    }
    my_rank = (*engine_comm)->rank();
    RankOutcome mine = RunRank(a, *cfg, engine_comm->get(), control_comm->get(), stats_comm->get(),
                               reference ? &*reference : nullptr, my_rank == 0 ? &rows : nullptr);
    // Rank 0 reports for everyone: gather the per-rank figures.
    std::vector<double> local = {mine.error.empty() ? 0.0 : 1.0, mine.max_rel_diff, mine.checksum,
                                 static_cast<double>(mine.balancer_errors)};
    std::vector<double> all(4 * static_cast<size_t>(a.ranks));
    if (Status s =
            (*stats_comm)
                ->AllGather(std::as_bytes(std::span(local)), std::as_writable_bytes(std::span(all)),
                            std::chrono::milliseconds(a.engine.timeout_ms));
        !s.ok()) {
      return Fail(cmd, s);
    }
    if (!mine.error.empty())
      return Fail(cmd, Status::Aborted(fmt::format("rank {}: {}", my_rank, mine.error)));
    outcomes.resize(a.ranks);
    for (int r = 0; r < a.ranks; ++r) {
      outcomes[r].error = all[4 * r] != 0 ? "failed" : "";
      outcomes[r].max_rel_diff = all[4 * r + 1];
      outcomes[r].checksum = all[4 * r + 2];
      outcomes[r].balancer_errors = static_cast<int64_t>(all[4 * r + 3]);
    }
    outcomes[0].metrics = mine.metrics;
    outcomes[0].first_balancer_error = mine.first_balancer_error;
    if (my_rank != 0) return 0;
  }
  for (int r = 0; r < a.ranks; ++r) {
    if (!outcomes[r].error.empty()) {
      return Fail(cmd, Status::Aborted(fmt::format("rank {}: {}", r, outcomes[r].error)));
    }
  }

  // The report.
  const size_t window = static_cast<size_t>(cfg->expert_heat_collection_interval);
  std::vector<double> all_ms, busy_ms, quiet_ms;
  for (const StepRow& row : rows) {
    all_ms.push_back(row.step_ms);
    (row.cycle_in_progress ? busy_ms : quiet_ms).push_back(row.step_ms);
  }
  double max_diff = 0, checksum = 0;
  int64_t balancer_errors = 0;
  std::string first_balancer_error;
  for (size_t r = 0; r < outcomes.size(); ++r) {
    const RankOutcome& o = outcomes[r];
    max_diff = std::max(max_diff, o.max_rel_diff);
    checksum += o.checksum;
    balancer_errors += o.balancer_errors;
    if (first_balancer_error.empty() && !o.first_balancer_error.empty()) {
      first_balancer_error = fmt::format("rank {}: {}", r, o.first_balancer_error);
    }
  }
  const RuntimeMetrics& m = outcomes[0].metrics;
  nlohmann::json report = {
      {"mode", a.mode},
      {"comm", a.comm},
      {"ranks", a.ranks},
      {"nodes", a.nodes},
      {"layers", a.engine.layers},
      {"experts", a.engine.experts},
      {"top_k", a.engine.top_k},
      {"hidden", a.engine.hidden},
      {"ffn", a.engine.ffn},
      {"tokens", a.engine.tokens},
      {"steps", a.steps},
      {"shift_at", a.shift_at},
      {"rebalances", m.cycles},
      {"layers_committed", m.layers_committed},
      {"layers_rolled_back", m.layers_rolled_back},
      {"balancer_errors", balancer_errors},
      {"verified", a.verify},
      {"max_rel_diff_vs_reference", max_diff},
      {"outputs_checksum", checksum},
      {"step_ms_p50", Percentile(all_ms, 0.50)},
      {"step_ms_p99", Percentile(all_ms, 0.99)},
      {"step_ms_max", all_ms.empty() ? 0 : *std::max_element(all_ms.begin(), all_ms.end())},
      {"step_ms_p99_rebalancing", Percentile(busy_ms, 0.99)},
      {"step_ms_p99_quiet", Percentile(quiet_ms, 0.99)},
      {"balancedness_first_window", MeanOf(rows, 0, window, &StepRow::balancedness)},
      {"balancedness_last_window", MeanOf(rows, rows.size() - std::min(rows.size(), window),
                                          rows.size(), &StepRow::balancedness)},
      {"critical_path_ms_first_window", MeanOf(rows, 0, window, &StepRow::critical_path_ms)},
      {"critical_path_ms_last_window", MeanOf(rows, rows.size() - std::min(rows.size(), window),
                                              rows.size(), &StepRow::critical_path_ms)},
      {"slots_changed", m.slots_changed_total},
      {"bytes_moved", m.bytes_moved_total},
      {"inter_node_bytes", m.inter_node_bytes_total},
  };
  std::string csv = "step,epoch,balancedness,step_ms,critical_path_ms,cycle_in_progress\n";
  for (const StepRow& row : rows) {
    csv += fmt::format("{},{},{:.6f},{:.4f},{:.4f},{}\n", row.step, row.epoch, row.balancedness,
                       row.step_ms, row.critical_path_ms, row.cycle_in_progress ? 1 : 0);
  }
  std::vector<std::pair<std::string, std::string>> outputs;
  if (!a.report_path.empty()) outputs.emplace_back(a.report_path, report.dump(2) + "\n");
  if (!a.csv_path.empty()) outputs.emplace_back(a.csv_path, csv);
  if (Status s = WriteOutputs(outputs); !s.ok()) return Fail(cmd, s);
  fmt::print(
      "demo        {} ranks ({}), {} layers x {} experts, top-{}, hidden {}, ffn {}, {} tokens "
      "per rank per step, {} steps, workload shift at step {}\n",
      a.ranks, a.comm, a.engine.layers, a.engine.experts, a.engine.top_k, a.engine.hidden,
      a.engine.ffn, a.engine.tokens, a.steps, a.shift_at);
  fmt::print(
      "balancing   {}: {} rebalances, {} layers committed, {} rolled back, {} slots changed{}\n",
      a.mode, m.cycles, m.layers_committed, m.layers_rolled_back, m.slots_changed_total,
      a.nodes > 1
          ? fmt::format(" (rank 0: {:.2f} of {:.2f} MiB received from other nodes)",
                        m.inter_node_bytes_total / 1048576.0, m.bytes_moved_total / 1048576.0)
          : "");
  if (balancer_errors > 0) {
    fmt::print("errors      {} from the balancer, all ranks (the engine ran on; first: {})\n",
               balancer_errors,
               first_balancer_error.empty() ? "on another rank" : first_balancer_error);
  }
  fmt::print("outputs     {} (max relative difference {:.2e} vs the dense reference)\n",
             a.verify ? (max_diff <= 1e-5 ? "match" : "DIFFER") : "not verified", max_diff);
  fmt::print("balance     {:.3f} (first window) -> {:.3f} (last window)\n",
             report["balancedness_first_window"].get<double>(),
             report["balancedness_last_window"].get<double>());
  fmt::print(
      "critical    {:.3f} ms -> {:.3f} ms per step (slowest rank's expert time, summed over "
      "layers)\n",
      report["critical_path_ms_first_window"].get<double>(),
      report["critical_path_ms_last_window"].get<double>());
  fmt::print(
      "step time   p50 {:.2f} ms, p99 {:.2f} ms, max {:.2f} ms; p99 while rebalancing {:.2f} "
      "ms, quiet {:.2f} ms (wall time on this machine)\n",
      report["step_ms_p50"].get<double>(), report["step_ms_p99"].get<double>(),
      report["step_ms_max"].get<double>(), report["step_ms_p99_rebalancing"].get<double>(),
      report["step_ms_p99_quiet"].get<double>());
  return a.verify && max_diff > 1e-5 ? 1 : 0;
}

}  // namespace

Action AddDemo(CLI::App& app) {
  auto a = std::make_shared<DemoArgs>();
  a->engine.layers = 4;
  a->engine.experts = 32;
  a->engine.top_k = 4;
  a->engine.hidden = 128;
  a->engine.ffn = 512;
  a->engine.tokens = 128;
  a->engine.skew = 1.5;
  app.add_option("--ranks", a->ranks, "ranks")->capture_default_str()->check(CLI::Range(1, 4096));
  app.add_option("--nodes", a->nodes, "nodes the ranks are spread over (rank / (ranks / nodes))")
      ->capture_default_str()
      ->check(CLI::Range(1, 4096));
  app.add_option("--layers", a->engine.layers, "MoE layers")->capture_default_str();
  app.add_option("--experts", a->engine.experts, "experts per layer")->capture_default_str();
  app.add_option("--top-k", a->engine.top_k, "experts per token")->capture_default_str();
  app.add_option("--hidden", a->engine.hidden, "hidden size")->capture_default_str();
  app.add_option("--ffn", a->engine.ffn, "expert FFN size")->capture_default_str();
  app.add_option("--tokens", a->engine.tokens, "tokens per rank per step")->capture_default_str();
  app.add_option("--skew", a->engine.skew, "router bias skew")->capture_default_str();
  app.add_option("--seed", a->engine.seed, "seed")->capture_default_str()->check(Uint64Text());
  app.add_option("--steps", a->steps, "forward steps")
      ->capture_default_str()
      ->check(CLI::Range(1, 10000000));
  app.add_option("--shift-at", a->shift_at,
                 "step at which the hot experts change (at --steps or later: no change)")
      ->capture_default_str()
      ->check(CLI::Range(0, 10000000));
  app.add_option("--eplb", a->mode, "off, sync (stop-the-world) or async (SwiftBalancer)")
      ->capture_default_str();
  app.add_option("--eplb-config", a->config,
                 "runtime configuration: JSON text or file (eplb_config keys)");
  app.add_option("--comm", a->comm, "inproc (ranks as threads) or mpi (under mpirun)")
      ->capture_default_str();
  app.add_option("--report", a->report_path, "write a JSON report");
  app.add_option("--csv", a->csv_path, "write one CSV row per step");
  app.add_flag("--verify,!--no-verify", a->verify,
               "compare every step with the dense reference (on unless --no-verify)")
      ->capture_default_str();
  return [a] { return RunDemo(*a); };
}

}  // namespace eplb::tools
