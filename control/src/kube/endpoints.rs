//! The `VireoEndpoint`s of this node's pods, written by a task on the `vireo-kube` runtime.
//!
//! The agent hands the set it wants after every reconcile ([`Source::endpoints`]); the source
//! ([`EndpointSync::set`], on the agent's thread) adds each pod's uid (for the owner
//! reference) and passes the set on only when it changed, without waiting. The task
//! ([`allocator::Endpoints`]) publishes the endpoints whose status it has not written yet,
//! and deletes those of pods gone from the set, but only while they are still labelled as
//! this node's (a pod that moved keeps the endpoint its new node wrote). At its first round it
//! lists the endpoints labelled as this node's, so that those of pods that went away while the
//! agent was down go too. A round that fails is tried again with exponential back-off (0.5 s
//! doubling to 30 s), each request itself retried as [`Retry`] says; the latest set wins.
//!
//! [`Source::endpoints`]: crate::node::Source::endpoints
//! [`allocator::Endpoints`]: crate::allocator::Endpoints

use std::collections::BTreeMap;
use std::time::Duration;

use ::kube::Client;
use k8s_openapi::api::core::v1::Pod;
use tokio::sync::watch;

use super::backoff::Backoff;
use super::runtime::Task;
use crate::allocator::{EndpointStatus, Endpoints, LocalEndpoint, PodRef, Retry};

/// First back-off after a failed round.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// The endpoints wanted, by (namespace, name).
type Want = BTreeMap<(String, String), (PodRef, EndpointStatus)>;

/// The source's end: the last set handed to the task.
pub(crate) struct EndpointSync {
    tx: watch::Sender<Option<Want>>,
    last: Option<Want>,
}

impl EndpointSync {
    /// The sync for node `node`, and its task (to start on the runtime).
    pub fn new(node: &str, retry: Retry) -> (EndpointSync, Task) {
        let (tx, rx) = watch::channel(None);
        let node = node.to_string();
        let task: Task = Box::new(move |client| Box::pin(run(client, node, rx, retry)));
        (EndpointSync { tx, last: None }, task)
    }

    /// The endpoints to show are `eps`, the pods' uids from `pods`. A pod without a uid (not
    /// from an API server) is left out: its endpoint could not be owned by it.
    pub fn set(&mut self, eps: &[LocalEndpoint], pods: &BTreeMap<(String, String), Pod>) {
        let want: Want = eps
            .iter()
            .filter_map(|e| {
                let key = (e.namespace.clone(), e.name.clone());
                let uid = pods.get(&key)?.metadata.uid.clone()?;
                let pod = PodRef {
                    namespace: e.namespace.clone(),
                    name: e.name.clone(),
                    uid,
                };
                Some((key, (pod, e.status.clone())))
            })
            .collect();
        if self.last.as_ref() == Some(&want) {
            return;
        }
        self.last = Some(want.clone());
        self.tx.send_replace(Some(want));
    }
}

/// The task: brings the server in line with the latest set, until the source is dropped.
async fn run(client: Client, node: String, mut rx: watch::Receiver<Option<Want>>, retry: Retry) {
    let eps = Endpoints::new(client, retry);
    // What the server holds as far as this task knows: `None`, something to be checked (an
    // endpoint listed, or one whose write failed).
    let mut have: BTreeMap<(String, String), Option<(PodRef, EndpointStatus)>> = BTreeMap::new();
    let mut listed = false;
    let mut backoff = Backoff::new(FIRST_BACKOFF);
    loop {
        let want = rx.borrow_and_update().clone();
        let ok = match &want {
            None => true,
            Some(want) => sync(&eps, &node, want, &mut have, &mut listed, backoff.fresh()).await,
        };
        if ok {
            backoff.reset();
            if rx.changed().await.is_err() {
                return;
            }
        } else {
            backoff.wait().await;
        }
    }
}

/// One round: whether everything was done.
async fn sync(
    eps: &Endpoints,
    node: &str,
    want: &Want,
    have: &mut BTreeMap<(String, String), Option<(PodRef, EndpointStatus)>>,
    listed: &mut bool,
    first_failure: bool,
) -> bool {
    // Warned at the first failure of a streak, then only logged at debug level.
    let warn = |what: &str, e: &dyn std::fmt::Display| {
        if first_failure {
            tracing::warn!("{what}: {e}");
        } else {
            tracing::debug!("{what}: {e}");
        }
    };
    if !*listed {
        match eps.list_own(node).await {
            Ok(keys) => {
                for k in keys {
                    have.entry(k).or_insert(None);
                }
                *listed = true;
            }
            Err(e) => {
                warn("listing this node's VireoEndpoints", &e);
                return false;
            }
        }
    }
    let mut ok = true;
    for (key, (pod, status)) in want {
        if have
            .get(key)
            .and_then(Option::as_ref)
            .is_some_and(|(p, s)| p == pod && s == status)
        {
            continue;
        }
        match eps.publish(pod, status).await {
            Ok(_) => {
                have.insert(key.clone(), Some((pod.clone(), status.clone())));
            }
            Err(e) => {
                warn(&format!("publishing VireoEndpoint {}/{}", key.0, key.1), &e);
                have.insert(key.clone(), None);
                ok = false;
            }
        }
    }
    let gone: Vec<(String, String)> = have
        .keys()
        .filter(|k| !want.contains_key(*k))
        .cloned()
        .collect();
    for key in gone {
        match eps.delete_own(&key.0, &key.1, node).await {
            Ok(_) => {
                have.remove(&key);
            }
            Err(e) => {
                warn(&format!("deleting VireoEndpoint {}/{}", key.0, key.1), &e);
                ok = false;
            }
        }
    }
    ok
}
