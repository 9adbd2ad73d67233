//! Identity-based policy for Vireo's fast path: security identities, rules and compiled verdict
//! tables.
//!
//! The tables arrive with the overlay and policy issues; until then the pipeline has no policy
//! stage (`vireo_dataplane::pipeline::STAGES`).
