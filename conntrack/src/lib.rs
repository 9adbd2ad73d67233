//! Connection tracking for Vireo's fast path: a lock-free table of flows with TCP state,
//! lifetimes, garbage collection and NAT records.
//!
//! - [`table`]: the table (fixed capacity, allocated once; lookups lock-free);
//! - [`state`]: the TCP state machine, UDP/ICMP pseudo-states, lifetimes;
//! - [`clock`]: the injectable clock lifetimes are measured with;
//! - [`frag`]: the bounded fragment table (first fragment's ports by datagram);
//! - [`gc`]: the background thread that reaps expired entries a slice at a time.

#![forbid(unsafe_code)]

pub mod clock;
pub mod flush;
pub mod frag;
pub mod gc;
pub mod state;
pub mod table;

pub use clock::{Clock, EpochClock, ManualClock, MonotonicClock};
pub use frag::{FragKey, FragTable};
pub use state::{Lifetimes, State};
pub use table::region::{Adoption, Layout, Region};
pub use table::{Config, Dir, Entry, Full, Handle, Key, Nat, NewEntry, PolicyVerdict, Table};

#[cfg(test)]
mod region_tests;
#[cfg(test)]
mod tests;
