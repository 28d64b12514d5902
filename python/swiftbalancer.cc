// Python bindings: the module `swiftbalancer`, over numpy arrays (anything numpy.asarray takes:
// lists, numpy arrays, CPU torch tensors). rebalance_experts() has the signature and the outputs
// of DeepSeek's eplb.py (as vLLM and SGLang call it), so an engine can switch to swift with one
// import; the transfer planner, the metrics and the file formats come along. Errors raise
// ValueError (bad input, naming what is wrong and where), FileNotFoundError or OSError (files), or
// TypeError (an array of the wrong kind). The GIL is released while an algorithm runs.
// The runtime (Controller and communicators) is bound in runtime.cc.
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <climits>
#include <optional>
#include <span>
#include <string>
#include <tuple>

#include "common.h"
#include "eplb/algorithm.h"
#include "eplb/formats.h"
#include "eplb/planner.h"

namespace eplb {
namespace {

LoadMatrix ToLoad(const py::object& obj, const char* name) {
  const DoubleArray a = AsArrayOf<double>(obj, name, 2, /*floats=*/true);
  const auto rows = static_cast<int>(a.shape(0)), cols = static_cast<int>(a.shape(1));
  if (rows < 1 || cols < 1) {
    throw py::value_error(fmt::format("{}: expected at least one layer and one expert, got {} x {}",
                                      name, rows, cols));
  }
  LoadMatrix m(rows, cols);
  const double* src = a.data();
  for (int l = 0; l < rows; ++l) {
    std::copy(src + static_cast<size_t>(l) * cols, src + static_cast<size_t>(l + 1) * cols,
              m.row(l).begin());
  }
  Check(ValidateLoad(m).WithPrefix(name));
  return m;
}

// A [layers, ranks * slots_per_rank] array of logical ids as a validated placement.
Placement ToPlacement(const py::object& obj, const char* name, int ranks, int experts) {
  if (experts < -1 || experts == 0) {
    throw py::value_error(fmt::format(
        "num_logical_experts: expected -1 (taken from the ids) or a count > 0, got {}", experts));
  }
  const Int64Array a = AsArrayOf<int64_t>(obj, name, 2, /*floats=*/false);
  const auto layers = static_cast<int>(a.shape(0));
  const auto slots = static_cast<int64_t>(a.shape(1));
  if (layers < 1) throw py::value_error(fmt::format("{}: expected at least one layer", name));
  if (ranks < 1 || slots < 1 || slots % ranks != 0) {
    throw py::value_error(fmt::format(
        "{}: {} physical experts per layer do not divide over {} ranks", name, slots, ranks));
  }
  std::vector<int> ids(a.data(), a.data() + a.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    if (a.data()[i] < 0 || a.data()[i] >= (experts < 0 ? INT_MAX : experts)) {
      throw py::value_error(fmt::format("{}[{}][{}]: logical id {} out of range{}", name, i / slots,
                                        i % slots, a.data()[i],
                                        experts < 0 ? "" : fmt::format(" [0, {})", experts)));
    }
  }
  if (experts < 0) {  // every expert needs a replica, so there are at most `slots` of them
    experts = *std::max_element(ids.begin(), ids.end()) + 1;
    if (experts > slots) {
      throw py::value_error(fmt::format(
          "{}: logical id {} implies {} logical experts, more than the {} slots of a layer", name,
          experts - 1, experts, slots));
    }
  }
  Placement p(layers, ranks, static_cast<int>(slots / ranks), experts, std::move(ids));
  Check(ValidatePlacement(p).WithPrefix(name));
  return p;
}

std::tuple<Int64Array, Int64Array, Int64Array> RebalanceExperts(
    const py::object& weight, int num_replicas, int num_groups, int num_nodes, int num_gpus,
    const std::string& algorithm, const py::object& current, const AlgorithmOptions& options) {
  const LoadMatrix load = ToLoad(weight, "weight");
  if (num_gpus < 1 || num_replicas < 1 || num_replicas % num_gpus != 0) {
    throw py::value_error(fmt::format(
        "num_replicas ({}) must be a positive multiple of num_gpus ({})", num_replicas, num_gpus));
  }
  const Shape shape{.layers = load.layers(),
                    .experts = load.experts(),
                    .ranks = num_gpus,
                    .slots_per_rank = num_replicas / num_gpus,
                    .nodes = num_nodes,
                    .groups = num_groups};
  Check(shape.Validate());
  const std::vector<std::string> names = BalancerNames();
  if (std::find(names.begin(), names.end(), algorithm) == names.end()) {
    throw py::value_error(
        fmt::format("algorithm: expected one of {}, got '{}'", fmt::join(names, ", "), algorithm));
  }
  // Options that would be ignored are errors, as on the command line: swift's options with
  // another algorithm (a value other than the default), and the caps without a current placement.
  const AlgorithmOptions defaults;
  const std::pair<const char*, bool> changed[] = {
      {"target_balancedness", options.target_balancedness != defaults.target_balancedness},
      {"skip_balancedness", options.skip_balancedness != defaults.skip_balancedness},
      {"inter_node_cost", options.inter_node_cost != defaults.inter_node_cost},
      {"max_changes_per_layer", options.max_changes_per_layer != defaults.max_changes_per_layer},
      {"max_changes_per_cycle", options.max_changes_per_cycle != defaults.max_changes_per_cycle},
      {"min_gain_per_change", options.min_gain_per_change != defaults.min_gain_per_change},
      {"threads", options.threads != defaults.threads}};
  for (const auto& [option, differs] : changed) {
    if (differs && algorithm != "swift") {
      throw py::value_error(
          fmt::format("{} applies to algorithm 'swift' only, not '{}'", option, algorithm));
    }
  }
  for (const auto& [option, differs] : std::span(changed).subspan(3, 2)) {
    if (differs && current.is_none()) {
      throw py::value_error(fmt::format(
          "{} caps a re-plan from current; without it every slot is placed fresh", option));
    }
  }
  std::optional<Placement> old;
  // Balance() checks it against the shape ("current placement: ...").
  if (!current.is_none()) old = ToPlacement(current, "current", num_gpus, shape.experts);
  const auto balancer = Take(MakeBalancer(algorithm, options));
  auto run = [&]() -> StatusOr<Placement> {
    EPLB_ASSIGN_OR_RETURN(BalanceResult r,
                          balancer->Balance({&load, shape, old ? &*old : nullptr}));
    if (!old) return std::move(r.placement);
    // Slot-stable: an expert that stays on its rank keeps its slot.
    EPLB_ASSIGN_OR_RETURN(TransferPlan plan, PlanTransfers(*old, r.placement, shape));
    return std::move(plan.final_placement);
  };
  const Placement placement = Take([&] {
    py::gil_scoped_release unlocked;
    return run();
  }());
  // log2phy padded with -1 to num_replicas - experts + 1 replicas (every expert has one), and
  // the replica counts.
  const int width = std::max(1, num_replicas - shape.experts + 1);
  Int64Array log2phy({shape.layers, shape.experts, width});
  Int64Array count({shape.layers, shape.experts});
  for (int l = 0; l < shape.layers; ++l) {
    Log2PhyRows(placement.layer(l), shape.experts, width,
                log2phy.mutable_data() + static_cast<size_t>(l) * shape.experts * width,
                count.mutable_data() + static_cast<size_t>(l) * shape.experts);
  }
  return {Phy2Log(placement), log2phy, count};
}

}  // namespace
}  // namespace eplb

PYBIND11_MODULE(swiftbalancer, m) {
  using namespace eplb;
  BindRuntime(m);
  m.doc() = "SwiftBalancer: expert-parallel load balancing for MoE inference (numpy arrays).";
  m.attr("__version__") = EPLB_VERSION;
  m.attr("algorithms") = BalancerNames();

  m.def(
      "rebalance_experts",
      [](const py::object& weight, int num_replicas, int num_groups, int num_nodes, int num_gpus,
         const std::string& algorithm, const py::object& current, double target_balancedness,
         double skip_balancedness, double inter_node_cost, int max_changes_per_layer,
         int64_t max_changes_per_cycle, double min_gain_per_change, int threads) {
        AlgorithmOptions o;
        o.target_balancedness = target_balancedness;
        o.skip_balancedness = skip_balancedness;
        o.inter_node_cost = inter_node_cost;
        o.max_changes_per_layer = max_changes_per_layer;
        o.max_changes_per_cycle = max_changes_per_cycle;
        o.min_gain_per_change = min_gain_per_change;
        o.threads = threads;
        return RebalanceExperts(weight, num_replicas, num_groups, num_nodes, num_gpus, algorithm,
                                current, o);
      },
      py::arg("weight"), py::arg("num_replicas"), py::arg("num_groups"), py::arg("num_nodes"),
      py::arg("num_gpus"), py::kw_only(), py::arg("algorithm") = "swift",
      py::arg("current") = py::none(), py::arg("target_balancedness") = 0.97,
      py::arg("skip_balancedness") = 0.99, py::arg("inter_node_cost") = 2.0,
      py::arg("max_changes_per_layer") = -1, py::arg("max_changes_per_cycle") = -1,
      py::arg("min_gain_per_change") = 1e-5, py::arg("threads") = 1,
      R"(Balances weight [layers, logical experts] over num_gpus ranks with num_replicas physical
experts in all (num_replicas / num_gpus slots per rank), as DeepSeek's eplb.rebalance_experts
does, and returns its three arrays (int64): phy2log [layers, num_replicas], log2phy [layers,
experts, num_replicas - experts + 1] (each expert's physical slots in rank order, padded with -1)
and logcnt [layers, experts]. With current (a phy2log array of the placement in use), swift moves
as few experts as it can, and the result of either algorithm is slot-stable: an expert that stays
on its rank keeps its slot. num_groups that divide over num_nodes > 1 select the hierarchical
policy (each group on one node), for both algorithms. algorithm: "swift" (default) or "deepseek"
(output-identical to the reference without current); the other keywords are swift's options
(README).)");

  m.def(
      "balancedness",
      [](const py::object& weight, const py::object& phy2log, int num_gpus) {
        const LoadMatrix load = ToLoad(weight, "weight");
        const Placement p = ToPlacement(phy2log, "phy2log", num_gpus, load.experts());
        if (p.layers() != load.layers()) {
          throw py::value_error(
              fmt::format("phy2log has {} layers, weight has {}", p.layers(), load.layers()));
        }
        const std::vector<double> b = Balancedness(load, p);
        return DoubleArray(static_cast<py::ssize_t>(b.size()), b.data());
      },
      py::arg("weight"), py::arg("phy2log"), py::arg("num_gpus"),
      "Per layer, mean rank load / max rank load (an expert's load split evenly over its "
      "replicas; 1.0 is perfect).");

  m.def(
      "expert_map",
      [](const py::object& phy2log, int num_gpus, int num_logical_experts) {
        const Placement p = ToPlacement(phy2log, "phy2log", num_gpus, num_logical_experts);
        Int64Array out({p.layers(), p.ranks(), p.experts()});
        auto o = out.mutable_unchecked<3>();
        for (int l = 0; l < p.layers(); ++l) {
          for (int r = 0; r < p.ranks(); ++r) {
            const std::vector<int> map = ExpertMap(p, l, r);
            for (int e = 0; e < p.experts(); ++e) o(l, r, e) = map[e];
          }
        }
        return out;
      },
      py::arg("phy2log"), py::arg("num_gpus"), py::kw_only(), py::arg("num_logical_experts") = -1,
      "Per layer and rank, each logical expert's local slot on that rank or -1 (vllm-ascend's "
      "expert_map): int64 [layers, num_gpus, experts].");

  m.def(
      "plan_transfers",
      [](const py::object& old_phy2log, const py::object& new_phy2log, int num_gpus, int num_nodes,
         int64_t expert_bytes, int num_logical_experts) {
        const Placement old = ToPlacement(old_phy2log, "old", num_gpus, num_logical_experts);
        const Placement target = ToPlacement(new_phy2log, "new", num_gpus, num_logical_experts);
        const Shape shape{.layers = old.layers(),
                          .experts = std::max(old.experts(), target.experts()),
                          .ranks = num_gpus,
                          .slots_per_rank = old.slots_per_rank(),
                          .nodes = num_nodes};
        const TransferPlan plan =
            Take(PlanTransfers(old, target, shape, {.expert_bytes = expert_bytes}));
        Int64Array copies({static_cast<py::ssize_t>(plan.copies.size()), py::ssize_t{8}});
        auto c = copies.mutable_unchecked<2>();
        for (size_t i = 0; i < plan.copies.size(); ++i) {
          const ExpertCopy& x = plan.copies[i];
          const int64_t row[8] = {x.layer,    x.expert,   x.dst_rank, x.dst_slot,
                                  x.src_rank, x.src_slot, x.local,    x.reads_overwritten_slot};
          for (int k = 0; k < 8; ++k) c(i, k) = row[k];
        }
        py::dict out;
        out["final_phy2log"] = Phy2Log(plan.final_placement);
        out["copies"] = copies;
        out["bytes_sent"] =
            Int64Array(static_cast<py::ssize_t>(plan.bytes_sent.size()), plan.bytes_sent.data());
        out["bytes_received"] = Int64Array(static_cast<py::ssize_t>(plan.bytes_received.size()),
                                           plan.bytes_received.data());
        out["inter_node_bytes"] = plan.inter_node_bytes;
        out["slots_changed"] = plan.slots_changed;
        return out;
      },
      py::arg("old"), py::arg("new"), py::arg("num_gpus"), py::kw_only(), py::arg("num_nodes") = 1,
      py::arg("expert_bytes") = 0, py::arg("num_logical_experts") = -1,
      R"(Plans the expert copies that turn placement old into new (phy2log arrays; experts that
stay on a rank keep their slot). Returns a dict: final_phy2log, copies (int64 [n, 8]: layer,
expert, dst_rank, dst_slot, src_rank, src_slot, local, reads_overwritten_slot; every copy reads
its source as it was in old), bytes_sent and bytes_received per rank, inter_node_bytes,
slots_changed.)");

  m.def(
      "read_expert_map",
      [](const py::object& path, int num_logical_experts, int num_gpus) {
        const MapFile f = Take(ReadExpertMap(PathArg(path, "path"), num_logical_experts, num_gpus));
        return std::make_tuple(Phy2Log(f.placement), f.placement.ranks());
      },
      py::arg("path"), py::arg("num_logical_experts") = -1, py::arg("num_gpus") = -1,
      "Reads a vllm-ascend or SGLang expert map: (phy2log [layers, slots], num_gpus). An SGLang "
      "map carries no rank count: pass num_gpus.");

  m.def(
      "write_expert_map",
      [](const py::object& path, const py::object& phy2log, int num_gpus, const std::string& format,
         int num_logical_experts) {
        const std::string file = PathArg(path, "path");
        const Placement p = ToPlacement(phy2log, "phy2log", num_gpus, num_logical_experts);
        Check(WriteExpertMap(file, p, Take(ParseMapFormat(format))));
      },
      py::arg("path"), py::arg("phy2log"), py::arg("num_gpus"), py::kw_only(),
      py::arg("format") = "vllm-ascend", py::arg("num_logical_experts") = -1,
      "Writes an expert map atomically (temporary file + rename): format \"vllm-ascend\" or "
      "\"sglang\".");

  m.def(
      "read_load",
      [](const py::object& path) {
        const LoadFile f = Take(ReadLoadFile(PathArg(path, "path")));
        DoubleArray out({f.all.layers(), f.all.experts()});
        std::copy(f.all.values().begin(), f.all.values().end(), out.mutable_data());
        return out;
      },
      py::arg("path"),
      "Reads load statistics (SGLang's logical_count or counts JSON, or CSV): float64 [rows, "
      "experts], all-zero (dense) rows included.");
}
