//! The deterministic sequence of numbers a label set tries.
//!
//! The first candidate is the node-local allocator's first choice
//! ([`vireo_policy::IdentityAllocator::allocate`]): `FIRST_ENDPOINT + h % span` with `h` the
//! label set's [`Labels::stable_hash`] (FNV-1a of its canonical text) and `span = LIMIT -
//! FIRST_ENDPOINT`; the following ones probe linearly, wrapping around, exactly as the node-local
//! allocator does. So without collisions both allocators give the same numbers, and every agent
//! computes the same sequence for the same labels on any machine.

use std::ops::Range;

use vireo_policy::{Identity, Labels};

/// The numbers `labels` tries, in order: every endpoint identity
/// (`Identity::FIRST_ENDPOINT..Identity::LIMIT`) exactly once.
pub fn candidates(labels: &Labels) -> impl Iterator<Item = Identity> {
    sequence(
        labels.stable_hash(),
        Identity::FIRST_ENDPOINT..Identity::LIMIT,
    )
    .map(Identity)
}

/// The probe sequence of `hash` over `range`: starts at `range.start + hash % len` and walks
/// up, wrapping around, through every number of `range` exactly once. Empty if `range` is.
pub fn sequence(hash: u64, range: Range<u32>) -> impl Iterator<Item = u32> {
    let len = u64::from(range.end.saturating_sub(range.start));
    let first = if len == 0 { 0 } else { hash % len };
    (0..len).map(move |i| range.start + ((first + i) % len) as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, HashSet};
    use vireo_policy::IdentityAllocator;

    fn pod(app: &str) -> Labels {
        let l: BTreeMap<String, String> = [("app".to_string(), app.to_string())].into();
        Labels::for_pod(
            vireo_policy::PodOrigin::in_namespace("ns"),
            &l,
            &BTreeMap::new(),
        )
    }

    proptest! {
        #[test]
        fn same_inputs_same_sequence_covering_the_range_once(
            hash in any::<u64>(), start in 0u32..1000, len in 0u32..300,
        ) {
            let r = start..start + len;
            let a: Vec<u32> = sequence(hash, r.clone()).collect();
            let b: Vec<u32> = sequence(hash, r.clone()).collect();
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.len(), len as usize);
            let distinct: HashSet<u32> = a.iter().copied().collect();
            prop_assert_eq!(distinct.len(), len as usize, "no repeats");
            prop_assert!(a.iter().all(|n| r.contains(n)));
            if len > 0 {
                prop_assert_eq!(a[0], start + (hash % u64::from(len)) as u32);
                // Linear probing: each next number is the previous one plus one, wrapping.
                for w in a.windows(2) {
                    prop_assert!(w[1] == w[0] + 1 || (w[0] == r.end - 1 && w[1] == r.start));
                }
            }
        }
    }

    #[test]
    fn matches_the_node_local_allocator() {
        // Same first choice as the node-local allocator, for many label sets.
        let mut local = IdentityAllocator::default();
        for i in 0..2000 {
            let l = pod(&format!("a{i}"));
            let first = candidates(&l).next().unwrap();
            if local.iter().all(|(id, _)| id != first) {
                assert_eq!(local.allocate(&l), first);
            } else {
                local.allocate(&l);
            }
        }
        // And the same probing: a set whose first choice is taken gets its second candidate.
        let a = pod("x");
        let first = candidates(&a).next().unwrap();
        let mut local = IdentityAllocator::from_mapping([(first, pod("someone-else"))]);
        assert_eq!(local.allocate(&a), candidates(&a).nth(1).unwrap());
    }

    #[test]
    fn the_full_sequence_starts_at_the_hash_and_wraps() {
        let l = pod("web");
        let span = u64::from(Identity::LIMIT - Identity::FIRST_ENDPOINT);
        let first = Identity::FIRST_ENDPOINT + (l.stable_hash() % span) as u32;
        let mut c = candidates(&l);
        assert_eq!(c.next(), Some(Identity(first)));
        let second = if first + 1 == Identity::LIMIT {
            Identity::FIRST_ENDPOINT
        } else {
            first + 1
        };
        assert_eq!(c.next(), Some(Identity(second)));
        // The last candidate is the one just below the first, wrapping.
        let last = if first == Identity::FIRST_ENDPOINT {
            Identity::LIMIT - 1
        } else {
            first - 1
        };
        assert_eq!(candidates(&l).last(), Some(Identity(last)));
    }
}
