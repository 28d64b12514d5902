// A minimal engine for runtime tests: per rank, the memory of every local slot (int8 weights plus
// float scales, generated from (layer, expert) so anyone can rebuild the expected bytes), skewed
// per-slot token counts that shift over time, and a step loop that checks, before every step,
// that every slot a routing snapshot names holds exactly that expert's bytes.
#pragma once

#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "eplb/runtime.h"

namespace eplb::testing {

constexpr int kWeightBytes = 96;
constexpr int kScales = 6;

inline std::byte WeightByte(int layer, int expert, int i) {
  return static_cast<std::byte>((layer * 131 + expert * 31 + i * 7 + (i >> 3)) & 0xff);
}
inline float Scale(int layer, int expert, int i) {
  return static_cast<float>(layer) + 0.001f * static_cast<float>(expert) +
         0.25f * static_cast<float>(i);
}

class FakeEngine {
 public:
  FakeEngine(Controller* ctl, int rank, int layers, int slots)
      : ctl_(ctl),
        rank_(rank),
        layers_(layers),
        slots_(slots),
        weights_(static_cast<size_t>(layers) * slots, std::vector<std::byte>(kWeightBytes)),
        scales_(static_cast<size_t>(layers) * slots, std::vector<float>(kScales)) {}

  // Loads the initial placement's experts and registers every slot with the controller.
  Status Load() {
    const Placement& p = ctl_->initial_placement();
    for (int l = 0; l < layers_; ++l) {
      for (int s = 0; s < slots_; ++s) {
        const int e = p.at(l, rank_, s);
        auto& w = weights_[Index(l, s)];
        auto& sc = scales_[Index(l, s)];
        for (int i = 0; i < kWeightBytes; ++i) w[i] = WeightByte(l, e, i);
        for (int i = 0; i < kScales; ++i) sc[i] = Scale(l, e, i);
        EPLB_RETURN_IF_ERROR(
            ctl_->RegisterExpert(l, s, {std::span(w), std::as_writable_bytes(std::span(sc))}));
      }
    }
    return Status::Ok();
  }

  // One forward step: check the bytes behind the current snapshots, record skewed loads, Step().
  // `phase` selects which experts are hot. Returns the first problem, or "".
  std::string RunStep(int phase, std::mt19937_64& rng) {
    for (int l = 0; l < layers_; ++l) {
      auto snap = ctl_->Routing(l);
      const int experts = static_cast<int>(snap->log2phy.offsets.size()) - 1;
      for (int s = 0; s < slots_; ++s) {
        const int e = snap->phy2log[static_cast<size_t>(rank_) * slots_ + s];
        if (snap->expert_map[e] != s) return Where(l, s, "expert map disagrees with phy2log");
        const auto& w = weights_[Index(l, s)];
        const auto& sc = scales_[Index(l, s)];
        for (int i = 0; i < kWeightBytes; ++i) {
          if (w[i] != WeightByte(l, e, i))
            return Where(l, s, "weights are not expert " + std::to_string(e));
        }
        for (int i = 0; i < kScales; ++i) {
          if (sc[i] != Scale(l, e, i))
            return Where(l, s, "scales are not expert " + std::to_string(e));
        }
        // Tokens: hot experts (by phase) get many; split over replicas like a real router.
        const int hot = (e * 7 + phase * 5 + l) % experts;
        const double popularity = hot < 2 ? 40.0 : hot < 5 ? 12.0 : 3.0;
        const int replicas = static_cast<int>(snap->log2phy.replicas(e).size());
        // Noisy counts (not std::poisson_distribution: it calls lgamma, which writes a global).
        const double noise = 0.5 + static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0);
        counts_[s] = static_cast<int64_t>(popularity / replicas * noise * 4);
      }
      ctl_->RecordLoad(l, std::span<const int64_t>(counts_.data(), slots_));
    }
    Status st = ctl_->Step();
    return st.ok() ? "" : "Step: " + st.ToString();
  }

 private:
  size_t Index(int l, int s) const { return static_cast<size_t>(l) * slots_ + s; }
  std::string Where(int l, int s, const std::string& what) const {
    return "rank " + std::to_string(rank_) + " layer " + std::to_string(l) + " slot " +
           std::to_string(s) + ": " + what;
  }

  Controller* ctl_;
  int rank_, layers_, slots_;
  std::vector<std::vector<std::byte>> weights_;
  std::vector<std::vector<float>> scales_;
  std::vector<int64_t> counts_ = std::vector<int64_t>(1024);
};

}  // namespace eplb::testing
