//! Criterion benchmarks of Vireo's fast path, without I/O. Run them with
//! `cargo bench -p vireo-benches` (about 15 s).
//!
//! - `benches/pipeline.rs`: `pipeline::run` over one full batch of 64 frames from
//!   `vireo_dataplane::fixtures` (`pipeline/forward_64B_batch64`, and a mixed batch of ARP
//!   requests, unknown destinations, expired TTLs and forwards). Criterion reports frames per
//!   second; the time per frame is the batch time divided by 64.
//! - `benches/vxlan.rs`: the overlay stages (encapsulation and decapsulation) the same way.
//!
//! The I/O ceiling (AF_XDP on veth, with the kernel's copy path) is measured by `vireo bench`.
