//! The previous fill, kept as the reference the new one is compared against: the stable
//! matching of slots to backends under hashed (slot, backend) scores, slot-proposing deferred
//! acceptance, O(M·N) score evaluations. Same quotas, same name hashes; input validation is
//! the caller's (tests pass valid lists only).

use super::{fmix, name_hash, quotas, Maglev};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

/// The score of a (slot, backend) pair; ties (rare) are broken by the backend's name hash.
fn score(slot_hash: u64, backend_hash: u64) -> (u64, u64) {
    (fmix(slot_hash ^ backend_hash), backend_hash)
}

/// The slots a backend holds, weakest on top: (score, slot).
type Held = BinaryHeap<Reverse<((u64, u64), u32)>>;

/// The table the previous `Maglev::build` made for a valid, non-empty list.
pub(super) fn build(backends: &[(&str, u32)], m: u32, seed: u64) -> Maglev {
    let mut slots = vec![u16::MAX; m as usize];
    let hashes: Vec<u64> = backends.iter().map(|(n, _)| name_hash(seed, n)).collect();
    let weights: Vec<u64> = backends.iter().map(|(_, w)| u64::from(*w)).collect();
    let quota = quotas(&weights, &hashes, u64::from(m));
    let slot_hash = |s: usize| fmix((s as u64) ^ fmix(seed.rotate_left(17) ^ 0x2545_f491));
    // `below[s]` is the score of the backend slot s proposed to last; it next proposes to the
    // best backend scoring below that.
    let mut below = vec![(u64::MAX, u64::MAX); m as usize];
    let mut held: Vec<Held> = quota
        .iter()
        .map(|q| BinaryHeap::with_capacity(*q as usize + 1))
        .collect();
    let mut free: Vec<u32> = (0..m).rev().collect();
    while let Some(s) = free.pop() {
        let sh = slot_hash(s as usize);
        let limit = below[s as usize];
        let mut best: Option<((u64, u64), usize)> = None;
        for (b, bh) in hashes.iter().enumerate() {
            let sc = score(sh, *bh);
            if sc < limit && best.is_none_or(|(x, _)| sc > x) {
                best = Some((sc, b));
            }
        }
        let Some((sc, b)) = best else { continue };
        below[s as usize] = sc;
        held[b].push(Reverse((sc, s)));
        if held[b].len() as u64 > quota[b] {
            if let Some(Reverse((_, out))) = held[b].pop() {
                free.push(out);
            }
        }
    }
    for (b, h) in held.iter().enumerate() {
        for Reverse((_, s)) in h.iter() {
            slots[*s as usize] = b as u16;
        }
    }
    Maglev { m, slots }
}
