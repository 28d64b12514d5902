#!/usr/bin/env bash
# What `make fuzz` runs: each libFuzzer target of fuzz/ for SECONDS (default 60), starting from
# its corpus in fuzz/corpus/<name>/ and a working corpus in <build>/fuzz-work/<name>/ that grows
# from run to run. An input that runs over 10 s counts as a hang. A crash or a hang leaves its
# input in <build>/fuzz-work/ (crash-* or timeout-*; reproduce with `<build>/fuzz/fuzz_<name>
# FILE`) and makes the script exit 1; add the input to fuzz/corpus/<name>/ with the fix, so that
# `make test` replays it from then on.
set -euo pipefail
build=$(cd "${1:-build-fuzz}" && pwd)
seconds=${2:-60}
src=$(cd "$(dirname "$0")/.." && pwd)
status=0
bins=("$build"/fuzz/fuzz_*)  # the targets fuzz/CMakeLists.txt builds
if [[ ! -x "${bins[0]}" ]]; then
  echo "fuzz.sh: no fuzz targets in $build/fuzz; build with make fuzz" >&2
  exit 1
fi
for bin in "${bins[@]}"; do
  name=${bin##*/fuzz_}
  [[ "$name" == *_replay ]] && continue  # corpus replays, when the tests were built here too
  work="$build/fuzz-work/$name"
  mkdir -p "$work"
  echo "fuzz.sh: $name for ${seconds}s"
  if ! (cd "$build/fuzz-work" && "$bin" -max_total_time="$seconds" -max_len=4096 -timeout=10 \
        -print_final_stats=1 "$work" "$src/fuzz/corpus/$name" 2>"$name.log"); then
    echo "fuzz.sh: $name FAILED; see $build/fuzz-work/$name.log and its crash-* or timeout-*" \
      "input there" >&2
    status=1
  fi
  grep -E "^stat::number_of_executed_units|^Done" "$build/fuzz-work/$name.log" || true
done
exit $status
