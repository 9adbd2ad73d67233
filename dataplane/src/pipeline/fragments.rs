//! Stage `fragments`: IPv4 fragments of TCP, UDP, SCTP and ICMP, as Cilium's
//! `enable-ipv4-fragment-tracking` handles them. Only the first fragment carries the ports: it
//! records them under (source, destination, protocol, IP identification) in the bounded
//! fragment table, and each later fragment takes them from there, so it is tracked, translated,
//! policed and routed as its datagram. A later fragment whose first fragment was not seen is
//! dropped as `frag_no_first`; a later fragment's payload is never read as ports or as an ICMP
//! header (an ICMP echo's identifier comes from its first fragment; other ICMP messages are
//! tracked by addresses alone). Fragments of other protocols need nothing (their flows are
//! keyed by addresses alone).

use vireo_conntrack::table::{ICMP, TCP, UDP};
use vireo_conntrack::FragKey;
use vireo_policy::rules::ip_proto::SCTP;

use super::{Batch, Frames, Kind, Verdict};
use crate::counters::{BatchCounts, DropReason};
use crate::tables::Tables;
use crate::wire::{ipv4_fragment, IPV4_MIN_HLEN};

pub(super) fn run<F: Frames>(batch: &mut Batch, frames: &mut F, t: &Tables, _c: &mut BatchCounts) {
    let now = batch.now();
    for d in batch.descs_mut() {
        let Verdict::Continue(Kind::Ipv4 { l3 }) = d.verdict else {
            continue;
        };
        let Some(buf) = frames.frame(d.addr, d.len) else {
            continue;
        };
        let ip = &buf[usize::from(l3)..];
        let (more, offset) = ipv4_fragment(ip);
        if (!more && offset == 0) || !matches!(ip[9], TCP | UDP | SCTP | ICMP) {
            continue;
        }
        let word = |o: usize| u32::from_be_bytes([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]]);
        let key = FragKey {
            src: word(12),
            dst: word(16),
            proto: ip[9],
            ip_id: u16::from_be_bytes([ip[4], ip[5]]),
        };
        if offset == 0 {
            let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
            if total < IPV4_MIN_HLEN + 4 {
                d.verdict = Verdict::Drop(DropReason::TruncatedIp);
                continue;
            }
            let port = |o: usize| u16::from_be_bytes([ip[o], ip[o + 1]]);
            let ports = match ip[9] {
                ICMP if total >= IPV4_MIN_HLEN + 8 && matches!(ip[IPV4_MIN_HLEN], 0 | 8) => {
                    (port(IPV4_MIN_HLEN + 4), port(IPV4_MIN_HLEN + 4))
                }
                ICMP => (0, 0),
                _ => (port(IPV4_MIN_HLEN), port(IPV4_MIN_HLEN + 2)),
            };
            t.frags.insert(&key, ports, now);
        } else {
            match t.frags.lookup(&key, now) {
                Some(p) => d.frag_ports = Some(p),
                None => d.verdict = Verdict::Drop(DropReason::FragNoFirst),
            }
        }
    }
}
