#!/usr/bin/env bash
# TCP throughput (iperf3, one stream, 5 s) and ping RTT (200 pings, 10 ms apart) through a Vireo
# sandbox, same node and cross node, against the kernel baseline measured in the same run: two
# network namespaces routed through a third by veth, MTU 1450. Prints rx_fill_ring_empty and
# /proc/loadavg with each figure. Builds and removes its own topology (also on failure).
#
# Usage (root): scripts/tcp-latency.sh [path/to/vireo]   (default: $CARGO_TARGET_DIR or
# target, release/vireo). Needs iperf3 and ping.
set -euo pipefail
VIREO=${1:-${CARGO_TARGET_DIR:-target}/release/vireo}
SB=vio
K=viok   # kernel-baseline prefix
export VIREO_SANDBOX=$SB

cleanup() {
    "$VIREO" sandbox down --sandbox "$SB" >/dev/null 2>&1 || true
    for n in ${K}a ${K}r ${K}b; do ip netns del "$n" 2>/dev/null || true; done
}
trap cleanup EXIT

load() { cut -d' ' -f1-3 /proc/loadavg; }

# ping -> "p50 p99 avg" in µs
rtt() {
    "$@" ping -q -c 200 -i 0.01 -W 1 "$PEER" >/dev/null 2>&1 || true
    "$@" ping -c 200 -i 0.01 -W 1 "$PEER" 2>/dev/null | python3 -c '
import re,sys
t=sorted(float(m.group(1))*1000 for m in re.finditer(r"time=([0-9.]+) ms", sys.stdin.read()))
if not t: print("no-reply"); sys.exit()
q=lambda p: t[min(len(t)-1,int(p*len(t)))]
print("p50=%.0fus p99=%.0fus avg=%.0fus n=%d" % (q(.5), q(.99), sum(t)/len(t), len(t)))'
}

# iperf3 -> "Gbit/s retransmits"; server started with $SRV, client with $CLI
tcp() {
    $SRV iperf3 -s -1 -D -p 5299 >/dev/null 2>&1
    sleep 0.5
    $CLI timeout 20 iperf3 -c "$PEER" -p 5299 -t 5 -J 2>/dev/null | python3 -c '
import json,sys
j=json.load(sys.stdin); s=j["end"]["sum_sent"]
print("%.2f Gbit/s retransmits=%d" % (s["bits_per_second"]/1e9, s.get("retransmits",0)))' || echo "iperf3 failed"
}

fill_empty() {
    local sum=0
    for n in node-1 node-2; do
        v=$("$VIREO" status --json --node "$n" | python3 -c '
import json,sys
# The node total only: every worker repeats its own counters under workers.
def f(o):
    if isinstance(o,dict):
        return sum(v if k=="rx_fill_ring_empty" and isinstance(v,int) else f(v) for k,v in o.items())
    if isinstance(o,list): return sum(f(v) for v in o)
    return 0
print(f(json.load(sys.stdin).get("counters", {})))')
        sum=$((sum + v))
    done
    echo "$sum"
}

echo "== kernel baseline (veth, routed, MTU 1450)"
cleanup
for n in ${K}a ${K}r ${K}b; do ip netns add "$n"; done
ip link add ${K}a0 netns ${K}a type veth peer name ${K}ra netns ${K}r
ip link add ${K}b0 netns ${K}b type veth peer name ${K}rb netns ${K}r
ip -n ${K}a addr add 10.251.1.2/24 dev ${K}a0
ip -n ${K}b addr add 10.251.2.2/24 dev ${K}b0
ip -n ${K}r addr add 10.251.1.1/24 dev ${K}ra
ip -n ${K}r addr add 10.251.2.1/24 dev ${K}rb
for d in "${K}a ${K}a0" "${K}b ${K}b0" "${K}r ${K}ra" "${K}r ${K}rb"; do
    set -- $d; ip -n "$1" link set "$2" mtu 1450 up; ip -n "$1" link set lo up
done
ip -n ${K}a route add default via 10.251.1.1
ip -n ${K}b route add default via 10.251.2.1
ip netns exec ${K}r sysctl -qw net.ipv4.ip_forward=1
PEER=10.251.2.2
SRV="ip netns exec ${K}b"; CLI="ip netns exec ${K}a"
echo "kernel tcp:  $(tcp)  load $(load)"
echo "kernel ping: $(rtt ip netns exec ${K}a)  load $(load)"
for n in ${K}a ${K}r ${K}b; do ip netns del "$n"; done

echo "== vireo sandbox ($SB)"
"$VIREO" sandbox up --sandbox "$SB" --nodes 2 --pods 2 >/dev/null
ip_of() {
    "$VIREO" sandbox status --json | python3 -c "
import json,sys
print(next(p['ip'] for p in json.load(sys.stdin)['pods'] if p['pod'].endswith('$1')))"
}
A=node-1-pod-1
for B in node-1-pod-2 node-2-pod-1; do
    PEER=$(ip_of "$B")
    SRV="$VIREO sandbox exec $B --"; CLI="$VIREO sandbox exec $A --"
    before=$(fill_empty)
    echo "$A -> $B tcp:  $(tcp)  rx_fill_ring_empty +$(( $(fill_empty) - before ))  load $(load)"
    before=$(fill_empty)
    echo "$A -> $B ping: $(rtt "$VIREO" sandbox exec $A --)  rx_fill_ring_empty +$(( $(fill_empty) - before ))  load $(load)"
done
"$VIREO" sandbox down --sandbox "$SB" >/dev/null
