//! [`ClusterIdentities`]: the cluster-wide allocator, with its cache of every `VireoIdentity`.
//!
//! `allocate(L)`:
//!
//! 1. The cache (a watch of every `VireoIdentity`, plus what this allocator's own requests
//!    returned): `L` known and not marked unused → its number, without a request. Marked by the
//!    garbage collector → the mark is removed at the server first ([`ClusterIdentities`]
//!    "reclaims" it), and if the identity is gone meanwhile, on to step 2.
//! 2. `L`'s [`candidates()`] in order, at most [`Options::max_probes`] of them: a candidate the
//!    cache shows held, unmarked, by another label set is skipped (it cannot be deleted within a
//!    grace period); otherwise `create` it with `L`. Created → ours. 409 AlreadyExists → GET it:
//!    `L` → ours (another agent won the race); other labels → the next candidate; 404 (deleted in
//!    between) → the same candidate again.
//! 3. Out of candidates → [`Error::Exhausted`].
//!
//! See the [module documentation](super) for the invariants this keeps.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::Client;
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use vireo_policy::{Identity, Labels};

use super::{
    candidates, identity_resource, labels_from_json, labels_to_json, metadata_labels, refused,
    Error, Retry, SECURITY_LABELS, UNUSED_SINCE,
};

/// How a [`ClusterIdentities`] allocates.
#[derive(Debug, Clone)]
pub struct Options {
    /// Requests' bounds and retries.
    pub retry: Retry,
    /// How many candidates one label set tries before [`Error::Exhausted`].
    pub max_probes: u32,
    /// How many allocations [`ClusterIdentities::allocate_all`] runs at once.
    pub concurrency: usize,
    /// How long an allocation waits for the cache's first complete list.
    pub sync_timeout: Duration,
    /// How many times an allocation starts over after the identity it was about to use
    /// vanished (deleted by the garbage collector in between) or kept changing.
    pub max_restarts: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            retry: Retry::default(),
            max_probes: 256,
            concurrency: 32,
            sync_timeout: Duration::from_secs(30),
            max_restarts: 8,
        }
    }
}

/// One `VireoIdentity` as the cache holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entry {
    pub labels: Labels,
    pub uid: String,
    /// The resourceVersion (numeric in etcd and in the fake server; 0 if it does not parse).
    pub rv: u64,
    pub rv_text: String,
    /// Whether the garbage collector has marked it unused.
    pub marked: bool,
}

/// A `VireoIdentity` object read: its number and cache entry, or why it is not one.
pub(crate) fn parse(o: &DynamicObject) -> Result<(Identity, Entry), String> {
    let name = o.metadata.name.as_deref().unwrap_or_default();
    let n: u32 = name
        .parse()
        .map_err(|_| format!("name {name:?} is not a decimal number"))?;
    if !(Identity::FIRST_ENDPOINT..Identity::LIMIT).contains(&n) || name != n.to_string() {
        return Err(format!("name {name:?} is not an endpoint identity"));
    }
    let labels = o
        .data
        .get(SECURITY_LABELS)
        .ok_or_else(|| format!("{SECURITY_LABELS} missing"))
        .and_then(labels_from_json)?;
    let rv_text = o.metadata.resource_version.clone().unwrap_or_default();
    Ok((
        Identity(n),
        Entry {
            labels,
            uid: o.metadata.uid.clone().unwrap_or_default(),
            rv: rv_text.parse().unwrap_or(0),
            rv_text,
            marked: o
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(UNUSED_SINCE)),
        },
    ))
}

/// The `VireoIdentity` for `id` holding `labels`, as created.
pub fn identity_object(id: Identity, labels: &Labels) -> DynamicObject {
    let mut o = DynamicObject::new(&id.to_string(), &identity_resource());
    let md = metadata_labels(labels);
    if !md.is_empty() {
        o.metadata.labels = Some(md);
    }
    o.data = json!({ SECURITY_LABELS: labels_to_json(labels) });
    o
}

/// Every known identity, both ways.
#[derive(Debug, Default)]
struct Cache {
    by_id: HashMap<Identity, Entry>,
    /// Normally one number per set; several only after the GC race (the lowest is used).
    by_labels: HashMap<Labels, BTreeSet<Identity>>,
}

impl Cache {
    fn unlink(&mut self, id: Identity) {
        if let Some(old) = self.by_id.remove(&id) {
            if let Some(s) = self.by_labels.get_mut(&old.labels) {
                s.remove(&id);
                if s.is_empty() {
                    self.by_labels.remove(&old.labels);
                }
            }
        }
    }

    /// Records `e` unless the cache already has a later version of `id`.
    fn upsert(&mut self, id: Identity, e: Entry) {
        if let Some(old) = self.by_id.get(&id) {
            if e.rv != 0 && e.rv < old.rv {
                return;
            }
        }
        self.unlink(id);
        self.by_labels
            .entry(e.labels.clone())
            .or_default()
            .insert(id);
        self.by_id.insert(id, e);
    }

    /// Forgets `id`, unless what the cache has is later than the deleted version.
    fn remove(&mut self, id: Identity, rv: u64) {
        if self
            .by_id
            .get(&id)
            .is_some_and(|old| rv == 0 || old.rv <= rv)
        {
            self.unlink(id);
        }
    }

    fn lookup(&self, labels: &Labels) -> Option<(Identity, Entry)> {
        let id = *self.by_labels.get(labels)?.first()?;
        Some((id, self.by_id.get(&id)?.clone()))
    }

    fn replace_all(&mut self, entries: Vec<(Identity, Entry)>) {
        *self = Cache::default();
        for (id, e) in entries {
            self.upsert(id, e);
        }
    }
}

/// What allocations have done so far (for tests, logs and metrics).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Answered from the cache, without a request.
    pub cache_hits: u64,
    /// Identities this allocator created.
    pub created: u64,
    /// Creates that met 409 and found the same labels: another agent won the race.
    pub won_elsewhere: u64,
    /// Candidates passed over because another label set held them.
    pub taken: u64,
    /// Identities marked unused that an allocation took back.
    pub reclaimed: u64,
}

#[derive(Default)]
struct Counters {
    cache_hits: AtomicU64,
    created: AtomicU64,
    won_elsewhere: AtomicU64,
    taken: AtomicU64,
    reclaimed: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct Inner {
    api: Api<DynamicObject>,
    opts: Options,
    cache: Arc<Mutex<Cache>>,
    synced: watch::Receiver<bool>,
    changes: Arc<watch::Sender<u64>>,
    counters: Counters,
    task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Cluster-wide identity allocation through `VireoIdentity` objects. Cheap to clone (clones
/// share the cache); the watch behind the cache stops when the last clone is dropped.
#[derive(Clone)]
pub struct ClusterIdentities {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ClusterIdentities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterIdentities")
            .field("opts", &self.inner.opts)
            .field("known", &self.lock().by_id.len())
            .field("synced", &*self.inner.synced.borrow())
            .finish()
    }
}

/// What allocating at one candidate came to.
enum Probe {
    Ours,
    Taken,
    /// Deleted or changed under us: try the same candidate again.
    Again,
}

impl ClusterIdentities {
    /// Starts the allocator: spawns, on the current tokio runtime, the watch that fills its
    /// cache. Must be called within a runtime.
    pub fn new(client: Client, opts: Options) -> ClusterIdentities {
        let api: Api<DynamicObject> = Api::all_with(client, &identity_resource());
        let cache = Arc::new(Mutex::new(Cache::default()));
        let (tx, rx) = watch::channel(false);
        let changes = Arc::new(watch::channel(0).0);
        let task = tokio::spawn(run_watch(api.clone(), cache.clone(), tx, changes.clone()));
        ClusterIdentities {
            inner: Arc::new(Inner {
                api,
                opts,
                cache,
                synced: rx,
                changes,
                counters: Counters::default(),
                task,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Cache> {
        self.inner.cache.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The options.
    pub fn options(&self) -> &Options {
        &self.inner.opts
    }

    /// A counter of cache changes (identities learnt, changed or forgotten, by the watch or
    /// by this allocator's own requests): wait on it to rebuild what depends on
    /// [`ClusterIdentities::snapshot`], e.g. when an identity is deleted.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.inner.changes.subscribe()
    }

    /// What allocations have done so far.
    pub fn stats(&self) -> Stats {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        Stats {
            cache_hits: get(&c.cache_hits),
            created: get(&c.created),
            won_elsewhere: get(&c.won_elsewhere),
            taken: get(&c.taken),
            reclaimed: get(&c.reclaimed),
        }
    }

    /// Waits (at most [`Options::sync_timeout`]) until the cache has listed every identity once.
    pub async fn wait_synced(&self) -> Result<(), Error> {
        let mut rx = self.inner.synced.clone();
        let within = self.inner.opts.sync_timeout;
        let synced = tokio::time::timeout(within, async { rx.wait_for(|s| *s).await.is_ok() })
            .await
            .unwrap_or(false);
        if synced {
            Ok(())
        } else {
            Err(Error::NotSynced(within))
        }
    }

    /// The number of `labels`, if the cache knows it (no request).
    pub fn get(&self, labels: &Labels) -> Option<Identity> {
        self.lock().lookup(labels).map(|(id, _)| id)
    }

    /// The labels of `id`, if the cache knows it (no request).
    pub fn labels(&self, id: Identity) -> Option<Labels> {
        self.lock().by_id.get(&id).map(|e| e.labels.clone())
    }

    /// Every identity the cache knows, for
    /// [`vireo_policy::IdentityAllocator::from_mapping`].
    pub fn snapshot(&self) -> Vec<(Identity, Labels)> {
        let c = self.lock();
        let mut v: Vec<(Identity, Labels)> = c
            .by_id
            .iter()
            .map(|(id, e)| (*id, e.labels.clone()))
            .collect();
        v.sort_unstable_by_key(|(id, _)| *id);
        v
    }

    fn learn(&self, o: &DynamicObject) -> Option<(Identity, Entry)> {
        match parse(o) {
            Ok((id, e)) => {
                self.lock().upsert(id, e.clone());
                self.inner.changes.send_modify(|n| *n += 1);
                Some((id, e))
            }
            Err(why) => {
                tracing::warn!(name = ?o.metadata.name, %why, "ignoring a malformed VireoIdentity");
                None
            }
        }
    }

    /// The cluster-wide identity of `labels`, allocating it if no agent has.
    pub async fn allocate(&self, labels: &Labels) -> Result<Identity, Error> {
        self.wait_synced().await?;
        let opts = &self.inner.opts;
        let mut restarts = 0;
        'restart: loop {
            let hit = self.lock().lookup(labels);
            if let Some((id, e)) = hit {
                if !e.marked {
                    bump(&self.inner.counters.cache_hits);
                    return Ok(id);
                }
                if self.reclaim(id, labels).await? {
                    return Ok(id);
                }
            }
            let mut tried = 0;
            let mut cands = candidates(labels);
            let mut cand = cands.next();
            while let Some(id) = cand {
                if tried >= opts.max_probes {
                    break;
                }
                let cached = self.lock().by_id.get(&id).cloned();
                let probe = match cached {
                    Some(e) if e.labels == *labels && !e.marked => Probe::Ours,
                    Some(e) if e.labels != *labels && !e.marked => Probe::Taken,
                    _ => self.try_create(id, labels).await?,
                };
                match probe {
                    Probe::Ours => return Ok(id),
                    Probe::Taken => {
                        bump(&self.inner.counters.taken);
                        tried += 1;
                        cand = cands.next();
                    }
                    Probe::Again => {
                        restarts += 1;
                        if restarts > opts.max_restarts {
                            return Err(Error::Contended {
                                op: format!("allocating an identity for {labels}"),
                                attempts: restarts,
                            });
                        }
                        continue 'restart;
                    }
                }
            }
            return Err(Error::Exhausted {
                labels: labels.canonical(),
                tries: tried,
            });
        }
    }

    /// Creates `id` for `labels`, or finds out who holds it.
    async fn try_create(&self, id: Identity, labels: &Labels) -> Result<Probe, Error> {
        let api = &self.inner.api;
        let retry = &self.inner.opts.retry;
        let obj = identity_object(id, labels);
        let name = id.to_string();
        let op = || format!("create VireoIdentity {id}");
        let pp = PostParams::default();
        match retry.run(&op, || api.create(&pp, &obj)).await? {
            Ok(created) => {
                self.learn(&created);
                bump(&self.inner.counters.created);
                tracing::info!(%id, %labels, "created identity");
                return Ok(Probe::Ours);
            }
            Err(s) if s.code == 409 => {}
            Err(s) => return Err(refused(op(), s)),
        }
        // 409 AlreadyExists: who holds it?
        let op = || format!("get VireoIdentity {id}");
        match retry.run(&op, || api.get(&name)).await? {
            Ok(o) => match self.learn(&o) {
                Some((_, e)) if e.labels == *labels => {
                    if !e.marked {
                        bump(&self.inner.counters.won_elsewhere);
                        tracing::debug!(%id, %labels, "identity created by another agent");
                        return Ok(Probe::Ours);
                    }
                    Ok(if self.reclaim(id, labels).await? {
                        Probe::Ours
                    } else {
                        Probe::Again
                    })
                }
                _ => {
                    tracing::debug!(%id, %labels, "candidate held by another label set");
                    Ok(Probe::Taken)
                }
            },
            Err(s) if s.code == 404 => Ok(Probe::Again),
            Err(s) => Err(refused(op(), s)),
        }
    }

    /// Takes back `id`, which the cache shows holding `labels` but marked unused: removes the
    /// mark at the server, with the resourceVersion as precondition so that it is this very
    /// object. False if it no longer holds `labels` (deleted, or re-created for another set).
    async fn reclaim(&self, id: Identity, labels: &Labels) -> Result<bool, Error> {
        let api = &self.inner.api;
        let retry = &self.inner.opts.retry;
        let name = id.to_string();
        for _ in 0..=self.inner.opts.max_restarts {
            let op = || format!("get VireoIdentity {id}");
            let cur = match retry.run(&op, || api.get(&name)).await? {
                Ok(o) => o,
                Err(s) if s.code == 404 => {
                    self.lock().remove(id, 0);
                    return Ok(false);
                }
                Err(s) => return Err(refused(op(), s)),
            };
            let Some((_, e)) = self.learn(&cur) else {
                return Ok(false);
            };
            if e.labels != *labels {
                return Ok(false);
            }
            if !e.marked {
                return Ok(true);
            }
            let patch = Patch::Merge(json!({"metadata": {
                "resourceVersion": e.rv_text,
                "annotations": { UNUSED_SINCE: null },
            }}));
            let op = || format!("unmark VireoIdentity {id}");
            let pp = PatchParams::default();
            match retry.run(&op, || api.patch(&name, &pp, &patch)).await? {
                Ok(o) => {
                    self.learn(&o);
                    bump(&self.inner.counters.reclaimed);
                    tracing::info!(%id, %labels, "identity in use again: unmarked");
                    return Ok(true);
                }
                Err(s) if s.code == 404 => {
                    self.lock().remove(id, 0);
                    return Ok(false);
                }
                Err(s) if s.code == 409 => continue,
                Err(s) => return Err(refused(op(), s)),
            }
        }
        Err(Error::Contended {
            op: format!("unmarking VireoIdentity {id}"),
            attempts: self.inner.opts.max_restarts + 1,
        })
    }

    /// The identities of all these label sets, [`Options::concurrency`] allocations at a time.
    /// Fails with the first error (what was allocated until then stays allocated and cached,
    /// so calling again resumes cheaply).
    pub async fn allocate_all(&self, sets: &[Labels]) -> Result<HashMap<Labels, Identity>, Error> {
        let mut seen = HashSet::new();
        let unique: Vec<Labels> = sets.iter().filter(|l| seen.insert(*l)).cloned().collect();
        futures_util::stream::iter(unique)
            .map(|l: Labels| async move { self.allocate(&l).await.map(|id| (l, id)) })
            .buffer_unordered(self.inner.opts.concurrency.max(1))
            .try_collect()
            .await
    }
}

/// Keeps `cache` equal to the server's identities, for as long as the allocator lives.
async fn run_watch(
    api: Api<DynamicObject>,
    cache: Arc<Mutex<Cache>>,
    synced: watch::Sender<bool>,
    changes: Arc<watch::Sender<u64>>,
) {
    let lock = || cache.lock().unwrap_or_else(|e| e.into_inner());
    let stream = watcher::watcher(api, watcher::Config::default()).default_backoff();
    let mut stream = std::pin::pin!(stream);
    let mut buffer: Vec<(Identity, Entry)> = Vec::new();
    let mut failing = false;
    while let Some(ev) = stream.next().await {
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "watch of VireoIdentity objects failed; retrying");
                }
                failing = true;
                continue;
            }
        };
        failing = false;
        let parsed = |o: &DynamicObject| match parse(o) {
            Ok(p) => Some(p),
            Err(why) => {
                tracing::warn!(name = ?o.metadata.name, %why, "ignoring a malformed VireoIdentity");
                None
            }
        };
        match ev {
            Event::Init => {
                buffer.clear();
                continue;
            }
            Event::InitApply(o) => {
                buffer.extend(parsed(&o));
                continue;
            }
            Event::InitDone => {
                let n = buffer.len();
                lock().replace_all(std::mem::take(&mut buffer));
                synced.send_replace(true);
                tracing::debug!(identities = n, "identity cache synced");
            }
            Event::Apply(o) => {
                if let Some((id, e)) = parsed(&o) {
                    lock().upsert(id, e);
                }
            }
            Event::Delete(o) => {
                if let Some((id, e)) = parsed(&o) {
                    lock().remove(id, e.rv);
                }
            }
        }
        changes.send_modify(|n| *n += 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(app: &str, rv: u64, marked: bool) -> Entry {
        Entry {
            labels: Labels::new([("k8s:app", app)]),
            uid: format!("u{rv}"),
            rv,
            rv_text: rv.to_string(),
            marked,
        }
    }

    /// The allocator's futures can run on any worker thread (`tokio::spawn`).
    #[allow(dead_code)]
    fn futures_are_send(a: &ClusterIdentities, l: &Labels) {
        fn send<T: Send>(_: T) {}
        send(a.allocate(l));
        send(a.allocate_all(std::slice::from_ref(l)));
    }

    #[test]
    fn cache_keeps_the_latest_version_and_both_directions() {
        let mut c = Cache::default();
        c.upsert(Identity(300), entry("a", 5, false));
        c.upsert(Identity(300), entry("a", 4, true)); // older: ignored
        assert!(!c.by_id[&Identity(300)].marked);
        c.upsert(Identity(300), entry("b", 9, false)); // re-created for another set
        assert_eq!(c.lookup(&Labels::new([("k8s:app", "a")])), None);
        assert_eq!(
            c.lookup(&Labels::new([("k8s:app", "b")])).map(|x| x.0),
            Some(Identity(300))
        );
        c.remove(Identity(300), 8); // a deletion older than what we have
        assert!(c.by_id.contains_key(&Identity(300)));
        c.remove(Identity(300), 10);
        assert!(c.by_id.is_empty() && c.by_labels.is_empty());
        // Two numbers for one set (after the GC race): the lowest wins, deterministically.
        c.upsert(Identity(401), entry("d", 1, false));
        c.upsert(Identity(400), entry("d", 2, false));
        assert_eq!(
            c.lookup(&Labels::new([("k8s:app", "d")])).map(|x| x.0),
            Some(Identity(400))
        );
    }

    #[test]
    fn objects_parse_back_and_malformed_ones_are_refused() {
        let l = Labels::new([("k8s:app", "web"), ("k8s:io.kubernetes.pod.namespace", "x")]);
        let mut o = identity_object(Identity(1234), &l);
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["apiVersion"], "vireo.io/v1alpha1");
        assert_eq!(v["kind"], "VireoIdentity");
        assert_eq!(v["metadata"]["name"], "1234");
        assert_eq!(v["metadata"]["labels"]["app"], "web");
        assert_eq!(v["security-labels"]["k8s:app"], "web");
        o.metadata.resource_version = Some("17".into());
        let (id, e) = parse(&o).unwrap();
        assert_eq!(
            (id, e.labels, e.rv, e.marked),
            (Identity(1234), l.clone(), 17, false)
        );
        for bad in ["12", "0300", "x", "16777216"] {
            let mut b = o.clone();
            b.metadata.name = Some(bad.into());
            assert!(parse(&b).is_err(), "{bad}");
        }
        let mut b = o.clone();
        b.data = json!({});
        assert!(parse(&b).is_err());
    }
}
