// The DeepSeek-V3 load statistics the benchmarks read: EPLB_DATA_DIR's deepseek-v3/ folder
// (default ../shared/data/expert-load, relative to where the program runs). Never part of the
// repository; each program says so and skips when they are absent. Also the steady-state load
// the benchmarks derive from them.
#pragma once

#include <cstdlib>
#include <random>
#include <string>

#include "eplb/placement.h"

namespace eplb::bench {

// The folder with a trailing slash: DeepSeekDir() + "prefill_in4096.json".
inline std::string DeepSeekDir() {
  const char* env = std::getenv("EPLB_DATA_DIR");
  return std::string(env && *env ? env : "../shared/data/expert-load") + "/deepseek-v3/";
}

// `load` with every expert's count scaled by a random factor in [0.8, 1.2] (fixed seed), as
// consecutive windows of one workload differ: the steady-state re-plan's load.
inline LoadMatrix Drifted(LoadMatrix load) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> factor(0.8, 1.2);
  for (int l = 0; l < load.layers(); ++l) {
    for (double& v : load.row(l)) v *= factor(rng);
  }
  return load;
}

}  // namespace eplb::bench
