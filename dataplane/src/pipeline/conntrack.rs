//! Stage `conntrack`: every routed IPv4 packet (to a local pod or into the tunnel) is matched
//! against the connection-tracking table.
//!
//! - **Every IP protocol is tracked:** TCP, UDP and SCTP by ports, ICMP echo by identifier, every
//!   other protocol (GRE, ESP, IPIP, other ICMP messages) by addresses and protocol alone (ports
//!   0), so policy judges them all: an L3 rule allows them, a port rule never does.
//! - **ICMP errors are related, not free:** an error is looked up by the flow it quotes and
//!   passes (without policy, like a reply) only when that flow is tracked and the error goes to
//!   the quoted packet's sender; otherwise it is dropped as `icmp_unrelated`.
//! - **Every packet in a flow's original direction gets the current verdict,** as in Cilium's
//!   `bpf_lxc` (only replies and related packets skip policy): the verdict is cached in the
//!   entry with the tables' revision it was taken under, so a packet pays one compare while
//!   nothing changed, and revoking an allow cuts an established flow at the next snapshot
//!   (`policy_denied`; the entry stays, so an allow given back resumes it).
//! - The first packet of a flow gets its policy verdict first (the source's egress policy if it
//!   is a local pod, the destination's ingress policy if that is one), then an entry; a denied
//!   flow is dropped as `policy_denied` and gets no entry. A full table drops the new flow
//!   (`ct_full`); flows already tracked are never hurt.
//! - **ICMP is judged by type:** policy's port for an ICMP packet is its message type (Cilium's
//!   `icmps`), that of the packet judged: echo requests (8) and other informational messages
//!   in a flow's original direction; echo replies and errors matching a flow are replies or
//!   related and never judged. A flow's cached verdict is an echo request's: a packet of
//!   another type in the original direction (other ICMP messages share their addresses' flow;
//!   an unsolicited echo reply shares its identifier's) is judged on its own type every time,
//!   and caches nothing. A later fragment has no ICMP header: it takes its flow's last
//!   cached allow (taken on its first fragment, perhaps under an older snapshot: the datagram
//!   completes, and a revoked allow stops the next one at its first fragment); without one it
//!   is judged as an unknown type (only L3 rules allow it).
//! - **Audit mode** ([`crate::tables::PolicyAudit`]): a denial by the policy of an endpoint
//!   in audit mode lets the packet pass and counts it as `policy_audited`; its flow caches no
//!   allow, so each of its packets is judged (and counted) again.
//! - A later fragment is tracked with its datagram's ports (the `fragments` stage found them).
//! - The clock is read once per batch.
//! - TCP flags no stack sends are dropped and not tracked (`tcp_invalid_flags`).
//! - **A SYN reusing a closed connection's port is a new connection** (the kernel's conntrack
//!   takes it so, and Cilium judges a `CT_REOPENED` flow as a new one): a SYN without ACK from
//!   the originator of a closing or closed TCP flow removes its entry, and the packet is judged,
//!   tracked and recorded as a new flow's first ([`reopened`]).
//!
//! Keys carry a direction, as Cilium's tuples do: `egress` for flows a local pod opened,
//! `ingress` for flows that came through the tunnel. A reply is found by the reversed tuple:
//! from the tunnel, a reply to one of our egress flows; from a pod, a reply to a same-node
//! egress flow or to an ingress flow.

use vireo_conntrack::state::{other_next, tcp_first, tcp_flags_invalid, tcp_next, tcp_reopens};
use vireo_conntrack::table::{ICMP, TCP, UDP};
use vireo_conntrack::{Dir, Full, Handle, Key, NewEntry, State, Table};
use vireo_policy::rules::ip_proto::SCTP;

use vireo_policy::rules::ICMP_TYPE_UNKNOWN;

use super::{Batch, CtVerdict, Desc, Frames, Kind, Verdict};
use crate::counters::{BatchCounts, DropReason};
use crate::tables::{IfRole, Judged, Judgment, Tables};
use crate::wire::{is_icmp_error, quoted, Quoted, ETHERTYPE_IPV4, ETH_HLEN, IPV4_MIN_HLEN};

/// The conntrack table at one batch's time: every operation of a batch uses the same `now`.
#[derive(Clone, Copy)]
pub(super) struct Ct<'a> {
    table: &'a Table,
    now: u32,
}

impl<'a> Ct<'a> {
    /// The table at the time `now` (the batch's).
    #[inline]
    pub(super) fn new(table: &'a Table, now: u32) -> Self {
        Ct { table, now }
    }
    /// The live entry of `k`.
    #[inline]
    pub(super) fn lookup(&self, k: &Key) -> Option<Handle<'a>> {
        self.table.lookup_at(k, self.now)
    }
    /// Inserts `k` unless it is there ([`Table::insert_at`]).
    #[inline]
    pub(super) fn insert(&self, k: &Key, e: NewEntry) -> Result<(Handle<'a>, bool), Full> {
        self.table.insert_at(k, e, self.now)
    }
    /// Removes `k`'s entry.
    #[inline]
    pub(super) fn remove(&self, k: &Key) -> bool {
        self.table.remove(k)
    }
    /// The batch's time.
    #[inline]
    pub(super) fn now(&self) -> u32 {
        self.now
    }
}

/// ICMP echo request.
const ECHO_REQUEST: u16 = 8;

/// What policy matches the L4 of packet `d` (IPv4 header at `ip[0]`, its L4 identity read by
/// [`ports`], so an ICMP header is there unless it is a later fragment) on: `dport`; for ICMP
/// the message type ([`ICMP_TYPE_UNKNOWN`] for a later fragment).
#[inline]
pub(super) fn policy_l4(d: &Desc, ip: &[u8], dport: u16) -> u16 {
    if ip[9] != ICMP {
        return dport;
    }
    match (d.frag_ports, ip.get(IPV4_MIN_HLEN)) {
        (None, Some(t)) => u16::from(*t),
        _ => ICMP_TYPE_UNKNOWN,
    }
}

/// The packet `d` as policy judges it.
#[inline]
pub(super) fn judged(
    d: &Desc,
    src: (u32, u16),
    dst: (u32, u16),
    proto: u8,
    l4: u16,
    now: u32,
) -> Judged {
    Judged {
        in_slot: d.in_slot,
        src,
        src_id: d.src_identity,
        dst,
        proto,
        l4,
        now,
    }
}

/// A new flow's verdict (`d` marked when audited); true when it is denied.
#[inline]
pub(super) fn new_flow_denied(t: &Tables, d: &mut Desc, f: &Judged) -> bool {
    let (j, tally) = t.policy_judge_tallied(f, true);
    d.verdicts |= tally;
    match j {
        Judgment::Allowed => false,
        Judgment::Denied => true,
        Judgment::Audited => {
            d.audited = true;
            false
        }
    }
}

/// Whether a flow's cached verdict may stand for the packet `f`, and a verdict taken for it be
/// cached: not for ICMP other than echo requests (a later fragment reads the cache, but what
/// it is judged on when the cache is stale is not cached).
#[inline]
fn cacheable(f: &Judged) -> (bool, bool) {
    if f.proto != ICMP || f.l4 == ECHO_REQUEST {
        (true, true)
    } else {
        (f.l4 == ICMP_TYPE_UNKNOWN, false)
    }
}

pub(super) fn run<F: Frames>(batch: &mut Batch, frames: &mut F, t: &Tables, _c: &mut BatchCounts) {
    let Some(table) = t.ct.as_deref() else { return };
    let ct = Ct::new(table, batch.now());
    for d in batch.descs_mut() {
        if d.ct != CtVerdict::Untracked {
            continue; // a service flow (the `service` stage tracked it), or an ICMP answer
        }
        let routed = match d.verdict {
            Verdict::Tx { slot } => t
                .iface(slot)
                .is_some_and(|i| matches!(i.role, IfRole::Pod | IfRole::Host)),
            Verdict::Continue(Kind::Encap { .. }) => true,
            _ => false,
        };
        if !routed {
            continue;
        }
        let Some(buf) = frames.frame(d.addr, d.len) else {
            continue;
        };
        if u16::from_be_bytes([buf[12], buf[13]]) != ETHERTYPE_IPV4 {
            continue; // an ARP reply on its way back
        }
        match track(&ct, t, d, buf) {
            Ok(v) => d.ct = v,
            Err(r) => d.verdict = Verdict::Drop(r),
        }
    }
}

/// A packet's L4 identity: (ports, TCP flags); ports are 0 for a protocol without them. `None`
/// for an ICMP error, which belongs to the flow it quotes ([`quoted`]).
pub(super) fn l4(proto: u8, l4: &[u8]) -> Result<Option<(u16, u16, u8)>, DropReason> {
    let port = |o: usize| u16::from_be_bytes([l4[o], l4[o + 1]]);
    match proto {
        TCP => {
            if l4.len() < 20 {
                return Err(DropReason::TruncatedIp);
            }
            let flags = l4[13] & 0x3f;
            if tcp_flags_invalid(flags) {
                return Err(DropReason::TcpInvalidFlags);
            }
            Ok(Some((port(0), port(2), flags)))
        }
        UDP => {
            if l4.len() < 8 {
                return Err(DropReason::TruncatedIp);
            }
            Ok(Some((port(0), port(2), 0)))
        }
        SCTP => {
            if l4.len() < 12 {
                return Err(DropReason::TruncatedIp);
            }
            Ok(Some((port(0), port(2), 0)))
        }
        ICMP if l4.len() < 8 => Err(DropReason::TruncatedIp),
        // Echo request and reply, by identifier; errors belong to the flow they quote.
        ICMP if matches!(l4[0], 0 | 8) => Ok(Some((port(4), port(4), 0))),
        ICMP if is_icmp_error(l4[0]) => Ok(None),
        // Other ICMP messages and other protocols: by addresses and protocol.
        _ => Ok(Some((0, 0, 0))),
    }
}

/// The L4 identity of the packet `d` (IPv4 header at `ip[0]`): a later fragment's from its
/// first fragment (a TCP one as a plain ACK), others from their header ([`l4`]).
#[inline]
pub(super) fn ports(d: &Desc, ip: &[u8]) -> Result<Option<(u16, u16, u8)>, DropReason> {
    match d.frag_ports {
        Some((s, p)) => Ok(Some((s, p, if ip[9] == TCP { ACK } else { 0 }))),
        None => l4(ip[9], &ip[IPV4_MIN_HLEN..]),
    }
}

/// TCP's ACK flag.
const ACK: u8 = 0x10;

/// Whether a reply to a flow in state `s` is its first: the flow had seen none.
#[inline]
pub(super) fn first_reply(s: Option<State>) -> bool {
    matches!(s, Some(State::New | State::SynSent))
}

/// Whether a packet with `flags` in the original direction of the tracked flow `h` opens a new
/// TCP connection on the port of a closing or closed one ([`tcp_reopens`]): the old entry is
/// then let go and the packet taken as a new flow's first. The SYN flag is tested before the
/// entry's state is read: an established packet (ACK, no SYN) pays one compare, not a read.
#[inline]
pub(super) fn reopened(proto: u8, h: &Handle<'_>, flags: u8) -> bool {
    proto == TCP
        && flags & vireo_conntrack::state::tcp_flags::SYN != 0
        && h.state().is_some_and(|s| tcp_reopens(s, false, flags))
}

/// The state a packet moves its flow to.
#[inline]
pub(super) fn next_state(proto: u8, s: Option<State>, reply: bool, flags: u8) -> State {
    match (proto, s) {
        (TCP, Some(s)) => tcp_next(s, reply, flags),
        (TCP, None) => tcp_first(flags),
        (_, s) => other_next(s.unwrap_or(State::New), reply),
    }
}

/// Whether established flows are judged again. Always, except in a build for the benchmark
/// that measures what judging costs (`benches/rejudge-cost.sh` builds with
/// `--cfg vireo_no_rejudge` for its baseline).
pub(super) const REJUDGE: bool = cfg!(not(vireo_no_rejudge));

/// Whether the current policy denies a packet `f` in the original direction of the tracked
/// flow `h` (`d` marked when audited): the verdict cached in the entry while it was taken
/// under this snapshot's revision, else the policy's (then cached; see [`cacheable`]). A
/// denial is reported to the monitor when one listens.
#[inline(always)]
pub(super) fn denied_again(h: &Handle<'_>, t: &Tables, d: &mut Desc, f: &Judged) -> bool {
    let (read, _) = cacheable(f);
    // The common case, one load and one compare: allowed, and nothing changed since.
    !(read && h.allowed_at(t.revision)) && judge(h, t, d, f)
}

/// [`denied_again`] off the common path: a denial cached at this revision (reported again
/// when the monitor listens, judged again when an endpoint may be in audit mode), or a
/// verdict to take anew and cache.
#[cold]
#[inline(never)]
fn judge(h: &Handle<'_>, t: &Tables, d: &mut Desc, f: &Judged) -> bool {
    // A later ICMP fragment completes the datagram its first fragment was allowed in, under an
    // older snapshot too: the flow's last verdict was taken on that first fragment (or one
    // before it), and a revoked allow stops the next datagram at its first fragment.
    if f.proto == ICMP && f.l4 == ICMP_TYPE_UNKNOWN && h.policy().is_some_and(|p| p.allowed) {
        return false;
    }
    let (read, write) = cacheable(f);
    if read && h.policy_at(t.revision) == Some(false) && !t.monitor.is_on() && !t.audit.any() {
        return true;
    }
    let j = t.policy_judge(f, false);
    if write {
        // An audited flow caches no allow: its next packet is judged (and counted) again.
        h.set_policy(t.revision, j == Judgment::Allowed);
    }
    match j {
        Judgment::Allowed => false,
        Judgment::Denied => true,
        Judgment::Audited => {
            d.audited = true;
            false
        }
    }
}

/// An ICMP error (outer IPv4 header at `ip[0]`) about the packet `q`: related to the flow `q`
/// belongs to, in either direction, if that flow is tracked here and the error goes to `q`'s
/// sender; otherwise unrelated.
pub(super) fn related(ct: &Ct<'_>, ip: &[u8], q: &Quoted) -> Result<CtVerdict, DropReason> {
    let to = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    if to != q.src {
        return Err(DropReason::IcmpUnrelated);
    }
    let k = Key {
        src: q.src,
        dst: q.dst,
        sport: q.sport,
        dport: q.dport,
        proto: q.proto,
        dir: Dir::Egress,
    };
    for dir in [Dir::Egress, Dir::Ingress] {
        if ct.lookup(&Key { dir, ..k }).is_some() || ct.lookup(&k.reversed(dir)).is_some() {
            return Ok(CtVerdict::Related);
        }
    }
    Err(DropReason::IcmpUnrelated)
}

/// A packet in the original direction of the tracked flow `h`: judged again, then counted.
/// `None` when the handle went stale between lookup and update (the entry expired and its
/// slot was reused by another flow): the packet is then no packet of a known flow.
pub(super) fn known(
    h: &Handle<'_>,
    t: &Tables,
    d: &mut Desc,
    f: &Judged,
    flags: u8,
) -> Option<Result<CtVerdict, DropReason>> {
    let proto = f.proto;
    if REJUDGE && denied_again(h, t, d, f) {
        return Some(Err(DropReason::PolicyDenied));
    }
    h.try_update(next_state(proto, h.state(), false, flags), false, d.total())
        .then_some(Ok(CtVerdict::Established))
}

fn track(ct: &Ct<'_>, t: &Tables, d: &mut Desc, buf: &[u8]) -> Result<CtVerdict, DropReason> {
    let ip = &buf[ETH_HLEN..];
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let ip = &ip[..total];
    let proto = ip[9];
    let Some((sport, dport, flags)) = ports(d, ip)? else {
        return match quoted(ip) {
            Ok(Some(q)) => related(ct, ip, &q),
            _ => Err(DropReason::IcmpUnrelated),
        };
    };
    let word = |o: usize| u32::from_be_bytes([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]]);
    let dir = if d.from_tunnel {
        Dir::Ingress
    } else {
        Dir::Egress
    };
    let key = Key {
        src: word(12),
        dst: word(16),
        sport,
        dport,
        proto,
        dir,
    };
    let next = |s: Option<State>, reply: bool| next_state(proto, s, reply, flags);
    let (src, dst) = ((key.src, sport), (key.dst, dport));
    let f = judged(d, src, dst, proto, policy_l4(d, ip, dport), ct.now());
    if let Some(h) = ct.lookup(&key) {
        if reopened(proto, &h, flags) {
            ct.remove(&key); // judged and tracked anew below
        } else if let Some(v) = known(&h, t, d, &f, flags) {
            return v;
        }
    }
    let reverse: &[Dir] = if d.from_tunnel {
        &[Dir::Egress]
    } else {
        &[Dir::Egress, Dir::Ingress]
    };
    for rd in reverse {
        if let Some(h) = ct.lookup(&key.reversed(*rd)) {
            let s = h.state();
            d.first_reply = first_reply(s);
            h.update(next(s, true), true, d.total());
            return Ok(CtVerdict::Reply);
        }
    }
    // A new flow: policy first (the source's egress here, the destination's ingress if it is
    // ours); a denied flow gets no entry, so its next packet is judged again.
    if new_flow_denied(t, d, &f) {
        return Err(DropReason::PolicyDenied);
    }
    let first = if proto == TCP {
        tcp_first(flags)
    } else {
        State::New
    };
    let e = NewEntry {
        state: first,
        identity: d.src_identity,
        nat: None,
        bytes: d.total(),
    };
    match ct.insert(&key, e) {
        Ok((h, true)) => {
            // Cached only for what may stand for the flow's next packets (not an audit).
            if cacheable(&f).1 && !d.audited {
                h.set_policy(t.revision, true);
            }
            Ok(CtVerdict::New)
        }
        // Another worker created it a moment ago.
        Ok((h, false)) => {
            h.update(next(h.state(), false), false, d.total());
            Ok(CtVerdict::Established)
        }
        Err(Full) => Err(DropReason::CtFull),
    }
}
