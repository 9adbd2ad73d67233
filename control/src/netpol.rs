//! Users' network policies (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy and Kubernetes
//! NetworkPolicy, as the source keeps them) read into Vireo's policy model
//! ([`vireo_policy::Policy`]).
//!
//! The one rule above all: **what Vireo cannot read or enforce never widens what is allowed.**
//!
//! - A policy whose selectors, CIDRs, ports or structure cannot be read is *malformed*: it keeps
//!   enforcing default deny (for the directions it would have enforced) on the endpoints its
//!   subject selects, with no rules, and says so in a warning. If even its subject cannot be
//!   read, a namespaced policy enforces on its whole namespace; a cluster-wide one is dropped
//!   with a warning (default deny for the whole cluster would cut off everything).
//! - Fields Vireo does not know are warnings, never a rejection. Inside an allow rule an
//!   unknown field makes that rule allow nothing (it might have narrowed it); inside a deny
//!   rule it widens the rule (any peer, or every port, depending on where it is); elsewhere it
//!   is only reported.
//! - What Vireo knows but does not enforce fails closed, per rule: L7 rules (`rules:` on a
//!   `toPorts` entry; also TLS/SNI/listener settings) leave their ports denied
//!   ([`PortRange::l7`]); `toFQDNs`, `toServices`, `toGroups`, `fromNodes`/`toNodes`, CIDR
//!   groups, `authentication`, ICMP rules, the `kube-apiserver` and `ingress` entities, SCTP and
//!   IPv6 blocks allow nothing. In a deny rule they are replaced by a superset Vireo can
//!   express (nodes → host + remote-node; FQDNs, groups, CIDR groups → world; services → any
//!   peer; `kube-apiserver` → host + remote-node + world; ICMP → every protocol and port).
//!
//! Cilium semantics followed (see Cilium's `pkg/k8s/apis/cilium.io/utils` and the policy
//! language docs):
//! - a namespaced policy's `endpointSelector` always applies in the policy's namespace; its
//!   `fromEndpoints`/`toEndpoints`/`fromRequires`/`toRequires` selectors are limited to that
//!   namespace unless they name `io.kubernetes.pod.namespace` or a namespace label
//!   (`io.cilium.k8s.namespace.labels.*`), or (peers only) a `reserved:` label. In a
//!   cluster-wide policy such selectors only select pods (`io.kubernetes.pod.namespace`
//!   exists), as Cilium does;
//! - a rule with `toPorts` but no peer field applies to every peer on those ports; an empty
//!   rule `{}` selects nothing (Cilium's documented way of putting an endpoint into default
//!   deny without allowing anything);
//! - `fromRequires`/`toRequires` of any rule of a section (allow or deny) of a direction apply
//!   to every rule of that section, and only to its endpoint peers (and the L4-only wildcard),
//!   not to entities or CIDRs, as Cilium folds requirements into endpoint selectors;
//! - a direction is enforced (default deny) when its allow or deny section is present (even
//!   empty), unless `enableDefaultDeny` says `false` for it; an explicit `true` enforces even
//!   without a section.
//!
//! Kubernetes NetworkPolicy: `podSelector` (in the policy's namespace) is the subject;
//! `policyTypes` defaults to Ingress, plus Egress when `egress` has rules; a policy affects only
//! the directions of its `policyTypes` (rules of other directions are ignored, with a
//! warning); a missing or empty `from`/`to` means every peer; `podSelector` alone means the
//! policy's namespace; `namespaceSelector` alone means pods of the matching namespaces; both in
//! one element mean both; `ipBlock` is a CIDR peer (outside the cluster, as Cilium treats it);
//! `protocol` defaults to TCP.
//!
//! Named ports (NetworkPolicy, and Cilium `port: "name"`) are resolved against the container
//! ports of the pods in the manifests that the rule's *destination* selects: the policy's own
//! pods for ingress, the peer pods for egress. Every number found is allowed (a warning says so
//! when there are several); none found, the entry allows nothing. The result depends on the
//! pods: recompute the policies when pods change.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net};
use k8s_openapi::api::networking::v1::{NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;
use vireo_lb::service::UDP;
use vireo_policy::identity::{NAMESPACE_LABEL, NAMESPACE_LABELS_PREFIX};
use vireo_policy::rules::{split_source, with_source};
use vireo_policy::{
    Action, Direction, Entity, Labels, Op, Origin, Peer, Policy, PortRange, Proto, Requirement,
    Rule, Selector,
};

use crate::cluster::{container_ports, namespace_labels};
use crate::source::{first_line, Manifests, PolicyDocument, PolicyKind};

/// The policies of a set of manifests.
#[derive(Debug, Clone, Default)]
pub struct PolicySet {
    /// One per NetworkPolicy, per `spec` and per entry of `specs`, in (kind, namespace, name)
    /// order.
    pub policies: Vec<Policy>,
    /// Every problem, one line each, naming the object (`Kind name (file:line): …`): the
    /// policies' own warnings and the policies dropped.
    pub warnings: Vec<String>,
}

impl PolicySet {
    /// The policies by the object they come from (`Kind name`), the unit in which the policy
    /// compiler adds, replaces and removes them.
    pub fn by_object(&self) -> BTreeMap<String, Vec<Policy>> {
        let mut groups: BTreeMap<String, Vec<Policy>> = BTreeMap::new();
        for p in &self.policies {
            let key = format!("{} {}", p.origin.kind, p.origin.name);
            groups.entry(key).or_default().push(p.clone());
        }
        groups
    }
}

/// Reads the policies of `m`. Never fails: problems are warnings (see the module doc).
pub fn policies(m: &Manifests) -> PolicySet {
    let pods = pod_ports(m);
    let mut set = PolicySet::default();
    for doc in m.policies.values() {
        let obj = Obj::new(doc);
        let out = match doc.kind {
            PolicyKind::NetworkPolicy => vec![network_policy(&obj, &pods)],
            _ => cilium_policy(&obj, &pods),
        };
        for r in out {
            match r {
                Ok(p) => {
                    set.warnings
                        .extend(p.warnings.iter().map(|w| format!("{}: {w}", obj.label)));
                    set.policies.push(p);
                }
                Err(w) => set.warnings.push(format!("{}: {w}", obj.label)),
            }
        }
    }
    set
}

// ---------------------------------------------------------------------------------------------
// Shared pieces.

/// A pod of the manifests: its security labels and its named container ports.
struct PodPorts {
    labels: Labels,
    /// (name, number, protocol) of every named `containers[].ports[]` entry (TCP or UDP).
    ports: Vec<(String, u16, Proto)>,
}

fn pod_ports(m: &Manifests) -> Vec<PodPorts> {
    m.pods
        .iter()
        .map(|((ns, _), p)| {
            let ns_labels = namespace_labels(m, ns);
            let labels = Labels::for_pod(ns, p.metadata.labels.iter().flatten(), &ns_labels);
            let ports = container_ports(p)
                .filter(|cp| !cp.name.is_empty())
                .map(|cp| {
                    let proto = if cp.proto == UDP {
                        Proto::Udp
                    } else {
                        Proto::Tcp
                    };
                    (cp.name, cp.port, proto)
                })
                .collect();
            PodPorts { labels, ports }
        })
        .collect()
}

/// The object a policy comes from, for origins and warnings.
struct Obj<'a> {
    doc: &'a PolicyDocument,
    /// `namespace/name`, or the name of a cluster-wide policy.
    name: String,
    /// `Kind name (file:line)`.
    label: String,
}

impl<'a> Obj<'a> {
    fn new(doc: &'a PolicyDocument) -> Obj<'a> {
        let name = match &doc.namespace {
            Some(ns) => format!("{ns}/{}", doc.name),
            None => doc.name.clone(),
        };
        let label = format!("{} {name} ({})", doc.kind.name(), doc.origin);
        Obj { doc, name, label }
    }

    fn origin(&self, rule: &str) -> Origin {
        Origin {
            kind: self.doc.kind.name().to_string(),
            name: self.name.clone(),
            rule: rule.to_string(),
        }
    }

    fn namespace(&self) -> Option<&str> {
        self.doc.namespace.as_deref()
    }
}

/// `k8s:io.kubernetes.pod.namespace = ns`.
fn in_namespace(ns: &str) -> Selector {
    Selector::label(&format!("k8s:{NAMESPACE_LABEL}"), ns)
}

/// `k8s:io.kubernetes.pod.namespace` exists: pods only.
fn any_pod() -> Selector {
    Selector {
        reqs: vec![Requirement {
            key: format!("k8s:{NAMESPACE_LABEL}"),
            op: Op::Exists,
        }],
    }
}

/// A label selector as the model holds it, keys rewritten by `key`.
fn selector(
    ls: &LabelSelector,
    key: &dyn Fn(&str) -> String,
    path: &str,
) -> Result<Selector, String> {
    let mut reqs = Vec::new();
    let check = |k: &str| {
        let bare = split_source(k).1;
        if bare.is_empty() {
            Err(format!("{path}: empty label key {k:?}"))
        } else {
            Ok(())
        }
    };
    for (k, v) in ls.match_labels.iter().flatten() {
        check(k)?;
        reqs.push(Requirement {
            key: key(k),
            op: Op::In(vec![v.clone()]),
        });
    }
    for (i, e) in ls.match_expressions.iter().flatten().enumerate() {
        let at = format!("{path}.matchExpressions[{i}]");
        check(&e.key).map_err(|_| format!("{at}: empty key"))?;
        let values = e.values.clone().unwrap_or_default();
        let op = match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!("{at}: operator {} needs values", e.operator))
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!("{at}: operator {} takes no values", e.operator))
            }
            "In" => Op::In(values),
            "NotIn" => Op::NotIn(values),
            "Exists" => Op::Exists,
            "DoesNotExist" => Op::DoesNotExist,
            other => return Err(format!("{at}: unknown operator {other:?}")),
        };
        reqs.push(Requirement {
            key: key(&e.key),
            op,
        });
    }
    Ok(Selector { reqs })
}

/// Cilium keys: `source:key`, a bare key meaning `any:`.
fn cilium_key(k: &str) -> String {
    with_source(k)
}

/// A pod label of a NetworkPolicy selector.
fn pod_key(k: &str) -> String {
    format!("k8s:{k}")
}

/// A namespace label of a NetworkPolicy namespace selector, as pods carry it.
fn namespace_key(k: &str) -> String {
    format!("k8s:{NAMESPACE_LABELS_PREFIX}{k}")
}

/// A CIDR as written (a bare address is a /32); IPv6 blocks are `Ok(None)`.
fn cidr(s: &str, path: &str) -> Result<Option<Ipv4Net>, String> {
    let t = s.trim();
    let net = match t.parse::<IpNet>() {
        Ok(n) => n,
        Err(_) => match t.parse::<IpAddr>() {
            Ok(ip) => IpNet::from(ip),
            Err(_) => return Err(format!("{path}: {s:?} is not a CIDR")),
        },
    };
    Ok(match net {
        IpNet::V4(n) => Some(n.trunc()),
        IpNet::V6(_) => None,
    })
}

/// A CIDR peer with its holes; IPv6 is left out with a warning (`Ok(None)`).
fn cidr_peer(
    net: &str,
    except: &[String],
    path: &str,
    warnings: &mut Vec<String>,
) -> Result<Option<Peer>, String> {
    let Some(n) = cidr(net, path)? else {
        warnings.push(format!(
            "{path}: IPv6 block {net} is not supported (Vireo is IPv4 only); it matches nothing"
        ));
        return Ok(None);
    };
    let mut holes = Vec::new();
    for (i, x) in except.iter().enumerate() {
        if let Some(h) = cidr(x, &format!("{path}.except[{i}]"))? {
            holes.push(h);
        }
    }
    Ok(Some(Peer::Cidr {
        net: n,
        except: holes,
    }))
}

/// Where a port entry's number comes from.
#[derive(Debug, Clone)]
enum PortNum {
    /// Every port.
    All,
    /// `lo..=hi`.
    Range(u16, u16),
    /// A container port name.
    Named(String),
}

/// A port entry as read, before named ports are resolved.
#[derive(Debug, Clone)]
struct PortIn {
    num: PortNum,
    proto: Proto,
    l7: bool,
}

/// One rule as read.
#[derive(Debug)]
struct RuleIn {
    action: Action,
    /// Its origin's `rule` (`ingress[0]`, `specs[1].egressDeny[2]`).
    rule: String,
    /// The peers Vireo can enforce.
    peers: Vec<Peer>,
    /// Some peer field was written (even one Vireo cannot enforce): no L4-only wildcard.
    l3: bool,
    /// `None`: every port.
    ports: Option<Vec<PortIn>>,
}

/// A policy being built.
struct Builder<'a> {
    pods: &'a [PodPorts],
    policy: Policy,
}

impl Builder<'_> {
    fn warn(&mut self, w: String) {
        self.policy.warnings.push(w);
    }

    /// Adds the model's rules for `r`: named ports resolved, requirements on endpoint peers.
    fn add(&mut self, d: Direction, r: RuleIn, requires: &[Selector]) {
        let peers = if r.l3 {
            r.peers
        } else if r.ports.is_some() {
            vec![Peer::Any]
        } else {
            // `{}`: selects no peer.
            return;
        };
        if peers.is_empty() {
            return;
        }
        let ports = match r.ports {
            None => Vec::new(),
            Some(list) => {
                let ports = self.resolve(d, &r.rule, r.action, &peers, requires, list);
                if ports.is_empty() {
                    // Every entry was left out: the rule covers nothing (not every port).
                    return;
                }
                ports
            }
        };
        if r.action == Action::Allow {
            for p in ports.iter().filter(|p| p.l7) {
                let w = format!(
                    "{}: L7 rules are not enforced; port {p} is denied (fail closed)",
                    r.rule
                );
                self.warn(w);
            }
        }
        let origin = Origin {
            rule: r.rule,
            ..self.policy.origin.clone()
        };
        let (with_req, without): (Vec<Peer>, Vec<Peer>) = if requires.is_empty() {
            (peers, Vec::new())
        } else {
            peers
                .into_iter()
                .partition(|p| matches!(p, Peer::Endpoints(_) | Peer::Any))
        };
        for (peers, requires) in [(with_req, requires.to_vec()), (without, Vec::new())] {
            if peers.is_empty() {
                continue;
            }
            let rule = Rule {
                action: r.action,
                peers,
                requires,
                ports: ports.clone(),
                origin: origin.clone(),
            };
            match d {
                Direction::Ingress => self.policy.ingress.push(rule),
                Direction::Egress => self.policy.egress.push(rule),
            }
        }
    }

    /// The port ranges of `list`, named ports resolved against the destination's pods.
    fn resolve(
        &mut self,
        d: Direction,
        rule: &str,
        action: Action,
        peers: &[Peer],
        requires: &[Selector],
        list: Vec<PortIn>,
    ) -> Vec<PortRange> {
        let mut out: Vec<PortRange> = Vec::new();
        let mut push = |pr: PortRange| {
            if !out.contains(&pr) {
                out.push(pr);
            }
        };
        for p in list {
            let (lo, hi) = match p.num {
                PortNum::All => (0, 0),
                PortNum::Range(lo, hi) => (lo, hi),
                PortNum::Named(name) => {
                    let found = self.named(d, peers, requires, &name, p.proto);
                    let nums: BTreeSet<u16> = found.iter().map(|(n, _)| *n).collect();
                    if found.is_empty() {
                        let what = match action {
                            Action::Allow => "allows",
                            Action::Deny => "denies",
                        };
                        let w = format!(
                            "{rule}: named port {name:?} matches no container port of the pods \
                             the rule's destination selects; it {what} nothing"
                        );
                        self.warn(w);
                    } else if nums.len() > 1 {
                        let list: Vec<String> = nums.iter().map(ToString::to_string).collect();
                        let w = format!(
                            "{rule}: named port {name:?} is {} on different pods; each number \
                             applies to all of them",
                            list.join(", ")
                        );
                        self.warn(w);
                    }
                    for (n, proto) in found {
                        push(PortRange {
                            lo: n,
                            hi: n,
                            proto,
                            l7: p.l7,
                        });
                    }
                    continue;
                }
            };
            push(PortRange {
                lo,
                hi,
                proto: p.proto,
                l7: p.l7,
            });
        }
        out
    }

    /// (number, protocol) of the container ports called `name` on the destination's pods.
    fn named(
        &self,
        d: Direction,
        peers: &[Peer],
        requires: &[Selector],
        name: &str,
        proto: Proto,
    ) -> BTreeSet<(u16, Proto)> {
        let p = &self.policy;
        let dest = |l: &Labels| match d {
            Direction::Ingress => p.selects(l),
            Direction::Egress => peers.iter().any(|peer| match peer {
                Peer::Endpoints(s) => s.matches(l) && requires.iter().all(|r| r.matches(l)),
                Peer::Any => requires.iter().all(|r| r.matches(l)),
                Peer::Entity(Entity::Cluster | Entity::All) => true,
                Peer::Entity(_) | Peer::Cidr { .. } => false,
            }),
        };
        self.pods
            .iter()
            .filter(|pod| dest(&pod.labels))
            .flat_map(|pod| &pod.ports)
            .filter(|(n, _, pp)| n == name && (proto == Proto::Any || *pp == proto))
            .map(|(_, num, pp)| (*num, *pp))
            .collect()
    }
}

/// What a malformed policy becomes: default deny with no rules, for the directions it would
/// have enforced, on its subject ((endpoint selector, node selector)); on its whole namespace
/// when the subject is unreadable; dropped when cluster-wide with an unreadable subject, or
/// when it enforced nothing (nothing is lost then).
fn fail_closed(
    origin: Origin,
    subject: Option<(Selector, Option<Selector>)>,
    ns: Option<&str>,
    (ingress, egress): (bool, bool),
    reason: &str,
) -> Result<Policy, String> {
    let dirs: Vec<&str> = [(ingress, "ingress"), (egress, "egress")]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
    let dirs = dirs.join(", ");
    if dirs.is_empty() {
        return Err(format!(
            "{reason}; policy dropped (it enforced no default deny)"
        ));
    }
    let (subject, node_selector, whom) = match (subject, ns) {
        (Some((s, n)), _) => (s, n, "the endpoints it selects".to_string()),
        (None, Some(ns)) => (
            in_namespace(ns),
            None,
            format!("every pod of namespace {ns} (its subject is unreadable)"),
        ),
        (None, None) => {
            return Err(format!(
                "{reason}; policy dropped although it enforced default deny ({dirs}): its \
                 subject is unreadable, and default deny for the whole cluster would cut off \
                 everything"
            ))
        }
    };
    Ok(Policy {
        origin,
        subject,
        node_selector,
        enforce_ingress: ingress,
        enforce_egress: egress,
        ingress: Vec::new(),
        egress: Vec::new(),
        warnings: vec![format!(
            "{reason}; its rules are dropped and it keeps enforcing default deny ({dirs}) on \
             {whom}, with no rules (fail closed)"
        )],
    })
}

/// One step of a path into a document.
#[derive(Clone)]
enum Seg {
    Key(Value),
    Idx(usize),
}

fn value_at<'v>(v: &'v Value, path: &[Seg]) -> Option<&'v Value> {
    path.iter().try_fold(v, |v, s| match s {
        Seg::Key(k) => v.as_mapping()?.get(k),
        Seg::Idx(i) => v.as_sequence()?.get(*i),
    })
}

fn remove_at(v: &mut Value, path: &[Seg]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for s in parent {
        let next = match s {
            Seg::Key(k) => cur.as_mapping_mut().and_then(|m| m.get_mut(k)),
            Seg::Idx(i) => cur.as_sequence_mut().and_then(|q| q.get_mut(*i)),
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    match (last, cur) {
        (Seg::Key(k), Value::Mapping(m)) => {
            m.remove(k);
        }
        (Seg::Idx(i), Value::Sequence(q)) if *i < q.len() => {
            q.remove(*i);
        }
        _ => {}
    }
}

/// Where a typed read of `v` as `T` fails: the deepest field or list element whose removal
/// makes `v` read (the root when none does), as `a.b[0].c`.
fn locate<T: serde::de::DeserializeOwned>(v: &Value) -> String {
    let reads = |x: &Value| serde_yaml_ng::from_value::<T>(x.clone()).is_ok();
    let mut path: Vec<Seg> = Vec::new();
    'down: loop {
        let children: Vec<Seg> = match value_at(v, &path) {
            Some(Value::Mapping(m)) => m.keys().cloned().map(Seg::Key).collect(),
            Some(Value::Sequence(q)) => (0..q.len()).map(Seg::Idx).collect(),
            _ => break,
        };
        for c in children {
            let mut p = path.clone();
            p.push(c);
            let mut probe = v.clone();
            remove_at(&mut probe, &p);
            if reads(&probe) {
                path = p;
                continue 'down;
            }
        }
        break;
    }
    let mut out = String::new();
    for s in path {
        match s {
            Seg::Key(k) => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(k.as_str().unwrap_or("?"));
            }
            Seg::Idx(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

/// "`path`: malformed (serde's message)".
fn malformed<T: serde::de::DeserializeOwned>(
    v: &Value,
    e: &serde_yaml_ng::Error,
    prefix: &str,
) -> String {
    let at = format!("{prefix}{}", locate::<T>(v));
    let at = at.trim_end_matches('.');
    let at = if at.is_empty() { "spec" } else { at };
    format!("{at}: malformed ({})", first_line(&e.to_string()))
}

/// Paths of the fields of `raw` that did not survive a typed read (`known` is the typed value
/// written back): the fields the reader does not know. Null fields are not reported.
fn unknown_paths(raw: &Value, known: &Value, path: &str, out: &mut Vec<String>) {
    match (raw, known) {
        (Value::Mapping(r), Value::Mapping(k)) => {
            for (key, v) in r {
                if v.is_null() {
                    continue;
                }
                let name = match key {
                    Value::String(s) => s.clone(),
                    other => serde_yaml_ng::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                let p = if path.is_empty() {
                    name
                } else {
                    format!("{path}.{name}")
                };
                match k.get(key) {
                    None => out.push(p),
                    Some(kv) => unknown_paths(v, kv, &p, out),
                }
            }
        }
        (Value::Sequence(r), Value::Sequence(k)) => {
            for (i, (a, b)) in r.iter().zip(k).enumerate() {
                unknown_paths(a, b, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Splits `ingress[3].toPorts[0]` into `("ingress", Some(3), "toPorts[0]")`.
fn split_path(p: &str) -> (&str, Option<usize>, &str) {
    let end = p.find(['.', '[']).unwrap_or(p.len());
    let (head, rest) = p.split_at(end);
    if let Some(r) = rest.strip_prefix('[') {
        if let Some(close) = r.find(']') {
            let idx = r[..close].parse().ok();
            let after = &r[close + 1..];
            return (head, idx, after.strip_prefix('.').unwrap_or(after));
        }
    }
    (head, None, rest.strip_prefix('.').unwrap_or(rest))
}

/// Whether a raw value is present and not empty.
fn written(v: Option<&Value>) -> bool {
    match v {
        None | Some(Value::Null) => false,
        Some(Value::Sequence(s)) => !s.is_empty(),
        Some(Value::Mapping(m)) => !m.is_empty(),
        Some(_) => true,
    }
}

// ---------------------------------------------------------------------------------------------
// CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy (cilium.io/v2).

/// One `spec` (Cilium's `api.Rule`).
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename = "Rule")]
#[serde(rename_all = "camelCase")]
struct CSpec {
    endpoint_selector: Option<LabelSelector>,
    node_selector: Option<LabelSelector>,
    ingress: Option<Vec<CIngress>>,
    ingress_deny: Option<Vec<CIngress>>,
    egress: Option<Vec<CEgress>>,
    egress_deny: Option<Vec<CEgress>>,
    enable_default_deny: Option<CDefaultDeny>,
    description: Option<Value>,
    labels: Option<Value>,
    log: Option<Value>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename = "EnableDefaultDeny")]
struct CDefaultDeny {
    ingress: Option<bool>,
    egress: Option<bool>,
}

/// An `ingress` or `ingressDeny` entry.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename = "IngressRule")]
#[serde(rename_all = "camelCase")]
struct CIngress {
    from_endpoints: Option<Vec<LabelSelector>>,
    from_requires: Option<Vec<LabelSelector>>,
    from_entities: Option<Vec<String>>,
    #[serde(rename = "fromCIDR")]
    from_cidr: Option<Vec<String>>,
    #[serde(rename = "fromCIDRSet")]
    from_cidr_set: Option<Vec<CCidrRule>>,
    from_nodes: Option<Value>,
    from_groups: Option<Value>,
    to_ports: Option<Vec<CPortRule>>,
    icmps: Option<Value>,
    authentication: Option<Value>,
}

/// An `egress` or `egressDeny` entry.
#[derive(Debug, Deserialize, Serialize)]
#[serde(rename = "EgressRule")]
#[serde(rename_all = "camelCase")]
struct CEgress {
    to_endpoints: Option<Vec<LabelSelector>>,
    to_requires: Option<Vec<LabelSelector>>,
    to_entities: Option<Vec<String>>,
    #[serde(rename = "toCIDR")]
    to_cidr: Option<Vec<String>>,
    #[serde(rename = "toCIDRSet")]
    to_cidr_set: Option<Vec<CCidrRule>>,
    #[serde(rename = "toFQDNs")]
    to_fqdns: Option<Value>,
    to_services: Option<Value>,
    to_nodes: Option<Value>,
    to_groups: Option<Value>,
    to_ports: Option<Vec<CPortRule>>,
    icmps: Option<Value>,
    authentication: Option<Value>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename = "CIDRRule")]
#[serde(rename_all = "camelCase")]
struct CCidrRule {
    cidr: Option<String>,
    except: Option<Vec<String>>,
    cidr_group_ref: Option<Value>,
    cidr_group_selector: Option<Value>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename = "PortRule")]
#[serde(rename_all = "camelCase")]
struct CPortRule {
    ports: Option<Vec<CPort>>,
    rules: Option<Value>,
    #[serde(rename = "terminatingTLS")]
    terminating_tls: Option<Value>,
    #[serde(rename = "originatingTLS")]
    originating_tls: Option<Value>,
    server_names: Option<Value>,
    listener: Option<Value>,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(rename = "PortProtocol")]
#[serde(rename_all = "camelCase")]
struct CPort {
    port: Option<StrOrNum>,
    end_port: Option<i64>,
    protocol: Option<String>,
}

/// A port written as a number or a string.
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum StrOrNum {
    Num(i64),
    Str(String),
}

/// A rule of either direction, with its peer fields named for messages.
struct CRule<'a> {
    endpoints: &'a Option<Vec<LabelSelector>>,
    requires: &'a Option<Vec<LabelSelector>>,
    entities: &'a Option<Vec<String>>,
    cidr: &'a Option<Vec<String>>,
    cidr_set: &'a Option<Vec<CCidrRule>>,
    to_ports: &'a Option<Vec<CPortRule>>,
    icmps: &'a Option<Value>,
    authentication: &'a Option<Value>,
    /// Peer fields Vireo does not enforce that are written: (field, deny superset).
    unsupported: Vec<(&'static str, Vec<Peer>)>,
    /// Field names: `from…` or `to…`.
    dir: Direction,
}

impl CIngress {
    fn common(&self) -> CRule<'_> {
        let mut unsupported = Vec::new();
        if written(self.from_nodes.as_ref()) {
            unsupported.push(("fromNodes", nodes()));
        }
        if written(self.from_groups.as_ref()) {
            unsupported.push(("fromGroups", vec![Peer::Entity(Entity::World)]));
        }
        CRule {
            endpoints: &self.from_endpoints,
            requires: &self.from_requires,
            entities: &self.from_entities,
            cidr: &self.from_cidr,
            cidr_set: &self.from_cidr_set,
            to_ports: &self.to_ports,
            icmps: &self.icmps,
            authentication: &self.authentication,
            unsupported,
            dir: Direction::Ingress,
        }
    }
}

impl CEgress {
    fn common(&self) -> CRule<'_> {
        let mut unsupported = Vec::new();
        if written(self.to_nodes.as_ref()) {
            unsupported.push(("toNodes", nodes()));
        }
        if written(self.to_groups.as_ref()) {
            unsupported.push(("toGroups", vec![Peer::Entity(Entity::World)]));
        }
        if written(self.to_fqdns.as_ref()) {
            unsupported.push(("toFQDNs", vec![Peer::Entity(Entity::World)]));
        }
        if written(self.to_services.as_ref()) {
            unsupported.push(("toServices", vec![Peer::Any]));
        }
        CRule {
            endpoints: &self.to_endpoints,
            requires: &self.to_requires,
            entities: &self.to_entities,
            cidr: &self.to_cidr,
            cidr_set: &self.to_cidr_set,
            to_ports: &self.to_ports,
            icmps: &self.icmps,
            authentication: &self.authentication,
            unsupported,
            dir: Direction::Egress,
        }
    }
}

/// Every node: the local host and the others.
fn nodes() -> Vec<Peer> {
    vec![Peer::Entity(Entity::Host), Peer::Entity(Entity::RemoteNode)]
}

/// `from`/`to` + `what`.
fn field(d: Direction, what: &str) -> String {
    match d {
        Direction::Ingress => format!("from{what}"),
        Direction::Egress => format!("to{what}"),
    }
}

/// The policies of one Cilium object: one per `spec` and per entry of `specs`.
fn cilium_policy(obj: &Obj, pods: &[PodPorts]) -> Vec<Result<Policy, String>> {
    let v = &obj.doc.value;
    let mut out = Vec::new();
    if let Value::Mapping(m) = v {
        let unknown: Vec<String> = m
            .keys()
            .filter_map(Value::as_str)
            .filter(|k| !["apiVersion", "kind", "metadata", "spec", "specs", "status"].contains(k))
            .map(str::to_string)
            .collect();
        if !unknown.is_empty() {
            out.push(Err(format!(
                "unknown fields ignored: {}",
                unknown.join(", ")
            )));
        }
    }
    let spec = v.get("spec").filter(|s| !s.is_null());
    let specs = v.get("specs").filter(|s| !s.is_null());
    if spec.is_none() && specs.is_none() {
        out.push(Err("neither spec nor specs: nothing to enforce".into()));
    }
    if let Some(s) = spec {
        out.push(cilium_spec(obj, pods, s, ""));
    }
    match specs {
        None => {}
        Some(Value::Sequence(list)) => {
            for (i, s) in list.iter().enumerate() {
                out.push(cilium_spec(obj, pods, s, &format!("specs[{i}].")));
            }
        }
        Some(_) => out.push(Err(
            "specs is not a list; dropped (no subject to enforce on)".into(),
        )),
    }
    out
}

/// The context selectors of one spec are read in.
struct CScope<'a> {
    /// The policy's namespace (`None`: cluster-wide).
    ns: Option<&'a str>,
    /// The subject selects `reserved:init`: peers get no implicit namespace.
    matches_init: bool,
}

impl CScope<'_> {
    /// A peer or requirement selector, limited as Cilium limits it (module doc).
    fn scope(&self, sel: Selector, requires: bool) -> Selector {
        let names = |pred: &dyn Fn(&str) -> bool| {
            sel.reqs.iter().any(|r| {
                let (src, k) = split_source(&r.key);
                matches!(src, "k8s" | "any") && pred(k)
            })
        };
        if !requires
            && sel
                .reqs
                .iter()
                .any(|r| split_source(&r.key).0 == "reserved")
        {
            return sel;
        }
        if names(&|k| k == NAMESPACE_LABEL) || self.matches_init {
            return sel;
        }
        match self.ns {
            None => sel.and(&any_pod()),
            Some(_) if names(&|k| k.starts_with(NAMESPACE_LABELS_PREFIX)) => sel,
            Some(ns) => sel.and(&in_namespace(ns)),
        }
    }
}

/// The subject of a spec: (endpoint selector, node selector).
fn cilium_subject(
    obj: &Obj,
    es: Option<&LabelSelector>,
    nsel: Option<&LabelSelector>,
    prefix: &str,
    warnings: &mut Vec<String>,
) -> Result<(Selector, Option<Selector>), String> {
    let ns = obj.namespace();
    match (es, nsel) {
        (Some(_), Some(_)) => Err(format!(
            "{prefix}endpointSelector and nodeSelector are exclusive"
        )),
        (None, None) => Err(format!(
            "{prefix}endpointSelector (or nodeSelector) is missing"
        )),
        (None, Some(n)) => {
            if ns.is_some() {
                return Err(format!(
                    "{prefix}nodeSelector is only valid in a CiliumClusterwideNetworkPolicy"
                ));
            }
            let sel = selector(n, &cilium_key, &format!("{prefix}nodeSelector"))?;
            Ok((Selector::all(), Some(sel)))
        }
        (Some(e), None) => {
            let mut e = e.clone();
            if let Some(ns) = ns {
                // As Cilium: the subject always applies in the policy's namespace.
                let key = format!("k8s:{NAMESPACE_LABEL}");
                if let Some(v) = e.match_labels.as_mut().and_then(|m| m.remove(&key)) {
                    if v != ns {
                        warnings.push(format!(
                            "{prefix}endpointSelector: {key}={v} replaced by the policy's \
                             namespace {ns}"
                        ));
                    }
                }
            }
            let sel = selector(&e, &cilium_key, &format!("{prefix}endpointSelector"))?;
            Ok(match ns {
                Some(ns) => (sel.and(&in_namespace(ns)), None),
                None => (sel, None),
            })
        }
    }
}

/// One spec.
fn cilium_spec(obj: &Obj, pods: &[PodPorts], raw: &Value, prefix: &str) -> Result<Policy, String> {
    let spec: CSpec = match serde_yaml_ng::from_value(raw.clone()) {
        Ok(s) => s,
        Err(e) => {
            let reason = malformed::<CSpec>(raw, &e, prefix);
            return cilium_fail_closed(obj, raw, prefix, &reason);
        }
    };
    match cilium_read(obj, pods, raw, &spec, prefix) {
        Ok(p) => Ok(p),
        Err(reason) => cilium_fail_closed(obj, raw, prefix, &reason),
    }
}

/// A malformed spec: its subject, if readable, keeps the default deny it would have enforced.
fn cilium_fail_closed(
    obj: &Obj,
    raw: &Value,
    prefix: &str,
    reason: &str,
) -> Result<Policy, String> {
    let has = |k: &str| raw.get(k).is_some();
    let dd = |d: &str| {
        raw.get("enableDefaultDeny")
            .and_then(|x| x.get(d))
            .and_then(Value::as_bool)
    };
    let enforce = |allow: &str, deny: &str, dd: Option<bool>| {
        has(deny) || dd == Some(true) || (has(allow) && dd != Some(false))
    };
    let dirs = (
        enforce("ingress", "ingressDeny", dd("ingress")),
        enforce("egress", "egressDeny", dd("egress")),
    );
    let read = |k: &str| {
        raw.get(k)
            .filter(|v| !v.is_null())
            .map(|v| serde_yaml_ng::from_value::<LabelSelector>(v.clone()).ok())
    };
    let mut ignored = Vec::new();
    let subject = match (read("endpointSelector"), read("nodeSelector")) {
        (Some(Some(es)), None) => cilium_subject(obj, Some(&es), None, prefix, &mut ignored).ok(),
        (None, Some(Some(ns))) => cilium_subject(obj, None, Some(&ns), prefix, &mut ignored).ok(),
        _ => None,
    };
    fail_closed(obj.origin(""), subject, obj.namespace(), dirs, reason)
}

/// Unknown fields of one spec, sorted by where they are.
#[derive(Default)]
struct Unknown {
    /// By (section, rule index): paths inside the rule.
    rules: BTreeMap<(String, usize), Vec<String>>,
    /// In the subject's selectors.
    subject: Vec<String>,
    /// Anywhere else.
    other: Vec<String>,
}

impl Unknown {
    fn of(raw: &Value, known: &Value, sections: &[&str], subject: &[&str]) -> Unknown {
        let mut paths = Vec::new();
        unknown_paths(raw, known, "", &mut paths);
        let mut u = Unknown::default();
        for p in paths {
            match split_path(&p) {
                (s, Some(i), rest) if sections.contains(&s) && !rest.is_empty() => {
                    u.rules
                        .entry((s.to_string(), i))
                        .or_default()
                        .push(rest.to_string());
                }
                (s, _, _) if subject.contains(&s) => u.subject.push(p),
                _ => u.other.push(p),
            }
        }
        u
    }

    fn rule(&self, section: &str, i: usize) -> &[String] {
        self.rules
            .get(&(section.to_string(), i))
            .map_or(&[], Vec::as_slice)
    }
}

const CILIUM_SECTIONS: [&str; 4] = ["ingress", "ingressDeny", "egress", "egressDeny"];

/// Reads a well-typed spec; `Err` makes it fail closed.
fn cilium_read(
    obj: &Obj,
    pods: &[PodPorts],
    raw: &Value,
    spec: &CSpec,
    prefix: &str,
) -> Result<Policy, String> {
    let known = serde_yaml_ng::to_value(spec).map_err(|e| format!("{prefix}{e}"))?;
    let unknown = Unknown::of(
        raw,
        &known,
        &CILIUM_SECTIONS,
        &["endpointSelector", "nodeSelector"],
    );
    let mut warnings = Vec::new();
    if !unknown.other.is_empty() {
        warnings.push(format!(
            "{prefix}unknown fields ignored: {}",
            unknown.other.join(", ")
        ));
    }
    let (subject, node_selector) = cilium_subject(
        obj,
        spec.endpoint_selector.as_ref(),
        spec.node_selector.as_ref(),
        prefix,
        &mut warnings,
    )?;
    if !unknown.subject.is_empty() {
        return Err(format!(
            "{prefix}unknown fields in the subject's selector ({}): it may select more than \
             meant",
            unknown.subject.join(", ")
        ));
    }
    let dd = spec.enable_default_deny.as_ref();
    let enforce = |allow: bool, deny: bool, dd: Option<bool>| match dd {
        Some(on) => on,
        None => allow || deny,
    };
    let policy = Policy {
        origin: obj.origin(""),
        subject,
        node_selector,
        enforce_ingress: enforce(
            spec.ingress.is_some() || raw.get("ingress").is_some(),
            spec.ingress_deny.is_some() || raw.get("ingressDeny").is_some(),
            dd.and_then(|d| d.ingress),
        ),
        enforce_egress: enforce(
            spec.egress.is_some() || raw.get("egress").is_some(),
            spec.egress_deny.is_some() || raw.get("egressDeny").is_some(),
            dd.and_then(|d| d.egress),
        ),
        ingress: Vec::new(),
        egress: Vec::new(),
        warnings,
    };
    let scope = CScope {
        ns: obj.namespace(),
        matches_init: policy.subject.reqs.iter().any(|r| r.key == "reserved:init"),
    };
    let mut b = Builder { pods, policy };
    fn ingress(l: &Option<Vec<CIngress>>) -> Vec<CRule<'_>> {
        l.iter().flatten().map(CIngress::common).collect()
    }
    fn egress(l: &Option<Vec<CEgress>>) -> Vec<CRule<'_>> {
        l.iter().flatten().map(CEgress::common).collect()
    }
    let sections = [
        (
            "ingress",
            Direction::Ingress,
            Action::Allow,
            ingress(&spec.ingress),
        ),
        (
            "ingressDeny",
            Direction::Ingress,
            Action::Deny,
            ingress(&spec.ingress_deny),
        ),
        (
            "egress",
            Direction::Egress,
            Action::Allow,
            egress(&spec.egress),
        ),
        (
            "egressDeny",
            Direction::Egress,
            Action::Deny,
            egress(&spec.egress_deny),
        ),
    ];
    for (section, d, action, rules) in &sections {
        let (d, action) = (*d, *action);
        // Requirements of the whole section.
        let mut requires = Vec::new();
        let mut broadened = false;
        for (i, r) in rules.iter().enumerate() {
            let req_field = field(d, "Requires");
            for (j, ls) in r.requires.iter().flatten().enumerate() {
                let path = format!("{prefix}{section}[{i}].{req_field}[{j}]");
                let sel = selector(ls, &cilium_key, &path)?;
                requires.push(scope.scope(sel, true));
            }
            broadened |= unknown
                .rule(section, i)
                .iter()
                .any(|p| p.starts_with(&req_field));
        }
        if broadened && action == Action::Allow {
            b.warn(format!(
                "{prefix}{section}: unknown fields in {}: every rule of the section allows \
                 nothing (fail closed)",
                field(d, "Requires")
            ));
            continue;
        }
        for (i, r) in rules.iter().enumerate() {
            let rule = format!("{prefix}{section}[{i}]");
            let unknown = unknown.rule(section, i);
            if let Some(rin) = cilium_rule(&mut b, &scope, r, action, rule, unknown)? {
                b.add(d, rin, &requires);
            }
        }
    }
    Ok(b.policy)
}

/// One rule; `Ok(None)` when it allows nothing.
fn cilium_rule(
    b: &mut Builder,
    scope: &CScope,
    r: &CRule,
    action: Action,
    rule: String,
    unknown: &[String],
) -> Result<Option<RuleIn>, String> {
    let d = r.dir;
    let allow = action == Action::Allow;
    let mut any_peer = false;
    let mut all_ports = false;
    if !unknown.is_empty() {
        if allow {
            b.warn(format!(
                "{rule}: unknown fields ({}): this rule allows nothing (fail closed)",
                unknown.join(", ")
            ));
            return Ok(None);
        }
        let peer_fields =
            ["Endpoints", "Requires", "Entities", "CIDR", "CIDRSet"].map(|f| field(d, f));
        for p in unknown {
            let head = split_path(p).0;
            if head == "toPorts" {
                all_ports = true;
            } else if !peer_fields.iter().any(|f| f == head) {
                any_peer = true;
            }
        }
        b.warn(format!(
            "{rule}: unknown fields ({}): the deny is widened to {} (fail closed)",
            unknown.join(", "),
            match (any_peer, all_ports) {
                (true, true) => "every peer and port",
                (true, false) => "every peer",
                (false, true) => "every port",
                (false, false) => "what the rest of the rule selects",
            }
        ));
    }
    if written(r.authentication.as_ref()) {
        if allow {
            b.warn(format!(
                "{rule}: authentication is not supported: this rule allows nothing (fail closed)"
            ));
            return Ok(None);
        }
        b.warn(format!("{rule}: authentication ignored in a deny rule"));
    }
    let icmps = written(r.icmps.as_ref());
    let has_ports = r.to_ports.as_ref().is_some_and(|p| !p.is_empty());
    if icmps {
        if allow && !has_ports {
            b.warn(format!(
                "{rule}: ICMP rules are not supported: this rule allows nothing (fail closed)"
            ));
            return Ok(None);
        }
        if allow {
            b.warn(format!(
                "{rule}: ICMP rules are not supported: only its toPorts are allowed"
            ));
        } else {
            b.warn(format!(
                "{rule}: ICMP rules are not supported: the deny covers every protocol and port \
                 (fail closed)"
            ));
            all_ports = true;
        }
    }

    let mut peers = Vec::new();
    let mut l3 = false;
    let ep_field = field(d, "Endpoints");
    for (j, ls) in r.endpoints.iter().flatten().enumerate() {
        l3 = true;
        let sel = selector(ls, &cilium_key, &format!("{rule}.{ep_field}[{j}]"))?;
        peers.push(Peer::Endpoints(scope.scope(sel, false)));
    }
    let ent_field = field(d, "Entities");
    for (j, e) in r.entities.iter().flatten().enumerate() {
        l3 = true;
        let path = format!("{rule}.{ent_field}[{j}]");
        if let Some(ent) = Entity::parse(e) {
            peers.push(Peer::Entity(ent));
            continue;
        }
        match (e.as_str(), allow) {
            ("kube-apiserver", true) => b.warn(format!(
                "{path}: entity kube-apiserver is not supported; it allows nothing (fail closed)"
            )),
            ("kube-apiserver", false) => {
                b.warn(format!(
                    "{path}: entity kube-apiserver is not supported; the deny covers host, \
                     remote-node and world instead (fail closed)"
                ));
                peers.extend(nodes());
                peers.push(Peer::Entity(Entity::World));
            }
            ("ingress", _) => b.warn(format!(
                "{path}: entity ingress (Cilium's Envoy) does not exist in Vireo; it matches \
                 nothing"
            )),
            (other, _) => return Err(format!("{path}: unknown entity {other:?}")),
        }
    }
    let cidr_field = field(d, "CIDR");
    let mut ignored = Vec::new();
    for (j, c) in r.cidr.iter().flatten().enumerate() {
        l3 = true;
        let path = format!("{rule}.{cidr_field}[{j}]");
        peers.extend(cidr_peer(c, &[], &path, &mut ignored)?);
    }
    let set_field = field(d, "CIDRSet");
    for (j, c) in r.cidr_set.iter().flatten().enumerate() {
        l3 = true;
        let path = format!("{rule}.{set_field}[{j}]");
        match &c.cidr {
            Some(net) => {
                let except = c.except.clone().unwrap_or_default();
                peers.extend(cidr_peer(net, &except, &path, &mut ignored)?);
            }
            None if written(c.cidr_group_ref.as_ref())
                || written(c.cidr_group_selector.as_ref()) =>
            {
                if allow {
                    b.warn(format!(
                        "{path}: CIDR groups are not supported; it allows nothing (fail closed)"
                    ));
                } else {
                    b.warn(format!(
                        "{path}: CIDR groups are not supported; the deny covers world instead \
                         (fail closed)"
                    ));
                    peers.push(Peer::Entity(Entity::World));
                }
            }
            None => return Err(format!("{path}: cidr is missing")),
        }
    }
    for w in ignored {
        b.warn(w);
    }
    for (f, superset) in &r.unsupported {
        l3 = true;
        if allow {
            b.warn(format!(
                "{rule}: {f} is not supported; it allows nothing (fail closed)"
            ));
        } else {
            b.warn(format!(
                "{rule}: {f} is not supported; the deny covers a superset instead (fail closed)"
            ));
            peers.extend(superset.iter().cloned());
        }
    }
    if any_peer {
        peers = vec![Peer::Any];
        l3 = true;
    }

    let ports = if all_ports {
        // `Some` keeps a rule without peers an L4-only (any peer) rule.
        Some(vec![PortIn {
            num: PortNum::All,
            proto: Proto::Any,
            l7: false,
        }])
    } else {
        cilium_ports(b, r.to_ports, allow, &rule)?
    };
    Ok(Some(RuleIn {
        action,
        rule,
        peers,
        l3,
        ports,
    }))
}

/// The `toPorts` of a rule; `None`: every port.
fn cilium_ports(
    b: &mut Builder,
    to_ports: &Option<Vec<CPortRule>>,
    allow: bool,
    rule: &str,
) -> Result<Option<Vec<PortIn>>, String> {
    let Some(list) = to_ports.as_ref().filter(|l| !l.is_empty()) else {
        return Ok(None);
    };
    let mut out = Vec::new();
    for (j, pr) in list.iter().enumerate() {
        let path = format!("{rule}.toPorts[{j}]");
        let l7 = pr.rules.as_ref().is_some_and(|v| !v.is_null())
            || written(pr.terminating_tls.as_ref())
            || written(pr.originating_tls.as_ref())
            || written(pr.server_names.as_ref())
            || written(pr.listener.as_ref());
        if l7 && !allow {
            b.warn(format!(
                "{path}: L7 settings in a deny rule are ignored; the whole port is denied"
            ));
        }
        let ports = pr.ports.as_deref().unwrap_or_default();
        if ports.is_empty() {
            out.push(PortIn {
                num: PortNum::All,
                proto: Proto::Any,
                l7: l7 && allow,
            });
        }
        for (k, p) in ports.iter().enumerate() {
            let path = format!("{path}.ports[{k}]");
            let proto = match p.protocol.as_deref() {
                None => Proto::Any,
                Some(s) => match Proto::parse(s) {
                    Some(p) => p,
                    None if ["SCTP", "ICMP", "ICMPV6"]
                        .contains(&s.to_ascii_uppercase().as_str()) =>
                    {
                        if allow {
                            b.warn(format!(
                                "{path}: protocol {s} is not supported; it allows nothing \
                                 (fail closed)"
                            ));
                            continue;
                        }
                        b.warn(format!(
                            "{path}: protocol {s} is not supported; the deny covers every \
                             protocol (fail closed)"
                        ));
                        Proto::Any
                    }
                    None => return Err(format!("{path}: unknown protocol {s:?}")),
                },
            };
            let num = match &p.port {
                None => None,
                Some(StrOrNum::Num(n)) => Some(Ok(*n)),
                Some(StrOrNum::Str(s)) if s.trim().is_empty() => None,
                Some(StrOrNum::Str(s)) => Some(s.trim().parse::<i64>().map_err(|_| s.clone())),
            };
            let num = match num {
                None | Some(Ok(0)) => {
                    if p.end_port.is_some_and(|e| e != 0) {
                        b.warn(format!("{path}: endPort without port is ignored"));
                    }
                    PortNum::All
                }
                Some(Ok(n)) => {
                    let lo = port_number(n, &format!("{path}.port"))?;
                    let hi = match p.end_port {
                        None | Some(0) => lo,
                        Some(e) => {
                            let hi = port_number(e, &format!("{path}.endPort"))?;
                            if hi < lo {
                                return Err(format!("{path}: endPort {hi} is below port {lo}"));
                            }
                            hi
                        }
                    };
                    PortNum::Range(lo, hi)
                }
                Some(Err(name)) => {
                    if p.end_port.is_some_and(|e| e != 0) {
                        return Err(format!("{path}: endPort with the named port {name:?}"));
                    }
                    PortNum::Named(name)
                }
            };
            out.push(PortIn {
                num,
                proto,
                l7: l7 && allow,
            });
        }
    }
    Ok(Some(out))
}

/// A port number 1..=65535.
fn port_number(n: i64, path: &str) -> Result<u16, String> {
    crate::services::port_number(n).ok_or_else(|| format!("{path}: {n} is not a port number"))
}

// ---------------------------------------------------------------------------------------------
// Kubernetes NetworkPolicy (networking.k8s.io/v1).

/// One NetworkPolicy.
fn network_policy(obj: &Obj, pods: &[PodPorts]) -> Result<Policy, String> {
    let np: NetworkPolicy = match serde_yaml_ng::from_value(obj.doc.value.clone()) {
        Ok(np) => np,
        Err(e) => {
            let reason = malformed::<NetworkPolicy>(&obj.doc.value, &e, "");
            let reason = reason.strip_prefix("spec.").unwrap_or(&reason).to_string();
            return np_fail_closed(obj, &reason);
        }
    };
    match np_read(obj, pods, np) {
        Ok(p) => Ok(p),
        Err(reason) => np_fail_closed(obj, &reason),
    }
}

/// A malformed NetworkPolicy keeps the default deny it would have enforced.
fn np_fail_closed(obj: &Obj, reason: &str) -> Result<Policy, String> {
    let ns = obj.namespace().unwrap_or("default");
    let spec = obj.doc.value.get("spec");
    let get = |k: &str| spec.and_then(|s| s.get(k)).filter(|v| !v.is_null());
    let types: Vec<String> = get("policyTypes")
        .and_then(Value::as_sequence)
        .map(|s| {
            s.iter()
                .filter_map(Value::as_str)
                .map(str::to_ascii_lowercase)
                .collect()
        })
        .unwrap_or_default();
    let egress = types.iter().any(|t| t == "egress") || get("egress").is_some();
    // Ingress unless the types say Egress only.
    let ingress = types.iter().any(|t| t == "ingress")
        || get("ingress").is_some()
        || !types.iter().any(|t| t == "egress");
    let subject = match get("podSelector") {
        None => Some(Selector::all()),
        Some(v) => serde_yaml_ng::from_value::<LabelSelector>(v.clone())
            .ok()
            .and_then(|ls| selector(&ls, &pod_key, "podSelector").ok()),
    };
    let subject = subject.map(|s| (s.and(&in_namespace(ns)), None));
    fail_closed(obj.origin(""), subject, Some(ns), (ingress, egress), reason)
}

/// Reads a well-typed NetworkPolicy; `Err` makes it fail closed.
fn np_read(obj: &Obj, pods: &[PodPorts], np: NetworkPolicy) -> Result<Policy, String> {
    let ns = obj.namespace().unwrap_or("default").to_string();
    let mut warnings = Vec::new();
    let raw = obj.doc.value.get("spec").filter(|v| !v.is_null());
    if raw.is_none() {
        warnings.push("no spec: it selects every pod of its namespace for ingress".into());
    }
    let spec = np.spec.unwrap_or_default();
    let known = serde_yaml_ng::to_value(&spec).map_err(|e| e.to_string())?;
    let unknown = Unknown::of(
        raw.unwrap_or(&Value::Null),
        &known,
        &["ingress", "egress"],
        &["podSelector"],
    );
    if !unknown.other.is_empty() {
        warnings.push(format!(
            "unknown fields ignored: {}",
            unknown.other.join(", ")
        ));
    }
    if !unknown.subject.is_empty() {
        return Err(format!(
            "unknown fields in podSelector ({}): it may select more than meant",
            unknown.subject.join(", ")
        ));
    }
    let pod_sel = spec.pod_selector.clone().unwrap_or_default();
    let subject = selector(&pod_sel, &pod_key, "podSelector")?.and(&in_namespace(&ns));
    let ingress_rules = spec.ingress.unwrap_or_default();
    let egress_rules = spec.egress.unwrap_or_default();
    let (ingress, egress) = match spec.policy_types.as_deref() {
        None | Some([]) => (true, !egress_rules.is_empty()),
        Some(types) => {
            let (mut i, mut e) = (false, false);
            for (k, t) in types.iter().enumerate() {
                match t.as_str() {
                    "Ingress" => i = true,
                    "Egress" => e = true,
                    other => {
                        return Err(format!("policyTypes[{k}]: unknown policy type {other:?}"))
                    }
                }
            }
            (i, e)
        }
    };
    let mut b = Builder {
        pods,
        policy: Policy {
            origin: obj.origin(""),
            subject,
            node_selector: None,
            enforce_ingress: ingress,
            enforce_egress: egress,
            ingress: Vec::new(),
            egress: Vec::new(),
            warnings,
        },
    };
    let sections = [
        (
            Direction::Ingress,
            "ingress",
            ingress,
            ingress_rules
                .into_iter()
                .map(|r| (r.from, r.ports))
                .collect::<Vec<_>>(),
        ),
        (
            Direction::Egress,
            "egress",
            egress,
            egress_rules
                .into_iter()
                .map(|r| (r.to, r.ports))
                .collect::<Vec<_>>(),
        ),
    ];
    for (d, section, on, rules) in sections {
        if !on {
            if !rules.is_empty() {
                b.warn(format!(
                    "{section} rules ignored: policyTypes does not include {}",
                    if d == Direction::Ingress {
                        "Ingress"
                    } else {
                        "Egress"
                    }
                ));
            }
            continue;
        }
        for (i, (peers, ports)) in rules.into_iter().enumerate() {
            let rule = format!("{section}[{i}]");
            let unknown = unknown.rule(section, i);
            if !unknown.is_empty() {
                b.warn(format!(
                    "{rule}: unknown fields ({}): this rule allows nothing (fail closed)",
                    unknown.join(", ")
                ));
                continue;
            }
            let rin = np_rule(&mut b, &ns, d, rule, peers, ports)?;
            b.add(d, rin, &[]);
        }
    }
    Ok(b.policy)
}

/// One ingress or egress rule of a NetworkPolicy.
fn np_rule(
    b: &mut Builder,
    ns: &str,
    d: Direction,
    rule: String,
    peers: Option<Vec<NetworkPolicyPeer>>,
    ports: Option<Vec<NetworkPolicyPort>>,
) -> Result<RuleIn, String> {
    let peer_field = field(d, "");
    let peers = peers.unwrap_or_default();
    let mut out = Vec::new();
    if peers.is_empty() {
        out.push(Peer::Any);
    }
    for (j, p) in peers.iter().enumerate() {
        let path = format!("{rule}.{peer_field}[{j}]");
        match (&p.ip_block, &p.pod_selector, &p.namespace_selector) {
            (Some(ip), None, None) => {
                let mut w = Vec::new();
                let except = ip.except.clone().unwrap_or_default();
                out.extend(cidr_peer(
                    &ip.cidr,
                    &except,
                    &format!("{path}.ipBlock"),
                    &mut w,
                )?);
                for w in w {
                    b.warn(w);
                }
            }
            (Some(_), _, _) => {
                return Err(format!(
                    "{path}: ipBlock cannot be combined with podSelector or namespaceSelector"
                ))
            }
            (None, None, None) => return Err(format!("{path}: empty peer")),
            (None, pod, nsel) => {
                let mut sel = Selector::all();
                if let Some(pod) = pod {
                    sel = sel.and(&selector(pod, &pod_key, &format!("{path}.podSelector"))?);
                }
                match nsel {
                    None => sel = sel.and(&in_namespace(ns)),
                    Some(n) => {
                        let nsel =
                            selector(n, &namespace_key, &format!("{path}.namespaceSelector"))?;
                        sel = sel.and(&nsel).and(&any_pod());
                    }
                }
                out.push(Peer::Endpoints(sel));
            }
        }
    }
    let ports = ports.unwrap_or_default();
    let ports = if ports.is_empty() {
        None
    } else {
        let mut list = Vec::new();
        for (k, p) in ports.iter().enumerate() {
            let path = format!("{rule}.ports[{k}]");
            let proto = match p.protocol.as_deref().unwrap_or("TCP") {
                s if s.eq_ignore_ascii_case("TCP") => Proto::Tcp,
                s if s.eq_ignore_ascii_case("UDP") => Proto::Udp,
                s if s.eq_ignore_ascii_case("SCTP") => {
                    b.warn(format!(
                        "{path}: protocol SCTP is not supported; it allows nothing (fail closed)"
                    ));
                    continue;
                }
                other => return Err(format!("{path}: unknown protocol {other:?}")),
            };
            let num = match &p.port {
                None => {
                    if p.end_port.is_some() {
                        return Err(format!("{path}: endPort without port"));
                    }
                    PortNum::All
                }
                Some(IntOrString::Int(n)) => np_range(i64::from(*n), p.end_port, &path)?,
                Some(IntOrString::String(s)) => match s.trim().parse::<i64>() {
                    Ok(n) => np_range(n, p.end_port, &path)?,
                    Err(_) if s.trim().is_empty() => return Err(format!("{path}: empty port")),
                    Err(_) => {
                        if p.end_port.is_some() {
                            return Err(format!("{path}: endPort with the named port {s:?}"));
                        }
                        PortNum::Named(s.trim().to_string())
                    }
                },
            };
            list.push(PortIn {
                num,
                proto,
                l7: false,
            });
        }
        Some(list)
    };
    Ok(RuleIn {
        action: Action::Allow,
        rule,
        peers: out,
        l3: true,
        ports,
    })
}

/// `port` (and `endPort`) of a NetworkPolicy port.
fn np_range(port: i64, end: Option<i32>, path: &str) -> Result<PortNum, String> {
    let lo = port_number(port, &format!("{path}.port"))?;
    let hi = match end {
        None => lo,
        Some(e) => {
            let hi = port_number(i64::from(e), &format!("{path}.endPort"))?;
            if hi < lo {
                return Err(format!("{path}: endPort {hi} is below port {lo}"));
            }
            hi
        }
    };
    Ok(PortNum::Range(lo, hi))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::path::Path;

    use vireo_policy::{decide, Decision, Identity, PeerInfo, Verdict};

    use super::*;
    use crate::source::load_text;

    const IN: Direction = Direction::Ingress;
    const OUT: Direction = Direction::Egress;
    use vireo_lb::service::{TCP, UDP};

    fn load(yaml: &str) -> (Manifests, PolicySet) {
        let mut m = Manifests::default();
        load_text(&mut m, yaml, Path::new("p.yaml"));
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        let set = policies(&m);
        (m, set)
    }

    /// The security labels of a pod in `ns` (with the namespace's labels from `m`).
    fn pod(m: &Manifests, ns: &str, labels: &[(&str, &str)]) -> Labels {
        let own: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Labels::for_pod(ns, &own, &namespace_labels(m, ns))
    }

    fn peer(labels: Labels) -> PeerInfo {
        PeerInfo {
            identity: Identity(1000),
            labels,
            ip: Ipv4Addr::new(10, 244, 1, 10),
        }
    }

    fn reserved(name: &str) -> PeerInfo {
        PeerInfo {
            identity: Identity::reserved(name).unwrap(),
            labels: Labels::new([(format!("reserved:{name}"), String::new())]),
            ip: Ipv4Addr::new(192, 168, 100, 1),
        }
    }

    fn world(ip: [u8; 4]) -> PeerInfo {
        PeerInfo {
            ip: Ipv4Addr::from(ip),
            ..reserved("world")
        }
    }

    fn decision(
        set: &PolicySet,
        ep: &Labels,
        d: Direction,
        p: &PeerInfo,
        proto: u8,
        port: u16,
    ) -> Decision {
        decide(&set.policies, ep, d, p, proto, port)
    }

    fn allowed(
        set: &PolicySet,
        ep: &Labels,
        d: Direction,
        p: &PeerInfo,
        proto: u8,
        port: u16,
    ) -> bool {
        decision(set, ep, d, p, proto, port).verdict == Verdict::Allowed
    }

    fn warned(set: &PolicySet, what: &[&str]) {
        assert!(
            set.warnings
                .iter()
                .any(|w| what.iter().all(|s| w.contains(s))),
            "no warning with {what:?} in {:#?}",
            set.warnings
        );
    }

    fn cnp(ns: &str, name: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, \
             namespace: {ns}}}\nspec:\n{spec}\n"
        )
    }

    fn ccnp(name: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: \
             {{name: {name}}}\nspec:\n{spec}\n"
        )
    }

    fn np(ns: &str, name: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: \
             {name}, namespace: {ns}}}\nspec:\n{spec}\n"
        )
    }

    const NAMESPACES: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: red}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {team: blue}}
";

    #[test]
    fn match_expressions_each_operator() {
        let (m, set) = load(&cnp(
            "x",
            "ops",
            "  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints:
    - matchExpressions:
      - {key: tier, operator: In, values: [a, b]}
      - {key: env, operator: NotIn, values: [dev]}
      - {key: team, operator: Exists}
      - {key: legacy, operator: DoesNotExist}",
        ));
        assert!(set.warnings.is_empty(), "{:?}", set.warnings);
        let web = pod(&m, "x", &[("app", "web")]);
        let base = [("tier", "a"), ("env", "prod"), ("team", "t")];
        let ok = |extra: &[(&str, &str)], drop: &str| {
            let mut l: Vec<(&str, &str)> =
                base.iter().copied().filter(|(k, _)| *k != drop).collect();
            l.extend_from_slice(extra);
            allowed(&set, &web, IN, &peer(pod(&m, "x", &l)), TCP, 80)
        };
        assert!(ok(&[], ""), "all requirements hold");
        assert!(ok(&[], "env"), "NotIn holds when the key is absent");
        assert!(!ok(&[("tier", "c")], "tier"), "In: other value");
        assert!(!ok(&[], "tier"), "In: key absent");
        assert!(!ok(&[("env", "dev")], "env"), "NotIn: excluded value");
        assert!(!ok(&[], "team"), "Exists: key absent");
        assert!(!ok(&[("legacy", "1")], ""), "DoesNotExist: key present");
    }

    #[test]
    fn label_sources_and_implicit_namespace() {
        let (m, set) = load(&format!(
            "{NAMESPACES}{}",
            cnp(
                "x",
                "src",
                "  endpointSelector: {matchLabels: {k8s:app: web}}
  ingress:
  - fromEndpoints:
    - matchLabels: {k8s:app: a}
    - matchLabels: {any:app: b}
    - matchLabels: {reserved:host: ''}
    - matchLabels: {app: c, io.kubernetes.pod.namespace: y}
    - matchLabels: {app: d, io.cilium.k8s.namespace.labels.team: blue}
  egress:
  - toEndpoints: [{}]"
            )
        ));
        assert!(set.warnings.is_empty(), "{:?}", set.warnings);
        let web = pod(&m, "x", &[("app", "web")]);
        let web_y = pod(&m, "y", &[("app", "web")]);
        let from = |ns: &str, app: &str| {
            allowed(&set, &web, IN, &peer(pod(&m, ns, &[("app", app)])), TCP, 80)
        };
        // The subject is in the policy's namespace only.
        assert!(!decision(&set, &web_y, IN, &reserved("world"), TCP, 80).enforced);
        assert!(decision(&set, &web, IN, &reserved("world"), TCP, 80).enforced);
        // Peers: the policy's namespace unless the selector names one.
        assert!(from("x", "a") && !from("y", "a"));
        assert!(from("x", "b") && !from("y", "b"));
        assert!(from("y", "c") && !from("x", "c"));
        assert!(
            from("y", "d") && !from("x", "d"),
            "namespace label selects y"
        );
        // Sources: `k8s:` only matches the k8s source, `any:` every source.
        let unspec = |app: &str| {
            let l = Labels::new([
                ("unspec:app", app),
                ("k8s:io.kubernetes.pod.namespace", "x"),
            ]);
            allowed(&set, &web, IN, &peer(l), TCP, 80)
        };
        assert!(!unspec("a") && unspec("b"));
        // Reserved labels: no namespace added.
        assert!(allowed(&set, &web, IN, &reserved("host"), TCP, 80));
        assert!(!allowed(&set, &web, IN, &reserved("remote-node"), TCP, 80));
        // toEndpoints `{}`: every pod of the namespace, nothing else.
        let to = |p: &PeerInfo| allowed(&set, &web, OUT, p, TCP, 443);
        assert!(to(&peer(pod(&m, "x", &[("app", "z")]))));
        assert!(!to(&peer(pod(&m, "y", &[("app", "z")]))));
        assert!(!to(&reserved("world")) && !to(&reserved("host")));
    }

    #[test]
    fn from_requires_limits_every_endpoint_rule_of_the_direction() {
        let (m, set) = load(&cnp(
            "x",
            "req",
            "  endpointSelector: {matchLabels: {env: prod}}
  ingress:
  - fromRequires: [{matchLabels: {env: prod}}]
  - fromEndpoints: [{matchLabels: {role: frontend}}]
  - toPorts: [{ports: [{port: '9090'}]}]
  - fromEntities: [host]
  egress:
  - toRequires: [{matchLabels: {env: prod}}]
    toEndpoints: [{matchLabels: {role: db}}]",
        ));
        assert!(set.warnings.is_empty(), "{:?}", set.warnings);
        let me = pod(&m, "x", &[("env", "prod")]);
        let p = |l: &[(&str, &str)]| peer(pod(&m, "x", l));
        let front_prod = p(&[("role", "frontend"), ("env", "prod")]);
        let front_dev = p(&[("role", "frontend"), ("env", "dev")]);
        assert!(allowed(&set, &me, IN, &front_prod, TCP, 80));
        assert!(!allowed(&set, &me, IN, &front_dev, TCP, 80));
        // The L4-only rule is an endpoint wildcard: the requirement holds there too.
        assert!(allowed(&set, &me, IN, &front_prod, TCP, 9090));
        assert!(!allowed(&set, &me, IN, &front_dev, TCP, 9090));
        // Entities are not endpoint selectors: no requirement (as Cilium).
        assert!(allowed(&set, &me, IN, &reserved("host"), TCP, 80));
        // A requirement alone allows nothing.
        let prod = p(&[("env", "prod")]);
        assert!(!allowed(&set, &me, IN, &prod, TCP, 80));
        // Egress, within one rule.
        assert!(allowed(
            &set,
            &me,
            OUT,
            &p(&[("role", "db"), ("env", "prod")]),
            TCP,
            5432
        ));
        assert!(!allowed(&set, &me, OUT, &p(&[("role", "db")]), TCP, 5432));
    }

    #[test]
    fn every_entity() {
        let names = [
            "host",
            "remote-node",
            "world",
            "health",
            "init",
            "unmanaged",
        ];
        for e in names.iter().chain(&["cluster", "all"]) {
            let (m, set) = load(&cnp(
                "x",
                "ent",
                &format!(
                    "  endpointSelector: {{}}\n  ingress: [{{fromEntities: [{e}]}}]\n  egress: \
                     [{{toEntities: [{e}]}}]"
                ),
            ));
            assert!(set.warnings.is_empty(), "{e}: {:?}", set.warnings);
            let me = pod(&m, "x", &[("app", "a")]);
            let other_pod = peer(pod(&m, "y", &[("app", "b")]));
            for d in [IN, OUT] {
                for n in names {
                    let want = *e == n || *e == "all" || (*e == "cluster" && n != "world");
                    assert_eq!(
                        allowed(&set, &me, d, &reserved(n), TCP, 80),
                        want,
                        "entity {e}, peer {n}, {d:?}"
                    );
                }
                let cidr_id = PeerInfo {
                    identity: Identity(vireo_policy::identity::CIDR_IDENTITY_BASE + 1),
                    ..world([1, 1, 1, 1])
                };
                assert_eq!(
                    allowed(&set, &me, d, &cidr_id, TCP, 80),
                    matches!(*e, "world" | "all"),
                    "entity {e}: a CIDR identity is world"
                );
                assert_eq!(
                    allowed(&set, &me, d, &other_pod, TCP, 80),
                    matches!(*e, "cluster" | "all"),
                    "entity {e}: a pod"
                );
            }
        }
    }

    #[test]
    fn cidr_and_cidr_set_with_except() {
        let (m, set) = load(&cnp(
            "x",
            "cidr",
            "  endpointSelector: {}
  ingress:
  - fromCIDR: [192.168.0.0/16, 172.16.0.1]
  - fromCIDRSet: [{cidr: 10.0.0.0/8, except: [10.96.0.0/12, 10.1.2.3/32]}]
  egress:
  - toCIDRSet: [{cidr: 0.0.0.0/0, except: [169.254.0.0/16]}]
    toPorts: [{ports: [{port: '443', protocol: TCP}]}]",
        ));
        assert!(set.warnings.is_empty(), "{:?}", set.warnings);
        let me = pod(&m, "x", &[]);
        let from = |ip: [u8; 4]| allowed(&set, &me, IN, &world(ip), TCP, 80);
        assert!(from([192, 168, 3, 4]) && from([172, 16, 0, 1]) && !from([172, 16, 0, 2]));
        assert!(from([10, 1, 1, 1]) && from([10, 112, 0, 1]));
        assert!(!from([10, 96, 0, 1]) && !from([10, 111, 255, 255]) && !from([10, 1, 2, 3]));
        assert!(!from([11, 0, 0, 1]));
        // A pod inside the block is not a CIDR peer.
        let pod_in_block = PeerInfo {
            ip: Ipv4Addr::new(10, 1, 1, 1),
            ..peer(pod(&m, "x", &[]))
        };
        assert!(!allowed(&set, &me, IN, &pod_in_block, TCP, 80));
        let to = |ip: [u8; 4], port| allowed(&set, &me, OUT, &world(ip), TCP, port);
        assert!(to([8, 8, 8, 8], 443) && !to([8, 8, 8, 8], 80) && !to([169, 254, 1, 1], 443));
    }

    #[test]
    fn to_ports_end_port_protocols_and_l4_only() {
        let (m, set) = load(&cnp(
            "x",
            "ports",
            "  endpointSelector: {}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts:
    - ports: [{port: '8000', endPort: 8010, protocol: tcp}, {port: 53, protocol: ANY}]
    - ports: [{port: '161', protocol: Udp}]
  - toPorts: [{ports: [{port: '22'}]}]",
        ));
        assert!(set.warnings.is_empty(), "{:?}", set.warnings);
        let me = pod(&m, "x", &[]);
        let a = peer(pod(&m, "x", &[("app", "a")]));
        let ok = |p: &PeerInfo, proto, port| allowed(&set, &me, IN, p, proto, port);
        assert!(ok(&a, TCP, 8000) && ok(&a, TCP, 8005) && ok(&a, TCP, 8010));
        assert!(!ok(&a, TCP, 7999) && !ok(&a, TCP, 8011) && !ok(&a, UDP, 8005));
        assert!(ok(&a, TCP, 53) && ok(&a, UDP, 53) && ok(&a, 132, 53), "ANY");
        assert!(ok(&a, UDP, 161) && !ok(&a, TCP, 161));
        assert!(!ok(&a, TCP, 80));
        // No peer, ports only: every peer, any protocol (no protocol written = ANY).
        for p in [&a, &reserved("world"), &reserved("host")] {
            assert!(ok(p, TCP, 22) && ok(p, UDP, 22));
        }
        assert!(!ok(&reserved("world"), TCP, 8005));
    }

    #[test]
    fn deny_beats_allow_and_selection_defaults() {
        let (m, set) = load(&cnp(
            "x",
            "deny",
            "  endpointSelector: {matchLabels: {app: web}}
  ingress: [{fromEntities: [all]}]
  ingressDeny:
  - fromEndpoints: [{matchLabels: {role: test}}]
  - toPorts: [{ports: [{port: '25', protocol: TCP}]}]",
        ));
        let web = pod(&m, "x", &[("app", "web")]);
        let test = peer(pod(&m, "x", &[("role", "test")]));
        let d = decision(&set, &web, IN, &test, TCP, 80);
        assert_eq!(d.verdict, Verdict::Denied);
        assert_eq!(d.rules.len(), 1);
        assert_eq!(d.rules[0].rule, "ingressDeny[0]");
        assert_eq!(d.rules[0].name, "x/deny");
        assert_eq!(d.rules[0].kind, "CiliumNetworkPolicy");
        assert!(allowed(&set, &web, IN, &reserved("world"), TCP, 80));
        assert!(!allowed(&set, &web, IN, &reserved("world"), TCP, 25));
        // Egress: no section, not enforced.
        let e = decision(&set, &web, OUT, &test, TCP, 80);
        assert!(e.verdict == Verdict::Allowed && !e.enforced);
        // An endpoint no policy selects: default allow.
        let other = pod(&m, "x", &[("app", "other")]);
        let d = decision(&set, &other, IN, &test, TCP, 25);
        assert!(d.verdict == Verdict::Allowed && !d.enforced && d.rules.is_empty());

        // Selected with nothing allowed: default deny (`- {}` and `[]` both enforce).
        let (m, set) = load(&format!(
            "{}{}",
            cnp(
                "x",
                "a",
                "  endpointSelector: {matchLabels: {app: a}}\n  ingress: [{}]"
            ),
            cnp(
                "x",
                "b",
                "  endpointSelector: {matchLabels: {app: b}}\n  egress: []"
            ),
        ));
        let a = pod(&m, "x", &[("app", "a")]);
        let b = pod(&m, "x", &[("app", "b")]);
        let d = decision(&set, &a, IN, &reserved("host"), TCP, 80);
        assert!(d.verdict == Verdict::Denied && d.enforced && d.rules.is_empty());
        assert!(allowed(&set, &a, OUT, &reserved("world"), TCP, 80));
        assert!(!allowed(&set, &b, OUT, &reserved("world"), TCP, 80));
        assert!(allowed(&set, &b, IN, &reserved("world"), TCP, 80));
    }

    #[test]
    fn enable_default_deny() {
        let (m, set) = load(&cnp(
            "x",
            "dd",
            "  endpointSelector: {}
  enableDefaultDeny: {ingress: false, egress: true}
  ingress: [{fromEntities: [host]}]
  ingressDeny: [{fromEntities: [world]}]",
        ));
        let p = &set.policies[0];
        assert!(!p.enforce_ingress && p.enforce_egress);
        let me = pod(&m, "x", &[]);
        assert!(allowed(&set, &me, IN, &reserved("remote-node"), TCP, 80));
        assert!(
            !allowed(&set, &me, IN, &reserved("world"), TCP, 80),
            "denies still apply"
        );
        assert!(!allowed(&set, &me, OUT, &reserved("world"), TCP, 80));
    }

    #[test]
    fn specs_lists() {
        let text = "\
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: two, namespace: x}
specs:
- endpointSelector: {matchLabels: {app: a}}
  ingress: [{fromEndpoints: [{matchLabels: {app: b}}]}]
- endpointSelector: {matchLabels: {app: b}}
  egress: [{toEndpoints: [{matchLabels: {app: a}}]}]
";
        let (m, set) = load(text);
        assert_eq!(set.policies.len(), 2);
        let (a, b) = (pod(&m, "x", &[("app", "a")]), pod(&m, "x", &[("app", "b")]));
        let d = decision(&set, &b, OUT, &peer(a.clone()), TCP, 80);
        assert_eq!(d.verdict, Verdict::Allowed);
        assert_eq!(d.rules[0].rule, "specs[1].egress[0]");
        let d = decision(&set, &a, IN, &peer(b.clone()), TCP, 80);
        assert_eq!(d.rules[0].rule, "specs[0].ingress[0]");
        assert!(!allowed(&set, &a, IN, &peer(a.clone()), TCP, 80));
        assert!(!decision(&set, &a, OUT, &peer(b), TCP, 80).enforced);
    }

    #[test]
    fn l7_rules_fail_closed_with_a_warning() {
        let (m, set) = load(&cnp(
            "x",
            "l7",
            "  endpointSelector: {}
  ingress:
  - fromEndpoints: [{matchLabels: {app: a}}]
    toPorts:
    - ports: [{port: '80', protocol: TCP}]
      rules: {http: [{method: GET, path: /}]}
    - ports: [{port: '81', protocol: TCP}]",
        ));
        warned(
            &set,
            &[
                "CiliumNetworkPolicy x/l7 (p.yaml:2)",
                "ingress[0]: L7 rules are not enforced; port 80/TCP is denied (fail closed)",
            ],
        );
        let p = &set.policies[0];
        assert!(p.ingress[0].ports.iter().any(|pr| pr.lo == 80 && pr.l7));
        assert_eq!(p.warnings.len(), 1);
        let me = pod(&m, "x", &[]);
        let a = peer(pod(&m, "x", &[("app", "a")]));
        assert!(!allowed(&set, &me, IN, &a, TCP, 80));
        assert!(allowed(&set, &me, IN, &a, TCP, 81));
    }

    #[test]
    fn to_fqdns_fail_closed() {
        let (m, set) = load(&cnp(
            "x",
            "fqdn",
            "  endpointSelector: {}
  egress:
  - toFQDNs: [{matchName: example.com}]
    toPorts: [{ports: [{port: '443', protocol: TCP}]}]
  - toEndpoints: [{matchLabels: {app: dns}}]",
        ));
        warned(
            &set,
            &["egress[0]: toFQDNs is not supported", "allows nothing"],
        );
        let me = pod(&m, "x", &[]);
        assert!(!allowed(
            &set,
            &me,
            OUT,
            &world([93, 184, 215, 14]),
            TCP,
            443
        ));
        assert!(!allowed(&set, &me, OUT, &peer(pod(&m, "x", &[])), TCP, 443));
        assert!(allowed(
            &set,
            &me,
            OUT,
            &peer(pod(&m, "x", &[("app", "dns")])),
            UDP,
            53
        ));
        assert_eq!(set.policies[0].egress.len(), 1);
    }

    #[test]
    fn clusterwide_policies() {
        let text = format!(
            "{NAMESPACES}{}{}",
            ccnp(
                "cw",
                "  endpointSelector: {matchLabels: {app: web}}
  ingress:
  - fromEndpoints: [{}]
  - fromEndpoints: [{matchLabels: {role: probe, io.kubernetes.pod.namespace: y}}]
    toPorts: [{ports: [{port: '9000'}]}]"
            ),
            ccnp(
                "hosts",
                "  nodeSelector: {matchLabels: {role: worker}}
  ingress: [{fromEntities: [cluster]}]"
            )
        );
        let (m, set) = load(&text);
        assert!(set.warnings.is_empty(), "{:?}", set.warnings);
        assert_eq!(set.policies.len(), 2);
        let host = set
            .policies
            .iter()
            .find(|p| p.origin.name == "hosts")
            .unwrap();
        assert_eq!(host.node_selector, Some(Selector::label("role", "worker")));
        assert!(host.subject.is_all() && host.enforce_ingress);
        assert_eq!(host.origin.kind, "CiliumClusterwideNetworkPolicy");
        // No implicit namespace: web pods of every namespace are selected; any pod may
        // reach them, reserved identities may not (Cilium adds "is a pod" to `{}`).
        for ns in ["x", "y"] {
            let web = pod(&m, ns, &[("app", "web")]);
            assert!(allowed(&set, &web, IN, &peer(pod(&m, "x", &[])), TCP, 80));
            assert!(allowed(&set, &web, IN, &peer(pod(&m, "y", &[])), TCP, 80));
            assert!(!allowed(&set, &web, IN, &reserved("host"), TCP, 80));
        }
        // The host policy does not select pods.
        let other = pod(&m, "x", &[("role", "worker")]);
        assert!(!decision(&set, &other, IN, &reserved("world"), TCP, 80).enforced);
    }

    #[test]
    fn network_policy_selectors_or_and() {
        let text = format!(
            "{NAMESPACES}{}{}",
            np(
                "x",
                "or",
                "  podSelector: {matchLabels: {app: or}}
  ingress:
  - from:
    - podSelector: {matchLabels: {role: client}}
    - namespaceSelector: {matchLabels: {team: blue}}"
            ),
            np(
                "x",
                "and",
                "  podSelector: {matchLabels: {app: and}}
  ingress:
  - from:
    - podSelector: {matchLabels: {role: client}}
      namespaceSelector: {matchLabels: {team: blue}}
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: x}}
      podSelector: {matchExpressions: [{key: role, operator: In, values: [admin]}]}"
            )
        );
        let (m, set) = load(&text);
        assert!(set.warnings.is_empty(), "{:?}", set.warnings);
        let client = |ns: &str| peer(pod(&m, ns, &[("role", "client")]));
        let plain = |ns: &str| peer(pod(&m, ns, &[]));
        let or = pod(&m, "x", &[("app", "or")]);
        assert!(
            allowed(&set, &or, IN, &client("x"), TCP, 80),
            "pod selector"
        );
        assert!(
            !allowed(&set, &or, IN, &client("default"), TCP, 80),
            "own namespace"
        );
        assert!(
            allowed(&set, &or, IN, &plain("y"), TCP, 80),
            "namespace selector"
        );
        assert!(!allowed(&set, &or, IN, &plain("x"), TCP, 80));
        assert!(!allowed(&set, &or, IN, &reserved("world"), TCP, 80));
        let and = pod(&m, "x", &[("app", "and")]);
        assert!(allowed(&set, &and, IN, &client("y"), TCP, 80));
        assert!(!allowed(&set, &and, IN, &client("x"), TCP, 80));
        assert!(!allowed(&set, &and, IN, &plain("y"), TCP, 80));
        assert!(allowed(
            &set,
            &and,
            IN,
            &peer(pod(&m, "x", &[("role", "admin")])),
            TCP,
            80
        ));
        assert!(!allowed(
            &set,
            &and,
            IN,
            &peer(pod(&m, "y", &[("role", "admin")])),
            TCP,
            80
        ));
        // Only the selected pods of the namespace, and only ingress.
        let d = decision(
            &set,
            &pod(&m, "y", &[("app", "or")]),
            IN,
            &plain("x"),
            TCP,
            80,
        );
        assert!(!d.enforced);
        assert!(!decision(&set, &or, OUT, &plain("x"), TCP, 80).enforced);
    }

    #[test]
    fn network_policy_ip_block_ports_and_empty_from() {
        let (m, set) = load(&np(
            "x",
            "ipb",
            "  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]
    ports: [{port: 80}, {protocol: UDP, port: 5000, endPort: 5010}]
  - ports: [{port: 22}]
  egress:
  - {}",
        ));
        assert!(set.warnings.is_empty(), "{:?}", set.warnings);
        let me = pod(&m, "x", &[]);
        let ok = |ip: [u8; 4], proto, port| allowed(&set, &me, IN, &world(ip), proto, port);
        assert!(ok([10, 2, 0, 1], TCP, 80) && !ok([10, 1, 0, 1], TCP, 80));
        assert!(!ok([10, 2, 0, 1], UDP, 80), "protocol defaults to TCP");
        assert!(ok([10, 2, 0, 1], UDP, 5005) && !ok([10, 2, 0, 1], UDP, 5011));
        assert!(!ok([11, 0, 0, 1], TCP, 80));
        // Empty `from`: everyone, on 22/TCP.
        assert!(ok([11, 0, 0, 1], TCP, 22));
        assert!(allowed(&set, &me, IN, &reserved("host"), TCP, 22));
        assert!(!allowed(&set, &me, IN, &reserved("host"), UDP, 22));
        // `egress: [{}]`: everything (policyTypes defaulted to Ingress and Egress).
        let p = &set.policies[0];
        assert!(p.enforce_ingress && p.enforce_egress);
        assert!(allowed(&set, &me, OUT, &reserved("world"), UDP, 9));
    }

    #[test]
    fn network_policy_types() {
        let text = format!(
            "{}{}{}",
            np(
                "x",
                "eg",
                "  podSelector: {matchLabels: {app: eg}}
  policyTypes: [Egress]
  ingress: [{}]
  egress: [{to: [{podSelector: {}}]}]"
            ),
            np(
                "x",
                "noeg",
                "  podSelector: {matchLabels: {app: noeg}}\n  egress: []"
            ),
            np(
                "x",
                "both",
                "  podSelector: {matchLabels: {app: both}}\n  policyTypes: [Ingress, Egress]"
            )
        );
        let (m, set) = load(&text);
        warned(
            &set,
            &[
                "x/eg",
                "ingress rules ignored: policyTypes does not include Ingress",
            ],
        );
        let eg = pod(&m, "x", &[("app", "eg")]);
        let d = decision(&set, &eg, IN, &reserved("world"), TCP, 80);
        assert!(d.verdict == Verdict::Allowed && !d.enforced);
        assert!(allowed(&set, &eg, OUT, &peer(pod(&m, "x", &[])), TCP, 80));
        assert!(!allowed(&set, &eg, OUT, &reserved("world"), TCP, 80));
        let noeg = pod(&m, "x", &[("app", "noeg")]);
        assert!(!decision(&set, &noeg, OUT, &reserved("world"), TCP, 80).enforced);
        assert!(!allowed(&set, &noeg, IN, &reserved("world"), TCP, 80));
        let both = pod(&m, "x", &[("app", "both")]);
        assert!(!allowed(&set, &both, IN, &reserved("host"), TCP, 80));
        assert!(!allowed(&set, &both, OUT, &reserved("host"), TCP, 80));
    }

    const NAMED_PODS: &str = "\
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: x, labels: {app: web}}
spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: web-2, namespace: x, labels: {app: web, v: '2'}}
spec: {containers: [{name: c, image: i, ports: [{name: http, containerPort: 9090}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: y, labels: {app: db}}
spec: {containers: [{name: c, image: i, ports: [{name: sql, containerPort: 5432}]}]}
";

    #[test]
    fn named_ports() {
        let text = format!(
            "{NAMED_PODS}{}{}{}",
            np(
                "x",
                "in",
                "  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress: [{ports: [{port: http}, {port: dns, protocol: UDP}, {port: nope}]}]
  egress:
  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}]
    ports: [{port: sql}]"
            ),
            np(
                "x",
                "one",
                "  podSelector: {matchLabels: {v: '2'}}\n  ingress: [{ports: [{port: http}]}]"
            ),
            np(
                "x",
                "none",
                "  podSelector: {matchLabels: {app: none}}\n  ingress: [{ports: [{port: http}]}]"
            ),
        );
        let (m, set) = load(&text);
        warned(
            &set,
            &["x/in", "ingress[0]: named port \"http\" is 8080, 9090"],
        );
        warned(
            &set,
            &["x/in", "named port \"nope\" matches no container port"],
        );
        warned(
            &set,
            &["x/none", "named port \"http\" matches no container port"],
        );
        let web1 = pod(&m, "x", &[("app", "web")]);
        let w = reserved("world");
        // The subject's pods: 8080 and 9090 (both, for all of them), dns on UDP only.
        assert!(allowed(&set, &web1, IN, &w, TCP, 8080));
        assert!(allowed(&set, &web1, IN, &w, TCP, 9090));
        assert!(allowed(&set, &web1, IN, &w, UDP, 53) && !allowed(&set, &web1, IN, &w, TCP, 53));
        assert!(!allowed(&set, &web1, IN, &w, TCP, 80));
        // Egress: resolved against the peer pods.
        let db = peer(pod(&m, "y", &[("app", "db")]));
        assert!(allowed(&set, &web1, OUT, &db, TCP, 5432));
        assert!(!allowed(&set, &web1, OUT, &db, TCP, 8080));
        // A subject with only web-2: 9090 only.
        let p = set
            .policies
            .iter()
            .find(|p| p.origin.name == "x/one")
            .unwrap();
        assert_eq!(p.ingress[0].ports.len(), 1);
        assert_eq!(
            (p.ingress[0].ports[0].lo, p.ingress[0].ports[0].proto),
            (9090, Proto::Tcp)
        );
        // Nothing resolves: the rule allows nothing (and is not "every port").
        let p = set
            .policies
            .iter()
            .find(|p| p.origin.name == "x/none")
            .unwrap();
        assert!(p.ingress.is_empty() && p.enforce_ingress);
    }

    #[test]
    fn cilium_named_ports() {
        let text = format!(
            "{NAMED_PODS}{}",
            cnp(
                "x",
                "n",
                "  endpointSelector: {matchLabels: {app: web}}
  ingress: [{toPorts: [{ports: [{port: dns}]}]}]"
            )
        );
        let (m, set) = load(&text);
        let web = pod(&m, "x", &[("app", "web")]);
        let w = reserved("world");
        assert!(allowed(&set, &web, IN, &w, UDP, 53));
        assert!(
            !allowed(&set, &web, IN, &w, TCP, 53),
            "the container port's protocol"
        );
    }

    #[test]
    fn malformed_policies_fail_closed_with_warnings() {
        let text = format!(
            "{NAMESPACES}{}{}{}{}{}{}{}",
            cnp(
                "x",
                "badcidr",
                "  endpointSelector: {matchLabels: {app: a}}
  ingress: [{fromCIDR: [10.0.0.0/33]}]"
            ),
            cnp(
                "x",
                "badop",
                "  endpointSelector: {matchLabels: {app: b}}
  egress: [{toEndpoints: [{matchExpressions: [{key: k, operator: Near, values: [v]}]}]}]"
            ),
            cnp(
                "x",
                "badtype",
                "  endpointSelector: {matchLabels: {app: c}}
  ingress: [{toPorts: 7}]"
            ),
            cnp(
                "x",
                "badsubject",
                "  endpointSelector: {matchExpressions: [{key: k, operator: In}]}
  ingress: [{fromEntities: [world]}]"
            ),
            ccnp(
                "badcw",
                "  endpointSelector: 5
  ingress: [{fromEntities: [world]}]"
            ),
            np(
                "x",
                "badnp",
                "  podSelector: {matchLabels: {app: d}}
  ingress: [{from: [{ipBlock: {cidr: nonsense}}]}]"
            ),
            np(
                "x",
                "badport",
                "  podSelector: {matchLabels: {app: e}}
  policyTypes: [Egress]
  egress: [{ports: [{port: 70000}]}]"
            ),
        );
        let (m, set) = load(&text);
        warned(
            &set,
            &[
                "x/badcidr",
                "ingress[0].fromCIDR[0]",
                "not a CIDR",
                "fail closed",
            ],
        );
        warned(
            &set,
            &[
                "x/badop",
                "unknown operator \"Near\"",
                "default deny (egress)",
            ],
        );
        warned(&set, &["x/badtype", "malformed", "fail closed"]);
        warned(
            &set,
            &[
                "x/badsubject",
                "every pod of namespace x (its subject is unreadable)",
            ],
        );
        warned(&set, &["badcw", "dropped"]);
        warned(
            &set,
            &["x/badnp", "ingress[0].from[0].ipBlock", "not a CIDR"],
        );
        warned(
            &set,
            &[
                "x/badport",
                "egress[0].ports[0].port: 70000 is not a port number",
            ],
        );
        assert!(!set.policies.iter().any(|p| p.origin.name == "badcw"));
        let w = reserved("world");
        for (app, d) in [("a", IN), ("b", OUT), ("c", IN), ("d", IN), ("e", OUT)] {
            let me = pod(&m, "x", &[("app", app)]);
            let dec = decision(&set, &me, d, &w, TCP, 80);
            assert!(dec.verdict == Verdict::Denied && dec.enforced, "{app}");
        }
        let p = set
            .policies
            .iter()
            .find(|p| p.origin.name == "x/badcidr")
            .unwrap();
        assert!(p.ingress.is_empty() && !p.enforce_egress);
        // An unreadable subject holds the whole namespace.
        let any = pod(&m, "x", &[("app", "zzz")]);
        assert!(decision(&set, &any, IN, &w, TCP, 80).enforced);
        assert!(!decision(&set, &pod(&m, "y", &[]), IN, &w, TCP, 80).enforced);
    }

    #[test]
    fn unknown_fields_warn_and_never_widen() {
        let text = format!(
            "{}{}",
            cnp(
                "x",
                "unk",
                "  endpointSelector: {matchLabels: {app: a}}
  comment: hello
  ingress:
  - fromEndpoints: [{matchLabels: {role: ok}}]
  - fromEndpoints: [{matchLabels: {role: typo}}]
    toPort: [{ports: [{port: '80'}]}]
  egress: [{toEntities: [all]}]
  egressDeny:
  - toEndpoints: [{matchLabels: {role: bad}}]
    toPorts: [{ports: [{port: '443', endport: 500}]}]"
            ),
            np(
                "x",
                "unknp",
                "  podSelector: {matchLabels: {app: b}}
  ingress:
  - from: [{podSelector: {matchLabel: {role: x}}}]
  - from: [{podSelector: {matchLabels: {role: ok}}}]"
            ),
        );
        let (m, set) = load(&text);
        warned(&set, &["x/unk", "unknown fields ignored: comment"]);
        warned(
            &set,
            &[
                "x/unk",
                "ingress[1]: unknown fields (toPort)",
                "allows nothing",
            ],
        );
        warned(&set, &["x/unk", "egressDeny[0]", "widened to every port"]);
        warned(
            &set,
            &[
                "x/unknp",
                "ingress[0]: unknown fields (from[0].podSelector.matchLabel)",
            ],
        );
        let a = pod(&m, "x", &[("app", "a")]);
        let role = |r: &str| peer(pod(&m, "x", &[("role", r)]));
        assert!(allowed(&set, &a, IN, &role("ok"), TCP, 80));
        assert!(!allowed(&set, &a, IN, &role("typo"), TCP, 80));
        assert!(
            !allowed(&set, &a, OUT, &role("bad"), TCP, 22),
            "deny widened"
        );
        assert!(allowed(&set, &a, OUT, &role("fine"), TCP, 22));
        let b = pod(&m, "x", &[("app", "b")]);
        assert!(allowed(&set, &b, IN, &role("ok"), TCP, 80));
        assert!(!allowed(&set, &b, IN, &role("x"), TCP, 80));
        assert!(!allowed(&set, &b, IN, &role("other"), TCP, 80));
    }

    #[test]
    fn unsupported_peers_allow_nothing_and_widen_denies() {
        let (m, set) = load(&cnp(
            "x",
            "sup",
            "  endpointSelector: {}
  ingress:
  - fromNodes: [{matchLabels: {role: cp}}]
  - fromEntities: [kube-apiserver]
  - icmps: [{fields: [{type: 8}]}]
  - fromEndpoints: [{matchLabels: {app: a}}]
    authentication: {mode: required}
  egress: [{toEntities: [all]}]
  egressDeny:
  - toEntities: [kube-apiserver]
    toPorts: [{ports: [{port: '6443', protocol: TCP}]}]
  - toServices: [{k8sService: {serviceName: s, namespace: x}}]
    toPorts: [{ports: [{port: '8443', protocol: TCP}]}]
  - toEndpoints: [{matchLabels: {app: pinger}}]
    icmps: [{fields: [{type: 8}]}]",
        ));
        warned(
            &set,
            &["ingress[0]: fromNodes is not supported", "allows nothing"],
        );
        warned(
            &set,
            &[
                "ingress[1].fromEntities[0]: entity kube-apiserver",
                "allows nothing",
            ],
        );
        warned(
            &set,
            &["ingress[2]: ICMP rules are not supported", "allows nothing"],
        );
        warned(&set, &["ingress[3]: authentication is not supported"]);
        warned(
            &set,
            &["egressDeny[1]: toServices is not supported", "superset"],
        );
        assert!(set.policies[0].ingress.is_empty());
        let me = pod(&m, "x", &[]);
        for n in ["host", "remote-node", "world"] {
            assert!(!allowed(&set, &me, IN, &reserved(n), TCP, 80), "{n}");
            assert!(!allowed(&set, &me, OUT, &reserved(n), TCP, 6443), "{n}");
            assert!(allowed(&set, &me, OUT, &reserved(n), TCP, 6444), "{n}");
        }
        let a = peer(pod(&m, "x", &[("app", "a")]));
        assert!(!allowed(&set, &me, IN, &a, TCP, 80));
        assert!(
            allowed(&set, &me, OUT, &a, TCP, 6443),
            "a pod is not the API server"
        );
        assert!(
            !allowed(&set, &me, OUT, &a, TCP, 8443),
            "services: any peer"
        );
        let pinger = peer(pod(&m, "x", &[("app", "pinger")]));
        assert!(!allowed(&set, &me, OUT, &pinger, 1, 0), "ICMP deny");
        assert!(
            !allowed(&set, &me, OUT, &pinger, TCP, 80),
            "widened to every protocol"
        );
    }

    #[test]
    fn garbage_never_panics() {
        let docs = [
            cnp("x", "g1", "  7"),
            cnp("x", "g2", "  endpointSelector: {}\n  ingress: yes"),
            cnp("x", "g3", "  endpointSelector: {}\n  egress: [7, {toPorts: [{ports: [{port: [1]}]}]}]"),
            cnp("x", "g4", "  endpointSelector: {matchLabels: 3}"),
            cnp("x", "g5", "  nodeSelector: {}\n  ingress: []"),
            cnp("x", "g6", "  endpointSelector: {}\n  ingress: [{fromEntities: [moon]}]"),
            cnp("x", "g7", "  endpointSelector: {}\n  ingress: [{toPorts: [{ports: [{port: '90', endPort: 80}]}]}]"),
            ccnp("g8", "  {}"),
            np("x", "g9", "  podSelector: 7\n  ingress: [{}]"),
            np("x", "g10", "  policyTypes: [Sideways]"),
            np("x", "g11", "  ingress: [{from: [{}]}]"),
            np("x", "g12", "  ingress: [{ports: [{port: http, endPort: 90}]}]"),
            "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: g13}\nspecs: 5\n".into(),
            "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: g14}\n".into(),
            "---\napiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: g15}\nspecs: [3, {endpointSelector: {}, egress: [{toEntities: [world]}]}]\n".into(),
        ];
        let (_, set) = load(&docs.concat());
        for name in [
            "g1", "g2", "g3", "g4", "g5", "g6", "g7", "g8", "g9", "g10", "g11", "g12", "g13", "g14",
        ] {
            warned(&set, &[&format!("{name} (p.yaml")]);
        }
        // g15: the readable spec still loads.
        let g15: Vec<&Policy> = set
            .policies
            .iter()
            .filter(|p| p.origin.name == "g15")
            .collect();
        assert_eq!(g15.len(), 1);
        assert_eq!(g15[0].egress.len(), 1);
        // Every malformed policy that had a direction keeps it enforced with no rules.
        for p in &set.policies {
            if p.origin.name != "g15" {
                assert!(p.ingress.is_empty() && p.egress.is_empty(), "{}", p.origin);
            }
        }
    }
}
