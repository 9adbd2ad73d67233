//! Service load balancing for Vireo's fast path: service tables and Maglev backend selection.
//!
//! The tables arrive with the services issue; until then the pipeline has no service stage
//! (`vireo_dataplane::pipeline::STAGES`).
