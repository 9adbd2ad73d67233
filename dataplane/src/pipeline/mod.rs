//! The per-packet pipeline, as VPP-style graph nodes: each stage runs over a whole batch before
//! the next one starts, with no allocation, lock or syscall per packet.
//!
//! **This file lists the stages in order** (the `pipeline!` invocation below). A frame leaves the
//! pipeline with a verdict: transmit on an interface slot, or drop with a reason. The I/O layer
//! (`crate::worker`) turns verdicts into TX descriptors and recycled frames.

mod arp;
mod conntrack;
mod dns_learn;
mod dns_query;
mod flows;
mod fragments;
mod icmp;
mod ipv4_forward;
mod masquerade;
mod parse;
mod service;
mod snat;
mod vxlan_decap;
mod vxlan_encap;

use crate::counters::{BatchCounts, DropReason};
use crate::tables::Tables;

/// Frames per batch.
pub const BATCH: usize = 64;

/// Frames one multi-buffer packet may span: the kernel's MAX_SKB_FRAGS (17) fragments plus the
/// linear part. A longer chain is dropped (`multi_buffer_too_long`).
pub const MAX_FRAGS: usize = 18;
/// Continuation frames (all but the head) of a packet at most.
pub const MAX_CONTS: usize = MAX_FRAGS - 1;

/// The continuation frames `(addr, len)` of a multi-buffer packet, after its head, in order.
#[derive(Debug, Clone, Copy)]
pub struct Chain {
    n: u8,
    frames: [(u64, u32); MAX_CONTS],
}

impl Chain {
    /// No continuation.
    pub const EMPTY: Chain = Chain {
        n: 0,
        frames: [(0, 0); MAX_CONTS],
    };
    /// The continuation frames.
    #[inline]
    pub fn frames(&self) -> &[(u64, u32)] {
        &self.frames[..usize::from(self.n)]
    }
    /// Appends a frame; false when the chain is at [`MAX_CONTS`].
    #[inline]
    pub fn push(&mut self, addr: u64, len: u32) -> bool {
        match self.frames.get_mut(usize::from(self.n)) {
            Some(f) => {
                *f = (addr, len);
                self.n += 1;
                true
            }
            None => false,
        }
    }
    /// Empties it.
    #[inline]
    pub fn clear(&mut self) {
        self.n = 0;
    }
    /// Continuation frames.
    #[inline]
    pub fn len(&self) -> usize {
        usize::from(self.n)
    }
    /// True without continuations.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
    /// Bytes in the continuation frames.
    #[inline]
    pub fn bytes(&self) -> u32 {
        self.frames().iter().map(|f| f.1).sum()
    }
}

/// Access to frame memory by UMEM address. The AF_XDP UMEM implements it in the I/O layer; tests
/// and benchmarks use [`VecFrames`].
pub trait Frames {
    /// The `len` bytes at `addr`, or `None` when out of bounds.
    fn frame(&mut self, addr: u64, len: u32) -> Option<&mut [u8]>;
    /// Bytes free in front of `addr` within its frame (where outer headers can go).
    fn headroom(&self, addr: u64) -> usize;
    /// Bytes from `addr` to the end of its frame (how long a reply built in place may be).
    fn room(&self, addr: u64) -> usize;
}

/// What the parse stage found; tells later stages which frames are theirs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Not yet parsed.
    Raw,
    /// An ARP frame.
    Arp,
    /// An IPv4 packet whose header starts at this offset and passed validation.
    Ipv4 {
        /// Offset of the IPv4 header in the frame.
        l3: u16,
    },
    /// A VXLAN packet to our port, arrived on the uplink (outer IPv4 header at `l3`).
    Vxlan {
        /// Offset of the outer IPv4 header.
        l3: u16,
    },
    /// An IPv4 packet for a pod on another node, to be encapsulated towards `tunnel`.
    Encap {
        /// Underlay address of the destination node (host byte order).
        tunnel: u32,
    },
}

/// Where a frame goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Still travelling through the stages.
    Continue(Kind),
    /// Transmit on the interface in this slot.
    Tx {
        /// Output interface slot.
        slot: u16,
    },
    /// Drop, counted under a reason.
    Drop(DropReason),
}

/// What connection tracking made of a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtVerdict {
    /// Not looked at (not IPv4 routed traffic, or no table).
    Untracked,
    /// The first packet of a flow: its policy verdict was taken and an entry created.
    New,
    /// A packet of a known flow, in the originator's direction (judged again by the current
    /// policy, from the verdict cached in the entry while the policy is unchanged).
    Established,
    /// A packet of a known flow from the responder.
    Reply,
    /// An ICMP error about a known flow (translated like it), or one Vireo built: no policy,
    /// no entry.
    Related,
}

/// One frame of a batch.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    /// UMEM address of the frame's first byte.
    pub addr: u64,
    /// Length of the frame at `addr` (the head frame of a multi-buffer packet).
    pub len: u32,
    /// Bytes of a multi-buffer packet past its head frame, in the continuation frames the
    /// batch keeps for it ([`Batch::chain`]); 0 for a packet in one frame. Every stage works on
    /// the head's bytes (the headers are there) and checks lengths against [`Desc::total`].
    /// A stage that replaces the packet by one built in the head (an ICMP error, a reset)
    /// detaches the continuations ([`Desc::detach_chain`]): the head then goes alone.
    pub tail: u32,
    /// Continuation frames still attached (0: the head goes alone; the worker frees any
    /// continuation frames it received).
    pub frags: u8,
    /// Slot of the interface it arrived on.
    pub in_slot: u16,
    /// Security identity of the sender, once known (from its endpoint or the VNI).
    pub src_identity: u32,
    /// Arrived through the tunnel (decapsulated): never sent back into it.
    pub from_tunnel: bool,
    /// Conntrack's view of the packet, once the `service` or `conntrack` stage has seen it.
    pub ct: CtVerdict,
    /// Translated by the `service` stage, which also checked its source.
    pub nat: bool,
    /// What the sender sent, before the `service` stage translated it (source, source port,
    /// destination, destination port): what an ICMP error about it must quote.
    pub pre_nat: Option<vireo_conntrack::Nat>,
    /// A later IPv4 fragment: its datagram's (source, destination) ports, from the first
    /// fragment (the `fragments` stage).
    pub frag_ports: Option<(u16, u16)>,
    /// Policy denied it, but passed it: the endpoint whose policy denied it is in audit mode
    /// (counted as `policy_audited`).
    pub audited: bool,
    /// A new flow's policy verdicts, one bit per direction and verdict
    /// ([`crate::counters::verdict_index`]), counted after the pipeline.
    pub verdicts: u8,
    /// The first packet from a flow's responder (its entry had seen none): the `flows` stage
    /// records it.
    pub first_reply: bool,
    /// Where it goes.
    pub verdict: Verdict,
}

impl Desc {
    /// A freshly received frame.
    pub const fn new(addr: u64, len: u32, in_slot: u16) -> Self {
        Desc {
            addr,
            len,
            tail: 0,
            frags: 0,
            in_slot,
            src_identity: 0,
            from_tunnel: false,
            ct: CtVerdict::Untracked,
            nat: false,
            pre_nat: None,
            frag_ports: None,
            audited: false,
            verdicts: 0,
            first_reply: false,
            verdict: Verdict::Continue(Kind::Raw),
        }
    }

    /// The packet's length: the head frame and its continuations.
    #[inline]
    pub const fn total(&self) -> u32 {
        self.len + self.tail
    }

    /// The packet leaves as its head frame alone (it was rebuilt there): its continuation
    /// frames are no longer part of it.
    #[inline]
    pub fn detach_chain(&mut self) {
        self.tail = 0;
        self.frags = 0;
    }
}

/// A batch of frames, fixed capacity, reused by the worker forever.
#[derive(Debug, Clone)]
pub struct Batch {
    descs: [Desc; BATCH],
    /// The continuation frames of `descs[i]` (empty for a packet in one frame).
    chains: [Chain; BATCH],
    len: usize,
    /// The conntrack clock, read once as the batch enters the pipeline: every table operation
    /// of the batch (fragments, services, conntrack) uses this time.
    now: u32,
    /// The worker running it: whose flow ring its records go to.
    worker: u16,
    /// Packets this batch's worker has forwarded while tracing was on (`--sample N`).
    trace_seq: u32,
}

impl Default for Batch {
    fn default() -> Self {
        Batch {
            descs: [Desc::new(0, 0, 0); BATCH],
            chains: [Chain::EMPTY; BATCH],
            len: 0,
            now: 0,
            worker: 0,
            trace_seq: 0,
        }
    }
}

impl Batch {
    /// An empty batch of worker `id` (whose flow ring its records go to).
    pub fn for_worker(id: usize) -> Batch {
        Batch {
            worker: id as u16,
            ..Batch::default()
        }
    }
    /// Empties the batch.
    #[inline]
    pub fn clear(&mut self) {
        self.len = 0;
    }
    /// Appends a frame; false when full.
    #[inline]
    pub fn push(&mut self, d: Desc) -> bool {
        if self.len == BATCH {
            return false;
        }
        self.descs[self.len] = d;
        self.chains[self.len].clear();
        self.len += 1;
        true
    }
    /// Appends a multi-buffer packet: its head `d` (whose `tail` and `frags` are set from
    /// `chain`) and its continuation frames; false when full.
    #[inline]
    pub fn push_chain(&mut self, mut d: Desc, chain: &Chain) -> bool {
        if self.len == BATCH {
            return false;
        }
        d.tail = chain.bytes();
        d.frags = chain.len() as u8;
        self.descs[self.len] = d;
        self.chains[self.len] = *chain;
        self.len += 1;
        true
    }
    /// The continuation frames received with frame `i` (whether or not still attached).
    #[inline]
    pub fn chain(&self, i: usize) -> &[(u64, u32)] {
        self.chains.get(i).map_or(&[], Chain::frames)
    }
    /// Frames in the batch.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }
    /// True when empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The frames.
    #[inline]
    pub fn descs(&self) -> &[Desc] {
        &self.descs[..self.len]
    }
    /// The frames, mutable.
    #[inline]
    pub fn descs_mut(&mut self) -> &mut [Desc] {
        &mut self.descs[..self.len]
    }
    /// The batch's time on the conntrack clock (set by [`run`]).
    #[inline]
    pub(crate) fn now(&self) -> u32 {
        self.now
    }
}

/// Runs `$stage::run` for each stage in order and records the order in [`STAGES`].
macro_rules! pipeline {
    ($($stage:ident),* $(,)?) => {
        /// The stages, in the order every batch goes through them.
        pub const STAGES: &[&str] = &[$(stringify!($stage)),*];

        /// Runs a batch through every stage. Afterwards each frame's verdict is `Tx` or `Drop`.
        #[inline]
        pub fn run<F: Frames>(batch: &mut Batch, frames: &mut F, tables: &Tables, counts: &mut BatchCounts) {
            // One clock read per batch.
            batch.now = tables.ct.as_ref().map_or(0, |c| c.now());
            // Monitor events of this batch go to its worker's queue.
            crate::events::set_worker_ring(usize::from(batch.worker));
            // The FQDN cache's expiry reads the same time (a store only when it moved on).
            tables.fqdn.tick(batch.now);
            $( $stage::run(batch, frames, tables, counts); )*
            let monitor = tables.monitor.is_on();
            let record = tables.flows.is_on();
            let worker = usize::from(batch.worker);
            let mut clock = crate::flows::BatchClock::default();
            for d in batch.descs_mut() {
                counts.policy_audited += u64::from(d.audited);
                if d.verdicts != 0 {
                    for (i, n) in counts.verdicts.iter_mut().enumerate() {
                        *n += u64::from(d.verdicts >> i & 1);
                    }
                }
                match d.verdict {
                    Verdict::Drop(r) => {
                        counts.drop(r);
                        if record {
                            flows::dropped(tables, frames, worker, d, r, &mut clock);
                        }
                        // Policy drops were reported where they were judged, with their rule.
                        if monitor && r != DropReason::PolicyDenied {
                            if let Some(buf) = frames.frame(d.addr, d.len) {
                                let mut e = crate::events::DropEvent::from_frame(r, d.in_slot, buf);
                                e.src_identity = d.src_identity;
                                tables.monitor.push(e);
                            }
                        }
                    }
                    Verdict::Tx { .. } => {}
                    // A frame no stage claimed: every kind has a stage, so this is a bug; drop.
                    Verdict::Continue(_) => {
                        d.verdict = Verdict::Drop(DropReason::UnsupportedEthertype);
                        counts.drop(DropReason::UnsupportedEthertype);
                        if record {
                            flows::dropped(tables, frames, worker, d, DropReason::UnsupportedEthertype, &mut clock);
                        }
                    }
                }
            }
        }
    };
}

pipeline!(
    parse,        // Ethernet + IPv4 header validation; ARP and uplink VXLAN are set aside
    vxlan_decap,  // outer headers checked and stripped; the sender's identity from the VNI
    arp,          // answer pods' ARP requests for their gateway
    fragments,    // later IPv4 fragments get their datagram's ports from the first fragment
    service,      // service frontends: DNAT to a Maglev backend (conntrack wins); reverse NAT
    dns_query,    // `rules: dns`: pods' DNS queries for names no rule allows are answered REFUSED
    masquerade,   // pod -> world: SNAT to the node's address, out of the uplink; replies back
    ipv4_forward, // source check; local endpoint: deliver; pod on another node: to encap
    conntrack, // every flow tracked; original-direction packets judged (cached verdict); new ones get an entry
    dns_learn, // `toFQDNs`: DNS answers to pods teach their addresses (before the answer leaves)
    flows, // flow records (`vireo observe`): new flows, first replies, FIN/RST; traces (monitor)
    vxlan_encap, // outer Ethernet/IPv4/UDP/VXLAN in front (VNI = identity); PMTU
);

/// Frame memory backed by a plain buffer: for tests and benchmarks.
#[derive(Debug, Clone)]
pub struct VecFrames {
    buf: Vec<u8>,
    frame_size: usize,
}

impl VecFrames {
    /// `n` frames of `frame_size` bytes.
    pub fn new(n: usize, frame_size: usize) -> Self {
        VecFrames {
            buf: vec![0; n * frame_size],
            frame_size,
        }
    }
    /// Writes `data` at `addr`.
    pub fn write(&mut self, addr: u64, data: &[u8]) {
        let a = addr as usize;
        self.buf[a..a + data.len()].copy_from_slice(data);
    }
}

impl Frames for VecFrames {
    #[inline]
    fn frame(&mut self, addr: u64, len: u32) -> Option<&mut [u8]> {
        let a = usize::try_from(addr).ok()?;
        self.buf.get_mut(a..a.checked_add(len as usize)?)
    }
    #[inline]
    fn headroom(&self, addr: u64) -> usize {
        addr as usize % self.frame_size
    }
    #[inline]
    fn room(&self, addr: u64) -> usize {
        self.frame_size - addr as usize % self.frame_size
    }
}

/// Calls `f` on each frame still waiting for `kind`'s stage, with its bytes. A frame whose bytes
/// are out of bounds is dropped.
#[inline]
pub(crate) fn for_each_pending<F: Frames>(
    batch: &mut Batch,
    frames: &mut F,
    want: impl Fn(Kind) -> bool,
    mut f: impl FnMut(&mut Desc, &mut [u8]),
) {
    for d in batch.descs_mut() {
        let Verdict::Continue(k) = d.verdict else {
            continue;
        };
        if !want(k) {
            continue;
        }
        match frames.frame(d.addr, d.len) {
            Some(buf) => f(d, buf),
            None => d.verdict = Verdict::Drop(DropReason::TruncatedEthernet),
        }
    }
}

#[cfg(test)]
mod audit_tests;
#[cfg(test)]
mod dns_tests;
#[cfg(test)]
mod flows_tests;
#[cfg(test)]
mod host_tests;
#[cfg(test)]
mod icmp_policy_tests;
#[cfg(test)]
mod masquerade_tests;
#[cfg(test)]
mod multi_buffer_tests;
#[cfg(test)]
mod policy_tests;
#[cfg(test)]
mod review_tests;
#[cfg(test)]
mod service_tests;
#[cfg(test)]
mod tests;
