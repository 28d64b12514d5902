// The engine over MPI: 4 processes (mpirun -np 4), each one rank with its controller (on one MPI
// communicator) and its engine (on a second one), rebalancing while the hot experts shift. Every
// process compares its outputs with the dense reference at every step; then the processes agree
// on the outcome (same commit log, at least two commits). Exit status 0 only if every process
// passed.
#include <chrono>
#include <cstdio>
#include <string>

#include "eplb/engine.h"
#include "eplb/runtime.h"
#include "testing/engine_setup.h"

namespace {

std::string Run(eplb::Communicator* control, eplb::Communicator* data, uint64_t* digest,
                size_t* commits, double* max_difference) {
  const eplb::EngineOptions o = eplb::testing::SmallEngineOptions(11, 20000);
  const eplb::RuntimeConfig c = eplb::testing::SmallDynamicConfig(20000);
  auto ref = eplb::DenseReference::Create(o);
  if (!ref.ok()) return ref.status().ToString();
  auto ctl = eplb::Controller::Create(c, {.layers = o.layers, .experts = o.experts}, control);
  if (!ctl.ok()) return ctl.status().ToString();
  auto engine = eplb::MoeEngine::Create(o, data, std::move(*ctl));
  if (!engine.ok()) return engine.status().ToString();
  eplb::Controller* controller = (*engine)->controller();
  // Shift 0 until a commit, then shift 1 until another (decisions that change at the same step on
  // every rank, so every process runs the same steps).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(90);
  int shift = 0;
  int64_t shift_step = 0;
  size_t at_shift = 0;
  for (int64_t step = 0;; ++step) {
    const size_t n = controller->CommitLog().size();
    const bool idle = !controller->CycleInProgress();
    if (shift == 0 && step >= 24 && n > 0 && idle) {
      shift = 1;
      shift_step = step;
      at_shift = n;
    } else if (shift == 1 && step >= shift_step + 24 && n > at_shift && idle) {
      break;
    }
    if (std::chrono::steady_clock::now() > deadline) return "no two rebalances within 90 s";
    auto res = (*engine)->Forward(step, shift);
    if (!res.ok()) return res.status().ToString();
    if (!res->controller_status.ok()) return "controller: " + res->controller_status.ToString();
    const double d =
        eplb::MaxRelativeDifference(res->outputs, ref->Forward(step, shift, data->rank()));
    *max_difference = std::max(*max_difference, d);
    if (!(d <= 1e-5)) {
      return "step " + std::to_string(step) + ": outputs differ from the dense reference by " +
             std::to_string(d);
    }
  }
  uint64_t h = 1469598103934665603ull;
  for (const auto& commit : controller->CommitLog()) {
    for (uint64_t v :
         {static_cast<uint64_t>(commit.step), static_cast<uint64_t>(commit.layer), commit.epoch}) {
      h = (h ^ v) * 1099511628211ull;
    }
  }
  *digest = h;
  *commits = controller->CommitLog().size();
  return "";
}

}  // namespace

int main(int argc, char** argv) {
  auto control = eplb::MakeMpiCommunicator(&argc, &argv);
  if (!control.ok()) {
    std::fprintf(stderr, "mpi_engine_test: %s\n", control.status().ToString().c_str());
    return 2;
  }
  auto data = eplb::MakeMpiCommunicator(&argc, &argv);
  if (!data.ok()) {
    std::fprintf(stderr, "mpi_engine_test: %s\n", data.status().ToString().c_str());
    return 2;
  }
  const int rank = (*control)->rank();
  const int size = (*control)->size();
  uint64_t digest = 0;
  size_t commits = 0;
  double max_difference = 0;
  const std::string err = Run(control->get(), data->get(), &digest, &commits, &max_difference);
  if (!err.empty()) std::fprintf(stderr, "mpi_engine_test: rank %d: %s\n", rank, err.c_str());
  std::vector<uint64_t> digests(size);
  int64_t failed = err.empty() ? 0 : 1, any_failed = 1;
  auto s =
      (*control)->AllGather(std::as_bytes(std::span(&digest, 1)),
                            std::as_writable_bytes(std::span(digests)), std::chrono::seconds(30));
  if (s.ok()) {
    for (uint64_t d : digests) failed |= d != digests[0];
    failed |= commits < 2;
    s = (*control)->AllReduce(std::span<const int64_t>(&failed, 1),
                              std::span<int64_t>(&any_failed, 1), eplb::ReduceOp::kMax,
                              std::chrono::seconds(30));
  }
  if (rank == 0) {
    std::printf(
        "mpi_engine_test: %d processes, %zu commits, max relative difference %.3g, %s\n", size,
        commits, max_difference,
        s.ok() && any_failed == 0 ? "outputs match, commit logs agree" : "FAILED or disagree");
  }
  data->reset();
  control->reset();
  return s.ok() && any_failed == 0 ? 0 : 1;
}
