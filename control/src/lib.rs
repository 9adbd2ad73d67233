//! Vireo's control side: it reads the agent's configuration file ([`config`]) and a manifest
//! directory of Kubernetes objects ([`source`]: nodes, namespaces, pods, Services,
//! EndpointSlices and network policies), and builds from them the table snapshots the fast
//! path reads: the cluster view and ipcache ([`cluster`]), services ([`services`]), network
//! policies ([`netpol`]) and next-hop neighbours ([`neigh`]). [`node`] is the one interface
//! every source feeds: it builds one node's tables from the objects a [`node::Source`]
//! delivers; [`kube`] is the Kubernetes source (kube-rs watchers on a thread of their own).
//! [`trace`] answers `vireo policy trace` and `vireo policy get`.

#![forbid(unsafe_code)]

pub mod allocator;
pub mod cluster;
pub mod config;
pub mod crd;
pub mod kube;
pub mod netlink;
pub use netlink::neigh;
pub mod netpol;
pub mod node;
pub mod nodeconfig;
#[cfg(test)]
mod reuse_tests;
pub mod services;
pub mod source;
pub mod trace;
