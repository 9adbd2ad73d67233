//! One node's share of the cluster: from the objects a source delivers to the tables that node's
//! fast path reads. This is the one way tables are built: the manifest directory feeds it today
//! ([`ManifestDir`]), and the Kubernetes source feeds it the same [`Manifests`] through the same
//! [`Source`] interface.
//!
//! [`NodeControl`] keeps what the last build knew (the cluster view, the policy set, the
//! incremental policy compiler, the previous Maglev tables) so that each build redoes only what
//! changed. It never touches the dataplane: the agent copies what it builds into the workers'
//! snapshot and attaches the interfaces it names.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use rustc_hash::FxHashSet;
use vireo_lb::ServiceTable;
use vireo_policy::{
    Compiler, Direction, Identity, IdentityAllocator, IpCache, Labels, PolicyTables,
};

use crate::allocator::{EndpointState, EndpointStatus, LocalEndpoint};
use crate::cluster::{gateway, pod_ifname, pod_mac, ClusterView, NAMESPACE_NAME_LABEL};
use crate::config::ServicesConfig;
use crate::kube::UpdateLatency;
use crate::netpol::{self, PolicySet};
use crate::services::ServiceTableBuilder;
use crate::source::{self, Manifests};

/// A function a source calls, from any thread, to have its consumer poll soon.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// Where the objects come from. `poll` never blocks: it answers the complete set of objects when
/// something changed since the last call, and `None` otherwise.
///
/// The consumer (the agent) polls at least once a second, and at once when the source wakes it
/// ([`Source::set_waker`]); after publishing the tables built from a poll's objects it calls
/// [`Source::published`].
pub trait Source {
    /// The objects, when they changed.
    fn poll(&mut self) -> Option<Manifests>;

    /// [`Source::poll`], lending the objects to `apply` instead of handing over a copy (a
    /// source that keeps them saves the copy), with which kinds of objects changed since the
    /// last poll ([`Changed::ALL`] from a source that cannot tell): whether they changed (and
    /// `apply` ran).
    fn poll_with(&mut self, apply: &mut dyn FnMut(&Manifests, Changed)) -> bool {
        match self.poll() {
            Some(m) => {
                apply(&m, Changed::ALL);
                true
            }
            None => false,
        }
    }

    /// Sets the function that makes the consumer poll soon; a source that changes on its own
    /// calls it (once per burst of changes). The default never calls it.
    fn set_waker(&mut self, _waker: Waker) {}

    /// The tables built from the last poll's objects by `control` are published: the source
    /// may record how long that took and report the problems of the build.
    fn published(&mut self, _control: &NodeControl) {}

    /// The source's status, for `vireo status`: at least `kind`, `synced`, `stale_since`,
    /// `last_error`, `events`, `rebuilds` and `latency` (`count`, `p50_us`, `p99_us`, `max_us`).
    fn status(&self) -> serde_json::Value {
        serde_json::json!({"kind": "unknown"})
    }

    /// Whether the source has delivered a complete view, and since when it has been failing
    /// (for metrics and readiness). The default: synced, never stale.
    fn health(&self) -> SourceHealth {
        SourceHealth {
            synced: true,
            ..SourceHealth::default()
        }
    }

    /// The latency from a change at the source to its tables being published, when the
    /// source records it.
    fn update_latency(&self) -> Option<&UpdateLatency> {
        None
    }

    /// This node's pods as their `VireoEndpoint`s are to show them, after every reconcile (the
    /// same set again when nothing changed). A source that writes them back (the Kubernetes
    /// source) publishes what changed and deletes those of pods gone from the set, without
    /// blocking; the default does nothing.
    fn endpoints(&mut self, _eps: &[LocalEndpoint]) {}
}

/// How a source is doing ([`Source::health`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourceHealth {
    /// Its first complete view was delivered.
    pub synced: bool,
    /// Since when it has been failing (e.g. the API server unreachable); None: healthy.
    pub stale_since: Option<SystemTime>,
    /// Events received (watch events, directory reads).
    pub events: u64,
}

/// Which kinds of objects changed between two polls, so that [`NodeControl::apply_changed`]
/// redoes only what depends on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Changed {
    /// Nodes, Namespaces or Pods: everything depends on them.
    pub workloads: bool,
    /// Services or EndpointSlices.
    pub services: bool,
    /// Network policies.
    pub policies: bool,
}

impl Changed {
    /// Everything may have changed.
    pub const ALL: Changed = Changed {
        workloads: true,
        services: true,
        policies: true,
    };
}

/// A directory of Kubernetes YAML, read again whenever a file in it changes (name, mtime or size).
#[derive(Debug)]
pub struct ManifestDir {
    dir: PathBuf,
    signature: Vec<(PathBuf, SystemTime, u64)>,
    /// Reads done.
    reads: u64,
    rebuilds: u64,
    /// When the last read found a change, until published.
    pending: Option<Instant>,
    latency: UpdateLatency,
    /// The first problem of the last read, and how many there were.
    last_error: Option<String>,
    errors: usize,
    /// Given to [`Manifests::read`].
    read: source::ReadOptions,
}

impl ManifestDir {
    /// A source reading `dir`; its first poll reads it.
    pub fn new(dir: &Path) -> ManifestDir {
        ManifestDir {
            dir: dir.to_owned(),
            signature: Vec::new(),
            reads: 0,
            rebuilds: 0,
            pending: None,
            latency: UpdateLatency::default(),
            last_error: None,
            errors: 0,
            read: source::ReadOptions::default(),
        }
    }

    /// The same, with objects read so ([`Manifests::read`]).
    pub fn with_read_options(mut self, read: source::ReadOptions) -> ManifestDir {
        self.read = read;
        self
    }
}

impl Source for ManifestDir {
    fn poll(&mut self) -> Option<Manifests> {
        let sig = dir_signature(&self.dir);
        if sig == self.signature {
            return None;
        }
        let started = Instant::now();
        self.signature = sig;
        self.reads += 1;
        let mut m = source::load_dir(&self.dir);
        m.read.clone_from(&self.read);
        self.last_error = m.errors.first().cloned();
        self.errors = m.errors.len();
        self.pending = Some(started);
        Some(m)
    }

    fn published(&mut self, _control: &NodeControl) {
        if let Some(t) = self.pending.take() {
            self.latency.record(t.elapsed());
        }
        self.rebuilds += 1;
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "kind": "manifests",
            "dir": self.dir,
            "synced": self.reads > 0,
            "stale_since": null,
            "last_error": self.last_error,
            "errors": self.errors,
            "events": self.reads,
            "rebuilds": self.rebuilds,
            "latency": self.latency.to_json(),
        })
    }

    fn health(&self) -> SourceHealth {
        SourceHealth {
            synced: self.reads > 0,
            stale_since: None,
            events: self.reads,
        }
    }

    fn update_latency(&self) -> Option<&UpdateLatency> {
        Some(&self.latency)
    }
}

/// File names, mtimes and sizes in `dir`: a change in any of them means "read again".
fn dir_signature(dir: &Path) -> Vec<(PathBuf, SystemTime, u64)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            Some((e.path(), m.modified().ok()?, m.len()))
        })
        .collect();
    v.sort();
    v
}

/// A pod of this node as the agent attaches it: its host-side veth and its endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodEndpoint {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// Host-side veth name ([`pod_ifname`]).
    pub ifname: String,
    /// The pod's address.
    pub ip: Ipv4Addr,
    /// The pod's MAC ([`pod_mac`]).
    pub mac: [u8; 6],
    /// Its security identity.
    pub identity: u32,
}

/// Another node, as the overlay reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerNode {
    /// Node name.
    pub name: String,
    /// Its underlay address (the tunnel endpoint).
    pub ip: Ipv4Addr,
    /// The MAC of the next hop towards it on the uplink, once the kernel has resolved it.
    pub next_hop_mac: Option<[u8; 6]>,
}

/// A service table ready to publish, with the frontends the uplink must steer to it.
#[derive(Debug, Clone)]
pub struct ServicesBuild {
    /// The table.
    pub table: Arc<ServiceTable>,
    /// (address, port, IP protocol) of the NodePort, external and LoadBalancer frontends.
    pub steered: Vec<(Ipv4Addr, u16, u8)>,
    /// Service ports in the table.
    pub ports: usize,
    /// Maglev tables built.
    pub built: usize,
    /// Maglev tables taken over from the previous build.
    pub reused: usize,
    /// How long each Maglev table built took.
    pub build_times: Vec<std::time::Duration>,
}

/// Compiled policy ready to publish.
#[derive(Debug, Clone)]
pub struct PolicyBuild {
    /// The tables.
    pub tables: Arc<PolicyTables>,
    /// Identities compiled for.
    pub identities: usize,
    /// Policy groups (by kind and name) whose content changed.
    pub changed: usize,
}

/// One node's control state: what the source said last, and the builders that turn it into
/// tables.
#[derive(Debug)]
pub struct NodeControl {
    node: String,
    view: ClusterView,
    policies: PolicySet,
    /// What each policy document was read into.
    policy_cache: netpol::PolicyCache,
    compiler: Compiler,
    /// Identities of statically configured endpoints (config file, API).
    static_ids: IdentityAllocator,
    service_builder: ServiceTableBuilder,
    /// The `services` configuration of the last service build.
    services_built_with: Option<ServicesConfig>,
    /// The objects changed since the last service and policy builds.
    services_stale: bool,
    policy_stale: bool,
    /// The problems of the last apply (logged when they appeared).
    logged: BTreeSet<(&'static str, String)>,
}

impl NodeControl {
    /// The control state of node `node`, with an empty cluster.
    pub fn new(node: &str) -> NodeControl {
        NodeControl {
            node: node.to_string(),
            view: ClusterView::default(),
            policies: PolicySet::default(),
            policy_cache: netpol::PolicyCache::default(),
            compiler: Compiler::new(),
            static_ids: IdentityAllocator::default(),
            service_builder: ServiceTableBuilder::default(),
            services_built_with: None,
            services_stale: false,
            policy_stale: false,
            logged: BTreeSet::new(),
        }
    }

    /// This node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Takes in the complete set of objects of the source. Problems in it are logged.
    pub fn apply(&mut self, m: &Manifests) {
        self.apply_changed(m, Changed::ALL);
    }

    /// [`NodeControl::apply`], when only the kinds `changed` changed since the last apply: the
    /// view is made again when workloads changed (taking over the pods, identities and service
    /// ports the change leaves as they were: [`ClusterView::rebuild`]), only its services when
    /// only services did; the policy documents that changed are read again, and when workloads
    /// changed also those that look at the pods ([`netpol::policies_reusing`]).
    pub fn apply_changed(&mut self, m: &Manifests, changed: Changed) {
        let node_ip = self.node_ip();
        let mut services_read = changed.services;
        if changed.workloads {
            // The view and the policies are independent reads of the objects: on two threads
            // (at 10 000 pods, each takes tens of milliseconds when made from scratch).
            let prev = std::mem::take(&mut self.view);
            let cache = &mut self.policy_cache;
            let mut cache_stale = false;
            let ((view, read), policies) = std::thread::scope(|s| {
                let policies = std::thread::Builder::new()
                    .name("vireo-policies".into())
                    .spawn_scoped(s, || netpol::policies_reusing(m, cache, true));
                let view = ClusterView::rebuild(m, prev, changed.services);
                let policies = match policies {
                    Ok(h) => h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)),
                    // The cache went with the thread that did not start: read from scratch
                    // (the cache no longer matches the pods: emptied below).
                    Err(_) => {
                        cache_stale = true;
                        netpol::policies(m)
                    }
                };
                (view, policies)
            });
            if cache_stale {
                self.policy_cache = netpol::PolicyCache::default();
            }
            self.view = view;
            self.policies = policies;
            services_read = read;
        } else {
            if changed.services {
                self.view.refresh_services(m);
            }
            if changed.policies {
                self.policies = netpol::policies_reusing(m, &mut self.policy_cache, false);
            }
        }
        // Each problem is logged once, when it appears: a source that rebuilds often (the
        // Kubernetes source) would repeat every one at every rebuild.
        let mut problems = BTreeSet::new();
        for e in m.errors.iter().chain(&self.view.warnings) {
            problems.insert(("manifests", e.clone()));
        }
        for w in &self.policies.warnings {
            problems.insert(("policies", w.clone()));
        }
        for (what, p) in problems.difference(&self.logged) {
            tracing::warn!("{what}: {p}");
        }
        self.logged = problems;
        self.services_stale |= services_read || self.node_ip() != node_ip;
        self.policy_stale |= changed.workloads
            || changed.policies
            || self.compiler_apiserver() != self.view.kube_apiserver;
        if changed == Changed::ALL {
            tracing::info!(
                nodes = self.view.nodes.len(),
                pods = self.view.pods.len(),
                policies = self.policies.policies.len(),
                "manifests loaded"
            );
        } else {
            tracing::debug!(?changed, "objects changed");
        }
    }

    /// [`NodeControl::apply_changed`] without taking anything over from the last apply: the
    /// view made from scratch when workloads changed, every policy document read again when
    /// workloads or policies changed (the tables built after it still reuse what they reuse).
    /// The same result; only slower. For measuring what the reuse saves (the example
    /// `kube_update_latency` compares both).
    pub fn apply_from_scratch(&mut self, m: &Manifests, changed: Changed) {
        if changed.workloads || changed.policies {
            self.policy_cache = netpol::PolicyCache::default();
        }
        if changed.workloads {
            self.view = std::mem::take(&mut self.view).pods_only();
            // The view has no service ports to take over.
            let services = true;
            return self.apply_changed(
                m,
                Changed {
                    services,
                    ..changed
                },
            );
        }
        self.apply_changed(m, changed);
    }

    /// The API server's addresses the compiler has, sorted.
    fn compiler_apiserver(&self) -> Vec<Ipv4Addr> {
        let mut v = self.compiler.kube_apiserver();
        v.sort_unstable();
        v
    }

    /// The cluster as last applied.
    pub fn view(&self) -> &ClusterView {
        &self.view
    }

    /// The policies as last applied.
    pub fn policies(&self) -> &PolicySet {
        &self.policies
    }

    /// The identity of an endpoint attached from the configuration file or the API: a pod with
    /// no labels in namespace `default`. A new one is compiled for at the next policy build.
    pub fn static_identity(&mut self) -> u32 {
        let known = self.static_ids.iter().count();
        let origin = vireo_policy::PodOrigin {
            cluster: self.view.cluster(),
            ..vireo_policy::PodOrigin::in_namespace("default")
        };
        let id = self.static_ids.allocate(&Labels::for_pod(
            origin,
            [],
            &BTreeMap::from([(NAMESPACE_NAME_LABEL.to_string(), "default".to_string())]),
        ));
        if self.static_ids.iter().count() != known {
            self.policy_stale = true;
        }
        id.0
    }

    /// The labels of an endpoint identity the policies were compiled for.
    pub fn labels(&self, id: u32) -> Option<&Labels> {
        self.compiler.labels(id)
    }

    /// Every identity with its labels (pods and static endpoints, not the reserved ones), sorted
    /// and without repeats: `(number, canonical labels)`.
    pub fn identities(&self) -> Vec<(u32, String)> {
        let mut ids: Vec<(u32, String)> = self
            .view
            .identities
            .iter()
            .chain(self.static_ids.iter())
            .map(|(i, l)| (i.0, l.canonical()))
            .collect();
        ids.sort();
        ids.dedup();
        ids
    }

    /// The pod of the cluster that has address `ip`, as `namespace/name`.
    pub fn pod_name(&self, ip: Ipv4Addr) -> Option<String> {
        self.view
            .pods
            .values()
            .find(|p| p.ip == ip)
            .map(|p| format!("{}/{}", p.namespace, p.name))
    }

    /// This node's pods, as the agent attaches them.
    pub fn pod_endpoints(&self) -> Vec<PodEndpoint> {
        self.view
            .pods_on(&self.node)
            .map(|p| PodEndpoint {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                ifname: pod_ifname(&p.namespace, &p.name),
                ip: p.ip,
                mac: pod_mac(p.ip),
                identity: p.identity.0,
            })
            .collect()
    }

    /// The names this node's pods give their container ports, by pod address (pods that name
    /// none are left out): what ingress named ports match, per endpoint.
    pub fn port_names(&self) -> BTreeMap<Ipv4Addr, vireo_policy::PortNames> {
        self.view
            .pods_on(&self.node)
            .map(|p| {
                let ports = p.ports.iter().map(|c| (c.name.as_str(), c.port, c.proto));
                (p.ip, vireo_policy::PortNames::new(ports))
            })
            .filter(|(_, n)| !n.is_empty())
            .collect()
    }

    /// The addresses of this node's pods whose policy is in audit mode (their annotation
    /// [`crate::cluster::AUDIT_MODE_ANNOTATION`]).
    pub fn audit_endpoints(&self) -> std::collections::BTreeSet<Ipv4Addr> {
        self.view
            .pods_on(&self.node)
            .filter(|p| p.audit)
            .map(|p| p.ip)
            .collect()
    }

    /// This node's pods as their `VireoEndpoint`s show them: identity and labels, address,
    /// node, whether `policy` (the tables in force, of revision `revision`) enforces each
    /// direction, and `ready` when `attached(ifname)` says its interface is attached, else
    /// `waiting-for-interface`. Sorted by namespace and name.
    pub fn local_endpoints(
        &self,
        policy: &PolicyTables,
        revision: u64,
        attached: &dyn Fn(&str) -> bool,
    ) -> Vec<LocalEndpoint> {
        let node_ip = self.node_ip();
        self.view
            .pods_on(&self.node)
            .map(|p| {
                let table = policy.get(p.identity.0);
                let enforced = |d| table.is_some_and(|t| t.enforced(d));
                LocalEndpoint {
                    namespace: p.namespace.clone(),
                    name: p.name.clone(),
                    status: EndpointStatus {
                        identity: p.identity,
                        labels: p.labels.clone(),
                        ipv4: Some(p.ip),
                        node_name: self.node.clone(),
                        node_ip,
                        ingress_enforcing: enforced(Direction::Ingress),
                        egress_enforcing: enforced(Direction::Egress),
                        policy_revision: revision,
                        state: if attached(&pod_ifname(&p.namespace, &p.name)) {
                            EndpointState::Ready
                        } else {
                            EndpointState::WaitingForInterface
                        },
                    },
                }
            })
            .collect()
    }

    /// This node's underlay address, once the source names the node.
    pub fn node_ip(&self) -> Option<Ipv4Addr> {
        self.view.nodes.get(&self.node).map(|n| n.ip)
    }

    /// The other nodes, each with the MAC of its next hop on `uplink` from the kernel's route
    /// and neighbour tables (asking the kernel to resolve one it does not know yet).
    pub fn peer_nodes(&self, uplink: &str) -> Vec<PeerNode> {
        self.view
            .nodes
            .values()
            .filter(|n| n.name != self.node)
            .map(|n| {
                let hop = crate::neigh::next_hop(n.ip, uplink);
                let mac = crate::neigh::lookup(hop, uplink);
                if mac.is_none() && !uplink.is_empty() {
                    if let Err(e) = crate::neigh::resolve(hop, uplink) {
                        tracing::debug!(%hop, "asking the kernel to resolve: {e}");
                    }
                }
                PeerNode {
                    name: n.name.clone(),
                    ip: n.ip,
                    next_hop_mac: mac,
                }
            })
            .collect()
    }

    /// Addresses whose ARP requests the dataplane answers: the configured gateways, then the
    /// gateway of this node's pod CIDR.
    pub fn gateways(&self, configured: Vec<Ipv4Addr>) -> Vec<Ipv4Addr> {
        let mut gateways = configured;
        if let Some(c) = self.view.nodes.get(&self.node).and_then(|n| n.pod_cidr) {
            gateways.push(gateway(c));
        }
        gateways
    }

    /// IP/CIDR → identity and tunnel endpoint, as this node sees the cluster.
    pub fn ipcache(&self) -> IpCache {
        self.view.ipcache(&self.node)
    }

    /// The identities a VNI may carry: every pod's and every static endpoint's.
    pub fn vni_identities(&self) -> FxHashSet<u32> {
        let mut ids: FxHashSet<u32> = self.view.vni_identities().collect();
        ids.extend(self.static_ids.iter().map(|(i, _)| i.0));
        ids
    }

    /// The service table, when the objects or the `services` configuration changed since the
    /// last build (`None` otherwise). Service ports whose spec, table size and seed are
    /// unchanged keep their Maglev tables. Problems are logged.
    pub fn build_services(&mut self, sc: ServicesConfig) -> Option<ServicesBuild> {
        if !self.services_stale && self.services_built_with == Some(sc) {
            return None;
        }
        self.services_stale = false;
        self.services_built_with = Some(sc);
        let specs = self.view.service_specs(&self.node, self.node_ip());
        let built = self
            .service_builder
            .build(specs, sc.maglev_table_size, sc.hash_seed);
        for w in &built.warnings {
            tracing::warn!("services: {w}");
        }
        let steered = built
            .table
            .steered()
            .iter()
            .map(|f| (f.ip, f.port, f.proto))
            .collect();
        Some(ServicesBuild {
            ports: built.table.services().len(),
            table: Arc::new(built.table),
            steered,
            built: built.built,
            reused: built.reused,
            build_times: built.build_times,
        })
    }

    /// The policies compiled for the identities of the pods and static endpoints, when the
    /// objects changed since the last build (`None` otherwise). Only what changed is
    /// recompiled: identities whose labels changed, policies (by kind and name) whose content
    /// changed. Every change is applied before the tables are returned, so a snapshot never
    /// holds a default-allow moment.
    pub fn build_policy(&mut self) -> Option<PolicyBuild> {
        if !self.policy_stale {
            return None;
        }
        self.policy_stale = false;
        let started = Instant::now();
        let want: BTreeMap<u32, &Labels> = self
            .view
            .identities
            .iter()
            .chain(self.static_ids.iter())
            .map(|(i, l)| (i.0, l))
            .collect();
        for id in self.compiler.endpoint_identities() {
            if !want.contains_key(&id.0) {
                self.compiler.remove_identity(id);
            }
        }
        for (&id, &l) in &want {
            if self.compiler.labels(id) != Some(l) {
                self.compiler.set_identity(Identity(id), l.clone());
            }
        }
        let groups = self.policies.by_object();
        let mut changed = 0;
        for key in self.compiler.policy_keys() {
            if !groups.contains_key(&key) && self.compiler.remove_policies(&key) {
                changed += 1;
            }
        }
        for (key, ps) in groups {
            if self.compiler.set_policies(&key, ps) {
                changed += 1;
            }
        }
        self.compiler
            .set_kube_apiserver(self.view.kube_apiserver.iter().copied());
        let tables = Arc::new(self.compiler.tables());
        tracing::debug!(ms = started.elapsed().as_millis() as u64, "policy compiled");
        Some(PolicyBuild {
            tables,
            identities: want.len(),
            changed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = r#"
apiVersion: v1
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
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: default, labels: {app: web}}
spec: {nodeName: node-1, containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.244.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: default, labels: {app: db}}
spec: {nodeName: node-2, containers: [{name: c}]}
status: {podIP: 10.244.2.10}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: web}
  ports: [{port: 80, targetPort: http}]
---
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: web, namespace: default}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress: [{fromEndpoints: [{matchLabels: {app: db}}]}]
"#;

    fn manifests(text: &str) -> Manifests {
        let mut m = Manifests::default();
        source::load_text(&mut m, text, Path::new("test.yaml"));
        assert!(m.errors.is_empty(), "{:?}", m.errors);
        m
    }

    #[test]
    fn a_node_builds_its_share_of_the_cluster() {
        let mut c = NodeControl::new("node-1");
        c.apply(&manifests(CLUSTER));
        assert_eq!(c.node_ip(), Some(Ipv4Addr::new(192, 168, 100, 11)));
        let eps = c.pod_endpoints();
        assert_eq!(eps.len(), 1, "only node-1's pods: {eps:?}");
        assert_eq!(eps[0].ip, Ipv4Addr::new(10, 244, 1, 10));
        assert_eq!(eps[0].mac, pod_mac(eps[0].ip));
        assert_eq!(eps[0].ifname, pod_ifname("default", "web"));
        assert_eq!(
            c.gateways(vec![]),
            vec![Ipv4Addr::new(10, 244, 1, 1)],
            "the pod CIDR's gateway"
        );
        assert_eq!(
            c.pod_name(Ipv4Addr::new(10, 244, 2, 10)).as_deref(),
            Some("default/db")
        );
        let peers = c.peer_nodes("");
        assert_eq!(peers.len(), 1);
        assert_eq!(peers[0].name, "node-2");
        assert!(c.vni_identities().contains(&eps[0].identity));
        let ipcache = c.ipcache();
        let db = ipcache.lookup(u32::from(Ipv4Addr::new(10, 244, 2, 10)));
        assert_eq!(
            db.and_then(|e| e.tunnel),
            Some(Ipv4Addr::new(192, 168, 100, 12))
        );
    }

    #[test]
    fn local_endpoints_show_identity_policy_and_state() {
        let mut c = NodeControl::new("node-1");
        c.apply(&manifests(CLUSTER));
        let p = c.build_policy().unwrap();
        let web = pod_ifname("default", "web");
        let eps = c.local_endpoints(&p.tables, 3, &|i| i == web);
        assert_eq!(eps.len(), 1, "only node-1's pods: {eps:?}");
        let e = &eps[0];
        assert_eq!((e.namespace.as_str(), e.name.as_str()), ("default", "web"));
        let s = &e.status;
        assert_eq!(s.ipv4, Some(Ipv4Addr::new(10, 244, 1, 10)));
        assert_eq!(s.node_ip, Some(Ipv4Addr::new(192, 168, 100, 11)));
        assert_eq!(s.identity.0, c.pod_endpoints()[0].identity);
        assert_eq!(s.labels.get("k8s:app"), Some("web"));
        assert!(s.ingress_enforcing, "the CNP selects web for ingress");
        assert!(!s.egress_enforcing);
        assert_eq!((s.policy_revision, s.state), (3, EndpointState::Ready));
        let eps = c.local_endpoints(&p.tables, 3, &|_| false);
        assert_eq!(eps[0].status.state, EndpointState::WaitingForInterface);
    }

    #[test]
    fn builds_run_once_per_change() {
        let mut c = NodeControl::new("node-1");
        let sc = ServicesConfig::default();
        c.apply(&manifests(CLUSTER));
        let s = c.build_services(sc).expect("first build");
        assert_eq!((s.ports, s.built, s.reused), (1, 1, 0));
        assert!(
            s.steered.is_empty(),
            "a ClusterIP is not steered from the uplink"
        );
        assert!(c.build_services(sc).is_none(), "nothing changed");
        let p = c.build_policy().expect("first policy build");
        assert_eq!(p.changed, 1);
        assert!(p.tables.subjects() >= 1, "web is under policy");
        assert!(c.build_policy().is_none());
        // The same objects again: services are rebuilt from their old Maglev tables, and no
        // policy changes.
        c.apply(&manifests(CLUSTER));
        let s = c.build_services(sc).unwrap();
        assert_eq!((s.built, s.reused), (0, 1));
        assert_eq!(c.build_policy().unwrap().changed, 0);
        // A new services configuration rebuilds the tables.
        let other = ServicesConfig { hash_seed: 7, ..sc };
        assert_eq!(c.build_services(other).unwrap().built, 1);
    }

    #[test]
    fn a_partial_apply_is_a_full_one() {
        let mut m = manifests(CLUSTER);
        let mut c = NodeControl::new("node-1");
        c.apply(&m);
        let sc = ServicesConfig::default();
        c.build_services(sc).unwrap();
        c.build_policy().unwrap();
        // A Service changes: only the services are read again, as a full apply would.
        let svc = m
            .services
            .get_mut(&("default".into(), "web".into()))
            .unwrap();
        svc.spec.as_mut().unwrap().ports.as_mut().unwrap()[0].port = 81;
        c.apply_changed(
            &m,
            Changed {
                services: true,
                ..Default::default()
            },
        );
        let full = ClusterView::from_manifests(&m);
        assert_eq!(
            format!("{:?}", c.view().services),
            format!("{:?}", full.services)
        );
        assert_eq!(c.view().warnings, full.warnings);
        assert_eq!(
            c.build_services(sc).unwrap().table.services()[0].spec.port,
            81
        );
        assert!(c.build_policy().is_none(), "no policy change");
        // A policy changes: only the policies.
        m.policies.clear();
        c.apply_changed(
            &m,
            Changed {
                policies: true,
                ..Default::default()
            },
        );
        assert!(c.policies().policies.is_empty());
        assert!(c.build_services(sc).is_none(), "no service change");
        assert_eq!(c.build_policy().unwrap().changed, 1);
        // Nothing of interest (another kind): nothing is rebuilt.
        c.apply_changed(&m, Changed::default());
        assert!(c.build_services(sc).is_none() && c.build_policy().is_none());
    }

    #[test]
    fn static_endpoints_have_one_identity_known_to_policy() {
        let mut c = NodeControl::new("node-1");
        let a = c.static_identity();
        assert_eq!(c.static_identity(), a);
        assert!(c.vni_identities().contains(&a));
        c.build_policy();
        assert!(c.labels(a).is_some());
        assert!(c.identities().iter().any(|(i, _)| *i == a));
    }

    #[test]
    fn the_manifest_dir_is_read_again_only_when_it_changed() {
        let dir = std::env::temp_dir().join(format!("vireo-node-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.yaml"), CLUSTER).unwrap();
        let mut src = ManifestDir::new(&dir);
        let m = src.poll().expect("first read");
        assert_eq!(m.pods.len(), 2);
        assert!(src.poll().is_none());
        std::fs::write(
            dir.join("b.yaml"),
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n",
        )
        .unwrap();
        assert!(src.poll().is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
