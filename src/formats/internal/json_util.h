// JSON helpers shared by the format readers. Nothing here throws.
#pragma once

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>

#include "eplb/status.h"

namespace eplb::formats_internal {

// The first key given twice in one JSON object: nlohmann keeps only the last value, so a reader
// that must not drop one silently asks the parser for it.
struct DuplicateKey {
  int depth = 0;  // the callback depth of the key (1: a key of the top-level object); 0: none
  std::string key;
};
// A parser callback for nlohmann::json::parse that records in *first the first key given twice in
// one object at depth <= max_depth (first must outlive the parse).
nlohmann::json::parser_callback_t SpotDuplicateKeys(
    DuplicateKey* first, int max_depth = std::numeric_limits<int>::max());

// Parses `text`; on failure the message is "<origin>: line L, column C: not valid JSON: <why>",
// or "<origin>: key "K" appears twice in one object".
StatusOr<nlohmann::json> ParseJson(const std::string& text, const std::string& origin);

// A short one-line rendering of a value for "got ..." in messages: numbers as written (inf and
// nan included), strings quoted and shortened, "an array" / "an object" for containers.
std::string Describe(const nlohmann::json& v);

// The value when it is a JSON integer (not a float such as 2.0), saturated to the int64 range.
std::optional<int64_t> AsInteger(const nlohmann::json& v);

}  // namespace eplb::formats_internal
