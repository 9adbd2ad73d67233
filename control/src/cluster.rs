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
use vireo_lb::ServiceSpec;
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
    p.spec
        .iter()
        .flat_map(|s| &s.containers)
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|cp| {
            Some(ContainerPortView {
                name: cp.name.clone().unwrap_or_default(),
                port: services::port_number(cp.container_port)?,
                proto: services::protocol(cp.protocol.as_deref())?,
            })
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

/// Each label set once, in the order [`IdentityAllocator::from_sets`] sorts them (FNV-1a of the
/// canonical text, then the text), each key computed once. `from_sets` formats its key at
/// every comparison: given the pods' label sets as they come (10 000 pods), sorting took most
/// of [`ClusterView::from_manifests`]'s time; given this, its sort is one pass. The identities
/// are the same either way (it sorts and removes repeats itself).
fn label_sets<'a>(sets: impl IntoIterator<Item = &'a Labels>) -> Vec<&'a Labels> {
    let unique: rustc_hash::FxHashSet<&Labels> = sets.into_iter().collect();
    let mut v: Vec<(u64, String, &Labels)> = unique
        .into_iter()
        .map(|l| {
            let c = l.canonical();
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in c.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            (h, c, l)
        })
        .collect();
    v.sort_unstable_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    v.into_iter().map(|(_, _, l)| l).collect()
}

/// A pod with an address and a node, before its identity is known.
struct Placed<'a> {
    ns: String,
    name: String,
    node: String,
    ip: Ipv4Addr,
    labels: Labels,
    identity: Identity,
    pod: &'a Pod,
}

/// Gives each pod its identity, and answers the identities in use and the label sets still
/// without one.
///
/// - Node-local ([`Manifests::cluster_identities`] false): numbers from the label sets alone
///   ([`IdentityAllocator::from_sets`]).
/// - Cluster-wide: the number of a `VireoIdentity` holding the pod's label set (the lowest,
///   should two hold it; never one the garbage collector marked, which may be about to go).
///   A pod whose label set has none yet keeps the identity and labels it had in `prev` while
///   its new one is allocated (as a Cilium endpoint keeps its identity when its labels
///   change), as long as that identity still exists; a new pod waits, left out of the view,
///   as a Cilium endpoint waits for its identity. Either way its label set is in the second
///   list.
fn assign_identities(
    m: &Manifests,
    prev: &ClusterView,
    pods: &mut Vec<Placed<'_>>,
) -> (IdentityAllocator, Vec<Labels>) {
    if !m.cluster_identities {
        let ids = IdentityAllocator::from_sets(label_sets(pods.iter().map(|p| &p.labels)));
        for p in pods.iter_mut() {
            p.identity = ids.get(&p.labels).unwrap_or(Identity::INIT);
        }
        return (ids, Vec::new());
    }
    let mut by_labels: rustc_hash::FxHashMap<&Labels, Identity> = Default::default();
    for (n, ci) in m.identities.iter().filter(|(_, ci)| !ci.marked) {
        // Ascending numbers: the lowest wins.
        by_labels.entry(&ci.labels).or_insert(Identity(*n));
    }
    let mut used = Vec::new();
    let mut seen = rustc_hash::FxHashSet::default();
    let mut waiting = std::collections::BTreeSet::new();
    pods.retain_mut(|p| {
        if let Some(id) = by_labels.get(&p.labels) {
            p.identity = *id;
        } else {
            waiting.insert(p.labels.clone());
            let before = prev
                .pods
                .get(&(p.ns.clone(), p.name.clone()))
                .filter(|old| {
                    m.identities
                        .get(&old.identity.0)
                        .is_some_and(|ci| ci.labels == old.labels)
                });
            let Some(old) = before else {
                return false;
            };
            p.identity = old.identity;
            p.labels = old.labels.clone();
        }
        if seen.insert(p.identity) {
            used.push((p.identity, p.labels.clone()));
        }
        true
    });
    (
        IdentityAllocator::from_mapping(used),
        waiting.into_iter().collect(),
    )
}

impl ClusterView {
    /// Reduces manifests to the view.
    pub fn from_manifests(m: &Manifests) -> ClusterView {
        ClusterView::from_manifests_after(m, &ClusterView::default())
    }

    /// [`ClusterView::from_manifests`], given the view the previous objects gave: with
    /// cluster-wide identities, a pod whose label set has no identity yet keeps the one it
    /// had there (see [`assign_identities`]).
    pub fn from_manifests_after(m: &Manifests, prev: &ClusterView) -> ClusterView {
        let mut v = ClusterView::default();
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
        let mut pods = Vec::new();
        for ((ns, name), p) in &m.pods {
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone());
            let ip = p.status.as_ref().and_then(|s| {
                s.pod_ip
                    .as_deref()
                    .into_iter()
                    .chain(s.pod_ips.iter().flatten().map(|i| i.ip.as_str()))
                    .find_map(|i| i.parse::<Ipv4Addr>().ok())
            });
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
                continue;
            };
            let ns_labels = v
                .namespaces
                .entry(ns.clone())
                .or_insert_with(|| namespace_labels(m, ns));
            let labels = Labels::for_pod(ns, p.metadata.labels.iter().flatten(), &*ns_labels);
            pods.push(Placed {
                ns: ns.clone(),
                name: name.clone(),
                node,
                ip,
                labels,
                identity: Identity::INIT,
                pod: p,
            });
        }
        (v.identities, v.unallocated) = assign_identities(m, prev, &mut pods);
        for Placed {
            ns,
            name,
            node,
            ip,
            labels,
            identity,
            pod: p,
        } in pods
        {
            let status = p.status.as_ref();
            // As Kubernetes, but a pod without a Ready condition counts as ready: the
            // sandbox (kubelet here) writes none.
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
            let ports = container_ports(p).collect();
            v.pods.insert(
                (ns.clone(), name.clone()),
                PodView {
                    namespace: ns,
                    name,
                    node,
                    ip,
                    labels,
                    identity,
                    pod_labels: p.metadata.labels.clone().unwrap_or_default(),
                    ports,
                    ready,
                    terminating: p.metadata.deletion_timestamp.is_some(),
                    terminal,
                },
            );
        }
        v.services_warnings_from = v.warnings.len();
        v.services = services::service_ports(m, &v.pods, &mut v.warnings);
        v
    }

    /// Reads the Services and EndpointSlices of `m` again, keeping the rest of the view: what
    /// [`ClusterView::from_manifests`] would give when only those kinds changed since the view
    /// was made (their warnings are replaced).
    pub fn refresh_services(&mut self, m: &Manifests) {
        self.warnings.truncate(self.services_warnings_from);
        self.services = services::service_ports(m, &self.pods, &mut self.warnings);
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
    fn label_sets_come_in_the_allocators_order() {
        let sets: Vec<Labels> = (0..200)
            .map(|i| {
                let l = BTreeMap::from([("app".to_string(), format!("a{}", i % 50))]);
                Labels::for_pod("default", &l, &BTreeMap::new())
            })
            .collect();
        let ours = label_sets(&sets);
        assert_eq!(ours.len(), 50);
        let a = IdentityAllocator::from_sets(ours.iter().copied());
        let b = IdentityAllocator::from_sets(&sets);
        for l in &sets {
            assert_eq!(a.get(l), b.get(l));
        }
        // Already sorted as the allocator sorts: sorting again changes nothing.
        let mut again = ours.clone();
        again.sort_by_key(|l| {
            let c = l.canonical();
            (fnv(&c), c)
        });
        assert_eq!(again, ours);
    }

    fn fnv(s: &str) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in s.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        h
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
        let after = ClusterView::from_manifests_after(&m, &v);
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
        let moved = ClusterView::from_manifests_after(&m, &after);
        let pa = &moved.pods[&("default".into(), "a".into())];
        assert_eq!((pa.identity, &pa.labels), (Identity(70_100), &api));
        assert!(moved.unallocated.is_empty());
        // A kept number that was deleted meanwhile is not kept.
        m.identities.remove(&70_100);
        m.identities.remove(&70_001);
        let gone = ClusterView::from_manifests_after(&m, &after);
        assert!(!gone.pods.contains_key(&("default".into(), "a".into())));
    }
}
