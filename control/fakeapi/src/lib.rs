//! An in-process fake Kubernetes API server that speaks the real HTTP protocol (discovery,
//! list, watch, get, create, update, patch, delete, `/status`, Tables), so that kube-rs and
//! `kubectl` can be tested against it without a cluster.
//!
//! ```no_run
//! use vireo_fakeapi::{FakeApiServer, Options};
//! let server = FakeApiServer::start(Options::default().cilium_crds()).unwrap();
//! server.write_kubeconfig("/tmp/kubeconfig").unwrap();
//! server.store().create(serde_json::json!({
//!     "apiVersion": "v1", "kind": "Pod",
//!     "metadata": {"name": "p", "namespace": "default"},
//! })).unwrap();
//! server.compact(); // watches from older resourceVersions now get 410 Gone
//! server.stop(); // unreachable, state kept
//! server.restart().unwrap(); // same port
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod discovery;
mod error;
mod handlers;
pub mod loader;
pub mod patch;
pub mod resources;
pub mod selectors;
mod server;
mod store;
mod table;
mod watch;

pub use error::{ApiError, Error};
pub use resources::{cilium_crds, crd, ResourceType};
pub use server::{FakeApiServer, Options};
pub use store::{EventType, Store};
