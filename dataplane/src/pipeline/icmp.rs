//! ICMP errors Vireo answers with (time exceeded, fragmentation needed, port unreachable): built
//! in place of the offending frame and sent back out of the interface it came in on.
//!
//! They leave from an address the sender can route back to and knows: for a packet the `service`
//! stage translated, the service address, with the quote translated back to what the sender
//! sent (so PMTU discovery and errors work through a ClusterIP); otherwise the pod's gateway for
//! a pod of this node, and this node's address for a client outside the cluster. A packet that
//! came through the tunnel is not answered (its sender's node answers first: it routes the
//! packet too); it is counted. As RFC 1122 says, no error is sent about an ICMP error or a
//! later fragment, or to an address that names no single host.

use super::{CtVerdict, Desc, Frames, Verdict};
use crate::counters::{BatchCounts, DropReason};
use crate::tables::{IfRole, Tables};
use crate::wire::{
    icmp_error, is_host, may_answer, quoted, translate_icmp_error, ETH_HLEN, ICMP_ERROR_FRAME,
};

/// An ICMP error to answer a frame with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Answer {
    /// ICMP type.
    pub typ: u8,
    /// ICMP code.
    pub code: u8,
    /// The second word of the ICMP header (the next-hop MTU of "fragmentation needed").
    pub rest: u32,
    /// What it is counted as (the frame is counted under it whether answered or not).
    pub reason: DropReason,
}

/// The address an error about `d` comes from, or `None` when it is not answered.
fn source(d: &Desc, t: &Tables) -> Option<u32> {
    if let (Some(pre), CtVerdict::New | CtVerdict::Established) = (d.pre_nat, d.ct) {
        return Some(pre.dst); // the service address the client sent to
    }
    if d.from_tunnel {
        return None;
    }
    match t.iface(d.in_slot)?.role {
        IfRole::Pod => t.gateways.first().map(|g| u32::from(*g)),
        IfRole::Uplink | IfRole::Host => t.local.map(|l| u32::from(l.ip)),
    }
}

/// Turns frame `d` into the error `a` for its sender and sends it back where it came from; the
/// frame is counted under `a.reason` either way (as a drop when it is not answered). Returns
/// the frame's verdict.
pub(crate) fn answer<F: Frames>(
    d: &mut Desc,
    frames: &mut F,
    t: &Tables,
    c: &mut BatchCounts,
    a: Answer,
) -> Verdict {
    let Some(from) = source(d, t) else {
        return Verdict::Drop(a.reason);
    };
    // Never about an ICMP error, a later fragment, or to an address that is no host (the
    // sender as it sent the packet, before any translation).
    match frames.frame(d.addr, d.len) {
        Some(buf)
            if buf.len() > ETH_HLEN
                && may_answer(&buf[ETH_HLEN..])
                && d.pre_nat.is_none_or(|p| is_host(p.src)) => {}
        _ => return Verdict::Drop(a.reason),
    }
    // The error may be longer than the offending frame: build it in the frame's room.
    let len = d.len.max(ICMP_ERROR_FRAME as u32);
    if frames.room(d.addr) < len as usize {
        return Verdict::Drop(a.reason);
    }
    let Some(buf) = frames.frame(d.addr, len) else {
        return Verdict::Drop(a.reason);
    };
    let (to_mac, our_mac): ([u8; 6], [u8; 6]) = match (buf[6..12].try_into(), buf[0..6].try_into())
    {
        (Ok(a), Ok(b)) => (a, b),
        _ => return Verdict::Drop(a.reason),
    };
    let Some(n) = icmp_error(buf, from.to_be_bytes(), a.typ, a.code, a.rest) else {
        return Verdict::Drop(a.reason);
    };
    if let Some(pre) = d.pre_nat {
        // Quote what the sender sent, and answer the sender (not a source-NAT address).
        let ip = &mut buf[ETH_HLEN..n];
        if let Ok(Some(q)) = quoted(ip) {
            translate_icmp_error(
                ip,
                &q,
                (pre.src, pre.sport),
                (pre.dst, pre.dport),
                None,
                Some(pre.src),
            );
        }
    }
    buf[0..6].copy_from_slice(&to_mac);
    buf[6..12].copy_from_slice(&our_mac);
    d.len = n as u32;
    // The error is all in the head: a multi-buffer packet's continuations are not part of it.
    d.detach_chain();
    d.ct = CtVerdict::Related;
    c.drop(a.reason); // answered, and counted
    Verdict::Tx { slot: d.in_slot }
}
