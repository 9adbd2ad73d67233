//! `VireoEndpoint`: one pod as its node's dataplane sees it, like Cilium's `CiliumEndpoint`.
//!
//! It lives in the pod's namespace under the pod's name, and it is written only by the node
//! that runs the pod (the agent creates it when it attaches the pod and deletes it when it
//! detaches it; an owner reference to the pod lets Kubernetes delete it with the pod too).
//! Everything it holds is observed state, so it has no `spec`: all of it is `status`, as
//! CiliumEndpoint's is. The status subresource is on, so an agent creates the object and
//! then writes `/status` (RBAC grants both).

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A `VireoEndpoint` has no fields besides its status (no `spec`).
// kube's printcolumn(...) repeats its keys (`type_`, …) by design.
#[allow(clippy::duplicated_attributes)]
#[derive(
    CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema,
)]
#[kube(
    group = "vireo.io",
    version = "v1alpha1",
    kind = "VireoEndpoint",
    namespaced,
    no_spec,
    status = "VireoEndpointStatus",
    derive = "PartialEq",
    shortname = "vep",
    category = "vireo",
    doc = "A pod as the dataplane of its node sees it: written by that node's agent, under the pod's name.",
    printcolumn(
        name = "Endpoint ID",
        type_ = "integer",
        json_path = ".status.id",
        description = "The node-local endpoint number"
    ),
    printcolumn(
        name = "Identity ID",
        type_ = "integer",
        json_path = ".status.identity.id",
        description = "The security identity"
    ),
    printcolumn(
        name = "Ingress Enforcement",
        type_ = "boolean",
        json_path = ".status.policy.ingress.enforcing",
        description = "Whether ingress policy is enforced"
    ),
    printcolumn(
        name = "Egress Enforcement",
        type_ = "boolean",
        json_path = ".status.policy.egress.enforcing",
        description = "Whether egress policy is enforced"
    ),
    printcolumn(
        name = "Endpoint State",
        type_ = "string",
        json_path = ".status.state",
        description = "The endpoint's state"
    ),
    printcolumn(
        name = "IPv4",
        type_ = "string",
        json_path = ".status.networking.addressing[0].ipv4",
        description = "The pod's IPv4 address"
    ),
    printcolumn(
        name = "Node",
        type_ = "string",
        json_path = ".status.networking.nodeName",
        priority = 1,
        description = "The node that runs the pod"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct VireoEndpointFields {}

/// What the owning node reports about a pod.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VireoEndpointStatus {
    /// The endpoint's number on its node (Cilium's endpoint ID; Vireo's pod interface slot).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u16>,
    /// The endpoint's security identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<EndpointIdentity>,
    /// Addresses, and the node that runs the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub networking: Option<EndpointNetworking>,
    /// Policy enforcement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<EndpointPolicy>,
    /// The endpoint's state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<EndpointState>,
    /// Named container ports of the pod (name → port and protocol), which policies and
    /// Services can refer to.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub named_ports: BTreeMap<String, NamedPort>,
}

/// An endpoint's identity: its number (the name of a `VireoIdentity`) and labels.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct EndpointIdentity {
    /// The identity's number.
    pub id: u32,
    /// Its labels as `source:key=value`, sorted (e.g. `k8s:app=web`).
    #[serde(default)]
    pub labels: Vec<String>,
}

/// An endpoint's addresses and node.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EndpointNetworking {
    /// The pod's addresses.
    #[serde(default)]
    pub addressing: Vec<AddressPair>,
    /// The node's underlay address: where the overlay sends the pod's traffic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The node's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,
}

/// One address of each family.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct AddressPair {
    /// The IPv4 address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "ipv4"))]
    pub ipv4: Option<String>,
    /// The IPv6 address (Vireo is IPv4-only today).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "ipv6"))]
    pub ipv6: Option<String>,
}

/// Policy enforcement of both directions, and the revision in force.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct EndpointPolicy {
    /// Traffic to the pod.
    pub ingress: DirectionEnforcement,
    /// Traffic from the pod.
    pub egress: DirectionEnforcement,
    /// The revision of the policy snapshot the endpoint's verdicts come from.
    #[serde(default)]
    pub revision: u64,
}

/// One direction's enforcement.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct DirectionEnforcement {
    /// Whether a policy selects the pod in this direction (else everything is allowed).
    pub enforcing: bool,
}

/// A named container port.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct NamedPort {
    /// The port.
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// `TCP`, `UDP` or `SCTP`.
    #[schemars(regex(pattern = r"^(TCP|UDP|SCTP)$"))]
    pub protocol: String,
}

/// An endpoint's state (a subset of Cilium's endpoint states, the same words).
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum EndpointState {
    /// Attached, but waiting for its identity.
    WaitingForIdentity,
    /// Its pod is on the node, but its host-side interface is not there yet (the CNI has not
    /// made it), so nothing is attached.
    WaitingForInterface,
    /// Attached, its tables not yet published.
    NotReady,
    /// Its tables are published: traffic flows under its policy.
    Ready,
    /// Being detached.
    Disconnecting,
    /// Detached: the object is about to go.
    Disconnected,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trips_in_ciliums_words() {
        let text = r#"
apiVersion: vireo.io/v1alpha1
kind: VireoEndpoint
metadata: {name: web-0, namespace: shop}
status:
  id: 7
  identity: {id: 70001, labels: ["k8s:app=web"]}
  networking:
    addressing: [{ipv4: 10.244.1.10}]
    node: 192.168.100.2
    nodeName: node-1
  policy: {ingress: {enforcing: true}, egress: {enforcing: false}, revision: 12}
  state: waiting-for-identity
"#;
        let ep: VireoEndpoint = serde_yaml_ng::from_str(text).unwrap();
        let s = ep.status.as_ref().unwrap();
        assert_eq!(s.state, Some(EndpointState::WaitingForIdentity));
        assert_eq!(s.identity.as_ref().unwrap().id, 70001);
        assert!(s.policy.as_ref().unwrap().ingress.enforcing);
        assert!(!s.policy.as_ref().unwrap().egress.enforcing);
        let v = serde_json::to_value(&ep).unwrap();
        assert_eq!(
            v["status"]["networking"]["addressing"][0]["ipv4"],
            "10.244.1.10"
        );
        assert_eq!(v["status"]["state"], "waiting-for-identity");
        assert!(v.get("spec").is_none(), "{v}");
        let back: VireoEndpoint = serde_json::from_value(v).unwrap();
        assert_eq!(back, ep);
    }
}
