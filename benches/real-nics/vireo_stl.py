"""TRex STL profile for Vireo on real NICs (see README.md).

Tunables (``-t``): size=64|512|1500 (frame bytes without FCS), flows=1|N (distinct UDP
source ports), vxlan=0|1 (wrap the frame in VXLAN to port 8472, VNI = identity, for the
vireo-ingress case), and the addresses of the pods and nodes.

    start -f benches/real-nics/vireo_stl.py -m 100% -t size=64,flows=1024,vxlan=1
"""

from trex_stl_lib.api import (STLPktBuilder, STLProfile, STLStream, STLTXCont, STLVM,
                              Ether, IP, UDP, VXLAN)


class VireoUdp(object):
    def __init__(self):
        pass

    @staticmethod
    def _inner(t):
        return (Ether(src=t["src_mac"], dst=t["dst_mac"]) /
                IP(src=t["src_ip"], dst=t["dst_ip"]) /
                UDP(sport=10000, dport=9))

    def _packet(self, t):
        size = int(t["size"])
        if size < 60:
            raise ValueError("size must be at least 60 bytes")
        inner = self._inner(t)
        if int(t["vxlan"]):
            pkt = (Ether(src=t["ul_src_mac"], dst=t["ul_dst_mac"]) /
                   IP(src=t["ul_src_ip"], dst=t["ul_dst_ip"]) /
                   UDP(sport=49152, dport=8472) /
                   VXLAN(vni=int(t["vni"]), flags=0x08) / inner)
            ip_layer = "IP:1"
        else:
            pkt = inner
            ip_layer = "IP"
        pad = max(0, size - len(pkt))
        pkt = pkt / ("x" * pad)
        vm = STLVM()
        flows = int(t["flows"])
        if flows > 1:
            # Spread the inner UDP source port over `flows` values (one flow each).
            vm.var(name="sport", min_value=10000, max_value=10000 + flows - 1,
                   size=2, op="inc")
            vm.write(fv_name="sport", pkt_offset="UDP:1.sport" if int(t["vxlan"]) else "UDP.sport")
            vm.fix_chksum(offset=ip_layer)
            if int(t["vxlan"]):
                # The outer source port carries the flow hash on a real node: vary it too.
                vm.var(name="osport", min_value=49152, max_value=49152 + flows - 1,
                       size=2, op="inc")
                vm.write(fv_name="osport", pkt_offset="UDP.sport")
                vm.fix_chksum(offset="IP")
        return STLPktBuilder(pkt=pkt, vm=vm)

    def get_streams(self, direction=0, **kwargs):
        t = {
            "size": 64, "flows": 1, "vxlan": 0, "vni": 2,
            "src_mac": "02:00:00:00:00:01", "dst_mac": "02:00:00:00:00:02",
            "src_ip": "10.244.1.10", "dst_ip": "10.244.2.10",
            "ul_src_mac": "02:00:00:00:01:01", "ul_dst_mac": "02:00:00:00:01:02",
            "ul_src_ip": "192.168.100.12", "ul_dst_ip": "192.168.100.11",
        }
        t.update(kwargs)
        return [STLStream(packet=self._packet(t), mode=STLTXCont(pps=1000))]


def register():
    return VireoUdp()
