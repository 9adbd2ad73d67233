//! Stage `vxlan_encap`: puts outer Ethernet/IPv4/UDP/VXLAN headers in front of a packet for a
//! pod on another node, in the frame's headroom (no copy), and sends it out the uplink. The VNI
//! carries the sender's security identity; the UDP source port comes from the inner flow's hash
//! (ECMP entropy).
//!
//! Path MTU: a packet that does not fit the uplink once encapsulated is answered, if it has DF
//! set, with ICMP "fragmentation needed" (next-hop MTU = uplink MTU − 50), so PMTU discovery
//! works, through a ClusterIP too ([`super::icmp`] says from which address). Without DF it is dropped and counted (`too_big_no_df`): Vireo does
//! not fragment; pods get an MTU of uplink − 50, so only a misconfigured pod meets this.

use super::icmp::{answer, Answer};
use super::{Batch, Desc, Frames, Kind, Verdict};
use crate::counters::{BatchCounts, DropReason};
use crate::tables::Tables;
use crate::wire::{
    vxlan_src_port, VxlanRepr, CODE_FRAG_NEEDED, ETH_HLEN, ICMP_DEST_UNREACH, VXLAN_OVERHEAD,
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
        let mtu = local.mtu - VXLAN_OVERHEAD as u16;
        let a = Answer {
            typ: ICMP_DEST_UNREACH,
            code: CODE_FRAG_NEEDED,
            rest: u32::from(mtu),
            reason: DropReason::FragNeeded,
        };
        return answer(d, frames, t, c, a);
    }
    if frames.headroom(d.addr) < VXLAN_OVERHEAD {
        return Verdict::Drop(DropReason::NoHeadroom);
    }
    let inner_len = d.len as usize;
    let addr = d.addr - VXLAN_OVERHEAD as u64;
    let Some(out) = frames.frame(addr, (inner_len + VXLAN_OVERHEAD) as u32) else {
        return Verdict::Drop(DropReason::NoHeadroom);
    };
    let inner_ip = &out[VXLAN_OVERHEAD + ETH_HLEN..];
    let (src_port, tos) = (vxlan_src_port(inner_ip), inner_ip[1]);
    c.ip_id = c.ip_id.wrapping_add(1);
    let r = VxlanRepr {
        src_mac: local.uplink_mac,
        dst_mac: mac,
        src_ip: local.ip.octets(),
        dst_ip: tunnel.to_be_bytes(),
        src_port,
        dst_port: t.vxlan_port,
        vni: d.src_identity,
        tos,
        df: t.vxlan_df,
        id: c.ip_id,
    };
    // The outer lengths cover the whole packet: the head and its continuation frames, which
    // follow the head unchanged.
    r.emit(out, d.total() as usize);
    d.addr = addr;
    d.len += VXLAN_OVERHEAD as u32;
    Verdict::Tx {
        slot: local.uplink_slot,
    }
}
