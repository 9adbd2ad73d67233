//! One kind's watcher: a kube-rs [`watcher`] feeding a reflector store ([`Writer`]), and
//! telling the [`Shared`] state what changed.
//!
//! The store is the kube-rs reflector's: an `Apply`/`Delete` changes one object at once; a list
//! (`Init`, `InitApply`…, `InitDone`) is buffered and swapped in whole at `InitDone`, so a
//! relist (after 410 Gone, or a reconnect) never shows a partial set: until it completes, the
//! store keeps the old objects.
//!
//! Errors: a 410 relists at once. Any other error marks the source stale, and the watcher is
//! started again (a fresh list, swapped in when complete) after kube's default back-off
//! ([`DefaultBackoff`]: 0.8 s doubling to 30 s, with jitter). A custom kind the API server does
//! not serve (404: its CRD is not installed) is "none of those": it counts as listed, and is
//! tried again in the background with the same back-off, logged once.

use std::fmt::Debug;
use std::hash::Hash;
use std::sync::Arc;
use std::time::Duration;

use ::kube::api::Api;
use ::kube::runtime::reflector::store::Writer;
use ::kube::runtime::watcher::{self, DefaultBackoff, Event};
use ::kube::Resource;
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use super::kinds::{Kind, ObjKey};
use super::state::Shared;

/// How a watcher stream ended.
enum Ended {
    /// 410 Gone: list again now.
    Expired,
    /// 404 on a custom kind: not served.
    NotServed,
    /// Anything else.
    Failed(String),
}

/// Classifies a watcher error.
fn classify(kind: Kind, e: &watcher::Error) -> Ended {
    let status = match e {
        watcher::Error::WatchError(s) => Some(s.code),
        watcher::Error::InitialListFailed(::kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(::kube::Error::Api(s))
        | watcher::Error::WatchFailed(::kube::Error::Api(s)) => Some(s.code),
        _ => None,
    };
    match status {
        Some(410) => Ended::Expired,
        Some(404) if kind.custom() => Ended::NotServed,
        _ => Ended::Failed(crate::source::first_line(&e.to_string()).to_string()),
    }
}

/// Watches `kind` through `api` for ever, keeping `writer`'s store and `shared` up to date.
pub(crate) async fn run<K>(api: Api<K>, mut writer: Writer<K>, kind: Kind, shared: Arc<Shared>)
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    let mut backoff = DefaultBackoff::default();
    let mut not_served_logged = false;
    let mut failures = 0u32;
    loop {
        let stream = watcher::watcher(api.clone(), watcher::Config::default());
        let mut stream = std::pin::pin!(stream);
        let ended = loop {
            match stream.next().await {
                Some(Ok(ev)) => {
                    // Nobody here reads managed fields: keep them out of the store.
                    let ev = ev.modify(|o| o.meta_mut().managed_fields = None);
                    writer.apply_watcher_event(&ev);
                    match &ev {
                        Event::Apply(o) | Event::Delete(o) => {
                            shared.applied(ObjKey::of(kind, o.meta()));
                        }
                        Event::Init => {}
                        Event::InitApply(_) => shared.listed_one(),
                        Event::InitDone => {
                            shared.list_done(kind);
                            if failures > 0 {
                                tracing::info!(%kind, "watching again");
                            }
                            failures = 0;
                            not_served_logged = false;
                            backoff = DefaultBackoff::default();
                        }
                    }
                }
                Some(Err(e)) => break classify(kind, &e),
                None => break Ended::Failed("the watch stream ended".into()),
            }
        };
        match ended {
            Ended::Expired => {
                tracing::debug!(%kind, "watch expired (410 Gone); listing again");
                shared.expired(kind);
                continue;
            }
            Ended::NotServed => {
                if !not_served_logged {
                    tracing::info!(
                        %kind,
                        "not served by the API server (is its CRD installed?): none of those; \
                         trying again in the background"
                    );
                    not_served_logged = true;
                }
                // None of those: an empty list, swapped in whole.
                writer.apply_watcher_event(&Event::Init);
                writer.apply_watcher_event(&Event::InitDone);
                shared.absent(kind);
            }
            Ended::Failed(e) => {
                failures += 1;
                // Every failure while the API server is away would be a line: log the first
                // ones and then every tenth.
                if failures <= 3 || failures.is_multiple_of(10) {
                    tracing::warn!(%kind, failures, "watch failed: {e}; keeping the last objects");
                }
                shared.failed(kind, e);
            }
        }
        let delay = backoff.next().unwrap_or(Duration::from_secs(30));
        tokio::time::sleep(delay).await;
    }
}
