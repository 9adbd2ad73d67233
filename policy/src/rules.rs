//! Policy rules as Vireo holds them, whatever manifest they came from (CiliumNetworkPolicy,
//! CiliumClusterwideNetworkPolicy, NetworkPolicy): who a policy selects, and per direction the
//! allow and deny rules with their peers and ports.
//!
//! Labels carry a source, as in Cilium: `k8s:app`, `reserved:host`; a selector key without a
//! source (or with `any:`) matches the key from any source.

use std::fmt;

use ipnet::Ipv4Net;
use serde::Serialize;

use crate::identity::Labels;
use crate::ports::PortName;

/// A label selector requirement's operator.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "PascalCase")]
pub enum Op {
    /// The key is present with one of the values (`matchLabels` is `In` with one value).
    In(Vec<String>),
    /// The key is absent, or present with none of the values.
    NotIn(Vec<String>),
    /// The key is present.
    Exists,
    /// The key is absent.
    DoesNotExist,
}

/// One requirement of a selector: `key` with its source (`k8s:app`, `any:app`,
/// `reserved:host`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Requirement {
    /// `source:key`.
    pub key: String,
    /// What the value must be.
    pub op: Op,
}

/// A label selector: every requirement must hold. No requirement selects everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize)]
pub struct Selector {
    /// The requirements (ANDed).
    pub reqs: Vec<Requirement>,
}

/// Splits `source:key` into (source, key); a key without a source is `any`.
pub fn split_source(key: &str) -> (&str, &str) {
    match key.split_once(':') {
        Some((src, k)) if matches!(src, "k8s" | "reserved" | "any" | "cidr" | "unspec") => (src, k),
        _ => ("any", key),
    }
}

/// The label sources [`split_source`] knows.
const SOURCES: [&str; 5] = ["k8s", "reserved", "any", "cidr", "unspec"];

impl Op {
    /// Whether the values a key has (none when it is absent) satisfy the operator.
    fn holds<'a>(&self, mut vals: impl Iterator<Item = &'a str>) -> bool {
        match self {
            Op::In(want) => vals.any(|v| want.iter().any(|w| w == v)),
            Op::NotIn(bad) => vals.all(|v| !bad.iter().any(|w| w == v)),
            Op::Exists => vals.next().is_some(),
            Op::DoesNotExist => vals.next().is_none(),
        }
    }
}

impl Requirement {
    /// The values of the labels this requirement's key names, by lookup: `source:key` is
    /// itself the label's key; `any:key` (or a bare key) is the key under each source, and the
    /// bare key itself. `None` when a key is too long for the stack buffer.
    fn values<'a, 'b>(
        &self,
        labels: &'a Labels,
        out: &'b mut [&'a str; SOURCES.len() + 1],
    ) -> Option<&'b [&'a str]> {
        let (src, k) = split_source(&self.key);
        let mut n = 0;
        if src != "any" {
            if let Some(v) = labels.get(&self.key) {
                out[0] = v;
                n = 1;
            }
            return Some(&out[..n]);
        }
        let mut buf = [0u8; 256];
        for s in SOURCES {
            let len = s.len() + 1 + k.len();
            let key = buf.get_mut(..len)?;
            key[..s.len()].copy_from_slice(s.as_bytes());
            key[s.len()] = b':';
            key[s.len() + 1..].copy_from_slice(k.as_bytes());
            let key = std::str::from_utf8(key).ok()?;
            if let Some(v) = labels.get(key) {
                out[n] = v;
                n += 1;
            }
        }
        // A bare label key is read as `any:` (when it has no known source of its own).
        if split_source(k).0 == "any" && !k.starts_with("any:") {
            if let Some(v) = labels.get(k) {
                out[n] = v;
                n += 1;
            }
        }
        Some(&out[..n])
    }

    /// The label keys whose values this requirement reads (as [`Requirement::values`] does).
    pub(crate) fn label_keys(&self) -> Vec<String> {
        let (src, k) = split_source(&self.key);
        if src != "any" {
            return vec![self.key.clone()];
        }
        let mut keys: Vec<String> = SOURCES.iter().map(|s| format!("{s}:{k}")).collect();
        if split_source(k).0 == "any" && !k.starts_with("any:") {
            keys.push(k.to_string());
        }
        keys
    }

    /// The same values, by scanning every label.
    fn values_by_scan<'a>(&'a self, labels: &'a Labels) -> impl Iterator<Item = &'a str> + 'a {
        let (src, k) = split_source(&self.key);
        labels.iter().filter_map(move |(lk, v)| {
            let (ls, lkey) = split_source(lk);
            (lkey == k && (src == "any" || ls == src)).then_some(v)
        })
    }
}

/// Adds the `any:` source to a key written without one.
pub fn with_source(key: &str) -> String {
    let (src, k) = split_source(key);
    format!("{src}:{k}")
}

impl Selector {
    /// A selector that selects everything.
    pub fn all() -> Selector {
        Selector::default()
    }

    /// `key = value` (keys as in [`Requirement::key`]).
    pub fn label(key: &str, value: &str) -> Selector {
        Selector {
            reqs: vec![Requirement {
                key: with_source(key),
                op: Op::In(vec![value.to_string()]),
            }],
        }
    }

    /// This selector, also requiring `other`'s requirements.
    pub fn and(mut self, other: &Selector) -> Selector {
        self.reqs.extend(other.reqs.iter().cloned());
        self
    }

    /// Whether `labels` satisfies every requirement. No allocation: selectors are matched
    /// against every identity when policies compile, so a key is looked up, not scanned for.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.reqs.iter().all(|r| {
            let mut buf = [""; SOURCES.len() + 1];
            match r.values(labels, &mut buf) {
                Some(vals) => r.op.holds(vals.iter().copied()),
                None => r.op.holds(r.values_by_scan(labels)),
            }
        })
    }

    /// Whether it selects everything.
    pub fn is_all(&self) -> bool {
        self.reqs.is_empty()
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.reqs.is_empty() {
            return f.write_str("{}");
        }
        let parts: Vec<String> = self
            .reqs
            .iter()
            .map(|r| match &r.op {
                Op::In(v) if v.len() == 1 => format!("{}={}", r.key, v[0]),
                Op::In(v) => format!("{} in ({})", r.key, v.join(",")),
                Op::NotIn(v) => format!("{} notin ({})", r.key, v.join(",")),
                Op::Exists => r.key.clone(),
                Op::DoesNotExist => format!("!{}", r.key),
            })
            .collect();
        write!(f, "{{{}}}", parts.join(", "))
    }
}

/// Traffic direction, from the selected endpoint's point of view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Towards the endpoint.
    Ingress,
    /// From the endpoint.
    Egress,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Allow (rules add up).
    Allow,
    /// Deny (beats any allow).
    Deny,
}

/// An L4 protocol as policies name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Proto {
    /// TCP (6).
    #[serde(rename = "TCP")]
    Tcp,
    /// UDP (17).
    #[serde(rename = "UDP")]
    Udp,
    /// SCTP (132).
    #[serde(rename = "SCTP")]
    Sctp,
    /// Cilium's `ANY`: every protocol with ports (TCP, UDP and SCTP). A port rule never covers
    /// ICMP or a protocol without ports (GRE, ESP, IPIP, ...).
    #[serde(rename = "ANY")]
    Any,
    /// Every IP protocol, with ports or not: what a rule without `toPorts` (an L3 rule)
    /// covers. No manifest spells it.
    #[serde(rename = "ALL")]
    All,
    /// ICMP (1) for IPv4, by message type: a [`PortRange`] of this protocol covers the ICMP
    /// types `lo..=hi` (Cilium's `icmps` fields). Its `lo` 0 is the type 0 (echo reply), not
    /// every type.
    #[serde(rename = "ICMP")]
    Icmp,
}

/// IP protocol numbers policy tells apart.
pub mod ip_proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// SCTP.
    pub const SCTP: u8 = 132;
}

impl Proto {
    /// Parses `TCP`, `UDP`, `SCTP`, `ANY` in any case.
    pub fn parse(s: &str) -> Option<Proto> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Proto::Tcp),
            "UDP" => Some(Proto::Udp),
            "SCTP" => Some(Proto::Sctp),
            "ANY" => Some(Proto::Any),
            _ => None,
        }
    }

    /// Whether this covers IP protocol `p`.
    #[inline]
    pub fn covers(self, p: u8) -> bool {
        match self {
            Proto::Tcp => p == ip_proto::TCP,
            Proto::Udp => p == ip_proto::UDP,
            Proto::Sctp => p == ip_proto::SCTP,
            Proto::Any => matches!(p, ip_proto::TCP | ip_proto::UDP | ip_proto::SCTP),
            Proto::All => true,
            Proto::Icmp => p == ip_proto::ICMP,
        }
    }

    /// The name manifests use.
    pub fn name(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
            Proto::Sctp => "SCTP",
            Proto::Any => "ANY",
            Proto::All => "ALL",
            Proto::Icmp => "ICMP",
        }
    }
}

/// What policy matches an ICMP packet whose type cannot be read (a later fragment carries no
/// ICMP header) on: no ICMP type range covers it, only rules for every protocol do.
pub const ICMP_TYPE_UNKNOWN: u16 = 256;

/// Ports a rule covers: `lo..=hi` of `proto`. `lo == 0` means every port, except for
/// [`Proto::Icmp`], whose `lo..=hi` are ICMP types (0 is echo reply).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PortRange {
    /// First port (0: all).
    pub lo: u16,
    /// Last port.
    pub hi: u16,
    /// Protocol.
    pub proto: Proto,
    /// The user attached L7 rules (HTTP, Kafka, DNS) to this port: Vireo does not enforce L7,
    /// so the port is not allowed by this rule (fail closed).
    pub l7: bool,
    /// A named port (an ingress rule's): the port of `proto` the endpoint judged calls so
    /// (its own container ports say which; `lo`/`hi` are 0). It covers nothing where the name
    /// of the port is not known.
    pub name: Option<PortName>,
}

impl PortRange {
    /// Every port of every IP protocol (an L3 rule).
    pub const ALL: PortRange = PortRange {
        lo: 0,
        hi: 0,
        proto: Proto::All,
        l7: false,
        name: None,
    };

    /// ICMP types `lo..=hi`.
    pub const fn icmp(lo: u8, hi: u8) -> PortRange {
        PortRange {
            lo: lo as u16,
            hi: hi as u16,
            proto: Proto::Icmp,
            l7: false,
            name: None,
        }
    }

    /// The port of `proto` called `name` on the endpoint judged.
    pub const fn named(name: PortName, proto: Proto) -> PortRange {
        PortRange {
            lo: 0,
            hi: 0,
            proto,
            l7: false,
            name: Some(name),
        }
    }

    /// Whether this covers `port` of IP protocol `p` (`port` is 0 for protocols without
    /// ports; for ICMP it is the message type, or [`ICMP_TYPE_UNKNOWN`]). A named port covers
    /// nothing here: see [`PortRange::covers_named`].
    #[inline]
    pub fn covers(&self, p: u8, port: u16) -> bool {
        self.covers_named(p, port, None)
    }

    /// [`PortRange::covers`], where the endpoint judged calls `port` of `p` `port_name` (its
    /// container port's name; `None`: no name, or not known). A named port covers exactly the
    /// port of its protocol with its name.
    #[inline]
    pub fn covers_named(&self, p: u8, port: u16, port_name: Option<PortName>) -> bool {
        if let Some(name) = self.name {
            return self.proto.covers(p) && port_name == Some(name);
        }
        let any_port = self.lo == 0 && self.proto != Proto::Icmp;
        self.proto.covers(p) && (any_port || (self.lo..=self.hi).contains(&port))
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = self.proto.name();
        if let Some(name) = self.name {
            return write!(f, "{name}/{proto}");
        }
        if self.proto == Proto::Icmp {
            return match (self.lo, self.hi) {
                (l, h) if l == h => write!(f, "ICMP type {l}"),
                (l, h) => write!(f, "ICMP types {l}-{h}"),
            };
        }
        match (self.lo, self.hi) {
            (0, _) => write!(f, "*/{proto}"),
            (l, h) if l == h => write!(f, "{l}/{proto}"),
            (l, h) => write!(f, "{l}-{h}/{proto}"),
        }
    }
}

/// Cilium's entities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Entity {
    /// The local node.
    Host,
    /// Other nodes.
    RemoteNode,
    /// Outside the cluster (and CIDR identities).
    World,
    /// Everything inside the cluster.
    Cluster,
    /// Health endpoints.
    Health,
    /// Endpoints whose identity is not resolved yet.
    Init,
    /// Pods not managed by the dataplane.
    Unmanaged,
    /// The Kubernetes API server: the addresses of the `default/kubernetes` Service's
    /// endpoints, wherever they are (pods, nodes or outside the cluster).
    KubeApiserver,
    /// Cilium's ingress proxy (Envoy). Vireo runs none, so it matches no traffic here.
    Ingress,
    /// Nothing (Cilium's `none`).
    None,
    /// Everything.
    All,
}

impl Entity {
    /// Parses an entity name.
    pub fn parse(s: &str) -> Option<Entity> {
        Some(match s {
            "host" => Entity::Host,
            "remote-node" => Entity::RemoteNode,
            "world" => Entity::World,
            "cluster" => Entity::Cluster,
            "health" => Entity::Health,
            "init" => Entity::Init,
            "unmanaged" => Entity::Unmanaged,
            "kube-apiserver" => Entity::KubeApiserver,
            "ingress" => Entity::Ingress,
            "none" => Entity::None,
            "all" => Entity::All,
            _ => return None,
        })
    }
}

/// Which peers a CIDR rule selects by address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CidrScope {
    /// Addresses outside the cluster only (CiliumNetworkPolicy CIDR rules: pods and nodes are
    /// selected by their identities).
    #[default]
    World,
    /// Those and the cluster's nodes (Cilium's `policy-cidr-match-mode: nodes`).
    Nodes,
    /// Every address, pods and nodes included (Kubernetes NetworkPolicy `ipBlock`, as the
    /// upstream e2e tests expect).
    All,
}

/// Who a rule is about on the other side.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Peer {
    /// Endpoints whose labels match (fromEndpoints/toEndpoints; NetworkPolicy pod and
    /// namespace selectors, combined).
    Endpoints(Selector),
    /// An entity.
    Entity(Entity),
    /// Addresses in `net` but in none of `except` (fromCIDR, fromCIDRSet, ipBlock), of the
    /// peers `scope` admits.
    Cidr {
        /// The block.
        net: Ipv4Net,
        /// Holes in it.
        except: Vec<Ipv4Net>,
        /// Which peers it selects by address.
        scope: CidrScope,
    },
    /// Anyone (a rule with ports only).
    Any,
    /// Addresses outside the cluster that the endpoint learned, from DNS answers it received,
    /// under a name this selects (`toFQDNs`; see [`crate::fqdn`]).
    Fqdn(crate::fqdn::FqdnSelector),
}

/// Where a rule came from, for `policy trace` and drop events.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Origin {
    /// `CiliumNetworkPolicy`, `CiliumClusterwideNetworkPolicy` or `NetworkPolicy`.
    pub kind: String,
    /// `namespace/name`, or the name of a cluster-wide policy.
    pub name: String,
    /// Which rule: `ingress[0]`, `egressDeny[1]`, `specs[1].ingress[0]`, …
    pub rule: String,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} {}", self.kind, self.name, self.rule)
    }
}

/// One rule of one direction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Rule {
    /// Allow or deny.
    pub action: Action,
    /// The peer must match one of these (ORed).
    pub peers: Vec<Peer>,
    /// And every one of these (fromRequires / toRequires of the policy).
    pub requires: Vec<Selector>,
    /// Ports covered (ORed); empty: every port.
    pub ports: Vec<PortRange>,
    /// `rules: dns` of its ports (an allow rule's): the ports are allowed, and a DNS query
    /// sent on them must ask for a name one of these selects (else Vireo answers it REFUSED).
    /// Empty: no DNS rules.
    pub dns: Vec<crate::fqdn::FqdnSelector>,
    /// Where it came from.
    pub origin: Origin,
}

impl Rule {
    /// The ports it applies to: all of them, except an allow rule's L7 ports (Vireo does not
    /// enforce L7, so such a port is not allowed: fail closed). Empty `ports` is every port.
    pub fn enforced_ports(&self) -> impl Iterator<Item = &PortRange> {
        let allow = self.action == Action::Allow;
        self.ports.iter().filter(move |pr| !(allow && pr.l7))
    }
}

/// One policy (one `spec`, or one entry of `specs`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Policy {
    /// Where it came from (`rule` empty).
    pub origin: Origin,
    /// Endpoints it applies to (a namespaced policy includes its namespace here).
    pub subject: Selector,
    /// Cluster-wide policies may select nodes instead of endpoints (nodeSelector): they apply
    /// to the host endpoint of matching nodes.
    pub node_selector: Option<Selector>,
    /// It puts selected endpoints into default-deny for ingress.
    pub enforce_ingress: bool,
    /// And for egress.
    pub enforce_egress: bool,
    /// Ingress rules (allow and deny).
    pub ingress: Vec<Rule>,
    /// Egress rules.
    pub egress: Vec<Rule>,
    /// What the user should know (L7 rules not enforced, fields ignored).
    pub warnings: Vec<String>,
}

impl Policy {
    /// The rules of one direction.
    pub fn rules(&self, d: Direction) -> &[Rule] {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    /// Whether it selects an endpoint with `labels` (a host policy, with a node selector,
    /// selects no endpoint).
    pub fn selects(&self, labels: &Labels) -> bool {
        self.node_selector.is_none() && self.subject.matches(labels)
    }

    /// Whether it puts its endpoints into default-deny for `d`.
    pub fn enforces(&self, d: Direction) -> bool {
        match d {
            Direction::Ingress => self.enforce_ingress,
            Direction::Egress => self.enforce_egress,
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Keys with and without sources, known and not, nested (`k8s:any:a`), sharing a bare name.
    fn key() -> impl Strategy<Value = String> {
        let src = prop::sample::select(vec![
            "",
            "k8s:",
            "reserved:",
            "any:",
            "cidr:",
            "unspec:",
            "foo:",
        ]);
        let name = prop::sample::select(vec!["a", "b", "any:a", "k8s:a", "x:a", "io.k8s/name"]);
        (src, name).prop_map(|(s, n)| format!("{s}{n}"))
    }

    fn op() -> impl Strategy<Value = Op> {
        let vals = prop::collection::vec(prop::sample::select(vec!["1", "2", ""]), 0..3)
            .prop_map(|v| v.into_iter().map(String::from).collect::<Vec<_>>());
        prop_oneof![
            vals.clone().prop_map(Op::In),
            vals.prop_map(Op::NotIn),
            Just(Op::Exists),
            Just(Op::DoesNotExist),
        ]
    }

    proptest! {
        /// The lookup finds exactly the values the scan over every label finds.
        #[test]
        fn lookup_agrees_with_scan(
            labels in prop::collection::btree_map(key(), prop::sample::select(vec!["1", "2", ""]), 0..8),
            reqs in prop::collection::vec((key(), op()), 1..4),
        ) {
            let labels = Labels::new(labels);
            for (key, op) in reqs {
                let r = Requirement { key, op };
                let mut buf = [""; SOURCES.len() + 1];
                let mut fast: Vec<&str> = r.values(&labels, &mut buf).expect("short key").to_vec();
                let mut slow: Vec<&str> = r.values_by_scan(&labels).collect();
                fast.sort_unstable();
                slow.sort_unstable();
                prop_assert_eq!(&fast, &slow, "{}", r.key);
                let sel = Selector { reqs: vec![r.clone()] };
                prop_assert_eq!(sel.matches(&labels), r.op.holds(slow.into_iter()));
            }
        }
    }

    #[test]
    fn icmp_ranges_cover_their_types_only_and_no_other_protocol() {
        let echo = PortRange::icmp(8, 8);
        assert!(echo.covers(ip_proto::ICMP, 8));
        assert!(!echo.covers(ip_proto::ICMP, 0));
        assert!(!echo.covers(ip_proto::ICMP, 13));
        assert!(!echo.covers(ip_proto::ICMP, ICMP_TYPE_UNKNOWN));
        assert!(!echo.covers(ip_proto::TCP, 8));
        // Type 0 is echo reply, not a wildcard.
        let reply = PortRange::icmp(0, 0);
        assert!(reply.covers(ip_proto::ICMP, 0));
        assert!(!reply.covers(ip_proto::ICMP, 8));
        let all = PortRange::icmp(0, 255);
        assert!((0..=255).all(|t| all.covers(ip_proto::ICMP, t)));
        assert!(!all.covers(ip_proto::ICMP, ICMP_TYPE_UNKNOWN));
        // Port rules never cover ICMP; an L3 rule covers every type, unknown included.
        let any = PortRange {
            lo: 0,
            hi: 0,
            proto: Proto::Any,
            l7: false,
            name: None,
        };
        assert!(!any.covers(ip_proto::ICMP, 8));
        assert!(PortRange::ALL.covers(ip_proto::ICMP, ICMP_TYPE_UNKNOWN));
        assert_eq!(echo.to_string(), "ICMP type 8");
        assert_eq!(PortRange::icmp(3, 5).to_string(), "ICMP types 3-5");
    }

    #[test]
    fn a_key_too_long_for_the_buffer_is_scanned() {
        let long = "a".repeat(300);
        let labels = Labels::new([(format!("k8s:{long}"), "v")]);
        assert!(Selector::label(&long, "v").matches(&labels));
        assert!(!Selector::label(&long, "w").matches(&labels));
    }
}
