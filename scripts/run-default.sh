#!/usr/bin/env bash
# What `make run` runs:
#   0. `eplb demo`: a real expert-parallel MoE model on CPU (4 ranks as threads), balanced by
#      SwiftBalancer while it runs, through a workload shift, its outputs checked at every step
#      against a dense single-process reference;
# then the planner on the embedded default workload (a generator with the skew of real DeepSeek-V3
# traffic; 58 MoE layers x 256 experts on 64 ranks x 5 slots):
#   1. plan a fresh placement with swift and record it as an expert map;
#   2. shift the workload (a new set of hot experts) and re-plan from the recorded placement,
#      showing how few experts swift moves, then what a full recomputation (deepseek) moves.
set -euo pipefail
build=${1:-build}
eplb="$build/eplb"
if [[ ! -x "$eplb" ]]; then
  echo "run-default.sh: $eplb not found; build first (make build, or cmake --build $build)" >&2
  exit 1
fi
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
shape=(--ranks 64 --slots-per-rank 5)

echo "== 0. eplb demo: balancing a running expert-parallel MoE model (async, 4 ranks)"
"$eplb" demo --eplb async --report "$out/demo.json" --csv "$out/demo.csv"
echo
echo "== 1. fresh placement for the default workload"
"$eplb" plan --generate "${shape[@]}" --out "$out/placement.json" --report "$out/fresh.json"
echo
echo "== 2. the workload shifts: swift re-plans from the placement in use"
"$eplb" plan --generate --shift 1 --current "$out/placement.json" "${shape[@]}" \
  --report "$out/shift.json"
echo
echo "== 3. the same shift, recomputed from scratch by the reference algorithm"
"$eplb" plan --generate --shift 1 --current "$out/placement.json" "${shape[@]}" \
  --algorithm deepseek
