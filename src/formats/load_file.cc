// Load statistics: SGLang's {"logical_count": ...}, {"counts": ..., "num_layers", "num_experts"}
// and CSV. Keys other than the ones read here are ignored: recorders add their own metadata.
#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <utility>
#include <vector>

#include "eplb/formats.h"
#include "formats/internal/json_util.h"

namespace eplb {
namespace {

using json = nlohmann::json;
using Rows = std::vector<std::vector<double>>;
using formats_internal::AsInteger;
using formats_internal::Describe;

constexpr std::string_view kExpectedLoad = "expected a non-negative finite number";

bool IsLoad(double v) { return std::isfinite(v) && v >= 0; }

// Rank loads and means are sums of a row's values, so the sum must be a finite double too.
bool SumIsFinite(const std::vector<double>& row) {
  double sum = 0;
  for (double v : row) sum += v;
  return std::isfinite(sum);
}
constexpr std::string_view kSumOverflow =
    "the values sum to more than the largest double (1.79769e+308); scale them down";

// Splits into the MoE rows and the all-zero (dense) rows; rows are already validated.
StatusOr<LoadFile> Finish(const Rows& rows, const std::string& origin) {
  StatusOr<LoadMatrix> all = LoadMatrix::FromRows(rows);
  if (!all.ok()) return all.status().WithPrefix(origin);
  LoadFile f = SplitLoadRows(std::move(all).value());
  if (f.zero_rows.size() == rows.size()) {
    return Status::Invalid(
        fmt::format("{}: all {} rows are zero; no layer carries any load", origin, rows.size()));
  }
  return f;
}

// ---- JSON ----

StatusOr<Rows> JsonRows(const json& m, const std::string& key, const std::string& origin) {
  if (!m.is_array()) {
    return Status::Invalid(
        fmt::format("{}: {}: expected an array of rows, got {}", origin, key, Describe(m)));
  }
  if (m.empty()) return Status::Invalid(fmt::format("{}: {}: has no rows", origin, key));
  Rows rows(m.size());
  for (size_t i = 0; i < m.size(); ++i) {
    const json& row = m[i];
    if (!row.is_array()) {
      return Status::Invalid(fmt::format("{}: {}[{}]: expected an array of numbers, got {}", origin,
                                         key, i, Describe(row)));
    }
    if (row.empty())
      return Status::Invalid(fmt::format("{}: {}[{}]: row is empty", origin, key, i));
    if (row.size() != m[0].size()) {
      return Status::Invalid(fmt::format("{}: {}[{}]: has {} values, {}[0] has {}", origin, key, i,
                                         row.size(), key, m[0].size()));
    }
    rows[i].reserve(row.size());
    for (size_t j = 0; j < row.size(); ++j) {
      if (!row[j].is_number() || !IsLoad(row[j].get<double>())) {
        return Status::Invalid(fmt::format("{}: {}[{}][{}]: {}, got {}", origin, key, i, j,
                                           kExpectedLoad, Describe(row[j])));
      }
      rows[i].push_back(row[j].get<double>());
    }
    if (!SumIsFinite(rows[i])) {
      return Status::Invalid(fmt::format("{}: {}[{}]: {}", origin, key, i, kSumOverflow));
    }
  }
  return rows;
}

// Checks an optional size declaration such as "num_layers": 94 against what the file holds.
// `actual_text` says what the file holds, e.g. "counts has 93 rows".
Status CheckDeclared(const json& doc, const std::string& key, size_t actual,
                     const std::string& actual_text, const std::string& origin) {
  const auto it = doc.find(key);
  if (it == doc.end()) return Status::Ok();
  const std::optional<int64_t> n = AsInteger(*it);
  if (!n || *n < 0) {
    return Status::Invalid(
        fmt::format("{}: {}: expected a non-negative integer, got {}", origin, key, Describe(*it)));
  }
  if (static_cast<uint64_t>(*n) != actual) {
    return Status::Invalid(
        fmt::format("{}: {}: declares {}, but {}", origin, key, it->dump(), actual_text));
  }
  return Status::Ok();
}

StatusOr<LoadFile> ParseJsonLoad(const std::string& text, const std::string& origin) {
  EPLB_ASSIGN_OR_RETURN(const json doc, formats_internal::ParseJson(text, origin));
  if (!doc.is_object()) {
    return Status::Invalid(
        fmt::format("{}: expected a JSON object with key \"logical_count\" or \"counts\", got {}",
                    origin, Describe(doc)));
  }
  const bool sglang = doc.contains("logical_count");
  const bool counts = doc.contains("counts");
  if (sglang == counts) {
    return Status::Invalid(fmt::format(
        "{}: expected exactly one of the keys \"logical_count\" (SGLang) and \"counts\", found {}",
        origin, sglang ? "both" : "neither"));
  }
  const std::string key = sglang ? "logical_count" : "counts";
  EPLB_ASSIGN_OR_RETURN(const Rows rows, JsonRows(doc.at(key), key, origin));
  EPLB_RETURN_IF_ERROR(CheckDeclared(doc, "num_layers", rows.size(),
                                     fmt::format("{} has {} rows", key, rows.size()), origin));
  EPLB_RETURN_IF_ERROR(CheckDeclared(doc, "num_experts", rows[0].size(),
                                     fmt::format("{}[0] has {} values", key, rows[0].size()),
                                     origin));
  return Finish(rows, origin);
}

// ---- CSV ----

std::string_view Trim(std::string_view s) {
  constexpr std::string_view kSpace = " \t\r\f\v";
  const size_t begin = s.find_first_not_of(kSpace);
  if (begin == std::string_view::npos) return {};
  return s.substr(begin, s.find_last_not_of(kSpace) - begin + 1);
}

std::vector<std::string_view> SplitFields(std::string_view line) {
  std::vector<std::string_view> fields;
  while (true) {
    const size_t comma = line.find(',');
    fields.push_back(Trim(line.substr(0, comma)));
    if (comma == std::string_view::npos) return fields;
    line.remove_prefix(comma + 1);
  }
}

// A whole field as a number (locale-independent; "nan" and "inf" included, so that they are
// reported as non-finite). Magnitudes too large for a double (1e999) come back as infinity, too
// small ones (1e-400) as 0, as strtod and the JSON parser read them.
std::optional<double> ParseNumber(std::string_view s) {
  double v = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || end != s.data() + s.size()) return std::nullopt;
  if (ec == std::errc::result_out_of_range) {
    // Out of range one way or the other: too small when the exponent is negative, or when there
    // is none and no digit before the point is above 0.
    const size_t e = s.find_first_of("eE");
    const bool tiny =
        e != std::string_view::npos
            ? s.substr(e + 1).starts_with('-')
            : s.substr(0, s.find('.')).find_first_of("123456789") == std::string_view::npos;
    return tiny ? 0.0 : std::numeric_limits<double>::infinity();
  }
  if (ec != std::errc()) return std::nullopt;
  return v;
}

// A field as quoted in a message: at most 40 characters, control bytes escaped.
std::string Quoted(std::string_view field) {
  std::string out = "\"";
  for (size_t i = 0; i < field.size() && i < 36; ++i) {
    const auto c = static_cast<unsigned char>(field[i]);
    out += c < 0x20 || c == 0x7f ? fmt::format("\\x{:02x}", c) : std::string(1, field[i]);
  }
  return out + (field.size() > 36 ? "...\"" : "\"");
}

// Whether a field that is not a number can be a column name: not empty and not one of the usual
// markers of a missing value (a row of those is data, and an error).
bool HeaderField(std::string_view f) {
  std::string lower(f);
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (std::string_view missing : {"", "n/a", "na", "null", "none", "-", "?"}) {
    if (lower == missing) return false;
  }
  return !ParseNumber(f);
}

StatusOr<LoadFile> ParseCsvLoad(std::string_view text, const std::string& origin) {
  Rows rows;
  size_t first_row_line = 0;
  bool header_possible = true;
  size_t header_line = 0, header_fields = 0;  // header_line 0: none
  size_t line_no = 0;
  while (!text.empty()) {
    const size_t newline = text.find('\n');
    const std::string_view line = Trim(text.substr(0, newline));
    text.remove_prefix(newline == std::string_view::npos ? text.size() : newline + 1);
    ++line_no;
    if (line.empty() || line[0] == '#') continue;
    const std::vector<std::string_view> fields = SplitFields(line);
    // The first content line is a header when each of its fields can be a column name.
    if (std::exchange(header_possible, false) &&
        std::all_of(fields.begin(), fields.end(), HeaderField)) {
      header_line = line_no;
      header_fields = fields.size();
      continue;
    }
    std::vector<double> row;
    row.reserve(fields.size());
    for (size_t j = 0; j < fields.size(); ++j) {
      const std::optional<double> v = ParseNumber(fields[j]);
      if (!v || !IsLoad(*v)) {
        const std::string got = v ? std::string(fields[j]) : Quoted(fields[j]);
        return Status::Invalid(fmt::format("{}: line {}, field {}: {}, got {}", origin, line_no,
                                           j + 1, kExpectedLoad, got));
      }
      row.push_back(*v);
    }
    if (!SumIsFinite(row)) {
      return Status::Invalid(fmt::format("{}: line {}: {}", origin, line_no, kSumOverflow));
    }
    if (rows.empty()) {
      first_row_line = line_no;
    } else if (row.size() != rows[0].size()) {
      return Status::Invalid(
          fmt::format("{}: line {}: has {} values, the first row (line {}) has {}", origin, line_no,
                      row.size(), first_row_line, rows[0].size()));
    }
    rows.push_back(std::move(row));
  }
  if (rows.empty() && header_line > 0) {
    return Status::Invalid(fmt::format(
        "{}: line {}: no number in it, and no row of numbers after it (a CSV load is one row of "
        "comma-separated numbers per layer, after an optional header)",
        origin, header_line));
  }
  if (rows.empty()) {
    return Status::Invalid(fmt::format("{}: no data rows (only blank or comment lines)", origin));
  }
  if (header_line > 0 && header_fields != rows[0].size()) {
    return Status::Invalid(fmt::format("{}: line {}: the header has {} fields, the rows {}", origin,
                                       header_line, header_fields, rows[0].size()));
  }
  return Finish(rows, origin);
}

}  // namespace

StatusOr<LoadFile> ParseLoad(const std::string& text, const std::string& origin) {
  std::string_view body = text;
  if (body.starts_with("\xEF\xBB\xBF")) body.remove_prefix(3);  // UTF-8 byte order mark
  const size_t first = body.find_first_not_of(" \t\r\n\f\v");
  if (first == std::string_view::npos) return Status::Invalid(fmt::format("{}: is empty", origin));
  if (body[first] == '{' || body[first] == '[') return ParseJsonLoad(std::string(body), origin);
  return ParseCsvLoad(body, origin);
}

LoadFile SplitLoadRows(LoadMatrix all) {
  LoadFile f;
  f.all = std::move(all);
  f.zero_rows = f.all.ZeroRows();
  size_t next_zero = 0;
  for (int l = 0; l < f.all.layers(); ++l) {
    if (next_zero < f.zero_rows.size() && f.zero_rows[next_zero] == l) {
      ++next_zero;
    } else {
      f.moe_rows.push_back(l);
    }
  }
  f.moe = f.all.SelectRows(f.moe_rows);
  return f;
}

StatusOr<LoadFile> ReadLoadFile(const std::string& path) {
  EPLB_ASSIGN_OR_RETURN(const std::string text, ReadFile(path));
  return ParseLoad(text, path);
}

}  // namespace eplb
