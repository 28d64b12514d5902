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
  app.add_option("--ranks", a->ranks,
                 "ranks, for SGLang input (needed to write vllm-ascend, which lists devices)");
  return [a] {
    auto format = ParseMapFormat(a->to);
    if (!format.ok()) return Fail("convert", format.status());
    auto map = ReadExpertMap(a->in, a->experts, a->ranks);
    if (!map.ok()) return Fail("convert", map.status());
    // An SGLang map lists slots, not ranks: without --ranks the devices of a vllm-ascend map
    // would be a guess (one slot each), so refuse rather than write a plausible wrong file.
    if (map->format == MapFormat::kSglang && *format == MapFormat::kVllmAscend && a->ranks < 0) {
      return Fail("convert", Status::Invalid(fmt::format(
                                 "{}: an SGLang map does not say how many ranks its {} slots "
                                 "span; pass --ranks R to write the vllm-ascend layout",
                                 a->in, map->placement.ranks() * map->placement.slots_per_rank())));
    }
    if (Status s = WriteExpertMap(a->out, map->placement, *format); !s.ok()) {
      return Fail("convert", s);
    }
    fmt::print("{} ({}) -> {} ({})\n", a->in, MapFormatName(map->format), a->out, a->to);
    return 0;
  };
}

Action AddStats(CLI::App& app) {
  struct Args {
    LoadArgs load;
    std::string map;
    Shape shape;
  };
  auto a = std::make_shared<Args>();
  AddLoadOptions(app, a->load);
  app.add_option("--map", a->map,
                 "expert map (default: the id-order placement, slot i holds expert i mod E)");
  app.add_option("--ranks", a->shape.ranks, "ranks")->required()->check(CLI::Range(1, 1 << 20));
  app.add_option("--slots-per-rank", a->shape.slots_per_rank, "slots per rank")
      ->required()
      ->check(CLI::Range(1, 1 << 20));
  return [a] {
    auto input = ReadLoad(a->load);
    if (!input.ok()) return Fail("stats", input.status());
    const LoadMatrix& load = input->moe;
    Shape shape = a->shape;
    shape.layers = load.layers();
    shape.experts = load.experts();
    if (shape.layers == 0) {
      return Fail("stats", Status::Invalid(
                               fmt::format("{}: no MoE rows (every row is zero)", input->source)));
    }
    if (Status s = shape.Validate(); !s.ok()) {
      return Fail("stats", s.WithPrefix(fmt::format("{} on {} ranks x {} slots", input->source,
                                                    shape.ranks, shape.slots_per_rank)));
    }
    Placement p = Placement::IdOrder(shape);
    if (!a->map.empty()) {
      auto map = ReadExpertMap(a->map, shape.experts, shape.ranks);
      if (!map.ok()) return Fail("stats", map.status());
      if (Status s = ValidatePlacement(map->placement, shape); !s.ok()) {
        return Fail("stats", s.WithPrefix(fmt::format("{} does not fit the load {} ({} MoE rows)",
                                                      a->map, input->source, shape.layers)));
      }
      p = std::move(map->placement);
    }
    // max/mean: the busiest rank's load over the mean rank load (1 / balancedness);
    // hottest/mean: the hottest expert's load over the mean expert load (the skew of the load).
    fmt::print("{:>5} {:>5} {:>12} {:>9} {:>12} {:>12}\n", "layer", "row", "balancedness",
               "max/mean", "hottest/mean", "upper bound");
    double sum = 0, bound_sum = 0;
    for (int l = 0; l < shape.layers; ++l) {
      const std::vector<int> rows = {l};
      const LoadMatrix one = load.SelectRows(rows);
      auto row = load.row(l);
      const double b = LayerBalancedness(row, p, l);
      const double mean = std::accumulate(row.begin(), row.end(), 0.0) / shape.experts;
      const double hottest = mean > 0 ? *std::max_element(row.begin(), row.end()) / mean : 0.0;
      Shape s1 = shape;
      s1.layers = 1;
      const double bound = BalancednessUpperBound(one, s1);
      fmt::print("{:>5} {:>5} {:>12.4f} {:>9.3f} {:>12.3f} {:>12.4f}\n", l, input->moe_rows[l], b,
                 b > 0 ? 1 / b : 0.0, hottest, bound);
      sum += b;
      bound_sum += bound;
    }
    fmt::print(
        "mean balancedness {:.4f} (upper bound {:.4f}) over {} MoE layers of {}; dense rows left "
        "out: {}\n",
        sum / shape.layers, bound_sum / shape.layers, shape.layers, input->source,
        JoinIds(input->dense_rows));
    return 0;
  };
}

}  // namespace eplb::tools
