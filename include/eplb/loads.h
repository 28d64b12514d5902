// The embedded default workload: a deterministic generator of per-layer expert loads whose skew
// resembles real MoE traffic (DeepSeek-V3: the hottest expert of a layer carries 5.6x to 8.1x the
// mean expert load).
#pragma once

#include <cstdint>

#include "eplb/placement.h"

namespace eplb {

struct GeneratorOptions {
  int layers = 58;
  int experts = 256;
  int top_k = 8;
  int64_t tokens = 65536;  // tokens per layer; each row sums to top_k * tokens
  uint64_t seed = 1;
  double skew = 0.8;  // sigma of the log-normal expert popularity (0: uniform); 0.8 puts
                      // the hottest expert at about 6.8x the mean
  int shift = 0;      // a shift redraws the popularity of 10% of the experts
};

// Integer token counts, identical on every platform for the same options (the generator uses
// std::mt19937_64 and its own distributions). Each row sums to top_k * tokens exactly. With
// layers or experts < 1 the matrix is empty (0 x 0); with top_k * tokens < 1 it is all zero.
LoadMatrix GenerateLoad(const GeneratorOptions& options);

}  // namespace eplb
