// The per-rank controller: the forward thread's state machine, the worker thread (algorithm,
// planner, weight moves) and the per-layer commit protocol. See include/eplb/runtime.h.
//
// Ownership and threads:
//   forward thread  RecordLoad, Step: owns the load window, the phase of the cycle, every
//                   collective, the placement in use, the commit log; writes slot memory only in
//                   Commit(), for a layer every rank has declared ready.
//   worker thread   owns the planner input/output while computing, the staging buffers and the
//                   point-to-point requests of the moves; reads slot memory (sends, local copies)
//                   only of the old placement, which no commit changes before it is done.
//   handoffs        Job/PlanOut/record under mu_; per-layer ready_ (worker -> forward, release /
//                   acquire) and released_ (forward -> worker) atomics; routing snapshots as
//                   atomic shared_ptrs.
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <thread>

#include "eplb/algorithm.h"
#include "eplb/formats.h"
#include "eplb/planner.h"
#include "eplb/runtime.h"

namespace eplb {
namespace {

using Clock = std::chrono::steady_clock;

double Ms(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

uint64_t Fnv(uint64_t h, int64_t v) {
  for (int i = 0; i < 8; ++i) {
    h ^= static_cast<uint64_t>(v >> (8 * i)) & 0xff;
    h *= 1099511628211ull;
  }
  return h;
}

// A hash of everything a plan decides; ranks compare it before moving anything. Never 0 (0 means
// "no plan yet" in the exchange).
uint64_t PlanHash(const TransferPlan& plan) {
  uint64_t h = 1469598103934665603ull;
  for (int id : plan.final_placement.phy2log()) h = Fnv(h, id);
  for (const ExpertCopy& c : plan.copies) {
    h = Fnv(h, c.layer);
    h = Fnv(h, c.expert);
    h = Fnv(h, (int64_t{c.src_rank} << 32) | c.src_slot);
    h = Fnv(h, (int64_t{c.dst_rank} << 32) | c.dst_slot);
  }
  return h == 0 ? 1 : h;
}

constexpr int kLayerTagSpace = 4096;  // tag = (cycle % 8) * 4096 + layer

}  // namespace

struct Controller::Impl {
  enum class Phase { kIdle, kGathering, kPlanning, kHashCheck, kMoving };
  enum Ready : int64_t { kFailed = -1, kPending = 0, kDone = 1 };

  // What the worker gets at the end of a load window.
  struct Job {
    uint64_t cycle = 0;
    LoadMatrix load;
    Placement old;
  };
  // What the worker hands back.
  struct PlanOut {
    uint64_t cycle = 0;
    TransferPlan plan;
    uint64_t hash = 0;
    double algorithm_ms = 0;
    std::vector<double> before, after;  // per-layer balancedness of the observed load
    double max_mean = 1;
    // Per layer: the indices into plan.copies of the copies this rank receives, in plan order.
    std::vector<std::vector<int>> incoming;
    std::vector<char> layer_changes;  // any copy at all in the layer (on any rank)
  };

  RuntimeConfig cfg;
  ModelInfo model;
  Communicator* comm = nullptr;
  Shape shape;
  int rank = 0;
  int S = 0;  // slots per rank
  std::unique_ptr<Balancer> balancer;

  // Engine memory per (layer, local slot): the expert's tensors.
  std::vector<std::vector<std::span<std::byte>>> tensors;
  std::vector<size_t> tensor_bytes;
  size_t expert_bytes = 0;
  bool started = false;

  // ---- forward thread ----
  Placement placement;          // in use
  std::vector<uint64_t> epoch;  // per layer
  std::vector<int64_t> window;  // tokens per (layer, local slot) in this window
  int64_t step = 0;
  int64_t window_start = 0;
  Phase phase = Phase::kIdle;
  uint64_t cycle = 0;
  int64_t deadline = 0;     // gather: wait step; planning: hash-exchange step
  int64_t gather_step = 0;  // step at which the cycle's loads were gathered
  Request request;          // the one collective in flight
  std::vector<int64_t> gather_send, gather_recv;
  uint64_t hash_send = 0;
  std::vector<uint64_t> hash_recv;
  std::vector<int64_t> agree_send, agree_recv;
  std::vector<char> finished;             // per layer, during a move
  std::shared_ptr<const PlanOut> moving;  // the plan being moved (shared with the worker)
  Clock::time_point move_start;
  std::vector<Commit> commits;
  Status input_error;  // a bad RecordLoad, reported by the next Step

  // ---- routing snapshots (any thread reads) ----
  std::unique_ptr<std::atomic<std::shared_ptr<const LayerRouting>>[]> routing;

  // ---- worker handoff (mu) ----
  std::mutex mu;
  std::condition_variable cv;
  bool stop = false;
  std::optional<Job> job;
  std::shared_ptr<const PlanOut> plan_out;    // latest finished plan
  std::shared_ptr<const PlanOut> move_order;  // set by the forward thread: move this plan
  std::optional<Placement> record;            // placement to write to expert_map_record_path
  Status sticky;                              // first failure of the worker, reported once
  RuntimeMetrics metrics;
  std::thread worker;

  // ---- move state (worker writes, forward reads) ----
  std::unique_ptr<std::atomic<int64_t>[]> ready;
  std::unique_ptr<std::atomic<int>[]> released;
  std::vector<std::vector<std::byte>> staging;  // worker-owned; forward reads a layer once ready

  // ---------------------------------------------------------------- setup
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

  void Fail(Status s) {
    std::lock_guard lock(mu);
    if (sticky.ok()) sticky = std::move(s);
  }

  // ---------------------------------------------------------------- forward thread
  Status StepImpl() {
    ++step;
    switch (phase) {
      case Phase::kIdle:
        if (step - window_start >= cfg.expert_heat_collection_interval) return StartGather();
        return Status::Ok();
      case Phase::kGathering:
        return step >= deadline ? FinishGather() : Status::Ok();
      case Phase::kPlanning:
        return step >= deadline ? StartHashExchange() : Status::Ok();
      case Phase::kHashCheck:
        return FinishHashExchange();
      case Phase::kMoving:
        return AdvanceMove();
    }
    return Status::Ok();
  }

  Status Collective(StatusOr<Request> r) {
    if (!r.ok()) return r.status();
    request = std::move(*r);
    return Status::Ok();
  }
  Status WaitCollective(const char* what) {
    Status s = comm->Wait(request, std::chrono::milliseconds(cfg.transfer_timeout_ms));
    request.reset();
    if (!s.ok()) {
      phase = Phase::kIdle;
      ResetWindow();
      return s.WithPrefix(fmt::format("rank {}: {}", rank, what));
    }
    return s;
  }
  void ResetWindow() {
    std::fill(window.begin(), window.end(), 0);
    window_start = step;
  }

  Status StartGather() {
    gather_send = window;
    ResetWindow();
    deadline = step + 1;
    phase = Phase::kGathering;
    return Collective(comm->IAllGather(std::as_bytes(std::span(gather_send)),
                                       std::as_writable_bytes(std::span(gather_recv))));
  }

  Status FinishGather() {
    EPLB_RETURN_IF_ERROR(WaitCollective("load all-gather"));
    // Fold per-slot loads into per-logical-expert loads with the placement they were recorded on.
    Job j;
    j.cycle = ++cycle;
    j.load = LoadMatrix(shape.layers, shape.experts);
    for (int r = 0; r < shape.ranks; ++r) {
      for (int l = 0; l < shape.layers; ++l) {
        for (int s = 0; s < S; ++s) {
          const int64_t tokens = gather_recv[(static_cast<size_t>(r) * shape.layers + l) * S + s];
          j.load.at(l, placement.at(l, r, s)) += static_cast<double>(tokens);
        }
      }
    }
    j.old = placement;
    {
      std::lock_guard lock(mu);
      job = std::move(j);
      plan_out.reset();
    }
    cv.notify_all();
    if (!cfg.dynamic_eplb) {
      phase = Phase::kIdle;  // static mode: the worker records its proposal, nothing moves
      return Status::Ok();
    }
    gather_step = step;
    deadline = step + cfg.algorithm_execution_interval;
    phase = Phase::kPlanning;
    return Status::Ok();
  }

  Status StartHashExchange() {
    {
      std::lock_guard lock(mu);
      hash_send = plan_out && plan_out->cycle == cycle ? plan_out->hash : 0;
    }
    deadline = step + 1;
    phase = Phase::kHashCheck;
    return Collective(comm->IAllGather(std::as_bytes(std::span(&hash_send, 1)),
                                       std::as_writable_bytes(std::span(hash_recv))));
  }

  Status FinishHashExchange() {
    if (step < deadline) return Status::Ok();
    EPLB_RETURN_IF_ERROR(WaitCollective("plan-hash exchange"));
    const bool all_ready =
        std::none_of(hash_recv.begin(), hash_recv.end(), [](uint64_t h) { return h == 0; });
    if (!all_ready) {
      // Some worker is late: every rank sees the same gathered hashes, so every rank retries at
      // the same step.
      if (deadline - gather_step <= cfg.algorithm_execution_interval + 1) {  // once per cycle
        spdlog::warn(
            "eplb rank {}: cycle {}: some rank's plan is not ready after {} steps; the cycle "
            "waits for it (the engine keeps running on the placement in use)",
            rank, cycle, cfg.algorithm_execution_interval);
      }
      deadline = step + cfg.algorithm_execution_interval;
      phase = Phase::kPlanning;
      return Status::Ok();
    }
    if (std::adjacent_find(hash_recv.begin(), hash_recv.end(), std::not_equal_to<>()) !=
        hash_recv.end()) {
      spdlog::error("eplb rank {}: cycle {}: ranks computed different plans; cycle skipped", rank,
                    cycle);
      std::lock_guard lock(mu);
      ++metrics.cycles_skipped;
      phase = Phase::kIdle;
      ResetWindow();
      return Status::Ok();
    }
    std::shared_ptr<const PlanOut> plan;
    {
      std::lock_guard lock(mu);
      plan = plan_out;
    }
    moving = plan;
    finished.assign(shape.layers, 1);
    for (int l = 0; l < shape.layers; ++l) {
      finished[l] = !plan->layer_changes[l];
      ready[l].store(kPending, std::memory_order_relaxed);
      released[l].store(0, std::memory_order_relaxed);
    }
    move_start = Clock::now();
    phase = Phase::kMoving;
    {
      std::lock_guard lock(mu);
      move_order = plan;
    }
    cv.notify_all();
    return AdvanceMove();
  }

  // Each step while moving: act on the agreement started last step, then start the next one.
  Status AdvanceMove() {
    if (request) {
      EPLB_RETURN_IF_ERROR(WaitCollective("commit agreement"));
      for (int l = 0; l < shape.layers; ++l) {
        if (finished[l]) continue;
        if (agree_recv[l] == kDone) {
          CommitLayer(l);
        } else if (agree_recv[l] == kFailed) {
          RollBackLayer(l);
        }
      }
    }
    if (std::all_of(finished.begin(), finished.end(), [](char f) { return f != 0; })) {
      return FinishCycle();
    }
    for (int l = 0; l < shape.layers; ++l) {
      agree_send[l] = finished[l] ? kDone : ready[l].load(std::memory_order_acquire);
    }
    return Collective(comm->IAllReduce(std::span<const int64_t>(agree_send),
                                       std::span<int64_t>(agree_recv), ReduceOp::kMin));
  }

  void CommitLayer(int l) {
    const PlanOut& p = *moving;
    const std::vector<std::byte>& stage = staging[l];
    for (size_t i = 0; i < p.incoming[l].size(); ++i) {
      const ExpertCopy& c = p.plan.copies[p.incoming[l][i]];
      size_t offset = i * expert_bytes;
      for (std::span<std::byte> t : tensors[static_cast<size_t>(l) * S + c.dst_slot]) {
        std::memcpy(t.data(), stage.data() + offset, t.size());
        offset += t.size();
      }
    }
    for (int s = 0; s < shape.slots(); ++s) {
      placement.layer(l)[s] = p.plan.final_placement.layer(l)[s];
    }
    ++epoch[l];
    Publish(l);
    commits.push_back({step, l, epoch[l]});
    finished[l] = 1;
    released[l].store(1, std::memory_order_release);
    std::lock_guard lock(mu);
    ++metrics.layers_committed;
  }

  void RollBackLayer(int l) {
    spdlog::error("eplb rank {}: cycle {}: layer {} transfers failed on some rank; rolled back",
                  rank, cycle, l);
    finished[l] = 1;
    released[l].store(1, std::memory_order_release);
    std::lock_guard lock(mu);
    ++metrics.layers_rolled_back;
  }

  Status FinishCycle() {
    const PlanOut& p = *moving;
    const double transfer_ms = Ms(move_start, Clock::now());
    int64_t received = 0;
    for (const auto& in : p.incoming) received += static_cast<int64_t>(in.size());
    {
      std::lock_guard lock(mu);
      RuntimeMetrics& m = metrics;
      ++m.cycles;
      m.last_layer_balancedness_before = p.before;
      m.last_layer_balancedness_after = p.after;
      m.last_balancedness_before = Mean(p.before);
      m.last_balancedness_after = Mean(p.after);
      m.last_max_mean_ratio = p.max_mean;
      m.last_slots_changed = p.plan.slots_changed;
      m.last_bytes_moved = received * static_cast<int64_t>(expert_bytes);
      m.slots_changed_total += m.last_slots_changed;
      m.bytes_moved_total += m.last_bytes_moved;
      m.last_algorithm_ms = p.algorithm_ms;
      m.last_transfer_ms = transfer_ms;
      m.transfer_seconds_total += transfer_ms / 1000;
      if (!cfg.expert_map_record_path.empty()) record = placement;
      move_order.reset();
      spdlog::info(
          "eplb rank {}: cycle {}: balancedness {:.4f} -> {:.4f}, {} slots changed, {:.1f} MiB "
          "received, algorithm {:.1f} ms, transfers {:.1f} ms, {} layers rolled back so far",
          rank, cycle, m.last_balancedness_before, m.last_balancedness_after, m.last_slots_changed,
          m.last_bytes_moved / 1048576.0, m.last_algorithm_ms, transfer_ms, m.layers_rolled_back);
    }
    cv.notify_all();
    moving.reset();
    phase = Phase::kIdle;
    ResetWindow();  // loads of this window were recorded on a changing placement
    return Status::Ok();
  }

  static double Mean(const std::vector<double>& v) {
    if (v.empty()) return 1.0;
    double s = 0;
    for (double x : v) s += x;
    return s / static_cast<double>(v.size());
  }

  // ---------------------------------------------------------------- worker thread
  void WorkerLoop() {
    std::shared_ptr<const PlanOut> moved;  // the last plan moved; each is moved once
    std::unique_lock lock(mu);
    while (true) {
      cv.wait(lock, [&] { return stop || job || record || (move_order && move_order != moved); });
      if (stop && !record) return;  // a pending record is still written: nothing is lost
      if (job && !stop) {
        Job j = std::move(*job);
        job.reset();
        lock.unlock();
        auto out = ComputePlan(std::move(j));
        lock.lock();
        if (out.ok()) {
          plan_out = std::move(*out);
        } else if (sticky.ok()) {
          sticky = out.status();
        }
      } else if (record) {
        Placement p = std::move(*record);
        record.reset();
        lock.unlock();
        Status s = WriteExpertMap(cfg.expert_map_record_path, p, MapFormat::kVllmAscend);
        lock.lock();
        if (!s.ok() && sticky.ok()) sticky = s;
      } else if (!stop) {
        moved = move_order;
        lock.unlock();
        Move(*moved);
        lock.lock();
      }
    }
  }

  StatusOr<std::shared_ptr<const PlanOut>> ComputePlan(Job j) {
    const auto t0 = Clock::now();
    EPLB_ASSIGN_OR_RETURN(BalanceResult result, balancer->Balance({&j.load, shape, &j.old}));
    EPLB_ASSIGN_OR_RETURN(
        TransferPlan plan,
        PlanTransfers(j.old, result.placement, shape,
                      {.keep_slots = true, .expert_bytes = static_cast<int64_t>(expert_bytes)}));
    auto out = std::make_shared<PlanOut>();
    out->cycle = j.cycle;
    out->algorithm_ms = Ms(t0, Clock::now());
    out->before = Balancedness(j.load, j.old);
    out->after = Balancedness(j.load, plan.final_placement);
    double worst = 1.0;
    for (double b : out->before) worst = std::min(worst, b);
    out->max_mean = worst > 0 ? 1.0 / worst : 0.0;
    out->incoming.assign(shape.layers, {});
    out->layer_changes.assign(shape.layers, 0);
    for (size_t i = 0; i < plan.copies.size(); ++i) {
      const ExpertCopy& c = plan.copies[i];
      out->layer_changes[c.layer] = 1;
      if (c.dst_rank == rank) out->incoming[c.layer].push_back(static_cast<int>(i));
    }
    out->hash = PlanHash(plan);
    {
      std::lock_guard lock(mu);
      metrics.algorithm_seconds_total += out->algorithm_ms / 1000;
      if (!cfg.dynamic_eplb) {
        // Static mode: record the proposal for the load observed on the unchanged placement.
        metrics.last_layer_balancedness_before = out->before;
        metrics.last_layer_balancedness_after = out->after;
        metrics.last_balancedness_before = Mean(out->before);
        metrics.last_balancedness_after = Mean(out->after);
        metrics.last_algorithm_ms = out->algorithm_ms;
      }
    }
    if (!cfg.dynamic_eplb && !cfg.expert_map_record_path.empty()) {
      EPLB_RETURN_IF_ERROR(
          WriteExpertMap(cfg.expert_map_record_path, plan.final_placement, MapFormat::kVllmAscend));
    }
    out->plan = std::move(plan);
    return std::shared_ptr<const PlanOut>(std::move(out));
  }

  // Moves the plan's layers, at most max_layers_in_flight at a time, until the forward thread has
  // committed or rolled back every layer (or the controller stops).
  void Move(const PlanOut& p) {
    struct InFlight {
      int layer = 0;
      std::vector<Request> requests;
      Clock::time_point start;
    };
    const int tag_base = static_cast<int>(p.cycle % 8) * kLayerTagSpace;
    std::vector<InFlight> flight;
    int next_layer = 0;
    auto stopping = [&] {
      std::lock_guard lock(mu);
      return stop;
    };
    while (!stopping()) {
      // Free the staging of layers the forward thread is done with.
      std::erase_if(flight, [&](InFlight& f) {
        if (!released[f.layer].load(std::memory_order_acquire)) return false;
        f.requests.clear();  // cancels whatever a failed layer left pending
        std::vector<std::byte>().swap(staging[f.layer]);
        return true;
      });
      // Start layers while there is room.
      while (static_cast<int>(flight.size()) < cfg.max_layers_in_flight &&
             next_layer < shape.layers) {
        const int l = next_layer++;
        if (!p.layer_changes[l]) continue;
        InFlight f{l, {}, Clock::now()};
        if (Status s = StartLayer(p, l, tag_base + l, &f.requests); !s.ok()) {
          Fail(s);
          ready[l].store(kFailed, std::memory_order_release);
        }
        flight.push_back(std::move(f));
      }
      if (flight.empty() && next_layer >= shape.layers) {
        bool all_released = true;
        for (int l = 0; l < shape.layers; ++l) {
          all_released &= !p.layer_changes[l] || released[l].load(std::memory_order_acquire);
        }
        if (all_released) return;
      }
      // Progress the transfers of each started layer.
      bool progressed = false;
      for (InFlight& f : flight) {
        if (ready[f.layer].load(std::memory_order_relaxed) != kPending) continue;
        bool done = true;
        for (Request& r : f.requests) {
          if (!r) continue;
          auto t = comm->Test(r);
          if (!t.ok()) {
            Fail(t.status().WithPrefix(fmt::format("rank {}: layer {} transfer", rank, f.layer)));
            ready[f.layer].store(kFailed, std::memory_order_release);
            done = false;
            break;
          }
          if (*t) {
            r.reset();
            progressed = true;
          } else {
            done = false;
          }
        }
        if (ready[f.layer].load(std::memory_order_relaxed) != kPending) continue;
        if (done) {
          ready[f.layer].store(kDone, std::memory_order_release);
        } else if (Ms(f.start, Clock::now()) > cfg.transfer_timeout_ms) {
          spdlog::error("eplb rank {}: layer {}: transfers timed out after {} ms", rank, f.layer,
                        cfg.transfer_timeout_ms);
          ready[f.layer].store(kFailed, std::memory_order_release);
        }
      }
      if (!progressed) std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }

  // Posts a layer's receives (into staging) and sends (from slot memory), and does its local
  // copies. Every rank walks the plan's copies in the same order, so messages between a pair of
  // ranks with the layer's tag match one tensor after another.
  Status StartLayer(const PlanOut& p, int l, int tag, std::vector<Request>* requests) {
    std::vector<std::byte>& stage = staging[l];
    stage.assign(p.incoming[l].size() * expert_bytes, std::byte{0});
    size_t incoming_index = 0;
    for (const ExpertCopy& c : p.plan.copies) {
      if (c.layer != l) continue;
      if (c.dst_rank == rank) {
        size_t offset = incoming_index++ * expert_bytes;
        if (c.local) {
          for (std::span<std::byte> t : tensors[static_cast<size_t>(l) * S + c.src_slot]) {
            std::memcpy(stage.data() + offset, t.data(), t.size());
            offset += t.size();
          }
        } else {
          for (size_t k = 0; k < tensor_bytes.size(); ++k) {
            EPLB_ASSIGN_OR_RETURN(
                Request r,
                comm->IRecv(c.src_rank, tag, std::span(stage.data() + offset, tensor_bytes[k])));
            requests->push_back(std::move(r));
            offset += tensor_bytes[k];
          }
        }
      } else if (c.src_rank == rank) {
        for (std::span<std::byte> t : tensors[static_cast<size_t>(l) * S + c.src_slot]) {
          EPLB_ASSIGN_OR_RETURN(Request r, comm->ISend(c.dst_rank, tag, t));
          requests->push_back(std::move(r));
        }
      }
    }
    return Status::Ok();
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
  if (impl_->worker.joinable()) impl_->worker.join();
}

StatusOr<std::unique_ptr<Controller>> Controller::Create(const RuntimeConfig& config,
                                                         const ModelInfo& model,
                                                         Communicator* comm) {
  // spdlog builds its registry on first use; build it here, behind a guard ThreadSanitizer sees,
  // so controllers of several ranks (threads) logging at once do not race on it.
  static const bool logging_ready = spdlog::default_logger_raw() != nullptr;
  (void)logging_ready;
  if (comm == nullptr) return Status::Invalid("controller: no communicator");
  if (model.layers <= 0 || model.layers > kLayerTagSpace) {
    return Status::Invalid(
        fmt::format("controller: layers must be in [1, {}], got {}", kLayerTagSpace, model.layers));
  }
  EPLB_ASSIGN_OR_RETURN(int slots_per_rank,
                        ResolveSlotsPerRank(config, model.experts, comm->size()));
  auto impl = std::make_unique<Impl>();
  impl->cfg = config;
  impl->model = model;
  impl->comm = comm;
  impl->rank = comm->rank();
  impl->S = slots_per_rank;
  impl->shape = Shape{.layers = model.layers,
                      .experts = model.experts,
                      .ranks = comm->size(),
                      .slots_per_rank = slots_per_rank,
                      .nodes = model.nodes,
                      .groups = 1};
  EPLB_RETURN_IF_ERROR(impl->shape.Validate().WithPrefix("controller"));
  AlgorithmOptions options = config.algorithm_options;
  EPLB_ASSIGN_OR_RETURN(impl->balancer, MakeBalancer(config.algorithm, options));
  if (!config.expert_map_path.empty()) {
    EPLB_ASSIGN_OR_RETURN(MapFile map,
                          ReadExpertMap(config.expert_map_path, model.experts, comm->size()));
    EPLB_RETURN_IF_ERROR(
        ValidatePlacement(map.placement, impl->shape).WithPrefix(config.expert_map_path));
    impl->placement = std::move(map.placement);
  } else {
    impl->placement = Placement::IdOrder(impl->shape);
  }
  const int L = model.layers;
  const int R = comm->size();
  impl->epoch.assign(L, 0);
  impl->tensors.assign(static_cast<size_t>(L) * slots_per_rank, {});
  impl->window.assign(static_cast<size_t>(L) * slots_per_rank, 0);
  impl->gather_recv.assign(static_cast<size_t>(R) * L * slots_per_rank, 0);
  impl->hash_recv.assign(R, 0);
  impl->agree_send.assign(L, 0);
  impl->agree_recv.assign(L, 0);
  impl->finished.assign(L, 1);
  impl->staging.resize(L);
  impl->ready = std::make_unique<std::atomic<int64_t>[]>(L);
  impl->released = std::make_unique<std::atomic<int>[]>(L);
  impl->routing = std::make_unique<std::atomic<std::shared_ptr<const LayerRouting>>[]>(L);
  for (int l = 0; l < L; ++l) impl->Publish(l);
  return std::unique_ptr<Controller>(new Controller(std::move(impl)));
}

int Controller::slots_per_rank() const { return impl_->S; }
const Placement& Controller::initial_placement() const { return impl_->placement; }

Status Controller::RegisterExpert(int layer, int local_slot,
                                  std::vector<std::span<std::byte>> tensors) {
  Impl& m = *impl_;
  if (m.started) return Status::Precondition("RegisterExpert after Start");
  if (layer < 0 || layer >= m.shape.layers || local_slot < 0 || local_slot >= m.S) {
    return Status::Invalid(
        fmt::format("RegisterExpert: layer {} slot {} is outside {} layers x {} "
                    "slots",
                    layer, local_slot, m.shape.layers, m.S));
  }
  if (tensors.empty()) {
    return Status::Invalid(
        fmt::format("RegisterExpert: layer {} slot {}: no tensors", layer, local_slot));
  }
  std::vector<size_t> sizes;
  for (auto t : tensors) sizes.push_back(t.size());
  if (m.tensor_bytes.empty()) {
    m.tensor_bytes = sizes;
  } else if (sizes != m.tensor_bytes) {
    return Status::Invalid(fmt::format(
        "RegisterExpert: layer {} slot {}: tensor sizes differ from the first registered expert",
        layer, local_slot));
  }
  m.tensors[static_cast<size_t>(layer) * m.S + local_slot] = std::move(tensors);
  return Status::Ok();
}

Status Controller::Start() {
  Impl& m = *impl_;
  if (m.started) return Status::Precondition("Start called twice");
  for (size_t i = 0; i < m.tensors.size(); ++i) {
    if (m.tensors[i].empty()) {
      return Status::Precondition(
          fmt::format("Start: layer {} slot {} has no registered expert", i / m.S, i % m.S));
    }
  }
  m.expert_bytes = 0;
  for (size_t b : m.tensor_bytes) m.expert_bytes += b;
  m.started = true;
  m.worker = std::thread([&m] { m.WorkerLoop(); });
  return Status::Ok();
}

void Controller::RecordLoad(int layer, std::span<const int64_t> tokens) {
  Impl& m = *impl_;
  if (layer < 0 || layer >= m.shape.layers || static_cast<int>(tokens.size()) != m.S) {
    if (m.input_error.ok()) {
      m.input_error = Status::Invalid(fmt::format(
          "RecordLoad: layer {} with {} counts; expected a layer in [0, {}) and {} counts", layer,
          tokens.size(), m.shape.layers, m.S));
    }
    return;
  }
  int64_t* w = &m.window[static_cast<size_t>(layer) * m.S];
  for (int s = 0; s < m.S; ++s) w[s] += tokens[s];
}

Status Controller::Step() {
  Impl& m = *impl_;
  if (!m.started) return Status::Precondition("Step before Start");
  const auto t0 = Clock::now();
  Status s = m.StepImpl();
  if (s.ok() && !m.input_error.ok()) s = std::exchange(m.input_error, Status::Ok());
  std::lock_guard lock(m.mu);
  m.metrics.steps = m.step;
  m.metrics.hook_seconds_total += Ms(t0, Clock::now()) / 1000;
  if (s.ok() && !m.sticky.ok()) s = std::exchange(m.sticky, Status::Ok());
  return s;
}

std::shared_ptr<const LayerRouting> Controller::Routing(int layer) const {
  if (layer < 0 || layer >= impl_->shape.layers) return nullptr;
  return impl_->routing[layer].load(std::memory_order_acquire);
}

RuntimeMetrics Controller::Metrics() const {
  std::lock_guard lock(impl_->mu);
  return impl_->metrics;
}

std::vector<Controller::Commit> Controller::CommitLog() const { return impl_->commits; }

bool Controller::CycleInProgress() const { return impl_->phase != Impl::Phase::kIdle; }

}  // namespace eplb
