// The dense reference: the model on one rank's tokens with every expert local. See
// include/eplb/engine.h.
#include <algorithm>

#include "engine/internal/model.h"

namespace eplb {

using engine_internal::Choice;

StatusOr<DenseReference> DenseReference::Create(const EngineOptions& options) {
  EPLB_RETURN_IF_ERROR(ValidateEngineOptions(options));
  engine_internal::UseSingleThreadedBlas();
  DenseReference ref;
  ref.options_ = options;
  ref.experts_.reserve(static_cast<size_t>(options.layers) * options.experts);
  for (int l = 0; l < options.layers; ++l) {
    for (int e = 0; e < options.experts; ++e) {
      ref.experts_.push_back(MakeExpertWeights(options, l, e));
    }
    const std::vector<float> w = engine_internal::RouterWeights(options, l);
    ref.router_.insert(ref.router_.end(), w.begin(), w.end());
  }
  return ref;
}

std::vector<float> DenseReference::Forward(int64_t step, int shift, int rank) const {
  const EngineOptions& o = options_;
  const int T = o.tokens, H = o.hidden, F = o.ffn, E = o.experts, K = o.top_k;
  std::vector<float> x = MakeEngineInputs(o, step, rank);
  std::vector<float> out, logits, batch_x, g, u;
  std::vector<Choice> choices;
  std::vector<int> rows;       // per choice: its row in the expert outputs y
  std::vector<float> y;        // one row per choice, grouped by expert
  std::vector<int> tokens_of;  // tokens of the current expert
  for (int l = 0; l < o.layers; ++l) {
    const std::vector<float> bias = engine_internal::RouterBias(o, l, shift);
    engine_internal::Route(o, x.data(), T, &router_[static_cast<size_t>(l) * E * H], bias.data(),
                           logits, choices);
    rows.assign(choices.size(), -1);
    y.assign(choices.size() * H, 0.0f);
    int next_row = 0;
    for (int e = 0; e < E; ++e) {
      // This expert's tokens, in token order (each token chooses an expert at most once).
      tokens_of.clear();
      for (size_t c = 0; c < choices.size(); ++c) {
        if (choices[c].expert == e) tokens_of.push_back(static_cast<int>(c));
      }
      const int n = static_cast<int>(tokens_of.size());
      if (n == 0) continue;
      batch_x.resize(static_cast<size_t>(n) * H);
      g.resize(static_cast<size_t>(n) * F);
      u.resize(static_cast<size_t>(n) * F);
      for (int i = 0; i < n; ++i) {
        const int t = tokens_of[i] / K;
        std::copy_n(&x[static_cast<size_t>(t) * H], H, &batch_x[static_cast<size_t>(i) * H]);
        rows[tokens_of[i]] = next_row + i;
      }
      const ExpertWeights& w = experts_[static_cast<size_t>(l) * E + e];
      engine_internal::SwiGlu(batch_x.data(), n, w.gate.data(), w.up.data(), w.down.data(), H, F,
                              g.data(), u.data(), &y[static_cast<size_t>(next_row) * H]);
      next_row += n;
    }
    out = x;
    for (int t = 0; t < T; ++t) {
      for (int j = 0; j < K; ++j) {
        const size_t c = static_cast<size_t>(t) * K + j;
        engine_internal::AddScaled(choices[c].weight, &y[static_cast<size_t>(rows[c]) * H], H,
                                   &out[static_cast<size_t>(t) * H]);
      }
    }
    x.swap(out);
  }
  return x;
}

}  // namespace eplb
