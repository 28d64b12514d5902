// The runtime from Python: communicators (in-process: ranks as threads; MPI: one process per rank
// under mpirun) and the per-rank Controller that an engine drives from its forward loop. Expert
// weights are registered as writable C-contiguous buffers (numpy arrays; a CPU torch tensor's
// .numpy() view), which the controller keeps alive: the worker sends from them and step() writes
// committed experts into them. step() releases the GIL, so the ranks of an in-process world can
// step side by side on Python threads.
#include "eplb/runtime.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <pybind11/stl.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <optional>
#include <set>
#include <span>
#include <string>
#include <vector>

#include "common.h"
#include "eplb/comm.h"
#include "eplb/config.h"

namespace eplb {
namespace {

// A Controller with the Python objects it must outlive (destroyed after it: members go in reverse
// order): its communicator and the registered buffers.
class PyController {
 public:
  PyController(const py::object& config, int layers, int experts, py::object comm, int nodes)
      : comm_(std::move(comm)) {
    const RuntimeConfig cfg = ToConfig(config);
    if (!py::isinstance<Communicator>(comm_)) {
      throw py::type_error(
          "comm: expected a Communicator (in_process_world() or "
          "mpi_communicator()), got " +
          std::string(py::str(py::type::of(comm_).attr("__name__"))));
    }
    Communicator* c = comm_.cast<Communicator*>();
    // Marked in use before the GIL is released for Create, so that a controller made on another
    // thread at the same time sees it (the check and the mark were on either side of Create).
    if (!InUse().insert(c).second) {
      throw py::value_error(fmt::format(
          "comm: rank {}'s communicator is in use by another controller (a controller must be "
          "its only user)",
          c->rank()));
    }
    const ModelInfo model{.layers = layers, .experts = experts, .nodes = nodes};
    StatusOr<std::unique_ptr<Controller>> made = [&] {
      py::gil_scoped_release unlocked;  // an expert_load_path runs the algorithm
      return Controller::Create(cfg, model, c);
    }();
    if (!made.ok()) InUse().erase(c);
    ctl_ = Take(std::move(made));
  }
  ~PyController() { Release(); }  // no step() runs: a call holds a reference to the object
  PyController(const PyController&) = delete;
  PyController& operator=(const PyController&) = delete;

  Controller& ctl() const {
    if (!ctl_) throw py::value_error("the controller is closed");
    return *ctl_;
  }
  // The layer's routing snapshot (ValueError for a layer out of range).
  std::shared_ptr<const LayerRouting> Routing(int layer) const {
    std::shared_ptr<const LayerRouting> r = ctl().Routing(layer);
    if (!r) throw py::value_error(fmt::format("layer {} out of range", layer));
    return r;
  }

  void RegisterExpert(int layer, int slot, const py::object& tensor_list) {
    if (!py::isinstance<py::list>(tensor_list) && !py::isinstance<py::tuple>(tensor_list)) {
      // A bare array is a sequence too: its rows (or numpy scalars) were taken as the tensors.
      throw py::type_error(fmt::format(
          "register_expert({}, {}): expected a list of the expert's tensors ([weights, ...]), got "
          "a {}",
          layer, slot, std::string(py::str(py::type::of(tensor_list).attr("__name__")))));
    }
    const auto tensors = py::reinterpret_borrow<py::sequence>(tensor_list);
    std::vector<std::span<std::byte>> spans;
    // What is registered: the buffers' exports, held until the controller is closed, so that
    // their memory can be neither freed nor moved (a bytearray cannot grow, an mmap cannot be
    // closed, while the worker sends from it and step() writes into it).
    std::vector<std::unique_ptr<py::buffer_info>> exports;
    for (size_t i = 0; i < tensors.size(); ++i) {
      py::object t = tensors[i];
      const std::string where = fmt::format("register_expert({}, {}): tensor {}", layer, slot, i);
      if (!PyObject_CheckBuffer(t.ptr()) && py::hasattr(t, "numpy") && py::hasattr(t, "device")) {
        // A torch tensor: its numpy view shares its memory (and keeps it alive). Only its bytes
        // matter, so a bfloat16 tensor (numpy has no bfloat16) is viewed as int16.
        const std::string device = py::str(t.attr("device"));
        if (device != "cpu") {
          throw py::type_error(fmt::format(
              "{}: expected host memory, got a tensor on {} (the runtime moves host buffers)",
              where, device));
        }
        t = t.attr("detach")();
        if (std::string(py::str(t.attr("dtype"))) == "torch.bfloat16") {
          t = t.attr("view")(py::module_::import("torch").attr("int16"));
        }
        t = t.attr("numpy")();
      }
      if (!PyObject_CheckBuffer(t.ptr())) {
        throw py::type_error(where +
                             ": expected a buffer (a numpy array or a CPU torch tensor), got " +
                             std::string(py::str(py::type::of(t).attr("__name__"))));
      }
      auto held = std::make_unique<py::buffer_info>();
      try {
        *held = py::reinterpret_borrow<py::buffer>(t).request(/*writable=*/true);
      } catch (const py::error_already_set&) {
        throw py::value_error(where +
                              ": expected a writable buffer (committed experts are "
                              "written into it), got a read-only one");
      }
      const py::buffer_info& info = *held;
      py::ssize_t stride = info.itemsize;
      for (py::ssize_t d = info.ndim - 1; d >= 0; --d) {
        if (info.shape[d] > 1 && info.strides[d] != stride) {
          throw py::value_error(where +
                                ": expected a C-contiguous buffer (its bytes are sent as "
                                "one block), got a strided view");
        }
        stride *= info.shape[d];
      }
      spans.emplace_back(static_cast<std::byte*>(info.ptr),
                         static_cast<size_t>(info.size * info.itemsize));
      exports.push_back(std::move(held));
    }
    Check(ctl().RegisterExpert(layer, slot, std::move(spans)));
    for (auto& e : exports) kept_.push_back(std::move(e));
  }

  void RecordLoad(int layer, const py::object& tokens) {
    Controller& c = ctl();
    // Aligned contiguous 1-D numpy arrays of int64 or int32 are read in place; anything else is
    // converted.
    auto in_place = [](const auto& a) {
      return a.ndim() == 1 && (a.flags() & py::array::c_style) &&
             reinterpret_cast<uintptr_t>(a.data()) % alignof(decltype(*a.data())) == 0;
    };
    if (py::isinstance<py::array_t<int64_t>>(tokens)) {
      const auto a = py::reinterpret_borrow<py::array_t<int64_t>>(tokens);
      if (in_place(a)) return c.RecordLoad(layer, std::span<const int64_t>(a.data(), a.size()));
    } else if (py::isinstance<py::array_t<int32_t>>(tokens)) {
      const auto a = py::reinterpret_borrow<py::array_t<int32_t>>(tokens);
      if (in_place(a)) return c.RecordLoad(layer, std::span<const int32_t>(a.data(), a.size()));
    }
    const Int64Array a = AsArrayOf<int64_t>(tokens, "tokens", 1, /*floats=*/false);
    if (in_place(a)) return c.RecordLoad(layer, std::span<const int64_t>(a.data(), a.size()));
    std::vector<int64_t> aligned(a.size());  // numpy keeps a misaligned view misaligned
    std::memcpy(aligned.data(), a.data(), aligned.size() * sizeof(int64_t));
    c.RecordLoad(layer, aligned);
  }

  // None, or the failure Step() reports (the engine keeps running on the placement in use).
  // Misuse (before start) raises.
  std::optional<std::string> Step() {
    Controller& c = ctl();
    if (stepping_ > 0) {
      // The forward loop is one thread: a second step() at once would drive the controller
      // from two threads (it failed a collective and stopped rebalancing for good).
      throw std::runtime_error("step: already running on another thread; step from one thread");
    }
    Status s;
    ++stepping_;  // changed with the GIL held
    {
      py::gil_scoped_release unlocked;
      s = c.Step();
    }
    --stepping_;
    if (s.ok()) return std::nullopt;
    if (s.code() == StatusCode::kFailedPrecondition) Raise(s);
    return s.ToString();
  }

  // Stops the worker; the registered buffers and the communicator are released after it.
  void Close() {
    if (stepping_ > 0) {
      throw std::runtime_error("close: step() is running on another thread; close after it");
    }
    Release();
  }

 private:
  void Release() {
    if (!ctl_) return;
    std::unique_ptr<Controller> gone = std::move(ctl_);
    {
      py::gil_scoped_release unlocked;  // joins the worker, which needs no GIL
      gone.reset();
    }
    kept_.clear();
    InUse().erase(comm_.cast<Communicator*>());
  }

  // A dict, JSON text (starting with '{'), a path, or None (the defaults).
  static RuntimeConfig ToConfig(const py::object& config) {
    if (config.is_none()) return RuntimeConfig{};
    if (py::isinstance<py::dict>(config)) {
      // numpy and torch scalars (np.int64(8)) are taken by value; NaN and infinities, which
      // json.dumps would write as text no JSON reader takes, are refused here.
      py::dict plain;
      for (const auto& [key, value] : py::reinterpret_borrow<py::dict>(config)) {
        plain[key] =
            PlainValue(py::reinterpret_borrow<py::object>(value), std::string(py::str(key)));
      }
      const std::string text = py::str(py::module_::import("json").attr("dumps")(plain));
      return Take(ParseRuntimeConfig(text, "config"));
    }
    if (py::isinstance<py::str>(config) || py::hasattr(config, "__fspath__")) {
      return Take(LoadRuntimeConfig(PathArg(config, "config")));
    }
    throw py::type_error("config: expected a dict, JSON text, a path or None, got " +
                         std::string(py::str(py::type::of(config).attr("__name__"))));
  }

  // A config dict's value as JSON can hold it: numpy and torch scalars by value, dicts (the
  // eplb_config wrapper) key by key; NaN and infinities, which json.dumps writes as text no JSON
  // reader takes, and anything else json cannot write are errors naming the key.
  static py::object PlainValue(const py::object& value, const std::string& key) {
    const std::string where = "config: " + key;
    if (py::isinstance<py::dict>(value)) {
      py::dict out;
      for (const auto& [k, v] : py::reinterpret_borrow<py::dict>(value)) {
        out[k] =
            PlainValue(py::reinterpret_borrow<py::object>(v), key + "." + std::string(py::str(k)));
      }
      return out;
    }
    py::object v = value;
    if (!py::isinstance<py::str>(v) && !py::isinstance<py::bool_>(v) &&
        !py::isinstance<py::int_>(v) && !py::isinstance<py::float_>(v) && !v.is_none()) {
      const bool scalar = py::hasattr(v, "item") && py::hasattr(v, "size") &&
                          py::int_(v.attr("size")).cast<int64_t>() == 1;
      if (!scalar) {
        throw py::type_error(
            fmt::format("{}: expected a JSON value (a number, string, bool or "
                        "null), got a {}",
                        where, std::string(py::str(py::type::of(v).attr("__name__")))));
      }
      v = v.attr("item")();
    }
    if (py::isinstance<py::float_>(v) && !std::isfinite(v.cast<double>())) {
      throw py::value_error(
          fmt::format("{}: expected a finite number, got {}", where, std::string(py::str(v))));
    }
    return v;
  }

  // The communicators that controllers use (read and changed with the GIL held).
  static std::set<Communicator*>& InUse() {
    static std::set<Communicator*> in_use;
    return in_use;
  }

  py::object comm_;
  std::vector<std::unique_ptr<py::buffer_info>> kept_;  // the registered buffers' exports
  std::unique_ptr<Controller> ctl_;
  int stepping_ = 0;  // step() calls running with the GIL released
};

Int64Array ToArray(std::span<const int> v) {
  Int64Array out(static_cast<py::ssize_t>(v.size()));
  std::copy(v.begin(), v.end(), out.mutable_data());
  return out;
}

py::dict RoutingDict(const LayerRouting& r) {
  // log2phy padded with -1 to the layer's largest replica count.
  const int experts = static_cast<int>(r.log2phy.offsets.size()) - 1;
  int width = 1;
  for (int e = 0; e < experts; ++e)
    width = std::max(width, static_cast<int>(r.log2phy.replicas(e).size()));
  Int64Array log2phy({experts, width});
  Int64Array count(experts);
  Log2PhyRows(r.phy2log, experts, width, log2phy.mutable_data(), count.mutable_data());
  py::dict d;
  d["layer"] = r.layer;
  d["epoch"] = r.epoch;
  d["ranks"] = r.ranks;
  d["slots_per_rank"] = r.slots_per_rank;
  d["phy2log"] = ToArray(r.phy2log);
  d["log2phy"] = log2phy;
  d["replica_count"] = count;
  d["expert_map"] = ToArray(r.expert_map);
  return d;
}

py::dict MetricsDict(const RuntimeMetrics& m) {
  py::dict d;
  d["steps"] = m.steps;
  d["cycles"] = m.cycles;
  d["cycles_skipped"] = m.cycles_skipped;
  d["cycles_late"] = m.cycles_late;
  d["layers_committed"] = m.layers_committed;
  d["layers_rolled_back"] = m.layers_rolled_back;
  d["transfers_failed"] = m.transfers_failed;
  d["slots_changed_total"] = m.slots_changed_total;
  d["bytes_moved_total"] = m.bytes_moved_total;
  d["inter_node_bytes_total"] = m.inter_node_bytes_total;
  d["staging_bytes_peak"] = m.staging_bytes_peak;
  d["disabled"] = m.disabled;
  d["last_balancedness_before"] = m.last_balancedness_before;
  d["last_balancedness_after"] = m.last_balancedness_after;
  d["last_balancedness_proposed"] = m.last_balancedness_proposed;
  d["last_max_mean_ratio"] = m.last_max_mean_ratio;
  d["last_layer_balancedness_before"] = m.last_layer_balancedness_before;
  d["last_layer_balancedness_after"] = m.last_layer_balancedness_after;
  d["last_slots_changed"] = m.last_slots_changed;
  d["last_bytes_moved"] = m.last_bytes_moved;
  d["last_inter_node_bytes"] = m.last_inter_node_bytes;
  d["last_algorithm_ms"] = m.last_algorithm_ms;
  d["last_transfer_ms"] = m.last_transfer_ms;
  d["algorithm_seconds_total"] = m.algorithm_seconds_total;
  d["transfer_seconds_total"] = m.transfer_seconds_total;
  d["hook_seconds_total"] = m.hook_seconds_total;
  return d;
}

}  // namespace

void BindRuntime(py::module_& m) {
  py::class_<Communicator>(m, "Communicator",
                           "One rank's communicator: from in_process_world() or "
                           "mpi_communicator(). A controller must be its only user.")
      .def_property_readonly("rank", &Communicator::rank)
      .def_property_readonly("size", &Communicator::size);

  m.def(
      "in_process_world",
      [](int size) {
        if (size < 1) throw py::value_error(fmt::format("size: expected >= 1, got {}", size));
        py::list out;
        for (auto& c : MakeInProcessWorld(size)) out.append(py::cast(std::move(c)));
        return out;
      },
      py::arg("size"),
      "A world of `size` ranks that are threads of this process: element r is rank r's "
      "Communicator (drive each rank's controller from its own thread).");

  m.def(
      "set_log_level",
      [](const std::string& level) {
        static const std::vector<std::pair<std::string, spdlog::level::level_enum>> kLevels = {
            {"trace", spdlog::level::trace}, {"debug", spdlog::level::debug},
            {"info", spdlog::level::info},   {"warning", spdlog::level::warn},
            {"error", spdlog::level::err},   {"critical", spdlog::level::critical},
            {"off", spdlog::level::off}};
        std::vector<std::string> names;
        for (const auto& [name, value] : kLevels) {
          if (name == level) return spdlog::set_level(value);
          names.push_back(name);
        }
        throw py::value_error(
            fmt::format("level: expected one of {}, got '{}'", fmt::join(names, ", "), level));
      },
      py::arg("level"),
      "The runtime's log level (its lines go to stderr; default info: one line per cycle): "
      "trace, debug, info, warning, error, critical or off.");

  m.def(
      "mpi_communicator",
      [] {
        StatusOr<std::unique_ptr<Communicator>> c = [] {
          py::gil_scoped_release unlocked;
          return MakeMpiCommunicator(nullptr, nullptr);
        }();
        return Take(std::move(c));
      },
      "This process's rank among the processes mpirun started (MPI initialised with "
      "MPI_THREAD_MULTIPLE if it is not yet). RuntimeError without MPI support.");

  py::class_<PyController>(m, "Controller", R"(One rank's balancer runtime (C++ eplb::Controller).
Create it with the configuration (a dict of eplb_config keys, JSON text, a path, or None), the model
(layers, experts, nodes) and this rank's communicator; load initial_placement's experts into your
slot buffers and register each slot's tensors (register_expert), then start(). Each forward step:
for every MoE layer, route with routing(layer) (cache it by its epoch) and record_load(layer,
tokens per local slot); then step(). close() (or leaving a with block) stops the worker.)")
      .def(py::init<const py::object&, int, int, py::object, int>(), py::arg("config"),
           py::arg("layers"), py::arg("experts"), py::arg("comm"), py::arg("nodes") = 1)
      .def_property_readonly("rank", [](const PyController& c) { return c.ctl().rank(); })
      .def_property_readonly("slots_per_rank",
                             [](const PyController& c) { return c.ctl().slots_per_rank(); })
      .def_property_readonly(
          "initial_placement",
          [](const PyController& c) { return Phy2Log(c.ctl().initial_placement()); },
          "phy2log of the placement the controller starts from: int64 [layers, ranks * slots].")
      .def("register_expert", &PyController::RegisterExpert, py::arg("layer"), py::arg("slot"),
           py::arg("tensors"),
           "Registers the buffers of one (layer, local slot): a list of writable C-contiguous "
           "buffers (every tensor of the expert: weights, scales, ...), the same sizes for every "
           "slot, each slot's memory its own. The controller holds them (exported: a bytearray "
           "cannot be resized, an mmap not closed) until it is closed, and must be the only one to "
           "change them.")
      .def(
          "start", [](PyController& c) { Check(c.ctl().Start()); },
          "Starts the worker once every slot is registered.")
      .def("record_load", &PyController::RecordLoad, py::arg("layer"), py::arg("tokens"),
           "Tokens per local slot of one layer in this step (int32 or int64 numpy arrays are read "
           "in place). A wrong layer, length or count is reported by the next step().")
      .def("step", &PyController::Step,
           "The step boundary, once per forward step on every rank (releases the GIL). Returns "
           "None, or the message of a failure kept from the worker, a bad record_load or a "
           "failed collective: the engine keeps running on the placement in use.")
      .def(
          "routing",
          [](const PyController& c, int layer) { return RoutingDict(*c.Routing(layer)); },
          py::arg("layer"),
          "The layer's routing snapshot as a dict: layer, epoch (0 at start, +1 per commit), "
          "ranks, slots_per_rank, phy2log, log2phy [experts, most replicas] padded with -1, "
          "replica_count, and expert_map (this rank: logical expert -> local slot or -1).")
      .def(
          "epoch", [](const PyController& c, int layer) { return c.Routing(layer)->epoch; },
          py::arg("layer"), "The layer's routing epoch (cheap: compare it to a cached one).")
      .def(
          "metrics", [](const PyController& c) { return MetricsDict(c.ctl().Metrics()); },
          "Running totals and the last cycle's figures (RuntimeMetrics) as a dict.")
      .def(
          "prometheus_text",
          [](const PyController& c) { return PrometheusText(c.ctl().Metrics(), c.ctl().rank()); },
          "The metrics in Prometheus text exposition format.")
      .def(
          "commit_log",
          [](const PyController& c) {
            py::list out;
            for (const Controller::Commit& x : c.ctl().CommitLog()) {
              out.append(py::make_tuple(x.step, x.layer, x.epoch));
            }
            return out;
          },
          "(step, layer, epoch) of the latest commits, oldest first: the same on every rank.")
      .def_property_readonly(
          "cycle_in_progress", [](const PyController& c) { return c.ctl().CycleInProgress(); },
          "True while a cycle runs; changes at the same step on every rank.")
      .def("close", &PyController::Close, "Stops the worker and releases the buffers.")
      .def("__enter__", [](py::object self) { return self; })
      .def("__exit__", [](PyController& c, const py::args&) { c.Close(); });
}

}  // namespace eplb
