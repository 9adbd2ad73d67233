//! Stage `dns_learn`: the addresses DNS answers teach an endpoint, for its `toFQDNs` rules.
//!
//! - **Which packets:** replies (conntrack says `reply`: the answer to a query the pod sent,
//!   never a datagram a third party made up) on their way to a local pod, UDP or TCP from
//!   port 53, when the pod's egress policy has `toFQDNs` selectors. Nothing else is parsed.
//! - **What is learned:** the A records of the answer section, for the names that one of the
//!   pod's selectors matches (owner names, names whose CNAME chain leads to them, and the
//!   question's name: [`crate::fqdn::parse::response_answers`]), into the shared
//!   [`crate::fqdn::FqdnCache`] **before the frame leaves the batch**, so the pod's first packet
//!   to the address, on any worker, is judged with it.
//! - **TCP:** learned when the segment holds the whole length-prefixed message; otherwise the
//!   segment passes without learning (`tcp_not_learned`).
//! - **Malformed responses** (truncated, compression loops, oversized names, counts that do
//!   not match) pass to the pod without learning (`malformed`): dropping them would hide
//!   nothing (no address is allowed by them), and the resolver reports its own error.
//! - Learning bumps no table revision: established flows are not judged again for it.

use vireo_conntrack::table::{TCP, UDP};

use super::{Batch, CtVerdict, Desc, Frames, Verdict};
use crate::counters::BatchCounts;
use crate::fqdn::cache::DnsCounters;
use crate::fqdn::parse::{response_answers, tcp_message, DnsError};
use crate::tables::{IfRole, Tables};
use crate::wire::{ipv4_fragment, ETHERTYPE_IPV4, ETH_HLEN, IPV4_MIN_HLEN};

/// The DNS port.
pub const DNS_PORT: u16 = 53;

pub(super) fn run<F: Frames>(batch: &mut Batch, frames: &mut F, t: &Tables, _c: &mut BatchCounts) {
    if t.policy.is_empty() {
        return;
    }
    let now = batch.now();
    for d in batch.descs() {
        if d.ct != CtVerdict::Reply {
            continue;
        }
        let Verdict::Tx { slot } = d.verdict else {
            continue;
        };
        if !t.iface(slot).is_some_and(|i| i.role == IfRole::Pod) {
            continue;
        }
        let Some(buf) = frames.frame(d.addr, d.len) else {
            continue;
        };
        learn(d, buf, t, now);
    }
}

/// Learns from the frame `buf` if it is a DNS response to a pod with `toFQDNs` rules.
fn learn(d: &Desc, buf: &[u8], t: &Tables, now: u32) {
    if buf.len() < ETH_HLEN + IPV4_MIN_HLEN + 8
        || u16::from_be_bytes([buf[12], buf[13]]) != ETHERTYPE_IPV4
    {
        return;
    }
    let ip = &buf[ETH_HLEN..];
    let proto = ip[9];
    if !matches!(proto, UDP | TCP) {
        return;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let ip = &ip[..total];
    let (more, offset) = ipv4_fragment(ip);
    if offset != 0 || u16::from_be_bytes([ip[20], ip[21]]) != DNS_PORT {
        return;
    }
    let dst = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    let Some(ep) = t.endpoint(dst) else { return };
    let Some(sels) = t
        .policy
        .get(ep.identity)
        .map(|p| p.fqdn_selectors())
        .filter(|s| !s.is_empty())
    else {
        return;
    };
    let c = &t.fqdn.counters;
    let l4 = &ip[IPV4_MIN_HLEN..];
    let body = match proto {
        UDP => &l4[8..],
        _ => {
            let off = usize::from(l4.get(12).map_or(0, |b| b >> 4)) * 4;
            match l4.get(off.max(20)..).map(tcp_message) {
                Some(Ok(Some(m))) => m,
                Some(Ok(None)) => return,
                _ => {
                    DnsCounters::add(&c.tcp_not_learned, 1);
                    return;
                }
            }
        }
    };
    if more || d.tail != 0 {
        // Part of the message is in another fragment or frame.
        DnsCounters::add(&c.malformed, 1);
        return;
    }
    let mut answers = Vec::new();
    match response_answers(body, sels, &mut answers) {
        Ok(_) => {
            DnsCounters::add(&c.responses_parsed, 1);
            let new = t.fqdn.learn(dst, &answers, now);
            DnsCounters::add(&c.learned, new as u64);
        }
        Err(DnsError::Malformed | DnsError::Unexpected | DnsError::Segmented) => {
            DnsCounters::add(&c.malformed, 1);
        }
    }
}
