//! Stage `service`: kube-proxy's job. TCP and UDP to a service frontend (ClusterIP, NodePort,
//! external or LoadBalancer IP) are translated to a backend; the backends' replies are
//! translated back.
//!
//! - **New flow:** the service's Maglev table picks the backend from a hash of the 5-tuple
//!   that every node computes alike (sessionAffinity ClientIP: from the client's address, and
//!   the choice is remembered for the affinity timeout). The choice is recorded in conntrack
//!   twice: a `service` entry keyed by what the client sent and a `revnat` entry keyed by the
//!   backend's reply.
//! - **Known flow:** its conntrack entry decides, whatever the Maglev table says now, so an
//!   established connection keeps its backend when backends come and go (as long as the
//!   service's frontend exists: deleting the Service ends its flows). Terminating backends
//!   keep their flows and get no new ones. A UDP flow whose backend is gone, and a SYN
//!   reusing the client port of a closing or closed TCP connection, start afresh: a new flow
//!   with a backend chosen again.
//! - **Replies** from a backend are matched by their `revnat` entry and leave with the service
//!   address as their source.
//! - **From outside** (the uplink steers NodePorts, external and LoadBalancer IPs here): with
//!   externalTrafficPolicy Cluster the source becomes this node's address (so replies come
//!   back through this node), with Local only this node's backends serve and the client's
//!   address is kept. Replies to outside clients leave on the uplink towards the Ethernet
//!   address the client's packets came from.
//! - **No backend:** the client gets ICMP port unreachable from the service address; counted
//!   as `no_backend`. A LoadBalancer client outside `loadBalancerSourceRanges` is dropped
//!   (`lb_source_range`).
//!
//! - **Hairpin:** a client that its Service sends to itself (a pod, or the node's stack to a
//!   hostNetwork backend) is source-NAT'd to the service loopback address
//!   ([`SERVICE_LOOPBACK`], 169.254.42.1), since Linux drops a packet with its own address as
//!   source; the reply to that address is translated back.
//! - **From the node's stack** (the host pair): identity `host`; its replies come back to the
//!   node's address through the host pair.
//!
//! Everything this stage translated carries `nat` (its source was checked here) and its
//! conntrack verdict, so `ipv4_forward` routes it and `conntrack` leaves it alone.

use smoltcp::wire::Icmpv4DstUnreachable;
use vireo_conntrack::table::{mix64 as mix, ICMP, TCP, UDP};
use vireo_conntrack::{Dir, Full, Key, Nat, NewEntry, State};
use vireo_lb::{FrontendKind, Service};
use vireo_policy::Identity;

use super::conntrack::{
    denied_again, first_reply, judged, new_flow_denied, next_state, ports, reopened, Ct, REJUDGE,
};
use super::{Batch, CtVerdict, Desc, Frames, Kind, Verdict};
use crate::counters::{BatchCounts, DropReason};
use crate::tables::{IfRole, Tables, SERVICE_LOOPBACK};
use crate::wire::{
    icmp_unreachable, ipv4_dec_ttl, ipv4_fragment, ipv4_rewrite, ipv4_set_addrs, may_answer,
    quoted, set_macs, translate_icmp_error, ETH_HLEN,
};

/// Source ports for source-NAT to the node's address: above Linux's default ephemeral range,
/// so they never meet the host's own connections.
const SNAT_PORTS: (u16, u16) = (61000, 65535);
/// How long a learnt client Ethernet address lives without traffic.
const NEIGH_SECS: u32 = 600;

/// Length of an ICMP error quoting 28 bytes, with its Ethernet header.
const REJECT_LEN: u32 = (ETH_HLEN + 20 + 8 + 28) as u32;

pub(super) fn run<F: Frames>(batch: &mut Batch, frames: &mut F, t: &Tables, c: &mut BatchCounts) {
    let Some(table) = t.ct.as_deref() else { return };
    if t.services.services().is_empty() {
        return;
    }
    let ct = &Ct::new(table, batch.now());
    for d in batch.descs_mut() {
        if !matches!(d.verdict, Verdict::Continue(Kind::Ipv4 { .. })) {
            continue;
        }
        let Some(buf) = frames.frame(d.addr, d.len) else {
            d.verdict = Verdict::Drop(DropReason::TruncatedEthernet);
            continue;
        };
        match service(d, buf, t, ct) {
            Outcome::Pass => {}
            Outcome::Verdict(v) => d.verdict = v,
            Outcome::NoBackend => {
                // The reply may be longer than the request: build it in the frame's room.
                let len = d.len.max(REJECT_LEN);
                let fits = frames.room(d.addr) >= len as usize;
                d.verdict = match frames.frame(d.addr, len) {
                    Some(buf) if fits && may_answer(&buf[ETH_HLEN..]) => reject(d, buf),
                    _ => Verdict::Drop(DropReason::NoBackend),
                };
                if matches!(d.verdict, Verdict::Tx { .. }) {
                    c.drop(DropReason::NoBackend); // answered, and counted
                }
            }
        }
    }
}

/// What the stage made of a frame.
enum Outcome {
    /// Not a service packet: the next stages decide.
    Pass,
    /// Translated (or dropped).
    Verdict(Verdict),
    /// For a service without a backend: to be answered with ICMP.
    NoBackend,
}

/// The packet's addresses, ports and TCP flags.
#[derive(Clone, Copy)]
struct Tuple {
    src: u32,
    dst: u32,
    sport: u16,
    dport: u16,
    proto: u8,
}

impl Tuple {
    fn key(&self, dir: Dir) -> Key {
        Key {
            src: self.src,
            dst: self.dst,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            dir,
        }
    }
}

/// Where a frame came from.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Pod,
    Uplink,
    Tunnel,
    /// The node's own stack, through the host pair.
    Host,
}

/// The flow's hash for Maglev: a fixed function of the 5-tuple, so every node picks the same
/// backend for the same flow.
#[inline]
fn flow_hash(p: &Tuple) -> u64 {
    let a = u64::from(p.src) << 32 | u64::from(p.dst);
    let b = u64::from(p.sport) << 24 | u64::from(p.dport) << 8 | u64::from(p.proto);
    mix(a ^ mix(b))
}

fn service(d: &mut Desc, buf: &mut [u8], t: &Tables, ct: &Ct<'_>) -> Outcome {
    match translate(d, buf, t, ct) {
        Some(Verdict::Drop(DropReason::NoBackend)) => Outcome::NoBackend,
        Some(v) => Outcome::Verdict(v),
        None => Outcome::Pass,
    }
}

/// `None`: not a service packet. A service without a backend gives `Drop(NoBackend)`, which
/// [`service`] turns into an answer.
fn translate(d: &mut Desc, buf: &mut [u8], t: &Tables, ct: &Ct<'_>) -> Option<Verdict> {
    let Verdict::Continue(Kind::Ipv4 { l3 }) = d.verdict else {
        return None;
    };
    let l3 = usize::from(l3);
    let ip = &buf[l3..];
    let proto = ip[9];
    if proto == ICMP {
        // A later fragment's payload is no ICMP header.
        if ipv4_fragment(ip).1 != 0 {
            return None;
        }
        return icmp_error(d, buf, t, ct);
    }
    // Only TCP and UDP (a later fragment with its datagram's ports).
    if !matches!(proto, TCP | UDP) {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let (sport, dport, flags) = match ports(d, &ip[..total]) {
        Ok(Some(p)) => p,
        Ok(None) => return None,
        Err(r) => return Some(Verdict::Drop(r)),
    };
    let word = |o: usize| u32::from_be_bytes([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]]);
    let p = Tuple {
        src: word(12),
        dst: word(16),
        sport,
        dport,
        proto,
    };
    let origin = origin(d, t)?;
    if t.services.is_backend(p.src, p.sport, p.proto) {
        if let Some(h) = ct.lookup(&p.key(Dir::RevNat)) {
            if let Some(nat) = h.nat() {
                check_source(d, t, &p, origin)?;
                // The client's side of the flow: the packet this reply answers.
                let svc = ct.lookup(&reply_key(&nat, proto, Dir::Service));
                let before = svc.and_then(|s| s.state());
                d.first_reply = first_reply(before);
                let next = next_state(proto, before, true, flags);
                if let Some(s) = svc {
                    s.update(next, true, d.total());
                }
                h.update(next, true, d.total());
                return Some(translated(d, buf, t, ct, nat, CtVerdict::Reply));
            }
        }
    }
    if origin == Origin::Tunnel {
        return None; // translated on the client's node already
    }
    // Only packets to a frontend can belong to a service flow: everything else is done with
    // one hash lookup, without touching conntrack.
    let (kind, svc) = t.services.lookup(p.dst, p.dport, p.proto)?;
    if let Some(h) = ct.lookup(&p.key(Dir::Service)) {
        // The flow starts afresh, with a backend chosen anew (the same while it lives, by
        // Maglev's hash of the tuple), for a UDP client whose backend is gone (as Cilium
        // re-selects) and for a SYN reusing the port of a closed TCP connection (as the
        // kernel's conntrack, under kube-proxy, takes it for a new connection). An open TCP
        // connection keeps its entry: it is the backend's.
        let afresh = |n: &Nat| {
            (proto == UDP && !svc.has_backend(n.dst, n.dport)) || reopened(proto, &h, flags)
        };
        if let Some(nat) = h.nat().filter(|n| afresh(n)) {
            ct.remove(&p.key(Dir::Service));
            ct.remove(&revnat_key(&nat, proto));
        } else if let Some(nat) = h.nat() {
            check_source(d, t, &p, origin)?;
            // Policy on every packet of the flow, against its backend (cached per revision).
            let backend = (nat.dst, nat.dport);
            let f = judged(d, (p.src, p.sport), backend, proto, nat.dport, ct.now());
            if REJUDGE && denied_again(&h, t, d, &f) {
                return Some(Verdict::Drop(DropReason::PolicyDenied));
            }
            let next = next_state(proto, h.state(), false, flags);
            h.update(next, false, d.total());
            let rev = revnat_key(&nat, proto);
            match ct.lookup(&rev) {
                Some(r) => r.update(next, false, d.total()),
                // Evicted under pressure: put it back, replies need it.
                None => {
                    let _ = ct.insert(&rev, revnat_entry(&p, next, d));
                }
            }
            if origin == Origin::Uplink {
                learn_neighbour(ct, p.src, buf);
            }
            return Some(translated(d, buf, t, ct, nat, CtVerdict::Established));
        }
    }
    check_source(d, t, &p, origin)?;
    if !svc.source_allowed(kind, p.src) {
        return Some(Verdict::Drop(DropReason::LbSourceRange));
    }
    let local_only = svc.spec.external_local && kind != FrontendKind::ClusterIp;
    let Some((backend, bport)) = choose(ct, svc, &p, local_only) else {
        return Some(Verdict::Drop(DropReason::NoBackend));
    };
    // Policy, as Cilium applies it to service flows: against the chosen backend (the client's
    // egress, and the backend's ingress if it is ours).
    let f = judged(
        d,
        (p.src, p.sport),
        (backend, bport),
        proto,
        bport,
        ct.now(),
    );
    if new_flow_denied(t, d, &f) {
        return Some(Verdict::Drop(DropReason::PolicyDenied));
    }
    // Outside clients of an externalTrafficPolicy Cluster frontend are source-NAT'd to this
    // node, so the backend (perhaps on another node) answers through it.
    let snat = origin == Origin::Uplink && !local_only;
    let first = next_state(proto, None, false, flags);
    let mut nat = Nat {
        src: p.src,
        sport: p.sport,
        dst: backend,
        dport: bport,
    };
    if backend == p.src && !snat {
        // Hairpin: a pod (or the host) reaching itself through a Service. Linux drops a
        // packet from one of its own addresses, so the source becomes the service loopback
        // address (as in Cilium); the revnat entry turns the reply back.
        nat.src = u32::from(SERVICE_LOOPBACK);
    }
    if snat {
        let node = u32::from(t.local?.ip);
        let base = nat;
        let key = |port: u16| {
            revnat_key(
                &Nat {
                    src: node,
                    sport: port,
                    ..base
                },
                proto,
            )
        };
        let h = flow_hash(&p) as u32;
        match super::snat::allocate(ct, SNAT_PORTS, h, key, revnat_entry(&p, first, d)) {
            Ok(port) => {
                nat.src = node;
                nat.sport = port;
            }
            Err(r) => return Some(Verdict::Drop(r)),
        }
    }
    // Whether this packet made the revnat entry (a racing worker may have made the same one:
    // then it is that worker's, and never removed here).
    let made_revnat = snat
        || match ct.insert(&revnat_key(&nat, proto), revnat_entry(&p, first, d)) {
            Ok((_, made)) => made,
            Err(Full) => return Some(Verdict::Drop(DropReason::CtFull)),
        };
    let entry = NewEntry {
        state: first,
        identity: d.src_identity,
        nat: Some(nat),
        bytes: d.total(),
    };
    let verdict = match ct.insert(&p.key(Dir::Service), entry) {
        Ok((h, true)) => {
            h.set_policy(t.revision, true);
            CtVerdict::New
        }
        // Another worker took this flow a moment ago: follow its choice.
        Ok((h, false)) => {
            if made_revnat {
                ct.remove(&revnat_key(&nat, proto));
            }
            nat = h.nat()?;
            CtVerdict::Established
        }
        Err(Full) => {
            if made_revnat {
                ct.remove(&revnat_key(&nat, proto));
            }
            return Some(Verdict::Drop(DropReason::CtFull));
        }
    };
    if origin == Origin::Uplink {
        learn_neighbour(ct, p.src, buf);
    }
    Some(translated(d, buf, t, ct, nat, verdict))
}

/// An ICMP error about a service flow, translated like that flow and routed to its other end:
/// from the backend's side (quoting what the backend received), through the flow's `revnat`
/// entry back to the client, with the service address in the quote and, when the backend
/// itself sent it, as its source; from the client's side (quoting a reply it received from the
/// service address), through the `service` entry to the backend. `None`: not about a service
/// flow (the `conntrack` stage judges it).
fn icmp_error(d: &mut Desc, buf: &mut [u8], t: &Tables, ct: &Ct<'_>) -> Option<Verdict> {
    let ip = &buf[ETH_HLEN..];
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let q = quoted(&ip[..total]).ok()??;
    if !matches!(q.proto, TCP | UDP) {
        return None;
    }
    let word = |o: usize| u32::from_be_bytes([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]]);
    let (from, to) = (word(12), word(16));
    if to != q.src {
        return None; // not for the quoted packet's sender: unrelated
    }
    let origin = origin(d, t)?;
    let answer = |dir: Dir| Key {
        src: q.dst,
        dst: q.src,
        sport: q.dport,
        dport: q.sport,
        proto: q.proto,
        dir,
    };
    // The error's own source must be the sender's (anti-spoofing), as for any packet.
    let p = Tuple {
        src: from,
        dst: to,
        sport: 0,
        dport: 0,
        proto: ICMP,
    };
    let nat = if t.services.is_backend(q.dst, q.dport, q.proto) {
        // From the backend's side: the flow's revnat entry (service address → client).
        ct.lookup(&answer(Dir::RevNat))?.nat()?
    } else if origin != Origin::Tunnel && t.services.lookup(q.src, q.sport, q.proto).is_some() {
        // From the client's side, about a reply from the service address: the service entry
        // (client → backend). A frontend address is no host: without that flow the error has
        // nowhere to go.
        match ct.lookup(&answer(Dir::Service)).and_then(|h| h.nat()) {
            Some(nat) => nat,
            None => return Some(Verdict::Drop(DropReason::IcmpUnrelated)),
        }
    } else {
        return None;
    };
    check_source(d, t, &p, origin)?;
    if d.tail > 0 {
        // Its ICMP checksum is recomputed over the message, which must be in one frame.
        return Some(Verdict::Drop(DropReason::IcmpErrorMultiBuffer));
    }
    // Either way the entry translates the quoted packet's answer, so the quote becomes
    // `nat.dst → nat.src` (what the error's receiver sent), the error goes to `nat.dst`, and
    // comes from `nat.src` when the quoted packet's receiver itself sent it (a router's address
    // is left).
    let ipm = &mut buf[ETH_HLEN..ETH_HLEN + total];
    let new_src = (from == q.dst).then_some(nat.src);
    translate_icmp_error(
        ipm,
        &q,
        (nat.dst, nat.dport),
        (nat.src, nat.sport),
        new_src,
        Some(nat.dst),
    );
    d.nat = true;
    d.ct = CtVerdict::Related;
    Some(deliver(buf, t, ct, nat.dst))
}

/// Where a frame came from: a pod of this node, the uplink, or the tunnel.
fn origin(d: &Desc, t: &Tables) -> Option<Origin> {
    if d.from_tunnel {
        return Some(Origin::Tunnel);
    }
    Some(match t.iface(d.in_slot)?.role {
        IfRole::Pod => Origin::Pod,
        IfRole::Uplink => Origin::Uplink,
        IfRole::Host => Origin::Host,
    })
}

/// A pod must send from its own address; outside clients are `world`. `None` when the
/// source is forged: the frame is left for `ipv4_forward`, which drops it as `invalid_source`.
fn check_source(d: &mut Desc, t: &Tables, p: &Tuple, origin: Origin) -> Option<()> {
    match origin {
        Origin::Pod => {
            let ep = t.endpoint(p.src).filter(|ep| ep.slot == d.in_slot)?;
            d.src_identity = ep.identity;
        }
        // Outside clients are Cilium's reserved `world`.
        Origin::Uplink => d.src_identity = Identity::WORLD.0,
        // The node's stack sends from the node's address (its routes to vireo_host say so).
        Origin::Host if t.is_local_host(p.src) => d.src_identity = Identity::HOST.0,
        Origin::Host => return None,
        Origin::Tunnel => {}
    }
    Some(())
}

/// The backend for a new flow, honouring session affinity.
fn choose(ct: &Ct<'_>, svc: &Service, p: &Tuple, local_only: bool) -> Option<(u32, u16)> {
    let Some(timeout) = svc.spec.affinity_timeout else {
        let b = svc.select(flow_hash(p), local_only)?;
        return Some((u32::from(b.ip), b.port));
    };
    let key = Key {
        src: p.src,
        dst: p.dst,
        sport: 0,
        dport: p.dport,
        proto: p.proto,
        dir: Dir::Affinity,
    };
    if let Some(h) = ct.lookup(&key) {
        match h.nat() {
            Some(n) if svc.takes_new_flows(n.dst, n.dport, local_only) => {
                h.refresh(timeout);
                return Some((n.dst, n.dport));
            }
            // Its backend is gone or terminating: choose again.
            _ => {
                ct.remove(&key);
            }
        }
    }
    let b = svc.select(mix(u64::from(p.src) ^ 0xa1f1_7e00), local_only)?;
    let chosen = (u32::from(b.ip), b.port);
    let e = NewEntry {
        state: State::New,
        identity: 0,
        nat: Some(Nat {
            src: 0,
            sport: 0,
            dst: chosen.0,
            dport: chosen.1,
        }),
        bytes: 0,
    };
    if let Ok((h, _)) = ct.insert(&key, e) {
        h.refresh(timeout);
    }
    Some(chosen)
}

/// The key, in direction `dir`, of a packet answering one translated by `nat`.
fn reply_key(nat: &Nat, proto: u8, dir: Dir) -> Key {
    Key {
        src: nat.dst,
        dst: nat.src,
        sport: nat.dport,
        dport: nat.sport,
        proto,
        dir,
    }
}

/// The `revnat` key of a flow translated by `nat`: the backend's reply.
fn revnat_key(nat: &Nat, proto: u8) -> Key {
    reply_key(nat, proto, Dir::RevNat)
}

/// The `revnat` entry of a flow: replies leave from the service address to the client.
fn revnat_entry(p: &Tuple, state: State, d: &Desc) -> NewEntry {
    NewEntry {
        state,
        identity: d.src_identity,
        nat: Some(Nat {
            src: p.dst,
            sport: p.dport,
            dst: p.src,
            dport: p.sport,
        }),
        bytes: 0,
    }
}

/// Remembers the Ethernet address an outside client's packets came from, to answer it.
fn learn_neighbour(ct: &Ct<'_>, ip: u32, buf: &[u8]) {
    let mac = [buf[6], buf[7], buf[8], buf[9], buf[10], buf[11]];
    let nat = Nat {
        src: u32::from_be_bytes([mac[0], mac[1], mac[2], mac[3]]),
        sport: u16::from_be_bytes([mac[4], mac[5]]),
        dst: 0,
        dport: 0,
    };
    let key = neigh_key(ip);
    if let Some(h) = ct.lookup(&key) {
        if h.nat() == Some(nat) {
            h.refresh(NEIGH_SECS);
            return;
        }
        ct.remove(&key);
    }
    let e = NewEntry {
        state: State::New,
        identity: 0,
        nat: Some(nat),
        bytes: 0,
    };
    if let Ok((h, _)) = ct.insert(&key, e) {
        h.refresh(NEIGH_SECS);
    }
}

fn neigh_key(ip: u32) -> Key {
    Key {
        src: ip,
        dst: 0,
        sport: 0,
        dport: 0,
        proto: 0,
        dir: Dir::Neigh,
    }
}

/// Applies `nat` to the packet and routes it: to a pod or the tunnel through `ipv4_forward`,
/// or, for a client outside the cluster, out of the uplink.
fn translated(
    d: &mut Desc,
    buf: &mut [u8],
    t: &Tables,
    ct: &Ct<'_>,
    nat: Nat,
    verdict: CtVerdict,
) -> Verdict {
    let ip = &buf[ETH_HLEN..];
    let word = |o: usize| u32::from_be_bytes([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]]);
    let half = |o: usize| u16::from_be_bytes([ip[o], ip[o + 1]]);
    let (sport, dport) = d.frag_ports.unwrap_or_else(|| (half(20), half(22)));
    d.pre_nat = Some(Nat {
        src: word(12),
        sport,
        dst: word(16),
        dport,
    });
    if d.frag_ports.is_some() {
        // A later fragment: no L4 header to rewrite (its checksum, in the first fragment,
        // covers the whole datagram and was patched there).
        ipv4_set_addrs(&mut buf[ETH_HLEN..], nat.src, nat.dst);
    } else {
        ipv4_rewrite(&mut buf[ETH_HLEN..], nat.src, nat.sport, nat.dst, nat.dport);
    }
    d.nat = true;
    d.ct = verdict;
    deliver(buf, t, ct, nat.dst)
}

/// Routes a translated packet to `dst`: to a pod or the tunnel through `ipv4_forward`, or, for
/// a client outside the cluster, out of the uplink towards the Ethernet address it was last
/// seen behind.
fn deliver(buf: &mut [u8], t: &Tables, ct: &Ct<'_>, dst: u32) -> Verdict {
    let inside = t.endpoint(dst).is_some()
        || t.is_local_host(dst)
        || t.ipcache.lookup(dst).is_some_and(|e| e.tunnel.is_some());
    if inside {
        return Verdict::Continue(Kind::Ipv4 {
            l3: ETH_HLEN as u16,
        });
    }
    let Some(local) = t.local else {
        return Verdict::Drop(DropReason::UnknownDestination);
    };
    let Some(mac) = ct.lookup(&neigh_key(dst)).and_then(|h| h.nat()) else {
        return Verdict::Drop(DropReason::NoNeighbor);
    };
    let m = mac.src.to_be_bytes();
    let p = mac.sport.to_be_bytes();
    if ipv4_dec_ttl(&mut buf[ETH_HLEN..]) <= 1 {
        return Verdict::Drop(DropReason::TtlExceeded);
    }
    set_macs(
        buf,
        &[m[0], m[1], m[2], m[3], p[0], p[1]],
        &local.uplink_mac,
    );
    Verdict::Tx {
        slot: local.uplink_slot,
    }
}

/// Answers the client with ICMP port unreachable from the service address, back out of the
/// interface it came in on.
fn reject(d: &mut Desc, buf: &mut [u8]) -> Verdict {
    let vip = [buf[30], buf[31], buf[32], buf[33]];
    let (dst, src) = (
        [buf[6], buf[7], buf[8], buf[9], buf[10], buf[11]],
        [buf[0], buf[1], buf[2], buf[3], buf[4], buf[5]],
    );
    match icmp_unreachable(buf, vip, Icmpv4DstUnreachable::PortUnreachable, 0) {
        Some(len) => {
            set_macs(buf, &dst, &src);
            d.len = len as u32;
            // The reply is all in the head: a multi-buffer request's continuations go.
            d.detach_chain();
            d.nat = true;
            d.ct = CtVerdict::Related;
            Verdict::Tx { slot: d.in_slot }
        }
        None => Verdict::Drop(DropReason::NoBackend),
    }
}
