#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <numeric>
#include <optional>
#include <span>

#include "eplb/formats.h"
#include "tools/commands.h"

namespace eplb::tools {

int Fail(const std::string& command, const Status& status) {
  std::string message = status.message();
  // One line, always: a message from a parser may quote text with line breaks in it.
  for (char& c : message) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  fmt::print(stderr, "eplb {}: {}\n", command, message);
  return 1;
}

CLI::Validator Uint64Text() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        uint64_t value = 0;
        const char* end = text.data() + text.size();
        const auto [stop, error] = std::from_chars(text.data(), end, value);
        if (error != std::errc() || stop != end) {
          return "expected an integer in [0, 2^64 - 1], got " + text;
        }
        return "";
      },
      "UINT64");
}

void StrictValues(CLI::App& app) {
  for (CLI::Option* o : app.get_options()) {
    const std::string type = o->get_type_name();
    if (type.starts_with("TEXT")) {
      // An empty path (--out "") was taken as "not given": nothing written, no error.
      o->transform(
          [](std::string text) {
            if (text.empty()) throw CLI::ValidationError("expected a value, got an empty string");
            return text;
          },
          "NONEMPTY");
      continue;
    }
    if (!type.starts_with("INT") && !type.starts_with("UINT")) continue;
    // A transform runs before the option's other checks and its conversion.
    o->transform(
        [](std::string text) {
          // CLI11 2.1 reads "064" as octal 52 and "0x40" as 64: only decimal digits (after an
          // optional sign) are taken, and leading zeros are dropped, so "064" is 64.
          const size_t sign = !text.empty() && (text[0] == '-' || text[0] == '+') ? 1 : 0;
          const bool digits =
              text.size() > sign && std::all_of(text.begin() + sign, text.end(),
                                                [](char c) { return c >= '0' && c <= '9'; });
          if (!digits) throw CLI::ValidationError("expected a decimal integer, got " + text);
          const size_t first = text.find_first_not_of('0', sign);
          return text.substr(0, sign) + (first == std::string::npos ? "0" : text.substr(first));
        },
        "DECIMAL");
  }
  for (CLI::App* sub : app.get_subcommands({})) StrictValues(*sub);
}

void AddLoadOptions(CLI::App& app, LoadArgs& a) {
  CLI::Option* load = app.add_option(
      "--load", a.paths,
      "load statistics: SGLang JSON (logical_count or counts) or CSV; several files (one shape) "
      "are summed as counted");
  CLI::Option* generate = app.add_flag("--generate", a.generate,
                                       "use the embedded workload generator instead of --load");
  load->excludes(generate);
  std::vector<CLI::Option*> gen = {
      app.add_option("--seed", a.gen.seed, "generator: seed")
          ->capture_default_str()
          ->check(Uint64Text()),
      app.add_option("--layers", a.gen.layers, "generator: MoE layers")
          ->capture_default_str()
          ->check(CLI::Range(1, 100000)),
      app.add_option("--experts", a.gen.experts, "generator: logical experts per layer")
          ->capture_default_str()
          ->check(CLI::Range(1, 1 << 20)),
      app.add_option("--top-k", a.gen.top_k, "generator: experts each token is routed to")
          ->capture_default_str()
          ->check(CLI::Range(1, 1 << 20)),
      app.add_option("--tokens", a.gen.tokens, "generator: tokens per layer")
          ->capture_default_str()
          ->check(CLI::Range(int64_t{1}, int64_t{1} << 40)),
      app.add_option("--skew", a.gen.skew, "generator: log-normal sigma of expert popularity")
          ->capture_default_str()
          ->check(CLI::Range(0.0, 4.0)),
      app.add_option("--shift", a.gen.shift,
                     "generator: workload shift K (K != 0 redraws 10% of the experts' popularity)")
          ->capture_default_str(),
  };
  for (CLI::Option* o : gen) o->excludes(load);
}

StatusOr<LoadInput> ReadLoad(const LoadArgs& a) {
  if (a.paths.empty() == !a.generate) {
    return Status::Invalid("give exactly one of --load FILE or --generate");
  }
  LoadInput in;
  if (a.generate) {
    EPLB_RETURN_IF_ERROR(ValidateGeneratorOptions(a.gen));
    if (static_cast<double>(a.gen.layers) * a.gen.experts > 1e8) {
      return Status::Invalid(fmt::format("--layers x --experts = {} x {} is larger than 1e8",
                                         a.gen.layers, a.gen.experts));
    }
    in.moe = GenerateLoad(a.gen);
    for (int l = 0; l < in.moe.layers(); ++l) in.moe_rows.push_back(l);
    in.source =
        fmt::format("generated (seed {}, skew {}, shift {})", a.gen.seed, a.gen.skew, a.gen.shift);
    return in;
  }
  EPLB_ASSIGN_OR_RETURN(LoadFile file, ReadLoadFile(a.paths[0]));
  // Several files are summed as counted (a mix of workloads), then split again.
  for (size_t i = 1; i < a.paths.size(); ++i) {
    EPLB_ASSIGN_OR_RETURN(LoadFile more, ReadLoadFile(a.paths[i]));
    LoadMatrix& sum = file.all;
    if (more.all.layers() != sum.layers() || more.all.experts() != sum.experts()) {
      return Status::Invalid(fmt::format(
          "{}: {} rows x {} experts, but {} has {} x {}: loads to sum must have one shape",
          a.paths[i], more.all.layers(), more.all.experts(), a.paths[0], sum.layers(),
          sum.experts()));
    }
    sum += more.all;
    for (int l = 0; l < sum.layers(); ++l) {
      std::span<const double> row = sum.row(l);
      if (!std::isfinite(std::accumulate(row.begin(), row.end(), 0.0))) {
        return Status::Invalid(fmt::format(
            "{}: row {}: the loads summed up to this file exceed the largest double; scale them "
            "down",
            a.paths[i], l));
      }
    }
  }
  if (a.paths.size() > 1) file = SplitLoadRows(std::move(file.all));
  in.moe = std::move(file.moe);
  in.moe_rows = std::move(file.moe_rows);
  in.dense_rows = std::move(file.zero_rows);
  in.source = fmt::format("{}", fmt::join(a.paths, " + "));
  return in;
}

namespace {

// A path resolved as far as it exists, so that "r.json", "./r.json", "d/../r.json" and a symlink
// compare equal before the file exists.
std::filesystem::path Resolved(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::path p = fs::weakly_canonical(fs::absolute(path, ec), ec);
  return ec ? fs::path(path).lexically_normal() : p;
}

// Whether two paths name one file: by resolution, or as a hard link once it exists.
bool SameFile(const std::string& a, const std::string& b) {
  std::error_code ec;
  return Resolved(a) == Resolved(b) || std::filesystem::equivalent(a, b, ec);
}

}  // namespace

Status CheckDistinctOutputs(const std::vector<std::string>& paths) {
  for (size_t i = 0; i < paths.size(); ++i) {
    for (size_t j = 0; j < i; ++j) {
      if (SameFile(paths[i], paths[j])) {
        return Status::Invalid(
            fmt::format("{}: named for two outputs{}", paths[i],
                        paths[i] == paths[j] ? "" : " (also as " + paths[j] + ")"));
      }
    }
  }
  return Status::Ok();
}

Status CheckOutputsUpFront(const std::vector<std::string>& paths) {
  EPLB_RETURN_IF_ERROR(CheckDistinctOutputs(paths));
  for (const std::string& path : paths) EPLB_RETURN_IF_ERROR(CheckOutputFile(path));
  return Status::Ok();
}

Status CheckOutputsAreNotInputs(const std::vector<std::string>& outputs,
                                const std::vector<std::string>& inputs, const std::string& what) {
  for (const std::string& out : outputs) {
    for (const std::string& in : inputs) {
      if (SameFile(out, in)) {
        return Status::Invalid(
            fmt::format("{}: an output that is also an input ({} {}); writing "
                        "it would replace the input",
                        out, what, in));
      }
    }
  }
  return Status::Ok();
}

Status WriteOutputs(const std::vector<std::pair<std::string, std::string>>& files) {
  namespace fs = std::filesystem;
  std::vector<std::string> paths;
  for (const auto& f : files) paths.push_back(f.first);
  // Every path checked before the first write (a device or pipe before its contents are read as
  // a backup, where a pipe would block): a failure here leaves nothing to put back.
  EPLB_RETURN_IF_ERROR(CheckOutputsUpFront(paths));
  // What each file held before this call: nullopt when it did not exist.
  std::vector<std::optional<std::string>> old;
  for (size_t i = 0; i < files.size(); ++i) {
    const std::string& path = files[i].first;
    std::optional<std::string> before;
    std::error_code ec;
    if (fs::exists(path, ec)) {
      auto text = ReadFile(path);
      if (!text.ok()) return text.status();
      before = std::move(*text);
    }
    if (Status s = WriteFileAtomic(path, files[i].second); !s.ok()) {
      for (size_t j = 0; j < old.size(); ++j) {
        if (old[j]) {
          (void)WriteFileAtomic(files[j].first, *old[j]);
        } else {
          std::remove(files[j].first.c_str());
        }
      }
      return s;
    }
    old.push_back(std::move(before));
  }
  return Status::Ok();
}

std::string JoinIds(const std::vector<int>& ids) {
  return ids.empty() ? "none" : fmt::format("{}", fmt::join(ids, ", "));
}

std::string FormatBytes(int64_t bytes) {
  const double mib = static_cast<double>(bytes) / (1 << 20);
  return mib >= 1024 ? fmt::format("{:.1f} GiB", mib / 1024) : fmt::format("{:.1f} MiB", mib);
}

}  // namespace eplb::tools
