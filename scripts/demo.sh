#!/usr/bin/env bash
# Builds Vireo and shows it forwarding on this machine, with no Kubernetes: one node namespace,
# two pod namespaces, the agent in between. Everything it makes carries the prefix "vd<pid>" and
# is deleted on exit, also on failure. Nothing outside those namespaces is touched.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (it creates network namespaces)"; exit 1; }
cargo build --release -q -p vireo
VIREO=$PWD/target/release/vireo
P="vd$(( $$ % 10000 ))"
NODE=$P-node
AGENT_PID=
cleanup() {
  [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null && wait "$AGENT_PID" 2>/dev/null || true
  for ns in $P-a $P-b $NODE; do ip netns del "$ns" 2>/dev/null || true; done
  rm -f /tmp/$P.yaml /tmp/$P.sock /tmp/$P.log
}
trap cleanup EXIT INT TERM

ip netns add $NODE && ip -n $NODE link set lo up
declare -A IP=([a]=10.244.1.10 [b]=10.244.1.11)
for x in a b; do
  ip netns add $P-$x && ip -n $P-$x link set lo up
  ip link add ${P}h$x netns $NODE type veth peer name eth0 netns $P-$x
  ip -n $NODE link set ${P}h$x up
  ip -n $P-$x addr add ${IP[$x]}/32 dev eth0 && ip -n $P-$x link set eth0 up
  ip -n $P-$x route add 10.244.1.1 dev eth0 scope link
  ip -n $P-$x route add default via 10.244.1.1 dev eth0
  ip netns exec $P-$x ethtool -K eth0 tx off >/dev/null   # AF_XDP copy mode loses CHECKSUM_PARTIAL
done
mac() { ip netns exec $P-$1 cat /sys/class/net/eth0/address; }
cat > /tmp/$P.yaml <<EOY
node: demo
gateways: [10.244.1.1]
api_socket: /tmp/$P.sock
interfaces:
  - {name: ${P}ha, role: pod, endpoint: {ip: ${IP[a]}, mac: "$(mac a)"}}
  - {name: ${P}hb, role: pod, endpoint: {ip: ${IP[b]}, mac: "$(mac b)"}}
EOY
ip netns exec $NODE "$VIREO" agent --config /tmp/$P.yaml 2>/tmp/$P.log &
AGENT_PID=$!
for _ in $(seq 50); do "$VIREO" status --api /tmp/$P.sock >/dev/null 2>&1 && break; sleep 0.1; done
echo "== pod a -> pod b through vireo"
ip netns exec $P-a ping -c 3 -i 0.2 ${IP[b]}
echo; "$VIREO" status --api /tmp/$P.sock
