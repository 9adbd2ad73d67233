//! Connection tracking for Vireo's fast path: a lock-free table of flows with TCP state,
//! lifetimes, garbage collection and NAT records.
//!
//! The table arrives with the connection-tracking issue; until then the pipeline's conntrack
//! stage is not in the stage list (`vireo_dataplane::pipeline::STAGES`).
