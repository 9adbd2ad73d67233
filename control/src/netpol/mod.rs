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
//!   ([`PortRange::l7`]), except DNS rules alone (`rules: dns`), which the fast path enforces
//!   ([`Rule::dns`]); `toFQDNs` is a peer ([`Peer::Fqdn`]) in allow rules; `toServices`,
//!   `toGroups`, `fromNodes`/`toNodes`, CIDR groups, `authentication`, unreadable ICMP fields,
//!   unknown entities and IPv6 blocks allow nothing. In a deny rule they are replaced by a
//!   superset Vireo can express (nodes → host + remote-node; FQDNs (Cilium's deny rules have
//!   none), groups, CIDR groups → world; services and unknown entities → any peer; an
//!   unreadable ICMP field → every protocol and port). Cilium's `icmps` are enforced
//!   (module `icmp`): IPv4 types, ORed with `toPorts`; IPv6 fields match nothing.
//! - Entities: Cilium's, `kube-apiserver` included (the addresses of Service
//!   `default/kubernetes`'s endpoints, pods, nodes or outside addresses, which policy also sees
//!   as that identity); `ingress` (Cilium's Envoy, which Vireo does not run) and `none` match
//!   no traffic.
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
//! - `fromRequires`/`toRequires` of any rule of an allow (or deny) section of a direction
//!   apply to the endpoint peers (and the L4-only wildcard) of every allow (or deny) rule of
//!   that direction of **every policy selecting the endpoint**, not to entities or CIDRs, as
//!   Cilium folds requirements into endpoint selectors: a section's requirements are carried
//!   by a rule of their own with no peer, and the evaluator gathers them
//!   ([`vireo_policy::engine::requirements`]);
//! - a direction is enforced (default deny) when its allow or deny section is present (even
//!   empty), unless `enableDefaultDeny` says `false` for it; an explicit `true` enforces even
//!   without a section.
//!
//! Kubernetes NetworkPolicy: `podSelector` (in the policy's namespace) is the subject;
//! `policyTypes` defaults to Ingress, plus Egress when `egress` has rules; a policy affects only
//! the directions of its `policyTypes` (rules of other directions are ignored, with a
//! warning); a missing or empty `from`/`to` means every peer; `podSelector` alone means the
//! policy's namespace; `namespaceSelector` alone means pods of the matching namespaces; both in
//! one element mean both; `ipBlock` selects every address in its block, pods' and nodes'
//! included, `except` honoured (what the upstream e2e tests expect and Calico does; Cilium
//! selects only outside addresses there), while CiliumNetworkPolicy CIDR rules keep Cilium's
//! meaning (outside addresses; nodes too with `policy-cidr-match-mode: nodes`);
//! `protocol` defaults to TCP.
//!
//! Named ports (NetworkPolicy, and Cilium `port: "name"`) are resolved against the container
//! ports of the pods in the manifests that the rule's *destination* selects: the policy's own
//! pods for ingress, the peer pods for egress. Every number found is allowed (a warning says so
//! when there are several); none found, the entry allows nothing. The result depends on the
//! pods: recompute the policies when pods change.
//!
//! Layout: this module holds the entry point, the policy builder and the fail-closed fallback;
//! `cilium` (with its serde schema in `cilium_schema`) and `k8s` read the two families of
//! policy; `selectors` reads label selectors and CIDRs, `ports` ports, protocols and named
//! ports, and `read` the typed reads (unknown fields, where a read fails).

mod cilium;
mod cilium_schema;
mod icmp;
#[cfg(test)]
mod icmp_tests;
mod k8s;
mod ports;
mod read;
mod selectors;
#[cfg(test)]
mod tests;

use std::cell::{Cell, OnceCell};
use std::collections::BTreeMap;

use vireo_lb::service::UDP;
use vireo_policy::{
    Action, Direction, FqdnSelector, Labels, Origin, Peer, Policy, Proto, Rule, Selector,
};

use crate::cluster::{container_ports, namespace_labels};
use crate::source::{Manifests, PolicyDocument, PolicyKind};

use cilium::cilium_policy;
use k8s::network_policy;
use ports::PortIn;
use selectors::in_namespace;

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
    policies_reusing(m, &mut PolicyCache::default(), true)
}

/// What each policy document was read into, to read again only the documents that changed
/// ([`policies_reusing`]).
#[derive(Debug, Clone, Default)]
pub struct PolicyCache {
    docs: BTreeMap<(PolicyKind, String, String), ReadDoc>,
}

/// One document and what it was read into.
#[derive(Debug, Clone)]
struct ReadDoc {
    doc: PolicyDocument,
    /// Its reading looked at the pods (to resolve a named port).
    read_pods: bool,
    policies: Vec<Policy>,
    /// Its lines of [`PolicySet::warnings`].
    warnings: Vec<String>,
}

/// [`policies`], reading again only the documents that differ from those `cache` holds (and,
/// when `pods_changed` (Pods or Namespaces may differ from those of the last call), those
/// whose reading looked at the pods: named ports); `cache` is left holding `m`'s documents.
/// The result is [`policies`]`(m)`: a policy is a function of its document, and of the pods'
/// labels and named ports only through named ports.
pub fn policies_reusing(m: &Manifests, cache: &mut PolicyCache, pods_changed: bool) -> PolicySet {
    let pods = Pods::new(m);
    let mut old = std::mem::take(&mut cache.docs);
    let mut set = PolicySet::default();
    for (key, doc) in &m.policies {
        let (key, read) = match old.remove_entry(key) {
            Some((k, r)) if r.doc == *doc && !(r.read_pods && pods_changed) => (k, r),
            _ => (key.clone(), read_doc(doc, &pods)),
        };
        set.policies.extend(read.policies.iter().cloned());
        set.warnings.extend(read.warnings.iter().cloned());
        cache.docs.insert(key, read);
    }
    set
}

/// Reads one document.
fn read_doc(doc: &PolicyDocument, pods: &Pods) -> ReadDoc {
    let obj = Obj::new(doc);
    pods.read.set(false);
    let out = match doc.kind {
        PolicyKind::NetworkPolicy => vec![network_policy(&obj, pods)],
        _ => cilium_policy(&obj, pods),
    };
    let mut read = ReadDoc {
        doc: doc.clone(),
        read_pods: pods.read.get(),
        policies: Vec::new(),
        warnings: Vec::new(),
    };
    for r in out {
        match r {
            Ok(p) => {
                read.warnings
                    .extend(p.warnings.iter().map(|w| format!("{}: {w}", obj.label)));
                read.policies.push(p);
            }
            Err(w) => read.warnings.push(format!("{}: {w}", obj.label)),
        }
    }
    read
}

// ---------------------------------------------------------------------------------------------
// Shared pieces.

/// A pod of the manifests: its security labels and its named container ports.
struct PodPorts {
    labels: Labels,
    /// (name, number, protocol) of every named `containers[].ports[]` entry (TCP or UDP).
    ports: Vec<(String, u16, Proto)>,
}

/// The pods of the manifests as policies read them, made at the first read: most policies
/// never look at them (only named ports do).
struct Pods<'a> {
    m: &'a Manifests,
    list: OnceCell<Vec<PodPorts>>,
    /// They were read (since this was last set to `false`).
    read: Cell<bool>,
}

impl<'a> Pods<'a> {
    fn new(m: &'a Manifests) -> Pods<'a> {
        Pods {
            m,
            list: OnceCell::new(),
            read: Cell::new(false),
        }
    }

    fn get(&self) -> &[PodPorts] {
        self.read.set(true);
        self.list.get_or_init(|| pod_ports(self.m))
    }
}

fn pod_ports(m: &Manifests) -> Vec<PodPorts> {
    m.pods
        .iter()
        .map(|((ns, _), p)| {
            let ns_labels = namespace_labels(m, ns);
            let labels = Labels::for_pod(
                m.pod_origin(ns, p),
                p.metadata.labels.iter().flatten(),
                &ns_labels,
            );
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
    pods: &'a Pods<'a>,
    policy: Policy,
}

impl Builder<'_> {
    fn warn(&mut self, w: String) {
        self.policy.warnings.push(w);
    }

    /// Adds the model's rules for `r`, named ports resolved (`requires`: the requirements of
    /// its section, which narrow the pods a named port is looked up in).
    fn add(&mut self, d: Direction, mut r: RuleIn, requires: &[Selector]) {
        let peers = if r.l3 {
            std::mem::take(&mut r.peers)
        } else if r.ports.is_some() {
            vec![Peer::Any]
        } else {
            // `{}`: selects no peer.
            return;
        };
        if peers.is_empty() {
            return;
        }
        // Ports with `rules: dns` go into rules of their own, one per set of DNS rules.
        let groups: Vec<(Vec<FqdnSelector>, Option<Vec<ports::PortIn>>)> = match r.ports.take() {
            None => vec![(Vec::new(), None)],
            Some(list) => {
                let mut g: Vec<(Vec<FqdnSelector>, Vec<ports::PortIn>)> = Vec::new();
                for p in list {
                    match g.iter_mut().find(|(dns, _)| *dns == p.dns) {
                        Some(e) => e.1.push(p),
                        None => g.push((p.dns.clone(), vec![p])),
                    }
                }
                g.into_iter().map(|(dns, l)| (dns, Some(l))).collect()
            }
        };
        for (dns, ports) in groups {
            self.add_ports(d, &r, peers.clone(), ports, dns, requires);
        }
    }

    /// [`Builder::add`] for the ports of `r` that share one set of DNS rules.
    fn add_ports(
        &mut self,
        d: Direction,
        r: &RuleIn,
        peers: Vec<Peer>,
        ports: Option<Vec<ports::PortIn>>,
        dns: Vec<FqdnSelector>,
        requires: &[Selector],
    ) {
        let ports = match ports {
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
            rule: r.rule.clone(),
            ..self.policy.origin.clone()
        };
        self.push(
            d,
            Rule {
                action: r.action,
                peers,
                requires: Vec::new(),
                ports,
                dns,
                origin,
            },
        );
    }

    fn push(&mut self, d: Direction, rule: Rule) {
        match d {
            Direction::Ingress => self.policy.ingress.push(rule),
            Direction::Egress => self.policy.egress.push(rule),
        }
    }

    /// Declares the requirements of a section (`fromRequires`/`toRequires` of its rules,
    /// `origin` naming the first): a rule with no peer that carries them. Requirements apply
    /// to the endpoint peers of every `action` rule of direction `d` of every policy selecting
    /// the endpoint ([`vireo_policy::engine::requirements`]), not only to this policy's.
    fn require(&mut self, d: Direction, action: Action, requires: Vec<Selector>, rule: String) {
        if requires.is_empty() {
            return;
        }
        let origin = Origin {
            rule,
            ..self.policy.origin.clone()
        };
        self.push(
            d,
            Rule {
                action,
                peers: Vec::new(),
                requires,
                ports: Vec::new(),
                dns: Vec::new(),
                origin,
            },
        );
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
