//! `cilium.io/v2` CiliumNetworkPolicy (`cnp`) and CiliumClusterwideNetworkPolicy (`ccnp`)
//! definitions, for clusters without Cilium, where Vireo enforces these policies.
//!
//! They are not in the default `deploy/` base: a cluster that runs Cilium has Cilium's own
//! definitions, which must be left alone. They are installed on their own, from
//! `deploy/cilium-crds/`.
//!
//! The schema is structural and accepts what Cilium accepts: a `spec` (one rule) and/or
//! `specs` (a list), each rule with its selectors typed as Cilium's are (label selectors:
//! `matchLabels`, `matchExpressions`), `description`, `labels`, `log` and
//! `enableDefaultDeny` typed, and the entries of `ingress`, `ingressDeny`, `egress` and
//! `egressDeny` kept whole (`x-kubernetes-preserve-unknown-fields`): Vireo's own reader
//! ([`crate::netpol`]) checks them, and names every field it does not know. Cilium's status
//! (`conditions`, `derivativePolicies`) is kept too. Fields unknown at the rule's top level
//! are pruned, as Cilium's schema prunes them.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde_json::{json, Value};

/// Cilium's API group.
pub const GROUP: &str = "cilium.io";
/// The version of both kinds.
pub const VERSION: &str = "v2";

/// The CiliumNetworkPolicy definition (namespaced).
pub fn network_policy_crd() -> CustomResourceDefinition {
    crd(
        "CiliumNetworkPolicy",
        "ciliumnetworkpolicies",
        "Namespaced",
        &["cnp", "ciliumnp"],
        "A CiliumNetworkPolicy: Cilium's rules for the endpoints of one namespace.",
    )
}

/// The CiliumClusterwideNetworkPolicy definition (cluster-scoped).
pub fn clusterwide_network_policy_crd() -> CustomResourceDefinition {
    crd(
        "CiliumClusterwideNetworkPolicy",
        "ciliumclusterwidenetworkpolicies",
        "Cluster",
        &["ccnp"],
        "A CiliumClusterwideNetworkPolicy: Cilium's rules for endpoints (and nodes) of every namespace.",
    )
}

fn crd(
    kind: &str,
    plural: &str,
    scope: &str,
    short: &[&str],
    description: &str,
) -> CustomResourceDefinition {
    let rule = rule_schema();
    let v = json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": format!("{plural}.{GROUP}"),
            "annotations": {
                "vireo.io/provenance": "Vireo's definition, for clusters without Cilium; Cilium replaces it with its own when installed",
            },
        },
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": format!("{kind}List"),
                "plural": plural,
                "singular": kind.to_lowercase(),
                "shortNames": short,
                "categories": ["cilium", "ciliumpolicy"],
            },
            "scope": scope,
            "versions": [{
                "name": VERSION,
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    {
                        "name": "Valid",
                        "type": "string",
                        "jsonPath": ".status.conditions[?(@.type=='Valid')].status",
                    },
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": description,
                    "required": ["metadata"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": rule.clone(),
                        "specs": {
                            "type": "array",
                            "description": "A list of rules, each like spec.",
                            "items": rule,
                        },
                        "status": status_schema(),
                    },
                }},
            }],
        },
    });
    serde_json::from_value(v).expect("a CustomResourceDefinition")
}

/// A label selector as Cilium types `endpointSelector` and `nodeSelector`.
fn selector_schema(description: &str) -> Value {
    json!({
        "type": "object",
        "description": description,
        "properties": {
            "matchLabels": {
                "type": "object",
                "additionalProperties": {"type": "string", "maxLength": 63},
            },
            "matchExpressions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["key", "operator"],
                    "properties": {
                        "key": {"type": "string"},
                        "operator": {"type": "string", "enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                        "values": {"type": "array", "items": {"type": "string"}},
                    },
                },
            },
        },
    })
}

/// The entries of one rule list, kept whole.
fn entries(description: &str) -> Value {
    json!({
        "type": "array",
        "description": description,
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
    })
}

/// One rule (Cilium's `api.Rule`).
fn rule_schema() -> Value {
    json!({
        "type": "object",
        "description": "One rule: the endpoints (or nodes) it selects, and what they may send and receive.",
        "properties": {
            "endpointSelector": selector_schema("The endpoints the rule applies to."),
            "nodeSelector": selector_schema("The nodes the rule applies to (clusterwide policies only)."),
            "ingress": entries("What the selected endpoints may receive."),
            "ingressDeny": entries("What the selected endpoints must not receive."),
            "egress": entries("What the selected endpoints may send."),
            "egressDeny": entries("What the selected endpoints must not send."),
            "enableDefaultDeny": {
                "type": "object",
                "properties": {"ingress": {"type": "boolean"}, "egress": {"type": "boolean"}},
            },
            "description": {"type": "string"},
            "labels": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["key"],
                    "properties": {
                        "key": {"type": "string"},
                        "source": {"type": "string"},
                        "value": {"type": "string"},
                    },
                },
            },
            "log": {"type": "object", "properties": {"value": {"type": "string"}}},
        },
    })
}

/// Cilium's policy status: conditions, and the per-node derivative policies.
fn status_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "conditions": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["status", "type"],
                    "properties": {
                        "lastTransitionTime": {"type": "string", "format": "date-time"},
                        "message": {"type": "string"},
                        "reason": {"type": "string"},
                        "status": {"type": "string"},
                        "type": {"type": "string"},
                    },
                },
            },
            "derivativePolicies": {
                "type": "object",
                "additionalProperties": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            },
        },
    })
}
