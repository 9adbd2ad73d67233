//! Vireo's custom resources, as Rust types, and the CustomResourceDefinitions made from them.
//!
//! # The API group: `vireo.io`
//!
//! Vireo's own kinds live in the group `vireo.io`, version `v1alpha1`: an API Vireo owns and
//! may change, beside the `cilium.io` policy kinds it reads but does not own. This is what
//! Cilium does with `cilium.io` (CiliumIdentity, CiliumEndpoint, CiliumNode): a project's own
//! DNS name as its group, so that its kinds never collide with another project's, and a
//! cluster can run both. `v1alpha1` says that the shapes are not frozen yet.
//!
//! | kind | scope | module | written by |
//! |---|---|---|---|
//! | [`VireoIdentity`] | cluster | [`identity`] | the agent that first needs the identity |
//! | [`VireoEndpoint`] | namespaced (the pod's) | [`endpoint`] | the node that runs the pod |
//! | [`VireoNodeConfig`] | cluster | [`nodeconfig`] | the operator; read by every agent |
//!
//! For clusters without Cilium, [`cilium`] makes `cilium.io/v2` CiliumNetworkPolicy and
//! CiliumClusterwideNetworkPolicy definitions, which are installed on their own (never in
//! the default `deploy/` base: a cluster running Cilium has its own, and they must be left
//! alone).
//!
//! [`render_all`] gives every definition as YAML, the files of `deploy/crds/`; `vireo crds`
//! writes them, and `control/tests/crds_fresh.rs` fails when the files are stale.

pub mod cilium;
pub mod endpoint;
pub mod identity;
pub mod nodeconfig;
mod render;
pub mod selector;
pub mod settings;
pub mod validate;

pub use endpoint::{VireoEndpoint, VireoEndpointStatus};
pub use identity::{VireoIdentity, VireoIdentityStatus};
pub use nodeconfig::{VireoNodeConfig, VireoNodeConfigSpec, VireoNodeConfigStatus};
pub use render::{
    cilium_crds, render, render_all, render_cilium, vireo_crds, write_all, CrdFile, RenderError,
};
pub use settings::{effective_settings, EffectiveError, EffectiveSettings};
pub use validate::{validate, FieldError};

/// Vireo's API group.
pub const GROUP: &str = "vireo.io";
/// The version of every Vireo kind.
pub const VERSION: &str = "v1alpha1";
/// `apiVersion` of Vireo's kinds.
pub const API_VERSION: &str = "vireo.io/v1alpha1";
