//! Policies compiled for the fast path: per endpoint identity, a verdict table keyed by
//! (direction, remote identity) holding port ranges, so a new flow's verdict is one hash lookup
//! and a scan of a few entries.
//!
//! Addresses outside the cluster get identities too, as in Cilium: every block a CIDR rule
//! names (nets and their excepts) becomes a node-local *CIDR identity* (from
//! [`CIDR_IDENTITY_BASE`]); an address takes the identity of the most specific block holding
//! it, or `world`. A CIDR rule then selects the CIDR identities inside its block and outside its
//! excepts, and everything is identity-based.
//!
//! [`Compiler`] keeps the inputs and recomputes only what a change touches: a changed identity
//! (labels) recomputes its own table and the tables whose rules select it, a changed policy the
//! tables of the identities it selects. Each table is built whole and then swapped in, so an
//! endpoint never passes through a default-allow state while its policy is updated.
//!
//! Selectors are matched through an index of identities by label: a selector with an `In`
//! requirement is tried only on the identities carrying one of its values, and each endpoint
//! identity keeps the keys of the policies selecting it, so a change costs what it touches, not
//! policies × identities.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::sync::Arc;

use ipnet::Ipv4Net;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::engine::{identity_matches, is_world as engine_is_world, requirements, Verdict};
use crate::fqdn::{any_matches, FqdnSelector};
use crate::identity::{Identity, Labels, CIDR_IDENTITY_BASE};
use crate::ipcache::{IpCache, IpCacheEntry};
use crate::ports::PortName;
use crate::rules::{
    Action, CidrScope, Direction, Op, Origin, Peer, Policy, PortRange, Rule, Selector,
};

mod compiler;
#[cfg(test)]
mod tests;

pub use compiler::{reserved_labels, Compiler};

/// One compiled rule entry: ports and what they get.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    ports: PortRange,
    action: Action,
    /// The rule it came from.
    rule: Arc<Origin>,
    /// The rule's `rules: dns` (an allow rule's): DNS queries on these ports must ask for a
    /// name these select.
    dns: Option<Arc<[FqdnSelector]>>,
}

/// One compiled `toFQDNs` entry: the peer is an address outside the cluster that the endpoint
/// learned under a name one of `sels` selects.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FqdnEntry {
    sels: Arc<[FqdnSelector]>,
    entry: Entry,
}

/// Whether the endpoint knows a peer's address under a name a selector selects (for `toFQDNs`
/// entries): what the fast path's FQDN cache answers.
pub type Known<'k> = &'k dyn Fn(&FqdnSelector) -> bool;

/// A peer known by no DNS name.
pub const NO_NAMES: Known<'static> = &|_| false;

/// The name the endpoint judged gives its port of IP protocol and number (its container port's
/// name), for named-port entries: asked only when its table has some, for ingress.
pub type PortNameOf<'n> = &'n dyn Fn(u8, u16) -> Option<PortName>;

/// An endpoint whose ports have no names.
pub const NO_PORT_NAMES: PortNameOf<'static> = &|_, _| None;

/// Index of a direction.
fn di(d: Direction) -> usize {
    match d {
        Direction::Ingress => 0,
        Direction::Egress => 1,
    }
}

/// The compiled policy of one endpoint identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointPolicy {
    enforced: [bool; 2],
    /// By (key class + direction, identity): class 0 is the peer's own identity; classes
    /// [`NODE_ADDR`] and [`OTHER_ADDR`] hold the entries of CIDR rules that select
    /// in-cluster addresses (nodes', others'), by the CIDR identity of the address's block
    /// (world: in no listed block).
    by_peer: FxHashMap<(u8, u32), Vec<Entry>>,
    /// Entries whose peers are everyone (identities not known yet included).
    any: [Vec<Entry>; 2],
    /// Some CIDR rule of the direction selects in-cluster addresses (node or other).
    by_addr: [[bool; 2]; 2],
    /// `toFQDNs` entries: they apply to world and CIDR identities, by the names the endpoint
    /// learned the address under.
    fqdn: [Vec<FqdnEntry>; 2],
    /// The `toFQDNs` selectors of its egress (deduplicated): the names whose DNS answers the
    /// fast path learns for the endpoint.
    learn: Arc<[FqdnSelector]>,
    /// Some egress entry carries `rules: dns`: the endpoint's DNS queries are filtered.
    has_dns: bool,
    /// Some entry of the direction covers a named port.
    named: [bool; 2],
}

/// Key class of the entries selecting a node's address by block.
const NODE_ADDR: u8 = 2;
/// Key class of the entries selecting another in-cluster address (a pod's) by block.
const OTHER_ADDR: u8 = 4;

/// A fast-path verdict: the verdict and the deciding rule (`None`: a default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup<'a> {
    /// The verdict.
    pub verdict: Verdict,
    /// The deciding rule; `None` for default deny or allow.
    pub rule: Option<&'a Arc<Origin>>,
}

impl EndpointPolicy {
    /// The verdict for `peer` in direction `d` on `proto`/`port`.
    #[inline]
    pub fn lookup(&self, d: Direction, peer: u32, proto: u8, port: u16) -> Lookup<'_> {
        self.lookup_keys(di(d), &[(0, peer)], (proto, port, None), NO_NAMES)
    }

    /// The entries of direction `i` for a peer that is every one of `keys`, then the everyone
    /// entries, then the `toFQDNs` entries that apply through a name it is known by (`known`;
    /// only for a peer outside the cluster, the first key).
    #[inline]
    fn entries_for<'a, 'k>(
        &'a self,
        i: usize,
        keys: &'k [(u8, u32)],
        known: Known<'k>,
    ) -> impl Iterator<Item = &'a Entry> + use<'a, 'k> {
        let specific = keys
            .iter()
            .filter_map(move |(class, id)| self.by_peer.get(&(class + i as u8, *id)))
            .flatten();
        let world = keys
            .first()
            .is_some_and(|(_, id)| engine_is_world(Identity(*id)));
        let fqdn: &[FqdnEntry] = if world { &self.fqdn[i] } else { &[] };
        specific.chain(&self.any[i]).chain(
            fqdn.iter()
                .filter(move |f| f.sels.iter().any(known))
                .map(|f| &f.entry),
        )
    }

    /// Whether in-cluster addresses of class `class` (a node's, another's) are selected by
    /// some CIDR rule of direction `i`.
    #[inline]
    fn selects_addresses(&self, i: usize, class: u8) -> bool {
        self.by_addr[i][usize::from(class == OTHER_ADDR)]
    }

    /// The verdict in direction `i` for a peer that is every one of `keys` ((key class,
    /// identity)), on `proto`/`port` that the endpoint calls `port_name`: a deny of any beats
    /// the allows of all.
    #[inline]
    fn lookup_keys(
        &self,
        i: usize,
        keys: &[(u8, u32)],
        (proto, port, port_name): (u8, u16, Option<PortName>),
        known: Known<'_>,
    ) -> Lookup<'_> {
        let mut allow = None;
        for e in self.entries_for(i, keys, known) {
            if !e.ports.covers_named(proto, port, port_name) {
                continue;
            }
            match e.action {
                Action::Deny => {
                    return Lookup {
                        verdict: Verdict::Denied,
                        rule: Some(&e.rule),
                    }
                }
                Action::Allow => allow = allow.or(Some(&e.rule)),
            }
        }
        match allow {
            Some(r) => Lookup {
                verdict: Verdict::Allowed,
                rule: Some(r),
            },
            None => Lookup {
                verdict: if self.enforced[i] {
                    Verdict::Denied
                } else {
                    Verdict::Allowed
                },
                rule: None,
            },
        }
    }

    /// Whether default deny is in force for `d`.
    pub fn enforced(&self, d: Direction) -> bool {
        self.enforced[di(d)]
    }

    /// Whether a DNS query for `qname` to the peer `keys` on `proto`/`port` (egress) may go
    /// on: [`crate::engine::dns_query_allowed`] compiled (`None`: a name no selector matches).
    fn query(
        &self,
        keys: &[(u8, u32)],
        proto: u8,
        port: u16,
        qname: Option<&str>,
        known: Known<'_>,
    ) -> bool {
        if !self.has_dns {
            return true;
        }
        let mut filtered = false;
        for e in self.entries_for(di(Direction::Egress), keys, known) {
            if e.action != Action::Allow || !e.ports.covers_named(proto, port, None) {
                continue;
            }
            match &e.dns {
                None => return true,
                Some(sels) if qname.is_some_and(|q| any_matches(sels, q)) => return true,
                Some(_) => filtered = true,
            }
        }
        !filtered
    }

    /// Whether the endpoint's DNS queries are filtered (some egress rule has `rules: dns`).
    #[inline]
    pub fn has_dns(&self) -> bool {
        self.has_dns
    }

    /// The `toFQDNs` selectors of its egress: the names the fast path learns addresses of from
    /// the DNS answers the endpoint receives. Empty: nothing to learn.
    #[inline]
    pub fn fqdn_selectors(&self) -> &[FqdnSelector] {
        &self.learn
    }

    /// Entries in the table (for the operator and benchmarks).
    pub fn entries(&self) -> usize {
        self.by_peer.values().map(Vec::len).sum::<usize>()
            + self.any.iter().map(Vec::len).sum::<usize>()
            + self.fqdn.iter().map(Vec::len).sum::<usize>()
    }
}

/// What the fast path reads: compiled tables by endpoint identity, CIDR identities, and the
/// rules' origins.
#[derive(Debug, Clone, Default)]
pub struct PolicyTables {
    tables: FxHashMap<u32, Arc<EndpointPolicy>>,
    /// The local host may reach every local endpoint unless a deny rule says otherwise
    /// (Cilium's `allow-localhost: always`, its default on Kubernetes, so that the kubelet's
    /// probes work under default deny).
    allow_localhost: bool,
    /// CIDR blocks → CIDR identity, longest prefix first (the ipcache's LPM).
    cidrs: Arc<IpCache>,
    /// The Kubernetes API server's addresses (host order): a peer at one of them is also
    /// [`Identity::KUBE_APISERVER`].
    kube_apiserver: Arc<FxHashSet<u32>>,
}

impl PolicyTables {
    /// The table of endpoint identity `id`; `None`: no policy selects it (allow all).
    #[inline]
    pub fn get(&self, id: u32) -> Option<&EndpointPolicy> {
        self.tables.get(&id).map(Arc::as_ref)
    }

    /// The verdict for an endpoint of identity `subject`, for a peer known by its identity
    /// alone (no CIDR rule selects it by address; it is not the API server).
    #[inline]
    pub fn lookup(
        &self,
        subject: u32,
        d: Direction,
        peer: u32,
        proto: u8,
        port: u16,
    ) -> Lookup<'_> {
        self.lookup_at(subject, d, peer, None, proto, port, NO_NAMES, NO_PORT_NAMES)
    }

    /// The verdict for an endpoint of identity `subject`, for a peer of identity `peer` at
    /// address `ip` (host order): CIDR rules that select in-cluster addresses (Kubernetes
    /// `ipBlock`, `policy-cidr-match-mode: nodes`) see a pod's or a node's address, and an API
    /// server address is also [`Identity::KUBE_APISERVER`]. One hash probe per identity the
    /// peer is; a longest-prefix match only when the table has such CIDR rules. `known`: the
    /// names the endpoint knows the peer's address under, for `toFQDNs` entries (asked only
    /// for a peer outside the cluster, when such entries exist). `port_name`: the endpoint's
    /// names for its ports, for named-port entries (asked only when the table has some).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub fn lookup_at(
        &self,
        subject: u32,
        d: Direction,
        peer: u32,
        ip: Option<u32>,
        proto: u8,
        port: u16,
        known: Known<'_>,
        port_name: PortNameOf<'_>,
    ) -> Lookup<'_> {
        match self.get(subject) {
            Some(t) => {
                let i = di(d);
                let (keys, n) = self.keys(t, i, peer, ip);
                let name = if t.named[i] {
                    port_name(proto, port)
                } else {
                    None
                };
                let l = t.lookup_keys(i, &keys[..n], (proto, port, name), known);
                // Only a default deny gives way: an explicit deny rule still holds.
                if self.allow_localhost
                    && l.rule.is_none()
                    && d == Direction::Ingress
                    && peer == Identity::HOST.0
                {
                    return Lookup {
                        verdict: Verdict::Allowed,
                        rule: None,
                    };
                }
                l
            }
            None => Lookup {
                verdict: Verdict::Allowed,
                rule: None,
            },
        }
    }

    /// The lookup keys of a peer of identity `peer` at `ip` in direction `i` of table `t`
    /// ((key class, identity), how many): its own identity, the block of its address when CIDR
    /// rules select in-cluster addresses, the API server's identity at one of its addresses.
    #[inline]
    fn keys(
        &self,
        t: &EndpointPolicy,
        i: usize,
        peer: u32,
        ip: Option<u32>,
    ) -> ([(u8, u32); 3], usize) {
        let mut keys = [(0u8, peer); 3];
        let mut n = 1;
        if let Some(ip) = ip {
            let class = if peer == Identity::HOST.0 || peer == Identity::REMOTE_NODE.0 {
                NODE_ADDR
            } else {
                OTHER_ADDR
            };
            if !engine_is_world(Identity(peer)) && t.selects_addresses(i, class) {
                let block = self
                    .cidrs
                    .lookup(ip)
                    .map_or(Identity::WORLD.0, |e| e.identity.0);
                keys[n] = (class, block);
                n += 1;
            }
            if !self.kube_apiserver.is_empty() && self.kube_apiserver.contains(&ip) {
                keys[n] = (0, Identity::KUBE_APISERVER.0);
                n += 1;
            }
        }
        (keys, n)
    }

    /// Whether a DNS query for `qname` from an endpoint of identity `subject` to a peer of
    /// identity `peer` at `ip` on `proto`/`port` may go on
    /// ([`crate::engine::dns_query_allowed`] compiled); an endpoint without policy, or without
    /// `rules: dns`, is not filtered.
    #[allow(clippy::too_many_arguments)]
    pub fn dns_query_allowed(
        &self,
        subject: u32,
        peer: u32,
        ip: Option<u32>,
        proto: u8,
        port: u16,
        qname: &str,
        known: Known<'_>,
    ) -> bool {
        self.get(subject).is_none_or(|t| {
            let (keys, n) = self.keys(t, di(Direction::Egress), peer, ip);
            t.query(&keys[..n], proto, port, Some(qname), known)
        })
    }

    /// Whether DNS queries from `subject` to the peer on `proto`/`port` are filtered by name:
    /// every allow entry covering them carries `rules: dns` (and one does). When not, no query
    /// needs reading.
    #[inline]
    pub fn dns_filters(
        &self,
        subject: u32,
        peer: u32,
        ip: Option<u32>,
        proto: u8,
        port: u16,
        known: Known<'_>,
    ) -> bool {
        self.get(subject).is_some_and(|t| {
            let (keys, n) = self.keys(t, di(Direction::Egress), peer, ip);
            t.has_dns && !t.query(&keys[..n], proto, port, None, known)
        })
    }

    /// The identity of an address outside the cluster: its most specific policy CIDR, or world.
    #[inline]
    pub fn world_identity(&self, ip: Ipv4Addr) -> u32 {
        self.cidrs
            .lookup(u32::from(ip))
            .map_or(Identity::WORLD.0, |e| e.identity.0)
    }

    /// Sets whether the local host always reaches local endpoints (see `allow_localhost`).
    pub fn set_allow_localhost(&mut self, on: bool) {
        self.allow_localhost = on;
    }

    /// Whether the local host always reaches local endpoints unless denied explicitly.
    pub fn allow_localhost(&self) -> bool {
        self.allow_localhost
    }

    /// Whether any endpoint is under policy (when not, the fast path skips policy entirely).
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }

    /// Identities with a table.
    pub fn subjects(&self) -> usize {
        self.tables.len()
    }
}
