//! Stage `ipv4_forward`: routes IPv4 packets.
//!
//! - A packet from a pod must carry that pod's own address (anti-spoofing); its endpoint gives
//!   the sender's identity.
//! - A local destination is delivered: TTL decremented, MACs rewritten (source: the host-side
//!   veth, i.e. the pod's gateway; destination: the pod). A packet whose TTL would reach zero is
//!   answered with ICMP time exceeded ([`super::icmp`]).
//! - The node's own address (from a pod, the tunnel, or translated by `service`) is delivered
//!   to the node's stack out of the host pair (`vireo_net`, to `vireo_host`'s MAC).
//! - From the host pair, the node's stack must send from the node's own address; it is
//!   identity `host` (1), as in Cilium.
//! - A destination the ipcache places on another node goes to `vxlan_encap`, TTL decremented.
//! - Anything else is an unknown destination.
//! - Frames the `service` or `masquerade` stage translated had their source checked there;
//!   from the uplink, only those come here (a masqueraded flow's replies, to their pod). A
//!   pod's traffic to the world left through `masquerade` already (with masquerade off it is
//!   an unknown destination here). A decapsulated packet is only ever delivered
//!   locally.

use super::icmp::{answer, Answer};
use super::{Batch, Desc, Frames, Kind, Verdict};
use crate::counters::{BatchCounts, DropReason};
use crate::tables::{IfRole, Tables};
use crate::wire::{ipv4_dec_ttl, set_macs, ICMP_TIME_EXCEEDED};
use vireo_policy::Identity;

/// The answer to a packet whose TTL runs out here.
const TIME_EXCEEDED: Answer = Answer {
    typ: ICMP_TIME_EXCEEDED,
    code: 0,
    rest: 0,
    reason: DropReason::TtlExceeded,
};

pub(super) fn run<F: Frames>(batch: &mut Batch, frames: &mut F, t: &Tables, c: &mut BatchCounts) {
    for d in batch.descs_mut() {
        let Verdict::Continue(Kind::Ipv4 { l3 }) = d.verdict else {
            continue;
        };
        let Some(buf) = frames.frame(d.addr, d.len) else {
            d.verdict = Verdict::Drop(DropReason::TruncatedEthernet);
            continue;
        };
        d.verdict = match forward(d, buf, usize::from(l3), t) {
            Some(v) => v,
            None => answer(d, frames, t, c, TIME_EXCEEDED),
        };
    }
}

/// The packet's verdict; `None` when its TTL runs out (to be answered).
fn forward(d: &mut Desc, buf: &mut [u8], l3: usize, t: &Tables) -> Option<Verdict> {
    Some(route(d, buf, l3, t)).filter(|v| *v != Verdict::Drop(DropReason::TtlExceeded))
}

fn route(d: &mut Desc, buf: &mut [u8], l3: usize, t: &Tables) -> Verdict {
    let ip = &buf[l3..];
    let src = u32::from_be_bytes([ip[12], ip[13], ip[14], ip[15]]);
    let dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    // The `service` stage checked the source of what it translated.
    if !d.from_tunnel && !d.nat {
        match t.iface(d.in_slot).map(|i| i.role) {
            Some(IfRole::Pod) => match t.endpoint(src) {
                Some(ep) if ep.slot == d.in_slot => d.src_identity = ep.identity,
                _ => return Verdict::Drop(DropReason::InvalidSource),
            },
            // The node's own stack: only from the node's address (its routes say `src`).
            Some(IfRole::Host) if t.is_local_host(src) => d.src_identity = Identity::HOST.0,
            Some(IfRole::Host) => return Verdict::Drop(DropReason::InvalidSource),
            // From the uplink only VXLAN, service frontends and masquerade replies are steered.
            _ => return Verdict::Drop(DropReason::UnknownDestination),
        }
    }
    if let Some(ep) = t.endpoint(dst) {
        let Some(out) = t.iface(ep.slot) else {
            return Verdict::Drop(DropReason::NoTxPort);
        };
        if ipv4_dec_ttl(&mut buf[l3..]) <= 1 {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        set_macs(buf, &ep.mac, &out.mac);
        return Verdict::Tx { slot: ep.slot };
    }
    if t.is_local_host(dst) {
        // To the node's own stack, through the host pair (never back where it came from).
        let (Some(h), false) = (t.host, t.is_host_slot(d.in_slot) && !d.nat) else {
            return Verdict::Drop(DropReason::UnknownDestination);
        };
        let Some(out) = t.iface(h.slot) else {
            return Verdict::Drop(DropReason::NoTxPort);
        };
        if ipv4_dec_ttl(&mut buf[l3..]) <= 1 {
            return Verdict::Drop(DropReason::TtlExceeded);
        }
        set_macs(buf, &h.peer_mac, &out.mac);
        return Verdict::Tx { slot: h.slot };
    }
    if d.from_tunnel {
        return Verdict::Drop(DropReason::UnknownDestination);
    }
    match t.ipcache.lookup(dst).and_then(|e| e.tunnel) {
        Some(node) => {
            if ipv4_dec_ttl(&mut buf[l3..]) <= 1 {
                return Verdict::Drop(DropReason::TtlExceeded);
            }
            Verdict::Continue(Kind::Encap {
                tunnel: u32::from(node),
            })
        }
        None => Verdict::Drop(DropReason::UnknownDestination),
    }
}
