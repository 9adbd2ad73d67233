//! Flow records for `vireo observe`: what the `flows` stage saw of a flow (its first packet,
//! its first reply, a TCP FIN or RST) and every dropped IPv4 packet, with addresses, ports,
//! protocol, TCP flags, bytes, identities, the verdict, and for drops the reason and, for
//! policy denials, the side and the rule that denied (or the default deny).
//!
//! Records go through **one lossy ring per worker** ([`FlowRings`]): a worker never blocks and
//! never allocates for a record (fixed-size, the rule an `Arc` cloned from the policy); a full
//! ring loses the record and counts it. The agent drains the rings into its own bounded ring
//! and serves it (`vireo observe`). Recording is always on unless the agent's `flow_ring` is 0.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vireo_policy::rules::ip_proto::{ICMP, SCTP, TCP, UDP};
use vireo_policy::{Direction, Origin};

use crate::counters::DropReason;
use crate::pipeline::{CtVerdict, Desc};
use crate::rings::WorkerRings;
use crate::tables::Tables;
use crate::wire::{ETHERTYPE_IPV4, ETH_HLEN, IPV4_MIN_HLEN};

/// Records each worker's ring holds.
pub const WORKER_RING: usize = 4096;

/// What became of the packet a record is about (Hubble's verdicts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowVerdict {
    /// Sent on.
    Forwarded,
    /// Dropped.
    Dropped,
    /// Denied by the policy of an endpoint in audit mode, and sent on.
    Audit,
}

impl FlowVerdict {
    /// Hubble's name.
    pub fn name(self) -> &'static str {
        match self {
            FlowVerdict::Forwarded => "FORWARDED",
            FlowVerdict::Dropped => "DROPPED",
            FlowVerdict::Audit => "AUDIT",
        }
    }
}

/// Why a packet got a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowEvent {
    /// The first packet of a flow.
    New,
    /// The first packet the responder sent.
    FirstReply,
    /// A TCP FIN or RST.
    Close,
    /// A dropped packet.
    Drop,
}

impl FlowEvent {
    /// The name records show.
    pub fn name(self) -> &'static str {
        match self {
            FlowEvent::New => "new",
            FlowEvent::FirstReply => "first_reply",
            FlowEvent::Close => "close",
            FlowEvent::Drop => "drop",
        }
    }
}

/// One flow record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord {
    /// When (nanoseconds since the Unix epoch).
    pub time_ns: u64,
    /// Why it was recorded.
    pub event: FlowEvent,
    /// What became of the packet.
    pub verdict: FlowVerdict,
    /// Drops: why.
    pub reason: Option<DropReason>,
    /// Interface slot it arrived on.
    pub in_slot: u16,
    /// Interface slot it left on (`None`: dropped, or into the tunnel).
    pub out_slot: Option<u16>,
    /// Into the tunnel towards another node.
    pub to_tunnel: bool,
    /// Came out of the tunnel.
    pub from_tunnel: bool,
    /// A packet from the responder.
    pub reply: bool,
    /// IPv4 source.
    pub src: Ipv4Addr,
    /// IPv4 destination.
    pub dst: Ipv4Addr,
    /// IP protocol.
    pub proto: u8,
    /// TCP/UDP/SCTP ports (0 otherwise).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// ICMP type and code.
    pub icmp: Option<(u8, u8)>,
    /// TCP flags (0 for other protocols).
    pub tcp_flags: u8,
    /// Bytes of the packet (IP header and payload).
    pub bytes: u32,
    /// Source identity.
    pub src_identity: u32,
    /// Destination identity.
    pub dst_identity: u32,
    /// Policy denials (and audits): whose policy, the source's egress or the destination's
    /// ingress.
    pub direction: Option<Direction>,
    /// Policy denials: the deny rule; `None` with a direction is the default deny.
    pub rule: Option<Arc<Origin>>,
}

/// TCP flag bits.
pub mod tcp {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;
}

/// The IPv4 header of an Ethernet frame, cut to its total length; `None` for anything else.
#[inline]
pub fn ipv4_of(buf: &[u8]) -> Option<&[u8]> {
    if buf.len() < ETH_HLEN + IPV4_MIN_HLEN
        || u16::from_be_bytes([buf[12], buf[13]]) != ETHERTYPE_IPV4
    {
        return None;
    }
    let ip = &buf[ETH_HLEN..];
    if ip[0] >> 4 != 4 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    ip.get(..total.max(IPV4_MIN_HLEN))
}

/// The TCP flags of the IPv4 packet `ip` (0 when it is not TCP or a later fragment).
#[inline]
pub fn tcp_flags(ip: &[u8]) -> u8 {
    if ip[9] != TCP || u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0 {
        return 0;
    }
    let l4 = usize::from(ip[0] & 0x0f) * 4;
    ip.get(l4 + 13).map_or(0, |f| f & 0x3f)
}

impl FlowRecord {
    /// A record of the IPv4 packet `ip` (header at `ip[0]`) of `d`, without policy details.
    pub fn of_packet(
        event: FlowEvent,
        verdict: FlowVerdict,
        d: &Desc,
        ip: &[u8],
        time_ns: u64,
    ) -> FlowRecord {
        let proto = ip[9];
        let l4 = usize::from(ip[0] & 0x0f) * 4;
        let later = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff != 0;
        let (mut sport, mut dport, mut icmp) = (0, 0, None);
        match (proto, ip.get(l4..), d.frag_ports) {
            (TCP | UDP | SCTP, _, Some((s, p))) if later => (sport, dport) = (s, p),
            (TCP | UDP | SCTP, Some(h), _) if !later && h.len() >= 4 => {
                sport = u16::from_be_bytes([h[0], h[1]]);
                dport = u16::from_be_bytes([h[2], h[3]]);
            }
            (ICMP, Some(h), _) if !later && h.len() >= 2 => icmp = Some((h[0], h[1])),
            _ => {}
        }
        let word = |o: usize| Ipv4Addr::new(ip[o], ip[o + 1], ip[o + 2], ip[o + 3]);
        FlowRecord {
            time_ns,
            event,
            verdict,
            reason: None,
            in_slot: d.in_slot,
            out_slot: None,
            to_tunnel: false,
            from_tunnel: d.from_tunnel,
            reply: matches!(d.ct, CtVerdict::Reply),
            src: word(12),
            dst: word(16),
            proto,
            sport,
            dport,
            icmp,
            tcp_flags: tcp_flags(ip),
            bytes: u32::from(u16::from_be_bytes([ip[2], ip[3]])),
            src_identity: d.src_identity,
            dst_identity: 0,
            direction: None,
            rule: None,
        }
    }

    /// A dropped packet's record: for a policy denial, the side and rule that deny it now
    /// (the judgment again: a denial cached in the flow has its rule too).
    pub fn dropped(
        t: &Tables,
        d: &Desc,
        reason: DropReason,
        ip: &[u8],
        time_ns: u64,
    ) -> FlowRecord {
        let mut r = FlowRecord::of_packet(FlowEvent::Drop, FlowVerdict::Dropped, d, ip, time_ns);
        r.reason = Some(reason);
        if reason == DropReason::PolicyDenied {
            r.judge(t, d);
        }
        r.resolve_identities(t);
        r
    }

    /// Fills in the identities the record does not have yet, from the node's view of the
    /// addresses: the source's when its packet carried none, and the destination's.
    #[inline]
    pub fn resolve_identities(&mut self, t: &Tables) {
        if self.src_identity == 0 {
            self.src_identity = t.identity_of(u32::from(self.src));
        }
        if self.dst_identity == 0 {
            self.dst_identity = t.identity_of(u32::from(self.dst));
        }
    }

    /// Fills in the side and rule whose policy denies (or, audited, would deny) the packet.
    #[cold]
    pub fn judge(&mut self, t: &Tables, d: &Desc) {
        let l4 = match self.icmp {
            Some((ty, _)) => u16::from(ty),
            None if self.proto == ICMP => vireo_policy::rules::ICMP_TYPE_UNKNOWN,
            None => self.dport,
        };
        let established = !matches!(d.ct, CtVerdict::New | CtVerdict::Untracked);
        if let Some(p) = t.policy_denies_at(
            u32::from(self.src),
            d.src_identity,
            u32::from(self.dst),
            self.proto,
            l4,
            established,
        ) {
            self.direction = Some(p.direction);
            self.rule = p.rule;
            self.src_identity = p.src_identity;
            self.dst_identity = p.dst_identity;
        }
    }
}

/// A batch's time for its records: the clock read once, at the first record.
#[derive(Debug, Default, Clone, Copy)]
pub struct BatchClock(Option<u64>);

impl BatchClock {
    /// Nanoseconds since the Unix epoch, read at the batch's first record.
    #[inline]
    pub fn now(&mut self) -> u64 {
        *self.0.get_or_insert_with(now_ns)
    }
}

/// Nanoseconds since the Unix epoch.
#[inline]
pub fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// The workers' rings of flow records: one each, lossy, counted.
#[derive(Debug)]
pub struct FlowRings {
    on: AtomicBool,
    rings: WorkerRings<FlowRecord>,
}

impl Default for FlowRings {
    fn default() -> Self {
        FlowRings::new(1, WORKER_RING)
    }
}

impl FlowRings {
    /// `workers` rings of `cap` records each; recording on.
    pub fn new(workers: usize, cap: usize) -> FlowRings {
        FlowRings {
            on: AtomicBool::new(true),
            rings: WorkerRings::new(workers, cap),
        }
    }

    /// Whether workers record flows.
    #[inline]
    pub fn is_on(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Starts or stops recording.
    pub fn set(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    /// Queues worker `worker`'s record; a full ring loses it (counted). Never blocks.
    #[inline]
    pub fn push(&self, worker: usize, r: FlowRecord) -> bool {
        self.rings.push(worker, r)
    }

    /// Moves up to `max` records into `out`, ring after ring; returns how many.
    pub fn drain_into(&self, max: usize, out: &mut Vec<FlowRecord>) -> usize {
        let start = out.len();
        for q in self.rings.rings() {
            while out.len() - start < max {
                match q.pop() {
                    Some(r) => out.push(r),
                    None => break,
                }
            }
        }
        out.len() - start
    }

    /// Records lost to full rings so far, all workers together.
    pub fn lost(&self) -> u64 {
        self.rings.lost()
    }

    /// Records lost per worker.
    pub fn lost_per_worker(&self) -> Vec<u64> {
        self.rings.lost_per_worker()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(n: u16) -> FlowRecord {
        let mut ip = [0u8; 40];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&40u16.to_be_bytes());
        ip[9] = TCP;
        ip[12..16].copy_from_slice(&[10, 0, 0, 1]);
        ip[16..20].copy_from_slice(&[10, 0, 0, 2]);
        ip[20..22].copy_from_slice(&n.to_be_bytes());
        ip[22..24].copy_from_slice(&80u16.to_be_bytes());
        ip[33] = tcp::SYN;
        FlowRecord::of_packet(
            FlowEvent::New,
            FlowVerdict::Forwarded,
            &Desc::new(0, 54, 1),
            &ip,
            now_ns(),
        )
    }

    #[test]
    fn a_full_ring_loses_and_counts_and_never_blocks() {
        let r = FlowRings::new(2, 3);
        for i in 0..5 {
            r.push(0, rec(i));
        }
        assert!(r.push(1, rec(9)));
        assert_eq!(r.lost(), 2);
        assert_eq!(r.lost_per_worker(), vec![2, 0]);
        let mut out = Vec::new();
        assert_eq!(r.drain_into(10, &mut out), 4);
        let ports: Vec<u16> = out.iter().map(|f| f.sport).collect();
        assert_eq!(ports, vec![0, 1, 2, 9], "the first three kept, in order");
        assert!(r.push(0, rec(7)), "room again once drained");
        assert_eq!(r.lost(), 2);
        // A worker number past the rings wraps around (no panic).
        assert!(r.push(5, rec(8)));
        out.clear();
        assert_eq!(r.drain_into(1, &mut out), 1, "at most max");
    }

    #[test]
    fn records_read_the_packet() {
        let f = rec(40000);
        assert_eq!(
            (f.src, f.dst, f.sport, f.dport),
            (
                Ipv4Addr::new(10, 0, 0, 1),
                Ipv4Addr::new(10, 0, 0, 2),
                40000,
                80
            )
        );
        assert_eq!(
            (f.proto, f.tcp_flags, f.bytes, f.icmp),
            (TCP, tcp::SYN, 40, None)
        );
        assert!(f.time_ns > 1_600_000_000_000_000_000);
    }

    /// An IPv4 packet of `proto` with fragment word `frag` and `l4` after a 20-byte header.
    fn packet(proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
        let mut ip = vec![0u8; 20];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
        ip[6..8].copy_from_slice(&frag.to_be_bytes());
        ip[9] = proto;
        ip.extend_from_slice(l4);
        ip
    }

    fn of(ip: &[u8], d: &Desc) -> FlowRecord {
        FlowRecord::of_packet(FlowEvent::New, FlowVerdict::Forwarded, d, ip, 0)
    }

    /// SCTP has its ports where TCP and UDP do; a later fragment has none in its bytes and takes
    /// them from its first fragment (`frag_ports`, set by the fragments stage) or shows 0; an
    /// ICMP later fragment is no ICMP header, and a TCP one has no flags.
    #[test]
    fn sctp_ports_and_later_fragments() {
        let d = Desc::new(0, 64, 1);
        let mut sctp = vec![0u8; 12];
        sctp[..2].copy_from_slice(&5000u16.to_be_bytes());
        sctp[2..4].copy_from_slice(&38412u16.to_be_bytes());
        let f = of(&packet(SCTP, 0, &sctp), &d);
        assert_eq!(
            (f.proto, f.sport, f.dport, f.tcp_flags),
            (SCTP, 5000, 38412, 0)
        );

        // The middle of a TCP datagram (offset 185 x 8, more fragments): the bytes at the
        // ports' place are payload.
        let later = packet(TCP, 0x2000 | 185, &[0xee; 40]);
        let f = of(&later, &d);
        assert_eq!(
            (f.sport, f.dport, f.tcp_flags),
            (0, 0, 0),
            "no ports of its own"
        );
        let mut with = d;
        with.frag_ports = Some((40000, 80));
        let f = of(&later, &with);
        assert_eq!((f.sport, f.dport, f.tcp_flags), (40000, 80, 0));
        // The first fragment (more fragments, offset 0) reads its own header.
        let mut tcp_head = vec![0u8; 20];
        tcp_head[..2].copy_from_slice(&40000u16.to_be_bytes());
        tcp_head[2..4].copy_from_slice(&80u16.to_be_bytes());
        tcp_head[13] = tcp::SYN;
        let f = of(&packet(TCP, 0x2000, &tcp_head), &d);
        assert_eq!((f.sport, f.dport, f.tcp_flags), (40000, 80, tcp::SYN));

        let f = of(&packet(ICMP, 0x0010, &[8, 0, 0, 0]), &with);
        assert_eq!(
            (f.icmp, f.sport, f.dport),
            (None, 0, 0),
            "an ICMP later fragment"
        );
        let f = of(&packet(ICMP, 0, &[8, 0, 0, 0]), &d);
        assert_eq!(f.icmp, Some((8, 0)));
        // Another protocol (GRE): no ports.
        let f = of(&packet(47, 0, &[0xff; 8]), &d);
        assert_eq!((f.proto, f.sport, f.dport), (47, 0, 0));
    }
}
