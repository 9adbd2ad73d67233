//! DNS-aware policy in the fast path: what endpoints learn from the DNS answers they receive
//! ([`cache`]), and reading DNS messages ([`parse`]). The pipeline's `dns_query` and
//! `dns_learn` stages use them.

pub mod cache;
pub mod parse;

pub use cache::{DnsCounts, FqdnCache, Settings};
pub use parse::{Answer, DnsError};
#[cfg(any(test, feature = "fixtures"))]
pub mod dns_fixtures;
