//! What the watcher tasks (on the `vireo-kube` thread) tell the source (on the agent's thread):
//! which objects changed since the last poll, which kinds completed a (re)list, and how healthy
//! each watcher is. One mutex, held only for a few field updates on either side.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use super::kinds::{Kind, ObjKey};
use crate::node::Waker;

/// State shared between the watcher tasks and the source.
pub(crate) struct Shared {
    state: Mutex<State>,
    /// Rung on every change; the coalescer waits on it, then calls the waker.
    pub notify: tokio::sync::Notify,
    waker: Mutex<Option<Waker>>,
}

/// What changed and how the watchers are doing.
#[derive(Debug, Default)]
pub(crate) struct State {
    /// Each kind's watcher.
    pub kinds: BTreeMap<Kind, KindState>,
    /// Objects applied or deleted since the last poll took them.
    pub dirty: BTreeSet<ObjKey>,
    /// Kinds whose store was replaced by a complete list since the last poll took them.
    pub resync: BTreeSet<Kind>,
    /// When the first change not taken by a poll yet arrived.
    pub first_unpolled: Option<Instant>,
    /// Watch events received (list items included).
    pub events: u64,
    /// Since when some watcher has been failing (cleared when all are healthy again).
    pub stale_since: Option<SystemTime>,
    /// The last watcher error, with when it happened.
    pub last_error: Option<(SystemTime, String)>,
}

/// One kind's watcher.
#[derive(Debug, Default, Clone)]
pub(crate) struct KindState {
    /// It completed an initial list at least once (or its resource is not served).
    pub synced: bool,
    /// The API server does not serve it (404): there are none of those.
    pub absent: bool,
    /// It is failing now, and why.
    pub error: Option<String>,
    /// Lists done after the first (410 Gone, reconnects).
    pub relists: u64,
}

impl State {
    /// Whether every kind completed its initial list.
    pub fn all_synced(&self) -> bool {
        Kind::ALL
            .iter()
            .all(|k| self.kinds.get(k).is_some_and(|s| s.synced))
    }

    fn changed(&mut self) {
        self.first_unpolled.get_or_insert_with(Instant::now);
    }

    fn update_stale(&mut self) {
        if self.kinds.values().all(|k| k.error.is_none()) {
            self.stale_since = None;
        }
    }
}

impl Shared {
    /// Nothing known yet.
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared {
            state: Mutex::new(State::default()),
            notify: tokio::sync::Notify::new(),
            waker: Mutex::new(None),
        })
    }

    /// The state, locked.
    pub fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the function that makes the consumer poll.
    pub fn set_waker(&self, w: Waker) {
        *self.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(w);
    }

    /// Calls the waker, if there is one.
    pub fn wake(&self) {
        let w = self.waker.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(w) = w {
            w();
        }
    }

    /// An object was added, modified or deleted.
    pub fn applied(&self, key: ObjKey) {
        {
            let mut st = self.lock();
            st.events += 1;
            st.dirty.insert(key);
            st.changed();
        }
        self.notify.notify_one();
    }

    /// An object of an initial list (not visible before the list completes).
    pub fn listed_one(&self) {
        self.lock().events += 1;
    }

    /// A list completed: the kind's store now holds exactly its objects.
    pub fn list_done(&self, kind: Kind) {
        {
            let mut st = self.lock();
            let k = st.kinds.entry(kind).or_default();
            if k.synced {
                k.relists += 1;
            }
            k.synced = true;
            k.absent = false;
            k.error = None;
            st.resync.insert(kind);
            st.changed();
            st.update_stale();
        }
        self.notify.notify_one();
    }

    /// The kind is not served (404): none of those, until it is.
    pub fn absent(&self, kind: Kind) {
        let was = {
            let mut st = self.lock();
            let k = st.kinds.entry(kind).or_default();
            let was = k.synced && k.absent;
            k.synced = true;
            k.absent = true;
            k.error = None;
            if !was {
                st.resync.insert(kind);
                st.changed();
            }
            st.update_stale();
            was
        };
        if !was {
            self.notify.notify_one();
        }
    }

    /// The kind's watcher failed: the source is stale until it recovers.
    pub fn failed(&self, kind: Kind, error: String) {
        let mut st = self.lock();
        let now = SystemTime::now();
        st.kinds.entry(kind).or_default().error = Some(error.clone());
        st.stale_since.get_or_insert(now);
        st.last_error = Some((now, format!("{kind}: {error}")));
    }

    /// A watch expired (410 Gone): the kind is listed again (not an error).
    pub fn expired(&self, kind: Kind) {
        let _ = self.lock().kinds.entry(kind).or_default();
    }
}
