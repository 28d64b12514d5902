#include <fmt/format.h>

#include <algorithm>
#include <cassert>
#include <cmath>
#include <limits>

#include "eplb/placement.h"

namespace eplb {

StatusOr<LoadMatrix> LoadMatrix::FromRows(const std::vector<std::vector<double>>& rows) {
  if (rows.empty()) return Status::Invalid("load has no rows");
  const size_t experts = rows[0].size();
  if (experts == 0) return Status::Invalid("load row 0 is empty");
  LoadMatrix m(static_cast<int>(rows.size()), static_cast<int>(experts));
  for (size_t l = 0; l < rows.size(); ++l) {
    if (rows[l].size() != experts) {
      return Status::Invalid(
          fmt::format("load row {} has {} values, row 0 has {}", l, rows[l].size(), experts));
    }
    std::copy(rows[l].begin(), rows[l].end(), m.row(static_cast<int>(l)).begin());
  }
  EPLB_RETURN_IF_ERROR(ValidateLoad(m));
  return m;
}

Status ValidateLoad(const LoadMatrix& load) {
  for (int l = 0; l < load.layers(); ++l) {
    double sum = 0;
    for (int e = 0; e < load.experts(); ++e) {
      const double v = load.at(l, e);
      if (!std::isfinite(v) || v < 0) {
        return Status::Invalid(fmt::format(
            "load of layer {}, expert {} is {}; loads must be finite and >= 0", l, e, v));
      }
      sum += v;
    }
    if (!std::isfinite(sum)) {
      return Status::Invalid(
          fmt::format("loads of layer {} sum to more than the largest double ({}); scale them down",
                      l, std::numeric_limits<double>::max()));
    }
  }
  return Status::Ok();
}

LoadMatrix& LoadMatrix::operator+=(const LoadMatrix& other) {
  assert(other.layers_ == layers_ && other.experts_ == experts_);
  for (size_t i = 0; i < values_.size(); ++i) values_[i] += other.values_[i];
  return *this;
}

std::vector<int> LoadMatrix::ZeroRows() const {
  std::vector<int> out;
  for (int l = 0; l < layers_; ++l) {
    double sum = 0;
    for (double v : row(l)) sum += v;
    if (sum == 0) out.push_back(l);
  }
  return out;
}

LoadMatrix LoadMatrix::SelectRows(std::span<const int> rows) const {
  LoadMatrix m(static_cast<int>(rows.size()), experts_);
  for (size_t i = 0; i < rows.size(); ++i) {
    auto src = row(rows[i]);
    std::copy(src.begin(), src.end(), m.row(static_cast<int>(i)).begin());
  }
  return m;
}

}  // namespace eplb
