//! Fragment tracking (Cilium's `enable-ipv4-fragment-tracking`): the ports of a fragmented
//! datagram are in its first fragment only, so the first fragment's (sport, dport) is recorded
//! under (src, dst, proto, IP id) and the later fragments are tracked, load-balanced and
//! policed with them.
//!
//! A fixed-capacity open-addressing table, allocated once (nothing allocates afterwards):
//! - a key may live in one of [`PROBE`] consecutive slots from its hash;
//! - readers take no lock: each slot is a seqlock (an even sequence word is stable, odd is
//!   being written), a torn read is discarded;
//! - a writer claims a slot by CAS on the sequence word it read (so two writers never write
//!   one slot at once), taking in order: the slot already holding its key, an empty or expired
//!   one, else the oldest (soonest to expire) of the window. Entries live `lifetime` seconds
//!   (fragments of one datagram arrive within milliseconds; Linux's reassembly timeout is
//!   30 s).
//!
//! Best effort, as Cilium's LRU map: under pressure an old datagram's record is overwritten,
//! and its later fragments then miss (and are dropped or handled as port-less by the caller).

use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::table::mix64;

/// Slots a key may occupy, from its hash.
pub const PROBE: usize = 4;
/// Default capacity (Cilium's `bpf-fragments-map-max`: 8192).
pub const DEFAULT_CAPACITY: usize = 8192;
/// Default lifetime of a record, in seconds.
pub const DEFAULT_LIFETIME: u32 = 10;

/// A fragmented datagram's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FragKey {
    /// Source address (host byte order).
    pub src: u32,
    /// Destination address.
    pub dst: u32,
    /// IP protocol.
    pub proto: u8,
    /// IP identification.
    pub ip_id: u16,
}

/// Marks a used slot's second key word (so an all-zero key differs from an empty slot).
const USED: u32 = 1 << 24;

impl FragKey {
    fn words(&self) -> (u64, u32) {
        (
            u64::from(self.src) << 32 | u64::from(self.dst),
            USED | u32::from(self.proto) << 16 | u32::from(self.ip_id),
        )
    }
}

#[derive(Default)]
struct Slot {
    /// Even: stable; odd: being written.
    seq: AtomicU32,
    expires: AtomicU32,
    k0: AtomicU64,
    /// USED | proto << 16 | ip_id; 0: empty.
    k1: AtomicU32,
    /// sport << 16 | dport
    ports: AtomicU32,
}

/// A stable read of a slot.
struct Snap {
    seq: u32,
    k0: u64,
    k1: u32,
    ports: u32,
    expires: u32,
}

/// The fragment table.
pub struct FragTable {
    slots: Box<[Slot]>,
    mask: usize,
    lifetime: u32,
    used: AtomicUsize,
}

impl std::fmt::Debug for FragTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FragTable")
            .field("capacity", &self.slots.len())
            .field("lifetime", &self.lifetime)
            .field("len", &self.len())
            .finish()
    }
}

impl Default for FragTable {
    fn default() -> Self {
        FragTable::new(DEFAULT_CAPACITY, DEFAULT_LIFETIME)
    }
}

impl FragTable {
    /// A table of `capacity` slots (rounded up to a power of two, at least [`PROBE`]) whose
    /// records live `lifetime` seconds.
    pub fn new(capacity: usize, lifetime: u32) -> FragTable {
        let n = capacity.max(PROBE).next_power_of_two();
        FragTable {
            slots: (0..n).map(|_| Slot::default()).collect(),
            mask: n - 1,
            lifetime,
            used: AtomicUsize::new(0),
        }
    }

    /// Slots.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Slots holding a record (expired ones included, until overwritten).
    pub fn len(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Whether no record was ever stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records live at `now` (walks the table: for reporting, not the fast path).
    pub fn live(&self, now: u32) -> usize {
        (0..self.slots.len())
            .filter(|&i| self.read(i).is_some_and(|s| s.k1 != 0 && s.expires > now))
            .count()
    }

    fn start(&self, k: &FragKey) -> usize {
        let (a, b) = k.words();
        mix64(a ^ mix64(u64::from(b))) as usize & self.mask
    }

    /// Slot `i`, if stable.
    #[inline]
    fn read(&self, i: usize) -> Option<Snap> {
        let s = &self.slots[i];
        // Acquire: pairs with the writer's Release store of the even sequence.
        let seq = s.seq.load(Ordering::Acquire);
        if seq & 1 != 0 {
            return None;
        }
        let snap = Snap {
            seq,
            k0: s.k0.load(Ordering::Relaxed),
            k1: s.k1.load(Ordering::Relaxed),
            ports: s.ports.load(Ordering::Relaxed),
            expires: s.expires.load(Ordering::Relaxed),
        };
        // Acquire fence, re-load: data from a later writer implies its odd mark is seen.
        fence(Ordering::Acquire);
        (s.seq.load(Ordering::Relaxed) == seq).then_some(snap)
    }

    /// The first fragment's (sport, dport) for `k`, if recorded and not expired at `now`.
    #[inline]
    pub fn lookup(&self, k: &FragKey, now: u32) -> Option<(u16, u16)> {
        let (k0, k1) = k.words();
        let at = self.start(k);
        (0..PROBE).find_map(|p| {
            let s = self.read((at + p) & self.mask)?;
            (s.k0 == k0 && s.k1 == k1 && s.expires > now)
                .then_some(((s.ports >> 16) as u16, s.ports as u16))
        })
    }

    /// Records `ports` for `k` until `now` + lifetime. Returns false if every slot of its
    /// window was being written at that moment (the record is then dropped: best effort).
    pub fn insert(&self, k: &FragKey, ports: (u16, u16), now: u32) -> bool {
        let (k0, k1) = k.words();
        let at = self.start(k);
        for _ in 0..2 {
            // The slot to take: the key's own, else an empty or expired one, else the oldest.
            let mut pick: Option<(usize, Snap, u8)> = None;
            for p in 0..PROBE {
                let i = (at + p) & self.mask;
                let Some(s) = self.read(i) else { continue };
                let rank = if s.k0 == k0 && s.k1 == k1 {
                    0
                } else if s.k1 == 0 || s.expires <= now {
                    1
                } else {
                    2
                };
                let better = match &pick {
                    None => true,
                    Some((_, b, r)) => rank < *r || rank == 2 && *r == 2 && s.expires < b.expires,
                };
                if better {
                    pick = Some((i, s, rank));
                }
                if rank == 0 {
                    break;
                }
            }
            let Some((i, s, _)) = pick else { return false };
            if self.write(i, &s, k0, k1, ports, now.saturating_add(self.lifetime)) {
                return true;
            }
        }
        false
    }

    /// Writes slot `i` if it is still as read in `s`.
    fn write(&self, i: usize, s: &Snap, k0: u64, k1: u32, ports: (u16, u16), exp: u32) -> bool {
        let slot = &self.slots[i];
        // Acquire: the previous writer's stores are ordered before ours.
        if slot
            .seq
            .compare_exchange(
                s.seq,
                s.seq.wrapping_add(1),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return false;
        }
        // Release fence: the odd mark is ordered before the data stores.
        fence(Ordering::Release);
        slot.k0.store(k0, Ordering::Relaxed);
        slot.k1.store(k1, Ordering::Relaxed);
        slot.ports.store(
            u32::from(ports.0) << 16 | u32::from(ports.1),
            Ordering::Relaxed,
        );
        slot.expires.store(exp, Ordering::Relaxed);
        // Release: publishes the data with the even sequence.
        slot.seq.store(s.seq.wrapping_add(2), Ordering::Release);
        if s.k1 == 0 {
            self.used.fetch_add(1, Ordering::Relaxed);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn key(id: u16) -> FragKey {
        FragKey {
            src: 0x0af4_0001,
            dst: 0x0af4_0102,
            proto: 17,
            ip_id: id,
        }
    }

    #[test]
    fn records_expire_after_their_lifetime() {
        let t = FragTable::new(64, 10);
        assert_eq!(t.capacity(), 64);
        assert!(t.is_empty());
        assert!(t.insert(&key(1), (5353, 53), 100));
        assert_eq!(t.lookup(&key(1), 100), Some((5353, 53)));
        assert_eq!(t.lookup(&key(1), 109), Some((5353, 53)));
        assert_eq!(t.lookup(&key(1), 110), None, "expired after 10 s");
        assert_eq!(t.lookup(&key(2), 100), None);
        // Another protocol or address is another datagram.
        assert_eq!(t.lookup(&FragKey { proto: 6, ..key(1) }, 100), None);
        assert_eq!(t.lookup(&FragKey { src: 1, ..key(1) }, 100), None);
        // Re-recording a key overwrites its slot, not another one.
        assert!(t.insert(&key(1), (1, 2), 101));
        assert_eq!(t.lookup(&key(1), 101), Some((1, 2)));
        assert_eq!(t.len(), 1);
        assert_eq!(t.live(101), 1);
        assert_eq!(t.live(111), 0);
    }

    #[test]
    fn capacity_is_bounded_and_the_oldest_goes_first() {
        let t = FragTable::new(5, 10); // rounded up to 8
        assert_eq!(t.capacity(), 8);
        for id in 0..1000u16 {
            assert!(t.insert(&key(id), (id, id), 100 + u32::from(id) / 100));
        }
        assert!(t.len() <= 8);
        // The newest is always found; a record older than everything in its window is gone.
        assert_eq!(t.lookup(&key(999), 109), Some((999, 999)));
        assert_eq!(t.lookup(&key(0), 100), None);
        // Expired slots are reused before live ones.
        assert!(t.live(200) == 0);
        assert!(t.insert(&key(5000), (1, 1), 200));
        assert_eq!(t.lookup(&key(5000), 200), Some((1, 1)));
    }

    #[test]
    fn concurrent_readers_never_see_a_torn_record() {
        // Each record's ports are a function of its key: a torn read would break it.
        let t = Arc::new(FragTable::new(16, 5));
        let ports = |id: u16| (id, id.wrapping_mul(31).wrapping_add(7));
        let writers: Vec<_> = (0..2u16)
            .map(|w| {
                let t = t.clone();
                std::thread::spawn(move || {
                    for n in 0..50_000u32 {
                        let id = (n as u16).wrapping_mul(2).wrapping_add(w) % 256;
                        t.insert(&key(id), ports(id), n / 1000);
                        if let Some(p) = t.lookup(&key(id ^ 1), n / 1000) {
                            assert_eq!(p, ports(id ^ 1));
                        }
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        assert!(t.len() <= 16);
    }
}
