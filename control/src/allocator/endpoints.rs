//! `VireoEndpoint` publishing: one object per local pod, in the pod's namespace, with the pod's
//! name, owned by the pod (so that Kubernetes' garbage collector deletes it with the pod), its
//! state in `status` (through the `/status` subresource when the CRD declares one, else in the
//! main object).
//!
//! ```json
//! {
//!   "apiVersion": "vireo.io/v1alpha1",
//!   "kind": "VireoEndpoint",
//!   "metadata": {
//!     "name": "web-0", "namespace": "default",
//!     "labels": {"vireo.io/node": "node-1"},
//!     "ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": "web-0", "uid": "…"}]
//!   },
//!   "status": {
//!     "identity": {"id": 1234567, "labels": {"k8s:app": "web", "k8s:io.kubernetes.pod.namespace": "default"}},
//!     "networking": {"ipv4": "10.244.1.5", "node": "node-1", "nodeIP": "192.168.100.11"},
//!     "policy": {"ingress": {"enforcing": true}, "egress": {"enforcing": false}, "revision": 7},
//!     "state": "ready"
//!   }
//! }
//! ```
//!
//! `ipv4` and `nodeIP` are left out when unknown; `identity.labels` has the shape of a
//! `VireoIdentity`'s `security-labels`; `state` is `ready`, `not-ready` or `disconnected`.
//! `metadata.labels["vireo.io/node"]` lets an agent list its own endpoints.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::OnceCell;
use vireo_policy::{Identity, Labels};

use super::{
    endpoint_resource, labels_from_json, labels_to_json, refused, Error, Retry, GROUP, VERSION,
};

/// The label naming the node of an endpoint.
pub const NODE_LABEL: &str = "vireo.io/node";

/// How many times a publication starts over after a conflict.
const MAX_CONFLICTS: u32 = 16;

/// The pod an endpoint belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// Its namespace.
    pub namespace: String,
    /// Its name (also the endpoint's).
    pub name: String,
    /// Its uid (for the owner reference).
    pub uid: String,
}

/// An endpoint's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndpointState {
    /// Its datapath and policy are in place.
    Ready,
    /// Being set up, or its policy is being regenerated.
    NotReady,
    /// Its interface is gone; the pod is going away.
    Disconnected,
}

impl EndpointState {
    /// As in the object: `ready`, `not-ready`, `disconnected`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Ready => "ready",
            EndpointState::NotReady => "not-ready",
            EndpointState::Disconnected => "disconnected",
        }
    }

    fn parse(s: &str) -> Option<EndpointState> {
        [
            EndpointState::Ready,
            EndpointState::NotReady,
            EndpointState::Disconnected,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

/// What a `VireoEndpoint`'s status says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointStatus {
    /// The pod's identity.
    pub identity: Identity,
    /// Its labels.
    pub labels: Labels,
    /// The pod's address.
    pub ipv4: Option<Ipv4Addr>,
    /// The node it runs on.
    pub node_name: String,
    /// That node's address.
    pub node_ip: Option<Ipv4Addr>,
    /// Whether ingress policy is enforced.
    pub ingress_enforcing: bool,
    /// Whether egress policy is enforced.
    pub egress_enforcing: bool,
    /// The policy revision in force.
    pub policy_revision: u64,
    /// The endpoint's state.
    pub state: EndpointState,
}

impl EndpointStatus {
    /// The `status` object.
    pub fn to_json(&self) -> Value {
        let mut networking = json!({ "node": self.node_name });
        if let Some(ip) = self.ipv4 {
            networking["ipv4"] = json!(ip.to_string());
        }
        if let Some(ip) = self.node_ip {
            networking["nodeIP"] = json!(ip.to_string());
        }
        json!({
            "identity": { "id": self.identity.0, "labels": labels_to_json(&self.labels) },
            "networking": networking,
            "policy": {
                "ingress": { "enforcing": self.ingress_enforcing },
                "egress": { "enforcing": self.egress_enforcing },
                "revision": self.policy_revision,
            },
            "state": self.state.as_str(),
        })
    }

    /// Reads a `status` object back.
    pub fn from_json(v: &Value) -> Result<EndpointStatus, String> {
        let id = v
            .pointer("/identity/id")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or("identity.id missing")?;
        let labels = labels_from_json(v.pointer("/identity/labels").ok_or("labels missing")?)?;
        let ip = |p: &str| -> Result<Option<Ipv4Addr>, String> {
            match v.pointer(p) {
                None | Some(Value::Null) => Ok(None),
                Some(x) => x
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .map(Some)
                    .ok_or_else(|| format!("{p}: not an IPv4 address")),
            }
        };
        let flag = |p: &str| v.pointer(p).and_then(Value::as_bool).unwrap_or(false);
        Ok(EndpointStatus {
            identity: Identity(id),
            labels,
            ipv4: ip("/networking/ipv4")?,
            node_name: v
                .pointer("/networking/node")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            node_ip: ip("/networking/nodeIP")?,
            ingress_enforcing: flag("/policy/ingress/enforcing"),
            egress_enforcing: flag("/policy/egress/enforcing"),
            policy_revision: v
                .pointer("/policy/revision")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            state: v
                .get("state")
                .and_then(Value::as_str)
                .and_then(EndpointState::parse)
                .ok_or("state missing or unknown")?,
        })
    }
}

/// The identity labels an endpoint object shows, if it shows any.
pub(crate) fn endpoint_labels(o: &DynamicObject) -> Option<Labels> {
    labels_from_json(o.data.pointer("/status/identity/labels")?).ok()
}

/// What [`Endpoints::publish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// The endpoint did not exist.
    Created,
    /// It existed and was changed.
    Updated,
    /// It was already as asked.
    Unchanged,
}

/// Publishes `VireoEndpoint` objects.
pub struct Endpoints {
    client: Client,
    retry: Retry,
    status_subresource: OnceCell<bool>,
}

impl Endpoints {
    /// A publisher using `client`.
    pub fn new(client: Client, retry: Retry) -> Endpoints {
        Endpoints {
            client,
            retry,
            status_subresource: OnceCell::new(),
        }
    }

    fn api(&self, namespace: &str) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), namespace, &endpoint_resource())
    }

    /// Whether the server serves `vireoendpoints/status` (asked once, through discovery).
    pub async fn status_subresource(&self) -> Result<bool, Error> {
        self.status_subresource
            .get_or_try_init(|| async {
                let gv = format!("{GROUP}/{VERSION}");
                let op = || format!("discover {gv}");
                match self
                    .retry
                    .run(&op, || self.client.list_api_group_resources(&gv))
                    .await?
                {
                    Ok(list) => Ok(list
                        .resources
                        .iter()
                        .any(|r| r.name == "vireoendpoints/status")),
                    Err(s) => Err(refused(op(), s)),
                }
            })
            .await
            .copied()
    }

    /// The endpoint of pod `namespace/name` and its status, if it exists.
    pub async fn get(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<(DynamicObject, Option<EndpointStatus>)>, Error> {
        let api = self.api(namespace);
        let op = || format!("get VireoEndpoint {namespace}/{name}");
        match self.retry.run(&op, || api.get(name)).await? {
            Ok(o) => {
                let st = o
                    .data
                    .get("status")
                    .and_then(|s| EndpointStatus::from_json(s).ok());
                Ok(Some((o, st)))
            }
            Err(s) if s.code == 404 => Ok(None),
            Err(s) => Err(refused(op(), s)),
        }
    }

    /// Creates or updates the endpoint of `pod` so that it shows `status`. Idempotent; writes
    /// that meet a concurrent change (409) start over from a fresh read.
    pub async fn publish(&self, pod: &PodRef, status: &EndpointStatus) -> Result<Publish, Error> {
        let sub = self.status_subresource().await?;
        let api = self.api(&pod.namespace);
        let want_status = status.to_json();
        let owners = vec![OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: pod.name.clone(),
            uid: pod.uid.clone(),
            ..OwnerReference::default()
        }];
        let want_labels = BTreeMap::from([(NODE_LABEL.to_string(), status.node_name.clone())]);
        let what = || format!("VireoEndpoint {}/{}", pod.namespace, pod.name);
        let (mut created, mut changed) = (false, false);
        for _ in 0..MAX_CONFLICTS {
            let cur = self.get(&pod.namespace, &pod.name).await?;
            let Some((mut o, _)) = cur else {
                let mut o =
                    DynamicObject::new(&pod.name, &endpoint_resource()).within(&pod.namespace);
                o.metadata.labels = Some(want_labels.clone());
                o.metadata.owner_references = Some(owners.clone());
                o.data = json!({ "status": want_status });
                let op = || format!("create {}", what());
                let pp = PostParams::default();
                match self.retry.run(&op, || api.create(&pp, &o)).await? {
                    Ok(created) if created.data.get("status") == Some(&want_status) => {
                        tracing::info!(endpoint = %what(), "created");
                        return Ok(Publish::Created);
                    }
                    // The server dropped the status (a status subresource): set it next round.
                    Ok(_) => {
                        created = true;
                        continue;
                    }
                    Err(s) if s.code == 409 => continue,
                    Err(s) => return Err(refused(op(), s)),
                }
            };
            let labels_ok = o.metadata.labels.as_ref().and_then(|l| l.get(NODE_LABEL))
                == Some(&status.node_name);
            let meta_ok = labels_ok && o.metadata.owner_references.as_ref() == Some(&owners);
            let status_ok = o.data.get("status") == Some(&want_status);
            if meta_ok && status_ok {
                return Ok(if created {
                    Publish::Created
                } else if changed {
                    Publish::Updated
                } else {
                    Publish::Unchanged
                });
            }
            if !meta_ok {
                o.metadata
                    .labels
                    .get_or_insert_with(BTreeMap::new)
                    .insert(NODE_LABEL.into(), status.node_name.clone());
                o.metadata.owner_references = Some(owners.clone());
            }
            o.data["status"] = want_status.clone();
            let status_only = sub && meta_ok;
            let op = || {
                format!(
                    "update {}{}",
                    what(),
                    if status_only { "/status" } else { "" }
                )
            };
            let pp = PostParams::default();
            let r = if status_only {
                self.retry
                    .run(&op, || api.replace_status(&pod.name, &pp, &o))
                    .await?
            } else {
                // Without a status subresource this writes the status too; with one, the
                // status is written by the next round.
                self.retry
                    .run(&op, || api.replace(&pod.name, &pp, &o))
                    .await?
            };
            match r {
                Ok(_) => {
                    tracing::debug!(endpoint = %what(), status_only, "updated");
                    changed = true;
                }
                Err(s) if s.code == 409 || s.code == 404 => {}
                Err(s) => return Err(refused(op(), s)),
            }
        }
        Err(Error::Contended {
            op: format!("publishing {}", what()),
            attempts: MAX_CONFLICTS,
        })
    }

    /// Deletes the endpoint of pod `namespace/name`. True if it existed.
    pub async fn delete(&self, namespace: &str, name: &str) -> Result<bool, Error> {
        let api = self.api(namespace);
        let op = || format!("delete VireoEndpoint {namespace}/{name}");
        let dp = DeleteParams::default();
        match self.retry.run(&op, || api.delete(name, &dp)).await? {
            Ok(_) => {
                tracing::info!(endpoint = %format!("{namespace}/{name}"), "deleted");
                Ok(true)
            }
            Err(s) if s.code == 404 => Ok(false),
            Err(s) => Err(refused(op(), s)),
        }
    }
}

/// [`Endpoints::publish`] with a one-off publisher (one discovery request more).
pub async fn publish_endpoint(
    client: Client,
    pod: &PodRef,
    status: &EndpointStatus,
) -> Result<Publish, Error> {
    Endpoints::new(client, Retry::default())
        .publish(pod, status)
        .await
}

/// [`Endpoints::delete`] with a one-off publisher.
pub async fn delete_endpoint(client: Client, namespace: &str, name: &str) -> Result<bool, Error> {
    Endpoints::new(client, Retry::default())
        .delete(namespace, name)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips() {
        let st = EndpointStatus {
            identity: Identity(1234),
            labels: Labels::new([("k8s:app", "web")]),
            ipv4: Some(Ipv4Addr::new(10, 244, 1, 5)),
            node_name: "node-1".into(),
            node_ip: None,
            ingress_enforcing: true,
            egress_enforcing: false,
            policy_revision: 7,
            state: EndpointState::NotReady,
        };
        let j = st.to_json();
        assert_eq!(j["identity"]["labels"]["k8s:app"], "web");
        assert_eq!(j["networking"]["ipv4"], "10.244.1.5");
        assert!(j["networking"].get("nodeIP").is_none());
        assert_eq!(j["policy"]["ingress"]["enforcing"], true);
        assert_eq!(j["state"], "not-ready");
        assert_eq!(EndpointStatus::from_json(&j).unwrap(), st);
        let mut bad = j.clone();
        bad["state"] = json!("sleeping");
        assert!(EndpointStatus::from_json(&bad).is_err());
    }
}
