//! The meaning of a set of policies: for one endpoint, one direction and one peer, the verdict
//! and the rules that decided it.
//!
//! Semantics (Cilium's, which Kubernetes NetworkPolicy shares for what it can express):
//! - an endpoint that no policy selects for a direction allows everything in it; once a policy
//!   that enforces that direction selects it, the direction is default-deny except what the
//!   rules allow;
//! - allow rules add up; a matching deny rule beats every allow;
//! - a port that carries L7 rules is not allowed by its rule (Vireo does not enforce L7, and
//!   must never be wider than what the user wrote);
//! - requirements (`fromRequires`/`toRequires`) of any rule of any policy selecting the
//!   endpoint constrain the endpoint peers of every rule of the same direction and action
//!   ([`requirements`]);
//! - CIDR peers match addresses outside the cluster (world and CIDR identities), as in Cilium;
//!   pods and nodes are matched by their identities.
//!
//! [`decide`] is the reference: `vireo policy trace` explains verdicts with it, and the
//! compiled tables the fast path reads ([`crate::compiled`]) are checked against it.

use std::net::Ipv4Addr;

use serde::Serialize;

use crate::identity::{Identity, Labels, CIDR_IDENTITY_BASE};
use crate::ports::PortName;
use crate::rules::{Action, CidrScope, Direction, Entity, Origin, Peer, Policy, Rule, Selector};

/// The other side of a flow, as policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its security identity.
    pub identity: Identity,
    /// Its labels (`k8s:…` for pods, `reserved:…` for reserved identities).
    pub labels: Labels,
    /// Its address (for CIDR rules).
    pub ip: Ipv4Addr,
    /// The address is one of the Kubernetes API server's: the peer is also
    /// [`Identity::KUBE_APISERVER`] (the `kube-apiserver` entity, and `reserved:kube-apiserver`
    /// selectors), besides its own identity.
    pub kube_apiserver: bool,
    /// The DNS names the endpoint learned this address under (from DNS answers it received,
    /// still valid): what `toFQDNs` peers match. Empty for most peers.
    pub names: Vec<String>,
}

impl PeerInfo {
    /// Whether the peer is outside the cluster (world, or an address only CIDR rules name).
    pub fn is_world(&self) -> bool {
        is_world(self.identity)
    }
}

/// A verdict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The packet may pass.
    Allowed,
    /// It may not.
    Denied,
}

/// A verdict with its reasons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The verdict.
    pub verdict: Verdict,
    /// The rules that decided it: the matching deny rules, or else the matching allow rules.
    /// Empty when no rule matched (default allow or default deny).
    pub rules: Vec<Origin>,
    /// Some policy selects the endpoint for this direction (default deny is in force).
    pub enforced: bool,
}

impl Decision {
    /// Why, in words: the rules, or the default that applied.
    pub fn reason(&self) -> String {
        if !self.rules.is_empty() {
            let r: Vec<String> = self.rules.iter().map(ToString::to_string).collect();
            return r.join("; ");
        }
        match (self.verdict, self.enforced) {
            (Verdict::Denied, _) => "default deny (selected by a policy, no rule allows)".into(),
            (Verdict::Allowed, false) => "default allow (no policy selects the endpoint)".into(),
            (Verdict::Allowed, true) => "allowed".into(),
        }
    }
}

/// Whether identity `id` is one of `e`. (`cluster` is everything but world, as Cilium's: its
/// pods, nodes, and the init, health, unmanaged, ingress and kube-apiserver identities.)
pub fn entity_matches(e: Entity, id: Identity) -> bool {
    match e {
        Entity::All => true,
        Entity::None => false,
        Entity::World => is_world(id),
        Entity::Cluster => !is_world(id),
        Entity::Host => id == Identity::HOST,
        Entity::RemoteNode => id == Identity::REMOTE_NODE,
        Entity::Health => id == Identity::HEALTH,
        Entity::Init => id == Identity::INIT,
        Entity::Unmanaged => id == Identity::UNMANAGED,
        Entity::KubeApiserver => id == Identity::KUBE_APISERVER,
        Entity::Ingress => id == Identity::INGRESS,
    }
}

impl CidrScope {
    /// Whether a peer of identity `id` may be selected by address.
    pub fn admits(self, id: Identity) -> bool {
        match self {
            CidrScope::World => is_world(id),
            CidrScope::Nodes => is_world(id) || id == Identity::HOST || id == Identity::REMOTE_NODE,
            CidrScope::All => true,
        }
    }
}

/// The labels of [`Identity::KUBE_APISERVER`].
pub fn kube_apiserver_labels() -> Labels {
    Labels::new([("reserved:kube-apiserver", "")])
}

/// Whether `peer` matches `p` (ignoring ports and requirements): by its address for a CIDR,
/// else by its identity, or, for an API server address, as [`Identity::KUBE_APISERVER`].
pub fn peer_matches(p: &Peer, peer: &PeerInfo) -> bool {
    peer_matches_under(p, peer, &[])
}

/// [`peer_matches`], with `requires` in force for the endpoint peers.
fn peer_matches_under(p: &Peer, peer: &PeerInfo, requires: &[&Selector]) -> bool {
    match p {
        Peer::Cidr { net, except, scope } => {
            return scope.admits(peer.identity)
                && net.contains(&peer.ip)
                && !except.iter().any(|x| x.contains(&peer.ip));
        }
        Peer::Fqdn(sel) => return peer.is_world() && peer.names.iter().any(|n| sel.matches(n)),
        _ => {}
    }
    let apiserver = kube_apiserver_labels();
    let as_itself = [(peer.identity, &peer.labels)];
    let both = [
        (peer.identity, &peer.labels),
        (Identity::KUBE_APISERVER, &apiserver),
    ];
    let ids: &[(Identity, &Labels)] = if peer.kube_apiserver {
        &both
    } else {
        &as_itself
    };
    ids.iter().any(|(id, labels)| {
        identity_matches(p, *id, labels)
            && (!takes_requirements(p) || requires.iter().all(|s| s.matches(labels)))
    })
}

/// Whether identity `id` with `labels` matches a peer that is not a CIDR (CIDR peers are
/// matched by address, or by CIDR identity in [`crate::compiled`]).
pub fn identity_matches(p: &Peer, id: Identity, labels: &Labels) -> bool {
    match p {
        Peer::Any => true,
        Peer::Entity(e) => entity_matches(*e, id),
        Peer::Endpoints(sel) => sel.matches(labels),
        Peer::Cidr { .. } | Peer::Fqdn(_) => false,
    }
}

/// Whether `id` is outside the cluster (world, or a CIDR identity).
pub fn is_world(id: Identity) -> bool {
    id == Identity::WORLD || id.0 >= CIDR_IDENTITY_BASE
}

/// Whether requirements (`fromRequires`/`toRequires`) constrain peer `p`: endpoint selectors
/// and the L4-only wildcard, as Cilium folds requirements into endpoint selectors (not into
/// entities or CIDRs).
pub fn takes_requirements(p: &Peer) -> bool {
    matches!(p, Peer::Endpoints(_) | Peer::Any)
}

/// The requirements in force for the `action` rules of direction `d` of an endpoint that
/// `selecting` select: those of every such rule of every one of them (Cilium collects the
/// requirements of all the rules that select an endpoint and applies them to each of its
/// rules; allow and deny rules keep theirs apart).
pub fn requirements<'a>(
    selecting: impl IntoIterator<Item = &'a Policy>,
    d: Direction,
    action: Action,
) -> Vec<&'a Selector> {
    let mut out: Vec<&Selector> = Vec::new();
    for p in selecting {
        for r in p.rules(d).iter().filter(|r| r.action == action) {
            for s in &r.requires {
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
    }
    out
}

/// Whether `r` applies to `peer` and `proto`/`port`, under `requires` (the requirements in
/// force for its direction and action: [`requirements`]). An allow rule's L7 ports do not
/// count. `port_name`: the endpoint's name for the port (for named ports: [`decide_named`]).
pub fn rule_matches(
    r: &Rule,
    peer: &PeerInfo,
    (proto, port, port_name): (u8, u16, Option<PortName>),
    requires: &[&Selector],
) -> bool {
    let ports = r.ports.is_empty()
        || r.enforced_ports()
            .any(|pr| pr.covers_named(proto, port, port_name));
    ports
        && r.peers
            .iter()
            .any(|p| peer_matches_under(p, peer, requires))
}

/// Whether a DNS query for `qname` that the endpoint with `labels` sends to `peer` on
/// `proto`/`port` (egress) may go on, given that [`decide`] allows the packet: yes unless every
/// allow rule that matches carries `rules: dns` and none of their selectors matches the name.
/// A plain L4 allow of the same port and peer allows every name (as Cilium merges an L4 rule
/// into the L7 ones); without a matching allow rule (no policy) nothing filters.
pub fn dns_query_allowed(
    policies: &[Policy],
    labels: &Labels,
    peer: &PeerInfo,
    proto: u8,
    port: u16,
    qname: &str,
) -> bool {
    let mut filtered = false;
    let sel: Vec<&Policy> = selecting(policies, labels).collect();
    let requires = requirements(sel.iter().copied(), Direction::Egress, Action::Allow);
    for p in sel {
        for r in p.rules(Direction::Egress) {
            if r.action != Action::Allow || !rule_matches(r, peer, (proto, port, None), &requires) {
                continue;
            }
            if r.dns.is_empty() {
                return true;
            }
            if crate::fqdn::any_matches(&r.dns, qname) {
                return true;
            }
            filtered = true;
        }
    }
    !filtered
}

/// The policies that select an endpoint with `labels`.
pub fn selecting<'a>(
    policies: &'a [Policy],
    labels: &'a Labels,
) -> impl Iterator<Item = &'a Policy> {
    policies.iter().filter(move |p| p.selects(labels))
}

/// The verdict for traffic in direction `d` of the endpoint with `labels`, with `peer` on the
/// other side, IP protocol `proto` and the endpoint-side `port` for ingress (the destination
/// port; for egress, the destination port on the peer). For ICMP `port` is the message type
/// of the packet judged (the flow's first packet), or [`crate::rules::ICMP_TYPE_UNKNOWN`].
/// Named ports cover nothing here: see [`decide_named`].
pub fn decide(
    policies: &[Policy],
    labels: &Labels,
    d: Direction,
    peer: &PeerInfo,
    proto: u8,
    port: u16,
) -> Decision {
    decide_named(policies, labels, d, peer, proto, port, None)
}

/// [`decide`], for an endpoint that calls `port` `port_name` (for ingress, the name of its
/// container port `port`/`proto`, which the rules' named ports match; egress rules hold no
/// names, theirs being resolved when read).
pub fn decide_named(
    policies: &[Policy],
    labels: &Labels,
    d: Direction,
    peer: &PeerInfo,
    proto: u8,
    port: u16,
    port_name: Option<PortName>,
) -> Decision {
    let mut enforced = false;
    let (mut allows, mut denies) = (Vec::new(), Vec::new());
    let sel: Vec<&Policy> = selecting(policies, labels).collect();
    let reqs = [
        requirements(sel.iter().copied(), d, Action::Allow),
        requirements(sel.iter().copied(), d, Action::Deny),
    ];
    for p in sel {
        enforced |= p.enforces(d);
        for r in p.rules(d) {
            let requires = &reqs[usize::from(r.action == Action::Deny)];
            if rule_matches(r, peer, (proto, port, port_name), requires) {
                match r.action {
                    Action::Allow => allows.push(r.origin.clone()),
                    Action::Deny => denies.push(r.origin.clone()),
                }
            }
        }
    }
    if !denies.is_empty() {
        return Decision {
            verdict: Verdict::Denied,
            rules: denies,
            enforced,
        };
    }
    if !enforced {
        return Decision {
            verdict: Verdict::Allowed,
            rules: allows,
            enforced,
        };
    }
    Decision {
        verdict: if allows.is_empty() {
            Verdict::Denied
        } else {
            Verdict::Allowed
        },
        rules: allows,
        enforced,
    }
}
