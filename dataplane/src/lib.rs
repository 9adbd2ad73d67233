//! Vireo's fast path: the per-packet pipeline, the tables it reads, and the AF_XDP I/O and
//! pinned workers that feed it.
//!
//! - [`pipeline`]: the stages, in order, over batches of frames (no I/O; benchmarked alone).
//! - [`tables`]: immutable snapshots published by the control side, read without locks.
//! - [`io`]: UMEM, AF_XDP sockets (on `xdpilone`), system checks. The only `unsafe` code.
//! - [`worker`]: pinned threads that own sockets and move batches between them.
//! - [`handoff`]: frames moved between workers (lock-free rings, preallocated buffers).
//! - [`events`]: drop events for `vireo monitor`.
//! - [`flows`]: flow records for `vireo observe` (lossy per-worker rings).
//! - [`rings`]: the lossy per-worker queues events and flow records go through.
//! - `fixtures` (feature `fixtures`, and in this crate's tests): frames and tables for tests and
//!   benchmarks; not part of the production API.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod counters;
pub mod events;
#[cfg(any(test, feature = "fixtures"))]
pub mod fixtures;
pub mod flows;
pub mod fqdn;
pub mod handoff;
pub mod io;
pub mod pipeline;
pub mod rings;
pub mod tables;
pub mod wire;
pub mod worker;
