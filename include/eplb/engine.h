// The engine: a real CPU Mixture-of-Experts model served with expert parallelism, the workload the
// demo, the end-to-end tests and the benchmarks drive the runtime with.
//
// The model: `layers` MoE layers over a hidden state of `hidden` floats per token. Each layer
//   1. routes: logits = x W_r^T + bias (W_r: experts x hidden), softmax over the experts, the top_k
//      experts by probability (ties: lower expert id), weights = their probabilities renormalised
//      to sum to 1. The per-layer router bias makes traffic skewed: the experts are ranked by a
//      permutation drawn from (seed, layer, shift) and the expert at position i gets
//      -skew * ln(1 + i), so the hottest expert carries several times the mean load (see skew);
//      changing `shift` changes which experts are hot. The router's weights are uniform with 3x the
//      bound of the experts' (below), so logits vary enough from token to token that cold experts
//      still get some tokens.
//   2. dispatches each (token, chosen expert) to one physical slot holding the expert (the replica
//      choice below), on whichever rank that slot lives;
//   3. runs the expert FFN on every slot's rows: SwiGLU, y = down (silu(gate x) * (up x)), with
//      gate and up ffn x hidden and down hidden x ffn, float32, products through cblas_sgemm;
//   4. combines on the token's own rank: x + sum_j weight_j * y_j, in top-k order (the residual).
// Weights and inputs are generated from hashes of (seed, layer, expert, tensor, index) and (seed,
// step, rank, token, index), so every rank and every test can rebuild them. Each weight is uniform
// in [-b, b] with b = sqrt(3 / fan_in) (variance 1 / fan_in): an expert's output is of the order of
// its input, so a token that meets a wrong expert or wrong weights changes the output visibly.
//
// Replica choice (the routing snapshot of the layer, taken when the step starts): a replica on the
// token's own rank when there is one (its slot in the expert map), otherwise replica
// (rank * tokens + token) % replicas of the expert's slots in log2phy order, which spreads the
// remote tokens of an expert evenly over its replicas.
//
// Dispatch and combine (per layer): each rank all-gathers (routing epoch, rows it sends to every
// rank), then sends each other rank one message with the local slot id and hidden vector of every
// row for it (non-blocking point-to-point, tag 2 * layer), computes its slots' rows grouped by slot
// (one FFN per slot), and sends the outputs back in the order received (tag 2 * layer + 1).
// Traffic per rank and layer is the rows that leave it, at most tokens * top_k hidden vectors each
// way; rows for the rank's own slots never leave it. The epochs in the all-gather must all be
// equal: ranks that would route with different placements (a controller that timed out while the
// others committed, see Controller::Step) fail the step with kAborted instead of computing wrong
// results.
//
// With a controller, each slot's three tensors (gate, up, down) are registered with it, so it can
// move experts between ranks; the engine reports the rows per local slot of every layer
// (RecordLoad) after dispatch and calls Step() once at the end of every Forward. Placements change
// only at those step boundaries, and every rank commits at the same step, so the outputs never
// depend on the placement: they equal the dense reference up to float rounding at every step.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "eplb/comm.h"
#include "eplb/placement.h"
#include "eplb/runtime.h"
#include "eplb/status.h"

namespace eplb {

struct EngineOptions {
  int layers = 4;     // MoE layers L (1 .. 16383: two message tags per layer)
  int experts = 16;   // logical experts per layer E (> 0)
  int top_k = 2;      // experts per token (1 .. experts)
  int hidden = 64;    // hidden size H (> 0)
  int ffn = 128;      // expert FFN size F (> 0)
  int tokens = 64;    // tokens per rank per step (> 0)
  uint64_t seed = 1;  // weights, router, hot-expert permutation and inputs
  // Router bias -skew * ln(1 + hotness position), [0, 20]; 0 = no bias. With 1 the hottest expert
  // gets about 4x the mean load at E = 16, k = 2, 6x at E = 64, k = 8 and 20x at E = 256, k = 8.
  double skew = 1.0;
  int timeout_ms = 30000;  // every wait on a peer (> 0)
  // All-gather the per-layer expert CPU times of every rank at the end of each step (one small
  // collective), filling StepResult's rank_expert_cpu_ms and critical_path_ms.
  bool gather_timings = true;
};

// Checks every field's range; the message names the field and the allowed range.
Status ValidateEngineOptions(const EngineOptions& options);

// The three tensors of one expert, row-major float32: gate (ffn x hidden), up (ffn x hidden),
// down (hidden x ffn).
struct ExpertWeights {
  std::vector<float> gate, up, down;
};
// The weights of logical expert `expert` of `layer`: the same on every call, rank and process.
ExpertWeights MakeExpertWeights(const EngineOptions& options, int layer, int expert);
// The hidden states a rank feeds into the first layer at `step`: tokens x hidden, in [-1, 1).
std::vector<float> MakeEngineInputs(const EngineOptions& options, int64_t step, int rank);

// What one Forward produced on one rank.
struct StepResult {
  std::vector<float> outputs;         // tokens x hidden: this rank's tokens after the last layer
  std::vector<uint64_t> epochs;       // per layer: the routing epoch used
  std::vector<double> expert_cpu_ms;  // per layer: this rank's expert compute, thread CPU time
  std::vector<std::vector<int64_t>> tokens_per_slot;  // [layer][local slot]: rows computed here
  int64_t rows_sent = 0;  // rows this rank dispatched to other ranks, all layers
  // With gather_timings (else empty / 0): every rank's per-layer expert CPU ms, [rank][layer];
  // critical_path_ms = sum over layers of the max over ranks (the step's expert time when ranks
  // wait for the slowest at every layer); mean_path_ms = sum over layers of the mean over ranks.
  std::vector<std::vector<double>> rank_expert_cpu_ms;
  double critical_path_ms = 0;
  double mean_path_ms = 0;
  // What the controller's Step() returned (ok without a controller). A failure there is the
  // runtime's (sticky error of a rebalance); the outputs are still valid and the controller keeps
  // running on the placement in use.
  Status controller_status;
};

// One rank of the expert-parallel engine.
//
// Threads: one thread (the rank's forward thread) calls Forward(); every rank calls it the same
// number of times, in lockstep. The engine owns its controller (when it has one) and destroys it
// first, since the controller holds spans into the engine's slot memory. The communicators are not
// owned and must outlive the engine. The engine's communicator must not be the controller's (the
// controller's worker uses point-to-point tags of its own): give the engine its own world (a
// second MakeInProcessWorld, or a second MakeMpiCommunicator). The engine sets OpenBLAS to one
// thread, process-wide, once: a rank is one thread, and its expert time is measured with the
// thread CPU clock.
//
// Failure: a failed exchange aborts the engine's communicator (so that peers fail fast instead of
// waiting for their timeouts) and is returned by this and every later Forward.
class MoeEngine {
 public:
  // Dynamic placement: starts from controller->initial_placement() (which must have
  // options.layers layers, options.experts experts and comm->size() ranks), loads this rank's
  // slots, registers every slot (three tensors: gate, up, down) with the controller, which must not
  // be started yet, and starts it. `comm` must not be the controller's communicator.
  static StatusOr<std::unique_ptr<MoeEngine>> Create(const EngineOptions& options,
                                                     Communicator* comm,
                                                     std::unique_ptr<Controller> controller);
  // Static placement: `placement` (validated, same shape requirements) never changes.
  static StatusOr<std::unique_ptr<MoeEngine>> Create(const EngineOptions& options,
                                                     Communicator* comm,
                                                     const Placement& placement);
  ~MoeEngine();
  MoeEngine(const MoeEngine&) = delete;
  MoeEngine& operator=(const MoeEngine&) = delete;

  // One forward step of this rank's MakeEngineInputs(options, step, rank) through every layer,
  // with the hot experts chosen by `shift`, with the routing snapshots current when it starts. With
  // a controller, RecordLoad is called per layer after dispatch and Step() once at the end.
  StatusOr<StepResult> Forward(int64_t step, int shift);

  const EngineOptions& options() const;
  int rank() const;
  int slots_per_rank() const;
  // The routing snapshot the next Forward will use for `layer` (nullptr when out of range).
  std::shared_ptr<const LayerRouting> Routing(int layer) const;
  // The controller (metrics, commit log, routing), or nullptr with a static placement.
  Controller* controller() const;

 private:
  struct Impl;
  explicit MoeEngine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The single-process dense model: every expert local, no expert parallelism, the same router,
// weights and inputs. Holds every expert's weights (layers * experts * 3 * ffn * hidden floats).
// Thread safety: Forward is const and may be called from many threads at once.
class DenseReference {
 public:
  static StatusOr<DenseReference> Create(const EngineOptions& options);
  // The outputs (tokens x hidden) that rank `rank`'s tokens of `step` must have under `shift`.
  std::vector<float> Forward(int64_t step, int shift, int rank) const;

 private:
  DenseReference() = default;
  EngineOptions options_;
  std::vector<ExpertWeights> experts_;  // [layer * experts + expert]
  std::vector<float> router_;           // [layer][expert][hidden]
};

// max_i |a_i - b_i| / max(max_i |b_i|, 1e-30): the largest difference relative to the largest
// magnitude of the reference b (so near-zero elements do not inflate it). Infinity when the sizes
// differ or an element is not finite.
double MaxRelativeDifference(std::span<const float> a, std::span<const float> b);

}  // namespace eplb
