// eplb: the SwiftBalancer command line.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <map>

#include "tools/commands.h"

int main(int argc, char** argv) {
  CLI::App app{"SwiftBalancer: expert-parallel load balancing for MoE inference", "eplb"};
  app.require_subcommand(1);
  std::map<CLI::App*, eplb::tools::Action> actions;
  auto add = [&](const char* name, const char* help, auto adder) {
    CLI::App* sub = app.add_subcommand(name, help);
    actions[sub] = adder(*sub);
  };
  add("plan", "compute a placement for a load and plan the transfers to it", eplb::tools::AddPlan);
  add("validate", "check an expert-map file", eplb::tools::AddValidate);
  add("convert", "convert an expert map between layouts", eplb::tools::AddConvert);
  add("stats", "per-layer balancedness of a load on a placement", eplb::tools::AddStats);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help
    fmt::print(stderr, "eplb: {}\n", e.what());
    return 1;
  }
  for (auto& [sub, action] : actions) {
    if (sub->parsed()) return action();
  }
  return 1;
}
