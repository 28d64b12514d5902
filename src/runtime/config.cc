#include "eplb/config.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <cmath>
#include <nlohmann/json.hpp>

#include "eplb/formats.h"

namespace eplb {
namespace {

using nlohmann::json;

const std::vector<std::string>& KnownKeys() {
  static const std::vector<std::string> keys = {"dynamic_eplb",
                                                "expert_heat_collection_interval",
                                                "algorithm_execution_interval",
                                                "num_redundant_experts",
                                                "expert_map_path",
                                                "expert_map_record_path",
                                                "algorithm",
                                                "max_layers_in_flight",
                                                "imbalance_threshold",
                                                "transfer_timeout_ms"};
  return keys;
}

int EditDistance(const std::string& a, const std::string& b) {
  std::vector<int> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = static_cast<int>(j);
  for (size_t i = 1; i <= a.size(); ++i) {
    int diag = row[0];
    row[0] = static_cast<int>(i);
    for (size_t j = 1; j <= b.size(); ++j) {
      const int up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] != b[j - 1])});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string Shown(const json& v) {
  std::string s = v.dump();
  return s.size() > 40 ? s.substr(0, 37) + "..." : s;
}

// Reads one key with its type and range; the message names origin, key, expectation and value.
class Reader {
 public:
  explicit Reader(std::string origin) : origin_(std::move(origin)) {}

  Status Bool(const json& v, const std::string& key, bool* out) const {
    if (!v.is_boolean()) return Bad(key, "true or false", v);
    *out = v.get<bool>();
    return Status::Ok();
  }
  Status Int(const json& v, const std::string& key, int64_t lo, int64_t hi, int* out) const {
    const std::string want = hi == INT32_MAX ? fmt::format("an integer >= {}", lo)
                                             : fmt::format("an integer in [{}, {}]", lo, hi);
    if (!v.is_number_integer() &&
        !(v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() &&
          std::abs(v.get<double>()) < 1e15)) {
      return Bad(key, want, v);
    }
    const double d = v.get<double>();
    if (d < static_cast<double>(lo) || d > static_cast<double>(hi)) return Bad(key, want, v);
    *out = static_cast<int>(d);
    return Status::Ok();
  }
  Status Number(const json& v, const std::string& key, double lo_excl, double hi,
                double* out) const {
    const std::string want = fmt::format("a number in ({}, {}]", lo_excl, hi);
    if (!v.is_number() || !(v.get<double>() > lo_excl && v.get<double>() <= hi)) {
      return Bad(key, want, v);
    }
    *out = v.get<double>();
    return Status::Ok();
  }
  Status String(const json& v, const std::string& key, std::string* out) const {
    if (!v.is_string()) return Bad(key, "a string", v);
    *out = v.get<std::string>();
    return Status::Ok();
  }
  Status Bad(const std::string& key, const std::string& want, const json& got) const {
    return Status::Invalid(
        fmt::format("{}: eplb_config.{}: expected {}, got {}", origin_, key, want, Shown(got)));
  }
  const std::string& origin() const { return origin_; }

 private:
  std::string origin_;
};

}  // namespace

StatusOr<RuntimeConfig> ParseRuntimeConfig(const std::string& text, const std::string& origin) {
  json doc = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return Status::Invalid(origin + ": not valid JSON");
  if (!doc.is_object())
    return Status::Invalid(origin + ": expected a JSON object, got " + Shown(doc));
  if (doc.contains("eplb_config")) {
    if (doc.size() != 1) {
      return Status::Invalid(origin + ": \"eplb_config\" must be the only top-level key");
    }
    doc = doc["eplb_config"];
    if (!doc.is_object()) {
      return Status::Invalid(origin + ": eplb_config: expected an object, got " + Shown(doc));
    }
  }
  const Reader r(origin);
  RuntimeConfig c;
  for (const auto& [key, v] : doc.items()) {
    Status s;
    if (key == "dynamic_eplb") {
      s = r.Bool(v, key, &c.dynamic_eplb);
    } else if (key == "expert_heat_collection_interval") {
      s = r.Int(v, key, 1, INT32_MAX, &c.expert_heat_collection_interval);
    } else if (key == "algorithm_execution_interval") {
      s = r.Int(v, key, 1, INT32_MAX, &c.algorithm_execution_interval);
    } else if (key == "num_redundant_experts") {
      s = r.Int(v, key, 0, INT32_MAX, &c.num_redundant_experts);
    } else if (key == "expert_map_path") {
      s = r.String(v, key, &c.expert_map_path);
    } else if (key == "expert_map_record_path") {
      s = r.String(v, key, &c.expert_map_record_path);
    } else if (key == "algorithm") {
      s = r.String(v, key, &c.algorithm);
      const auto names = BalancerNames();
      if (s.ok() && std::find(names.begin(), names.end(), c.algorithm) == names.end()) {
        s = r.Bad(key, fmt::format("one of {}", fmt::join(names, ", ")), v);
      }
    } else if (key == "max_layers_in_flight") {
      s = r.Int(v, key, 1, 1 << 20, &c.max_layers_in_flight);
    } else if (key == "imbalance_threshold") {
      s = r.Number(v, key, 0.0, 1.0, &c.imbalance_threshold);
    } else if (key == "transfer_timeout_ms") {
      s = r.Int(v, key, 1, 86400000, &c.transfer_timeout_ms);
    } else {
      std::string hint;
      for (const std::string& k : KnownKeys()) {
        if (EditDistance(key, k) <= 2) hint = fmt::format(" (did you mean \"{}\"?)", k);
      }
      return Status::Invalid(fmt::format("{}: eplb_config: unknown key \"{}\"{}; known keys: {}",
                                         origin, key, hint, fmt::join(KnownKeys(), ", ")));
    }
    EPLB_RETURN_IF_ERROR(s);
  }
  c.algorithm_options.skip_balancedness = c.imbalance_threshold;
  return c;
}

StatusOr<RuntimeConfig> LoadRuntimeConfig(const std::string& path_or_json) {
  const size_t first = path_or_json.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && path_or_json[first] == '{') {
    return ParseRuntimeConfig(path_or_json, "inline config");
  }
  EPLB_ASSIGN_OR_RETURN(std::string text, ReadFile(path_or_json));
  return ParseRuntimeConfig(text, path_or_json);
}

StatusOr<int> ResolveSlotsPerRank(const RuntimeConfig& c, int experts, int ranks) {
  if (experts <= 0) return Status::Invalid(fmt::format("experts must be > 0, got {}", experts));
  if (ranks <= 0) return Status::Invalid(fmt::format("ranks must be > 0, got {}", ranks));
  const int physical = experts + c.num_redundant_experts;
  if (physical % ranks != 0) {
    const int below = physical - physical % ranks - experts;
    const int above = physical + (ranks - physical % ranks) - experts;
    return Status::Invalid(fmt::format(
        "eplb_config.num_redundant_experts: {} experts + {} redundant = {} physical slots do not "
        "divide evenly over {} ranks; nearest valid values: {}",
        experts, c.num_redundant_experts, physical, ranks,
        below >= 0 ? fmt::format("{} or {}", below, above) : fmt::format("{}", above)));
  }
  const int slots_per_rank = physical / ranks;
  if (slots_per_rank > experts) {
    return Status::Invalid(fmt::format(
        "eplb_config.num_redundant_experts: {} slots per rank exceed the {} experts (a rank holds "
        "at most one replica of each)",
        slots_per_rank, experts));
  }
  if (!c.expert_map_path.empty()) {
    EPLB_ASSIGN_OR_RETURN(MapFile map, ReadExpertMap(c.expert_map_path, experts, ranks));
    if (map.placement.ranks() != ranks || map.placement.slots_per_rank() != slots_per_rank) {
      return Status::Invalid(fmt::format(
          "{}: expert map has {} ranks x {} slots, the configuration needs {} ranks x {} slots "
          "({} experts + {} redundant)",
          c.expert_map_path, map.placement.ranks(), map.placement.slots_per_rank(), ranks,
          slots_per_rank, experts, c.num_redundant_experts));
    }
  }
  return slots_per_rank;
}

std::string RuntimeConfigToJson(const RuntimeConfig& c) {
  json j = {{"dynamic_eplb", c.dynamic_eplb},
            {"expert_heat_collection_interval", c.expert_heat_collection_interval},
            {"algorithm_execution_interval", c.algorithm_execution_interval},
            {"num_redundant_experts", c.num_redundant_experts},
            {"expert_map_path", c.expert_map_path},
            {"expert_map_record_path", c.expert_map_record_path},
            {"algorithm", c.algorithm},
            {"max_layers_in_flight", c.max_layers_in_flight},
            {"imbalance_threshold", c.imbalance_threshold},
            {"transfer_timeout_ms", c.transfer_timeout_ms}};
  return json{{"eplb_config", j}}.dump(2);
}

}  // namespace eplb
