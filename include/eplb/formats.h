// File formats: load statistics and expert maps.
//
// Readers validate everything and return an error naming the file and the place (key, layer,
// row, column, rank, slot) of the first problem. Writers are atomic: they write a temporary file
// in the same directory and rename it over the target, so a reader never sees a half-written file
// and a failed write leaves the old file untouched.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "eplb/placement.h"
#include "eplb/status.h"

namespace eplb {

// Load statistics as read from a file. All-zero rows (dense layers) stay in `all` and are listed
// in `zero_rows`; `moe` holds the other rows in file order and is what balancing uses.
struct LoadFile {
  LoadMatrix all;
  std::vector<int> moe_rows;  // row index in the file of each row of `moe`
  std::vector<int> zero_rows;
  LoadMatrix moe;
};

// Reads SGLang's {"logical_count": [[...]]}, {"counts": [[...]], "num_layers": L,
// "num_experts": E} (the declared sizes are checked when present), or CSV (one row per layer,
// comma-separated numbers; '#' comment lines and an optional header line of non-numbers skipped).
// The format is chosen by content: a file starting with '{' is JSON.
StatusOr<LoadFile> ReadLoadFile(const std::string& path);
// Splits a load into its all-zero (dense) rows and the others (moe, moe_rows), as ReadLoadFile
// does.
LoadFile SplitLoadRows(LoadMatrix all);
// Parses JSON or CSV text; `origin` names the source in error messages.
StatusOr<LoadFile> ParseLoad(const std::string& text, const std::string& origin);

enum class MapFormat { kVllmAscend, kSglang };
// "vllm-ascend" / "sglang" <-> MapFormat.
StatusOr<MapFormat> ParseMapFormat(const std::string& name);
std::string MapFormatName(MapFormat f);

// An expert map as read from a file: the placement plus what the file said about its layout.
struct MapFile {
  Placement placement;
  MapFormat format = MapFormat::kVllmAscend;
};

// Reads either layout (detected from its keys) and validates the placement. `experts` is the
// number of logical experts, or -1 to take max id + 1. `ranks` is the number of ranks, or -1 to
// take it from the file; SGLang's layout does not record ranks, so there -1 gives every physical
// slot its own rank (slots_per_rank = 1). A given `ranks` must equal the file's device_count
// (vllm-ascend) or divide the physical slots per layer (SGLang).
StatusOr<MapFile> ReadExpertMap(const std::string& path, int experts = -1, int ranks = -1);
StatusOr<MapFile> ParseExpertMap(const std::string& text, const std::string& origin,
                                 int experts = -1, int ranks = -1);

// vllm-ascend: {"moe_layer_count": L, "layer_list": [{"layer_id": i, "device_count": R,
//   "device_list": [{"device_id": r, "device_expert": [ids per local slot]}]}]}
// SGLang: {"physical_to_logical_map": [[ids per physical slot] per layer]}
// SerializeExpertMap does not validate `p`; WriteExpertMap refuses an invalid placement.
std::string SerializeExpertMap(const Placement& p, MapFormat format);
Status WriteExpertMap(const std::string& path, const Placement& p, MapFormat format);

// Writes `contents` to `path` atomically: a temporary file "<path>.tmp.<pid>.<n>" in the same
// directory, fsync, rename over `path`. On failure the temporary file is removed, `path` is left as
// it was, and the error names `path`. The new file has mode 0644 less the umask. Through a
// symlink, the file it names is replaced and the link stays. Refuses (CheckOutputFile) a path
// that names a directory, a device, a pipe or a socket: renaming over /dev/null would replace it.
Status WriteFileAtomic(const std::string& path, const std::string& contents);
// OK when `path` is not empty and names a regular file (through symlinks), or nothing yet in a
// folder that exists: what WriteFileAtomic may write; else the error it gives.
Status CheckOutputFile(const std::string& path);
// Reads a whole file of at most max_bytes (an endless device such as /dev/zero is refused, not
// read until memory runs out; the default is far above any load or map); the error names the
// path and the reason.
inline constexpr size_t kMaxReadBytes = size_t{4} << 30;
StatusOr<std::string> ReadFile(const std::string& path, size_t max_bytes = kMaxReadBytes);

}  // namespace eplb
