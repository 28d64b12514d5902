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
for name in load expert_map runtime_config balance; do
  bin="$build/fuzz/fuzz_$name"
  if [[ ! -x "$bin" ]]; then
    echo "fuzz.sh: $bin not found; build with make fuzz" >&2
    exit 1
  fi
  work="$build/fuzz-work/$name"
  mkdir -p "$work"
  echo "fuzz.sh: $name for ${seconds}s"
  if ! (cd "$build/fuzz-work" && "$bin" -max_total_time="$seconds" -max_len=4096 -timeout=10 \
        -print_final_stats=1 "$work" "$src/fuzz/corpus/$name" 2>"$name.log"); then
    echo "fuzz.sh: $name FAILED; see $build/fuzz-work/$name.log and the crash-* input there" >&2
    status=1
  fi
  grep -E "^stat::number_of_executed_units|^Done" "$build/fuzz-work/$name.log" || true
done
exit $status
