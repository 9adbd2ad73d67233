//! The TCP and request/response cases of `vireo bench` (`vireo-tcp`, `kernel-tcp`, `vireo-rr`,
//! `kernel-rr`).
//!
//! Placeholder of the packet-rate branch: the TCP helper's module replaces this file at merge.
//! Until then it measures nothing and returns no rows, so the report has no TCP/RR ratios.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// Runs the TCP and request/response cases (none in this placeholder).
pub fn run_cases(_quick: bool, _stop: &Arc<AtomicBool>) -> anyhow::Result<Vec<crate::case::Case>> {
    // Replaced at merge by the TCP helper's module.
    Ok(Vec::new())
}
