#!/usr/bin/env bash
# What judging established flows again costs: the established-flow pipeline benchmarks
# (`pipeline/*established*`) built without the per-packet policy check (`--cfg
# vireo_no_rejudge`, the baseline) and with it (the build that ships), measured in one run.
#
#   1. callgrind instruction counts (repeatable on a noisy machine) of `examples/pipeline_ir`:
#      the marginal instructions per packet, (Ir(2N) - Ir(N)) / (N * 64), of each build;
#   2. criterion: the baseline saved as `no-rejudge`, then the shipped build compared with it
#      (criterion prints the change), ROUNDS times, alternating.
#
# Usage: benches/rejudge-cost.sh [ROUNDS]   (about 6 minutes with ROUNDS=2 on 2 cores, after
# the two builds). Pins the benchmarks to CPU 1 when there is one.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-2}
target=${CARGO_TARGET_DIR:-$PWD/target}
base_target="$target/no-rejudge"
export CRITERION_HOME="$target/criterion-rejudge"
pin=()
if [ "$(nproc)" -gt 1 ]; then pin=(taskset -c 1); fi

build() { # $1: target dir; the environment: RUSTFLAGS, if any
  CARGO_TARGET_DIR="$1" cargo build -q --release -p vireo-benches --example pipeline_ir
  CARGO_TARGET_DIR="$1" cargo bench -q -p vireo-benches --bench pipeline --no-run 2>/dev/null
}
echo "== building the baseline (--cfg vireo_no_rejudge) and the shipped build"
RUSTFLAGS="--cfg vireo_no_rejudge" build "$base_target"
# The shipped build as `cargo build` makes it (an empty RUSTFLAGS would rebuild everything).
build "$target"

ir() { # $1: example binary, $2: batches → total instructions
  valgrind --tool=callgrind --callgrind-out-file=/dev/null "$1" "$2" 2>&1 |
    awk '/Collected :/ {print $4}'
}
echo "== callgrind: instructions per packet, established UDP flow under an ingress policy"
n=10000
for b in "no-rejudge:$base_target" "rejudge:$target"; do
  name=${b%%:*}
  dir=${b#*:}
  one=$(ir "$dir/release/examples/pipeline_ir" $n)
  two=$(ir "$dir/release/examples/pipeline_ir" $((2 * n)))
  awk -v name="$name" -v a="$one" -v b="$two" -v p=$((n * 64)) \
    'BEGIN { printf "%-11s %8.1f Ir/packet\n", name, (b - a) / p }'
done

echo "== criterion: pipeline/*established* (batch of 64), $rounds round(s)"
for r in $(seq "$rounds"); do
  echo "-- round $r: baseline (no-rejudge)"
  CARGO_TARGET_DIR="$base_target" RUSTFLAGS="--cfg vireo_no_rejudge" "${pin[@]}" \
    cargo bench -q -p vireo-benches --bench pipeline -- established --save-baseline no-rejudge \
    2>/dev/null | grep -E "^pipeline/|time:"
  echo "-- round $r: shipped (rejudge), change against the baseline"
  CARGO_TARGET_DIR="$target" "${pin[@]}" \
    cargo bench -q -p vireo-benches --bench pipeline -- established --baseline no-rejudge \
    2>/dev/null | grep -E "^pipeline/|time:|change:|Performance|No change|regressed|improved"
done
