//! `VireoIdentity`: one security identity of the cluster, like Cilium's `CiliumIdentity`.
//!
//! The object's name is the identity's number in decimal (`"1234567"`), so that every node
//! finds an identity by its number with one GET, and two nodes that compute the same number
//! for the same labels create the same object (the second create fails with
//! AlreadyExists, which is the answer it wanted). The labels are a top-level field,
//! `security-labels`, exactly where CiliumIdentity has them: they are the identity, not a
//! desired state that something reconciles, so they are neither a `spec` nor a `status`,
//! and tools that read CiliumIdentity's shape read this one. They never change once written
//! (the number derives from them).
//!
//! `metadata.labels` carries the pod namespace as `io.kubernetes.pod.namespace`, as
//! CiliumIdentity's do, for `kubectl get vireoidentities -l …` and the NAMESPACE column.
//!
//! # Garbage collection
//!
//! An identity is garbage once no [`VireoEndpoint`](super::VireoEndpoint) refers to it
//! (`status.identity.id`) and no agent has used it for a grace period. Agents record use in
//! the status subresource, `status.lastUsed`, refreshed at most every [`HEARTBEAT_SECS`]
//! while one of their endpoints has the identity; [`is_garbage`] is the collector's rule.
//! The grace period covers an endpoint that is being created while its identity is new
//! (Cilium's operator has the same race, and the same answer: a heartbeat timeout).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The label of `metadata.labels` that carries the pod namespace (without the `k8s:` source).
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";

/// How often, at most, an agent refreshes `status.lastUsed` of an identity it uses.
pub const HEARTBEAT_SECS: i64 = 15 * 60;

/// The grace period of [`is_garbage`]: two heartbeats, so that one missed write is no loss.
pub const GC_GRACE_SECS: i64 = 2 * HEARTBEAT_SECS;

/// The fields of a `VireoIdentity` (there is no `spec`: they sit at the top level).
// kube's printcolumn(...) repeats its keys (`type_`, …) by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
#[kube(
    group = "vireo.io",
    version = "v1alpha1",
    kind = "VireoIdentity",
    plural = "vireoidentities",
    no_spec,
    status = "VireoIdentityStatus",
    derive = "PartialEq",
    shortname = "vid",
    category = "vireo",
    doc = "A security identity: its name is the identity's number in decimal, its security-labels the labels it stands for.",
    printcolumn(
        name = "Namespace",
        type_ = "string",
        json_path = ".metadata.labels.io\\.kubernetes\\.pod\\.namespace",
        description = "The namespace of the pods with this identity"
    ),
    printcolumn(
        name = "Last Used",
        type_ = "date",
        json_path = ".status.lastUsed",
        description = "When an agent last reported an endpoint with this identity"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
pub struct VireoIdentityFields {
    /// The identity's labels, `source:key` → value, e.g. `k8s:app` → `web` and
    /// `k8s:io.kubernetes.pod.namespace` → `default` (Cilium's `security-labels`).
    #[serde(rename = "security-labels")]
    pub security_labels: BTreeMap<String, String>,
}

/// What an identity's users report.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VireoIdentityStatus {
    /// When an agent last had an endpoint with this identity (refreshed at most every
    /// 15 minutes while it has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<Time>,
}

impl VireoIdentity {
    /// The object for identity `id` with these labels: its name the number, its
    /// `metadata.labels` the namespace (when the labels have one).
    pub fn for_labels(id: u32, security_labels: BTreeMap<String, String>) -> VireoIdentity {
        let ns = security_labels
            .get(&format!("k8s:{NAMESPACE_LABEL}"))
            .cloned();
        VireoIdentity {
            metadata: ObjectMeta {
                name: Some(id.to_string()),
                labels: ns.map(|ns| BTreeMap::from([(NAMESPACE_LABEL.to_owned(), ns)])),
                ..ObjectMeta::default()
            },
            spec: VireoIdentityFields { security_labels },
            status: None,
        }
    }

    /// The identity's number: the name, when it is a decimal number without leading zeros
    /// that fits 32 bits.
    pub fn numeric_id(&self) -> Option<u32> {
        let name = self.metadata.name.as_deref()?;
        let canonical = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_digit())
            && (name == "0" || !name.starts_with('0'));
        canonical.then(|| name.parse().ok()).flatten()
    }
}

/// Whether the collector may delete `identity` at `now`: no endpoint refers to it (`in_use`
/// false) and it was last used, or else created, more than `grace` ago. An identity with
/// neither time is kept (it was never written by an agent: someone else's to delete).
pub fn is_garbage(
    identity: &VireoIdentity,
    in_use: bool,
    now: Timestamp,
    grace: SignedDuration,
) -> bool {
    if in_use {
        return false;
    }
    let last = identity
        .status
        .as_ref()
        .and_then(|s| s.last_used.as_ref())
        .or(identity.metadata.creation_timestamp.as_ref());
    match last {
        Some(Time(t)) => now.duration_since(*t) > grace,
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels() -> BTreeMap<String, String> {
        BTreeMap::from([
            ("k8s:app".to_owned(), "web".to_owned()),
            (format!("k8s:{NAMESPACE_LABEL}"), "shop".to_owned()),
        ])
    }

    #[test]
    fn the_name_is_the_number_and_the_namespace_a_label() {
        let id = VireoIdentity::for_labels(70001, labels());
        assert_eq!(id.metadata.name.as_deref(), Some("70001"));
        assert_eq!(id.numeric_id(), Some(70001));
        assert_eq!(
            id.metadata.labels.as_ref().unwrap()[NAMESPACE_LABEL],
            "shop"
        );
        let v = serde_json::to_value(&id).unwrap();
        assert_eq!(v["security-labels"]["k8s:app"], "web");
        assert!(v.get("spec").is_none(), "{v}");
        let back: VireoIdentity = serde_json::from_value(v).unwrap();
        assert_eq!(back, id);
    }

    #[test]
    fn only_canonical_decimal_names_are_numbers() {
        let mut id = VireoIdentity::for_labels(1, labels());
        for (name, want) in [
            ("0", Some(0)),
            ("16777215", Some(16_777_215)),
            ("4294967295", Some(u32::MAX)),
            ("4294967296", None),
            ("007", None),
            ("-1", None),
            ("+1", None),
            ("12a", None),
            ("", None),
        ] {
            id.metadata.name = Some(name.to_owned());
            assert_eq!(id.numeric_id(), want, "{name:?}");
        }
    }

    #[test]
    fn garbage_needs_no_user_and_an_old_last_use() {
        let now: Timestamp = "2025-06-01T12:00:00Z".parse().unwrap();
        let grace = SignedDuration::from_secs(GC_GRACE_SECS);
        let at = |s: &str| Some(Time(s.parse().unwrap()));
        let mut id = VireoIdentity::for_labels(9, labels());
        assert!(!is_garbage(&id, false, now, grace), "no time at all: kept");
        id.metadata.creation_timestamp = at("2025-06-01T10:00:00Z");
        assert!(is_garbage(&id, false, now, grace));
        assert!(!is_garbage(&id, true, now, grace), "in use");
        id.status = Some(VireoIdentityStatus {
            last_used: at("2025-06-01T11:40:00Z"),
        });
        assert!(!is_garbage(&id, false, now, grace), "used 20 minutes ago");
        id.status = Some(VireoIdentityStatus {
            last_used: at("2025-06-01T11:29:59Z"),
        });
        assert!(is_garbage(&id, false, now, grace), "used 30m01s ago");
    }
}
