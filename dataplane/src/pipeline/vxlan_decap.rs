//! Stage `vxlan_decap`: checks a VXLAN packet from the uplink and strips its outer headers by
//! moving the frame's start (no copy). The sender's security identity comes from the VNI, as in
//! Cilium; VNI 1 (another node's host stack) is `remote-node` (6) here. Only packets from known nodes, with a known identity and a whole inner IPv4 frame,
//! go on; the inner packet is then delivered like any other (and never re-encapsulated).
//!
//! RFC 7348: only the I flag is required (reserved bits are ignored), and the outer destination
//! must be this node. RFC 6040: the outer ECN field is folded into the inner one (Congestion
//! Experienced outside marks an ECN-capable inner packet, and drops one that is not).

use super::{parse, Batch, Frames, Kind, Verdict};
use crate::counters::{BatchCounts, DropReason};
use crate::tables::Tables;
use crate::wire::{csum_replace16, ecn_decap, VxlanError, VxlanPacket, ETH_HLEN, VXLAN_INNER};
use vireo_policy::Identity;

pub(super) fn run<F: Frames>(batch: &mut Batch, frames: &mut F, t: &Tables, _c: &mut BatchCounts) {
    for d in batch.descs_mut() {
        if !matches!(d.verdict, Verdict::Continue(Kind::Vxlan { .. })) {
            continue;
        }
        let Some(buf) = frames.frame(d.addr, d.len) else {
            d.verdict = Verdict::Drop(DropReason::TruncatedEthernet);
            continue;
        };
        match decap(buf, d.tail as usize, t) {
            Ok((vni, inner_len)) => {
                let outer_tos = buf[ETH_HLEN + 1];
                let inner = &mut buf[VXLAN_INNER + ETH_HLEN..];
                match ecn_decap(outer_tos, inner[1]) {
                    Some(tos) if tos != inner[1] => {
                        let old = u16::from_be_bytes([inner[0], inner[1]]);
                        inner[1] = tos;
                        let new = u16::from_be_bytes([inner[0], inner[1]]);
                        let c = u16::from_be_bytes([inner[10], inner[11]]);
                        inner[10..12].copy_from_slice(&csum_replace16(c, old, new).to_be_bytes());
                    }
                    Some(_) => {}
                    None => {
                        d.verdict = Verdict::Drop(DropReason::VxlanEcn);
                        continue;
                    }
                }
                d.addr += VXLAN_INNER as u64;
                if d.tail > 0 && inner_len > buf.len() - VXLAN_INNER {
                    // A multi-buffer packet: the outer headers go from its head only; its
                    // continuations carry the rest of the inner frame.
                    d.len = (buf.len() - VXLAN_INNER) as u32;
                    d.tail = (inner_len - (buf.len() - VXLAN_INNER)) as u32;
                } else {
                    // The inner frame ends in the head: whatever follows is padding.
                    d.len = inner_len as u32;
                    d.detach_chain();
                }
                // Another node's own stack sends as `host` (1): here it is `remote-node` (6).
                d.src_identity = if vni == Identity::HOST.0 {
                    Identity::REMOTE_NODE.0
                } else {
                    vni
                };
                d.from_tunnel = true;
                d.verdict = Verdict::Continue(Kind::Ipv4 {
                    l3: ETH_HLEN as u16,
                });
            }
            Err(r) => d.verdict = Verdict::Drop(r),
        }
    }
}

/// The VNI and inner frame length of a valid packet whose head frame is `buf`, followed by
/// `tail` bytes in continuation frames.
fn decap(buf: &[u8], tail: usize, t: &Tables) -> Result<(u32, usize), DropReason> {
    let pkt = VxlanPacket::new_checked(buf).map_err(|e| match e {
        VxlanError::Short | VxlanError::Flags => DropReason::VxlanMalformed,
        VxlanError::TruncatedInner => DropReason::VxlanTruncatedInner,
    })?;
    let inner_len = pkt.inner_len();
    if buf.len() + tail < VXLAN_INNER + inner_len {
        return Err(DropReason::VxlanTruncatedInner);
    }
    if t.local.is_none_or(|l| u32::from(l.ip) != pkt.dst_ip()) {
        return Err(DropReason::VxlanNotForNode);
    }
    if !t.nodes.contains_key(&pkt.src_ip()) {
        return Err(DropReason::VxlanUnknownNode);
    }
    let vni = pkt.vni();
    if !t.identities.contains(&vni) {
        return Err(DropReason::VxlanUnknownIdentity);
    }
    // The inner frame's bytes in the head, and how many more its continuations hold.
    let in_head = inner_len.min(buf.len() - VXLAN_INNER);
    match parse::classify(
        &buf[VXLAN_INNER..VXLAN_INNER + in_head],
        inner_len - in_head,
    ) {
        Verdict::Continue(Kind::Ipv4 { .. }) => Ok((vni, inner_len)),
        Verdict::Drop(
            DropReason::TruncatedEthernet | DropReason::TruncatedIp | DropReason::BadTotalLength,
        ) => Err(DropReason::VxlanTruncatedInner),
        Verdict::Drop(r) => Err(r),
        _ => Err(DropReason::UnsupportedEthertype),
    }
}
