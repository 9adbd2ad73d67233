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
//!     "identity": {"id": 1234567, "labels": ["k8s:app=web", "k8s:io.kubernetes.pod.namespace=default"]},
//!     "networking": {"addressing": [{"ipv4": "10.244.1.5"}], "node": "192.168.100.11", "nodeName": "node-1"},
//!     "policy": {"ingress": {"enforcing": true}, "egress": {"enforcing": false}, "revision": 7},
//!     "state": "ready"
//!   }
//! }
//! ```
//!
//! The status has the shape of [`crate::crd::VireoEndpointStatus`] (the CRD's schema: a real
//! API server prunes or refuses anything else). `addressing` is empty and `node` left out when
//! unknown; `identity.labels` are the identity's labels as `source:key=value`, sorted (`source:key`
//! when the value is empty); `state` is one of the CRD's states (`ready`, `not-ready`,
//! `waiting-for-interface`, `disconnected`, …). `metadata.labels["vireo.io/node"]` lets an agent
//! list its own endpoints.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, DynamicObject, ListParams, PostParams, Preconditions};
use kube::Client;
use serde_json::{json, Value};
use tokio::sync::OnceCell;
use vireo_policy::{Identity, Labels};

use super::{endpoint_resource, labels_from_json, refused, Error, Retry, GROUP, VERSION};
use crate::crd::endpoint::{
    AddressPair, DirectionEnforcement, EndpointIdentity, EndpointNetworking, EndpointPolicy,
    EndpointState as CrdState, VireoEndpointStatus as CrdStatus,
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
    /// The pod is on the node but its host-side interface is not there yet.
    WaitingForInterface,
    /// Its interface is gone; the pod is going away.
    Disconnected,
}

impl EndpointState {
    /// As in the object: `ready`, `not-ready`, `waiting-for-interface`, `disconnected`.
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointState::Ready => "ready",
            EndpointState::NotReady => "not-ready",
            EndpointState::WaitingForInterface => "waiting-for-interface",
            EndpointState::Disconnected => "disconnected",
        }
    }

    fn to_crd(self) -> CrdState {
        match self {
            EndpointState::Ready => CrdState::Ready,
            EndpointState::NotReady => CrdState::NotReady,
            EndpointState::WaitingForInterface => CrdState::WaitingForInterface,
            EndpointState::Disconnected => CrdState::Disconnected,
        }
    }

    fn from_crd(s: CrdState) -> Option<EndpointState> {
        Some(match s {
            CrdState::Ready => EndpointState::Ready,
            CrdState::NotReady => EndpointState::NotReady,
            CrdState::WaitingForInterface => EndpointState::WaitingForInterface,
            CrdState::Disconnected => EndpointState::Disconnected,
            CrdState::WaitingForIdentity | CrdState::Disconnecting => return None,
        })
    }
}

/// A label set as an endpoint shows it: `source:key=value` (`source:key` without a value),
/// sorted.
pub fn labels_to_list(labels: &Labels) -> Vec<String> {
    let mut v: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            if v.is_empty() {
                k.to_string()
            } else {
                format!("{k}={v}")
            }
        })
        .collect();
    v.sort();
    v
}

/// The label set of a list [`labels_to_list`] made (a key holds no `=`: the first one ends it).
pub fn labels_from_list(list: &[String]) -> Labels {
    Labels::new(list.iter().map(|l| match l.split_once('=') {
        Some((k, v)) => (k.to_string(), v.to_string()),
        None => (l.clone(), String::new()),
    }))
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
    /// The `status` object, in the CRD's shape.
    pub fn to_json(&self) -> Value {
        let st = CrdStatus {
            id: None,
            identity: Some(EndpointIdentity {
                id: self.identity.0,
                labels: labels_to_list(&self.labels),
            }),
            networking: Some(EndpointNetworking {
                addressing: self
                    .ipv4
                    .map(|ip| AddressPair {
                        ipv4: Some(ip.to_string()),
                        ipv6: None,
                    })
                    .into_iter()
                    .collect(),
                node: self.node_ip.map(|ip| ip.to_string()),
                node_name: Some(self.node_name.clone()),
            }),
            policy: Some(EndpointPolicy {
                ingress: DirectionEnforcement {
                    enforcing: self.ingress_enforcing,
                },
                egress: DirectionEnforcement {
                    enforcing: self.egress_enforcing,
                },
                revision: self.policy_revision,
            }),
            state: Some(self.state.to_crd()),
            named_ports: BTreeMap::new(),
        };
        serde_json::to_value(st).unwrap_or(Value::Null)
    }

    /// Reads a `status` object back.
    pub fn from_json(v: &Value) -> Result<EndpointStatus, String> {
        let st: CrdStatus = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
        let identity = st.identity.ok_or("identity missing")?;
        let net = st.networking.unwrap_or_default();
        let ip = |s: Option<&String>, what: &str| -> Result<Option<Ipv4Addr>, String> {
            s.map(|s| {
                s.parse()
                    .map_err(|_| format!("{what}: {s:?} is not an IPv4 address"))
            })
            .transpose()
        };
        let policy = st.policy.unwrap_or_default();
        Ok(EndpointStatus {
            identity: Identity(identity.id),
            labels: labels_from_list(&identity.labels),
            ipv4: ip(
                net.addressing.first().and_then(|a| a.ipv4.as_ref()),
                "networking.addressing[0].ipv4",
            )?,
            node_name: net.node_name.unwrap_or_default(),
            node_ip: ip(net.node.as_ref(), "networking.node")?,
            ingress_enforcing: policy.ingress.enforcing,
            egress_enforcing: policy.egress.enforcing,
            policy_revision: policy.revision,
            state: st
                .state
                .and_then(EndpointState::from_crd)
                .ok_or("state missing or not one Vireo writes")?,
        })
    }
}

/// A pod of this node and the status its endpoint is to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEndpoint {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The status.
    pub status: EndpointStatus,
}

/// The identity labels an endpoint object shows, if it shows any (a list of
/// `source:key=value`, or the object of labels earlier versions wrote).
pub(crate) fn endpoint_labels(o: &DynamicObject) -> Option<Labels> {
    let v = o.data.pointer("/status/identity/labels")?;
    match v {
        Value::Array(items) => {
            let list: Option<Vec<String>> = items
                .iter()
                .map(|i| i.as_str().map(str::to_string))
                .collect();
            Some(labels_from_list(&list?))
        }
        _ => labels_from_json(v).ok(),
    }
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
    /// Deletes the endpoint of pod `namespace/name` if it is still node `node`'s (its
    /// [`NODE_LABEL`]): a pod that moved to another node keeps the endpoint that node wrote.
    /// The delete carries the uid and resourceVersion it was read with, so a concurrent
    /// takeover (409) is seen and read again. True if it deleted it.
    pub async fn delete_own(&self, namespace: &str, name: &str, node: &str) -> Result<bool, Error> {
        let api = self.api(namespace);
        let what = || format!("delete VireoEndpoint {namespace}/{name}");
        for _ in 0..MAX_CONFLICTS {
            let Some((o, _)) = self.get(namespace, name).await? else {
                return Ok(false);
            };
            let owner = o.metadata.labels.as_ref().and_then(|l| l.get(NODE_LABEL));
            if owner.map(String::as_str) != Some(node) {
                tracing::debug!(endpoint = %format!("{namespace}/{name}"), ?owner, "another node's: kept");
                return Ok(false);
            }
            let dp = DeleteParams {
                preconditions: Some(Preconditions {
                    uid: o.metadata.uid.clone(),
                    resource_version: o.metadata.resource_version.clone(),
                }),
                ..DeleteParams::default()
            };
            match self.retry.run(&what, || api.delete(name, &dp)).await? {
                Ok(_) => {
                    tracing::info!(endpoint = %format!("{namespace}/{name}"), "deleted");
                    return Ok(true);
                }
                Err(s) if s.code == 404 => return Ok(false),
                Err(s) if s.code == 409 => continue,
                Err(s) => return Err(refused(what(), s)),
            }
        }
        Err(Error::Contended {
            op: what(),
            attempts: MAX_CONFLICTS,
        })
    }

    /// The endpoints labelled as node `node`'s, as (namespace, name), in every namespace.
    pub async fn list_own(&self, node: &str) -> Result<Vec<(String, String)>, Error> {
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &endpoint_resource());
        let lp = ListParams::default().labels(&format!("{NODE_LABEL}={node}"));
        let op = || format!("list the VireoEndpoints of node {node}");
        match self.retry.run(&op, || api.list(&lp)).await? {
            Ok(list) => Ok(list
                .items
                .into_iter()
                .filter_map(|o| Some((o.metadata.namespace?, o.metadata.name?)))
                .collect()),
            Err(s) if s.code == 404 => Ok(Vec::new()),
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
        assert_eq!(j["identity"]["labels"], json!(["k8s:app=web"]));
        assert_eq!(j["networking"]["addressing"][0]["ipv4"], "10.244.1.5");
        assert_eq!(j["networking"]["nodeName"], "node-1");
        assert!(j["networking"].get("node").is_none());
        assert_eq!(j["policy"]["ingress"]["enforcing"], true);
        assert_eq!(j["state"], "not-ready");
        assert_eq!(EndpointStatus::from_json(&j).unwrap(), st);
        let mut bad = j.clone();
        bad["state"] = json!("sleeping");
        assert!(EndpointStatus::from_json(&bad).is_err());
    }
}
