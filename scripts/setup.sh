#!/usr/bin/env bash
# Installs everything Vireo needs on a fresh Debian machine. Idempotent.
set -euo pipefail

PKGS=(clang llvm libbpf-dev libelf-dev zlib1g-dev pkg-config gcc-multilib m4 bpftool
      iproute2 ethtool tcpdump iputils-ping netcat-openbsd python3 python3-venv valgrind
      golang-go golang-github-appc-cni-dev containernetworking-plugins iperf3
      dpdk dpdk-dev librte-net-af-xdp23 librte-mempool-ring23 iptables
      prometheus curl)

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# kubectl, which the fake API server's tests (control/fakeapi) drive: the machine's if it has
# one, else Debian's.
if ! command -v kubectl >/dev/null 2>&1; then
  echo "setup: installing kubernetes-client (kubectl)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
fi

# bpffs, for pinning (harmless if already mounted).
if ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
  mount -t bpf bpf /sys/fs/bpf 2>/dev/null || true
fi

# The manifest tests (control/tests/deploy_manifests.rs) render deploy/ with `kubectl kustomize`
# and validate it with kubernetes-validate (PyPI), kept in a venv of its own at a fixed path;
# once installed, nothing here touches the network again.
if ! command -v kubectl >/dev/null; then
  echo "setup: installing kubectl"
  apt-get install -y -qq --no-install-recommends kubectl >/dev/null 2>&1 \
    || echo "setup: kubectl is not installable here; the manifest tests will fail until it is"
fi
KV_VENV=/opt/vireo-tools/venv
if ! "$KV_VENV/bin/kubernetes-validate" --version >/dev/null 2>&1; then
  echo "setup: installing kubernetes-validate into $KV_VENV"
  python3 -m venv "$KV_VENV"
  "$KV_VENV/bin/pip" install -q --disable-pip-version-check kubernetes-validate >/dev/null
fi

command -v cargo >/dev/null || { echo "setup: cargo not found (install a Rust toolchain)"; exit 1; }
echo "setup: ok"
