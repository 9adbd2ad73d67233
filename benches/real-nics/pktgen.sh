#!/usr/bin/env bash
# Linux pktgen on a two-port setup (port A sends into the machine running Vireo, port B,
# on the far side, counts): UDP frames of SIZE bytes, FLOWS source ports, for SECONDS.
#   sudo bash benches/real-nics/pktgen.sh DEV DST_IP DST_MAC [SIZE] [FLOWS] [SECONDS]
# Only ever point DEV at a dedicated test port, never at the management interface.
set -euo pipefail
DEV=${1:?usage: pktgen.sh DEV DST_IP DST_MAC [SIZE] [FLOWS] [SECONDS]}
DST_IP=${2:?}
DST_MAC=${3:?}
SIZE=${4:-64}
FLOWS=${5:-1}
SECONDS_RUN=${6:-10}
THREADS=${THREADS:-1}

modprobe pktgen
pg() { echo "$2" > "/proc/net/pktgen/$1"; }

pg pgctrl reset
for ((t = 0; t < THREADS; t++)); do
  pg "kpktgend_$t" rem_device_all
  pg "kpktgend_$t" "add_device $DEV@$t"
  f="$DEV@$t"
  pg "$f" "count 0"
  pg "$f" "clone_skb 1000"
  pg "$f" "pkt_size $((SIZE - 4))"      # pktgen's size excludes the FCS
  pg "$f" "delay 0"
  pg "$f" "queue_map_min $t"
  pg "$f" "queue_map_max $t"
  pg "$f" "dst $DST_IP"
  pg "$f" "dst_mac $DST_MAC"
  pg "$f" "udp_src_min 10000"
  pg "$f" "udp_src_max $((10000 + FLOWS - 1))"
  pg "$f" "udp_dst_min 9"
  pg "$f" "udp_dst_max 9"
  pg "$f" "flag UDPSRC_RND"
done

# Bounded: stop after SECONDS_RUN whatever happens.
( sleep "$SECONDS_RUN"; pg pgctrl stop ) &
stopper=$!
trap 'kill $stopper 2>/dev/null || true; echo stop > /proc/net/pktgen/pgctrl' EXIT
pg pgctrl start || true
for ((t = 0; t < THREADS; t++)); do
  grep -E "pkts-sofar|pps" "/proc/net/pktgen/$DEV@$t" || true
done
