#include "eplb/config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <filesystem>
#include <functional>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string_view>
#include <vector>

#include "eplb/formats.h"
#include "formats/internal/json_util.h"

namespace eplb {
namespace {

using json = nlohmann::json;
using formats_internal::DuplicateKey;

constexpr std::string_view kWrapper = "eplb_config";

// Parse errors and values are rendered with a bounded length so that a message stays one line.
constexpr size_t kShownMax = 40;

std::string Truncate(std::string s) {
  return s.size() <= kShownMax ? s : s.substr(0, kShownMax - 4) + "...";
}

// A value for "got ...": as written in JSON (strings quoted, control characters escaped),
// shortened.
std::string Shown(const json& v) {
  if (v.is_array()) return v.empty() ? "[]" : "an array";
  if (v.is_object()) return v.empty() ? "{}" : "an object";
  std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
  if (s.size() <= kShownMax) return s;
  return v.is_string() ? s.substr(0, kShownMax - 5) + "...\"" : Truncate(std::move(s));
}

// A key as it appears after "eplb_config.": bare when it is an identifier, else JSON-quoted (so a
// key holding a newline or a dot cannot break the one-line message or fake a path).
std::string KeyName(const std::string& key) {
  const bool plain = !key.empty() && std::all_of(key.begin(), key.end(), [](char ch) {
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '_' || ch == '-';
  });
  return plain ? Truncate(key) : Shown(json(key));
}

// The integer value of a JSON integer (not a float such as 2.0), saturated to the int64 range.
std::optional<int64_t> AsInteger(const json& v) {
  if (v.is_number_unsigned()) {
    return static_cast<int64_t>(
        std::min<uint64_t>(v.get<uint64_t>(), std::numeric_limits<int64_t>::max()));
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  return std::nullopt;
}

int EditDistance(std::string_view a, std::string_view b) {
  std::vector<int> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = static_cast<int>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    int diag = row[0];
    row[0] = static_cast<int>(i);
    for (size_t j = 1; j <= b.size(); ++j) {
      const int up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1] ? 1 : 0)});
      diag = up;
    }
  }
  return row[b.size()];
}

// Builds the messages of ParseRuntimeConfig: "<origin>: eplb_config.<key>: expected <what>, got
// <value>".
class Reader {
 public:
  explicit Reader(const std::string& origin) : origin_(origin) {}

  Status Bad(const std::string& key, const std::string& expected, const json& got) const {
    return Status::Invalid(fmt::format("{}: {}.{}: expected {}, got {}", origin_, kWrapper,
                                       KeyName(key), expected, Shown(got)));
  }

  Status Bool(const std::string& key, const json& v, bool* out) const {
    if (!v.is_boolean()) return Bad(key, "a boolean (true or false)", v);
    *out = v.get<bool>();
    return Status::Ok();
  }

  Status String(const std::string& key, const json& v, std::string* out) const {
    if (!v.is_string()) return Bad(key, "a string", v);
    *out = v.get<std::string>();
    return Status::Ok();
  }

 private:
  const std::string& origin_;
};

// One configuration key: its name, how it is read from JSON into the struct, how the value the
// struct holds is checked (for a configuration built in code; "" when valid, else "expected ...,
// got ...") and written back as JSON. A key's range is written once, in its builder below, and
// serves the reader and the check.
struct Key {
  std::string_view name;
  std::function<Status(const Reader& r, const std::string& key, const json& v, RuntimeConfig& c)>
      read;
  std::function<std::string(const RuntimeConfig& c)> check;  // empty: every value is valid
  std::function<nlohmann::ordered_json(const RuntimeConfig& c)> value;
};

// The member's value as JSON, for RuntimeConfigToJson.
template <typename Field>
auto ValueOf(Field field) {
  return [=](const RuntimeConfig& c) { return nlohmann::ordered_json(field(c)); };
}

// An integer key in [lo, hi] of type T (`field` gives the member, const or not). A range with no
// upper bound of its own (hi is T's max) is named "an integer >= lo" unless the value is above it.
template <typename T, typename Field>
Key IntKey(std::string_view name, Field field, int64_t lo,
           int64_t hi = std::numeric_limits<T>::max()) {
  const bool bounded = hi < std::numeric_limits<T>::max();
  auto expected = [=](bool above) {
    return bounded || above ? fmt::format("an integer in [{}, {}]", lo, hi)
                            : fmt::format("an integer >= {}", lo);
  };
  return {name,
          [=](const Reader& r, const std::string& k, const json& v, RuntimeConfig& c) {
            const std::optional<int64_t> i = AsInteger(v);
            if (!i || *i < lo) return r.Bad(k, expected(false), v);
            // AsInteger saturates: an unsigned value past the int64 range is past hi too.
            const bool past =
                v.is_number_unsigned() &&
                v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
            if (*i > hi || past) return r.Bad(k, expected(true), v);
            field(c) = static_cast<T>(*i);
            return Status::Ok();
          },
          [=](const RuntimeConfig& c) {
            const int64_t i = field(c);
            return i < lo || i > hi ? fmt::format("expected {}, got {}", expected(i > hi), i)
                                    : std::string();
          },
          ValueOf(field)};
}

// A number key >= lo, or in (lo, hi] when hi is given; integers count as numbers, booleans do
// not. Parsed JSON holds no infinity (a number past the double range is a syntax error); in the
// struct, infinity and NaN are out of range.
template <typename Field>
Key NumberKey(std::string_view name, Field field, double lo,
              std::optional<double> hi = std::nullopt) {
  const std::string expected =
      hi ? fmt::format("a number in ({}, {}]", lo, *hi) : fmt::format("a number >= {}", lo);
  auto valid = [=](double d) { return std::isfinite(d) && (hi ? d > lo && d <= *hi : d >= lo); };
  return {name,
          [=](const Reader& r, const std::string& k, const json& v, RuntimeConfig& c) {
            if (!v.is_number() || !valid(v.get<double>())) return r.Bad(k, expected, v);
            field(c) = v.get<double>();
            return Status::Ok();
          },
          [=](const RuntimeConfig& c) {
            return valid(field(c)) ? std::string()
                                   : fmt::format("expected {}, got {}", expected, field(c));
          },
          ValueOf(field)};
}

// A key whose every value of its JSON type is valid (a bool, a string): `read` is the Reader's
// check of that type.
template <typename T, typename Field>
Key PlainKey(std::string_view name, Field field,
             Status (Reader::*read)(const std::string&, const json&, T*) const) {
  return {name,
          [=](const Reader& r, const std::string& k, const json& v, RuntimeConfig& c) {
            return (r.*read)(k, v, &field(c));
          },
          {},
          ValueOf(field)};
}

// "one of "swift", "deepseek"": the registry's names.
std::string AlgorithmNames() {
  std::vector<std::string> quoted;
  for (const std::string& n : BalancerNames()) quoted.push_back(json(n).dump());
  return fmt::format("one of {}", fmt::join(quoted, ", "));
}

bool KnownAlgorithm(const std::string& name) {
  const std::vector<std::string> names = BalancerNames();
  return std::find(names.begin(), names.end(), name) != names.end();
}

// The member a key names, for a const or a mutable config.
#define EPLB_FIELD(member) \
  [](auto& c) -> auto& { return c.member; }

// In the order of config.h; RuntimeConfigToJson writes the same order.
const std::vector<Key>& Keys() {
  static const std::vector<Key> keys = {
      PlainKey("dynamic_eplb", EPLB_FIELD(dynamic_eplb), &Reader::Bool),
      IntKey<int>("expert_heat_collection_interval", EPLB_FIELD(expert_heat_collection_interval),
                  1),
      IntKey<int>("algorithm_execution_interval", EPLB_FIELD(algorithm_execution_interval), 1),
      IntKey<int>("num_redundant_experts", EPLB_FIELD(num_redundant_experts), 0),
      PlainKey("expert_map_path", EPLB_FIELD(expert_map_path), &Reader::String),
      PlainKey("expert_map_record_path", EPLB_FIELD(expert_map_record_path), &Reader::String),
      {"algorithm",
       [](const Reader& r, const std::string& k, const json& v, RuntimeConfig& c) {
         if (!v.is_string()) return r.Bad(k, AlgorithmNames() + " (a string)", v);
         if (!KnownAlgorithm(v.get<std::string>())) return r.Bad(k, AlgorithmNames(), v);
         c.algorithm = v.get<std::string>();
         return Status::Ok();
       },
       [](const RuntimeConfig& c) {
         return KnownAlgorithm(c.algorithm) ? std::string()
                                            : fmt::format("expected {}, got {}", AlgorithmNames(),
                                                          Shown(json(c.algorithm)));
       },
       ValueOf(EPLB_FIELD(algorithm))},
      PlainKey("expert_load_path", EPLB_FIELD(expert_load_path), &Reader::String),
      IntKey<int>("expert_heat_windows", EPLB_FIELD(expert_heat_windows), 1,
                  RuntimeConfig::kMaxHeatWindows),
      IntKey<int>("max_layers_in_flight", EPLB_FIELD(max_layers_in_flight), 1),
      NumberKey("imbalance_threshold", EPLB_FIELD(imbalance_threshold), 0.0, 1.0),
      IntKey<int>("transfer_timeout_ms", EPLB_FIELD(transfer_timeout_ms), 1),
      IntKey<int>("balancer_threads", EPLB_FIELD(balancer_threads), 1,
                  AlgorithmOptions::kMaxThreads),
      // swift's own options, read into algorithm_options.
      NumberKey("target_balancedness", EPLB_FIELD(algorithm_options.target_balancedness), 0.0, 1.0),
      IntKey<int>("max_changes_per_layer", EPLB_FIELD(algorithm_options.max_changes_per_layer), -1),
      IntKey<int64_t>("max_changes_per_cycle", EPLB_FIELD(algorithm_options.max_changes_per_cycle),
                      -1),
      NumberKey("inter_node_cost", EPLB_FIELD(algorithm_options.inter_node_cost), 1.0),
      NumberKey("min_gain_per_change", EPLB_FIELD(algorithm_options.min_gain_per_change), 0.0),
  };
  return keys;
}
#undef EPLB_FIELD

Status UnknownKey(const std::string& origin, const std::string& key) {
  std::vector<std::string_view> names;
  std::string_view best;
  int best_distance = 3;  // suggest only within edit distance 2
  for (const Key& k : Keys()) {
    names.push_back(k.name);
    // Keys longer than every known key by more than 2 cannot be within distance 2.
    if (key.size() > k.name.size() + 2) continue;
    const int d = EditDistance(key, k.name);
    if (d < best_distance) {  // ties go to the earlier key
      best_distance = d;
      best = k.name;
    }
  }
  const std::string hint = best.empty() ? "" : fmt::format(" (did you mean \"{}\"?)", best);
  return Status::Invalid(fmt::format("{}: {}.{}: unknown key{}; known keys: {}", origin, kWrapper,
                                     KeyName(key), hint, fmt::join(names, ", ")));
}

// Parses `text`; a syntax error gives "<origin>: line L, column C: not valid JSON: <why>".
StatusOr<json> ParseDocument(const std::string& text, const std::string& origin,
                             DuplicateKey* duplicate) {
  if (text.find_first_not_of(" \t\r\n") == std::string::npos) {
    return Status::Invalid(fmt::format("{}: is empty, expected a JSON object", origin));
  }
  // Duplicates at object depth 1 (top level) or 2 (inside it), where the keys of a config are.
  return formats_internal::ParseJson(text, origin, duplicate, /*max_depth=*/2);
}

StatusOr<RuntimeConfig> Parse(const std::string& text, const std::string& origin) {
  DuplicateKey duplicate;
  EPLB_ASSIGN_OR_RETURN(json doc, ParseDocument(text, origin, &duplicate));
  if (!doc.is_object()) {
    return Status::Invalid(fmt::format(
        "{}: expected a JSON object (the {} keys, bare or as {{\"{}\": {{...}}}}), got {}", origin,
        kWrapper, kWrapper, Shown(doc)));
  }
  int config_depth = 1;
  if (doc.contains(kWrapper)) {
    if (doc.size() != 1) {
      std::string other;
      for (const auto& [k, v] : doc.items()) {
        if (k != kWrapper) {
          other = k;
          break;
        }
      }
      return Status::Invalid(
          fmt::format("{}: {}: expected the only top-level key when present, got also {}", origin,
                      kWrapper, Shown(json(other))));
    }
    if (duplicate.depth == 1) {
      return Status::Invalid(
          fmt::format("{}: {}: expected once, given more than once", origin, kWrapper));
    }
    json inner = std::move(doc[std::string(kWrapper)]);
    doc = std::move(inner);
    if (!doc.is_object()) {
      return Status::Invalid(
          fmt::format("{}: {}: expected an object, got {}", origin, kWrapper, Shown(doc)));
    }
    config_depth = 2;
  }
  if (duplicate.depth == config_depth) {
    return Status::Invalid(fmt::format("{}: {}.{}: expected once, given more than once", origin,
                                       kWrapper, KeyName(duplicate.key)));
  }
  const Reader reader(origin);
  RuntimeConfig c;
  // json objects iterate in key order, so the first error reported does not depend on the text.
  for (const auto& item : doc.items()) {
    const std::string& key = item.key();
    const auto it =
        std::find_if(Keys().begin(), Keys().end(), [&](const Key& k) { return k.name == key; });
    if (it == Keys().end()) return UnknownKey(origin, key);
    EPLB_RETURN_IF_ERROR(it->read(reader, key, item.value(), c));
  }
  c.algorithm_options = BalancerOptions(c);
  return c;
}

// The valid K nearest below and above `k`: K >= 0 with (E + K) % R == 0 and (E + K) / R <= E.
std::string NearestValidRedundancy(int64_t e, int64_t k, int64_t r) {
  const int64_t min_spr = (e + r - 1) / r;
  const int64_t physical = e + k;
  std::vector<int64_t> valid;
  const int64_t below = std::min(physical / r, e);
  if (below >= min_spr && below * r - e < k) valid.push_back(below * r - e);
  const int64_t above = std::max((physical + r - 1) / r, min_spr);
  if (above <= e && above * r - e > k) valid.push_back(above * r - e);
  return fmt::format("{}", fmt::join(valid, " or "));
}

}  // namespace

StatusOr<RuntimeConfig> ParseRuntimeConfig(const std::string& json_text,
                                           const std::string& origin) {
  try {
    return Parse(json_text, origin);
  } catch (const std::exception& e) {  // only allocation failure is expected here
    return Status::Internal(
        fmt::format("{}: reading the configuration failed: {}", origin, e.what()));
  }
}

bool IsInlineConfig(const std::string& path_or_json) {
  const size_t first = path_or_json.find_first_not_of(" \t\r\n\f\v");
  return first != std::string::npos && path_or_json[first] == '{';
}

StatusOr<RuntimeConfig> LoadRuntimeConfig(const std::string& path_or_json) {
  if (IsInlineConfig(path_or_json)) return ParseRuntimeConfig(path_or_json, "inline config");
  EPLB_ASSIGN_OR_RETURN(const std::string text, ReadFile(path_or_json));
  return ParseRuntimeConfig(text, path_or_json);
}

Status ValidateRuntimeConfig(const RuntimeConfig& config) {
  for (const Key& key : Keys()) {
    if (!key.check) continue;
    if (const std::string problem = key.check(config); !problem.empty()) {
      return Status::Invalid(fmt::format("{}.{}: {}", kWrapper, key.name, problem));
    }
  }
  return Status::Ok();
}

Status CheckConfigPaths(const RuntimeConfig& config) {
  namespace fs = std::filesystem;
  if (!config.expert_map_path.empty() && !config.expert_load_path.empty()) {
    return Status::Invalid(fmt::format(
        "{}.expert_load_path: give expert_map_path or expert_load_path, not both (the initial "
        "placement is either a map or the algorithm's placement for a load)",
        kWrapper));
  }
  for (const auto& [key, path] : {std::pair{"expert_map_path", &config.expert_map_path},
                                  std::pair{"expert_load_path", &config.expert_load_path}}) {
    if (path->empty()) continue;
    std::error_code ec;
    const fs::file_status st = fs::status(*path, ec);
    if (!fs::exists(st)) {
      return Status::NotFound(
          fmt::format("{}.{}: {}: cannot open: No such file or directory", kWrapper, key, *path));
    }
    if (fs::is_directory(st)) {
      return Status::IoError(
          fmt::format("{}.{}: {}: cannot read: Is a directory", kWrapper, key, *path));
    }
  }
  if (const std::string& path = config.expert_map_record_path; !path.empty()) {
    EPLB_RETURN_IF_ERROR(
        CheckOutputFile(path).WithPrefix(fmt::format("{}.expert_map_record_path", kWrapper)));
  }
  return Status::Ok();
}

StatusOr<RuntimeStart> ResolveStart(const RuntimeConfig& config, int experts, int ranks) {
  EPLB_RETURN_IF_ERROR(ValidateRuntimeConfig(config));
  EPLB_RETURN_IF_ERROR(CheckConfigPaths(config));
  if (experts <= 0) {
    return Status::Invalid(fmt::format("model: experts must be > 0, got {}", experts));
  }
  if (ranks <= 0) return Status::Invalid(fmt::format("model: ranks must be > 0, got {}", ranks));
  const int64_t e = experts;
  const int64_t k = config.num_redundant_experts;
  const int64_t r = ranks;
  if ((e + k) % r != 0) {
    return Status::Invalid(fmt::format(
        "{}.num_redundant_experts: {} experts + {} redundant = {} physical slots cannot be split "
        "evenly over {} ranks; nearest valid num_redundant_experts: {}",
        kWrapper, e, k, e + k, r, NearestValidRedundancy(e, k, r)));
  }
  const int64_t slots_per_rank = (e + k) / r;
  if (slots_per_rank > e) {
    return Status::Invalid(fmt::format(
        "{}.num_redundant_experts: {} experts + {} redundant over {} ranks give {} slots per rank, "
        "more than the {} experts (a rank holds at most one replica of each); nearest valid "
        "num_redundant_experts: {}",
        kWrapper, e, k, r, slots_per_rank, e, NearestValidRedundancy(e, k, r)));
  }
  RuntimeStart start;
  start.slots_per_rank = static_cast<int>(slots_per_rank);
  if (!config.expert_map_path.empty()) {
    const std::string where = fmt::format("{}.expert_map_path", kWrapper);
    StatusOr<MapFile> map = ReadExpertMap(config.expert_map_path, experts, ranks);
    if (!map.ok()) return map.status().WithPrefix(where);
    const Placement& p = map->placement;
    if (p.ranks() != ranks || p.slots_per_rank() != slots_per_rank) {
      return Status::Invalid(fmt::format(
          "{}: {}: expected {} ranks x {} slots per rank ({} experts + {} redundant), found {} "
          "ranks x {} slots per rank",
          where, config.expert_map_path, r, slots_per_rank, e, k, p.ranks(), p.slots_per_rank()));
    }
    start.map = std::move(map->placement);
  }
  if (!config.expert_load_path.empty()) {
    const std::string where = fmt::format("{}.expert_load_path", kWrapper);
    StatusOr<LoadFile> load = ReadLoadFile(config.expert_load_path);
    if (!load.ok()) return load.status().WithPrefix(where);
    if (load->moe.experts() != experts) {
      return Status::Invalid(fmt::format("{}: {}: has {} experts per row, the model {}", where,
                                         config.expert_load_path, load->moe.experts(), experts));
    }
    start.load_zero_rows = load->zero_rows.size();
    start.load = std::move(load->moe);
  }
  return start;
}

StatusOr<int> ResolveSlotsPerRank(const RuntimeConfig& config, int experts, int ranks) {
  EPLB_ASSIGN_OR_RETURN(const RuntimeStart start, ResolveStart(config, experts, ranks));
  return start.slots_per_rank;
}

AlgorithmOptions BalancerOptions(const RuntimeConfig& config) {
  AlgorithmOptions options = config.algorithm_options;
  options.skip_balancedness = config.imbalance_threshold;
  options.threads = config.balancer_threads;
  return options;
}

std::string RuntimeConfigToJson(const RuntimeConfig& config) {
  // ordered_json keeps the order of Keys() (config.h's) rather than sorting the keys.
  nlohmann::ordered_json keys = nlohmann::ordered_json::object();
  for (const Key& key : Keys()) keys[std::string(key.name)] = key.value(config);
  nlohmann::ordered_json doc;
  doc[std::string(kWrapper)] = std::move(keys);
  // A path that is not valid UTF-8 is written with U+FFFD rather than throwing.
  return doc.dump(2, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

}  // namespace eplb
