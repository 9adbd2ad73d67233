//! Service load balancing for Vireo's fast path.
//!
//! - [`maglev`]: the per-service backend table (prime size, seed shared by all nodes,
//!   weights), built off the fast path.
//! - [`service`]: service ports, their frontends and backends, and the [`ServiceTable`] the
//!   pipeline's `service` stage looks them up in.

#![forbid(unsafe_code)]

pub mod maglev;
pub mod service;

pub use maglev::{Maglev, MaglevError, DEFAULT_M, PRIMES};
pub use service::{Backend, Frontend, FrontendKind, Service, ServiceSpec, ServiceTable};
