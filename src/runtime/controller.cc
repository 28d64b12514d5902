// The per-rank controller: the forward thread's state machine (load window, collectives, commit
// protocol), the worker thread (algorithm, planner, weight moves via the Mover, log lines, map
// recording) and the public API. See include/eplb/runtime.h for the contract.
//
// Ownership and threads:
//   forward thread  RecordLoad, Step: owns the load window, the phase of the cycle, every
//                   collective and its buffers, the placement in use, the epochs, the tag pool
//                   and the commit log; writes slot memory only when it commits a layer that
//                   every rank has declared ready.
//   worker thread   runs jobs handed over under mu: computes plans (reads only the Job it was
//                   given), runs the Mover on a MovePlan, writes log lines and expert maps.
//   handoffs        everything under mu (jobs, plans, move orders, reports, metrics, the kept
//                   errors); per-layer gates inside the Mover (release/acquire); routing snapshots
//                   as atomic shared_ptrs; steps and hook time as relaxed atomics.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <thread>

#include "eplb/algorithm.h"
#include "eplb/formats.h"
#include "eplb/planner.h"
#include "eplb/runtime.h"
#include "runtime/internal/mover.h"

namespace eplb {
namespace {

using Clock = std::chrono::steady_clock;
using runtime_internal::LayerMoves;
using runtime_internal::LayerState;
using runtime_internal::MovePlan;
using runtime_internal::Mover;
using runtime_internal::MoveSession;
using runtime_internal::TagPool;
using runtime_internal::WeightStore;

constexpr const char* kKey = "eplb_config";

double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

// Plan hashes exchanged by the ranks: 0 means "not computed yet", kPlanFailed "planning failed".
constexpr uint64_t kPlanNotReady = 0;
constexpr uint64_t kPlanFailed = ~uint64_t{0};

uint64_t Fnv(uint64_t h, int64_t v) {
  for (int i = 0; i < 8; ++i) {
    h ^= static_cast<uint64_t>(v >> (8 * i)) & 0xff;
    h *= 1099511628211ull;
  }
  return h;
}

// A hash of everything a plan decides (final placement, every copy, the cycle it belongs to).
uint64_t PlanHash(uint64_t cycle, const TransferPlan& plan) {
  uint64_t h = Fnv(1469598103934665603ull, static_cast<int64_t>(cycle));
  for (int id : plan.final_placement.phy2log()) h = Fnv(h, id);
  for (const ExpertCopy& c : plan.copies) {
    h = Fnv(h, c.layer);
    h = Fnv(h, c.expert);
    h = Fnv(h, (int64_t{c.src_rank} << 32) | c.src_slot);
    h = Fnv(h, (int64_t{c.dst_rank} << 32) | c.dst_slot);
  }
  return h == kPlanNotReady || h == kPlanFailed ? 1 : h;
}

// Rank-load figures of one layer under one placement.
struct LayerLoad {
  double mean = 0;
  double max = 0;
  double balancedness() const { return max > 0 ? mean / max : 1.0; }
};

LayerLoad MeasureLayer(const LoadMatrix& load, const Placement& p, int layer) {
  const std::vector<double> ranks =
      RankLoads(load.row(layer), p.layer(layer), p.ranks(), p.slots_per_rank(), p.experts());
  LayerLoad out;
  for (double r : ranks) {
    out.mean += r;
    out.max = std::max(out.max, r);
  }
  out.mean /= static_cast<double>(ranks.size());
  return out;
}

double MeanOf(const std::vector<double>& v) {
  if (v.empty()) return 1.0;
  double s = 0;
  for (double x : v) s += x;
  return s / static_cast<double>(v.size());
}

}  // namespace

struct Controller::Impl {
  enum class Phase { kIdle, kGathering, kPlanning, kHashCheck, kMoving, kDisabled };

  // What the worker gets at the end of a load window.
  struct Job {
    uint64_t cycle = 0;
    LoadMatrix load;  // per logical expert, folded on the placement the loads were recorded on
    Placement old;
    // With expert_heat_windows > 1: the latest windows' loads, oldest first, the last one this
    // cycle's; the worker balances their sum (summed there, off the forward thread, in this order
    // on every rank, so every rank plans on the same numbers).
    std::vector<std::shared_ptr<const LoadMatrix>> windows;
  };
  // What the worker hands back (dynamic mode). The forward thread takes it over whole.
  struct PlanOut {
    uint64_t cycle = 0;
    uint64_t hash = kPlanNotReady;
    Placement final_placement;
    MovePlan moves;  // tags not assigned yet
    double algorithm_ms = 0;
    std::vector<LayerLoad> before, after;  // per layer, the observed load on old / final
  };
  // Something for the worker to do besides planning: a log line, a map to record.
  struct Report {
    std::string line;
    std::optional<Placement> record;
  };

  // ---- fixed after Create / Start (any thread reads) ----
  RuntimeConfig cfg;
  Communicator* comm = nullptr;
  Shape shape;
  int rank = 0;
  int S = 0;             // slots per rank
  bool records = false;  // this rank writes expert_map_record_path (lowest rank of its node)
  std::unique_ptr<Balancer> balancer;
  Placement initial;
  std::unique_ptr<WeightStore> weights;
  std::unique_ptr<Mover> mover;
  bool started = false;

  // ---- forward thread ----
  // On cache lines of their own (here and at mu below): the worker's writes to the handoff
  // fields must not evict the forward thread's, and the hot path's speed should not depend on
  // the sizes of the fields before it.
  alignas(64) Placement placement;  // in use
  std::vector<uint64_t> epoch;      // per layer
  std::vector<int64_t> window;      // tokens per (layer, local slot) in this window
  int64_t step = 0;
  int64_t window_start = 0;
  Phase phase = Phase::kIdle;
  uint64_t cycle = 0;
  int64_t deadline = 0;  // gathering and planning: the step at which ranks compare plans
  bool warned_late = false;
  Request request;  // the one collective in flight
  std::vector<int64_t> gather_send, gather_recv;
  std::deque<std::shared_ptr<const LoadMatrix>> heat;  // the latest expert_heat_windows loads
  uint64_t hash_send = 0;
  std::vector<uint64_t> hash_recv;
  std::vector<int64_t> agree_send, agree_recv;
  std::shared_ptr<PlanOut> moving;       // the plan being moved
  std::shared_ptr<MoveSession> session;  // its moves, shared with the worker
  std::vector<int> outcome;    // per layer: 0 open / unchanged, 1 committed, -1 rolled back
  std::vector<char> finished;  // per layer, during a move
  Clock::time_point move_start;
  std::vector<Commit> commits;  // the latest kCommitLogCapacity, a ring once full
  size_t commits_oldest = 0;    // index of the oldest entry
  TagPool tags;
  Status input_error;  // a bad RecordLoad, reported by the next Step
  uint32_t record_calls = 0;
  std::atomic<int64_t> steps{0};
  std::atomic<int64_t> hook_ns{0};

  // ---- routing snapshots (any thread reads) ----
  std::unique_ptr<std::atomic<std::shared_ptr<const LayerRouting>>[]> routing;

  // ---- worker handoff (mu) ----
  alignas(64) std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  std::optional<Job> job;
  std::shared_ptr<PlanOut> plan_out;        // latest finished plan (dynamic mode)
  std::shared_ptr<MoveSession> move_order;  // move this session
  std::deque<Report> reports;
  // Failures of the worker not yet returned by Step, oldest first (at most kMaxKeptErrors; later
  // ones are counted in errors_not_kept and logged as they happen).
  static constexpr size_t kMaxKeptErrors = 64;
  std::deque<Status> kept_errors;
  int64_t errors_not_kept = 0;
  std::atomic<bool> has_kept_error{false};  // kept_errors is not empty (lets Step skip the lock)
  RuntimeMetrics metrics;
  std::thread worker;

  // ---------------------------------------------------------------- shared helpers
  void Publish(int l) {
    auto r = std::make_shared<LayerRouting>();
    r->layer = l;
    r->epoch = epoch[l];
    r->ranks = shape.ranks;
    r->slots_per_rank = S;
    auto ids = placement.layer(l);
    r->phy2log.assign(ids.begin(), ids.end());
    r->log2phy = RoutingTable::FromPlacement(placement, l);
    r->expert_map = ExpertMap(placement, l, rank);
    routing[l].store(std::move(r), std::memory_order_release);
  }

  // Any thread, mu not held.
  void KeepError(Status s) {
    std::lock_guard lock(mu);
    KeepErrorLocked(std::move(s));
  }
  void KeepErrorLocked(Status s) {
    if (kept_errors.size() < kMaxKeptErrors) {
      kept_errors.push_back(std::move(s));
      has_kept_error.store(true, std::memory_order_release);
    } else {
      ++errors_not_kept;
    }
  }
  // The oldest kept failure, once; mu held.
  Status TakeErrorLocked() {
    Status s = std::move(kept_errors.front());
    kept_errors.pop_front();
    if (kept_errors.empty()) {
      has_kept_error.store(false, std::memory_order_relaxed);
      if (errors_not_kept > 0) {
        s = Status(s.code(), fmt::format("{} (and {} later failures not kept: see the log)",
                                         s.message(), std::exchange(errors_not_kept, 0)));
      }
    }
    return s;
  }

  // ---------------------------------------------------------------- forward thread
  void AddHookTime(Clock::time_point since, int64_t weight = 1) {
    const int64_t ns =
        weight * std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - since).count();
    hook_ns.store(hook_ns.load(std::memory_order_relaxed) + ns, std::memory_order_relaxed);
  }

  // RecordLoad's time is sampled: one call in kRecordSample is timed and counts for
  // kRecordSample calls, so the clock does not cost more than the loop it measures.
  static constexpr uint32_t kRecordSample = 64;

  // Why RecordLoad rejected a layer's counts: a negative count, or one that would take the
  // window's count of its slot (`window`, before the call) past the int64 range.
  template <typename T>
  Status BadCounts(int layer, std::span<const T> tokens, const int64_t* window) const {
    for (int s = 0; s < S; ++s) {
      if (tokens[s] < 0) {
        return Status::Invalid(
            fmt::format("RecordLoad: layer {}, local slot {}: {} tokens; counts must be >= 0",
                        layer, s, int64_t{tokens[s]}));
      }
    }
    int s = 0;
    while (s < S - 1 && tokens[s] <= std::numeric_limits<int64_t>::max() - window[s]) ++s;
    return Status::Invalid(fmt::format(
        "RecordLoad: layer {}, local slot {}: {} tokens overflow the window's count of {}", layer,
        s, int64_t{tokens[s]}, window[s]));
  }

  template <typename T>
  void Record(int layer, std::span<const T> tokens) {
    const bool timed = record_calls++ % kRecordSample == 0;
    const auto t0 = timed ? Clock::now() : Clock::time_point();
    if (layer < 0 || layer >= shape.layers || static_cast<int>(tokens.size()) != S) {
      if (input_error.ok()) {
        input_error = Status::Invalid(fmt::format(
            "RecordLoad: layer {} with {} counts; expected a layer in [0, {}) and {} counts", layer,
            tokens.size(), shape.layers, S));
      }
      return;
    }
    int64_t* w = &window[static_cast<size_t>(layer) * S];
    // Added as unsigned (wraps, C++20 converts back modulo 2^64): a count and a window count are
    // both >= 0, so a sum past the int64 range reads negative. One OR finds a negative count or
    // sum, and the loop stays branch-free.
    int64_t signs = 0;
    for (int s = 0; s < S; ++s) {
      const int64_t t = tokens[s];
      w[s] = static_cast<int64_t>(static_cast<uint64_t>(w[s]) + static_cast<uint64_t>(t));
      signs |= t | w[s];
    }
    if (signs < 0) {  // rare: undone after the fact
      for (int s = 0; s < S; ++s) {
        w[s] = static_cast<int64_t>(static_cast<uint64_t>(w[s]) -
                                    static_cast<uint64_t>(int64_t{tokens[s]}));
      }
      if (input_error.ok()) input_error = BadCounts(layer, tokens, w);
    }
    if (timed) AddHookTime(t0, kRecordSample);
  }

  Status StepImpl() {
    ++step;
    switch (phase) {
      case Phase::kIdle:
        if (step - window_start >= cfg.expert_heat_collection_interval) return StartGather();
        return Status::Ok();
      case Phase::kGathering:
        return AdvanceGather();
      case Phase::kPlanning:
        return step >= deadline ? StartHashExchange() : Status::Ok();
      case Phase::kHashCheck:
        return step >= deadline ? FinishHashExchange() : Status::Ok();
      case Phase::kMoving:
        return AdvanceMove();
      case Phase::kDisabled:
        return Status::Ok();
    }
    return Status::Ok();
  }

  void ResetWindow() {
    std::fill(window.begin(), window.end(), 0);
    window_start = step;
  }

  // A collective could not be started or finished: ranks may now decide differently, so stop
  // rebalancing for good. Layers in flight are rolled back here (their staging is released).
  Status Disable(Status why, const char* what) {
    request.reset();
    if (phase == Phase::kMoving) {
      for (int l = 0; l < shape.layers; ++l) {
        if (!finished[l]) RollBackLayer(l, /*agreed=*/false);
      }
      EndMove();
    }
    phase = Phase::kDisabled;
    {
      std::lock_guard lock(mu);
      metrics.disabled = true;
    }
    Status s = why.WithPrefix(fmt::format("rank {}: step {}: {}", rank, step, what));
    spdlog::error("eplb {}; rebalancing stopped, the placement in use is kept", s.ToString());
    return s;
  }

  Status Launch(StatusOr<Request> r, const char* what) {
    if (!r.ok()) return Disable(r.status(), what);
    request = std::move(*r);
    return Status::Ok();
  }
  Status Await(const char* what) {
    Status s = comm->Wait(request, std::chrono::milliseconds(cfg.transfer_timeout_ms));
    if (!s.ok()) return Disable(s, what);
    request.reset();
    return Status::Ok();
  }

  Status StartGather() {
    gather_send = window;
    ResetWindow();
    deadline = step + 1 + cfg.algorithm_execution_interval;  // when ranks compare plans
    phase = Phase::kGathering;
    return Launch(comm->IAllGather(std::as_bytes(std::span(gather_send)),
                                   std::as_writable_bytes(std::span(gather_recv))),
                  "load all-gather");
  }

  // Each step after the gather started: hand the load to the worker as soon as the gather is
  // complete here (ranks may see it at different steps; only local work depends on it); at the
  // deadline, wait for it if it is still incomplete, then compare plans (dynamic) or end the cycle
  // (static), at the same step on every rank.
  Status AdvanceGather() {
    if (request) {
      StatusOr<bool> done = comm->Test(request);
      if (!done.ok()) return Disable(done.status(), "load all-gather");
      if (*done) {
        request.reset();
        HandOverLoad();
      }
    }
    if (step < deadline) return Status::Ok();
    if (request) {
      EPLB_RETURN_IF_ERROR(Await("load all-gather"));
      HandOverLoad();
    }
    if (!cfg.dynamic_eplb) {
      phase = Phase::kIdle;  // static mode: the worker records its proposal, nothing moves
      return Status::Ok();
    }
    warned_late = false;
    return StartHashExchange();
  }

  // Folds the gathered per-slot loads into per-logical-expert loads with the placement they were
  // recorded on (no layer commits between the start of a window and its gather) and hands them to
  // the worker.
  void HandOverLoad() {
    Job j;
    j.cycle = ++cycle;
    j.load = LoadMatrix(shape.layers, shape.experts);
    for (int r = 0; r < shape.ranks; ++r) {
      for (int l = 0; l < shape.layers; ++l) {
        const int64_t* tokens = &gather_recv[(static_cast<size_t>(r) * shape.layers + l) * S];
        for (int s = 0; s < S; ++s) {
          j.load.at(l, placement.at(l, r, s)) += static_cast<double>(tokens[s]);
        }
      }
    }
    j.old = placement;
    if (cfg.expert_heat_windows > 1) {
      heat.push_back(std::make_shared<const LoadMatrix>(std::move(j.load)));
      if (static_cast<int>(heat.size()) > cfg.expert_heat_windows) heat.pop_front();
      j.windows.assign(heat.begin(), heat.end());
    }
    {
      std::lock_guard lock(mu);
      job = std::move(j);
      plan_out.reset();
    }
    cv.notify_all();
  }

  Status StartHashExchange() {
    {
      std::lock_guard lock(mu);
      hash_send = plan_out && plan_out->cycle == cycle ? plan_out->hash : kPlanNotReady;
    }
    deadline = step + 1;
    phase = Phase::kHashCheck;
    return Launch(comm->IAllGather(std::as_bytes(std::span(&hash_send, 1)),
                                   std::as_writable_bytes(std::span(hash_recv))),
                  "plan-hash all-gather");
  }

  void SkipCycle() {
    {
      std::lock_guard lock(mu);
      ++metrics.cycles_skipped;
      plan_out.reset();
    }
    phase = Phase::kIdle;
    ResetWindow();
  }

  Status FinishHashExchange() {
    EPLB_RETURN_IF_ERROR(Await("plan-hash all-gather"));
    // Every rank sees the same hashes, so every rank takes the same branch at the same step.
    for (int r = 0; r < shape.ranks; ++r) {
      if (hash_recv[r] == kPlanFailed) {
        spdlog::error("eplb rank {}: cycle {}: planning failed on rank {}; cycle skipped", rank,
                      cycle, r);
        SkipCycle();
        return Status::Ok();
      }
    }
    if (std::find(hash_recv.begin(), hash_recv.end(), kPlanNotReady) != hash_recv.end()) {
      // Some worker is late: the plan lands later; the engine keeps the placement in use.
      if (!warned_late) {
        warned_late = true;
        spdlog::warn(
            "eplb rank {}: cycle {}: a plan is not ready {} steps after the gather "
            "(algorithm_execution_interval); ranks compare again every {} steps",
            rank, cycle, cfg.algorithm_execution_interval, cfg.algorithm_execution_interval);
        std::lock_guard lock(mu);
        ++metrics.cycles_late;
      }
      deadline = step + cfg.algorithm_execution_interval;
      phase = Phase::kPlanning;
      return Status::Ok();
    }
    if (std::adjacent_find(hash_recv.begin(), hash_recv.end(), std::not_equal_to<>()) !=
        hash_recv.end()) {
      spdlog::error("eplb rank {}: cycle {}: ranks computed different plans; cycle skipped", rank,
                    cycle);
      SkipCycle();
      return Status::Ok();
    }
    std::shared_ptr<PlanOut> plan;
    {
      std::lock_guard lock(mu);
      plan = std::move(plan_out);
    }
    if (!plan || plan->cycle != cycle || plan->hash != hash_send) {  // cannot happen
      return Disable(Status::Internal(fmt::format("cycle {}: the agreed plan is missing", cycle)),
                     "starting the moves");
    }
    // Assign tags (identically on every rank) and hand the moves to the worker.
    int moving_layers = 0;
    for (const LayerMoves& lm : plan->moves.layers) moving_layers += lm.copies.empty() ? 0 : 1;
    if (moving_layers > tags.usable()) {
      return Disable(Status::Internal(fmt::format("{} layers to move but only {} message tags "
                                                  "are left unpoisoned by rollbacks",
                                                  moving_layers, tags.usable())),
                     "assigning tags");
    }
    MovePlan moves = std::move(plan->moves);
    for (LayerMoves& lm : moves.layers) lm.tag = lm.copies.empty() ? -1 : tags.Next();
    moving = std::move(plan);
    session = std::make_shared<MoveSession>(std::move(moves));
    outcome.assign(shape.layers, 0);
    for (int l = 0; l < shape.layers; ++l) finished[l] = session->plan().layers[l].tag < 0;
    move_start = Clock::now();
    phase = Phase::kMoving;
    {
      std::lock_guard lock(mu);
      move_order = session;
    }
    cv.notify_all();
    return AdvanceMove();
  }

  // Each step while moving: act on the agreement started last step, then start the next one.
  Status AdvanceMove() {
    if (request) {
      EPLB_RETURN_IF_ERROR(Await("commit all-reduce"));
      for (int l = 0; l < shape.layers; ++l) {
        if (finished[l]) continue;
        if (agree_recv[l] == runtime_internal::kReady) {
          CommitLayer(l);
        } else if (agree_recv[l] == runtime_internal::kFailed) {
          RollBackLayer(l, /*agreed=*/true);
        }
      }
    }
    if (std::all_of(finished.begin(), finished.end(), [](char f) { return f != 0; })) {
      return FinishCycle();
    }
    for (int l = 0; l < shape.layers; ++l) {
      agree_send[l] = finished[l] ? runtime_internal::kReady : session->state(l);
    }
    return Launch(comm->IAllReduce(std::span<const int64_t>(agree_send),
                                   std::span<int64_t>(agree_recv), ReduceOp::kMin),
                  "commit all-reduce");
  }

  void CommitLayer(int l) {
    const LayerMoves& lm = session->plan().layers[l];
    const std::vector<std::byte>& stage = session->Staging(l);
    const size_t expert_bytes = weights->expert_bytes();
    for (size_t i = 0; i < lm.incoming.size(); ++i) {
      weights->Scatter(stage.data() + i * expert_bytes, l, lm.copies[lm.incoming[i]].dst_slot);
    }
    std::span<const int> next = moving->final_placement.layer(l);
    std::copy(next.begin(), next.end(), placement.layer(l).begin());
    ++epoch[l];
    Publish(l);
    if (commits.size() < kCommitLogCapacity) {
      commits.push_back({step, l, epoch[l]});
    } else {
      commits[commits_oldest] = {step, l, epoch[l]};
      commits_oldest = (commits_oldest + 1) % kCommitLogCapacity;
    }
    finished[l] = 1;
    outcome[l] = 1;
    session->Release(l);
    std::lock_guard lock(mu);
    ++metrics.layers_committed;
  }

  // `agreed`: every rank rolls the layer back at this step (else only this rank, see Disable).
  void RollBackLayer(int l, bool agreed) {
    if (agreed) {
      spdlog::error(
          "eplb rank {}: cycle {}: layer {}: transfers failed or timed out on some "
          "rank; rolled back on every rank",
          rank, cycle, l);
    }
    const int tag = session->plan().layers[l].tag;
    tags.Poison(tag);
    finished[l] = 1;
    outcome[l] = -1;
    const bool failed_here = session->state(l) == runtime_internal::kFailed;
    session->Release(l);
    // The layer's copies that reach this rank late are never received: without this they stayed
    // queued (in-process) or kept their senders' sends open (MPI) for good, every rolled-back
    // cycle adding its copies.
    comm->DiscardTag(tag);
    std::lock_guard lock(mu);
    ++metrics.layers_rolled_back;
    if (failed_here) ++metrics.transfers_failed;
  }

  void EndMove() {
    {
      std::lock_guard lock(mu);
      move_order.reset();
    }
    moving.reset();
    session.reset();
  }

  Status FinishCycle() {
    const PlanOut& p = *moving;
    const double transfer_ms = Ms(move_start, Clock::now());
    const int64_t expert_bytes = static_cast<int64_t>(weights->expert_bytes());
    std::vector<double> before(shape.layers), after(shape.layers);
    double sum_max = 0, sum_mean = 0, proposed = 0;
    int64_t slots_changed = 0, bytes = 0, inter_node = 0, committed = 0, rolled_back = 0;
    for (int l = 0; l < shape.layers; ++l) {
      const bool applied = outcome[l] == 1;
      const LayerLoad& now = applied ? p.after[l] : p.before[l];
      before[l] = p.before[l].balancedness();
      after[l] = now.balancedness();
      proposed += p.after[l].balancedness();
      sum_max += now.max;
      sum_mean += now.mean;
      committed += applied;
      rolled_back += outcome[l] == -1;
      if (applied) {
        const LayerMoves& moves = session->plan().layers[l];
        slots_changed += moves.slots_changed;
        bytes += static_cast<int64_t>(moves.incoming.size()) * expert_bytes;
        inter_node += moves.incoming_from_other_nodes;
      }
    }
    Report report;
    {
      std::lock_guard lock(mu);
      RuntimeMetrics& m = metrics;
      ++m.cycles;
      m.last_layer_balancedness_before = std::move(before);
      m.last_layer_balancedness_after = std::move(after);
      m.last_balancedness_before = MeanOf(m.last_layer_balancedness_before);
      m.last_balancedness_after = MeanOf(m.last_layer_balancedness_after);
      m.last_balancedness_proposed = proposed / shape.layers;
      m.last_max_mean_ratio = sum_mean > 0 ? sum_max / sum_mean : 1.0;
      m.last_slots_changed = slots_changed;
      m.last_bytes_moved = bytes;
      m.last_inter_node_bytes = inter_node * expert_bytes;
      m.slots_changed_total += slots_changed;
      m.bytes_moved_total += bytes;
      m.inter_node_bytes_total += inter_node * expert_bytes;
      m.last_algorithm_ms = p.algorithm_ms;
      m.last_transfer_ms = transfer_ms;
      m.transfer_seconds_total += transfer_ms / 1000;
      report.line = fmt::format(
          "eplb rank {}: cycle {}: balancedness {:.4f} -> {:.4f} (proposed {:.4f}), {} layers "
          "committed, {} rolled back, {} slots changed, {:.2f} MiB received{}, algorithm {:.1f} "
          "ms, transfers {:.1f} ms",
          rank, cycle, m.last_balancedness_before, m.last_balancedness_after,
          m.last_balancedness_proposed, committed, rolled_back, slots_changed, bytes / 1048576.0,
          shape.nodes > 1
              ? fmt::format(" ({:.2f} MiB from other nodes)", m.last_inter_node_bytes / 1048576.0)
              : "",
          p.algorithm_ms, transfer_ms);
      if (records && !cfg.expert_map_record_path.empty()) report.record = placement;
      reports.push_back(std::move(report));
    }
    cv.notify_all();
    EndMove();
    phase = Phase::kIdle;
    ResetWindow();  // loads of this window were recorded on a changing placement
    return Status::Ok();
  }

  // ---------------------------------------------------------------- worker thread
  void WorkerLoop() {
    std::unique_lock lock(mu);
    while (true) {
      cv.wait(lock, [&] { return stop || job || move_order || !reports.empty(); });
      if (!reports.empty()) {  // written even when stopping: nothing recorded is lost
        Report r = std::move(reports.front());
        reports.pop_front();
        lock.unlock();
        spdlog::info("{}", r.line);
        Status s =
            r.record ? WriteExpertMap(cfg.expert_map_record_path, *r.record, MapFormat::kVllmAscend)
                     : Status::Ok();
        lock.lock();
        if (!s.ok()) KeepErrorLocked(s.WithPrefix(fmt::format("rank {}: recording", rank)));
      } else if (stop) {
        return;
      } else if (job) {
        Job j = std::move(*job);
        job.reset();
        lock.unlock();
        if (!j.windows.empty()) {
          j.load = LoadMatrix(shape.layers, shape.experts);
          for (const auto& w : j.windows) j.load += *w;
        }
        if (cfg.dynamic_eplb) {
          std::shared_ptr<PlanOut> out = PlanDynamic(j);
          lock.lock();
          plan_out = std::move(out);
        } else {
          ProposeStatic(j);
          lock.lock();
        }
      } else if (move_order) {
        std::shared_ptr<MoveSession> order = move_order;
        lock.unlock();
        mover->Run(
            *order,
            [this, &order] {
              std::lock_guard l(mu);
              return stop || move_order != order;
            },
            [this](Status s) {
              spdlog::error("eplb {}", s.ToString());
              KeepError(std::move(s));
            });
        lock.lock();
        if (move_order == order) move_order.reset();
      }
    }
  }

  // Algorithm + transfer planning; per-layer rank loads of the observed load before and after.
  StatusOr<std::shared_ptr<PlanOut>> ComputePlan(const Job& j) {
    const auto t0 = Clock::now();
    EPLB_ASSIGN_OR_RETURN(BalanceResult result, balancer->Balance({&j.load, shape, &j.old}));
    EPLB_ASSIGN_OR_RETURN(
        TransferPlan plan,
        PlanTransfers(
            j.old, result.placement, shape,
            {.keep_slots = true, .expert_bytes = static_cast<int64_t>(weights->expert_bytes())}));
    auto out = std::make_shared<PlanOut>();
    out->cycle = j.cycle;
    out->hash = PlanHash(j.cycle, plan);
    out->moves.cycle = j.cycle;
    out->moves.layers.resize(shape.layers);
    for (const ExpertCopy& c : plan.copies) {
      LayerMoves& lm = out->moves.layers[c.layer];
      if (c.dst_rank == rank) {
        lm.incoming.push_back(static_cast<int>(lm.copies.size()));
        lm.incoming_from_other_nodes += shape.NodeOf(c.src_rank) != shape.NodeOf(rank);
      }
      if (!c.local) ++lm.slots_changed;
      lm.copies.push_back(c);
    }
    for (int l = 0; l < shape.layers; ++l) {
      out->before.push_back(MeasureLayer(j.load, j.old, l));
      out->after.push_back(MeasureLayer(j.load, plan.final_placement, l));
    }
    out->final_placement = std::move(plan.final_placement);
    out->algorithm_ms = Ms(t0, Clock::now());
    return out;
  }

  std::shared_ptr<PlanOut> PlanDynamic(const Job& j) {
    StatusOr<std::shared_ptr<PlanOut>> out = ComputePlan(j);
    if (!out.ok()) {
      Status s = out.status().WithPrefix(fmt::format("rank {}: cycle {}: planning", rank, j.cycle));
      spdlog::error("eplb {}", s.ToString());
      KeepError(s);
      auto failed = std::make_shared<PlanOut>();
      failed->cycle = j.cycle;
      failed->hash = kPlanFailed;  // every rank skips the cycle
      return failed;
    }
    std::lock_guard lock(mu);
    metrics.algorithm_seconds_total += (*out)->algorithm_ms / 1000;
    return std::move(*out);
  }

  // Static mode: the proposal for the observed load, recorded; the placement in use stays.
  void ProposeStatic(const Job& j) {
    StatusOr<std::shared_ptr<PlanOut>> out = ComputePlan(j);
    if (!out.ok()) {
      KeepError(out.status().WithPrefix(fmt::format("rank {}: cycle {}: planning", rank, j.cycle)));
      return;
    }
    const PlanOut& p = **out;
    Status written = Status::Ok();
    if (records && !cfg.expert_map_record_path.empty()) {
      written =
          WriteExpertMap(cfg.expert_map_record_path, p.final_placement, MapFormat::kVllmAscend);
    }
    std::vector<double> before, proposed;
    double sum_max = 0, sum_mean = 0;
    int64_t would_change = 0;
    for (int l = 0; l < shape.layers; ++l) {
      before.push_back(p.before[l].balancedness());
      proposed.push_back(p.after[l].balancedness());
      sum_max += p.before[l].max;
      sum_mean += p.before[l].mean;
      would_change += p.moves.layers[l].slots_changed;
    }
    const double mean_before = MeanOf(before);
    const double mean_proposed = MeanOf(proposed);
    {
      std::lock_guard lock(mu);
      RuntimeMetrics& m = metrics;
      ++m.cycles;
      m.last_layer_balancedness_before = before;
      m.last_layer_balancedness_after = std::move(before);
      m.last_balancedness_before = m.last_balancedness_after = mean_before;
      m.last_balancedness_proposed = mean_proposed;
      m.last_max_mean_ratio = sum_mean > 0 ? sum_max / sum_mean : 1.0;
      m.last_slots_changed = 0;
      m.last_bytes_moved = 0;
      m.last_inter_node_bytes = 0;
      m.last_algorithm_ms = p.algorithm_ms;
      m.last_transfer_ms = 0;
      m.algorithm_seconds_total += p.algorithm_ms / 1000;
    }
    const bool recorded = records && !cfg.expert_map_record_path.empty() && written.ok();
    spdlog::info(
        "eplb rank {}: cycle {} (static): balancedness {:.4f}, proposed {:.4f} ({} slots would "
        "change), algorithm {:.1f} ms{}",
        rank, j.cycle, mean_before, mean_proposed, would_change, p.algorithm_ms,
        recorded ? ", recorded to " + cfg.expert_map_record_path : "");
    if (!written.ok()) KeepError(written.WithPrefix(fmt::format("rank {}: recording", rank)));
  }
};

// ------------------------------------------------------------------ Controller

Controller::Controller(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Controller::~Controller() {
  {
    std::lock_guard lock(impl_->mu);
    impl_->stop = true;
  }
  impl_->cv.notify_all();
  {
    std::lock_guard lock(impl_->mu);
    if (impl_->move_order) impl_->move_order->Wake();
  }
  if (impl_->worker.joinable()) impl_->worker.join();
}

StatusOr<std::unique_ptr<Controller>> Controller::Create(const RuntimeConfig& config,
                                                         const ModelInfo& model,
                                                         Communicator* comm) {
  // spdlog builds its registry on first use; build it here, behind a guard ThreadSanitizer sees,
  // so controllers of several ranks (threads) logging at once do not race on it.
  static const bool logging_ready = spdlog::default_logger_raw() != nullptr;
  (void)logging_ready;
  if (comm == nullptr) return Status::Invalid("Controller::Create: no communicator");
  if (model.layers <= 0) {
    return Status::Invalid(fmt::format("model: layers must be > 0, got {}", model.layers));
  }
  EPLB_ASSIGN_OR_RETURN(RuntimeStart start, ResolveStart(config, model.experts, comm->size()));
  const int slots_per_rank = start.slots_per_rank;
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.cfg = config;
  m.comm = comm;
  m.rank = comm->rank();
  m.S = slots_per_rank;
  m.shape = Shape{.layers = model.layers,
                  .experts = model.experts,
                  .ranks = comm->size(),
                  .slots_per_rank = slots_per_rank,
                  .nodes = model.nodes,
                  .groups = 1};
  EPLB_RETURN_IF_ERROR(m.shape.Validate().WithPrefix("model"));
  m.records = m.rank % m.shape.ranks_per_node() == 0;
  EPLB_ASSIGN_OR_RETURN(m.balancer, MakeBalancer(config.algorithm, BalancerOptions(config)));
  EPLB_RETURN_IF_ERROR(m.balancer->CheckShape(m.shape).WithPrefix("model"));
  if (start.load) {  // ResolveStart read it and checked its experts
    const std::string where = fmt::format("{}.expert_load_path: {}", kKey, config.expert_load_path);
    if (start.load->layers() != model.layers) {
      return Status::Invalid(
          fmt::format("{}: {} MoE rows (all-zero rows left out: {}), the model has {} MoE layers",
                      where, start.load->layers(), start.load_zero_rows, model.layers));
    }
    StatusOr<BalanceResult> r = m.balancer->Balance({&*start.load, m.shape, nullptr});
    if (!r.ok()) return r.status().WithPrefix(where);
    m.placement = std::move(r->placement);
  } else if (start.map) {  // ResolveStart read it and checked its ranks and slots
    const std::string where = fmt::format("{}.expert_map_path: {}", kKey, config.expert_map_path);
    EPLB_RETURN_IF_ERROR(ValidatePlacement(*start.map, m.shape).WithPrefix(where));
    m.placement = std::move(*start.map);
  } else {
    m.placement = Placement::IdOrder(m.shape);
  }
  m.initial = m.placement;
  const int L = model.layers;
  const int R = comm->size();
  m.weights = std::make_unique<WeightStore>(L, slots_per_rank);
  m.mover = std::make_unique<Mover>(comm, m.weights.get(), m.rank, config.max_layers_in_flight,
                                    std::chrono::milliseconds(config.transfer_timeout_ms));
  m.epoch.assign(L, 0);
  m.window.assign(static_cast<size_t>(L) * slots_per_rank, 0);
  m.gather_recv.assign(static_cast<size_t>(R) * L * slots_per_rank, 0);
  m.hash_recv.assign(R, 0);
  m.agree_send.assign(L, 0);
  m.agree_recv.assign(L, 0);
  m.finished.assign(L, 1);
  m.outcome.assign(L, 0);
  m.metrics.last_layer_balancedness_before.assign(L, 1.0);
  m.metrics.last_layer_balancedness_after.assign(L, 1.0);
  m.routing = std::make_unique<std::atomic<std::shared_ptr<const LayerRouting>>[]>(L);
  for (int l = 0; l < L; ++l) m.Publish(l);
  return std::unique_ptr<Controller>(new Controller(std::move(impl)));
}

int Controller::rank() const { return impl_->rank; }
int Controller::slots_per_rank() const { return impl_->S; }
Communicator* Controller::communicator() const { return impl_->comm; }
const Placement& Controller::initial_placement() const { return impl_->initial; }

Status Controller::RegisterExpert(int layer, int local_slot,
                                  std::vector<std::span<std::byte>> tensors) {
  if (impl_->started) return Status::Precondition("RegisterExpert: called after Start");
  return impl_->weights->Register(layer, local_slot, std::move(tensors));
}

Status Controller::Start() {
  Impl& m = *impl_;
  if (m.started) return Status::Precondition("Start: called twice");
  EPLB_RETURN_IF_ERROR(m.weights->CheckComplete());
  m.started = true;
  m.worker = std::thread([&m] { m.WorkerLoop(); });
  return Status::Ok();
}

void Controller::RecordLoad(int layer, std::span<const int64_t> tokens) {
  impl_->Record(layer, tokens);
}

void Controller::RecordLoad(int layer, std::span<const int32_t> tokens) {
  impl_->Record(layer, tokens);
}

Status Controller::Step() {
  Impl& m = *impl_;
  if (!m.started) return Status::Precondition("Step: called before Start");
  const auto t0 = Clock::now();
  Status s = m.StepImpl();
  if (s.ok() && !m.input_error.ok()) s = std::exchange(m.input_error, Status::Ok());
  if (s.ok() && m.has_kept_error.load(std::memory_order_acquire)) {
    std::lock_guard lock(m.mu);
    s = m.TakeErrorLocked();
  }
  m.steps.store(m.step, std::memory_order_relaxed);
  m.AddHookTime(t0);
  return s;
}

std::shared_ptr<const LayerRouting> Controller::Routing(int layer) const {
  if (layer < 0 || layer >= impl_->shape.layers) return nullptr;
  return impl_->routing[layer].load(std::memory_order_acquire);
}

RuntimeMetrics Controller::Metrics() const {
  const Impl& m = *impl_;
  RuntimeMetrics out;
  {
    std::lock_guard lock(impl_->mu);
    out = m.metrics;
  }
  out.steps = m.steps.load(std::memory_order_relaxed);
  out.hook_seconds_total = static_cast<double>(m.hook_ns.load(std::memory_order_relaxed)) / 1e9;
  out.staging_bytes_peak = m.mover->staging_bytes_peak();
  return out;
}

std::vector<Controller::Commit> Controller::CommitLog() const {
  const auto& log = impl_->commits;
  std::vector<Commit> out(log.begin() + impl_->commits_oldest, log.end());
  out.insert(out.end(), log.begin(), log.begin() + impl_->commits_oldest);
  return out;
}

bool Controller::CycleInProgress() const {
  return impl_->phase != Impl::Phase::kIdle && impl_->phase != Impl::Phase::kDisabled;
}

}  // namespace eplb
