// The weight mover: see internal/mover.h for the threads and the per-layer handshake.
#include "runtime/internal/mover.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <tuple>

namespace eplb::runtime_internal {

using Clock = std::chrono::steady_clock;

// ------------------------------------------------------------------ WeightStore

WeightStore::WeightStore(int layers, int slots_per_rank)
    : layers_(layers),
      slots_(slots_per_rank),
      tensors_(static_cast<size_t>(layers) * slots_per_rank) {}

Status WeightStore::Register(int layer, int slot, std::vector<std::span<std::byte>> tensors) {
  if (layer < 0 || layer >= layers_ || slot < 0 || slot >= slots_) {
    return Status::Invalid(
        fmt::format("RegisterExpert: layer {} slot {} is outside {} layers x {} slots per rank",
                    layer, slot, layers_, slots_));
  }
  if (tensors.empty()) {
    return Status::Invalid(
        fmt::format("RegisterExpert: layer {} slot {}: no tensors", layer, slot));
  }
  std::vector<size_t> sizes;
  for (std::span<std::byte> t : tensors) sizes.push_back(t.size());
  if (tensor_bytes_.empty()) {
    tensor_bytes_ = sizes;
    expert_bytes_ = 0;
    for (size_t b : sizes) expert_bytes_ += b;
  } else if (sizes != tensor_bytes_) {
    return Status::Invalid(fmt::format(
        "RegisterExpert: layer {} slot {}: tensor sizes [{}] differ from the first registered "
        "expert's [{}]",
        layer, slot, fmt::join(sizes, ", "), fmt::join(tensor_bytes_, ", ")));
  }
  tensors_[static_cast<size_t>(layer) * slots_ + slot] = std::move(tensors);
  return Status::Ok();
}

Status WeightStore::CheckComplete() const {
  // (start, end, slot index, tensor index) of every registered tensor, by address: two slots
  // whose memory overlaps would have one expert's commit overwrite the other's weights.
  std::vector<std::tuple<uintptr_t, uintptr_t, size_t, size_t>> ranges;
  for (size_t i = 0; i < tensors_.size(); ++i) {
    if (tensors_[i].empty()) {
      return Status::Precondition(
          fmt::format("Start: layer {} slot {} has no registered expert", i / slots_, i % slots_));
    }
    for (size_t k = 0; k < tensors_[i].size(); ++k) {
      const auto begin = reinterpret_cast<uintptr_t>(tensors_[i][k].data());
      if (!tensors_[i][k].empty()) ranges.emplace_back(begin, begin + tensors_[i][k].size(), i, k);
    }
  }
  std::sort(ranges.begin(), ranges.end());
  for (size_t j = 1; j < ranges.size(); ++j) {
    const auto& [a_begin, a_end, a_slot, a_tensor] = ranges[j - 1];
    const auto& [b_begin, b_end, b_slot, b_tensor] = ranges[j];
    if (b_begin < a_end) {
      return Status::Precondition(fmt::format(
          "Start: layer {} slot {} tensor {} and layer {} slot {} tensor {} share memory; each "
          "slot's tensors need memory of their own",
          a_slot / slots_, a_slot % slots_, a_tensor, b_slot / slots_, b_slot % slots_, b_tensor));
    }
  }
  return Status::Ok();
}

void WeightStore::Gather(int layer, int slot, std::byte* dst) const {
  for (std::span<std::byte> t : tensors(layer, slot)) {
    std::memcpy(dst, t.data(), t.size());
    dst += t.size();
  }
}

void WeightStore::Scatter(const std::byte* src, int layer, int slot) const {
  for (std::span<std::byte> t : tensors(layer, slot)) {
    std::memcpy(t.data(), src, t.size());
    src += t.size();
  }
}

// ------------------------------------------------------------------ TagPool

int TagPool::Next() {
  const int size = static_cast<int>(poisoned_.size());
  for (int tries = 0; tries < size; ++tries) {
    const int tag = next_;
    next_ = next_ + 1 == size ? 0 : next_ + 1;
    if (!poisoned_[tag]) return tag;
  }
  return -1;
}

void TagPool::Poison(int tag) {
  if (tag < 0 || tag >= static_cast<int>(poisoned_.size()) || poisoned_[tag]) return;
  poisoned_[tag] = true;
  ++poisoned_count_;
}

// ------------------------------------------------------------------ MoveSession

MoveSession::MoveSession(MovePlan plan)
    : plan_(std::move(plan)),
      gates_(std::make_unique<Gate[]>(plan_.layers.size())),
      staging_(plan_.layers.size()) {
  for (size_t l = 0; l < plan_.layers.size(); ++l) {
    const bool moves = plan_.layers[l].tag >= 0;
    gates_[l].state.store(moves ? kPending : kReady, std::memory_order_relaxed);
    gates_[l].released.store(!moves, std::memory_order_relaxed);
  }
}

void MoveSession::Release(int layer) {
  gates_[layer].released.store(true, std::memory_order_release);
  Wake();
}

void MoveSession::Wake() {
  {
    std::lock_guard lock(mu_);
    woken_ = true;
  }
  cv_.notify_one();
}

// ------------------------------------------------------------------ Mover

Mover::Mover(Communicator* comm, const WeightStore* weights, int rank, int max_layers_in_flight,
             std::chrono::milliseconds timeout)
    : comm_(comm),
      weights_(weights),
      rank_(rank),
      max_in_flight_(max_layers_in_flight),
      timeout_(timeout) {}

void Mover::FreeStaging(MoveSession& session, int layer) {
  staging_bytes_ -= static_cast<int64_t>(session.staging_[layer].size());
  std::vector<std::byte>().swap(session.staging_[layer]);
}

void Mover::Fail(MoveSession& session, int layer, Status why,
                 const std::function<void(Status)>& on_error) {
  session.Publish(layer, kFailed);
  on_error(std::move(why));
}

void Mover::Run(MoveSession& session, const std::function<bool()>& stopping,
                const std::function<void(Status)>& on_error) {
  const MovePlan& plan = session.plan();
  const int layers = static_cast<int>(plan.layers.size());
  std::vector<InFlight> flight;
  int next = 0;
  while (!stopping()) {
    // Layers the forward thread is done with: cancel what a failed layer left pending (before its
    // staging goes, since a pending receive may write into it), free the staging.
    std::erase_if(flight, [&](InFlight& f) {
      if (!session.released(f.layer)) return false;
      f.requests.clear();
      FreeStaging(session, f.layer);
      return true;
    });
    // Start layers in order while there is room. A layer already released was rolled back
    // because another rank failed it: nothing to do for it.
    while (static_cast<int>(flight.size()) < max_in_flight_ && next < layers) {
      const int l = next++;
      if (plan.layers[l].tag < 0 || session.released(l)) continue;
      InFlight f{l, {}, Clock::now()};
      if (Status s = StartLayer(session, l, &f); !s.ok()) {
        Fail(session, l,
             s.WithPrefix(fmt::format("rank {}: layer {}: starting transfers", rank_, l)),
             on_error);
      }
      flight.push_back(std::move(f));
    }
    if (flight.empty() && next >= layers) return;  // every layer released

    bool pending = false;
    bool progressed = false;
    for (InFlight& f : flight) {
      if (session.state(f.layer) != kPending) continue;
      progressed |= Poll(session, f, on_error);
      pending |= session.state(f.layer) == kPending;
    }
    if (!pending) {
      // Everything started is decided: wait for the forward thread to release a layer.
      std::unique_lock lock(session.mu_);
      session.cv_.wait_for(lock, std::chrono::milliseconds(20), [&] { return session.woken_; });
      session.woken_ = false;
    } else if (!progressed) {
      std::this_thread::sleep_for(std::chrono::microseconds(50));
    }
  }
  for (InFlight& f : flight) {
    f.requests.clear();
    FreeStaging(session, f.layer);
  }
}

Status Mover::StartLayer(MoveSession& session, int layer, InFlight* f) {
  const LayerMoves& moves = session.plan().layers[layer];
  const size_t expert_bytes = weights_->expert_bytes();
  const std::vector<size_t>& tensor_bytes = weights_->tensor_bytes();
  std::vector<std::byte>& stage = session.staging_[layer];
  stage.resize(moves.incoming.size() * expert_bytes);
  staging_bytes_ += static_cast<int64_t>(stage.size());
  if (staging_bytes_ > staging_peak_.load(std::memory_order_relaxed)) {
    staging_peak_.store(staging_bytes_, std::memory_order_relaxed);
  }
  // Every rank walks the layer's copies in the same order, so between a pair of ranks the layer's
  // messages (one per tensor) and receives match one after another.
  size_t incoming = 0;
  for (const ExpertCopy& c : moves.copies) {
    if (c.dst_rank == rank_) {
      std::byte* dst = stage.data() + incoming++ * expert_bytes;
      if (c.src_rank == rank_) {
        weights_->Gather(layer, c.src_slot, dst);
        continue;
      }
      for (size_t bytes : tensor_bytes) {
        EPLB_ASSIGN_OR_RETURN(Request r, comm_->IRecv(c.src_rank, moves.tag, {dst, bytes}));
        f->requests.push_back(std::move(r));
        dst += bytes;
      }
    } else if (c.src_rank == rank_) {
      for (std::span<std::byte> t : weights_->tensors(layer, c.src_slot)) {
        EPLB_ASSIGN_OR_RETURN(Request r, comm_->ISend(c.dst_rank, moves.tag, t));
        f->requests.push_back(std::move(r));
      }
    }
  }
  return Status::Ok();
}

bool Mover::Poll(MoveSession& session, InFlight& f, const std::function<void(Status)>& on_error) {
  bool progressed = false;
  bool done = true;
  for (Request& r : f.requests) {
    if (!r) continue;
    StatusOr<bool> finished = comm_->Test(r);
    if (!finished.ok()) {
      Fail(session, f.layer,
           finished.status().WithPrefix(fmt::format("rank {}: layer {}: transfer", rank_, f.layer)),
           on_error);
      return true;
    }
    if (*finished) {
      r.reset();
      progressed = true;
    } else {
      done = false;
    }
  }
  if (done) {
    f.requests.clear();
    session.Publish(f.layer, kReady);
    return true;
  }
  if (Clock::now() - f.start > timeout_) {
    Fail(session, f.layer,
         Status::Timeout(fmt::format("rank {}: layer {}: transfers not done after {} ms", rank_,
                                     f.layer, timeout_.count())),
         on_error);
    return true;
  }
  return progressed;
}

}  // namespace eplb::runtime_internal
