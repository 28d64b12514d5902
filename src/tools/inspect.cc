// eplb validate / convert / stats: look at expert maps and loads.
#include <fmt/format.h>

#include <algorithm>
#include <numeric>

#include "eplb/formats.h"
#include "tools/commands.h"

namespace eplb::tools {

Action AddValidate(CLI::App& app) {
  struct Args {
    std::string path;
    int experts = -1;
    int ranks = -1;
  };
  auto a = std::make_shared<Args>();
  app.add_option("map", a->path, "expert-map file (vllm-ascend or SGLang layout)")->required();
  app.add_option("--experts", a->experts, "logical experts (default: largest id + 1)");
  app.add_option("--ranks", a->ranks, "ranks, for SGLang maps (default: one slot per rank)");
  return [a] {
    auto map = ReadExpertMap(a->path, a->experts, a->ranks);
    if (!map.ok()) return Fail("validate", map.status());
    const Placement& p = map->placement;
    int min_rep = p.ranks(), max_rep = 0;
    for (int l = 0; l < p.layers(); ++l) {
      for (int c : p.ReplicaCounts(l)) {
        min_rep = std::min(min_rep, c);
        max_rep = std::max(max_rep, c);
      }
    }
    fmt::print(
        "{}: valid {} map: {} layers, {} ranks x {} slots, {} logical experts, {} to {} "
        "replicas per expert\n",
        a->path, MapFormatName(map->format), p.layers(), p.ranks(), p.slots_per_rank(), p.experts(),
        min_rep, max_rep);
    return 0;
  };
}

Action AddConvert(CLI::App& app) {
  struct Args {
    std::string in, to, out;
    int experts = -1;
    int ranks = -1;
  };
  auto a = std::make_shared<Args>();
  app.add_option("in", a->in, "expert-map file to read")->required();
  app.add_option("--to", a->to, "layout to write: vllm-ascend or sglang")->required();
  app.add_option("--out", a->out, "file to write")->required();
  app.add_option("--experts", a->experts, "logical experts (default: largest id + 1)");
  app.add_option("--ranks", a->ranks, "ranks, for SGLang input (default: one slot per rank)");
  return [a] {
    auto format = ParseMapFormat(a->to);
    if (!format.ok()) return Fail("convert", format.status());
    auto map = ReadExpertMap(a->in, a->experts, a->ranks);
    if (!map.ok()) return Fail("convert", map.status());
    if (Status s = WriteExpertMap(a->out, map->placement, *format); !s.ok()) {
      return Fail("convert", s);
    }
    fmt::print("{} ({}) -> {} ({})\n", a->in, MapFormatName(map->format), a->out, a->to);
    return 0;
  };
}

Action AddStats(CLI::App& app) {
  struct Args {
    std::string load, map;
    Shape shape;
  };
  auto a = std::make_shared<Args>();
  app.add_option("--load", a->load, "load statistics file")->required();
  app.add_option("--map", a->map, "expert map (default: experts in id order, no replicas)");
  app.add_option("--ranks", a->shape.ranks, "ranks")->required()->check(CLI::Range(1, 1 << 20));
  app.add_option("--slots-per-rank", a->shape.slots_per_rank, "slots per rank")
      ->required()
      ->check(CLI::Range(1, 1 << 20));
  return [a] {
    auto file = ReadLoadFile(a->load);
    if (!file.ok()) return Fail("stats", file.status());
    Shape shape = a->shape;
    shape.layers = file->moe.layers();
    shape.experts = file->moe.experts();
    if (Status s = shape.Validate(); !s.ok()) return Fail("stats", s);
    Placement p = Placement::IdOrder(shape);
    if (!a->map.empty()) {
      auto map = ReadExpertMap(a->map, shape.experts, shape.ranks);
      if (!map.ok()) return Fail("stats", map.status());
      if (Status s = ValidatePlacement(map->placement, shape); !s.ok()) {
        return Fail("stats", s.WithPrefix(a->map + " does not fit " + a->load));
      }
      p = map->placement;
    }
    fmt::print("{:>5} {:>5} {:>12} {:>9} {:>12}\n", "layer", "row", "balancedness", "max/mean",
               "upper bound");
    double sum = 0;
    for (int l = 0; l < shape.layers; ++l) {
      auto row = file->moe.row(l);
      const double b = LayerBalancedness(row, p, l);
      LoadMatrix one(1, shape.experts);
      std::copy(row.begin(), row.end(), one.row(0).begin());
      Shape s1 = shape;
      s1.layers = 1;
      fmt::print("{:>5} {:>5} {:>12.4f} {:>9.3f} {:>12.4f}\n", l, file->moe_rows[l], b,
                 b > 0 ? 1 / b : 0.0, BalancednessUpperBound(one, s1));
      sum += b;
    }
    fmt::print(
        "mean balancedness {:.4f} over {} MoE layers (dense rows left out: {})\n",
        sum / shape.layers, shape.layers,
        file->zero_rows.empty() ? "none" : fmt::format("{}", fmt::join(file->zero_rows, ", ")));
    return 0;
  };
}

}  // namespace eplb::tools
