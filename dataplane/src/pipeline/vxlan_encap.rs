//! Stage `vxlan_encap`: puts outer Ethernet/IPv4/UDP/VXLAN headers in front of a packet for a
//! pod on another node, in the frame's headroom (no copy), and sends it out the uplink. The VNI
//! carries the sender's security identity; the UDP source port comes from the inner flow's hash
//! (ECMP entropy).
//!
//! Path MTU: a packet that does not fit the uplink once encapsulated is answered, if it has DF
//! set, with ICMP "fragmentation needed" (next-hop MTU = uplink MTU − 50) from the pod's gateway,
//! so PMTU discovery works. Without DF it is dropped and counted (`too_big_no_df`): Vireo does
//! not fragment; pods get an MTU of uplink − 50, so only a misconfigured pod meets this.

use smoltcp::wire::Icmpv4DstUnreachable;

use super::{Batch, Desc, Frames, Kind, Verdict};
use crate::counters::{BatchCounts, DropReason};
use crate::tables::{LocalNode, Tables};
use crate::wire::{
    icmp_unreachable, set_macs, vxlan_src_port, VxlanRepr, ETH_HLEN, VXLAN_OVERHEAD,
};

pub(super) fn run<F: Frames>(batch: &mut Batch, frames: &mut F, t: &Tables, c: &mut BatchCounts) {
    for d in batch.descs_mut() {
        let Verdict::Continue(Kind::Encap { tunnel }) = d.verdict else {
            continue;
        };
        d.verdict = encap(d, tunnel, frames, t, c);
    }
}

fn encap<F: Frames>(
    d: &mut Desc,
    tunnel: u32,
    frames: &mut F,
    t: &Tables,
    c: &mut BatchCounts,
) -> Verdict {
    let Some(local) = t.local else {
        return Verdict::Drop(DropReason::NoTxPort);
    };
    let Some(mac) = t.nodes.get(&tunnel).and_then(|n| n.next_hop_mac) else {
        return Verdict::Drop(DropReason::NoNeighbor);
    };
    let Some(buf) = frames.frame(d.addr, d.len) else {
        return Verdict::Drop(DropReason::TruncatedEthernet);
    };
    let ip_total = usize::from(u16::from_be_bytes([buf[ETH_HLEN + 2], buf[ETH_HLEN + 3]]));
    if ip_total + VXLAN_OVERHEAD > usize::from(local.mtu) {
        let df = buf[ETH_HLEN + 6] & 0x40 != 0;
        if !df {
            return Verdict::Drop(DropReason::TooBigNoDf);
        }
        c.drop(DropReason::FragNeeded);
        return match frag_needed(buf, t, d.in_slot, local.mtu - VXLAN_OVERHEAD as u16) {
            Some(len) => {
                d.len = len as u32;
                Verdict::Tx { slot: d.in_slot }
            }
            None => Verdict::Drop(DropReason::TooBigNoDf),
        };
    }
    if frames.headroom(d.addr) < VXLAN_OVERHEAD {
        return Verdict::Drop(DropReason::NoHeadroom);
    }
    let inner_len = d.len as usize;
    let addr = d.addr - VXLAN_OVERHEAD as u64;
    let Some(out) = frames.frame(addr, (inner_len + VXLAN_OVERHEAD) as u32) else {
        return Verdict::Drop(DropReason::NoHeadroom);
    };
    let src_port = vxlan_src_port(&out[VXLAN_OVERHEAD + ETH_HLEN..]);
    outer(&local, mac, tunnel, src_port, t.vxlan_port, d.src_identity).emit(out, inner_len);
    d.addr = addr;
    d.len += VXLAN_OVERHEAD as u32;
    Verdict::Tx {
        slot: local.uplink_slot,
    }
}

fn outer(
    local: &LocalNode,
    mac: [u8; 6],
    tunnel: u32,
    src_port: u16,
    dst_port: u16,
    vni: u32,
) -> VxlanRepr {
    VxlanRepr {
        src_mac: local.uplink_mac,
        dst_mac: mac,
        src_ip: local.ip.octets(),
        dst_ip: tunnel.to_be_bytes(),
        src_port,
        dst_port,
        vni,
    }
}

/// Rewrites `buf` in place into an ICMP "fragmentation needed" for the sender, from its
/// gateway. Returns the new frame length, or `None` when there is no gateway to send it from.
fn frag_needed(buf: &mut [u8], t: &Tables, in_slot: u16, mtu: u16) -> Option<usize> {
    let gw = *t.gateways.first()?;
    let our_mac = t.iface(in_slot)?.mac;
    let pod_mac: [u8; 6] = buf[6..12].try_into().ok()?;
    let len = icmp_unreachable(buf, gw.octets(), Icmpv4DstUnreachable::FragRequired, mtu)?;
    set_macs(buf, &pod_mac, &our_mac);
    Some(len)
}
