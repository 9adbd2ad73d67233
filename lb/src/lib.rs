//! Service load balancing for Vireo's fast path.
//!
//! - [`maglev`]: Maglev consistent hashing (NSDI'16), with weights and a seed shared by all
//!   nodes, built off the fast path.
//!
//! Service tables and the pipeline's service stage arrive with the services issue.

pub mod maglev;

pub use maglev::{Maglev, MaglevError, PRIMES};
