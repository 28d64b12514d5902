// The DeepSeek-V3 load statistics the benchmarks read: EPLB_DATA_DIR's deepseek-v3/ folder
// (default ../shared/data/expert-load, relative to where the program runs). Never part of the
// repository; each program says so and skips when they are absent.
#pragma once

#include <cstdlib>
#include <string>

namespace eplb::bench {

// The folder with a trailing slash: DeepSeekDir() + "prefill_in4096.json".
inline std::string DeepSeekDir() {
  const char* env = std::getenv("EPLB_DATA_DIR");
  return std::string(env && *env ? env : "../shared/data/expert-load") + "/deepseek-v3/";
}

}  // namespace eplb::bench
