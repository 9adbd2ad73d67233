#!/usr/bin/env bash
# The whole test suite, as CI runs it (as root: the end-to-end tests build network namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TERM_COLOR=never
echo "== fmt";    cargo fmt --all --check
echo "== clippy"; cargo clippy --workspace --all-targets -- -D warnings
echo "== tests";  cargo test --workspace --release
echo "== benches compile"; cargo bench --workspace --no-run >/dev/null
left=$(ip netns list 2>/dev/null | awk '{print $1}' | grep -E '^(vt|vb)[0-9]' || true)
if [ -n "$left" ]; then
  echo "test.sh: namespaces left behind: $left" >&2
  exit 1
fi
echo "test.sh: all green"
