// A minimal engine for runtime tests. Per rank: the memory of every local slot as two tensors per
// expert (int8 weights and float scales, one contiguous buffer per layer and tensor), filled with
// bytes generated from (layer, expert, tensor, index) so anyone can rebuild what a slot must hold;
// skewed per-slot token counts whose hot experts change over time; and a step loop that checks,
// at the start of every step and again before Step(), that every slot the held routing snapshots
// name holds exactly that expert's bytes (so nothing wrote slot memory during the step).
#pragma once

#include <cstdint>
#include <cstring>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "eplb/runtime.h"

namespace eplb::testing {

constexpr int kWeightBytes = 96;  // int8 weights per expert
constexpr int kScales = 6;        // float scales per expert

inline uint32_t Mix(uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  return x ^ (x >> 16);
}
inline int8_t WeightOf(int layer, int expert, int i) {
  return static_cast<int8_t>(Mix((layer * 1009u + expert) * 4099u + i) & 0xff);
}
inline float ScaleOf(int layer, int expert, int i) {
  return static_cast<float>(Mix((layer * 1009u + expert) * 4099u + 2048u + i) % 10000) / 997.0f;
}

class FakeEngine {
 public:
  FakeEngine(Controller* ctl, int rank, int layers, int slots)
      : ctl_(ctl),
        rank_(rank),
        layers_(layers),
        slots_(slots),
        weights_(layers, std::vector<int8_t>(static_cast<size_t>(slots) * kWeightBytes)),
        scales_(layers, std::vector<float>(static_cast<size_t>(slots) * kScales)),
        counts64_(slots),
        counts32_(slots) {}

  // Loads the initial placement's experts and registers every slot with the controller.
  Status Load() {
    const Placement& p = ctl_->initial_placement();
    for (int l = 0; l < layers_; ++l) {
      for (int s = 0; s < slots_; ++s) {
        const int e = p.at(l, rank_, s);
        int8_t* w = Weights(l, s);
        float* sc = Scales(l, s);
        for (int i = 0; i < kWeightBytes; ++i) w[i] = WeightOf(l, e, i);
        for (int i = 0; i < kScales; ++i) sc[i] = ScaleOf(l, e, i);
        EPLB_RETURN_IF_ERROR(
            ctl_->RegisterExpert(l, s,
                                 {std::as_writable_bytes(std::span(w, kWeightBytes)),
                                  std::as_writable_bytes(std::span(sc, kScales))}));
      }
    }
    return Status::Ok();
  }

  // One forward step: take and check the snapshots, record skewed loads (int32 counts on odd
  // layers, int64 on even ones), check again, then Step(). `phase` selects the hot experts.
  // Returns the first broken invariant ("" if none); `step_error` gets Step()'s failure.
  std::string RunStep(int phase, std::mt19937_64& rng, Status* step_error) {
    snaps_.resize(layers_);
    for (int l = 0; l < layers_; ++l) snaps_[l] = ctl_->Routing(l);
    if (std::string e = CheckSlots(); !e.empty()) return e;
    for (int l = 0; l < layers_; ++l) {
      const LayerRouting& snap = *snaps_[l];
      const int experts = static_cast<int>(snap.log2phy.offsets.size()) - 1;
      for (int s = 0; s < slots_; ++s) {
        const int e = snap.phy2log[static_cast<size_t>(rank_) * slots_ + s];
        // Hot experts (by phase) get many tokens, split over replicas like a real router.
        const int hot = (e * 7 + phase * 5 + l) % experts;
        const double popularity = hot < 2 ? 40.0 : hot < 5 ? 12.0 : 3.0;
        const int replicas = static_cast<int>(snap.log2phy.replicas(e).size());
        // Uniform noise in [0.5, 1.5) (std::poisson_distribution calls lgamma, which writes a
        // global and upsets ThreadSanitizer).
        const double noise = 0.5 + static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0);
        counts64_[s] = static_cast<int64_t>(popularity / replicas * noise * 4);
        counts32_[s] = static_cast<int32_t>(counts64_[s]);
      }
      if (l % 2 == 1) {
        ctl_->RecordLoad(l, std::span<const int32_t>(counts32_));
      } else {
        ctl_->RecordLoad(l, std::span<const int64_t>(counts64_));
      }
    }
    if (std::string e = CheckSlots(); !e.empty()) return e + " (changed during the step)";
    *step_error = ctl_->Step();
    return "";
  }

  // Checks every slot against the current snapshots ("" when all hold the named experts).
  std::string Verify() {
    snaps_.resize(layers_);
    for (int l = 0; l < layers_; ++l) snaps_[l] = ctl_->Routing(l);
    return CheckSlots();
  }

  // A copy of every slot's bytes, to see which slots a Step() changed.
  std::vector<std::vector<std::byte>> Snapshot() const {
    std::vector<std::vector<std::byte>> out;
    for (int l = 0; l < layers_; ++l) {
      for (int s = 0; s < slots_; ++s) {
        auto w = std::as_bytes(std::span(weights_[l]).subspan(s * kWeightBytes, kWeightBytes));
        auto sc = std::as_bytes(std::span(scales_[l]).subspan(s * kScales, kScales));
        out.emplace_back(w.begin(), w.end());
        out.back().insert(out.back().end(), sc.begin(), sc.end());
      }
    }
    return out;
  }
  // The memory ranges of slot i of Snapshot() (weights, then scales).
  std::pair<std::span<const std::byte>, std::span<const std::byte>> SlotMemory(size_t i) const {
    const int l = static_cast<int>(i / slots_), s = static_cast<int>(i % slots_);
    return {std::as_bytes(std::span(weights_[l]).subspan(s * kWeightBytes, kWeightBytes)),
            std::as_bytes(std::span(scales_[l]).subspan(s * kScales, kScales))};
  }

 private:
  int8_t* Weights(int l, int s) {
    return weights_[l].data() + static_cast<size_t>(s) * kWeightBytes;
  }
  float* Scales(int l, int s) { return scales_[l].data() + static_cast<size_t>(s) * kScales; }

  std::string CheckSlots() {
    for (int l = 0; l < layers_; ++l) {
      const LayerRouting& snap = *snaps_[l];
      for (int s = 0; s < slots_; ++s) {
        const int e = snap.phy2log[static_cast<size_t>(rank_) * slots_ + s];
        if (snap.expert_map[e] != s) return Where(l, s, "expert map disagrees with phy2log");
        const int8_t* w = Weights(l, s);
        const float* sc = Scales(l, s);
        for (int i = 0; i < kWeightBytes; ++i) {
          if (w[i] != WeightOf(l, e, i)) {
            return Where(l, s, "weights are not expert " + std::to_string(e));
          }
        }
        for (int i = 0; i < kScales; ++i) {
          const float want = ScaleOf(l, e, i);
          if (std::memcmp(&sc[i], &want, sizeof want) != 0) {
            return Where(l, s, "scales are not expert " + std::to_string(e));
          }
        }
      }
    }
    return "";
  }
  std::string Where(int l, int s, const std::string& what) const {
    return "rank " + std::to_string(rank_) + " layer " + std::to_string(l) + " slot " +
           std::to_string(s) + " (epoch " + std::to_string(snaps_[l]->epoch) + "): " + what;
  }

  Controller* ctl_;
  int rank_, layers_, slots_;
  std::vector<std::vector<int8_t>> weights_;
  std::vector<std::vector<float>> scales_;
  std::vector<int64_t> counts64_;
  std::vector<int32_t> counts32_;
  std::vector<std::shared_ptr<const LayerRouting>> snaps_;
};

}  // namespace eplb::testing
