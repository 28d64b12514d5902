// What the binding's source files share: error translation and array checks.
#pragma once

#include <fmt/format.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>
#include <utility>

#include "eplb/placement.h"
#include "eplb/status.h"

namespace py = pybind11;

namespace eplb {

using Int64Array = py::array_t<int64_t, py::array::c_style>;
using DoubleArray = py::array_t<double, py::array::c_style>;

[[noreturn]] inline void Raise(const Status& s) {
  switch (s.code()) {
    case StatusCode::kInvalidArgument:
      throw py::value_error(s.message());
    case StatusCode::kNotFound:
      PyErr_SetString(PyExc_FileNotFoundError, s.message().c_str());
      throw py::error_already_set();
    case StatusCode::kIoError:
      PyErr_SetString(PyExc_OSError, s.message().c_str());
      throw py::error_already_set();
    default:
      throw std::runtime_error(s.message());
  }
}
template <typename T>
T Take(StatusOr<T> r) {
  if (!r.ok()) Raise(r.status());
  return std::move(r).value();
}
inline void Check(const Status& s) {
  if (!s.ok()) Raise(s);
}

// A file path given as str or os.PathLike (pathlib.Path), as the text the C++ side opens. A NUL
// character is an error: the path would end there and name another file.
inline std::string PathArg(const py::object& path, const char* name) {
  py::object text;
  try {
    text = py::module_::import("os").attr("fspath")(path);
  } catch (const py::error_already_set&) {
    throw py::type_error(fmt::format("{}: expected a str or os.PathLike path, got {}", name,
                                     std::string(py::str(py::type::of(path).attr("__name__")))));
  }
  if (!py::isinstance<py::str>(text)) {
    throw py::type_error(fmt::format("{}: expected a str path, got bytes", name));
  }
  std::string s = text.cast<std::string>();
  if (s.find('\0') != std::string::npos) {
    throw py::value_error(fmt::format("{}: contains a NUL character", name));
  }
  return s;
}

// numpy.asarray(obj), which must have `ndim` dimensions (each below 2^31) and hold integers, or
// with `floats` any real numbers. A torch tensor is detached first (requires_grad is no reason
// to refuse it), and a bfloat16 one widened to float32 (numpy has no bfloat16).
inline py::array AsArray(const py::object& obj, const char* name, int ndim, bool floats) {
  py::object in = obj;
  if (!py::isinstance<py::array>(obj) && py::hasattr(obj, "detach") && py::hasattr(obj, "dtype")) {
    in = obj.attr("detach")();
    if (std::string(py::str(in.attr("dtype"))) == "torch.bfloat16") in = in.attr("float")();
  }
  py::array a = py::module_::import("numpy").attr("asarray")(in);
  if (a.ndim() != ndim) {
    throw py::value_error(
        fmt::format("{}: expected a {}-D array, got {} dimensions", name, ndim, a.ndim()));
  }
  for (int d = 0; d < ndim; ++d) {
    if (a.shape(d) > INT_MAX) {
      throw py::value_error(fmt::format("{}: dimension {} is {}, too large", name, d, a.shape(d)));
    }
  }
  const char kind = a.dtype().kind();  // i, u: integers; f: floating point
  if (!(kind == 'i' || kind == 'u' || (floats && kind == 'f'))) {
    throw py::type_error(fmt::format("{}: expected an array of {}, got dtype {}", name,
                                     floats ? "numbers" : "integers",
                                     std::string(py::str(a.dtype()))));
  }
  return a;
}

// AsArray's result as a C-contiguous array of T (int64_t or double). numpy converts (its errors,
// MemoryError included, are raised as they are; pybind11's own conversion returned an empty
// array instead, which was then read); an unsigned value past the int64 range is an error, not a
// wrapped negative one.
template <typename T>
py::array_t<T, py::array::c_style> AsArrayOf(const py::object& obj, const char* name, int ndim,
                                             bool floats) {
  const py::array a = AsArray(obj, name, ndim, floats);
  if (std::is_integral_v<T> && a.dtype().kind() == 'u' && a.dtype().itemsize() == 8 &&
      a.size() > 0) {
    const auto big = py::module_::import("numpy").attr("max")(a).cast<uint64_t>();
    if (big > static_cast<uint64_t>(INT64_MAX)) {
      throw py::value_error(fmt::format("{}: value {} is past the int64 range", name, big));
    }
  }
  py::object out = py::module_::import("numpy").attr("ascontiguousarray")(a, py::dtype::of<T>());
  auto typed = py::array_t<T, py::array::c_style>::ensure(out);
  if (!typed) throw py::type_error(fmt::format("{}: cannot be read as an array", name));
  return typed;
}

// A placement's phy2log as an int64 [layers, ranks * slots per rank] array.
inline Int64Array Phy2Log(const Placement& p) {
  Int64Array out({p.layers(), p.slots()});
  std::copy(p.phy2log().begin(), p.phy2log().end(), out.mutable_data());
  return out;
}

// One layer's log2phy as rows of `width` (at least its largest replica count): each logical
// expert's physical slots in ascending (hence rank) order, padded with -1, written to
// l2p [experts, width]; its replica counts to count [experts].
inline void Log2PhyRows(std::span<const int> phy2log, int experts, int width, int64_t* l2p,
                        int64_t* count) {
  std::fill(l2p, l2p + static_cast<size_t>(experts) * width, -1);
  std::fill(count, count + experts, 0);
  for (int i = 0; i < static_cast<int>(phy2log.size()); ++i) {
    const int e = phy2log[i];
    l2p[static_cast<size_t>(e) * width + count[e]++] = i;
  }
}

// The runtime (runtime.cc): Communicator, in_process_world, mpi_communicator, Controller.
void BindRuntime(py::module_& m);

}  // namespace eplb
