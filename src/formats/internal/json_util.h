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

// Parses `text`. Not JSON: "<origin>: line L, column C: not valid JSON: <why>", the place (from 1)
// of the last character the parser read, the end of the text counting as one. A key given twice
// in one object: without `duplicate`, "<origin>: key "K" appears twice in one object"; with it,
// the parse succeeds and *duplicate records the first such key at object depth <= max_depth, for
// the caller to report in its terms.
StatusOr<nlohmann::json> ParseJson(const std::string& text, const std::string& origin,
                                   DuplicateKey* duplicate = nullptr,
                                   int max_depth = std::numeric_limits<int>::max());

// A short one-line rendering of a value for "got ..." in messages: numbers as written (inf and
// nan included), strings quoted and shortened, "an array" / "an object" for containers.
std::string Describe(const nlohmann::json& v);

// The value when it is a JSON integer (not a float such as 2.0), saturated to the int64 range.
std::optional<int64_t> AsInteger(const nlohmann::json& v);

}  // namespace eplb::formats_internal
