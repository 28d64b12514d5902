// The subcommands of the `eplb` command line, and what they share. Each Add* registers its options
// on `app` and returns the action that runs it; an action returns the exit status (0 ok, 1 error)
// and prints errors as one line on stderr. Actions write their output files only after everything
// else succeeded, through WriteOutputs.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "eplb/loads.h"
#include "eplb/placement.h"
#include "eplb/status.h"

namespace eplb::tools {

using Action = std::function<int()>;

Action AddPlan(CLI::App& app);
Action AddValidate(CLI::App& app);
Action AddConvert(CLI::App& app);
Action AddStats(CLI::App& app);
Action AddCheckConfig(CLI::App& app);
Action AddDemo(CLI::App& app);

// Prints "eplb <command>: <message>" on stderr and returns 1.
int Fail(const std::string& command, const Status& status);

// Checks an option's text is a decimal integer in the uint64 range before CLI11 converts it
// (CLI11 2.1 reads -1 and values past 2^64 - 1 as 2^64 - 1).
CLI::Validator Uint64Text();

// Tightens CLI11's reading of every option of `app` and its subcommands (call once every option
// is added): integers are decimal (CLI11 2.1 reads "064" as octal 52 and "0x40" as 64; leading
// zeros are dropped, so "064" is 64, and anything but an optional sign and digits is an error
// naming the option), and a text value (a path, a name) may not be empty (--out "" wrote
// nothing and said nothing).
void StrictValues(CLI::App& app);

// Where a load comes from: a statistics file, or the embedded generator.
struct LoadArgs {
  std::vector<std::string> paths;  // --load, once or more: their loads are summed
  bool generate = false;
  GeneratorOptions gen;
};
// Registers --load FILE, --generate and the generator's options (--seed, --layers, --experts,
// --top-k, --tokens, --skew, --shift), which CLI11 refuses together with --load.
void AddLoadOptions(CLI::App& app, LoadArgs& args);

// A load ready for balancing: the MoE rows only; all-zero (dense) rows are left out and listed.
struct LoadInput {
  LoadMatrix moe;
  std::vector<int> moe_rows;    // row index in the file of each row of `moe`
  std::vector<int> dense_rows;  // row indices in the file left out
  std::string source;           // the file's path, or "generated (seed N, ...)"
};
// Reads the file or runs the generator; exactly one of the two must be asked for.
StatusOr<LoadInput> ReadLoad(const LoadArgs& args);

// OK unless two of the paths name one file, under any spelling ("r.json", "./r.json", a
// symlinked folder, a hard link): "<path>: named for two outputs (also as <other>)".
Status CheckDistinctOutputs(const std::vector<std::string>& paths);

// Before a command does its work: the outputs are distinct (CheckDistinctOutputs), each may be
// written (CheckOutputFile) and its directory exists, so that a long run does not end in an
// error it could have given at once. WriteOutputs checks again when it writes.
Status CheckOutputsUpFront(const std::vector<std::string>& paths);

// OK unless an output names the same file as one of `inputs` (under any spelling, as above):
// "<output>: an output that is also an input (<what> <input>); ...".
Status CheckOutputsAreNotInputs(const std::vector<std::string>& outputs,
                                const std::vector<std::string>& inputs, const std::string& what);

// Writes each (path, contents) atomically, in order. When one write fails, the files already
// written by this call are put back as they were (removed, or rewritten with their old contents),
// so a failed command leaves no partial output. Two entries may not name the same path.
Status WriteOutputs(const std::vector<std::pair<std::string, std::string>>& files);

// "none", or the ids joined by ", ".
std::string JoinIds(const std::vector<int>& ids);
// Bytes in MiB or GiB, e.g. "42.0 MiB", "746.9 GiB".
std::string FormatBytes(int64_t bytes);

}  // namespace eplb::tools
