//! Stage `masquerade`: pods' traffic to the world leaves source-NATed to the node's address
//! (Cilium's BPF masquerading), and its replies come back to the pod.
//!
//! - **Which traffic:** from a pod of this node (its own address: anything else is left for
//!   `ipv4_forward`'s `invalid_source`), to a destination that is no pod CIDR of the cluster,
//!   no node's address, no local endpoint and nothing the ipcache places behind a tunnel (the
//!   ipcache says `world`), and that the `service` stage did not translate. With masquerade
//!   off (`Tables::masq` is `None`) such traffic stays an unknown destination.
//! - **Policy:** a new flow is judged by the pod's egress policy against the destination's
//!   identity (`world`, or the CIDR identity a `toCIDR` rule gave it); every later packet in
//!   the original direction is judged again (the verdict cached in the entry). Replies and
//!   related ICMP errors skip policy, as everywhere.
//! - **Translation:** TCP and UDP get a source port, ICMP echo requests an identifier, from
//!   the configured range ([`super::snat`], shared with the services' source NAT: a port is
//!   taken only while no live entry holds it for that peer, 32 candidates, then
//!   `snat_no_port`). The flow is tracked twice, as services are: an `egress` entry keyed by
//!   what the pod sent (its NAT record: the node's address and port) and a `revnat` entry keyed
//!   by the world's reply (its NAT record: back to the pod). TTL is decremented (time exceeded
//!   is answered from the pod's gateway), and the packet leaves on the uplink towards the
//!   default route's next hop (`no_neighbor` until the kernel resolved it).
//! - **Non-masquerade CIDRs:** the same path without translation (tracked and policed; the
//!   underlay routes the pods' addresses back, as Cilium's native routing).
//! - **Replies** from the uplink to the node's address (TCP/UDP with their destination port in
//!   the range, ICMP echo replies with their identifier in it, ICMP errors quoting a packet the
//!   node sent from a port in it: the XDP program steers exactly these) are translated back
//!   through the `revnat` entry and handed to `ipv4_forward` as replies, to the pod. Without a
//!   live entry (never made, expired, or the pod gone) they are dropped as `masq_no_entry` and
//!   never reach a pod. ICMP errors about a masqueraded flow (port unreachable, fragmentation
//!   needed, time exceeded) go to the pod with the quoted packet translated back; a pod's own
//!   ICMP error about a reply it got is translated the other way.
//! - **TCP:** states move on both entries together (SYN, established, FIN and RST lifetimes as
//!   for any flow); once expired, an entry's port is free for the next flow. A pod's SYN
//!   reusing the source port of a closing or closed connection is a new flow (both entries
//!   made again, judged as new), on the same node port while that is free.
//! - **Other protocols** (SCTP, GRE, ESP, other ICMP messages) are not translated: Cilium
//!   punts them to the kernel's stack, which Vireo's pods do not go through, so they are
//!   dropped as `masq_unsupported_proto` (to a non-masquerade CIDR they leave untranslated).
//! - **Fragments:** a pod's fragmented datagram is translated whole (later fragments take
//!   their first fragment's ports, `fragments` stage; only their addresses change). Later
//!   fragments of a reply carry no ports, so the XDP program cannot tell them from the host's
//!   own: they stay in the kernel, and a fragmented reply from the world does not reach the pod.

use vireo_conntrack::table::{mix64 as mix, ICMP, TCP, UDP};
use vireo_conntrack::{Dir, Full, Key, Nat, NewEntry};
use vireo_policy::Identity;

use super::conntrack::{
    denied_again, judged, new_flow_denied, next_state, policy_l4, ports, reopened, Ct, REJUDGE,
};
use super::icmp::{answer, Answer};
use super::{Batch, CtVerdict, Desc, Frames, Kind, Verdict};
use crate::counters::{BatchCounts, DropReason};
use crate::tables::{IfRole, LocalNode, Masquerade, Tables};
use crate::wire::{
    icmp_echo_rewrite, ipv4_dec_ttl, ipv4_rewrite, ipv4_set_addrs, is_host, is_icmp_error, quoted,
    set_macs, translate_icmp_error, ICMP_TIME_EXCEEDED, IPV4_MIN_HLEN,
};

const ECHO_REPLY: u8 = 0;
const ECHO_REQUEST: u8 = 8;

/// The answer to a pod's packet whose TTL runs out here.
const TIME_EXCEEDED: Answer = Answer {
    typ: ICMP_TIME_EXCEEDED,
    code: 0,
    rest: 0,
    reason: DropReason::TtlExceeded,
};

/// What the stage made of a frame.
enum Out {
    /// Not masquerade traffic: the next stages decide.
    Pass,
    /// Sent, handed on translated, or dropped.
    Verdict(Verdict),
    /// Its TTL runs out here: to be answered.
    TtlExceeded,
}

fn drop(r: DropReason) -> Out {
    Out::Verdict(Verdict::Drop(r))
}

pub(super) fn run<F: Frames>(batch: &mut Batch, frames: &mut F, t: &Tables, c: &mut BatchCounts) {
    let (Some(m), Some(table), Some(local)) = (t.masq.as_deref(), t.ct.as_deref(), t.local) else {
        return;
    };
    let ct = &Ct::new(table, batch.now());
    for d in batch.descs_mut() {
        let Verdict::Continue(Kind::Ipv4 { l3 }) = d.verdict else {
            continue;
        };
        if d.nat || d.from_tunnel {
            continue; // a service flow, or from another node: never the world's
        }
        let Some(role) = t.iface(d.in_slot).map(|i| i.role) else {
            continue;
        };
        let Some(buf) = frames.frame(d.addr, d.len) else {
            d.verdict = Verdict::Drop(DropReason::TruncatedEthernet);
            continue;
        };
        let l3 = usize::from(l3);
        let out = if role == IfRole::Pod {
            egress(d, buf, l3, t, m, &local, ct)
        } else if role == IfRole::Uplink {
            reply(d, buf, l3, t, m, &local, ct)
        } else {
            Out::Pass
        };
        match out {
            Out::Pass => {}
            Out::Verdict(v) => d.verdict = v,
            Out::TtlExceeded => d.verdict = answer(d, frames, t, c, TIME_EXCEEDED),
        }
    }
}

/// Whether a pod's packet to `dst` goes to the world: no pod CIDR, node, endpoint or tunnel.
#[inline]
fn is_world(t: &Tables, m: &Masquerade, local: &LocalNode, dst: u32) -> bool {
    if t.endpoint(dst).is_some() || dst == u32::from(local.ip) {
        return false;
    }
    if !is_host(dst) || m.in_cluster(dst) {
        return false;
    }
    t.ipcache
        .lookup(dst)
        .is_none_or(|e| e.tunnel.is_none() && e.identity == Identity::WORLD)
}

/// The hash a new flow's source port is chosen from.
#[inline]
pub(super) fn port_hash(k: &Key) -> u32 {
    let a = u64::from(k.src) << 32 | u64::from(k.dst);
    let b = u64::from(k.sport) << 24 | u64::from(k.dport) << 8 | u64::from(k.proto);
    mix(a ^ mix(b ^ 0x6d61_7371)) as u32
}

/// The `revnat` key of a flow whose egress NAT record is `nat` (the world's reply).
#[inline]
fn rev_key(nat: &Nat, proto: u8) -> Key {
    Key {
        src: nat.dst,
        dst: nat.src,
        sport: nat.dport,
        dport: nat.sport,
        proto,
        dir: Dir::RevNat,
    }
}

/// The `revnat` entry of the pod's flow `k`: replies go back to the pod.
fn rev_entry(k: &Key, state: vireo_conntrack::State, identity: u32) -> NewEntry {
    NewEntry {
        state,
        identity,
        nat: Some(Nat {
            src: k.dst,
            sport: k.dport,
            dst: k.src,
            dport: k.sport,
        }),
        bytes: 0,
    }
}

/// A pod's packet: to the world (translated unless exempt), or not this stage's.
fn egress(
    d: &mut Desc,
    buf: &mut [u8],
    l3: usize,
    t: &Tables,
    m: &Masquerade,
    local: &LocalNode,
    ct: &Ct<'_>,
) -> Out {
    let ip = &buf[l3..];
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let word = |o: usize| u32::from_be_bytes([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]]);
    let (src, dst, proto, ttl) = (word(12), word(16), ip[9], ip[8]);
    if !is_world(t, m, local, dst) {
        return Out::Pass;
    }
    let Some(ep) = t.endpoint(src).filter(|e| e.slot == d.in_slot) else {
        return Out::Pass; // forged: `ipv4_forward` drops it as invalid_source
    };
    d.src_identity = ep.identity;
    let exempt = m.exempt(dst);
    let later = d.frag_ports.is_some();
    let (sport, dport, flags) = match ports(d, &ip[..total]) {
        Ok(Some(p)) => p,
        Ok(None) => return pod_icmp_error(d, buf, l3, total, m, local, ct),
        Err(r) => return drop(r),
    };
    let echo = proto == ICMP && (later || ip[IPV4_MIN_HLEN] == ECHO_REQUEST);
    if !(exempt || matches!(proto, TCP | UDP) || echo) {
        return drop(DropReason::MasqUnsupported);
    }
    let Some(next_hop) = m.next_hop_mac else {
        return drop(DropReason::NoNeighbor);
    };
    let key = Key {
        src,
        dst,
        sport,
        dport,
        proto,
        dir: Dir::Egress,
    };
    let l4 = policy_l4(d, &ip[..total], dport);
    let f = judged(d, (src, sport), (dst, dport), proto, l4, ct.now());
    let found = ct.lookup(&key);
    let nat = match found {
        // A known flow, translated as it is to be (masquerade or not), and not a new
        // connection on a closed one's port.
        Some(h) if h.nat().is_some() != exempt && !reopened(proto, &h, flags) => {
            if REJUDGE && denied_again(&h, t, d, &f) {
                return drop(DropReason::PolicyDenied);
            }
            if ttl <= 1 {
                return Out::TtlExceeded;
            }
            let next = next_state(proto, h.state(), false, flags);
            h.update(next, false, d.total());
            let nat = h.nat();
            if let Some(n) = nat {
                let rk = rev_key(&n, proto);
                match ct.lookup(&rk) {
                    Some(r) => r.update(next, false, 0),
                    // Evicted under pressure: put it back, replies need it.
                    None => {
                        let _ = ct.insert(&rk, rev_entry(&key, next, d.src_identity));
                    }
                }
            }
            d.ct = CtVerdict::Established;
            nat
        }
        stale => {
            // A flow tracked the other way (the non-masquerade CIDRs changed), or a SYN reusing
            // a closed connection's port: afresh (the port is allocated again from the same
            // hash of the tuple, so the world sees the same one while it is free).
            if let Some(h) = stale {
                if let Some(n) = h.nat() {
                    ct.remove(&rev_key(&n, proto));
                }
                ct.remove(&key);
            }
            if new_flow_denied(t, d, &f) {
                return drop(DropReason::PolicyDenied);
            }
            if ttl <= 1 {
                return Out::TtlExceeded;
            }
            match new_flow(d, t, m, local, ct, &key, flags, exempt, echo) {
                Ok(n) => n,
                Err(r) => return drop(r),
            }
        }
    };
    let ipm = &mut buf[l3..];
    ipv4_dec_ttl(ipm);
    if let Some(n) = nat {
        if later {
            ipv4_set_addrs(ipm, n.src, n.dst);
        } else if proto == ICMP {
            icmp_echo_rewrite(ipm, n.src, n.dst, n.sport);
        } else {
            ipv4_rewrite(ipm, n.src, n.sport, n.dst, n.dport);
        }
        d.nat = true;
    }
    set_macs(buf, &next_hop, &local.uplink_mac);
    Out::Verdict(Verdict::Tx {
        slot: local.uplink_slot,
    })
}

/// A new flow to the world: a port (unless exempt) and its entries. Its NAT record.
#[allow(clippy::too_many_arguments)]
fn new_flow(
    d: &mut Desc,
    t: &Tables,
    m: &Masquerade,
    local: &LocalNode,
    ct: &Ct<'_>,
    key: &Key,
    flags: u8,
    exempt: bool,
    echo: bool,
) -> Result<Option<Nat>, DropReason> {
    let first = next_state(key.proto, None, false, flags);
    let nat = if exempt {
        None
    } else {
        let node = u32::from(local.ip);
        let (dst, dport, proto) = (key.dst, key.dport, key.proto);
        // The world's reply: an echo reply carries our identifier as both "ports".
        let rk = |port: u16| Key {
            src: dst,
            dst: node,
            sport: if echo { port } else { dport },
            dport: port,
            proto,
            dir: Dir::RevNat,
        };
        let entry = rev_entry(key, first, d.src_identity);
        let port = super::snat::allocate(ct, m.ports, port_hash(key), rk, entry)?;
        Some(Nat {
            src: node,
            sport: port,
            dst,
            dport: if echo { port } else { dport },
        })
    };
    let entry = NewEntry {
        state: first,
        identity: d.src_identity,
        nat,
        bytes: d.total(),
    };
    let undo = |n: Option<Nat>| {
        if let Some(n) = n {
            ct.remove(&rev_key(&n, key.proto));
        }
    };
    match ct.insert(key, entry) {
        Ok((h, true)) => {
            h.set_policy(t.revision, true);
            d.ct = CtVerdict::New;
            Ok(nat)
        }
        // Another worker took this flow a moment ago: follow its choice.
        Ok((h, false)) => {
            undo(nat);
            d.ct = CtVerdict::Established;
            Ok(h.nat())
        }
        Err(Full) => {
            undo(nat);
            Err(DropReason::CtFull)
        }
    }
}

/// A pod's ICMP error about a reply it got from the world: translated like the flow (the
/// quote back to what the world sent, the source to the node), out of the uplink.
fn pod_icmp_error(
    d: &mut Desc,
    buf: &mut [u8],
    l3: usize,
    total: usize,
    m: &Masquerade,
    local: &LocalNode,
    ct: &Ct<'_>,
) -> Out {
    let ip = &buf[l3..l3 + total];
    let Ok(Some(q)) = quoted(ip) else {
        return drop(DropReason::IcmpUnrelated);
    };
    if d.tail > 0 {
        // Its ICMP checksum is recomputed over the message, which must be in one frame.
        return drop(DropReason::IcmpErrorMultiBuffer);
    }

    let to = u32::from_be_bytes([ip[16], ip[17], ip[18], ip[19]]);
    if to != q.src || ip[8] <= 1 {
        return drop(DropReason::IcmpUnrelated);
    }
    // The pod's flow, as the pod opened it.
    let k = Key {
        src: q.dst,
        dst: q.src,
        sport: q.dport,
        dport: q.sport,
        proto: q.proto,
        dir: Dir::Egress,
    };
    let Some(h) = ct.lookup(&k) else {
        return drop(DropReason::IcmpUnrelated);
    };
    let Some(next_hop) = m.next_hop_mac else {
        return drop(DropReason::NoNeighbor);
    };
    let ipm = &mut buf[l3..l3 + total];
    if let Some(n) = h.nat() {
        translate_icmp_error(
            ipm,
            &q,
            (q.src, q.sport),
            (n.src, n.sport),
            Some(n.src),
            None,
        );
        d.nat = true;
    }
    ipv4_dec_ttl(ipm);
    d.ct = CtVerdict::Related;
    set_macs(buf, &next_hop, &local.uplink_mac);
    Out::Verdict(Verdict::Tx {
        slot: local.uplink_slot,
    })
}

/// A frame from the uplink: a reply to a masqueraded flow (to its pod), one in the range with
/// no entry (dropped), or not this stage's.
fn reply(
    d: &mut Desc,
    buf: &mut [u8],
    l3: usize,
    t: &Tables,
    m: &Masquerade,
    local: &LocalNode,
    ct: &Ct<'_>,
) -> Out {
    let ip = &buf[l3..];
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let word = |o: usize| u32::from_be_bytes([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]]);
    let node = u32::from(local.ip);
    if word(16) != node {
        return Out::Pass;
    }
    let (src, proto) = (word(12), ip[9]);
    let later = d.frag_ports.is_some();
    let (sport, dport, flags) = match proto {
        TCP | UDP => match ports(d, &ip[..total]) {
            Ok(Some(p)) => p,
            Ok(None) => return Out::Pass,
            Err(r) => return drop(r),
        },
        ICMP => match d.frag_ports {
            Some((s, p)) => (s, p, 0),
            None if total < IPV4_MIN_HLEN + 8 => return Out::Pass,
            None => match ip[IPV4_MIN_HLEN] {
                ECHO_REPLY => {
                    let id = u16::from_be_bytes([ip[IPV4_MIN_HLEN + 4], ip[IPV4_MIN_HLEN + 5]]);
                    (id, id, 0)
                }
                ty if is_icmp_error(ty) => return world_icmp_error(d, buf, l3, total, t, m, ct),
                _ => return Out::Pass,
            },
        },
        _ => return Out::Pass,
    };
    if !m.in_range(dport) {
        return Out::Pass;
    }
    let key = Key {
        src,
        dst: node,
        sport,
        dport,
        proto,
        dir: Dir::RevNat,
    };
    let Some((h, nat)) = ct
        .lookup(&key)
        .and_then(|h| h.nat().map(|n| (h, n)))
        .filter(|(_, n)| t.endpoint(n.dst).is_some())
    else {
        return drop(DropReason::MasqNoEntry);
    };
    // The pod's side of the flow must be alive and translated to this very port.
    let fwd = Key {
        src: nat.dst,
        dst: nat.src,
        sport: nat.dport,
        dport: nat.sport,
        proto,
        dir: Dir::Egress,
    };
    let Some(f) = ct
        .lookup(&fwd)
        .filter(|f| f.nat().is_some_and(|n| n.src == node && n.sport == dport))
    else {
        return drop(DropReason::MasqNoEntry);
    };
    d.first_reply = super::conntrack::first_reply(f.state());
    let next = next_state(proto, f.state(), true, flags);
    f.update(next, true, d.total());
    h.update(next, true, 0);
    let ipm = &mut buf[l3..];
    if later {
        ipv4_set_addrs(ipm, nat.src, nat.dst);
    } else if proto == ICMP {
        icmp_echo_rewrite(ipm, nat.src, nat.dst, nat.dport);
    } else {
        ipv4_rewrite(ipm, nat.src, nat.sport, nat.dst, nat.dport);
    }
    d.src_identity = Identity::WORLD.0;
    d.nat = true;
    d.ct = CtVerdict::Reply;
    Out::Verdict(Verdict::Continue(Kind::Ipv4 { l3: l3 as u16 }))
}

/// An ICMP error from the world to the node's address quoting a packet the node sent from a
/// port in the range: to the pod whose flow it is about, the quote translated back.
fn world_icmp_error(
    d: &mut Desc,
    buf: &mut [u8],
    l3: usize,
    total: usize,
    t: &Tables,
    m: &Masquerade,
    ct: &Ct<'_>,
) -> Out {
    let node = u32::from_be_bytes([buf[l3 + 16], buf[l3 + 17], buf[l3 + 18], buf[l3 + 19]]);
    let q = match quoted(&buf[l3..l3 + total]) {
        Ok(Some(q)) if q.src == node && m.in_range(q.sport) => q,
        _ => return Out::Pass,
    };
    let key = Key {
        src: q.dst,
        dst: q.src,
        sport: q.dport,
        dport: q.sport,
        proto: q.proto,
        dir: Dir::RevNat,
    };
    let Some(nat) = ct
        .lookup(&key)
        .and_then(|h| h.nat())
        .filter(|n| t.endpoint(n.dst).is_some())
    else {
        return drop(DropReason::MasqNoEntry);
    };
    if d.tail > 0 {
        // Its ICMP checksum is recomputed over the message, which must be in one frame.
        return drop(DropReason::IcmpErrorMultiBuffer);
    }
    translate_icmp_error(
        &mut buf[l3..l3 + total],
        &q,
        (nat.dst, nat.dport),
        (nat.src, nat.sport),
        None,
        Some(nat.dst),
    );
    d.src_identity = Identity::WORLD.0;
    d.nat = true;
    d.ct = CtVerdict::Related;
    Out::Verdict(Verdict::Continue(Kind::Ipv4 { l3: l3 as u16 }))
}
