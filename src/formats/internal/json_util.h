// JSON helpers shared by the format readers. Nothing here throws.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "eplb/status.h"

namespace eplb::formats_internal {

// Parses `text`; on failure the message is "<origin>: line L, column C: not valid JSON: <why>".
StatusOr<nlohmann::json> ParseJson(const std::string& text, const std::string& origin);

// A short one-line rendering of a value for "got ..." in messages: numbers as written (inf and
// nan included), strings quoted and shortened, "an array" / "an object" for containers.
std::string Describe(const nlohmann::json& v);

// The value when it is a JSON integer (not a float such as 2.0), saturated to the int64 range.
std::optional<int64_t> AsInteger(const nlohmann::json& v);

}  // namespace eplb::formats_internal
