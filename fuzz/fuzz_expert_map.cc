// Fuzz target: expert maps (vllm-ascend and SGLang layouts). Any input must give a valid
// placement or an error naming the origin; a map that parses must survive a write and a read back
// in both layouts unchanged.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "eplb/formats.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto m = eplb::ParseExpertMap(text, "fuzz");
  if (!m.ok()) {
    if (m.status().message().rfind("fuzz", 0) != 0) std::abort();
    return 0;
  }
  const eplb::Placement& p = m->placement;
  if (!eplb::ValidatePlacement(p).ok()) std::abort();
  for (auto format : {eplb::MapFormat::kVllmAscend, eplb::MapFormat::kSglang}) {
    const std::string out = eplb::SerializeExpertMap(p, format);
    auto back = eplb::ParseExpertMap(out, "round trip", p.experts(), p.ranks());
    if (!back.ok() || !(back->placement == p)) std::abort();
  }
  return 0;
}
