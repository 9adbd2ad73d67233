//! What the manifests say about the cluster, reduced to what the dataplane needs: nodes with
//! their underlay address and pod CIDR, pods with their address, node and security labels, and
//! the identities of those labels, and the Services' ports with their backends (see
//! [`crate::services`]). From it, the tables of one node: the ipcache, the identities a VNI may
//! carry, the other nodes, and the service specs.
//!
//! Conventions shared by the sandbox (acting as kubelet + CNI) and the agent: a pod's host-side
//! veth is `lxc` + 8 hex digits of a hash of `namespace/name`, and its MAC is `0a:58:` + its IPv4
//! address (as OVN-Kubernetes does), so the agent can attach a pod from its manifest alone.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::Pod;
use rustc_hash::{FxHashMap, FxHashSet};
use vireo_lb::ServiceSpec;
use vireo_policy::identity::SERVICE_ACCOUNT_LABEL;
use vireo_policy::{Identity, IdentityAllocator, IpCache, IpCacheEntry, Labels};

use crate::services::{self, ServicePortView};
use crate::source::Manifests;

/// A node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeView {
    /// Name.
    pub name: String,
    /// Underlay address (InternalIP).
    pub ip: Ipv4Addr,
    /// Pod CIDR.
    pub pod_cidr: Option<Ipv4Net>,
}

/// A pod with an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Node it runs on.
    pub node: String,
    /// Its address.
    pub ip: Ipv4Addr,
    /// Security labels.
    pub labels: Labels,
    /// Its identity.
    pub identity: Identity,
    /// Its own labels, as written (what Service selectors match).
    pub pod_labels: BTreeMap<String, String>,
    /// `spec.containers[].ports[]` (what a named `targetPort` resolves against).
    pub ports: Vec<ContainerPortView>,
    /// Its Ready condition is True, or it has none (the sandbox writes no conditions).
    pub ready: bool,
    /// `metadata.deletionTimestamp` is set.
    pub terminating: bool,
    /// Phase Succeeded or Failed: it serves nothing any more.
    pub terminal: bool,
    /// Its policy is in audit mode ([`AUDIT_MODE_ANNOTATION`] is `"true"`).
    pub audit: bool,
}

/// The pod annotation that puts one pod's policy in audit mode (Cilium's per-endpoint
/// `PolicyAuditMode`): `"true"` (or `"enabled"`, any case) turns it on; anything else, or no
/// annotation, leaves the pod as the agent's `policy_audit_mode` says.
pub const AUDIT_MODE_ANNOTATION: &str = "policy.vireo.io/audit-mode";

/// Whether pod `p` asks for policy audit mode ([`AUDIT_MODE_ANNOTATION`]).
pub fn pod_audit(p: &Pod) -> bool {
    p.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(AUDIT_MODE_ANNOTATION))
        .is_some_and(|v| {
            let v = v.trim();
            v.eq_ignore_ascii_case("true") || v.eq_ignore_ascii_case("enabled")
        })
}

/// One `containers[].ports[]` entry of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPortView {
    /// Its name (may be empty).
    pub name: String,
    /// `containerPort`.
    pub port: u16,
    /// IP protocol (6 TCP, 17 UDP; others are left out).
    pub proto: u8,
}

/// The cluster as the manifests describe it.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Nodes by name.
    /// The cluster's name ([`Manifests::cluster_name`]).
    pub cluster_name: String,
    /// The Kubernetes API server's addresses (those of Service `default/kubernetes`'s
    /// EndpointSlices), sorted: what the `kube-apiserver` entity selects.
    pub kube_apiserver: Vec<Ipv4Addr>,
    pub nodes: BTreeMap<String, NodeView>,
    /// Pods with an address and a node, by (namespace, name).
    pub pods: BTreeMap<(String, String), PodView>,
    /// Identities of the pods' label sets.
    pub identities: IdentityAllocator,
    /// Labels of every namespace the manifests name (Namespace objects and the namespaces of
    /// pods), with `kubernetes.io/metadata.name` added as Kubernetes does (see
    /// [`namespace_labels`]).
    pub namespaces: BTreeMap<String, BTreeMap<String, String>>,
    /// Service ports with their backends, as any node sees them (see
    /// [`ClusterView::service_specs`] for one node's).
    pub services: Vec<ServicePortView>,
    /// The label sets of pods that wait for a cluster-wide identity (none with node-local
    /// identities), sorted: the source's allocator is asked for them.
    pub unallocated: Vec<Labels>,
    /// Objects left out, one line each.
    pub warnings: Vec<String>,
    /// Where the warnings about services start in `warnings` (they come last).
    services_warnings_from: usize,
    /// Some service port's backends were derived from the pods (a Service without slices).
    services_read_pods: bool,
    /// How many pods have each identity.
    members: FxHashMap<Identity, usize>,
    /// Pods that keep their previous identity (and labels) while their new label set waits for
    /// one: never taken over as they are by the next rebuild.
    provisional: FxHashSet<(String, String)>,
}

/// A pod's host-side interface name.
pub fn pod_ifname(namespace: &str, name: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in namespace.bytes().chain([b'/']).chain(name.bytes()) {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("lxc{h:08x}")
}

/// A pod's MAC address.
pub fn pod_mac(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x0a, 0x58, o[0], o[1], o[2], o[3]]
}

/// The label Kubernetes puts on every namespace, with the namespace's name as its value.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// The TCP and UDP `containers[].ports[]` of a pod (others, and port 0, are left out).
pub(crate) fn container_ports(p: &Pod) -> impl Iterator<Item = ContainerPortView> + '_ {
    container_port_fields(p).map(|(name, port, proto)| ContainerPortView {
        name: name.to_string(),
        port,
        proto,
    })
}

/// [`container_ports`] as (name, port, protocol), borrowed.
fn container_port_fields(p: &Pod) -> impl Iterator<Item = (&str, u16, u8)> + '_ {
    p.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|cp| {
            Some((
                cp.name.as_deref().unwrap_or_default(),
                services::port_number(cp.container_port)?,
                services::protocol(cp.protocol.as_deref())?,
            ))
        })
}

/// A namespace's labels as Kubernetes serves them: as written in its Namespace object (if the
/// manifests have one), plus `kubernetes.io/metadata.name: <name>`, which the API server sets
/// on every namespace (NetworkPolicy namespace selectors rely on it).
pub fn namespace_labels(m: &Manifests, ns: &str) -> BTreeMap<String, String> {
    let mut l = m
        .namespaces
        .get(ns)
        .and_then(|n| n.metadata.labels.clone())
        .unwrap_or_default();
    l.insert(NAMESPACE_NAME_LABEL.to_string(), ns.to_string());
    l
}

/// The pods' gateway on a node: the first address of its pod CIDR.
pub fn gateway(pod_cidr: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(pod_cidr.network()) + 1)
}

/// The first IPv4 address of a pod's `status.podIP` / `status.podIPs`.
fn pod_ip(p: &Pod) -> Option<Ipv4Addr> {
    p.status.as_ref().and_then(|s| {
        s.pod_ip
            .as_deref()
            .into_iter()
            .chain(s.pod_ips.iter().flatten().map(|i| i.ip.as_str()))
            .find_map(|i| i.parse::<Ipv4Addr>().ok())
    })
}

/// A pod's (ready, terminating, terminal), as [`PodView`] has them.
fn pod_state(p: &Pod) -> (bool, bool, bool) {
    let status = p.status.as_ref();
    // As Kubernetes, but a pod without a Ready condition counts as ready: the sandbox
    // (kubelet here) writes none.
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .find(|c| c.type_ == "Ready")
        .is_none_or(|c| c.status == "True");
    let terminal = matches!(
        status.and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    );
    (ready, p.metadata.deletion_timestamp.is_some(), terminal)
}

/// The view of pod `p` on node `node` at `ip` (its identity still [`Identity::INIT`]: see
/// [`assign_identities`]).
fn pod_view(
    m: &Manifests,
    (ns, name): (&str, &str),
    p: &Pod,
    node: &str,
    ip: Ipv4Addr,
    ns_labels: &BTreeMap<String, String>,
) -> PodView {
    let (ready, terminating, terminal) = pod_state(p);
    let origin = m.pod_origin(ns, p);
    PodView {
        namespace: ns.to_string(),
        name: name.to_string(),
        node: node.to_string(),
        ip,
        labels: Labels::for_pod(origin, p.metadata.labels.iter().flatten(), ns_labels),
        identity: Identity::INIT,
        pod_labels: p.metadata.labels.clone().unwrap_or_default(),
        ports: container_ports(p).collect(),
        ready,
        terminating,
        terminal,
        audit: pod_audit(p),
    }
}

/// Whether `prev` (of the same pod, in the same namespace) is what [`pod_view`] makes of `p`
/// on `node` at `ip`, given that the namespace's labels did not change (identity aside). Every
/// input of [`pod_view`] is compared here.
fn pod_unchanged(m: &Manifests, prev: &PodView, p: &Pod, node: &str, ip: Ipv4Addr) -> bool {
    let empty = BTreeMap::new();
    let origin = m.pod_origin(&prev.namespace, p);
    prev.node == node
        && prev.labels.get(&format!("k8s:{SERVICE_ACCOUNT_LABEL}")) == Some(origin.service_account)
        && prev.ip == ip
        && *p.metadata.labels.as_ref().unwrap_or(&empty) == prev.pod_labels
        && pod_state(p) == (prev.ready, prev.terminating, prev.terminal)
        && pod_audit(p) == prev.audit
        && container_port_fields(p).eq(prev
            .ports
            .iter()
            .map(|c| (c.name.as_str(), c.port, c.proto)))
}

/// The identity step: numbers the pods' label sets and gives each pod its set's number.
///
/// `pods` are the view's pods, those at `fresh` made anew and the others taken over from the
/// previous view with their identity; `prev` holds the previous view's identities and how
/// many of its pods had each, and `gone` the identities of its pods not taken over. The
/// numbering depends only on the set of label sets ([`IdentityAllocator::from_sets`]): when
/// that set is the same, `prev` is kept as it is, and only the fresh pods' label sets are
/// looked up. Answers the identities and how many pods have each.
fn assign_identities(
    pods: &mut [((String, String), PodView)],
    fresh: &[usize],
    gone: &[Identity],
    (prev, mut members): (IdentityAllocator, FxHashMap<Identity, usize>),
) -> (IdentityAllocator, FxHashMap<Identity, usize>) {
    for id in gone {
        if let Some(n) = members.get_mut(id) {
            *n -= 1;
            if *n == 0 {
                members.remove(id);
            }
        }
    }
    let mut new_sets: Vec<Labels> = Vec::new();
    for &i in fresh {
        let p = &mut pods[i].1;
        match prev.get(&p.labels) {
            Some(id) => {
                p.identity = id;
                *members.entry(id).or_default() += 1;
            }
            None => {
                p.identity = Identity::INIT;
                if !new_sets.contains(&p.labels) {
                    new_sets.push(p.labels.clone());
                }
            }
        }
    }
    if new_sets.is_empty() && members.len() == prev.len() {
        return (prev, members);
    }
    // Another set of label sets: numbered again, each pod's number translated.
    let ids = IdentityAllocator::from_sets(
        prev.iter()
            .filter(|(id, _)| members.contains_key(id))
            .map(|(_, l)| l)
            .chain(&new_sets),
    );
    let renumber: FxHashMap<Identity, Identity> = prev
        .iter()
        .filter_map(|(old, l)| Some((old, ids.get(l)?)))
        .collect();
    let mut counts: FxHashMap<Identity, usize> = FxHashMap::default();
    for (_, p) in pods.iter_mut() {
        let id = match renumber.get(&p.identity) {
            Some(id) if p.identity != Identity::INIT => *id,
            _ => ids.get(&p.labels).unwrap_or(Identity::INIT),
        };
        p.identity = id;
        *counts.entry(id).or_default() += 1;
    }
    (ids, counts)
}

/// The identity step with cluster-wide identities ([`Manifests::cluster_identities`]): each
/// pod takes the number of a `VireoIdentity` holding its label set (the lowest, should two
/// hold it; never one the garbage collector marked, which may be about to go). A pod taken over
/// from the previous view keeps its number while that still holds its labels unmarked.
///
/// A pod whose label set has no number yet keeps the number and labels it had before
/// (`before[i]` for a pod made anew, its own for one taken over) while its new one is
/// allocated, as a Cilium endpoint keeps its identity when its labels change, as long as that
/// number still holds those labels; a new pod waits, left out of the view, as a Cilium endpoint
/// waits for its identity. Either way its label set is in the second list (sorted).
fn cluster_identities(
    m: &Manifests,
    pods: &mut Vec<((String, String), PodView)>,
    fresh: &[usize],
    mut before: FxHashMap<usize, (Identity, Labels)>,
) -> (IdentityAllocator, Vec<Labels>, FxHashSet<(String, String)>) {
    let holds = |id: Identity, labels: &Labels, marked_ok: bool| {
        m.identities
            .get(&id.0)
            .is_some_and(|ci| ci.labels == *labels && (marked_ok || !ci.marked))
    };
    let fresh: rustc_hash::FxHashSet<usize> = fresh.iter().copied().collect();
    let mut by_labels: Option<FxHashMap<&Labels, Identity>> = None;
    let mut used = Vec::new();
    let mut seen = rustc_hash::FxHashSet::default();
    let mut waiting = std::collections::BTreeSet::new();
    let mut provisional = FxHashSet::default();
    let mut i = 0;
    pods.retain_mut(|(key, p)| {
        let at = i;
        i += 1;
        let taken_over = !fresh.contains(&at);
        if !(taken_over && holds(p.identity, &p.labels, false)) {
            let by_labels = by_labels.get_or_insert_with(|| {
                let mut map = FxHashMap::default();
                // Ascending numbers: the lowest wins.
                for (n, ci) in m.identities.iter().filter(|(_, ci)| !ci.marked) {
                    map.entry(&ci.labels).or_insert(Identity(*n));
                }
                map
            });
            match by_labels.get(&p.labels) {
                Some(id) => p.identity = *id,
                None => {
                    waiting.insert(p.labels.clone());
                    let old = if taken_over {
                        Some((p.identity, p.labels.clone()))
                    } else {
                        before.remove(&at)
                    };
                    match old.filter(|(id, l)| holds(*id, l, true)) {
                        Some((id, l)) => {
                            p.identity = id;
                            p.labels = l;
                            provisional.insert(key.clone());
                        }
                        None => return false,
                    }
                }
            }
        }
        if seen.insert(p.identity) {
            used.push((p.identity, p.labels.clone()));
        }
        true
    });
    (
        IdentityAllocator::from_mapping(used),
        waiting.into_iter().collect(),
        provisional,
    )
}

/// The addresses of the EndpointSlices of Service `default/kubernetes` (the API server,
/// wherever it runs), sorted, IPv4 only.
fn kube_apiserver(m: &Manifests) -> Vec<Ipv4Addr> {
    let mut out: Vec<Ipv4Addr> = m
        .endpoint_slices
        .iter()
        .filter(|((ns, _), s)| {
            ns == "default"
                && s.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(services::SERVICE_NAME_LABEL))
                    .is_some_and(|n| n == "kubernetes")
        })
        .flat_map(|(_, s)| s.endpoints.iter().flat_map(|e| e.addresses.iter()))
        .filter_map(|a| a.parse().ok())
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

impl ClusterView {
    /// The cluster's name (the default when the view was made from no objects).
    pub fn cluster(&self) -> &str {
        if self.cluster_name.is_empty() {
            vireo_policy::identity::DEFAULT_CLUSTER_NAME
        } else {
            &self.cluster_name
        }
    }

    /// A view that [`ClusterView::rebuild`] takes nothing over from but the pods' previous
    /// identities (their namespaces are unknown, so every pod is made anew): what a rebuild
    /// from scratch that keeps a relabelled pod's cluster-wide identity starts from.
    pub(crate) fn pods_only(self) -> ClusterView {
        ClusterView {
            pods: self.pods,
            ..ClusterView::default()
        }
    }

    /// Reduces manifests to the view.
    pub fn from_manifests(m: &Manifests) -> ClusterView {
        ClusterView::rebuild(m, ClusterView::default(), true).0
    }

    /// [`ClusterView::from_manifests`]`(m)`, taking over from `prev` (the view of earlier
    /// objects) what the changes leave as it was: the view of each pod whose own fields and
    /// namespace labels are unchanged, the identities when the set of label sets is the same,
    /// and the service ports when `services_changed` is false (the Services and EndpointSlices
    /// are those `prev` was made from) and none of them was derived from pods. Also answers
    /// whether the service ports were read again.
    pub fn rebuild(
        m: &Manifests,
        mut prev: ClusterView,
        services_changed: bool,
    ) -> (ClusterView, bool) {
        let mut v = ClusterView {
            cluster_name: m.cluster_name().to_string(),
            ..ClusterView::default()
        };
        // Another cluster name: every pod's labels change.
        let same_cluster = prev.cluster_name == v.cluster_name;
        for (name, n) in &m.nodes {
            let ip = n
                .status
                .as_ref()
                .and_then(|s| s.addresses.as_ref())
                .and_then(|a| a.iter().find(|a| a.type_ == "InternalIP"))
                .and_then(|a| a.address.parse::<Ipv4Addr>().ok());
            let Some(ip) = ip else {
                v.warnings.push(format!(
                    "node {name}: no IPv4 InternalIP in status.addresses; left out"
                ));
                continue;
            };
            let pod_cidr = n
                .spec
                .as_ref()
                .and_then(|s| s.pod_cidr.as_deref())
                .and_then(|c| c.parse().ok());
            v.nodes.insert(
                name.clone(),
                NodeView {
                    name: name.clone(),
                    ip,
                    pod_cidr,
                },
            );
        }
        for ns in m.namespaces.keys() {
            v.namespaces.insert(ns.clone(), namespace_labels(m, ns));
        }
        // Namespaces whose labels are those of `prev`: their pods' label sets are too.
        let mut same_ns: BTreeMap<&str, bool> = BTreeMap::new();
        // `prev`'s pods, walked along with `m`'s (both in key order).
        let mut old = std::mem::take(&mut prev.pods).into_iter().peekable();
        let mut pods = Vec::with_capacity(m.pods.len());
        // Pods made anew (at these indices of `pods`), and the identities of `prev`'s pods
        // that were not taken over.
        let mut fresh = Vec::new();
        let mut gone = Vec::new();
        // With cluster-wide identities: the previous number and labels of pods made anew.
        let mut before = FxHashMap::default();
        for ((ns, name), p) in &m.pods {
            let at = (ns.as_str(), name.as_str());
            while let Some((_, o)) = old.next_if(|((n, k), _)| (n.as_str(), k.as_str()) < at) {
                gone.push(o.identity);
            }
            let old = old.next_if(|((n, k), _)| (n.as_str(), k.as_str()) == at);
            let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
            let ip = pod_ip(p);
            if ip.is_none() {
                // An address that is no IP at all (not an IPv6 one) is a broken object.
                let bad = p.status.as_ref().and_then(|s| {
                    s.pod_ip
                        .as_deref()
                        .into_iter()
                        .chain(s.pod_ips.iter().flatten().map(|i| i.ip.as_str()))
                        .find(|i| !i.is_empty() && i.parse::<std::net::IpAddr>().is_err())
                });
                if let Some(bad) = bad {
                    v.warnings.push(format!(
                        "pod {ns}/{name}: status.podIP: {bad:?} is not an IP address; left out"
                    ));
                }
            }
            let (Some(node), Some(ip)) = (node, ip) else {
                // Not scheduled or not running yet: nothing to route.
                gone.extend(old.map(|(_, o)| o.identity));
                continue;
            };
            if !v.namespaces.contains_key(ns) {
                v.namespaces.insert(ns.clone(), namespace_labels(m, ns));
            }
            let ns_labels = &v.namespaces[ns];
            let same = *same_ns
                .entry(ns)
                .or_insert_with(|| same_cluster && prev.namespaces.get(ns) == Some(&*ns_labels));
            match old {
                Some((key, old))
                    if same
                        && pod_unchanged(m, &old, p, node, ip)
                        && !prev.provisional.contains(&key) =>
                {
                    pods.push((key, old));
                }
                other => {
                    if m.cluster_identities {
                        if let Some((_, o)) = &other {
                            before.insert(pods.len(), (o.identity, o.labels.clone()));
                        }
                    }
                    gone.extend(other.map(|(_, o)| o.identity));
                    fresh.push(pods.len());
                    let view = pod_view(m, (ns, name), p, node, ip, ns_labels);
                    pods.push(((ns.clone(), name.clone()), view));
                }
            }
        }
        gone.extend(old.map(|(_, o)| o.identity));
        let prev_ids = (
            std::mem::take(&mut prev.identities),
            std::mem::take(&mut prev.members),
        );
        if m.cluster_identities {
            (v.identities, v.unallocated, v.provisional) =
                cluster_identities(m, &mut pods, &fresh, before);
        } else {
            (v.identities, v.members) = assign_identities(&mut pods, &fresh, &gone, prev_ids);
        }
        v.pods = pods.into_iter().collect();
        v.kube_apiserver = kube_apiserver(m);
        v.services_warnings_from = v.warnings.len();
        let read = services_changed || prev.services_read_pods;
        if read {
            let (services, read_pods) = services::service_ports(m, &v.pods, &mut v.warnings);
            v.services = services;
            v.services_read_pods = read_pods;
        } else {
            v.services = prev.services;
            v.warnings
                .extend(prev.warnings.drain(prev.services_warnings_from..));
        }
        (v, read)
    }

    /// Reads the Services and EndpointSlices of `m` again, keeping the rest of the view: what
    /// [`ClusterView::from_manifests`] would give when only those kinds changed since the view
    /// was made (their warnings are replaced).
    pub fn refresh_services(&mut self, m: &Manifests) {
        self.kube_apiserver = kube_apiserver(m);
        self.warnings.truncate(self.services_warnings_from);
        let (services, read_pods) = services::service_ports(m, &self.pods, &mut self.warnings);
        self.services = services;
        self.services_read_pods = read_pods;
    }

    /// The service ports as node `me` (underlay address `node_ip`, if known) serves them:
    /// NodePort frontends on `node_ip`, backends on `me` marked local.
    pub fn service_specs(&self, me: &str, node_ip: Option<Ipv4Addr>) -> Vec<ServiceSpec> {
        self.services.iter().map(|s| s.spec(me, node_ip)).collect()
    }

    /// The pods on `node`.
    pub fn pods_on<'a>(&'a self, node: &'a str) -> impl Iterator<Item = &'a PodView> + 'a {
        self.pods.values().filter(move |p| p.node == node)
    }

    /// The ipcache as node `me` sees it: pods (with the node to tunnel to when remote), nodes
    /// (`host` for itself; `remote-node`, tunnelled to that node, for the others), and `world`
    /// for everything else.
    pub fn ipcache(&self, me: &str) -> IpCache {
        let mut c = IpCache::default();
        let host32 = |ip: Ipv4Addr| Ipv4Net::new(ip, 32).expect("/32 is valid");
        c.insert(
            Ipv4Net::default(),
            IpCacheEntry {
                identity: Identity::WORLD,
                tunnel: None,
            },
        );
        for n in self.nodes.values() {
            // Another node's own address is reached through the tunnel to it, so a backend
            // pod's reply to a client source-NATed to that node goes back the way it came.
            let (identity, tunnel) = if n.name == me {
                (Identity::HOST, None)
            } else {
                (Identity::REMOTE_NODE, Some(n.ip))
            };
            c.insert(host32(n.ip), IpCacheEntry { identity, tunnel });
        }
        for p in self.pods.values() {
            let tunnel = if p.node == me {
                None
            } else {
                self.nodes.get(&p.node).map(|n| n.ip)
            };
            c.insert(
                host32(p.ip),
                IpCacheEntry {
                    identity: p.identity,
                    tunnel,
                },
            );
        }
        c
    }

    /// Identities a VNI may carry: the reserved ones that are sent (host, remote-node, …) and
    /// every pod identity.
    pub fn vni_identities(&self) -> impl Iterator<Item = u32> + '_ {
        Identity::RESERVED
            .iter()
            .map(|(i, _)| i.0)
            .filter(|i| *i != 0)
            .chain(self.identities.iter().map(|(i, _)| i.0))
    }
}

/// Two nodes (node-1 at 192.168.100.11, node-2 at .12, pod CIDRs 10.244.1/2.0/24) as
/// manifests, for tests.
#[cfg(test)]
macro_rules! two_nodes_yaml {
    () => {
        "apiVersion: v1
kind: Node
metadata: {name: node-1}
spec: {podCIDR: 10.244.1.0/24}
status: {addresses: [{type: InternalIP, address: 192.168.100.11}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-2}
spec: {podCIDR: 10.244.2.0/24}
status: {addresses: [{type: InternalIP, address: 192.168.100.12}]}
"
    };
}
#[cfg(test)]
pub(crate) use two_nodes_yaml;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::load_text;

    const TEXT: &str = concat!(
        two_nodes_yaml!(),
        "---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: default, labels: {app: web}}
spec: {nodeName: node-1, containers: []}
status: {podIP: 10.244.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: default, labels: {app: web}}
spec: {nodeName: node-2, containers: []}
status: {podIPs: [{ip: 10.244.2.10}]}
---
apiVersion: v1
kind: Pod
metadata: {name: pending, namespace: default}
spec: {containers: []}
",
    );

    fn view() -> ClusterView {
        let mut m = Manifests::default();
        load_text(&mut m, TEXT, std::path::Path::new("t.yaml"));
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        ClusterView::from_manifests(&m)
    }

    #[test]
    fn nodes_pods_and_identities() {
        let v = view();
        assert_eq!(v.nodes.len(), 2);
        assert_eq!(v.pods.len(), 2, "the pending pod has no address");
        let a = &v.pods[&("default".into(), "a".into())];
        let b = &v.pods[&("default".into(), "b".into())];
        assert_eq!(a.identity, b.identity, "same labels, same identity");
        assert!(!a.identity.is_reserved());
        assert_eq!(v.pods_on("node-2").count(), 1);
        assert_eq!(
            a.labels
                .get("k8s:io.cilium.k8s.namespace.labels.kubernetes.io/metadata.name"),
            Some("default"),
            "Kubernetes' automatic namespace label, without a Namespace object"
        );
        assert_eq!(v.namespaces["default"][NAMESPACE_NAME_LABEL], "default");
    }

    #[test]
    fn namespace_labels_add_the_automatic_name_label() {
        let mut m = Manifests::default();
        let text = "apiVersion: v1\nkind: Namespace\nmetadata: {name: x, labels: {ns: x}}\n";
        load_text(&mut m, text, std::path::Path::new("n.yaml"));
        let l = namespace_labels(&m, "x");
        assert_eq!(l.len(), 2);
        assert_eq!(
            (l["ns"].as_str(), l[NAMESPACE_NAME_LABEL].as_str()),
            ("x", "x")
        );
        assert_eq!(namespace_labels(&m, "y")[NAMESPACE_NAME_LABEL], "y");
        assert_eq!(ClusterView::from_manifests(&m).namespaces["x"], l);
    }

    #[test]
    fn ipcache_from_one_nodes_view() {
        let v = view();
        let c = v.ipcache("node-1");
        let l = |s: &str| *c.lookup(u32::from(s.parse::<Ipv4Addr>().unwrap())).unwrap();
        assert_eq!(
            l("10.244.2.10").tunnel,
            Some("192.168.100.12".parse().unwrap())
        );
        assert_eq!(l("10.244.1.10").tunnel, None);
        assert_eq!(l("192.168.100.11").identity, Identity::HOST);
        assert_eq!(l("192.168.100.12").identity, Identity::REMOTE_NODE);
        assert_eq!(
            l("192.168.100.12").tunnel,
            Some("192.168.100.12".parse().unwrap())
        );
        assert_eq!(l("192.168.100.11").tunnel, None);
        assert_eq!(l("8.8.8.8").identity, Identity::WORLD);
        let ids: Vec<u32> = v.vni_identities().collect();
        assert!(
            ids.contains(&6)
                && ids.contains(&v.pods.values().next().unwrap().identity.0)
                && !ids.contains(&0)
        );
    }

    #[test]
    fn a_pod_with_a_bad_address_is_left_out_with_a_warning() {
        let mut m = Manifests::default();
        let text = "\
apiVersion: v1
kind: Pod
metadata: {name: bad, namespace: x}
spec: {nodeName: node-1, containers: []}
status: {podIP: 10.244.1.300}
---
apiVersion: v1
kind: Pod
metadata: {name: v6, namespace: x}
spec: {nodeName: node-1, containers: []}
status: {podIP: 'fd00::1'}
";
        load_text(&mut m, text, std::path::Path::new("p.yaml"));
        let v = ClusterView::from_manifests(&m);
        assert!(v.pods.is_empty());
        assert_eq!(v.warnings.len(), 1, "{:?}", v.warnings);
        assert!(
            v.warnings[0].starts_with("pod x/bad: status.podIP: \"10.244.1.300\""),
            "{}",
            v.warnings[0]
        );
    }

    #[test]
    fn conventions() {
        let n = pod_ifname("default", "a");
        assert!(n.len() <= 15 && n.starts_with("lxc"));
        assert_ne!(n, pod_ifname("default", "b"));
        assert_eq!(
            pod_mac("10.244.1.10".parse().unwrap()),
            [0x0a, 0x58, 10, 244, 1, 10]
        );
        assert_eq!(
            gateway("10.244.1.0/24".parse().unwrap()),
            "10.244.1.1".parse::<Ipv4Addr>().unwrap()
        );
    }

    /// With cluster-wide identities: the numbers are the VireoIdentity objects', a marked one
    /// is not taken, a new pod without one waits outside the view, and a pod whose labels
    /// changed keeps its old number and labels until the new set has one.
    #[test]
    fn cluster_wide_identities_come_from_the_objects() {
        let mut m = Manifests::default();
        load_text(&mut m, TEXT, std::path::Path::new("t.yaml"));
        m.cluster_identities = true;
        let web = view().pods[&("default".into(), "a".into())].labels.clone();
        let none = ClusterView::from_manifests(&m);
        assert!(none.pods.is_empty(), "no identity, no pod");
        assert_eq!(none.unallocated, vec![web.clone()]);
        assert_eq!(none.identities.iter().count(), 0);

        let held = |labels: &Labels, marked| crate::source::ClusterIdentity {
            labels: labels.clone(),
            marked,
        };
        m.identities.insert(70_000, held(&web, true));
        let marked = ClusterView::from_manifests(&m);
        assert!(marked.pods.is_empty(), "a marked number is not taken");
        m.identities.insert(70_001, held(&web, false));
        m.identities.insert(70_002, held(&web, false));
        let v = ClusterView::from_manifests(&m);
        assert_eq!(v.pods.len(), 2);
        assert!(v.unallocated.is_empty());
        assert!(
            v.pods.values().all(|p| p.identity == Identity(70_001)),
            "the lowest unmarked number holding the set"
        );

        // Pod a's labels change to a set without a number yet.
        let a = m.pods.get_mut(&("default".into(), "a".into())).unwrap();
        a.metadata.labels = Some(BTreeMap::from([("app".into(), "api".into())]));
        let after = ClusterView::rebuild(&m, v.clone(), true).0;
        let pa = &after.pods[&("default".into(), "a".into())];
        assert_eq!(pa.identity, Identity(70_001), "keeps its number meanwhile");
        assert_eq!(pa.labels, web, "with the labels that number stands for");
        assert_eq!(after.unallocated.len(), 1);
        assert_ne!(after.unallocated[0], web);
        // Without the previous view (a restart) it waits instead.
        let fresh = ClusterView::from_manifests(&m);
        assert!(!fresh.pods.contains_key(&("default".into(), "a".into())));
        // Once the new set has a number, the pod takes it.
        let api = after.unallocated[0].clone();
        m.identities.insert(70_100, held(&api, false));
        let moved = ClusterView::rebuild(&m, after.clone(), true).0;
        let pa = &moved.pods[&("default".into(), "a".into())];
        assert_eq!((pa.identity, &pa.labels), (Identity(70_100), &api));
        assert!(moved.unallocated.is_empty());
        // A kept number that was deleted meanwhile is not kept.
        m.identities.remove(&70_100);
        m.identities.remove(&70_001);
        let gone = ClusterView::rebuild(&m, after.clone(), true).0;
        assert!(!gone.pods.contains_key(&("default".into(), "a".into())));
    }

    #[test]
    fn the_audit_mode_annotation_is_read_and_its_change_seen() {
        let text = |a: &str| {
            format!(
                "{}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: default, \
                 annotations: {{{a}}}}}\nspec: {{nodeName: node-1, containers: []}}\nstatus: \
                 {{podIP: 10.244.1.10}}\n",
                two_nodes_yaml!()
            )
        };
        let load = |a: &str| {
            let mut m = Manifests::default();
            load_text(&mut m, &text(a), std::path::Path::new("t.yaml"));
            assert!(m.errors.is_empty(), "{:?}", m.errors);
            m
        };
        let key = ("default".to_string(), "a".to_string());
        for (a, want) in [
            ("", false),
            ("'policy.vireo.io/audit-mode': 'true'", true),
            ("'policy.vireo.io/audit-mode': ' Enabled '", true),
            ("'policy.vireo.io/audit-mode': 'false'", false),
            ("'policy.vireo.io/audit-mode': 'yes please'", false),
            ("'other.io/audit-mode': 'true'", false),
        ] {
            let v = ClusterView::from_manifests(&load(a));
            assert_eq!(v.pods[&key].audit, want, "{a}");
        }
        // A view taken over from one without the annotation sees it come and go.
        let off = ClusterView::from_manifests(&load(""));
        let on = ClusterView::rebuild(&load("'policy.vireo.io/audit-mode': 'true'"), off, false).0;
        assert!(on.pods[&key].audit);
        let off = ClusterView::rebuild(&load(""), on, false).0;
        assert!(!off.pods[&key].audit);
    }
}
