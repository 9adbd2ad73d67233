//! Garbage collection of identities no pod uses.
//!
//! A pass ([`IdentityGc::run_once`], or [`IdentityGc::plan`] then [`IdentityGc::apply`]) lists
//! every `VireoIdentity` and compares it with the label sets in use cluster-wide (given by the
//! caller, or [`labels_in_use`]: those of every `VireoEndpoint`):
//!
//! - in use and marked → the mark ([`UNUSED_SINCE`]) is removed;
//! - unused and not marked → marked with the current time;
//! - unused and marked for at least [`GcOptions::grace`] → deleted, with the uid and the
//!   resourceVersion it was listed with as preconditions.
//!
//! Every write carries the listed resourceVersion, so a pass never acts on a version it has not
//! seen: an agent that takes a marked identity back ([`super::ClusterIdentities::allocate`]
//! removes the mark first) changes its resourceVersion, and a concurrent delete then fails with
//! 409 and the identity is kept. An identity therefore goes only after a whole grace period in
//! which no endpoint showed its labels and no agent allocated it. Any number of agents may run
//! passes (writes are idempotent, and races end in 409s that leave things as they are), but the
//! marks carry the marking agent's clock: collectors' clocks must agree to well within the grace
//! period. Running the collector in one place (an elected agent or an operator) avoids that.
//!
//! Usage must be visible before the grace period ends: agents publish a `VireoEndpoint` (with
//! the identity's labels) within the grace period of allocating the identity.

use std::collections::HashSet;
use std::time::Duration;

use futures_util::Future;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, Preconditions};
use kube::Client;
use serde_json::json;
use vireo_policy::{Identity, Labels};

use super::endpoints::endpoint_labels;
use super::identities::parse;
use super::{endpoint_resource, identity_resource, refused, Error, Retry, UNUSED_SINCE};

/// How the collector runs.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// How long an identity stays marked unused before it is deleted. Default 15 minutes
    /// (Cilium's identity GC interval).
    pub grace: Duration,
    /// How often [`IdentityGc::run`] makes a pass. Default 5 minutes.
    pub interval: Duration,
    /// Requests' bounds and retries.
    pub retry: Retry,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(15 * 60),
            interval: Duration::from_secs(5 * 60),
            retry: Retry::default(),
        }
    }
}

/// What one pass will do, from one list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Mark the identity unused (it was listed at this resourceVersion).
    Mark(Identity, String),
    /// Remove the mark: it is in use again.
    Unmark(Identity, String),
    /// Delete it: unused for the whole grace period (uid, resourceVersion as listed).
    Delete(Identity, String, String),
}

/// The actions of one pass, planned from one list of every identity.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcPlan {
    /// In the order found.
    pub actions: Vec<Action>,
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Newly marked unused.
    pub marked: Vec<Identity>,
    /// In use again: mark removed.
    pub unmarked: Vec<Identity>,
    /// Deleted.
    pub deleted: Vec<Identity>,
    /// Due for deletion but changed since listed (taken back by an agent, or another
    /// collector acted first): kept.
    pub kept: Vec<Identity>,
}

/// The garbage collector of `VireoIdentity` objects.
#[derive(Clone)]
pub struct IdentityGc {
    api: Api<DynamicObject>,
    opts: GcOptions,
}

impl IdentityGc {
    /// A collector using `client`.
    pub fn new(client: Client, opts: GcOptions) -> IdentityGc {
        IdentityGc {
            api: Api::all_with(client, &identity_resource()),
            opts,
        }
    }

    /// Lists every identity and decides what to do with each, given the label sets in use.
    pub async fn plan(&self, in_use: &HashSet<Labels>) -> Result<GcPlan, Error> {
        let objects = list_all(&self.api, &self.opts.retry, "VireoIdentity").await?;
        let now = jiff::Timestamp::now();
        let grace_ms = i64::try_from(self.opts.grace.as_millis()).unwrap_or(i64::MAX);
        let mut plan = GcPlan::default();
        for o in objects {
            let (id, e) = match parse(&o) {
                Ok(p) => p,
                Err(why) => {
                    tracing::debug!(name = ?o.metadata.name, %why, "GC leaves a malformed VireoIdentity alone");
                    continue;
                }
            };
            let since = o
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(UNUSED_SINCE));
            let rv = e.rv_text.clone();
            match (in_use.contains(&e.labels), since) {
                (true, Some(_)) => plan.actions.push(Action::Unmark(id, rv)),
                (true, None) => {}
                (false, None) => plan.actions.push(Action::Mark(id, rv)),
                (false, Some(t)) => match t.parse::<jiff::Timestamp>() {
                    Ok(t) if now.as_millisecond() - t.as_millisecond() >= grace_ms => {
                        plan.actions.push(Action::Delete(id, e.uid.clone(), rv))
                    }
                    Ok(_) => {}
                    // A mark that does not parse: start the grace period again.
                    Err(_) => plan.actions.push(Action::Mark(id, rv)),
                },
            }
        }
        Ok(plan)
    }

    /// Carries out a plan. Writes that find the object changed (409) or gone (404) since the
    /// list are skipped; a refused delete is reported in [`GcReport::kept`].
    pub async fn apply(&self, plan: GcPlan) -> Result<GcReport, Error> {
        let retry = &self.opts.retry;
        let mut report = GcReport::default();
        let pp = PatchParams::default();
        for a in plan.actions {
            let mark = matches!(a, Action::Mark(..));
            match a {
                Action::Mark(id, rv) | Action::Unmark(id, rv) => {
                    let value = mark.then(|| jiff::Timestamp::now().to_string());
                    let patch = Patch::Merge(json!({"metadata": {
                        "resourceVersion": rv,
                        "annotations": { UNUSED_SINCE: value },
                    }}));
                    let name = id.to_string();
                    let op = || {
                        format!(
                            "{} VireoIdentity {id}",
                            if mark { "mark" } else { "unmark" }
                        )
                    };
                    match retry
                        .run(&op, || self.api.patch(&name, &pp, &patch))
                        .await?
                    {
                        Ok(_) if mark => {
                            tracing::info!(%id, "identity unused: marked");
                            report.marked.push(id);
                        }
                        Ok(_) => {
                            tracing::info!(%id, "identity in use again: unmarked");
                            report.unmarked.push(id);
                        }
                        Err(s) if s.code == 404 || s.code == 409 => {}
                        Err(s) => return Err(refused(op(), s)),
                    }
                }
                Action::Delete(id, uid, rv) => {
                    let dp = DeleteParams {
                        preconditions: Some(Preconditions {
                            uid: Some(uid),
                            resource_version: Some(rv),
                        }),
                        ..DeleteParams::default()
                    };
                    let name = id.to_string();
                    let op = || format!("delete VireoIdentity {id}");
                    match retry.run(&op, || self.api.delete(&name, &dp)).await? {
                        Ok(_) => {
                            tracing::info!(%id, "identity unused for the grace period: deleted");
                            report.deleted.push(id);
                        }
                        Err(s) if s.code == 409 => {
                            tracing::info!(%id, "identity changed since listed: kept");
                            report.kept.push(id);
                        }
                        Err(s) if s.code == 404 => {}
                        Err(s) => return Err(refused(op(), s)),
                    }
                }
            }
        }
        Ok(report)
    }

    /// One pass: [`IdentityGc::plan`] then [`IdentityGc::apply`].
    pub async fn run_once(&self, in_use: &HashSet<Labels>) -> Result<GcReport, Error> {
        let plan = self.plan(in_use).await?;
        self.apply(plan).await
    }

    /// A pass every [`GcOptions::interval`], forever, with the label sets `in_use` returns;
    /// failed passes are logged and the next one tried at the next interval.
    pub async fn run<F, Fut>(&self, mut in_use: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<HashSet<Labels>, Error>>,
    {
        let mut tick = tokio::time::interval(self.opts.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let r = match in_use().await {
                Ok(u) => self.run_once(&u).await,
                Err(e) => Err(e),
            };
            match r {
                Ok(rep) => tracing::debug!(?rep, "identity GC pass"),
                Err(e) => tracing::warn!(error = %e, "identity GC pass failed"),
            }
        }
    }
}

/// The label sets of every `VireoEndpoint` in the cluster: the identities in use.
pub async fn labels_in_use(client: Client, retry: &Retry) -> Result<HashSet<Labels>, Error> {
    let api: Api<DynamicObject> = Api::all_with(client, &endpoint_resource());
    let objects = list_all(&api, retry, "VireoEndpoint").await?;
    Ok(objects.iter().filter_map(endpoint_labels).collect())
}

/// Every object of `api`, in pages of 500.
async fn list_all(
    api: &Api<DynamicObject>,
    retry: &Retry,
    kind: &str,
) -> Result<Vec<DynamicObject>, Error> {
    let mut out = Vec::new();
    let mut lp = ListParams::default().limit(500);
    loop {
        let op = || format!("list {kind}");
        let page = match retry.run(&op, || api.list(&lp)).await? {
            Ok(p) => p,
            Err(s) => return Err(refused(op(), s)),
        };
        out.extend(page.items);
        match page.metadata.continue_ {
            Some(c) if !c.is_empty() => lp.continue_token = Some(c),
            _ => return Ok(out),
        }
    }
}
