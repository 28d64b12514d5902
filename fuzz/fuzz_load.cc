// Fuzz target: load statistics (JSON and CSV). Any input must give a LoadFile or an error naming
// the origin, never a crash; a LoadFile must be consistent with itself.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "eplb/formats.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto f = eplb::ParseLoad(text, "fuzz");
  if (!f.ok()) {
    if (f.status().message().rfind("fuzz", 0) != 0) std::abort();  // the error names the origin
    return 0;
  }
  const eplb::LoadFile& lf = *f;
  if (lf.moe.layers() + static_cast<int>(lf.zero_rows.size()) != lf.all.layers()) std::abort();
  if (static_cast<int>(lf.moe_rows.size()) != lf.moe.layers()) std::abort();
  if (lf.moe.layers() == 0 || lf.moe.experts() != lf.all.experts()) std::abort();
  if (!eplb::ValidateLoad(lf.all).ok()) std::abort();  // values and row sums finite, >= 0
  return 0;
}
