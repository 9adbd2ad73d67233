//! Stage `dns_query`: `rules: dns` enforced on the DNS queries local pods send.
//!
//! - **Which packets:** UDP and TCP from a local pod (arrived on its own veth, from its own
//!   address), after the `service` stage (so a query to the cluster DNS Service is judged
//!   against the backend it goes to) and before `masquerade` and `conntrack`, when the pod's
//!   egress policy filters DNS on that peer, protocol and port: every allow rule that covers
//!   them carries `rules: dns` ([`vireo_policy::PolicyTables::dns_filters`]). Nothing else
//!   is parsed.
//! - **Allowed names** go on untouched. **Other names** never reach the server: over UDP the
//!   query is answered by Vireo, turned around in place (MACs, addresses and ports swapped, the
//!   Service's address as the source when `service` translated it, the DNS header's response
//!   bit and the `tofqdns-dns-reject-response-code` rcode set, checksums patched) and sent back
//!   to the pod (counted `refused`; no conntrack entry). Over TCP the segment is dropped
//!   (`dns_query_refused`, also counted `refused`): Vireo does not write TCP payloads.
//! - **Unreadable queries** (no DNS message, several questions, split over TCP segments, a
//!   multi-buffer packet) are dropped as `dns_query_unreadable`: the name cannot be judged, so
//!   it is not let through (fail closed). A TCP segment without payload (the handshake, ACKs)
//!   passes.

use vireo_conntrack::table::{TCP, UDP};
use vireo_policy::FqdnSelector;

use super::{Batch, CtVerdict, Desc, Frames, Kind, Verdict};
use crate::counters::{BatchCounts, DropReason};
use crate::fqdn::cache::DnsCounters;
use crate::fqdn::parse::{query_name, refuse_in_place, tcp_message};
use crate::tables::Tables;
use crate::wire::{csum_replace16, ipv4_fragment, ipv4_rewrite, IPV4_MIN_HLEN};

pub(super) fn run<F: Frames>(batch: &mut Batch, frames: &mut F, t: &Tables, _c: &mut BatchCounts) {
    if t.policy.is_empty() {
        return;
    }
    for d in batch.descs_mut() {
        let Verdict::Continue(Kind::Ipv4 { l3 }) = d.verdict else {
            continue;
        };
        if d.from_tunnel {
            continue;
        }
        let Some(buf) = frames.frame(d.addr, d.len) else {
            continue;
        };
        if let Some(v) = judge(d, buf, usize::from(l3), t) {
            if matches!(v, Verdict::Tx { .. }) {
                // Vireo's own answer: no policy, no conntrack entry.
                d.ct = CtVerdict::Related;
            }
            d.verdict = v;
        }
    }
}

/// The L4 payload of the UDP or TCP packet `ip` (IPv4 header at 0, no options, total length
/// checked by `parse`), or `None` when its header does not fit.
fn payload(ip: &[u8]) -> Option<&[u8]> {
    let l4 = ip.get(IPV4_MIN_HLEN..)?;
    match ip[9] {
        UDP => l4.get(8..),
        TCP => {
            let off = usize::from(*l4.get(12)? >> 4) * 4;
            l4.get(off.max(20)..)
        }
        _ => None,
    }
}

/// The verdict for a query that the pod's DNS rules filter; `None`: not one (or allowed).
fn judge(d: &Desc, buf: &mut [u8], l3: usize, t: &Tables) -> Option<Verdict> {
    let ip = buf.get(l3..)?;
    let proto = ip[9];
    if !matches!(proto, UDP | TCP) || ip.len() < IPV4_MIN_HLEN + 8 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let ip = &ip[..total];
    let word = |o: usize| u32::from_be_bytes([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]]);
    let (src, dst) = (word(12), word(16));
    let ep = t.endpoint(src).filter(|ep| ep.slot == d.in_slot)?;
    let table = t.policy.get(ep.identity)?;
    if !table.has_dns() {
        return None;
    }
    let dport = match d.frag_ports {
        Some((_, p)) => p,
        None => u16::from_be_bytes([ip[IPV4_MIN_HLEN + 2], ip[IPV4_MIN_HLEN + 3]]),
    };
    let peer = t.identity_of(dst);
    let known = |sel: &FqdnSelector| t.fqdn.knows(src, dst, sel, false);
    if !t
        .policy
        .dns_filters(ep.identity, peer, Some(dst), proto, dport, &known)
    {
        return None;
    }
    let counters = &t.fqdn.counters;
    let unreadable = Some(Verdict::Drop(DropReason::DnsQueryUnreadable));
    let (more, offset) = ipv4_fragment(ip);
    if more || offset != 0 || d.tail != 0 {
        return unreadable;
    }
    let body = payload(ip)?;
    let msg = if proto == TCP {
        match tcp_message(body) {
            Ok(None) => return None,
            Ok(Some(m)) => m,
            Err(_) => return unreadable,
        }
    } else {
        body
    };
    let Ok(name) = query_name(msg) else {
        return unreadable;
    };
    if t.policy
        .dns_query_allowed(ep.identity, peer, Some(dst), proto, dport, &name, &known)
    {
        return None;
    }
    DnsCounters::add(&counters.refused, 1);
    if proto == TCP {
        return Some(Verdict::Drop(DropReason::DnsQueryRefused));
    }
    refuse(d, buf, l3, t.fqdn.settings().reject_rcode)
}

/// Turns the UDP query in `buf` (IPv4 header at `l3`) into Vireo's refusal, back to the pod.
fn refuse(d: &Desc, buf: &mut [u8], l3: usize, rcode: u8) -> Option<Verdict> {
    let (eth, ip) = buf.split_at_mut(l3);
    if eth.len() < 12 {
        return None;
    }
    let (dmac, smac) = eth.split_at_mut(6);
    dmac.swap_with_slice(&mut smac[..6]);
    let half = |b: &[u8], o: usize| u16::from_be_bytes([b[o], b[o + 1]]);
    let word = |o: usize| u32::from_be_bytes([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]]);
    let (src, dst) = (word(12), word(16));
    let (sport, dport) = (half(ip, IPV4_MIN_HLEN), half(ip, IPV4_MIN_HLEN + 2));
    // What the pod sent to: the Service's frontend when `service` translated the query.
    let (to, to_port) = match d.pre_nat {
        Some(pre) if d.nat => (pre.dst, pre.dport),
        _ => (dst, dport),
    };
    ipv4_rewrite(ip, to, to_port, src, sport);
    let udp = IPV4_MIN_HLEN;
    let (old, new) = refuse_in_place(ip.get_mut(udp + 8..)?, rcode)?;
    let csum = half(ip, udp + 6);
    if csum != 0 {
        let mut c = csum_replace16(csum, old, new);
        if c == 0 {
            c = 0xffff;
        }
        ip[udp + 6..udp + 8].copy_from_slice(&c.to_be_bytes());
    }
    Some(Verdict::Tx { slot: d.in_slot })
}
