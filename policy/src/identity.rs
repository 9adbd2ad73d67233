//! Security identities.
//!
//! An identity is a number that stands for a set of security labels. Cilium's reserved
//! identities keep their numbers; endpoints get an identity from their labels (namespace and pod
//! labels), and equal label sets get equal identities.
//!
//! Numbering is derived from the labels themselves: a hash of the canonical label string into
//! `256..2^24` (24 bits, so it fits the VXLAN VNI), with linear probing on collision. Every node
//! that sees the same label sets therefore computes the same numbers without talking to the
//! others; the Kubernetes issue replaces this with cluster-wide allocation.

use std::collections::BTreeMap;
use std::fmt;

use rustc_hash::FxHashMap;

/// A numeric security identity.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Identity(pub u32);

impl Identity {
    /// No identity known.
    pub const UNKNOWN: Identity = Identity(0);
    /// The local host.
    pub const HOST: Identity = Identity(1);
    /// Anything outside the cluster.
    pub const WORLD: Identity = Identity(2);
    /// Pods not managed by the dataplane.
    pub const UNMANAGED: Identity = Identity(3);
    /// Health-check endpoints.
    pub const HEALTH: Identity = Identity(4);
    /// Endpoints whose identity is not resolved yet.
    pub const INIT: Identity = Identity(5);
    /// Other nodes of the cluster.
    pub const REMOTE_NODE: Identity = Identity(6);
    /// The Kubernetes API server. Its addresses keep their own identity (a pod's, a node's,
    /// world); policy also sees them as this one (see `PolicyTables::set_kube_apiserver`).
    pub const KUBE_APISERVER: Identity = Identity(7);
    /// Cilium's ingress proxy (none in Vireo: no traffic has it).
    pub const INGRESS: Identity = Identity(8);

    /// The reserved identities with their names, as Cilium numbers them.
    pub const RESERVED: [(Identity, &'static str); 9] = [
        (Identity::UNKNOWN, "unknown"),
        (Identity::HOST, "host"),
        (Identity::WORLD, "world"),
        (Identity::UNMANAGED, "unmanaged"),
        (Identity::HEALTH, "health"),
        (Identity::INIT, "init"),
        (Identity::REMOTE_NODE, "remote-node"),
        (Identity::KUBE_APISERVER, "kube-apiserver"),
        (Identity::INGRESS, "ingress"),
    ];

    /// First number for endpoint identities.
    pub const FIRST_ENDPOINT: u32 = 256;
    /// One past the last number that fits a VNI.
    pub const LIMIT: u32 = 1 << 24;

    /// Whether this is one of the reserved identities.
    pub fn is_reserved(self) -> bool {
        self.0 < Self::FIRST_ENDPOINT
    }

    /// The reserved identity called `name` (`host`, `world`, …).
    pub fn reserved(name: &str) -> Option<Identity> {
        Self::RESERVED
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(i, _)| *i)
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A set of security labels, each `source:key=value` (sources: `k8s`, `reserved`, …).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub struct Labels(BTreeMap<String, String>);

/// First number of CIDR identities: node-local identities of the address blocks policies name
/// (as Cilium's local identities, above the 24 bits a VNI carries: they never cross the tunnel).
pub const CIDR_IDENTITY_BASE: u32 = 1 << 24;

/// The label that carries a pod's namespace.
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// The prefix under which a namespace's own labels are attached to its pods.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// The label that carries a pod's service account (Cilium's).
pub const SERVICE_ACCOUNT_LABEL: &str = "io.cilium.k8s.policy.serviceaccount";
/// The label that carries the name of the pod's cluster (Cilium's `cluster-name`).
pub const CLUSTER_LABEL: &str = "io.cilium.k8s.policy.cluster";
/// The cluster name when none is configured (Cilium's default).
pub const DEFAULT_CLUSTER_NAME: &str = "default";

/// Where a pod is: what Cilium derives labels from besides the pod's own labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PodOrigin<'a> {
    /// The cluster's name (`cluster_name`, default [`DEFAULT_CLUSTER_NAME`]).
    pub cluster: &'a str,
    /// The pod's namespace.
    pub namespace: &'a str,
    /// Its service account (`spec.serviceAccountName`; `default` when unset, as the API server
    /// fills it in).
    pub service_account: &'a str,
}

impl<'a> PodOrigin<'a> {
    /// A pod of namespace `namespace` in the default cluster, with the default service account.
    pub fn in_namespace(namespace: &'a str) -> PodOrigin<'a> {
        PodOrigin {
            cluster: DEFAULT_CLUSTER_NAME,
            namespace,
            service_account: "default",
        }
    }
}

impl Labels {
    /// Labels from `(source:key, value)` pairs.
    pub fn new<I, K, V>(it: I) -> Labels
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Labels(it.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    /// A pod's security labels, as Cilium derives them, all under the `k8s` source: its own
    /// labels, its namespace's labels under `io.cilium.k8s.namespace.labels.`, and
    /// `io.kubernetes.pod.namespace`, `io.cilium.k8s.policy.serviceaccount` and
    /// `io.cilium.k8s.policy.cluster` (these three win over a pod label of the same key, as
    /// in Cilium).
    pub fn for_pod<'a>(
        origin: PodOrigin<'_>,
        pod_labels: impl IntoIterator<Item = (&'a String, &'a String)>,
        namespace_labels: impl IntoIterator<Item = (&'a String, &'a String)>,
    ) -> Labels {
        let mut m = BTreeMap::new();
        for (k, v) in pod_labels {
            m.insert(format!("k8s:{k}"), v.clone());
        }
        for (k, v) in namespace_labels {
            m.insert(format!("k8s:{NAMESPACE_LABELS_PREFIX}{k}"), v.clone());
        }
        m.insert(
            format!("k8s:{NAMESPACE_LABEL}"),
            origin.namespace.to_string(),
        );
        m.insert(
            format!("k8s:{SERVICE_ACCOUNT_LABEL}"),
            origin.service_account.to_string(),
        );
        m.insert(format!("k8s:{CLUSTER_LABEL}"), origin.cluster.to_string());
        Labels(m)
    }

    /// The labels.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The value of `source:key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// Canonical text: `k=v;k=v` in key order.
    pub fn canonical(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }

    /// The stable 64-bit hash identities are numbered from (FNV-1a of [`Labels::canonical`]):
    /// the same on every machine and build. [`IdentityAllocator::allocate`] tries
    /// `FIRST_ENDPOINT + hash % (LIMIT - FIRST_ENDPOINT)` first, then the following numbers.
    pub fn stable_hash(&self) -> u64 {
        fnv1a(&self.canonical())
    }
}

impl fmt::Display for Labels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.canonical())
    }
}

/// Allocates endpoint identities from label sets.
#[derive(Debug, Clone, Default)]
pub struct IdentityAllocator {
    by_labels: FxHashMap<Labels, Identity>,
    by_id: FxHashMap<Identity, Labels>,
}

/// 64-bit FNV-1a: stable across builds and machines (unlike std's hasher).
fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

impl IdentityAllocator {
    /// The identity of `labels`, allocating it if new.
    pub fn allocate(&mut self, labels: &Labels) -> Identity {
        match self.by_labels.get(labels) {
            Some(id) => *id,
            None => self.insert(labels, fnv1a(&labels.canonical())),
        }
    }

    /// Allocates new label set `labels`, of stable hash `hash`: at `FIRST_ENDPOINT + hash %
    /// span`, or the first free number after it.
    fn insert(&mut self, labels: &Labels, hash: u64) -> Identity {
        let span = u64::from(Identity::LIMIT - Identity::FIRST_ENDPOINT);
        let mut n = hash % span;
        let id = loop {
            let id = Identity(Identity::FIRST_ENDPOINT + n as u32);
            if !self.by_id.contains_key(&id) {
                break id;
            }
            n = (n + 1) % span;
        };
        self.by_labels.insert(labels.clone(), id);
        self.by_id.insert(id, labels.clone());
        id
    }

    /// Builds an allocator for exactly these label sets. Sets are allocated in hash order, so
    /// the numbering depends only on the sets, not on the order they were seen in.
    pub fn from_sets<'a>(sets: impl IntoIterator<Item = &'a Labels>) -> Self {
        // The key is a string built per set: once each, not at every comparison (nor again
        // to allocate).
        let mut v: Vec<(u64, String, &Labels)> = sets
            .into_iter()
            .map(|l| {
                let c = l.canonical();
                (fnv1a(&c), c, l)
            })
            .collect();
        // (Two different sets may share a text: `a=b;c=d` is also `{a: "b;c=d"}`.)
        v.sort_unstable_by(|a, b| (a.0, &a.1, a.2).cmp(&(b.0, &b.1, b.2)));
        v.dedup_by(|a, b| a.2 == b.2);
        let mut a = IdentityAllocator::default();
        for (hash, _, l) in v {
            a.insert(l, hash);
        }
        a
    }

    /// How many identities are allocated.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// An allocator holding exactly this mapping, as allocated elsewhere (cluster-wide
    /// allocation through the API server). Later [`IdentityAllocator::allocate`] calls probe
    /// around it. A number or label set given twice keeps its first pairing.
    pub fn from_mapping(mapping: impl IntoIterator<Item = (Identity, Labels)>) -> Self {
        let mut a = IdentityAllocator::default();
        for (id, labels) in mapping {
            if a.by_id.contains_key(&id) || a.by_labels.contains_key(&labels) {
                continue;
            }
            a.by_labels.insert(labels.clone(), id);
            a.by_id.insert(id, labels);
        }
        a
    }

    /// The labels of an identity.
    pub fn labels(&self, id: Identity) -> Option<&Labels> {
        self.by_id.get(&id)
    }

    /// The identity of a label set, if allocated.
    pub fn get(&self, labels: &Labels) -> Option<Identity> {
        self.by_labels.get(labels).copied()
    }

    /// Whether `id` is reserved or allocated here.
    pub fn is_known(&self, id: Identity) -> bool {
        id.is_reserved() && id != Identity::UNKNOWN && id.0 <= Identity::REMOTE_NODE.0
            || self.by_id.contains_key(&id)
    }

    /// All allocated identities.
    pub fn iter(&self) -> impl Iterator<Item = (Identity, &Labels)> {
        self.by_id.iter().map(|(i, l)| (*i, l))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(ns: &str, app: &str) -> Labels {
        let l: BTreeMap<String, String> = [("app".to_string(), app.to_string())].into();
        Labels::for_pod(PodOrigin::in_namespace(ns), &l, &BTreeMap::new())
    }

    #[test]
    fn equal_labels_equal_identities_and_order_does_not_matter() {
        let sets = [pod("x", "a"), pod("x", "b"), pod("y", "a"), pod("x", "a")];
        let a = IdentityAllocator::from_sets(sets.iter());
        let b = IdentityAllocator::from_sets(sets.iter().rev());
        for s in &sets {
            assert_eq!(a.get(s), b.get(s));
            let id = a.get(s).unwrap();
            assert!(!id.is_reserved() && id.0 < Identity::LIMIT);
        }
        assert_ne!(a.get(&sets[0]), a.get(&sets[1]));
        assert_ne!(
            a.get(&sets[0]),
            a.get(&sets[2]),
            "namespace is part of the identity"
        );
        assert_eq!(a.iter().count(), 3);
    }

    #[test]
    fn reserved_identities_keep_ciliums_numbers() {
        assert_eq!(Identity::reserved("host"), Some(Identity(1)));
        assert_eq!(Identity::reserved("world"), Some(Identity(2)));
        assert_eq!(Identity::reserved("remote-node"), Some(Identity(6)));
        let a = IdentityAllocator::default();
        assert!(a.is_known(Identity::HOST) && a.is_known(Identity::REMOTE_NODE));
        assert!(
            !a.is_known(Identity::UNKNOWN)
                && !a.is_known(Identity(7))
                && !a.is_known(Identity(300))
        );
    }

    #[test]
    fn collisions_probe_to_distinct_numbers() {
        let mut a = IdentityAllocator::default();
        let ids: std::collections::BTreeSet<Identity> = (0..5000)
            .map(|i| a.allocate(&pod("ns", &i.to_string())))
            .collect();
        assert_eq!(ids.len(), 5000);
    }

    #[test]
    fn from_mapping_keeps_external_numbers_and_stable_hash_is_the_first_choice() {
        let l = pod("x", "a");
        let span = u64::from(Identity::LIMIT - Identity::FIRST_ENDPOINT);
        let first = Identity(Identity::FIRST_ENDPOINT + (l.stable_hash() % span) as u32);
        assert_eq!(IdentityAllocator::default().allocate(&l), first);
        let mut a = IdentityAllocator::from_mapping([
            (Identity(300), l.clone()),
            (Identity(300), pod("x", "b")),
            (Identity(301), l.clone()),
        ]);
        assert_eq!(a.get(&l), Some(Identity(300)));
        assert_eq!(a.iter().count(), 1);
        assert_eq!(a.allocate(&l), Identity(300));
        assert_ne!(a.allocate(&pod("x", "b")), Identity(300));
    }

    #[test]
    fn pod_labels_carry_namespace_and_its_labels() {
        let nsl: BTreeMap<String, String> = [("team".to_string(), "red".to_string())].into();
        let origin = PodOrigin {
            cluster: "east",
            namespace: "prod",
            service_account: "api",
        };
        // A pod label may not pose as a derived one.
        let own: BTreeMap<String, String> =
            [(SERVICE_ACCOUNT_LABEL.to_string(), "root".to_string())].into();
        let l = Labels::for_pod(origin, &own, &nsl);
        assert_eq!(l.get("k8s:io.kubernetes.pod.namespace"), Some("prod"));
        assert_eq!(
            l.get("k8s:io.cilium.k8s.namespace.labels.team"),
            Some("red")
        );
        assert_eq!(
            l.get("k8s:io.cilium.k8s.policy.serviceaccount"),
            Some("api")
        );
        assert_eq!(l.get("k8s:io.cilium.k8s.policy.cluster"), Some("east"));
        let other = Labels::for_pod(
            PodOrigin {
                service_account: "web",
                ..origin
            },
            &own,
            &nsl,
        );
        assert_ne!(l, other, "the service account is part of the identity");
    }
}
