// Expert maps: vllm-ascend's per-device layout and SGLang's physical_to_logical_map. Keys other
// than the ones read here are ignored; everything read is checked.
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "eplb/formats.h"
#include "formats/internal/json_util.h"

namespace eplb {
namespace {

using json = nlohmann::json;
using formats_internal::AsInteger;
using formats_internal::Describe;

// The file's shape and ids after the structural checks; ids are not yet range-checked.
struct RawMap {
  MapFormat format = MapFormat::kVllmAscend;
  int layers = 0;
  int ranks = 0;
  int slots_per_rank = 0;
  std::vector<int64_t> ids;  // layers x ranks x slots_per_rank
};

// The JSON path of the id of (layer, rank, slot) in the file it came from.
std::string IdPath(const RawMap& m, int layer, int rank, int slot) {
  if (m.format == MapFormat::kVllmAscend) {
    return fmt::format("layer_list[{}].device_list[{}].device_expert[{}]", layer, rank, slot);
  }
  return fmt::format("physical_to_logical_map[{}][{}]", layer, rank * m.slots_per_rank + slot);
}

std::string Join(const std::string& where, const std::string& key) {
  return where.empty() ? key : where + "." + key;
}

StatusOr<const json*> Member(const json& obj, const std::string& where, const std::string& key,
                             const std::string& origin) {
  const auto it = obj.find(key);
  if (it == obj.end()) {
    return Status::Invalid(fmt::format("{}: {}: missing key \"{}\"", origin,
                                       where.empty() ? "top level" : where, key));
  }
  return &*it;
}

StatusOr<const json*> ArrayMember(const json& obj, const std::string& where, const std::string& key,
                                  const std::string& origin) {
  EPLB_ASSIGN_OR_RETURN(const json* v, Member(obj, where, key, origin));
  if (!v->is_array()) {
    return Status::Invalid(
        fmt::format("{}: {}: expected an array, got {}", origin, Join(where, key), Describe(*v)));
  }
  return v;
}

// A member that must be an integer > 0.
StatusOr<int64_t> CountMember(const json& obj, const std::string& where, const std::string& key,
                              const std::string& origin) {
  EPLB_ASSIGN_OR_RETURN(const json* v, Member(obj, where, key, origin));
  const std::optional<int64_t> n = AsInteger(*v);
  if (!n || *n <= 0) {
    return Status::Invalid(fmt::format("{}: {}: expected a positive integer, got {}", origin,
                                       Join(where, key), Describe(*v)));
  }
  return *n;
}

// A member that must be the integer `expected` (layer_id, device_id: in order from 0).
Status CheckIndex(const json& obj, const std::string& where, const std::string& key,
                  int64_t expected, const std::string& origin) {
  EPLB_ASSIGN_OR_RETURN(const json* v, Member(obj, where, key, origin));
  const std::optional<int64_t> n = AsInteger(*v);
  if (!n || *n != expected) {
    return Status::Invalid(fmt::format("{}: {}: expected {} (in order from 0), got {}", origin,
                                       Join(where, key), expected, Describe(*v)));
  }
  return Status::Ok();
}

// Appends the ids of one array (a device's slots or a layer's physical slots).
Status AppendIds(const json& ids, const std::string& where, const std::string& origin,
                 std::vector<int64_t>& out) {
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::optional<int64_t> id = AsInteger(ids[i]);
    if (!id) {
      return Status::Invalid(
          fmt::format("{}: {}[{}]: expected an integer logical expert id, got {}", origin, where, i,
                      Describe(ids[i])));
    }
    if (ids[i].is_number_unsigned() && *id == std::numeric_limits<int64_t>::max()) {
      // AsInteger saturated it: named as written, not as the saturated value.
      return Status::Invalid(fmt::format("{}: {}[{}]: logical expert {} is out of range", origin,
                                         where, i, ids[i].dump()));
    }
    out.push_back(*id);
  }
  return Status::Ok();
}

StatusOr<RawMap> ParseVllmAscend(const json& doc, int ranks, const std::string& origin) {
  RawMap m;
  m.format = MapFormat::kVllmAscend;
  EPLB_ASSIGN_OR_RETURN(const int64_t layer_count, CountMember(doc, "", "moe_layer_count", origin));
  EPLB_ASSIGN_OR_RETURN(const json* layers, ArrayMember(doc, "", "layer_list", origin));
  if (static_cast<int64_t>(layers->size()) != layer_count) {
    return Status::Invalid(fmt::format("{}: layer_list: has {} layers, moe_layer_count is {}",
                                       origin, layers->size(), layer_count));
  }
  m.layers = static_cast<int>(layer_count);
  for (int l = 0; l < m.layers; ++l) {
    const std::string where = fmt::format("layer_list[{}]", l);
    const json& layer = (*layers)[l];
    if (!layer.is_object()) {
      return Status::Invalid(
          fmt::format("{}: {}: expected an object, got {}", origin, where, Describe(layer)));
    }
    EPLB_RETURN_IF_ERROR(CheckIndex(layer, where, "layer_id", l, origin));
    EPLB_ASSIGN_OR_RETURN(const int64_t device_count,
                          CountMember(layer, where, "device_count", origin));
    EPLB_ASSIGN_OR_RETURN(const json* devices, ArrayMember(layer, where, "device_list", origin));
    if (static_cast<int64_t>(devices->size()) != device_count) {
      return Status::Invalid(fmt::format("{}: {}.device_list: has {} devices, device_count is {}",
                                         origin, where, devices->size(), device_count));
    }
    if (l == 0) {
      if (ranks != -1 && device_count != ranks) {
        return Status::Invalid(
            fmt::format("{}: {}.device_count: the file has {} devices, expected {} ranks", origin,
                        where, device_count, ranks));
      }
      m.ranks = static_cast<int>(device_count);
    } else if (device_count != m.ranks) {
      return Status::Invalid(fmt::format(
          "{}: {}.device_count: is {}, layer_list[0] has {}; every layer needs the same devices",
          origin, where, device_count, m.ranks));
    }
    for (int r = 0; r < m.ranks; ++r) {
      const std::string dwhere = fmt::format("{}.device_list[{}]", where, r);
      const json& device = (*devices)[r];
      if (!device.is_object()) {
        return Status::Invalid(
            fmt::format("{}: {}: expected an object, got {}", origin, dwhere, Describe(device)));
      }
      EPLB_RETURN_IF_ERROR(CheckIndex(device, dwhere, "device_id", r, origin));
      EPLB_ASSIGN_OR_RETURN(const json* ids, ArrayMember(device, dwhere, "device_expert", origin));
      if (l == 0 && r == 0) {
        if (ids->empty()) {
          return Status::Invalid(fmt::format("{}: {}.device_expert: is empty", origin, dwhere));
        }
        m.slots_per_rank = static_cast<int>(ids->size());
      } else if (ids->size() != static_cast<size_t>(m.slots_per_rank)) {
        return Status::Invalid(fmt::format(
            "{}: {}.device_expert: has {} slots, layer_list[0].device_list[0] has {}; every "
            "device needs the same number of slots",
            origin, dwhere, ids->size(), m.slots_per_rank));
      }
      EPLB_RETURN_IF_ERROR(AppendIds(*ids, dwhere + ".device_expert", origin, m.ids));
    }
  }
  return m;
}

StatusOr<RawMap> ParseSglang(const json& doc, int ranks, const std::string& origin) {
  RawMap m;
  m.format = MapFormat::kSglang;
  EPLB_ASSIGN_OR_RETURN(const json* layers,
                        ArrayMember(doc, "", "physical_to_logical_map", origin));
  if (layers->empty()) {
    return Status::Invalid(fmt::format("{}: physical_to_logical_map: has no layers", origin));
  }
  m.layers = static_cast<int>(layers->size());
  size_t slots = 0;
  for (int l = 0; l < m.layers; ++l) {
    const std::string where = fmt::format("physical_to_logical_map[{}]", l);
    const json& row = (*layers)[l];
    if (!row.is_array()) {
      return Status::Invalid(fmt::format("{}: {}: expected an array of logical expert ids, got {}",
                                         origin, where, Describe(row)));
    }
    if (l == 0) {
      if (row.empty()) return Status::Invalid(fmt::format("{}: {}: is empty", origin, where));
      slots = row.size();
      if (ranks != -1 && slots % ranks != 0) {
        return Status::Invalid(
            fmt::format("{}: {}: {} physical slots per layer cannot be split evenly over {} ranks",
                        origin, where, slots, ranks));
      }
    } else if (row.size() != slots) {
      return Status::Invalid(
          fmt::format("{}: {}: has {} physical slots, physical_to_logical_map[0] has {}", origin,
                      where, row.size(), slots));
    }
    EPLB_RETURN_IF_ERROR(AppendIds(row, where, origin, m.ids));
  }
  m.ranks = ranks == -1 ? static_cast<int>(slots) : ranks;
  m.slots_per_rank = static_cast<int>(slots) / m.ranks;
  return m;
}

}  // namespace

StatusOr<MapFormat> ParseMapFormat(const std::string& name) {
  if (name == "vllm-ascend") return MapFormat::kVllmAscend;
  if (name == "sglang") return MapFormat::kSglang;
  return Status::Invalid(fmt::format(
      "unknown expert-map format \"{}\"; expected \"vllm-ascend\" or \"sglang\"", name));
}

std::string MapFormatName(MapFormat f) {
  return f == MapFormat::kSglang ? "sglang" : "vllm-ascend";
}

StatusOr<MapFile> ParseExpertMap(const std::string& text, const std::string& origin, int experts,
                                 int ranks) {
  if (experts == 0 || experts < -1) {
    return Status::Invalid(
        fmt::format("{}: experts must be -1 (from the file) or > 0, got {}", origin, experts));
  }
  if (ranks == 0 || ranks < -1) {
    return Status::Invalid(
        fmt::format("{}: ranks must be -1 (from the file) or > 0, got {}", origin, ranks));
  }
  if (text.find_first_not_of(" \t\r\n\f\v") == std::string::npos) {
    return Status::Invalid(fmt::format("{}: is empty", origin));
  }
  EPLB_ASSIGN_OR_RETURN(const json doc, formats_internal::ParseJson(text, origin));
  if (!doc.is_object()) {
    return Status::Invalid(
        fmt::format("{}: expected a JSON object (vllm-ascend or SGLang expert map), got {}", origin,
                    Describe(doc)));
  }
  const bool vllm = doc.contains("layer_list") || doc.contains("moe_layer_count");
  const bool sglang = doc.contains("physical_to_logical_map");
  if (vllm == sglang) {
    return Status::Invalid(fmt::format(
        "{}: expected the keys of exactly one layout, \"moe_layer_count\" and \"layer_list\" "
        "(vllm-ascend) or \"physical_to_logical_map\" (SGLang), found {}",
        origin, vllm ? "both" : "neither"));
  }
  StatusOr<RawMap> parsed =
      vllm ? ParseVllmAscend(doc, ranks, origin) : ParseSglang(doc, ranks, origin);
  if (!parsed.ok()) return parsed.status();
  const RawMap& m = *parsed;

  // Without a given expert count, an id >= the slots of a layer cannot be right either: some
  // expert below it would be left without a replica. The bound also caps what we allocate.
  const int64_t slots = static_cast<int64_t>(m.ranks) * m.slots_per_rank;
  const int64_t bound = experts == -1 ? slots : experts;
  int64_t max_id = -1;
  for (int l = 0; l < m.layers; ++l) {
    for (int r = 0; r < m.ranks; ++r) {
      for (int s = 0; s < m.slots_per_rank; ++s) {
        const int64_t id = m.ids[(static_cast<size_t>(l) * m.ranks + r) * m.slots_per_rank + s];
        if (id < 0 || id >= bound) {
          return Status::Invalid(fmt::format(
              "{}: {}: logical expert {} is out of range [0, {}){}", origin, IdPath(m, l, r, s), id,
              bound, experts == -1 ? fmt::format(" (a layer has {} physical slots)", slots) : ""));
        }
        max_id = std::max(max_id, id);
      }
    }
  }
  MapFile out;
  out.format = m.format;
  out.placement = Placement(m.layers, m.ranks, m.slots_per_rank,
                            experts == -1 ? static_cast<int>(max_id + 1) : experts,
                            std::vector<int>(m.ids.begin(), m.ids.end()));
  EPLB_RETURN_IF_ERROR(ValidatePlacement(out.placement).WithPrefix(origin));
  return out;
}

StatusOr<MapFile> ReadExpertMap(const std::string& path, int experts, int ranks) {
  EPLB_ASSIGN_OR_RETURN(const std::string text, ReadFile(path));
  return ParseExpertMap(text, path, experts, ranks);
}

std::string SerializeExpertMap(const Placement& p, MapFormat format) {
  const int slots = p.slots_per_rank();
  std::string out;
  if (format == MapFormat::kSglang) {
    out += "{\n  \"physical_to_logical_map\": [\n";
    for (int l = 0; l < p.layers(); ++l) {
      out +=
          fmt::format("    [{}]{}\n", fmt::join(p.layer(l), ", "), l + 1 < p.layers() ? "," : "");
    }
    out += "  ]\n}\n";
    return out;
  }
  out += fmt::format("{{\n  \"moe_layer_count\": {},\n  \"layer_list\": [\n", p.layers());
  for (int l = 0; l < p.layers(); ++l) {
    out +=
        fmt::format("    {{\n      \"layer_id\": {},\n      \"device_count\": {},\n", l, p.ranks());
    out += "      \"device_list\": [\n";
    for (int r = 0; r < p.ranks(); ++r) {
      const std::span<const int> ids = p.layer(l).subspan(static_cast<size_t>(r) * slots, slots);
      out += fmt::format("        {{\"device_id\": {}, \"device_expert\": [{}]}}{}\n", r,
                         fmt::join(ids, ", "), r + 1 < p.ranks() ? "," : "");
    }
    out += fmt::format("      ]\n    }}{}\n", l + 1 < p.layers() ? "," : "");
  }
  out += "  ]\n}\n";
  return out;
}

Status WriteExpertMap(const std::string& path, const Placement& p, MapFormat format) {
  EPLB_RETURN_IF_ERROR(ValidatePlacement(p).WithPrefix(
      fmt::format("{}: refusing to write an invalid placement", path)));
  return WriteFileAtomic(path, SerializeExpertMap(p, format));
}

}  // namespace eplb
