//! The `Valid` condition of every `VireoNodeConfig`, written through the status subresource
//! by a task on the `vireo-kube` runtime.
//!
//! The source's side ([`StatusSync::observe`], on the consumer's thread, after each new view)
//! only picks the configs whose condition differs from what [`check`] says (status, reason,
//! message or observedGeneration) and hands their names to the task; it never waits. The task
//! reads each one again, checks it again (the view may be behind), and writes the condition
//! only if it still differs, with the resourceVersion it read (a concurrent change, 409, is
//! read again). Other conditions are kept, and so is the transition time when the status
//! stays. Failed writes are tried again with exponential back-off (0.5 s doubling to 30 s),
//! each request itself retried as [`Retry`] says. Every agent writes the same condition (it
//! does not depend on the node), so once one has written it the others find nothing to do.

use std::collections::BTreeSet;
use std::time::Duration;

use ::kube::api::{Api, DynamicObject, PostParams};
use ::kube::Client;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::backoff::Backoff;
use super::kinds::Kind;
use super::runtime::Task;
use crate::allocator::{Error, Retry};
use crate::crd::nodeconfig::{valid_condition, CONDITION_VALID};
use crate::nodeconfig::{check, current_condition, objects, same_condition};
use crate::source::Manifests;

/// First back-off after a failed round.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Rounds of read-and-write a config's condition gets when it keeps changing under us.
const MAX_CONFLICTS: u32 = 8;

/// The source's end: hands the configs whose condition is stale to the task.
pub(crate) struct StatusSync {
    tx: watch::Sender<BTreeSet<String>>,
}

impl StatusSync {
    /// The sync and its task (to start on the runtime).
    pub fn new(retry: Retry) -> (StatusSync, Task) {
        let (tx, rx) = watch::channel(BTreeSet::new());
        let task: Task = Box::new(move |client| Box::pin(run(client, rx, retry)));
        (StatusSync { tx }, task)
    }

    /// Takes in a new view: the configs whose `Valid` condition is not what it should be go
    /// to the task.
    pub fn observe(&mut self, m: &Manifests) {
        let stale: BTreeSet<String> = objects(m)
            .filter(|v| {
                let Ok(j) = serde_json::to_value(v) else {
                    return false;
                };
                let generation = j.pointer("/metadata/generation").and_then(Value::as_i64);
                let want = valid_condition(&check(v), generation, now());
                current_condition(&j).is_none_or(|have| !same_condition(&have, &want))
            })
            .filter_map(|v| v.get("metadata")?.get("name")?.as_str().map(str::to_string))
            .collect();
        if !stale.is_empty() {
            tracing::debug!(configs = ?stale, "VireoNodeConfig conditions to write");
            self.tx.send_replace(stale);
        }
    }
}

fn now() -> Time {
    Time(jiff::Timestamp::now())
}

/// The task: writes the conditions of the configs it is given, until the source is dropped.
async fn run(client: Client, mut rx: watch::Receiver<BTreeSet<String>>, retry: Retry) {
    let api: Api<DynamicObject> = Api::all_with(client, &Kind::VireoNodeConfig.api_resource());
    let mut pending: BTreeSet<String> = BTreeSet::new();
    let mut backoff = Backoff::new(FIRST_BACKOFF);
    loop {
        if pending.is_empty() && rx.changed().await.is_err() {
            return;
        }
        pending.extend(rx.borrow_and_update().iter().cloned());
        let mut failed = BTreeSet::new();
        for name in std::mem::take(&mut pending) {
            match write(&api, &retry, &name).await {
                Ok(true) => {
                    tracing::info!(config = %name, "VireoNodeConfig Valid condition written")
                }
                Ok(false) => {}
                Err(e) => {
                    if backoff.fresh() {
                        tracing::warn!(config = %name, "writing the Valid condition: {e}");
                    } else {
                        tracing::debug!(config = %name, "writing the Valid condition: {e}");
                    }
                    failed.insert(name);
                }
            }
        }
        if failed.is_empty() {
            backoff.reset();
        } else {
            pending = failed;
            backoff.wait().await;
        }
    }
}

/// Writes config `name`'s `Valid` condition if it differs from what it shows: whether it
/// wrote.
async fn write(api: &Api<DynamicObject>, retry: &Retry, name: &str) -> Result<bool, Error> {
    let get = || format!("get VireoNodeConfig {name}");
    let put = || format!("update VireoNodeConfig {name}/status");
    for _ in 0..MAX_CONFLICTS {
        let mut o = match retry.run(&get, || api.get(name)).await? {
            Ok(o) => o,
            Err(s) if s.code == 404 => return Ok(false),
            Err(s) => return Err(crate::allocator::refused(get(), s)),
        };
        let j = serde_json::to_value(&o).map_err(|e| invalid(name, &e))?;
        let y: serde_yaml_ng::Value = serde_yaml_ng::to_value(&j).map_err(|e| invalid(name, &e))?;
        let mut want = valid_condition(&check(&y), o.metadata.generation, now());
        let have = current_condition(&j);
        if let Some(h) = &have {
            if same_condition(h, &want) {
                return Ok(false);
            }
            if h.status == want.status {
                want.last_transition_time = h.last_transition_time.clone();
            }
        }
        let mut conditions: Vec<Value> = j
            .pointer("/status/conditions")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|c| c.get("type").and_then(Value::as_str) != Some(CONDITION_VALID))
            .cloned()
            .collect();
        conditions.push(serde_json::to_value(&want).map_err(|e| invalid(name, &e))?);
        if !o.data.get("status").is_some_and(Value::is_object) {
            o.data["status"] = json!({});
        }
        o.data["status"]["conditions"] = Value::Array(conditions);
        let pp = PostParams::default();
        match retry
            .run(&put, || api.replace_status(name, &pp, &o))
            .await?
        {
            Ok(_) => return Ok(true),
            Err(s) if s.code == 409 => continue,
            Err(s) if s.code == 404 => return Ok(false),
            Err(s) => return Err(crate::allocator::refused(put(), s)),
        }
    }
    Err(Error::Contended {
        op: put(),
        attempts: MAX_CONFLICTS,
    })
}

fn invalid(name: &str, e: &dyn std::fmt::Display) -> Error {
    Error::Invalid {
        what: format!("VireoNodeConfig {name}"),
        why: e.to_string(),
    }
}
