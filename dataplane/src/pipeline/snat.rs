//! Source ports for source NAT to the node's address, shared by the `service` stage (outside
//! clients of NodePort and external frontends) and the `masquerade` stage (pods' flows to the
//! world). Both record the reverse translation as a `revnat` entry keyed by the reply (peer,
//! node, peer port, our port), so a port is taken for a peer only while no live entry holds
//! it: two flows never share one, and a port is free again once its entry expired.

use vireo_conntrack::{Full, Key, NewEntry};

use super::conntrack::Ct;
use crate::counters::DropReason;

/// Ports tried before a new flow is dropped as `snat_no_port` (Cilium's
/// `SNAT_COLLISION_RETRIES`).
pub(super) const SNAT_TRIES: u32 = 32;

/// The `i`-th port tried for a flow of hash `hash` in `lo..=hi`: from the hash first, then
/// from the hash mixed with `i` (random probing: flows whose first ports collide do not follow
/// each other through the range, so a range half full costs a few tries, not a run of them).
#[inline]
pub(super) fn candidate((lo, hi): (u16, u16), hash: u32, i: u32) -> u16 {
    let span = u32::from(hi - lo) + 1;
    let h = if i == 0 {
        hash
    } else {
        vireo_conntrack::table::mix64(u64::from(hash) << 32 | u64::from(i)) as u32
    };
    lo + (h % span) as u16
}

/// Takes a port of `range` for a new flow: inserts `entry` under `key(port)` for the first
/// port of [`SNAT_TRIES`] candidates that no live entry holds. `snat_no_port` when every one
/// is taken, `ct_full` when the table is full.
pub(super) fn allocate(
    ct: &Ct<'_>,
    range: (u16, u16),
    hash: u32,
    key: impl Fn(u16) -> Key,
    entry: NewEntry,
) -> Result<u16, DropReason> {
    for i in 0..SNAT_TRIES {
        let port = candidate(range, hash, i);
        match ct.insert(&key(port), entry) {
            Ok((_, true)) => return Ok(port),
            Ok((_, false)) => continue, // that port is some other flow's
            Err(Full) => return Err(DropReason::CtFull),
        }
    }
    Err(DropReason::SnatNoPort)
}
