// eplb: the SwiftBalancer command line.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <exception>
#include <string>
#include <vector>

#include "tools/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"SwiftBalancer: expert-parallel load balancing for MoE inference", "eplb"};
  app.set_version_flag("--version", std::string("eplb (SwiftBalancer) ") + EPLB_VERSION);
  app.require_subcommand(1);
  std::vector<std::pair<CLI::App*, eplb::tools::Action>> actions;  // in registration order
  auto add = [&](const char* name, const char* help, auto adder) {
    CLI::App* sub = app.add_subcommand(name, help);
    actions.emplace_back(sub, adder(*sub));
  };
  add("plan", "compute a placement for a load and plan the transfers to it", eplb::tools::AddPlan);
  add("validate", "check an expert-map file", eplb::tools::AddValidate);
  add("convert", "convert an expert map between layouts", eplb::tools::AddConvert);
  add("stats", "per-layer balancedness of a load on a placement", eplb::tools::AddStats);
  add("check-config", "check a runtime configuration (eplb_config)", eplb::tools::AddCheckConfig);
  add("demo", "a real expert-parallel MoE model on CPU, balanced while it runs",
      eplb::tools::AddDemo);
  eplb::tools::StrictValues(app);
  std::vector<std::string> names;
  for (const auto& [sub, action] : actions) names.push_back(sub->get_name());
  if (argc > 1 && argv[1][0] != '-' &&
      std::find(names.begin(), names.end(), argv[1]) == names.end()) {
    fmt::print(stderr, "eplb: unknown command '{}'; known: {}\n", argv[1], fmt::join(names, ", "));
    return 1;
  }
  // Before a command only --help and --version (CLI11 said "A subcommand is required").
  if (argc > 1 && argv[1][0] == '-') {
    const std::string first = argv[1];
    if (first != "--help" && first != "-h" && first != "--version") {
      fmt::print(stderr, "eplb: unknown option {}; a command comes first: {} (see eplb --help)\n",
                 first, fmt::join(names, ", "));
      return 1;
    }
  }
  // An option the command does not have is named first (CLI11 checks required options before
  // it looks for unknown ones, so `eplb plan --bogus` said "--ranks is required").
  if (argc > 1) {
    const auto command = std::find_if(actions.begin(), actions.end(), [&](const auto& a) {
      return a.first->get_name() == argv[1];
    });
    for (int i = 2; command != actions.end() && i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg == "--") break;
      if (!arg.starts_with("--") || arg.size() == 2) continue;
      const std::string name = arg.substr(2, arg.find('=') - 2);
      bool known = false;
      for (const CLI::Option* o : command->first->get_options()) {
        const auto& names = o->get_lnames();
        known = known || std::find(names.begin(), names.end(), name) != names.end();
      }
      if (!known) {
        fmt::print(stderr, "eplb {}: unknown option --{} (see eplb {} --help)\n", argv[1], name,
                   argv[1]);
        return 1;
      }
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    // Usage errors follow the same rule as every other error: one line, exit status 1.
    std::string message = e.what();
    std::replace(message.begin(), message.end(), '\n', ' ');
    const bool known = argc > 1 && std::find(names.begin(), names.end(), argv[1]) != names.end();
    fmt::print(stderr, "eplb{}: {} (see eplb {}--help)\n", known ? std::string(" ") + argv[1] : "",
               message, known ? std::string(argv[1]) + " " : "");
    return 1;
  }
  for (auto& [sub, action] : actions) {
    if (!sub->parsed()) continue;
    try {
      return action();
    } catch (const std::exception& e) {  // e.g. out of memory: still one line and status 1
      fmt::print(stderr, "eplb {}: internal error: {}\n", sub->get_name(), e.what());
      return 1;
    }
  }
  return 1;
}
