#!/usr/bin/env bash
# The main job: build Vireo, bring up the sandbox cluster on this machine (2 nodes, pods, Services,
# one agent per node, VXLAN between them; no Kubernetes needed) and print its connectivity
# table. The sandbox stays up for you to explore; `vireo sandbox down` removes all of it.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run.sh: run as root (the sandbox is made of network namespaces)"; exit 1; }
cargo build --release -q -p vireo -p vireo-cni
VIREO=$PWD/target/release/vireo
if ! "$VIREO" sandbox status >/dev/null 2>&1; then
  "$VIREO" sandbox up "$@"
fi
echo
"$VIREO" connectivity test
cat <<EOT

The sandbox is still up. Try:
  $VIREO sandbox status
  $VIREO status --node node-1
  $VIREO map get ipcache --node node-1
  $VIREO sandbox exec default/node-1-pod-1 -- ping -c 3 10.244.2.10
  $VIREO sandbox down
EOT
