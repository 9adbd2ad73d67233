//! The flows the conntrack benchmarks use (conntrack.rs, conntrack_region.rs).

use vireo_conntrack::{Dir, Key};

/// Flows in the table before a measurement.
pub const PREFILL: u32 = 1 << 20;
/// Operations per measured iteration.
pub const OPS: u32 = 65_536;

/// Flow `i`: TCP to port 443, its addresses and source port spread by `i`.
pub fn key(i: u32) -> Key {
    Key {
        src: 0x0a00_0000 | (i >> 8),
        dst: 0x0af4_0000 | (i & 0xff),
        sport: 1024 + (i % 50_000) as u16,
        dport: 443,
        proto: 6,
        dir: Dir::Egress,
    }
}
