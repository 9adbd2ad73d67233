//! Vireo's control side: it reads sources (the agent's configuration file now; a manifest
//! directory and Kubernetes in later issues) and turns them into the table snapshots the fast
//! path reads.

pub mod cluster;
pub mod config;
pub mod neigh;
pub mod netpol;
pub mod node;
pub mod services;
pub mod source;
pub mod trace;
