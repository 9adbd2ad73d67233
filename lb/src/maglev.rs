//! Maglev consistent hashing (Eisenbud et al., NSDI'16), as Cilium uses it for service
//! backends.
//!
//! Every backend has a permutation of the table's `M` slots, from two hashes of its name (the
//! backend's `ip:port`) under a seed; the table is filled by letting the backends take turns at
//! their next preferred free slot. The result:
//! - every backend holds close to M/N slots (weights scale the turns);
//! - removing a backend moves its slots, and only a few others;
//! - every node given the same backends and seed builds the same table, so every node picks the
//!   same backend for a flow.
//!
//! Tables are built by the control side and swapped in whole; the fast path only indexes one.
//!
//! Open (services issue): removing one backend moves its slots plus, in the worst case over
//! seeds, 1–2% of the others' (`cargo run -p vireo-lb --example disruption`); the issue asks for
//! at most 1%.

use serde::Serialize;

/// The table sizes allowed (primes, so that every skip visits every slot).
pub const PRIMES: [u32; 10] = [
    251, 509, 1021, 2039, 4093, 8191, 16381, 32749, 65521, 131071,
];

/// The default table size.
pub const DEFAULT_M: u32 = 16381;

/// Why a table cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MaglevError {
    /// M is not one of [`PRIMES`].
    #[error("maglev table size {0} is not one of {PRIMES:?}")]
    Size(u32),
    /// More backends than slots.
    #[error("{backends} backends do not fit a maglev table of {m} slots")]
    TooManyBackends {
        /// Backends given.
        backends: usize,
        /// Table size.
        m: u32,
    },
    /// A weight of zero (leave the backend out instead).
    #[error("backend {0:?} has weight 0")]
    ZeroWeight(String),
}

/// A built table: slot → index into the backend list it was built from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Maglev {
    m: u32,
    slots: Vec<u16>,
}

/// Seeded 64-bit hash of a name (FNV-1a over the seed and the bytes, then a finaliser).
fn hash(seed: u64, salt: u64, name: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^ (h >> 33)
}

impl Maglev {
    /// Builds the table for `backends` (name, weight), in their order, with table size `m` and
    /// `seed`. Names must be unique (they are the backends' identities).
    pub fn build(backends: &[(&str, u32)], m: u32, seed: u64) -> Result<Maglev, MaglevError> {
        if !PRIMES.contains(&m) {
            return Err(MaglevError::Size(m));
        }
        if backends.len() > m as usize || backends.len() > usize::from(u16::MAX) {
            return Err(MaglevError::TooManyBackends {
                backends: backends.len(),
                m,
            });
        }
        if let Some((n, _)) = backends.iter().find(|(_, w)| *w == 0) {
            return Err(MaglevError::ZeroWeight((*n).to_string()));
        }
        const EMPTY: u16 = u16::MAX;
        let mut slots = vec![EMPTY; m as usize];
        if backends.is_empty() {
            return Ok(Maglev { m, slots });
        }
        let m64 = u64::from(m);
        let perm: Vec<(u64, u64)> = backends
            .iter()
            .map(|(n, _)| {
                (
                    hash(seed, 0, n) % m64,
                    hash(seed, 0x5bd1_e995, n) % (m64 - 1) + 1,
                )
            })
            .collect();
        let wmax = u64::from(backends.iter().map(|(_, w)| *w).max().unwrap_or(1));
        let mut next = vec![0u64; backends.len()];
        let mut credit = vec![0u64; backends.len()];
        let mut filled = 0u32;
        'fill: loop {
            for (i, (_, w)) in backends.iter().enumerate() {
                // Weighted turns: a backend takes a slot each time its credit reaches the top
                // weight, so slots follow the weights.
                credit[i] += u64::from(*w);
                if credit[i] < wmax {
                    continue;
                }
                credit[i] -= wmax;
                let (offset, skip) = perm[i];
                loop {
                    let c = ((offset + next[i] * skip) % m64) as usize;
                    next[i] += 1;
                    if slots[c] == EMPTY {
                        slots[c] = i as u16;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break 'fill;
                }
            }
        }
        Ok(Maglev { m, slots })
    }

    /// The table size.
    pub fn size(&self) -> u32 {
        self.m
    }

    /// The backend (index into the list it was built from) for a flow hash; `None` without
    /// backends.
    #[inline]
    pub fn lookup(&self, flow_hash: u64) -> Option<usize> {
        let s = self.slots[(flow_hash % u64::from(self.m)) as usize];
        (s != u16::MAX).then_some(usize::from(s))
    }

    /// Slots held by each backend (index → count).
    pub fn slot_counts(&self, backends: usize) -> Vec<u32> {
        let mut c = vec![0u32; backends];
        for s in &self.slots {
            if let Some(x) = c.get_mut(usize::from(*s)) {
                *x += 1;
            }
        }
        c
    }

    /// The raw slots (backend indexes).
    pub fn slots(&self) -> &[u16] {
        &self.slots
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!("10.244.{}.{}:8080", i / 250, i % 250 + 1))
            .collect()
    }

    fn equal(n: &[String]) -> Vec<(&str, u32)> {
        n.iter().map(|s| (s.as_str(), 1)).collect()
    }

    #[test]
    fn bad_input_is_refused() {
        assert_eq!(
            Maglev::build(&[], 1000, 0).unwrap_err(),
            MaglevError::Size(1000)
        );
        assert!(matches!(
            Maglev::build(&[("a", 0)], 251, 0),
            Err(MaglevError::ZeroWeight(_))
        ));
        let n = names(300);
        assert!(matches!(
            Maglev::build(&equal(&n), 251, 0),
            Err(MaglevError::TooManyBackends { .. })
        ));
        let empty = Maglev::build(&[], 251, 0).unwrap();
        assert_eq!(empty.lookup(12345), None);
    }

    #[test]
    fn weights_scale_the_share() {
        let b = [("a:1", 1), ("b:1", 3)];
        let t = Maglev::build(&b, 16381, 7).unwrap();
        let c = t.slot_counts(2);
        let ratio = f64::from(c[1]) / f64::from(c[0]);
        assert!((2.9..3.1).contains(&ratio), "{c:?}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Equal weights, M ≥ 100·N: the busiest backend holds at most 1.05× the idlest's slots.
        #[test]
        fn balance(n in 1usize..=160, seed: u64) {
            let m = *PRIMES.iter().find(|p| **p as usize >= 100 * n).unwrap();
            let nm = names(n);
            let t = Maglev::build(&equal(&nm), m, seed).unwrap();
            let c = t.slot_counts(n);
            let (max, min) = (*c.iter().max().unwrap(), *c.iter().min().unwrap());
            prop_assert!(f64::from(max) <= 1.05 * f64::from(min), "n={} m={} max={} min={}", n, m, max, min);
        }

        /// Same input, same table, on any node.
        #[test]
        fn deterministic(n in 1usize..50, seed: u64, m_i in 0usize..10) {
            let nm = names(n);
            let m = PRIMES[m_i].max(PRIMES.iter().copied().find(|p| *p as usize >= n).unwrap());
            prop_assert_eq!(Maglev::build(&equal(&nm), m, seed).unwrap(), Maglev::build(&equal(&nm), m, seed).unwrap());
        }
    }
}
