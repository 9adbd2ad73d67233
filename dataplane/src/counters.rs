//! Per-worker counters: written by one worker, read by the API. Each block sits on its own cache
//! lines so workers never share a line with each other.

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal, $doc:literal;)*) => {
        /// Why a frame was dropped. The names are the stable strings shown by `vireo status`.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $(#[doc = $doc] $variant,)*
        }

        impl DropReason {
            /// Every reason, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            /// The stable name.
            pub fn name(self) -> &'static str {
                match self { $(DropReason::$variant => $name,)* }
            }
        }
    };
}

drop_reasons! {
    TruncatedEthernet => "truncated_ethernet", "Shorter than an Ethernet header.";
    UnsupportedEthertype => "unsupported_ethertype", "Neither IPv4 nor ARP.";
    TruncatedIp => "truncated_ip", "Shorter than the IPv4 header it claims.";
    BadIpVersion => "bad_ip_version", "An IPv4 ethertype whose version field is not 4.";
    BadIhl => "bad_ihl", "IHL below 5.";
    IpOptions => "ip_options", "IPv4 options are not forwarded.";
    BadTotalLength => "bad_total_length", "IPv4 total length shorter than its header or longer than the frame.";
    BadIpChecksum => "bad_ip_checksum", "An IPv4 header whose checksum is wrong.";
    TtlExceeded => "ttl_exceeded", "TTL would reach zero: answered with ICMP time exceeded when the sender is a pod of this node or outside the cluster.";
    UnknownDestination => "unknown_destination", "No endpoint or route for the destination.";
    MalformedArp => "malformed_arp", "An ARP frame that does not parse.";
    ArpNotForGateway => "arp_not_for_gateway", "An ARP request for an address the dataplane does not answer, or an ARP reply.";
    InvalidSource => "invalid_source", "A pod sent from an address that is not its own.";
    VxlanMalformed => "vxlan_malformed", "A VXLAN header that is short or lacks the I flag.";
    VxlanNotForNode => "vxlan_not_for_node", "VXLAN whose outer destination is not this node's address.";
    VxlanEcn => "vxlan_ecn", "Outer header marked Congestion Experienced over an inner packet that is not ECN-capable (RFC 6040).";
    VxlanTruncatedInner => "vxlan_truncated_inner", "A VXLAN packet whose inner frame is truncated.";
    VxlanUnknownIdentity => "vxlan_unknown_identity", "A VNI that is no known security identity.";
    VxlanUnknownNode => "vxlan_unknown_node", "VXLAN from an address that is no known node.";
    NoNeighbor => "no_neighbor", "The underlay MAC of the destination node (or of the uplink's next hop to the world) is not resolved yet.";
    FragNeeded => "frag_needed", "Too big to encapsulate with DF set: answered with ICMP fragmentation needed.";
    TooBigNoDf => "too_big_no_df", "Too big to encapsulate without DF: dropped, not fragmented.";
    NoHeadroom => "no_headroom", "No room in front of the frame for the outer headers.";
    TcpInvalidFlags => "tcp_invalid_flags", "TCP flags no stack sends (SYN+FIN, SYN+RST, FIN without ACK, none): not tracked.";
    CtFull => "ct_full", "A new flow with the conntrack table at its limit and nothing expired to evict.";
    PolicyDenied => "policy_denied", "A packet the endpoints' policy denies (a deny rule, or default deny), judged on every packet in a flow's original direction.";
    IcmpUnrelated => "icmp_unrelated", "An ICMP error that quotes no tracked flow, or not its own receiver's packet.";
    FragNoFirst => "frag_no_first", "A later IPv4 fragment whose first fragment was not seen (its ports are unknown).";
    NoBackend => "no_backend", "A service with no backend taking new flows: answered with ICMP port unreachable.";
    LbSourceRange => "lb_source_range", "A client outside a LoadBalancer service's loadBalancerSourceRanges.";
    SnatNoPort => "snat_no_port", "No free source port to source-NAT a flow to the node's address (a NodePort or external flow from outside, or a pod's flow to the world).";
    MasqNoEntry => "masq_no_entry", "A packet from the uplink to the node's address in the masquerade port range (or an ICMP error or echo reply about one) with no conntrack entry: never reaches a pod.";
    MasqUnsupported => "masq_unsupported_proto", "A pod's packet to the world of a protocol masquerade does not translate (only TCP, UDP and ICMP echo are).";
    NoTxPort => "no_tx_port", "The output interface has no socket on this worker and no worker owns it (it went away).";
    HandoffFull => "handoff_full", "The output interface belongs to another worker whose handoff ring was full (or no handoff buffer, or no free frame to take it in, was left).";
    TxRingFull => "tx_ring_full", "The output socket's TX ring was full (a multi-buffer packet goes on whole or not at all: all its frames are dropped, counted once).";
    MultiBufferTooLong => "multi_buffer_too_long", "A multi-buffer packet (AF_XDP XDP_USE_SG) of more frames than the kernel's MAX_SKB_FRAGS + 1, or a chain cut short (its socket went away mid-chain): every frame of it is dropped.";
    HandoffMultiBuffer => "handoff_multi_buffer", "A multi-buffer packet for an interface another worker owns: handoff carries single frames only, so it is dropped (pods of one worker are unaffected; give jumbo-frame pods and their peers one worker).";
    IcmpErrorMultiBuffer => "icmp_error_multi_buffer", "An ICMP error about a translated flow (service or masquerade) larger than one UMEM frame: its checksum is recomputed over the whole message, which Vireo does within one frame only.";
    DnsQueryUnreadable => "dns_query_unreadable", "A DNS query that the pod's `rules: dns` filter and that cannot be read (no DNS message, not one question, split over TCP segments or frames): its name cannot be judged (fail closed).";
    DnsQueryRefused => "dns_query_refused", "A DNS query over TCP for a name no `rules: dns` allows (over UDP Vireo answers it instead).";
}

/// Number of drop reasons.
pub const DROP_REASONS: usize = DropReason::ALL.len();

/// A value on its own cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct Padded<T>(pub T);

/// Counters of one worker.
#[derive(Debug)]
pub struct WorkerCounters {
    /// Frames received.
    pub rx: Padded<AtomicU64>,
    /// Frames handed to a TX ring.
    pub tx: Padded<AtomicU64>,
    /// Batches processed.
    pub batches: Padded<AtomicU64>,
    /// Drops by reason, indexed by `DropReason as usize`.
    pub drops: Padded<[AtomicU64; DROP_REASONS]>,
    /// Where the UMEM's frames are, refreshed once per loop: free, in fill rings, on TX rings.
    pub frames: Padded<[AtomicU64; 3]>,
    /// The kernel's own AF_XDP drop counts over this worker's sockets (XDP_STATISTICS),
    /// refreshed about once a second, in [`KernelDrops`] field order.
    pub kernel: Padded<[AtomicU64; 4]>,
    /// Frames handed off to other workers, and received from them ([`HandoffCounts`] order).
    pub handoff: Padded<[AtomicU64; 2]>,
    /// Packets policy denied but passed: audit mode.
    pub policy_audited: Padded<AtomicU64>,
    /// Bytes received and handed to TX rings.
    pub bytes: Padded<[AtomicU64; 2]>,
    /// New flows' policy verdicts, by [`verdict_index`].
    pub verdicts: Padded<[AtomicU64; VERDICT_SLOTS]>,
    /// Each socket's kernel drop counts, refreshed with [`WorkerCounters::kernel`] (the worker
    /// only tries the lock: a reader holding it delays the refresh, never the worker).
    pub sockets: std::sync::Mutex<Vec<SocketDrops>>,
}

/// Slots of the policy verdict counters: (egress, ingress) × (allowed, denied, audit).
pub const VERDICT_SLOTS: usize = 6;

/// The counter slot of a verdict: `direction` 0 egress, 1 ingress; `verdict` 0 allowed,
/// 1 denied, 2 audit.
#[inline]
pub const fn verdict_index(direction: usize, verdict: usize) -> usize {
    direction * 3 + verdict
}

/// One AF_XDP socket's kernel drop counts.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SocketDrops {
    /// Interface name.
    pub ifname: String,
    /// Its RX queue.
    pub queue: u32,
    /// The counts (XDP_STATISTICS).
    pub drops: KernelDrops,
}

/// Frames moved between workers (see [`crate::handoff`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HandoffCounts {
    /// Handed to another worker (its interface's socket is there).
    pub sent: u64,
    /// Taken from other workers and put on this worker's TX rings (or dropped, counted).
    pub received: u64,
}

/// Frames the kernel dropped on the way into or out of this worker's sockets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct KernelDrops {
    /// Dropped for other reasons (e.g. too large for a frame).
    pub rx_dropped: u64,
    /// The RX ring was full.
    pub rx_ring_full: u64,
    /// No frame in the fill ring.
    pub rx_fill_ring_empty: u64,
    /// Invalid TX descriptors.
    pub tx_invalid: u64,
}

impl Default for WorkerCounters {
    fn default() -> Self {
        WorkerCounters {
            rx: Padded::default(),
            tx: Padded::default(),
            batches: Padded::default(),
            drops: Padded(std::array::from_fn(|_| AtomicU64::new(0))),
            frames: Padded::default(),
            kernel: Padded::default(),
            handoff: Padded::default(),
            policy_audited: Padded::default(),
            bytes: Padded::default(),
            verdicts: Padded::default(),
            sockets: std::sync::Mutex::new(Vec::new()),
        }
    }
}

/// Counts gathered over one batch, flushed into [`WorkerCounters`] once per batch.
#[derive(Debug, Clone)]
pub struct BatchCounts {
    /// Frames received.
    pub rx: u64,
    /// Frames sent.
    pub tx: u64,
    /// Drops by reason.
    pub drops: [u64; DROP_REASONS],
    /// The last outer IPv4 identification this worker sent (VXLAN; RFC 6864). Kept across
    /// flushes.
    pub ip_id: u16,
    /// Frames handed off to other workers.
    pub handoff_sent: u64,
    /// Frames received from other workers.
    pub handoff_received: u64,
    /// Packets policy denied but passed (audit mode).
    pub policy_audited: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// New flows' policy verdicts ([`verdict_index`]).
    pub verdicts: [u64; VERDICT_SLOTS],
}

impl Default for BatchCounts {
    fn default() -> Self {
        BatchCounts {
            rx: 0,
            tx: 0,
            drops: [0; DROP_REASONS],
            ip_id: 0,
            handoff_sent: 0,
            handoff_received: 0,
            policy_audited: 0,
            rx_bytes: 0,
            tx_bytes: 0,
            verdicts: [0; VERDICT_SLOTS],
        }
    }
}

impl BatchCounts {
    /// Counts one drop.
    #[inline]
    pub fn drop(&mut self, reason: DropReason) {
        self.drops[reason as usize] += 1;
    }
}

impl WorkerCounters {
    /// Adds a batch's counts. One writer per worker, so relaxed adds suffice.
    pub fn flush(&self, c: &mut BatchCounts) {
        if c.rx > 0 {
            self.rx.0.fetch_add(c.rx, Ordering::Relaxed);
            self.batches.0.fetch_add(1, Ordering::Relaxed);
        }
        if c.tx > 0 {
            self.tx.0.fetch_add(c.tx, Ordering::Relaxed);
        }
        for (g, n) in self
            .handoff
            .0
            .iter()
            .zip([c.handoff_sent, c.handoff_received])
        {
            if n > 0 {
                g.fetch_add(n, Ordering::Relaxed);
            }
        }
        if c.policy_audited > 0 {
            self.policy_audited
                .0
                .fetch_add(c.policy_audited, Ordering::Relaxed);
        }
        let bytes = [c.rx_bytes, c.tx_bytes];
        let added = self.drops.0.iter().zip(c.drops.iter());
        let added = added.chain(self.bytes.0.iter().zip(bytes.iter()));
        for (slot, n) in added.chain(self.verdicts.0.iter().zip(c.verdicts.iter())) {
            if *n > 0 {
                slot.fetch_add(*n, Ordering::Relaxed);
            }
        }
        *c = BatchCounts {
            ip_id: c.ip_id,
            ..BatchCounts::default()
        };
    }

    /// Records where the frames are (free, in fill rings, waiting for TX completion).
    #[inline]
    pub fn set_frames(&self, free: u64, in_fill: u64, in_tx: u64) {
        for (g, v) in self.frames.0.iter().zip([free, in_fill, in_tx]) {
            g.store(v, Ordering::Relaxed);
        }
    }

    /// Records the kernel's drop counts.
    pub fn set_kernel(&self, k: KernelDrops) {
        for (g, v) in self.kernel.0.iter().zip([
            k.rx_dropped,
            k.rx_ring_full,
            k.rx_fill_ring_empty,
            k.tx_invalid,
        ]) {
            g.store(v, Ordering::Relaxed);
        }
    }

    /// Records each socket's kernel drop counts, unless a reader holds them right now (then
    /// the next refresh does).
    pub fn set_sockets(&self, f: impl FnOnce(&mut Vec<SocketDrops>)) {
        if let Ok(mut v) = self.sockets.try_lock() {
            f(&mut v);
        }
    }

    /// Each socket's kernel drop counts, as last refreshed.
    pub fn socket_drops(&self) -> Vec<SocketDrops> {
        self.sockets.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self) -> CounterSnapshot {
        CounterSnapshot {
            rx: self.rx.0.load(Ordering::Relaxed),
            tx: self.tx.0.load(Ordering::Relaxed),
            batches: self.batches.0.load(Ordering::Relaxed),
            drops: DropReason::ALL
                .iter()
                .map(|r| (r.name(), self.drops.0[*r as usize].load(Ordering::Relaxed)))
                .collect(),
            frames: FrameGauges {
                free: self.frames.0[0].load(Ordering::Relaxed),
                in_fill: self.frames.0[1].load(Ordering::Relaxed),
                in_tx: self.frames.0[2].load(Ordering::Relaxed),
            },
            kernel: KernelDrops {
                rx_dropped: self.kernel.0[0].load(Ordering::Relaxed),
                rx_ring_full: self.kernel.0[1].load(Ordering::Relaxed),
                rx_fill_ring_empty: self.kernel.0[2].load(Ordering::Relaxed),
                tx_invalid: self.kernel.0[3].load(Ordering::Relaxed),
            },
            handoff: HandoffCounts {
                sent: self.handoff.0[0].load(Ordering::Relaxed),
                received: self.handoff.0[1].load(Ordering::Relaxed),
            },
            policy_audited: self.policy_audited.0.load(Ordering::Relaxed),
            rx_bytes: self.bytes.0[0].load(Ordering::Relaxed),
            tx_bytes: self.bytes.0[1].load(Ordering::Relaxed),
            policy_verdicts: PolicyVerdictCounts::from_slots(std::array::from_fn(|i| {
                self.verdicts.0[i].load(Ordering::Relaxed)
            })),
        }
    }
}

/// New flows' policy verdicts in one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct VerdictCounts {
    /// Allowed.
    pub allowed: u64,
    /// Denied (dropped).
    pub denied: u64,
    /// Denied but let through (audit mode).
    pub audit: u64,
}

/// New flows' policy verdicts, per direction judged (only directions under policy).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PolicyVerdictCounts {
    /// The sender's egress policy.
    pub egress: VerdictCounts,
    /// The receiver's ingress policy.
    pub ingress: VerdictCounts,
}

impl PolicyVerdictCounts {
    fn from_slots(v: [u64; VERDICT_SLOTS]) -> Self {
        let d = |o: usize| VerdictCounts {
            allowed: v[o],
            denied: v[o + 1],
            audit: v[o + 2],
        };
        PolicyVerdictCounts {
            egress: d(0),
            ingress: d(3),
        }
    }

    fn add(&mut self, o: &PolicyVerdictCounts) {
        for (a, b) in [
            (&mut self.egress, &o.egress),
            (&mut self.ingress, &o.ingress),
        ] {
            a.allowed += b.allowed;
            a.denied += b.denied;
            a.audit += b.audit;
        }
    }
}

/// Where a worker's UMEM frames are.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct FrameGauges {
    /// In the worker's free pool.
    pub free: u64,
    /// Given to the kernel in fill rings.
    pub in_fill: u64,
    /// On TX rings, waiting for completion.
    pub in_tx: u64,
}

/// Counters as reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CounterSnapshot {
    /// Frames received.
    pub rx: u64,
    /// Frames sent.
    pub tx: u64,
    /// Batches processed.
    pub batches: u64,
    /// Drops by reason name (every reason listed, zero or not).
    pub drops: std::collections::BTreeMap<&'static str, u64>,
    /// Where the UMEM frames are.
    pub frames: FrameGauges,
    /// Drops inside the kernel's AF_XDP code.
    pub kernel: KernelDrops,
    /// Frames moved between workers.
    pub handoff: HandoffCounts,
    /// Packets policy denied but let through: their endpoint is in policy audit mode (not
    /// drops).
    pub policy_audited: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Bytes handed to TX rings.
    pub tx_bytes: u64,
    /// New flows' policy verdicts, by direction.
    pub policy_verdicts: PolicyVerdictCounts,
}

impl CounterSnapshot {
    /// Adds another worker's counters.
    pub fn add(&mut self, o: &CounterSnapshot) {
        self.rx += o.rx;
        self.tx += o.tx;
        self.batches += o.batches;
        for (k, v) in &o.drops {
            *self.drops.entry(k).or_default() += v;
        }
        self.frames.free += o.frames.free;
        self.frames.in_fill += o.frames.in_fill;
        self.frames.in_tx += o.frames.in_tx;
        self.kernel.rx_dropped += o.kernel.rx_dropped;
        self.kernel.rx_ring_full += o.kernel.rx_ring_full;
        self.kernel.rx_fill_ring_empty += o.kernel.rx_fill_ring_empty;
        self.kernel.tx_invalid += o.kernel.tx_invalid;
        self.handoff.sent += o.handoff.sent;
        self.handoff.received += o.handoff.received;
        self.policy_audited += o.policy_audited;
        self.rx_bytes += o.rx_bytes;
        self.tx_bytes += o.tx_bytes;
        self.policy_verdicts.add(&o.policy_verdicts);
    }

    /// All drops.
    pub fn total_drops(&self) -> u64 {
        self.drops.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flush_accumulates_and_resets() {
        let w = WorkerCounters::default();
        let mut b = BatchCounts {
            rx: 3,
            tx: 2,
            ..Default::default()
        };
        b.drop(DropReason::TtlExceeded);
        b.handoff_sent = 4;
        b.handoff_received = 5;
        b.policy_audited = 6;
        b.rx_bytes = 300;
        b.tx_bytes = 200;
        b.verdicts[verdict_index(1, 1)] = 2;
        b.verdicts[verdict_index(0, 0)] = 1;
        w.flush(&mut b);
        assert_eq!((b.rx_bytes, b.verdicts), (0, [0; VERDICT_SLOTS]));
        assert_eq!(b.handoff_sent, 0);
        assert_eq!(b.rx, 0);
        let s = w.snapshot();
        assert_eq!((s.rx, s.tx, s.batches), (3, 2, 1));
        assert_eq!(s.drops["ttl_exceeded"], 1);
        assert_eq!(s.total_drops(), 1);
        assert_eq!(s.policy_audited, 6);
        assert_eq!(b.policy_audited, 0);
        assert_eq!((s.rx_bytes, s.tx_bytes), (300, 200));
        assert_eq!(s.policy_verdicts.ingress.denied, 2);
        assert_eq!(s.policy_verdicts.egress.allowed, 1);
        assert_eq!(s.policy_verdicts.ingress.allowed, 0);
        let mut sum = s.clone();
        sum.add(&s);
        assert_eq!((sum.rx_bytes, sum.policy_verdicts.ingress.denied), (600, 4));
        w.set_sockets(|v| {
            v.push(SocketDrops {
                ifname: "lxc1".into(),
                queue: 0,
                drops: KernelDrops {
                    rx_ring_full: 3,
                    ..Default::default()
                },
            })
        });
        assert_eq!(w.socket_drops()[0].drops.rx_ring_full, 3);
        let held = w.sockets.lock().unwrap();
        w.set_sockets(|v| v.clear());
        drop(held);
        assert_eq!(w.socket_drops().len(), 1, "a held lock skips the refresh");
        assert_eq!(
            s.handoff,
            HandoffCounts {
                sent: 4,
                received: 5
            }
        );
        assert_eq!(std::mem::align_of::<Padded<AtomicU64>>(), 64);
    }
}
