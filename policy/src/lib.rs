//! Identity-based policy for Vireo's fast path.
//!
//! - [`identity`]: security identities (Cilium's reserved ones, and endpoint identities derived
//!   from label sets);
//! - [`ipcache`]: IP or CIDR → identity and tunnel endpoint, with longest-prefix match.
//!
//! Rules and compiled verdict tables arrive with the policy issue.

pub mod identity;
pub mod ipcache;

pub use identity::{Identity, IdentityAllocator, Labels};
pub use ipcache::{IpCache, IpCacheEntry};
