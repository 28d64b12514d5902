// Fuzz target: the runtime configuration. Any input must give a config or an error naming the
// origin; a config that parses must read back equal from its own JSON.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "eplb/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  auto c = eplb::ParseRuntimeConfig(text, "fuzz");
  if (!c.ok()) {
    if (c.status().message().rfind("fuzz", 0) != 0) std::abort();
    return 0;
  }
  const std::string json = eplb::RuntimeConfigToJson(*c);
  auto back = eplb::ParseRuntimeConfig(json, "round trip");
  if (!back.ok() || eplb::RuntimeConfigToJson(*back) != json) std::abort();
  return 0;
}
