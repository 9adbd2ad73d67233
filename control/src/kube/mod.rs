//! The Kubernetes source: the cluster's objects from an API server, through kube-rs watchers
//! and reflector stores, delivered as the same [`Manifests`] the manifest directory delivers,
//! built by the same function ([`crate::source::add_object`]) object by object.
//!
//! - **Threads.** The watchers run on a tokio runtime of their own, on a thread of its own
//!   (`vireo-kube`, current-thread). The consumer (the agent's control loop) only calls
//!   [`Source::poll`] and friends; it never sees tokio.
//! - **What is watched** (cluster-wide): Namespaces, Nodes, Pods, Services, EndpointSlices,
//!   NetworkPolicies, CiliumNetworkPolicies, CiliumClusterwideNetworkPolicies, and
//!   vireo.io/v1alpha1 VireoNodeConfigs and VireoIdentities. A custom kind whose CRD is not
//!   installed (404) counts as "none of those" and is tried again in the background.
//! - **Complete views only.** No poll answers before every kind has completed its initial
//!   list; a relist (410 Gone, reconnect) is swapped in whole when complete (see [`reflect`]).
//! - **Coalescing and wakeup.** Changes mark objects dirty; the first change of a burst wakes
//!   the consumer (through the [`Waker`] it set) after a short window, and the next poll reads
//!   again only the dirty objects.
//! - **Latency.** From the first change not yet polled to [`Source::published`], in an
//!   hdrhistogram ([`UpdateLatency`]).
//! - **Resilience.** When the API server is unreachable, polls answer `None` (the last tables
//!   stay), the status says since when the source is stale, and the watchers retry with
//!   kube's default back-off.
//! - **Problems** with objects (a bad selector or CIDR in a policy, a pod with a bad IP, an
//!   object that does not fit its type) become one Warning Event on the object each
//!   ([`events`]), beside the warning in the log; the object is left out (a policy fails
//!   closed), the rest is enforced.
//! - **Writes.** The `Valid` condition of every VireoNodeConfig ([`nodeconfig_status`]) and the
//!   VireoEndpoints of this node's pods ([`endpoints`], from [`Source::endpoints`]) are
//!   written by tasks of the runtime, never by the consumer's thread.

mod assemble;
mod backoff;
mod endpoints;
pub mod events;
mod identities;
mod kinds;
mod nodeconfig_status;
mod reflect;
mod runtime;
mod state;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::hash::Hash;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ::kube::api::{Api, DynamicObject};
use ::kube::runtime::reflector::store::Writer;
use ::kube::Resource;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};

use crate::allocator::gc::GcOptions;
use crate::allocator::{LocalEndpoint, Retry};
use crate::node::{Changed, NodeControl, Source, Waker};
use crate::source::Manifests;
use assemble::Assembly;
use events::{attribute, EventRequest, Problem};
pub use kinds::{Kind, ObjKey};
use kinds::{KindStore, StoreReader};
use runtime::{IdentityTasks, Runtime, Starter, Tasks};
use state::Shared;
pub use status::UpdateLatency;

/// Why the source could not start.
#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    /// The kubeconfig file could not be read or used.
    #[error("kubeconfig {path}: {msg}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// Why.
        msg: String,
    },
    /// No kubeconfig given, and none found (`KUBECONFIG`, `~/.kube/config`, in-cluster).
    #[error("no Kubernetes configuration found (in-cluster, KUBECONFIG or ~/.kube/config): {0}")]
    Infer(String),
    /// The client could not be built from the configuration.
    #[error("Kubernetes client: {0}")]
    Client(String),
    /// The `vireo-kube` thread or its runtime could not start.
    #[error("starting the vireo-kube thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// How to start a [`KubeSource`].
#[derive(Debug, Clone)]
pub struct KubeOptions {
    /// The kubeconfig file; `None`: `KUBECONFIG`, `~/.kube/config`, or in-cluster.
    pub kubeconfig: Option<PathBuf>,
    /// This node's name: the Events' `reportingInstance` and `source.host`.
    pub node: String,
    /// How long after the first change of a burst the consumer is woken (default 2 ms).
    pub coalesce: Duration,
    /// Whether problems with objects are written as Warning Events (default true).
    pub events: bool,
    /// Whether pods take cluster-wide identities (`VireoIdentity` objects, allocated by this
    /// source and garbage-collected; default true) rather than node-local ones.
    pub cluster_identities: bool,
    /// How the objects are read ([`Manifests::read`]).
    pub read: crate::source::ReadOptions,
    /// How unused identities are collected.
    pub gc: GcOptions,
}

impl KubeOptions {
    /// Options for node `node` with the client configured from `kubeconfig`.
    pub fn new(node: &str, kubeconfig: Option<PathBuf>) -> KubeOptions {
        KubeOptions {
            kubeconfig,
            node: node.to_string(),
            coalesce: Duration::from_millis(2),
            events: true,
            cluster_identities: true,
            read: crate::source::ReadOptions::default(),
            gc: GcOptions::default(),
        }
    }
}

/// The Kubernetes source (see the module documentation).
pub struct KubeSource {
    shared: Arc<Shared>,
    stores: BTreeMap<Kind, Box<dyn KindStore>>,
    asm: Assembly,
    /// A complete view was delivered once.
    delivered: bool,
    /// What the last view delivered changed.
    changed: Changed,
    started: Instant,
    /// How long the first complete view took.
    initial_sync: Option<Duration>,
    /// The first change behind the view the last poll delivered, until published.
    pending: Option<Instant>,
    latency: UpdateLatency,
    rebuilds: u64,
    /// The problems reported (as Events) and still there at the last publish.
    reported: BTreeSet<Problem>,
    events: Option<UnboundedSender<EventRequest>>,
    /// The VireoNodeConfigs' `Valid` conditions, and this node's VireoEndpoints.
    status_sync: nodeconfig_status::StatusSync,
    endpoint_sync: endpoints::EndpointSync,
    /// Cluster-wide identities (`None`: node-local): where to ask for label sets, what was
    /// asked last, the allocator's status, and what the collector must keep.
    identities: Option<IdentityClient>,
    /// Last: dropped after everything above, stopping the thread.
    _runtime: Runtime,
}

impl Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("delivered", &self.delivered)
            .field("rebuilds", &self.rebuilds)
            .finish_non_exhaustive()
    }
}

/// The consumer's side of the identity tasks.
struct IdentityClient {
    requests: UnboundedSender<Vec<vireo_policy::Labels>>,
    asked: Vec<vireo_policy::Labels>,
    status: identities::SharedStatus,
    in_use: identities::InUse,
}

impl IdentityClient {
    /// After a publish: asks for the label sets the view waits for (when they changed), and
    /// records what is in use.
    fn published(&mut self, control: &NodeControl) {
        let view = control.view();
        if view.unallocated != self.asked {
            self.asked.clone_from(&view.unallocated);
            let _ = self.requests.send(self.asked.clone());
        }
        let used = view
            .identities
            .iter()
            .map(|(_, l)| l.clone())
            .chain(view.unallocated.iter().cloned())
            .collect();
        *identities::lock(&self.in_use) = Some(used);
    }
}

/// What the kinds that changed change in the tables.
fn changed_of(kinds: &BTreeSet<Kind>) -> Changed {
    let any = |ks: &[Kind]| ks.iter().any(|k| kinds.contains(k));
    Changed {
        workloads: any(&[Kind::Namespace, Kind::Node, Kind::Pod, Kind::VireoIdentity]),
        services: any(&[Kind::Service, Kind::EndpointSlice]),
        policies: any(&[
            Kind::NetworkPolicy,
            Kind::CiliumNetworkPolicy,
            Kind::CiliumClusterwideNetworkPolicy,
        ]),
    }
}

/// A watcher for one kind: its store reader, and the task to start on the runtime.
fn watch<K>(kind: Kind, dyntype: K::DynamicType) -> (Box<dyn KindStore>, Starter)
where
    K: Resource + Clone + DeserializeOwned + Serialize + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone + Send + Sync + 'static,
{
    let writer = Writer::<K>::new(dyntype.clone());
    let reader = StoreReader {
        store: writer.as_reader(),
        dyntype: dyntype.clone(),
        namespaced: kind.namespaced(),
    };
    let start: Starter = Box::new(move |client, shared| {
        let api = Api::<K>::all_with(client, &dyntype);
        Box::pin(reflect::run(api, writer, kind, shared))
    });
    (Box::new(reader), start)
}

impl KubeSource {
    /// Starts the watchers on their own thread. Returns once the client is built (an unusable
    /// kubeconfig is an error here); the API server need not be reachable.
    pub fn new(opts: KubeOptions) -> Result<KubeSource, KubeError> {
        let shared = Shared::new();
        let mut stores = BTreeMap::new();
        let mut watchers = Vec::new();
        for kind in Kind::ALL {
            let (store, start) = match kind {
                Kind::Namespace => watch::<Namespace>(kind, ()),
                Kind::Node => watch::<Node>(kind, ()),
                Kind::Pod => watch::<Pod>(kind, ()),
                Kind::Service => watch::<Service>(kind, ()),
                Kind::EndpointSlice => watch::<EndpointSlice>(kind, ()),
                Kind::NetworkPolicy => watch::<NetworkPolicy>(kind, ()),
                _ => watch::<DynamicObject>(kind, kind.api_resource()),
            };
            stores.insert(kind, store);
            watchers.push(start);
        }
        let (events, events_rx) = if opts.events {
            let (tx, rx) = unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let (status_sync, status_task) = nodeconfig_status::StatusSync::new(Retry::default());
        let (endpoint_sync, endpoint_task) =
            endpoints::EndpointSync::new(&opts.node, Retry::default());
        let (id_tasks, id_client) = if opts.cluster_identities {
            let (tx, rx) = unbounded_channel();
            let status = identities::SharedStatus::default();
            let in_use = identities::InUse::default();
            (
                Some(IdentityTasks {
                    requests: rx,
                    status: status.clone(),
                    in_use: in_use.clone(),
                    gc: opts.gc.clone(),
                }),
                Some(IdentityClient {
                    requests: tx,
                    asked: Vec::new(),
                    status,
                    in_use,
                }),
            )
        } else {
            (None, None)
        };
        let runtime = runtime::start(
            Tasks {
                kubeconfig: opts.kubeconfig.clone(),
                node: opts.node.clone(),
                coalesce: opts.coalesce,
                watchers,
                events: events_rx,
                writers: vec![status_task, endpoint_task],
                identities: id_tasks,
            },
            shared.clone(),
        )?;
        tracing::info!(
            kubeconfig = ?opts.kubeconfig,
            kinds = Kind::ALL.len(),
            "Kubernetes source started"
        );
        let mut asm = Assembly::default();
        asm.manifests.cluster_identities = opts.cluster_identities;
        asm.manifests.read.clone_from(&opts.read);
        Ok(KubeSource {
            shared,
            stores,
            asm,
            delivered: false,
            changed: Changed::ALL,
            started: Instant::now(),
            initial_sync: None,
            pending: None,
            latency: UpdateLatency::default(),
            rebuilds: 0,
            reported: BTreeSet::new(),
            events,
            status_sync,
            endpoint_sync,
            identities: id_client,
            _runtime: runtime,
        })
    }

    /// Takes in what changed since the last call: whether the view changed (or is delivered for
    /// the first time). Nothing before every kind is listed.
    fn refresh(&mut self) -> bool {
        let (dirty, resync, first) = {
            let mut st = self.shared.lock();
            if !st.all_synced() {
                return false;
            }
            (
                std::mem::take(&mut st.dirty),
                std::mem::take(&mut st.resync),
                st.first_unpolled.take(),
            )
        };
        let mut kinds = BTreeSet::new();
        for kind in &resync {
            if self.asm.resync(*kind, self.stores[kind].as_ref()) {
                kinds.insert(*kind);
            }
        }
        for key in dirty.iter().filter(|k| !resync.contains(&k.kind)) {
            let obj = self.stores[&key.kind].get(&key.namespace, &key.name);
            if self.asm.refresh(key, obj.as_deref()) {
                kinds.insert(key.kind);
            }
        }
        self.asm.finish();
        let changed = !kinds.is_empty();
        if changed || !self.delivered {
            self.status_sync.observe(&self.asm.manifests);
        }
        self.changed = if self.delivered {
            changed_of(&kinds)
        } else {
            Changed::ALL
        };
        if !self.delivered {
            self.delivered = true;
            let took = self.started.elapsed();
            self.initial_sync = Some(took);
            tracing::info!(
                ms = took.as_millis() as u64,
                pods = self.asm.count(Kind::Pod),
                "Kubernetes source synced"
            );
            return true;
        }
        if changed && self.pending.is_none() {
            self.pending = first;
        }
        changed
    }

    /// Reports the problems of the last build that were not reported yet.
    fn report(&mut self, control: &NodeControl) {
        let mut now = BTreeSet::new();
        for (key, e) in self.asm.object_errors() {
            let msg = attribute(e).map(|(_, m)| m).unwrap_or_else(|| e.clone());
            now.insert(Problem::new(key.clone(), msg));
        }
        for w in control
            .view()
            .warnings
            .iter()
            .chain(&control.policies().warnings)
        {
            if let Some((key, msg)) = attribute(w) {
                now.insert(Problem::new(key, msg));
            }
        }
        if let Some(tx) = &self.events {
            for p in now.difference(&self.reported) {
                let uid = self.asm.uid(&p.object).map(str::to_string);
                let _ = tx.send(EventRequest {
                    problem: p.clone(),
                    uid,
                });
            }
        }
        self.reported = now;
    }

    /// The update latencies recorded so far.
    pub fn latency(&self) -> &UpdateLatency {
        &self.latency
    }

    /// The problems reported as Events, still there at the last publish.
    pub fn problems(&self) -> impl Iterator<Item = &Problem> {
        self.reported.iter()
    }
}

impl Source for KubeSource {
    fn poll(&mut self) -> Option<Manifests> {
        self.refresh().then(|| self.asm.manifests.clone())
    }

    fn poll_with(&mut self, apply: &mut dyn FnMut(&Manifests, Changed)) -> bool {
        let changed = self.refresh();
        if changed {
            apply(&self.asm.manifests, self.changed);
        }
        changed
    }

    fn set_waker(&mut self, waker: Waker) {
        self.shared.set_waker(waker);
    }

    fn published(&mut self, control: &NodeControl) {
        if let Some(t) = self.pending.take() {
            self.latency.record(t.elapsed());
        }
        self.rebuilds += 1;
        self.report(control);
        if let Some(ids) = self.identities.as_mut() {
            ids.published(control);
        }
    }

    fn endpoints(&mut self, eps: &[LocalEndpoint]) {
        // Before the first complete view the set would be empty: every endpoint would go.
        if self.delivered {
            self.endpoint_sync.set(eps, &self.asm.manifests.pods);
        }
    }

    fn health(&self) -> crate::node::SourceHealth {
        let st = self.shared.lock();
        crate::node::SourceHealth {
            synced: self.delivered,
            stale_since: st.stale_since,
            events: st.events,
        }
    }

    fn update_latency(&self) -> Option<&UpdateLatency> {
        Some(&self.latency)
    }

    fn status(&self) -> Value {
        let st = self.shared.lock();
        let kinds: serde_json::Map<String, Value> = Kind::ALL
            .iter()
            .map(|k| {
                let s = st.kinds.get(k).cloned().unwrap_or_default();
                let v = json!({
                    "objects": self.stores[k].len(),
                    "synced": s.synced,
                    "served": !s.absent,
                    "error": s.error,
                    "relists": s.relists,
                });
                (k.name().to_string(), v)
            })
            .collect();
        json!({
            "kind": "kube",
            "synced": self.delivered,
            "stale_since": st.stale_since.map(status::rfc3339),
            "last_error": st.last_error.as_ref().map(|(_, e)| e.clone()),
            "last_error_at": st.last_error.as_ref().map(|(t, _)| status::rfc3339(*t)),
            "events": st.events,
            "rebuilds": self.rebuilds,
            "latency": self.latency.to_json(),
            "initial_sync_ms": self.initial_sync.map(|d| d.as_millis() as u64),
            "problems": self.reported.len(),
            "identities": match &self.identities {
                Some(ids) => identities::status_json(&identities::lock(&ids.status)),
                None => json!({"mode": "node-local"}),
            },
            "kinds": kinds,
        })
    }
}
