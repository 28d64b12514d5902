// One rank of the expert-parallel MoE engine: routing, dispatch, expert FFN, combine. See
// include/eplb/engine.h for the model, the replica choice and the exchange.
//
// Ownership and threads: everything here belongs to the forward thread (the one calling Forward),
// except the slot memory, which the controller's worker reads (to send experts of the placement in
// use) and the controller's commit writes, inside Step(), on the forward thread, between steps.
#include <fmt/format.h>

#include <algorithm>
#include <cstring>

#include "engine/internal/model.h"

namespace eplb {

using engine_internal::Choice;

struct MoeEngine::Impl {
  EngineOptions o;
  Communicator* comm = nullptr;
  int rank = 0;
  int R = 0;                  // ranks
  int S = 0;                  // slots per rank
  std::vector<float> router;  // [layer][expert][hidden]
  // [layer][local slot][gate | up | down]; allocated once: the controller holds spans into it.
  std::vector<float> slots;
  std::vector<std::shared_ptr<const LayerRouting>> fixed;  // the routing without a controller
  std::unique_ptr<Controller> ctl;                         // destroyed first (see ~Impl)
  Status failure;                                          // sticky: the first failed exchange

  // Per-step scratch, reused from step to step.
  std::vector<float> x, out, logits, batch_x, batch_y, g, u;
  std::vector<Choice> choices;
  std::vector<int> dest, slot_of;  // per choice: destination rank, slot there
  std::vector<int64_t> pos;        // per choice: row in the destination's message
  std::vector<int64_t> send_rows, recv_rows, slot_rows, offsets, fill;
  std::vector<int64_t> counts_send, counts_all;
  std::vector<int64_t> row_index;  // per received row (ranks in order): its row in batch_x
  std::vector<std::vector<std::byte>> dispatch_out, dispatch_in;  // per rank
  std::vector<std::vector<float>> result_out, result_in;          // per rank

  ~Impl() { ctl.reset(); }

  size_t ExpertFloats() const { return 3 * static_cast<size_t>(o.ffn) * o.hidden; }
  float* Slot(int layer, int slot) {
    return &slots[(static_cast<size_t>(layer) * S + slot) * ExpertFloats()];
  }
  size_t RowBytes() const { return sizeof(int32_t) + sizeof(float) * o.hidden; }
  std::chrono::milliseconds Timeout() const { return std::chrono::milliseconds(o.timeout_ms); }

  std::shared_ptr<const LayerRouting> Routing(int layer) const {
    if (layer < 0 || layer >= o.layers) return nullptr;
    return ctl ? ctl->Routing(layer) : fixed[layer];
  }

  Status Init(const Placement& p) {
    R = comm->size();
    rank = comm->rank();
    S = p.slots_per_rank();
    router.reserve(static_cast<size_t>(o.layers) * o.experts * o.hidden);
    for (int l = 0; l < o.layers; ++l) {
      const std::vector<float> w = engine_internal::RouterWeights(o, l);
      router.insert(router.end(), w.begin(), w.end());
    }
    const size_t n = static_cast<size_t>(o.ffn) * o.hidden;
    slots.resize(static_cast<size_t>(o.layers) * S * ExpertFloats());
    for (int l = 0; l < o.layers; ++l) {
      for (int s = 0; s < S; ++s) {
        const ExpertWeights w = MakeExpertWeights(o, l, p.at(l, rank, s));
        float* dst = Slot(l, s);
        std::copy(w.gate.begin(), w.gate.end(), dst);
        std::copy(w.up.begin(), w.up.end(), dst + n);
        std::copy(w.down.begin(), w.down.end(), dst + 2 * n);
        if (ctl) {
          std::span<float> all(dst, ExpertFloats());
          EPLB_RETURN_IF_ERROR(ctl->RegisterExpert(
              l, s,
              {std::as_writable_bytes(all.subspan(0, n)), std::as_writable_bytes(all.subspan(n, n)),
               std::as_writable_bytes(all.subspan(2 * n, n))}));
        }
      }
      if (!ctl) {
        auto r = std::make_shared<LayerRouting>();
        r->layer = l;
        r->ranks = R;
        r->slots_per_rank = S;
        auto ids = p.layer(l);
        r->phy2log.assign(ids.begin(), ids.end());
        r->log2phy = RoutingTable::FromPlacement(p, l);
        r->expert_map = ExpertMap(p, l, rank);
        fixed.push_back(std::move(r));
      }
    }
    if (ctl) EPLB_RETURN_IF_ERROR(ctl->Start());
    send_rows.resize(R);
    recv_rows.resize(R);
    counts_send.resize(1 + R);
    counts_all.resize(static_cast<size_t>(R) * (1 + R));
    dispatch_out.resize(R);
    dispatch_in.resize(R);
    result_out.resize(R);
    result_in.resize(R);
    return Status::Ok();
  }

  StatusOr<StepResult> ForwardImpl(int64_t step, int shift) {
    StepResult res;
    std::vector<std::shared_ptr<const LayerRouting>> routing(o.layers);
    for (int l = 0; l < o.layers; ++l) routing[l] = Routing(l);
    res.epochs.resize(o.layers);
    res.expert_cpu_ms.resize(o.layers);
    res.tokens_per_slot.resize(o.layers);
    x = MakeEngineInputs(o, step, rank);
    for (int l = 0; l < o.layers; ++l) {
      res.epochs[l] = routing[l]->epoch;
      EPLB_RETURN_IF_ERROR(
          Layer(l, *routing[l], shift, res).WithPrefix(fmt::format("rank {} layer {}", rank, l)));
    }
    res.outputs = x;
    if (o.gather_timings) EPLB_RETURN_IF_ERROR(GatherTimings(res));
    if (ctl) res.controller_status = ctl->Step();
    return res;
  }

  Status Layer(int l, const LayerRouting& r, int shift, StepResult& res) {
    const int T = o.tokens, H = o.hidden, F = o.ffn, K = o.top_k;
    const std::vector<float> bias = engine_internal::RouterBias(o, l, shift);
    engine_internal::Route(o, x.data(), T, &router[static_cast<size_t>(l) * o.experts * H],
                           bias.data(), logits, choices);

    // 1. Replica choice: a replica on this rank, else spread by global token index.
    const size_t A = choices.size();
    dest.resize(A);
    pos.resize(A);
    slot_of.resize(A);
    std::fill(send_rows.begin(), send_rows.end(), 0);
    for (size_t a = 0; a < A; ++a) {
      const int e = choices[a].expert;
      int phys = -1;
      if (r.expert_map[e] >= 0) {
        phys = rank * S + r.expert_map[e];
      } else {
        const std::span<const int> reps = r.log2phy.replicas(e);
        if (reps.empty()) {
          return Status::Internal(
              fmt::format("logical expert {} has no replica (epoch {})", e, r.epoch));
        }
        const int64_t token = static_cast<int64_t>(rank) * T + static_cast<int64_t>(a) / K;
        phys = reps[token % static_cast<int64_t>(reps.size())];
      }
      dest[a] = phys / S;
      slot_of[a] = phys % S;
      pos[a] = send_rows[dest[a]]++;
    }

    // 2. Pack one message per destination: the slot ids of its rows, then the rows.
    for (int d = 0; d < R; ++d) dispatch_out[d].resize(send_rows[d] * RowBytes());
    for (size_t a = 0; a < A; ++a) {
      std::byte* msg = dispatch_out[dest[a]].data();
      const int32_t slot = slot_of[a];
      std::memcpy(msg + pos[a] * sizeof(int32_t), &slot, sizeof slot);
      std::memcpy(msg + send_rows[dest[a]] * sizeof(int32_t) +
                      static_cast<size_t>(pos[a]) * H * sizeof(float),
                  &x[(a / K) * H], H * sizeof(float));
    }

    // 3. Who sends how many rows to whom, and the epoch everyone routes with.
    counts_send[0] = static_cast<int64_t>(r.epoch);
    std::copy(send_rows.begin(), send_rows.end(), counts_send.begin() + 1);
    EPLB_RETURN_IF_ERROR(comm->AllGather(std::as_bytes(std::span(counts_send)),
                                         std::as_writable_bytes(std::span(counts_all)), Timeout())
                             .WithPrefix("dispatch counts"));
    for (int q = 0; q < R; ++q) {
      const int64_t* c = &counts_all[static_cast<size_t>(q) * (1 + R)];
      if (c[0] != counts_all[0]) {
        return Status::Aborted(fmt::format(
            "ranks route with different placements: rank 0 with epoch {}, rank {} with epoch {}",
            counts_all[0], q, c[0]));
      }
      recv_rows[q] = c[1 + rank];
    }

    // 4. Dispatch.
    {
      std::vector<Request> requests;
      for (int q = 0; q < R; ++q) {
        if (q == rank || recv_rows[q] == 0) continue;
        dispatch_in[q].resize(recv_rows[q] * RowBytes());
        EPLB_ASSIGN_OR_RETURN(Request req, comm->IRecv(q, 2 * l, std::span(dispatch_in[q])));
        requests.push_back(std::move(req));
      }
      for (int q = 0; q < R; ++q) {
        if (q == rank || send_rows[q] == 0) continue;
        EPLB_ASSIGN_OR_RETURN(Request req, comm->ISend(q, 2 * l, std::span(dispatch_out[q])));
        requests.push_back(std::move(req));
      }
      EPLB_RETURN_IF_ERROR(comm->WaitAll(requests, Timeout()).WithPrefix("dispatch"));
    }
    auto message = [&](int q) -> const std::vector<std::byte>& {
      return q == rank ? dispatch_out[rank] : dispatch_in[q];
    };

    // 5. Rows per local slot: the load the controller sees.
    slot_rows.assign(S, 0);
    int64_t total = 0;
    for (int q = 0; q < R; ++q) {
      const std::byte* msg = message(q).data();
      for (int64_t i = 0; i < recv_rows[q]; ++i) {
        int32_t slot;
        std::memcpy(&slot, msg + i * sizeof(int32_t), sizeof slot);
        if (slot < 0 || slot >= S) {
          return Status::Internal(
              fmt::format("rank {} sent a row for slot {}; slots are 0..{}", q, slot, S - 1));
        }
        ++slot_rows[slot];
      }
      total += recv_rows[q];
    }
    res.tokens_per_slot[l] = slot_rows;
    if (ctl) ctl->RecordLoad(l, slot_rows);

    // 6. The experts: rows grouped by slot (ranks in order, then rows in order), one FFN per slot.
    const double t0 = engine_internal::ThreadCpuMs();
    offsets.assign(S + 1, 0);
    for (int s = 0; s < S; ++s) offsets[s + 1] = offsets[s] + slot_rows[s];
    fill.assign(offsets.begin(), offsets.end() - 1);
    batch_x.resize(total * H);
    batch_y.resize(total * H);
    row_index.resize(total);
    int64_t base = 0;
    for (int q = 0; q < R; base += recv_rows[q], ++q) {
      const std::byte* msg = message(q).data();
      const std::byte* rows = msg + recv_rows[q] * sizeof(int32_t);
      for (int64_t i = 0; i < recv_rows[q]; ++i) {
        int32_t slot;
        std::memcpy(&slot, msg + i * sizeof(int32_t), sizeof slot);
        const int64_t at = fill[slot]++;
        std::memcpy(&batch_x[at * H], rows + i * H * sizeof(float), H * sizeof(float));
        row_index[base + i] = at;
      }
    }
    const int64_t most = S == 0 ? 0 : *std::max_element(slot_rows.begin(), slot_rows.end());
    g.resize(most * F);
    u.resize(most * F);
    const size_t n = static_cast<size_t>(F) * H;
    for (int s = 0; s < S; ++s) {
      if (slot_rows[s] == 0) continue;
      const float* w = Slot(l, s);
      engine_internal::SwiGlu(&batch_x[offsets[s] * H], static_cast<int>(slot_rows[s]), w, w + n,
                              w + 2 * n, H, F, g.data(), u.data(), &batch_y[offsets[s] * H]);
    }
    base = 0;
    for (int q = 0; q < R; base += recv_rows[q], ++q) {
      result_out[q].resize(recv_rows[q] * H);
      for (int64_t i = 0; i < recv_rows[q]; ++i) {
        std::copy_n(&batch_y[static_cast<size_t>(row_index[base + i]) * H], H,
                    &result_out[q][i * H]);
      }
    }
    res.expert_cpu_ms[l] = engine_internal::ThreadCpuMs() - t0;

    // 7. Return the outputs to the tokens' ranks, in the order the rows came.
    {
      std::vector<Request> requests;
      for (int q = 0; q < R; ++q) {
        if (q == rank || send_rows[q] == 0) continue;
        result_in[q].resize(send_rows[q] * H);
        EPLB_ASSIGN_OR_RETURN(
            Request req,
            comm->IRecv(q, 2 * l + 1, std::as_writable_bytes(std::span(result_in[q]))));
        requests.push_back(std::move(req));
      }
      for (int q = 0; q < R; ++q) {
        if (q == rank || recv_rows[q] == 0) continue;
        EPLB_ASSIGN_OR_RETURN(Request req,
                              comm->ISend(q, 2 * l + 1, std::as_bytes(std::span(result_out[q]))));
        requests.push_back(std::move(req));
      }
      EPLB_RETURN_IF_ERROR(comm->WaitAll(requests, Timeout()).WithPrefix("combine"));
    }

    // 8. Combine in top-k order, on top of the residual.
    out = x;
    for (size_t a = 0; a < A; ++a) {
      const std::vector<float>& y = dest[a] == rank ? result_out[rank] : result_in[dest[a]];
      engine_internal::AddScaled(choices[a].weight, &y[static_cast<size_t>(pos[a]) * H], H,
                                 &out[(a / K) * H]);
    }
    x.swap(out);
    for (int q = 0; q < R; ++q) {
      if (q != rank) res.rows_sent += send_rows[q];
    }
    return Status::Ok();
  }

  Status GatherTimings(StepResult& res) {
    const int L = o.layers;
    std::vector<double> all(static_cast<size_t>(R) * L);
    EPLB_RETURN_IF_ERROR(comm->AllGather(std::as_bytes(std::span(res.expert_cpu_ms)),
                                         std::as_writable_bytes(std::span(all)), Timeout())
                             .WithPrefix(fmt::format("rank {}: gathering expert times", rank)));
    res.rank_expert_cpu_ms.assign(R, std::vector<double>(L));
    for (int q = 0; q < R; ++q) {
      std::copy_n(&all[static_cast<size_t>(q) * L], L, res.rank_expert_cpu_ms[q].begin());
    }
    for (int l = 0; l < L; ++l) {
      double most = 0, sum = 0;
      for (int q = 0; q < R; ++q) {
        most = std::max(most, res.rank_expert_cpu_ms[q][l]);
        sum += res.rank_expert_cpu_ms[q][l];
      }
      res.critical_path_ms += most;
      res.mean_path_ms += sum / R;
    }
    return Status::Ok();
  }
};

namespace {

Status CheckPlacement(const EngineOptions& o, const Communicator& comm, const Placement& p,
                      const char* what) {
  if (p.layers() != o.layers || p.experts() != o.experts || p.ranks() != comm.size()) {
    return Status::Invalid(fmt::format(
        "MoeEngine: {} has {} layers, {} experts and {} ranks; expected {} layers (options), {} "
        "experts (options) and {} ranks (communicator)",
        what, p.layers(), p.experts(), p.ranks(), o.layers, o.experts, comm.size()));
  }
  return ValidatePlacement(p).WithPrefix(fmt::format("MoeEngine: {}", what));
}

}  // namespace

StatusOr<std::unique_ptr<MoeEngine>> MoeEngine::Create(const EngineOptions& options,
                                                       Communicator* comm,
                                                       std::unique_ptr<Controller> controller) {
  EPLB_RETURN_IF_ERROR(ValidateEngineOptions(options));
  if (comm == nullptr) return Status::Invalid("MoeEngine: no communicator");
  if (controller == nullptr) {
    return Status::Invalid("MoeEngine: no controller (use the Create with a static placement)");
  }
  if (controller->communicator() == comm) {
    return Status::Invalid(
        "MoeEngine: the engine and its controller need separate communicators (the controller's "
        "messages would match the engine's); give the engine a second world or MPI communicator");
  }
  EPLB_RETURN_IF_ERROR(CheckPlacement(options, *comm, controller->initial_placement(),
                                      "the controller's initial placement"));
  engine_internal::UseSingleThreadedBlas();
  auto impl = std::make_unique<Impl>();
  impl->o = options;
  impl->comm = comm;
  impl->ctl = std::move(controller);
  EPLB_RETURN_IF_ERROR(impl->Init(impl->ctl->initial_placement()));
  return std::unique_ptr<MoeEngine>(new MoeEngine(std::move(impl)));
}

StatusOr<std::unique_ptr<MoeEngine>> MoeEngine::Create(const EngineOptions& options,
                                                       Communicator* comm,
                                                       const Placement& placement) {
  EPLB_RETURN_IF_ERROR(ValidateEngineOptions(options));
  if (comm == nullptr) return Status::Invalid("MoeEngine: no communicator");
  EPLB_RETURN_IF_ERROR(CheckPlacement(options, *comm, placement, "the placement"));
  engine_internal::UseSingleThreadedBlas();
  auto impl = std::make_unique<Impl>();
  impl->o = options;
  impl->comm = comm;
  EPLB_RETURN_IF_ERROR(impl->Init(placement));
  return std::unique_ptr<MoeEngine>(new MoeEngine(std::move(impl)));
}

MoeEngine::MoeEngine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
MoeEngine::~MoeEngine() = default;

StatusOr<StepResult> MoeEngine::Forward(int64_t step, int shift) {
  Impl& m = *impl_;
  if (!m.failure.ok()) return m.failure;
  StatusOr<StepResult> r = m.ForwardImpl(step, shift);
  if (!r.ok()) {
    m.failure = r.status().WithPrefix(fmt::format("MoeEngine step {}", step));
    m.comm->Abort(m.failure.message());
    return m.failure;
  }
  return r;
}

const EngineOptions& MoeEngine::options() const { return impl_->o; }
int MoeEngine::rank() const { return impl_->rank; }
int MoeEngine::slots_per_rank() const { return impl_->S; }
std::shared_ptr<const LayerRouting> MoeEngine::Routing(int layer) const {
  return impl_->Routing(layer);
}
Controller* MoeEngine::controller() const { return impl_->ctl.get(); }

}  // namespace eplb
