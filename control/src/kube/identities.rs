//! Cluster-wide identities for the Kubernetes source: the label sets the view is waiting for
//! are allocated as `VireoIdentity` objects ([`ClusterIdentities`], create-and-handle-conflict),
//! and identities no pod uses are garbage-collected ([`IdentityGc`]). Both run on the
//! `vireo-kube` runtime; the consumer only hands over label sets and reads the status.
//!
//! The view never takes numbers from the allocator directly: the allocator's objects come back
//! through the VireoIdentity reflector like every other object, so the tables are built from the
//! source's objects alone (the manifest directory could carry VireoIdentity objects too).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use ::kube::Client;
use serde_json::{json, Value};
use tokio::sync::mpsc::UnboundedReceiver;
use vireo_policy::Labels;

use super::backoff::Backoff;
use super::kinds::Kind;
use super::state::Shared;
use super::status::rfc3339;
use crate::allocator::gc::{labels_in_use, GcOptions, IdentityGc};
use crate::allocator::identities::{ClusterIdentities, Options};
use crate::allocator::Error;

/// What the allocator and the collector did, for `vireo status`.
#[derive(Debug, Default)]
pub(crate) struct IdentityStatus {
    /// Label sets asked for and not allocated yet.
    pub waiting: usize,
    /// Allocation rounds that succeeded.
    pub rounds: u64,
    /// Identities this agent created (its creates that won).
    pub created: u64,
    /// Identities found held by the same labels (another agent's, or its own earlier ones).
    pub reused: u64,
    /// The last failure, and when.
    pub last_error: Option<(SystemTime, String)>,
    /// Collector passes, and identities it deleted.
    pub gc_passes: u64,
    pub gc_deleted: u64,
}

/// The status shared between the tasks and the source.
pub(crate) type SharedStatus = Arc<Mutex<IdentityStatus>>;

/// The label sets of every pod the last published view had (`None` before the first): what
/// the collector must not collect, beside what the cluster's VireoEndpoints name.
pub(crate) type InUse = Arc<Mutex<Option<HashSet<Labels>>>>;

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The status as JSON.
pub(crate) fn status_json(s: &IdentityStatus) -> Value {
    json!({
        "mode": "cluster",
        "waiting": s.waiting,
        "rounds": s.rounds,
        "created": s.created,
        "reused": s.reused,
        "last_error": s.last_error.as_ref().map(|(_, e)| e.clone()),
        "last_error_at": s.last_error.as_ref().map(|(t, _)| rfc3339(*t)),
        "gc_passes": s.gc_passes,
        "gc_deleted": s.gc_deleted,
    })
}

/// The first back-off after a failed round.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Allocates the label sets sent on `requests` until the channel closes. Each request is the
/// whole set the view waits for, replacing the previous one (so a set no pod needs any more is
/// not retried). A failed round is retried with exponential back-off, with the latest set (what
/// it allocated stays allocated). A success wakes nobody: the objects come back through the
/// reflector, which wakes the consumer.
pub(crate) async fn allocator(
    client: Client,
    mut requests: UnboundedReceiver<Vec<Labels>>,
    status: SharedStatus,
    shared: Arc<Shared>,
) {
    let ids = ClusterIdentities::new(client, Options::default());
    let mut pending: Vec<Labels> = Vec::new();
    let mut backoff = Backoff::new(FIRST_BACKOFF);
    loop {
        if pending.is_empty() {
            match requests.recv().await {
                Some(sets) => pending = sets,
                None => return,
            }
        }
        while let Ok(sets) = requests.try_recv() {
            pending = sets;
        }
        lock(&status).waiting = pending.len();
        if pending.is_empty() {
            continue;
        }
        let absent = shared
            .lock()
            .kinds
            .get(&Kind::VireoIdentity)
            .is_some_and(|k| k.absent);
        if absent {
            // Without the CRD every request would wait for a cache that never syncs.
            let why = format!(
                "VireoIdentity objects are not served (is the CRD installed?): {} label sets wait for an identity",
                pending.len()
            );
            tracing::warn!(retry_in_ms = backoff.delay().as_millis() as u64, "{why}");
            lock(&status).last_error = Some((SystemTime::now(), why));
            backoff.wait().await;
            continue;
        }
        let before = ids.stats();
        let result = ids.allocate_all(&pending).await;
        let after = ids.stats();
        let failed = {
            let mut st = lock(&status);
            st.created += after.created - before.created;
            st.reused += (after.cache_hits - before.cache_hits)
                + (after.won_elsewhere - before.won_elsewhere);
            match result {
                Ok(got) => {
                    pending.retain(|l| !got.contains_key(l));
                    st.rounds += 1;
                    st.waiting = pending.len();
                    tracing::debug!(sets = got.len(), "identities allocated");
                    false
                }
                Err(e) => {
                    tracing::warn!(
                        sets = pending.len(),
                        retry_in_ms = backoff.delay().as_millis() as u64,
                        "allocating identities: {e}"
                    );
                    st.last_error = Some((SystemTime::now(), e.to_string()));
                    true
                }
            }
        };
        if failed {
            backoff.wait().await;
        } else {
            backoff.reset();
        }
    }
}

/// Collects unused identities every [`GcOptions::interval`] (a mark, then a delete a grace
/// period later, as [`IdentityGc`] documents), once the view was published once. In use are
/// the label sets of every VireoEndpoint in the cluster and of every pod of this agent's view
/// (which includes pods whose endpoints are not written yet).
pub(crate) async fn collector(
    client: Client,
    in_use: InUse,
    status: SharedStatus,
    opts: GcOptions,
) {
    let mut tick = tokio::time::interval(opts.interval);
    let retry = opts.retry;
    let gc = IdentityGc::new(client.clone(), opts);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(local) = lock(&in_use).clone() else {
            continue; // no complete view yet: every identity would look unused
        };
        let pass = async {
            let mut used = labels_in_use(client.clone(), &retry).await?;
            used.extend(local);
            gc.run_once(&used).await
        };
        let r: Result<_, Error> = pass.await;
        let mut st = lock(&status);
        match r {
            Ok(rep) => {
                st.gc_passes += 1;
                st.gc_deleted += rep.deleted.len() as u64;
                tracing::debug!(?rep, "identity GC pass");
            }
            Err(e) => {
                tracing::warn!("identity GC pass: {e}");
                st.last_error = Some((SystemTime::now(), format!("identity GC: {e}")));
            }
        }
    }
}
