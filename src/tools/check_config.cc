// eplb check-config: parse a runtime configuration (file or inline JSON), resolve it against a
// model shape when given, and print it with every default filled in.
#include <fmt/format.h>

#include "eplb/config.h"
#include "tools/commands.h"

namespace eplb::tools {

Action AddCheckConfig(CLI::App& app) {
  struct Args {
    std::string config;
    int experts = -1;
    int ranks = -1;
  };
  auto a = std::make_shared<Args>();
  app.add_option("config", a->config, "configuration file, or inline JSON starting with '{'")
      ->required();
  CLI::Option* experts =
      app.add_option("--experts", a->experts, "logical experts of the model (with --ranks)")
          ->check(CLI::Range(1, 1 << 20));
  CLI::Option* ranks =
      app.add_option("--ranks", a->ranks, "ranks of the deployment (with --experts)")
          ->check(CLI::Range(1, 1 << 20));
  experts->needs(ranks);
  ranks->needs(experts);
  return [a] {
    auto config = LoadRuntimeConfig(a->config);
    if (!config.ok()) return Fail("check-config", config.status());
    // Without a model the files are still checked (with one, ResolveStart reads them).
    if (Status s = CheckConfigPaths(*config); !s.ok()) return Fail("check-config", s);
    std::string shape;
    if (a->experts >= 0 || a->ranks >= 0) {
      auto slots = ResolveSlotsPerRank(*config, a->experts, a->ranks);
      if (!slots.ok()) return Fail("check-config", slots.status());
      shape = fmt::format("{} experts + {} redundant on {} ranks: {} slots per rank\n", a->experts,
                          config->num_redundant_experts, a->ranks, *slots);
    }
    fmt::print("{}\n{}", RuntimeConfigToJson(*config), shape);
    return 0;
  };
}

}  // namespace eplb::tools
