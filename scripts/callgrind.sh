#!/usr/bin/env bash
# Instructions per packet of the pipeline's benchmark cases, counted by callgrind (repeatable
# on a noisy machine, unlike times): builds benches/examples/pipeline_ir.rs, runs every case
# twice under `valgrind --tool=callgrind` (N1 and N2 batches of 64) and prints
# (I(N2) − I(N1)) ÷ ((N2 − N1) × 64), so setup and the conntrack pre-population cancel out.
#
#   bash scripts/callgrind.sh            # every case
#   bash scripts/callgrind.sh vxlan      # the cases whose name contains "vxlan"
#
# valgrind comes from Debian (scripts/setup.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "callgrind.sh: valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
filter="${1:-}"
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -q -p vireo-benches --example pipeline_ir
bin="$target/release/examples/pipeline_ir"
# N × 64 stays below 64 000 so that every new-flow packet is a new flow.
n1=300
n2=900

instructions() { # case n [--ct1m] → instructions counted
  local out
  out=$(valgrind --tool=callgrind --callgrind-out-file=/dev/null "$bin" "$@" 2>&1) || {
    echo "callgrind.sh: pipeline_ir $* failed:" >&2
    echo "$out" >&2
    exit 1
  }
  echo "$out" | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

echo "| case | instructions/packet |"
echo "|---|---|"
for c in "udp-no-policy" "udp" "vxlan" "new-flow" "vxlan --ct1m" "new-flow --ct1m"; do
  [[ -z "$filter" || "$c" == *"$filter"* ]] || continue
  read -r -a args <<<"$c"
  i1=$(instructions "${args[0]}" "$n1" "${args[@]:1}")
  i2=$(instructions "${args[0]}" "$n2" "${args[@]:1}")
  awk -v c="$c" -v a="$i1" -v b="$i2" -v n=$((n2 - n1)) \
    'BEGIN { printf "| %s | %.0f |\n", c, (b - a) / (n * 64) }'
done
