//! Vireo's benchmarks.
//!
//! Criterion benchmarks of the fast path, without I/O (`benches/`). Run them with
//! `cargo bench -p vireo-benches` (about 15 s).
//!
//! - `benches/pipeline.rs`: `pipeline::run` over one full batch of 64 frames from
//!   `vireo_dataplane::fixtures` (`pipeline/forward_64B_batch64`, and a mixed batch of ARP
//!   requests, unknown destinations, expired TTLs and forwards). Criterion reports frames per
//!   second; the time per frame is the batch time divided by 64.
//! - `benches/vxlan.rs`: the overlay stages (encapsulation and decapsulation) the same way.
//!
//! The packet-rate harness, with I/O (this library, run as `vireo bench`):
//!
//! - [`rate`]: the agent's pod-to-pod packet rate against the AF_XDP I/O ceiling, on network
//!   namespaces of its own.
//! - [`xconnect`]: that ceiling, a minimal cross-connect forwarder, and the AF_XDP TX generator
//!   that drives both runs.

#![forbid(unsafe_code)]

pub mod case;
pub mod rate;
pub mod tcp;
pub mod xconnect;
