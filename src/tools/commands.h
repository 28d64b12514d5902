// The subcommands of the `eplb` command line. Each Add* registers its options on `app` and returns
// the action that runs it; an action returns the exit status (0 ok, 1 error) and prints errors as
// one line on stderr.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>

#include "eplb/status.h"

namespace eplb::tools {

using Action = std::function<int()>;

Action AddPlan(CLI::App& app);
Action AddValidate(CLI::App& app);
Action AddConvert(CLI::App& app);
Action AddStats(CLI::App& app);
Action AddCheckConfig(CLI::App& app);

// Prints "eplb <command>: <message>" on stderr and returns 1.
int Fail(const std::string& command, const Status& status);

}  // namespace eplb::tools
