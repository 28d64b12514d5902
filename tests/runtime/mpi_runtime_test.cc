// The runtime over MPI: 4 processes (mpirun -np 4), each one rank with its controller and a fake
// engine, several rebalancing cycles. Every process checks the bytes behind every routing
// snapshot at every step; then the processes compare their commit logs and final placements.
// Exit status 0 only if every process passed.
#include <chrono>
#include <cstdio>
#include <random>

#include "eplb/runtime.h"
#include "runtime/fake_engine.h"

namespace {

uint64_t Mix(uint64_t h, uint64_t v) { return (h ^ v) * 1099511628211ull; }

std::string Run(eplb::Communicator* comm, uint64_t* digest, int64_t* cycles) {
  eplb::RuntimeConfig c;
  c.dynamic_eplb = true;
  c.expert_heat_collection_interval = 12;
  c.algorithm_execution_interval = 2;
  c.num_redundant_experts = 8;
  c.max_layers_in_flight = 2;
  c.transfer_timeout_ms = 20000;
  c.algorithm_options.target_balancedness = 0.99;
  const int layers = 4;
  auto ctl = eplb::Controller::Create(c, {.layers = layers, .experts = 16}, comm);
  if (!ctl.ok()) return ctl.status().ToString();
  eplb::testing::FakeEngine engine(ctl->get(), comm->rank(), layers, (*ctl)->slots_per_rank());
  if (auto s = engine.Load(); !s.ok()) return s.ToString();
  if (auto s = (*ctl)->Start(); !s.ok()) return s.ToString();
  std::mt19937_64 rng(17 + comm->rank());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  for (int step = 0;; ++step) {
    // At least two cycles: on a loaded machine a late worker can make a cycle span many steps
    // (the engine keeps stepping), so a fixed step count is not enough. Cycles end at the same
    // step on every rank, so every rank leaves the loop at the same step.
    if (step >= 240 && !(*ctl)->CycleInProgress() && (*ctl)->Metrics().cycles >= 2) break;
    if (std::chrono::steady_clock::now() > deadline) {
      return "fewer than 2 cycles finished within 60 s";
    }
    eplb::Status step_error;
    std::string err = engine.RunStep(step / 60, rng, &step_error);
    if (!err.empty()) return err;
    if (!step_error.ok()) return "Step: " + step_error.ToString();
  }
  if (std::string err = engine.Verify(); !err.empty()) return err;
  uint64_t h = 1469598103934665603ull;
  for (const auto& commit : (*ctl)->CommitLog()) {
    h = Mix(Mix(Mix(h, commit.step), commit.layer), commit.epoch);
  }
  for (int l = 0; l < layers; ++l) {
    for (int id : (*ctl)->Routing(l)->phy2log) h = Mix(h, id);
  }
  *digest = h;
  *cycles = (*ctl)->Metrics().cycles;
  ctl->reset();  // before the engine's memory goes
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  auto comm = eplb::MakeMpiCommunicator(&argc, &argv);
  if (!comm.ok()) {
    std::fprintf(stderr, "mpi_runtime_test: %s\n", comm.status().ToString().c_str());
    return 2;
  }
  const int rank = (*comm)->rank();
  const int size = (*comm)->size();
  uint64_t digest = 0;
  int64_t cycles = 0;
  const std::string err = Run(comm->get(), &digest, &cycles);
  if (!err.empty()) std::fprintf(stderr, "mpi_runtime_test: rank %d: %s\n", rank, err.c_str());
  // Agree on the outcome: same commit log and placement everywhere, at least two cycles.
  std::vector<uint64_t> digests(size);
  int64_t failed = err.empty() ? 0 : 1, any_failed = 1;
  auto s = (*comm)->AllGather(std::as_bytes(std::span(&digest, 1)),
                              std::as_writable_bytes(std::span(digests)), std::chrono::seconds(30));
  if (s.ok()) {
    for (uint64_t d : digests) failed |= d != digests[0];
    failed |= cycles < 2;
    s = (*comm)->AllReduce(std::span<const int64_t>(&failed, 1), std::span<int64_t>(&any_failed, 1),
                           eplb::ReduceOp::kMax, std::chrono::seconds(30));
  }
  if (rank == 0) {
    std::printf("mpi_runtime_test: %d processes, %lld cycles, commit logs and placements %s\n",
                size, static_cast<long long>(cycles),
                s.ok() && any_failed == 0 ? "agree" : "DISAGREE or failed");
  }
  comm->reset();
  return s.ok() && any_failed == 0 ? 0 : 1;
}
