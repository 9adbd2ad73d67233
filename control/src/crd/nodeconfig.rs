//! `VireoNodeConfig`: the dataplane settings of nodes, the cluster-wide form of the agent's
//! configuration file ([`crate::config`]).
//!
//! # Which configs apply to a node, and in which order
//!
//! A config without `nodeSelector` applies to every node: that is the cluster default
//! (`deploy/` ships one named `default`). A config with a `nodeSelector` applies to the
//! nodes whose labels it matches (an empty selector, `nodeSelector: {}`, matches every
//! node). Every field is optional, and the configs that apply are layered field by field
//! over the built-in defaults (those of the configuration file), each later layer setting
//! only the fields it has:
//!
//! 1. the built-in defaults;
//! 2. the configs without `nodeSelector`;
//! 3. the configs whose `nodeSelector` matches the node.
//!
//! Within steps 2 and 3, configs go by `priority` (default 0; lowest first, so the highest
//! wins), and at equal priority by name (byte order, so `20-fast` overrides `10-base`).
//! Lists (`interfaces`, `workers`) are replaced as a whole, never merged; nested objects
//! (`afXdp`, `conntrack`, `conntrack.lifetimes`, …) are merged field by field.
//! [`effective_settings`](super::effective_settings) implements this.
//!
//! `maglev` can only be set in a config without `nodeSelector`: every node must build the
//! same Maglev tables so that each picks the same backend for a flow, and a per-node value
//! would silently break that ([`validate`](super::validate) rejects it).
//!
//! # Status
//!
//! The status subresource holds one condition, `Valid`: `True`, or `False` with reason
//! `InvalidSpec` and the field errors as its message ([`valid_condition`]). Whether a config
//! is valid does not depend on the node, so every agent that reads it writes the same
//! condition. An agent that sees an invalid config that applies to it keeps its last good
//! settings.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::validate::FieldError;

/// The settings of the nodes a config applies to. Every field is optional: a config sets
/// only what it overrides.
// kube's printcolumn(...) repeats its keys (`type_`, …) by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
#[kube(
    group = "vireo.io",
    version = "v1alpha1",
    kind = "VireoNodeConfig",
    status = "VireoNodeConfigStatus",
    derive = "PartialEq",
    derive = "Default",
    shortname = "vnc",
    category = "vireo",
    doc = "Dataplane settings of the nodes a nodeSelector matches (of every node without one), layered by priority then name.",
    printcolumn(
        name = "Priority",
        type_ = "integer",
        json_path = ".spec.priority",
        description = "Precedence among the configs that match a node"
    ),
    printcolumn(
        name = "Valid",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Valid\")].status",
        description = "Whether the settings are valid"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct VireoNodeConfigSpec {
    /// The nodes this config applies to, by their labels. Without it, every node: the
    /// cluster default, which the configs with a selector override.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<LabelSelector>,
    /// Precedence among the configs that apply to a node: higher wins; at equal priority,
    /// the name later in byte order wins (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// The interfaces to attach and their roles (replaced as a whole). Pods' interfaces
    /// come from the pods; a node needs exactly one uplink.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interfaces: Option<Vec<NodeInterface>>,
    /// The workers and the cores each is pinned to (replaced as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<Vec<Worker>>,
    /// XDP attach mode and polling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xdp: Option<XdpSettings>,
    /// AF_XDP sizes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub af_xdp: Option<AfXdpSettings>,
    /// The overlay.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vxlan: Option<VxlanSettings>,
    /// Service load balancing: the same on every node, so only in a config without
    /// `nodeSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maglev: Option<MaglevSettings>,
    /// Connection tracking limits and lifetimes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conntrack: Option<ConntrackSettings>,
    /// Pod → world masquerade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masquerade: Option<MasqueradeSettings>,
    /// Network policy enforcement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicySettings>,
}

/// Network policy enforcement on the node.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PolicySettings {
    /// Cilium's `policy-audit-mode` for every endpoint of the node: verdicts are taken and
    /// reported, denials not enforced (default false). One pod alone: its annotation
    /// `policy.vireo.io/audit-mode: "true"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audit_mode: Option<bool>,
}

/// Pod → world masquerade to the node's address (Cilium's `enable-ipv4-masquerade`,
/// ip-masq-agent's `nonMasqueradeCIDRs`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MasqueradeSettings {
    /// Masquerade at all (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Source ports and ICMP echo identifiers, `LO-HI` (default `61000-65535`; not
    /// overlapping the kernel's ephemeral ports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<String>,
    /// Destinations left untranslated, as IPv4 CIDRs (replaced as a whole).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_masquerade_cidrs: Option<Vec<String>>,
}

/// An interface to attach.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, JsonSchema)]
pub struct NodeInterface {
    /// Kernel name: 1-15 bytes, no `/`, `:` or white space.
    #[schemars(length(min = 1, max = 15))]
    pub name: String,
    /// Its role.
    pub role: InterfaceRole,
}

/// An interface's role.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InterfaceRole {
    /// The node's uplink: VXLAN and service frontends are steered from it.
    Uplink,
    /// A pod's host-side veth (usually attached from the pod, not listed here).
    Pod,
}

/// A worker thread.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct Worker {
    /// The cores it is pinned to (none: unpinned).
    #[serde(default)]
    pub cores: Vec<u32>,
}

/// XDP attach mode.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native, falling back to generic.
    Auto,
    /// Native only.
    Native,
    /// Generic only.
    Generic,
}

/// XDP attach mode and polling.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct XdpSettings {
    /// Attach mode (default `auto`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<XdpMode>,
    /// Spin instead of sleeping when idle (default false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub busy_poll: Option<bool>,
}

/// AF_XDP sizes (defaults: those of the configuration file).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AfXdpSettings {
    /// Ask the kernel for zero-copy, falling back to copy (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zero_copy: Option<bool>,
    /// Bytes per UMEM frame: 2048 or 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_size: Option<u32>,
    /// UMEM frames per worker: 256-1048576.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<u32>,
    /// RX ring entries per socket: a power of two, 64-16384.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_ring: Option<u32>,
    /// TX ring entries per socket: a power of two, 64-16384.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_ring: Option<u32>,
    /// Fill ring entries per device queue: a power of two, 64-16384.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fill_ring: Option<u32>,
    /// Completion ring entries per device queue: a power of two, 64-16384.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_ring: Option<u32>,
}

/// The overlay.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
pub struct VxlanSettings {
    /// The VXLAN UDP port (default 8472).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<u16>,
    /// Set DF on outer headers (default false, as Linux's vxlan device).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub df: Option<bool>,
}

/// The Maglev tables of every service port (Cilium's `maglev.tableSize`, `maglev.hashSeed`).
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaglevSettings {
    /// Slots per table: one of the primes 251, 509, 1021, 2039, 4093, 8191, 16381 (the
    /// default), 32749, 65521, 131071.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_size: Option<u32>,
    /// Seed of the hashes (default 0; at most 2^63-1: the API server's integers are int64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("format" = "int64"))]
    pub hash_seed: Option<u64>,
}

/// Connection tracking limits and lifetimes.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConntrackSettings {
    /// Most TCP entries: 64-16777216 (default 1048576, Cilium's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tcp: Option<u32>,
    /// Most entries of other protocols: 64-16777216 (default 262144, Cilium's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_other: Option<u32>,
    /// Lifetimes in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetimes: Option<LifetimeSettings>,
}

/// Conntrack lifetimes in seconds, each at least 1.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LifetimeSettings {
    /// An established TCP connection (default 21600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_established: Option<u32>,
    /// A TCP connection being opened (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_syn: Option<u32>,
    /// A TCP connection being closed (default 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_close: Option<u32>,
    /// Anything but TCP (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub non_tcp: Option<u32>,
}

/// A config's status: its `Valid` condition.
#[derive(Serialize, Deserialize, Debug, Clone, Default, PartialEq, JsonSchema)]
pub struct VireoNodeConfigStatus {
    /// Conditions (`Valid`).
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// The type of the one condition.
pub const CONDITION_VALID: &str = "Valid";
/// The reason of a `Valid=False` condition.
pub const REASON_INVALID: &str = "InvalidSpec";
/// The reason of a `Valid=True` condition.
pub const REASON_VALID: &str = "Accepted";

/// The `Valid` condition for a config of `generation` that [`validate`](super::validate)
/// answered with `result`, at `now`. Its message lists every field error, one per line.
pub fn valid_condition(
    result: &Result<(), Vec<FieldError>>,
    generation: Option<i64>,
    now: Time,
) -> Condition {
    let (status, reason, message) = match result {
        Ok(()) => ("True", REASON_VALID, "the settings are valid".to_owned()),
        Err(errs) => (
            "False",
            REASON_INVALID,
            errs.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        ),
    };
    Condition {
        type_: CONDITION_VALID.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: now,
    }
}
