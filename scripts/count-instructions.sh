#!/usr/bin/env bash
# Counts the instructions of one full-model rebalance with callgrind (exact and repeatable, where
# times on a shared machine are not): build/bench/eplb_count_once's Measured() call only.
#   scripts/count-instructions.sh [fresh|replan|drift] [RANKS SLOTS_PER_RANK] [ALGORITHM] [NODES]
# Needs valgrind (`scripts/install-deps.sh perf`) and the release build (`make build`).
set -euo pipefail
BUILD="${BUILD:-build}"
if ! command -v valgrind >/dev/null; then
  echo "count-instructions: valgrind is missing: run scripts/install-deps.sh perf" >&2
  exit 1
fi
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
valgrind --tool=callgrind --toggle-collect='*Measured*' --callgrind-out-file="$out" \
  "$BUILD/bench/eplb_count_once" "$@" 2>/dev/null
count="$(callgrind_annotate "$out" 2>/dev/null | awk '/PROGRAM TOTALS/ {print $1}')"
# Nothing measured (the load statistics are absent: the program said so) prints no count.
if [[ "$count" =~ [1-9] ]]; then echo "instructions: $count"; fi
