//! Watches: a stream of newline-delimited JSON watch events (`ADDED`, `MODIFIED`, `DELETED`,
//! `BOOKMARK`, `ERROR`), as the API server sends them in a chunked response.

use bytes::Bytes;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc, watch};

use crate::error::ApiError;
use crate::resources::ResourceType;
use crate::selectors::Selectors;
use crate::store::{at_version, EventType, Notice, WatchStart};
use crate::table::{table, IncludeObject};

/// What a watch request asked for.
pub(crate) struct WatchParams {
    pub rt: ResourceType,
    pub version: String,
    pub ns: Option<String>,
    pub sel: Selectors,
    /// Whether to end the initial events with a bookmark annotated `k8s.io/initial-events-end`.
    pub initial_events_end: bool,
    pub bookmarks: bool,
    pub timeout: Option<Duration>,
    /// Objects as one-row Tables (`kubectl get -w`).
    pub table: Option<IncludeObject>,
}

fn line(v: &Value) -> Bytes {
    let mut b = serde_json::to_vec(v).unwrap_or_default();
    b.push(b'\n');
    Bytes::from(b)
}

/// The line of a watch `ERROR` event carrying `err` as a Status.
pub(crate) fn error_line(err: &ApiError) -> Bytes {
    line(&json!({"type": "ERROR", "object": err.to_status()}))
}

impl WatchParams {
    fn in_ns(&self, obj: &Value) -> bool {
        self.ns
            .as_deref()
            .is_none_or(|n| obj.pointer("/metadata/namespace").and_then(Value::as_str) == Some(n))
    }

    /// The event a client sees for a change, after namespace and selectors: a modification that
    /// moves an object into (out of) the selection is an ADDED (DELETED).
    fn filter(&self, kind: EventType, obj: &Value, old: Option<&Value>) -> Option<EventType> {
        if !self.in_ns(obj) {
            return None;
        }
        let now = self.sel.matches(obj);
        match kind {
            EventType::Added | EventType::Deleted => now.then_some(kind),
            EventType::Modified => {
                let before = old.is_none_or(|o| self.sel.matches(o));
                match (before, now) {
                    (true, true) => Some(EventType::Modified),
                    (false, true) => Some(EventType::Added),
                    (true, false) => Some(EventType::Deleted),
                    (false, false) => None,
                }
            }
        }
    }

    fn event_line(&self, kind: EventType, obj: &Value) -> Bytes {
        let obj = at_version(obj.clone(), &self.rt, &self.version);
        let rv: u64 = obj
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let object = match self.table {
            Some(include) => table(&self.rt, std::slice::from_ref(&obj), rv, None, include),
            None => obj,
        };
        line(&json!({"type": kind.as_str(), "object": object}))
    }

    fn bookmark_line(&self, rv: u64, initial_events_end: bool) -> Bytes {
        let mut metadata = json!({"resourceVersion": rv.to_string()});
        if initial_events_end {
            metadata["annotations"] = json!({"k8s.io/initial-events-end": "true"});
        }
        line(&json!({
            "type": "BOOKMARK",
            "object": {
                "kind": self.rt.kind,
                "apiVersion": self.rt.api_version(&self.version),
                "metadata": metadata,
            }
        }))
    }
}

/// Runs a watch until the client goes, the timeout passes, the server stops or the history is
/// compacted; what it sends goes to `out`.
pub(crate) async fn run(
    p: WatchParams,
    start: WatchStart,
    out: mpsc::Sender<Bytes>,
    bookmark_every: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let WatchStart {
        initial,
        mut rx,
        rv,
    } = start;
    for (kind, obj, old) in &initial {
        if let Some(k) = p.filter(*kind, obj, old.as_ref()) {
            if out.send(p.event_line(k, obj)).await.is_err() {
                return;
            }
        }
    }
    let mut last_rv = rv;
    if p.initial_events_end && out.send(p.bookmark_line(last_rv, true)).await.is_err() {
        return;
    }
    let deadline = p.timeout.map(|t| tokio::time::Instant::now() + t);
    let sleep_until = async move {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(sleep_until);
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + bookmark_every, bookmark_every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let send = tokio::select! {
            n = rx.recv() => match n {
                Ok(Notice::Event(e)) => {
                    if e.rv <= last_rv {
                        continue;
                    }
                    last_rv = e.rv;
                    if e.key != p.rt.key() {
                        continue;
                    }
                    match p.filter(e.kind, &e.object, e.old.as_ref()) {
                        Some(k) => p.event_line(k, &e.object),
                        None => continue,
                    }
                }
                Ok(Notice::Compacted(at)) => {
                    let _ = out.send(error_line(&ApiError::expired(last_rv, at))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    let _ = out.send(error_line(&ApiError::expired(last_rv, last_rv + 1))).await;
                    return;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = ticker.tick(), if p.bookmarks => p.bookmark_line(last_rv, false),
            _ = &mut sleep_until => return,
            _ = out.closed() => return,
            _ = shutdown.changed() => return,
        };
        if out.send(send).await.is_err() {
            return;
        }
    }
}
