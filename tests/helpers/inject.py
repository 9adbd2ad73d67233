"""Sends malformed frames out of an interface with an AF_PACKET socket.

inject.py IFNAME SRC_MAC DST_MAC SRC_IP DST_IP COUNT
Each kind of malformed frame is sent COUNT times; prints the kinds as JSON.
"""
import json
import socket
import struct
import sys
import time


def mac(s):
    return bytes(int(x, 16) for x in s.split(":"))


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src, dst, payload, ihl=5, total=None, version=4, options=b""):
    total = 20 + len(options) + len(payload) if total is None else total
    h = struct.pack("!BBHHHBBH4s4s", (version << 4) | ihl, 0, total, 1, 0x4000, 64, 17, 0,
                    socket.inet_aton(src), socket.inet_aton(dst)) + options
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return h + payload


def main():
    ifname, smac, dmac, sip, dip, count = sys.argv[1:7]
    count = int(count)
    eth_ip = mac(dmac) + mac(smac) + b"\x08\x00"
    eth_arp = mac(dmac) + mac(smac) + b"\x08\x06"
    udp = struct.pack("!HHHH", 1234, 7, 16, 0) + b"malformed"
    frames = {
        "truncated_ip": eth_ip + ipv4(sip, dip, udp)[:12],
        "bad_ihl": eth_ip + ipv4(sip, dip, udp, ihl=3),
        "ip_options": eth_ip + ipv4(sip, dip, udp, ihl=6, options=b"\x01\x01\x01\x00"),
        "bad_total_length": eth_ip + ipv4(sip, dip, udp, total=1400),
        "bad_ip_version": eth_ip + ipv4(sip, dip, udp, version=6),
        "malformed_arp": eth_arp + b"\x00\x01\x08\x00\x06",
    }
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((ifname, 0))
    for _ in range(count):
        for f in frames.values():
            s.send(f)
        time.sleep(0.002)  # a round at a time: this counts reasons, it is no burst test
    print(json.dumps(sorted(frames)))


if __name__ == "__main__":
    main()
