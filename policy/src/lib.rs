//! Identity-based policy for Vireo's fast path.
//!
//! - [`identity`]: security identities (Cilium's reserved ones, and endpoint identities derived
//!   from label sets);
//! - [`ipcache`]: IP or CIDR → identity and tunnel endpoint, with longest-prefix match;
//! - [`rules`]: policies as Vireo holds them, whatever manifest they came from;
//! - [`ports`]: named ports, and an endpoint's names for its ports;
//! - [`fqdn`]: DNS name selectors (`toFQDNs`, `rules: dns`);
//! - [`engine`]: what a set of policies decides for one endpoint, direction and peer, and why;
//! - [`compiled`]: the same, compiled per endpoint identity for the fast path, recompiled
//!   incrementally.

#![forbid(unsafe_code)]

pub mod compiled;
pub mod engine;
pub mod fqdn;
pub mod identity;
pub mod ipcache;
pub mod ports;
pub mod rules;

pub use compiled::{
    Compiler, EndpointPolicy, Known, PolicyTables, PortNameOf, NO_NAMES, NO_PORT_NAMES,
};
pub use engine::{decide, decide_named, dns_query_allowed, Decision, PeerInfo, Verdict};
pub use fqdn::FqdnSelector;
pub use identity::{Identity, IdentityAllocator, Labels, PodOrigin};
pub use ipcache::{IpCache, IpCacheEntry};
pub use ports::{PortName, PortNames};
pub use rules::{
    Action, Direction, Entity, Op, Origin, Peer, Policy, PortRange, Proto, Requirement, Rule,
    Selector,
};
