// The embedded default workload: a deterministic generator of per-layer expert loads whose skew
// resembles real MoE traffic (DeepSeek-V3: the hottest expert of a layer carries 5.6x to 8.1x the
// mean expert load).
#pragma once

#include <cstdint>

#include "eplb/placement.h"
#include "eplb/status.h"

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

// OK, or the first option out of its range, named: layers >= 1, experts >= 1, top_k in
// [1, experts] (a token goes to top_k distinct experts), tokens >= 1, top_k * tokens <= 2^53 (so
// every count and row sum is an exact double), skew a number in [0, 4].
Status ValidateGeneratorOptions(const GeneratorOptions& options);

// Integer token counts, identical on every platform for the same options (the generator uses
// std::mt19937_64 and its own distributions). Each row sums to top_k * tokens exactly. Options
// that ValidateGeneratorOptions refuses give an empty (0 x 0) matrix.
LoadMatrix GenerateLoad(const GeneratorOptions& options);

}  // namespace eplb
