//! Cluster-wide identity allocation through `VireoIdentity` objects, garbage collection of
//! unused identities, and `VireoEndpoint` publishing: the Kubernetes-backed counterpart of the
//! node-local [`vireo_policy::IdentityAllocator`], in the manner of Cilium's CRD identity
//! allocator (CiliumIdentity, CiliumEndpoint, the operator's identity GC).
//!
//! Async library code for the control thread's tokio runtime; nothing here is on the fast path.
//!
//! - [`ClusterIdentities`] ([`identities`]): `allocate(&Labels) -> Identity` and
//!   [`ClusterIdentities::allocate_all`], backed by a local cache fed by a watch of every
//!   `VireoIdentity`, so that identities other agents create are learnt too.
//! - [`IdentityGc`] ([`gc`]): deletes identities no pod has used for a grace period.
//! - [`Endpoints`] ([`endpoints`]): creates, updates and deletes one `VireoEndpoint` per local pod.
//! - [`candidates()`]: the deterministic sequence of numbers a label set tries.
//!
//! # Object shapes
//!
//! Both are custom resources of group `vireo.io`, version `v1alpha1`, written as JSON through
//! [`kube::api::DynamicObject`] (a typed CRD module must match these shapes).
//!
//! `VireoIdentity` (plural `vireoidentities`, cluster-scoped; like a CiliumIdentity):
//!
//! ```json
//! {
//!   "apiVersion": "vireo.io/v1alpha1",
//!   "kind": "VireoIdentity",
//!   "metadata": {
//!     "name": "1234567",
//!     "labels": {"app": "web", "io.kubernetes.pod.namespace": "default"},
//!     "annotations": {"vireo.io/unused-since": "2025-01-01T12:00:00Z"}
//!   },
//!   "security-labels": {"k8s:app": "web", "k8s:io.kubernetes.pod.namespace": "default"}
//! }
//! ```
//!
//! - `metadata.name` is the identity, in decimal, in `Identity::FIRST_ENDPOINT..Identity::LIMIT`.
//! - `security-labels` is the whole label set, exactly as [`vireo_policy::Labels`] holds it: each key is
//!   `source:key` (`k8s:app`, `k8s:io.cilium.k8s.namespace.labels.team`), each value a string.
//!   It is the only field read back; it is written once, at creation, and never changed.
//! - `metadata.labels` copies, for `kubectl get -l`, the `k8s:` labels with the source stripped,
//!   only those whose key and value are valid Kubernetes label keys and values (as Cilium does).
//!   Informational: never read back.
//! - `metadata.annotations["vireo.io/unused-since"]` ([`UNUSED_SINCE`]) is set by the garbage
//!   collector (RFC 3339) when it first finds the identity unused, and removed when it is used
//!   again; see [`gc`].
//!
//! `VireoEndpoint` (plural `vireoendpoints`, namespaced, same namespace and name as its pod, owned
//! by it; like a CiliumEndpoint) is described in [`endpoints`].
//!
//! # Invariants
//!
//! 1. **No number stands for two label sets.** The API server keeps object names unique, an
//!    identity is only ever created with its labels and its labels are never changed, so at any
//!    time a number belongs to at most one label set. An agent returns a number for `L` only
//!    after the server has shown it holding `L` (its own create succeeded, a GET after a 409
//!    AlreadyExists returned `L`, or the watch delivered it), and it does not return a number the
//!    garbage collector has marked without first removing the mark at the server (below).
//! 2. **One label set, one number, whatever the order of events** (in every race but the GC
//!    race below). Every agent tries `L`'s numbers in the same deterministic order
//!    ([`candidates()`]) and takes the first one that is free or already holds `L`, after looking
//!    `L` up in its cache. Without deletions, numbers only ever get taken, so once `L` holds its
//!    `j`-th candidate, candidates `0..j` stay held by other label sets and every agent walking
//!    the sequence, in whatever order and concurrency, stops at the same `j`. A 409 on create is
//!    answered by a GET: same labels, another agent won the race and the number is ours too;
//!    other labels, the next candidate.
//! 3. **The GC race.** A deletion frees a number in the middle of someone's sequence: if `L`
//!    holds candidate 1 because candidate 0 was held by `M`, and `M` is collected, an agent that
//!    does not yet know `L` (its cache has not synced the other agent's create) would create
//!    candidate 0 for `L`; `L` then has two numbers (invariant 1 still holds: both mean `L`, and
//!    policy selects by labels, so both get the same verdicts). And an agent whose cache is stale
//!    could keep using a number after it was deleted and re-created for another label set. Both
//!    are avoided by the GC protocol: a number is deleted only after it has been marked unused
//!    for a whole grace period (default 15 minutes) and still carries exactly the
//!    resourceVersion it had when the collector found it expired (a delete precondition), while
//!    an agent that finds a marked identity in its cache or at the server removes the mark
//!    first (which changes its resourceVersion, so a concurrent delete fails with 409). The
//!    remaining window needs a watch more than a grace period behind, or a clock skew between
//!    collectors as large as the grace period.
//!
//! # Retries
//!
//! Every request is bounded by [`Retry::request_timeout`]; connection failures, timeouts, 429 and
//! 5xx answers are retried with jittered exponential back-off up to [`Retry::attempts`] times,
//! then fail with [`Error::Unavailable`]. Other refusals (403, 422…) fail at once with
//! [`Error::Api`]. Nothing here panics on an API error.

use std::collections::hash_map::RandomState;
use std::future::Future;
use std::hash::BuildHasher;
use std::sync::Once;
use std::time::Duration;

use kube::api::ApiResource;
use kube::core::Status;

pub mod candidates;
pub mod endpoints;
pub mod gc;
pub mod identities;
mod labels;

pub use candidates::candidates;
pub use endpoints::{EndpointState, EndpointStatus, Endpoints, LocalEndpoint, PodRef, Publish};
pub use gc::{GcOptions, GcPlan, GcReport, IdentityGc};
pub use identities::{ClusterIdentities, Options, Stats};
pub use labels::{labels_from_json, labels_to_json, metadata_labels};

/// The API group of Vireo's custom resources.
pub const GROUP: &str = "vireo.io";
/// Their version.
pub const VERSION: &str = "v1alpha1";
/// The field of a `VireoIdentity` that holds its labels.
pub const SECURITY_LABELS: &str = "security-labels";
/// The annotation the garbage collector puts on an identity it found unused (RFC 3339 time).
pub const UNUSED_SINCE: &str = "vireo.io/unused-since";

/// The `VireoIdentity` resource (cluster-scoped).
pub fn identity_resource() -> ApiResource {
    resource("VireoIdentity", "vireoidentities")
}

/// The `VireoEndpoint` resource (namespaced).
pub fn endpoint_resource() -> ApiResource {
    resource("VireoEndpoint", "vireoendpoints")
}

fn resource(kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: GROUP.into(),
        version: VERSION.into(),
        api_version: format!("{GROUP}/{VERSION}"),
        kind: kind.into(),
        plural: plural.into(),
    }
}

/// Why an allocation, collection or publication failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Every candidate tried is held by another label set.
    #[error(
        "no identity for {labels}: the {tries} numbers tried are all held by other label sets"
    )]
    Exhausted {
        /// The label set, canonical.
        labels: String,
        /// How many candidates were tried.
        tries: u32,
    },
    /// The API server did not answer (or answered 429/5xx) every time.
    #[error("the API server did not answer {op} after {attempts} attempts: {last}")]
    Unavailable {
        /// What was asked.
        op: String,
        /// How many times.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The API server refused a request for good.
    #[error("the API server refused {op}: {source}")]
    Api {
        /// What was asked.
        op: String,
        /// Its answer.
        #[source]
        source: kube::Error,
    },
    /// The cache of identities did not finish its first list in time.
    #[error("the identity cache did not sync with the API server within {0:?}")]
    NotSynced(Duration),
    /// An object kept changing under a read-modify-write loop.
    #[error("{op} kept conflicting with concurrent changes ({attempts} attempts)")]
    Contended {
        /// What was attempted.
        op: String,
        /// How many times.
        attempts: u32,
    },
    /// Something given is not valid.
    #[error("invalid {what}: {why}")]
    Invalid {
        /// What.
        what: String,
        /// Why.
        why: String,
    },
}

/// How requests are bounded and retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts per request, the first included (at least 1).
    pub attempts: u32,
    /// Back-off before the second attempt; doubled each time, up to `max_delay`.
    pub first_delay: Duration,
    /// Longest back-off.
    pub max_delay: Duration,
    /// How long one request may take.
    pub request_timeout: Duration,
}

impl Default for Retry {
    /// 6 attempts, 100 ms doubling up to 2 s (about 3 s in all), 10 s per request.
    fn default() -> Self {
        Retry {
            attempts: 6,
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            request_timeout: Duration::from_secs(10),
        }
    }
}

impl Retry {
    /// The back-off after failed attempt `n` (0-based), with ±25 % jitter.
    fn delay(&self, n: u32) -> Duration {
        let base = self
            .first_delay
            .saturating_mul(1u32 << n.min(20))
            .min(self.max_delay);
        // Jitter from std's randomly keyed hasher: no RNG dependency needed.
        let r = RandomState::new().hash_one(n) % 1000; // 0..1000
        base.mul_f64(0.75 + r as f64 / 2000.0)
    }

    /// Runs `f` until it succeeds, is refused for good, or has failed `attempts` times.
    ///
    /// `Ok(Ok(v))`: success. `Ok(Err(status))`: a definite answer other than 429/5xx (404, 409,
    /// 422…) for the caller to interpret. `Err`: unavailable after every attempt, or a client
    /// error that retrying cannot fix.
    pub(crate) async fn run<T, F, Fut>(
        &self,
        op: &(dyn Fn() -> String + Sync),
        mut f: F,
    ) -> Result<Result<T, Box<Status>>, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, kube::Error>>,
    {
        let attempts = self.attempts.max(1);
        let mut last = String::new();
        for n in 0..attempts {
            if n > 0 {
                tokio::time::sleep(self.delay(n - 1)).await;
            }
            match tokio::time::timeout(self.request_timeout, f()).await {
                Ok(Ok(v)) => return Ok(Ok(v)),
                Ok(Err(kube::Error::Api(s))) if s.code == 429 || s.code >= 500 => {
                    last = format!("{} {}: {}", s.code, s.reason, s.message);
                }
                Ok(Err(kube::Error::Api(s))) => return Ok(Err(s)),
                Ok(Err(e)) if transient(&e) => last = e.to_string(),
                Ok(Err(e)) => {
                    return Err(Error::Api {
                        op: op(),
                        source: e,
                    })
                }
                Err(_) => last = format!("no answer within {:?}", self.request_timeout),
            }
            tracing::debug!(op = %op(), attempt = n + 1, error = %last, "API request failed");
        }
        tracing::warn!(op = %op(), attempts, error = %last, "API server unavailable");
        Err(Error::Unavailable {
            op: op(),
            attempts,
            last,
        })
    }
}

/// Whether a client-side error may go away by itself (connections, streams, HTTP).
fn transient(e: &kube::Error) -> bool {
    matches!(
        e,
        kube::Error::HyperError(_)
            | kube::Error::Service(_)
            | kube::Error::HttpError(_)
            | kube::Error::ReadEvents(_)
            | kube::Error::SerdeError(_)
            | kube::Error::LinesCodecMaxLineLengthExceeded
    )
}

/// Turns a definite refusal into an [`Error::Api`].
pub(crate) fn refused(op: String, s: Box<Status>) -> Error {
    Error::Api {
        op,
        source: kube::Error::Api(s),
    }
}

/// Installs ring as rustls' process-wide CryptoProvider, once. kube is built without a default
/// provider; rustls picks one by itself only while exactly one is compiled in, so this keeps
/// [`kube::Client::try_from`] from panicking should another crate ever enable a second one.
pub fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // An error means some provider is installed already: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A kube client for `config`, with the CryptoProvider installed first, and without kube's
/// own retries of 429/503/504 answers (up to 15, with long back-offs), so that [`Retry`] alone
/// bounds how long a request is tried. Clients built otherwise work too: each attempt is still
/// bounded by [`Retry::request_timeout`].
pub fn client(mut config: kube::Config) -> Result<kube::Client, Error> {
    install_crypto_provider();
    config.default_retry = false;
    kube::Client::try_from(config).map_err(|e| Error::Api {
        op: "building the client".into(),
        source: e,
    })
}
