"""Sends bad VXLAN to a node's VXLAN port from a UDP socket.

vxlan_inject.py BIND_IP DST_IP PORT KNOWN_VNI INNER_DST COUNT KINDS
KINDS is a comma list of: short, flags, unknown_vni, truncated_inner, valid.
"""
import socket
import struct
import sys


def csum(b):
    s = sum(struct.unpack(f"!{len(b) // 2}H", b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def inner(dst):
    payload = b"bad-vxlan-test"
    udp = struct.pack("!HHHH", 1234, 9, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                     socket.inet_aton("10.244.2.200"), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", csum(ip)) + ip[12:]
    return b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + b"\x08\x00" + ip + udp


def vxlan(flags, vni):
    return struct.pack("!B3xI", flags, vni << 8)


def main():
    bind_ip, dst, port, vni, inner_dst, count, kinds = sys.argv[1:8]
    port, vni, count = int(port), int(vni), int(count)
    good = inner(inner_dst)
    packets = {
        "short": b"\x08\x00\x00",
        "flags": vxlan(0x04, vni) + good,  # no I flag (reserved bits alone are ignored, RFC 7348)
        "unknown_vni": vxlan(0x08, 0xABCDEF) + good,
        "truncated_inner": vxlan(0x08, vni) + good[:20],
        "valid": vxlan(0x08, vni) + good,
    }
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((bind_ip, 0))
    for _ in range(count):
        for k in kinds.split(","):
            s.sendto(packets[k], (dst, port))
    print("sent", count, kinds)


if __name__ == "__main__":
    main()
