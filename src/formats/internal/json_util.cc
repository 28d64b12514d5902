#include "formats/internal/json_util.h"

#include <fmt/format.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace eplb::formats_internal {
namespace {

using json = nlohmann::json;

// A SAX consumer that accepts everything and keeps the first error; used only to locate the error
// once the ordinary (non-throwing) parse has failed.
class ErrorLocator : public nlohmann::json_sax<json> {
 public:
  bool null() override { return true; }
  bool boolean(bool) override { return true; }
  bool number_integer(number_integer_t) override { return true; }
  bool number_unsigned(number_unsigned_t) override { return true; }
  bool number_float(number_float_t, const string_t&) override { return true; }
  bool string(string_t&) override { return true; }
  bool binary(binary_t&) override { return true; }
  bool start_object(std::size_t) override { return true; }
  bool key(string_t&) override { return true; }
  bool end_object() override { return true; }
  bool start_array(std::size_t) override { return true; }
  bool end_array() override { return true; }
  bool parse_error(std::size_t position, const std::string&,
                   const nlohmann::detail::exception& ex) override {
    position_ = position;
    what_ = ex.what();
    return false;
  }

  size_t position() const { return position_; }
  // nlohmann's message without its "[json.exception...] " tag and its own "parse error at line
  // L, column C: " prefix, which the caller replaces with a uniform one.
  std::string reason() const {
    std::string r = what_;
    if (const size_t tag_end = r.find("] ");
        r.starts_with("[json.exception.") && tag_end != std::string::npos) {
      r = r.substr(tag_end + 2);
    }
    if (r.starts_with("parse error")) {
      const size_t colon = r.find(": ");
      if (colon != std::string::npos) r = r.substr(colon + 2);
    }
    std::replace(r.begin(), r.end(), '\n', ' ');
    return r;
  }

 private:
  size_t position_ = 0;
  std::string what_ = "unknown error";
};

// A parser callback for nlohmann::json::parse that records in *first the first key given twice in
// one object at depth <= max_depth (first must outlive the parse).
json::parser_callback_t SpotDuplicateKeys(DuplicateKey* first, int max_depth) {
  auto open = std::make_shared<std::vector<std::set<std::string>>>();  // keys per open object
  return [open, first, max_depth](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::object_start) {
      open->emplace_back();
    } else if (event == json::parse_event_t::object_end) {
      if (!open->empty()) open->pop_back();
    } else if (event == json::parse_event_t::key && !open->empty() && parsed.is_string() &&
               !open->back().insert(parsed.get<std::string>()).second && first->depth == 0 &&
               depth <= max_depth) {
      *first = {depth, parsed.get<std::string>()};
    }
    return true;
  };
}

}  // namespace

StatusOr<json> ParseJson(const std::string& text, const std::string& origin,
                         DuplicateKey* duplicate, int max_depth) {
  DuplicateKey own;
  DuplicateKey* const first = duplicate != nullptr ? duplicate : &own;
  json j = json::parse(text, SpotDuplicateKeys(first, max_depth), /*allow_exceptions=*/false);
  if (!j.is_discarded()) {
    if (duplicate == nullptr && own.depth != 0) {
      return Status::Invalid(
          fmt::format("{}: key {} appears twice in one object", origin,
                      json(own.key).dump(-1, ' ', false, json::error_handler_t::replace)));
    }
    return j;
  }
  ErrorLocator locator;
  (void)json::sax_parse(text, &locator);
  // The place of the last character read (the end of the text counts as one), where nlohmann
  // gave up: a literal cut short by a line break is reported on its own line.
  const size_t pos =
      std::min<size_t>(locator.position() == 0 ? 0 : locator.position() - 1, text.size());
  const size_t line = 1 + std::count(text.begin(), text.begin() + pos, '\n');
  const size_t newline = std::string_view(text).substr(0, pos).rfind('\n');
  const size_t column = 1 + (newline == std::string_view::npos ? pos : pos - newline - 1);
  return Status::Invalid(fmt::format("{}: line {}, column {}: not valid JSON: {}", origin, line,
                                     column, locator.reason()));
}

std::string Describe(const json& v) {
  switch (v.type()) {
    case json::value_t::array:
      return "an array";
    case json::value_t::object:
      return "an object";
    case json::value_t::number_float:  // as written: 1.0 stays 1.0 where an integer is expected
      return v.dump();
    case json::value_t::string: {
      std::string s = v.dump(-1, ' ', false, json::error_handler_t::replace);
      return s.size() <= 40 ? s : s.substr(0, 36) + "...\"";
    }
    default:
      return v.dump();
  }
}

std::optional<int64_t> AsInteger(const json& v) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    constexpr auto kMax = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
    return static_cast<int64_t>(std::min(u, kMax));
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  return std::nullopt;
}

}  // namespace eplb::formats_internal
