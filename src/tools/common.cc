#include <fmt/format.h>

#include "tools/commands.h"

namespace eplb::tools {

int Fail(const std::string& command, const Status& status) {
  fmt::print(stderr, "eplb {}: {}\n", command, status.message());
  return 1;
}

}  // namespace eplb::tools
