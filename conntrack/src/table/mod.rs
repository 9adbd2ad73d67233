//! The connection-tracking table: fixed capacity, allocated once, shared by all workers.
//!
//! Layout: buckets of 8 slots; a key may live in one of two buckets (two-choice hashing). Each
//! bucket has an 8-byte *tag word*, one fingerprint byte per slot (0 = empty), so a lookup reads
//! one word per bucket and touches only slots whose tag matches. A slot is one 64-byte cache
//! line (see `Slot`'s fields): the *live word* (expiry, generation, flags, state), the key,
//! identity, NAT record, policy verdict cache and counters, all atomics updated in place.
//!
//! Concurrency:
//! - The live word is the slot's seqlock version *and* its state: its generation changes each
//!   time the slot is claimed or freed, and every change of a used slot is one compare-and-swap
//!   that checks the generation. A [`Handle`] carries the generation it was found with, so an
//!   operation through a handle whose slot has since been freed or reused is a no-op.
//! - Lookups take no lock and never wait: they read a slot's key under its live word (seqlock
//!   style) and skip a slot being written.
//! - Inserts of the same key serialise on a one-byte lock of the key's first bucket, so a key is
//!   never inserted twice; a free slot is claimed by compare-and-swap on the tag word.
//! - The garbage collector, eviction, `remove` and `flush` free a slot by compare-and-swap on
//!   the live word it read: an entry refreshed since (a packet) is never reaped as expired.
//! - Nothing allocates after construction.
//!
//! Memory ordering (the seqlock pattern, correct on weakly ordered CPUs): a writer marks the
//! live word busy, then `fence(Release)`, then stores the data (Relaxed), then publishes the
//! live word with a Release store. A reader loads the live word (Acquire), reads the data
//! (Relaxed), `fence(Acquire)`, and loads the live word again: if the data came from a later
//! writer, the fences make that writer's busy mark visible to the second load, and the read is
//! discarded. Later changes of a published live word are read-modify-writes, so they continue
//! its release sequence: a reader that sees an updated live word still sees the published data.

use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::clock::Clock;
use crate::state::Lifetimes;

mod handle;
mod key;
pub mod region;

pub use handle::Handle;
pub use key::{mix64, Dir, Entry, Key, Nat, NewEntry, PolicyVerdict};

/// IP protocol numbers.
pub const TCP: u8 = 6;
/// UDP.
pub const UDP: u8 = 17;
/// ICMP.
pub const ICMP: u8 = 1;

const LANES: usize = 8;
/// Buckets an insert at the limit may sweep for expired entries (bounded work: 2048 slots), at
/// most once per clock second per table.
const SWEEP_BUCKETS: usize = 256;

// The live word: expires (bits 32..64) | generation (16..32) | flags (8..16) | state (0..8).
// The flags byte holds the public [`flags`] and the slot's occupancy in its top two bits.
const OCC_USED: u8 = 0x80;
const OCC_BUSY: u8 = 0x40;
const OCC: u8 = OCC_USED | OCC_BUSY;
/// The bits of the live word a seqlock reader compares: generation and occupancy.
const VERSION_MASK: u64 = 0xffff_0000 | (OCC as u64) << 8;
/// Counter words: generation (bits 48..64) | count (0..48, wrapping).
const COUNT_MASK: u64 = (1 << 48) - 1;
const POLICY_VALID: u64 = 1 << 33;
const POLICY_ALLOWED: u64 = 1 << 32;

#[inline]
fn pack(expires: u32, generation: u16, fl: u8, state: u8) -> u64 {
    u64::from(expires) << 32 | u64::from(generation) << 16 | u64::from(fl) << 8 | u64::from(state)
}
#[inline]
fn w_expires(w: u64) -> u32 {
    (w >> 32) as u32
}
#[inline]
fn w_gen(w: u64) -> u16 {
    (w >> 16) as u16
}
#[inline]
fn w_flags(w: u64) -> u8 {
    (w >> 8) as u8
}
#[inline]
fn w_used(w: u64) -> bool {
    w_flags(w) & OCC == OCC_USED
}
/// Whether live word `w` is a used slot of generation `g`.
#[inline]
fn w_owned(w: u64, g: u16) -> bool {
    w_used(w) && w_gen(w) == g
}
#[inline]
fn w_expired(w: u64, now: u32) -> bool {
    w_expires(w) <= now
}
#[inline]
fn tagged(generation: u16, count: u64) -> u64 {
    u64::from(generation) << 48 | count & COUNT_MASK
}

/// Entry flags.
pub mod flags {
    /// The responder has sent.
    pub const REPLY_SEEN: u8 = 1;
    /// The entry carries a NAT record.
    pub const NAT: u8 = 2;
}

/// The table is full and holds nothing expired to make room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("conntrack table full (ct_full)")]
pub struct Full;

/// Limits and lifetimes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Most TCP entries (Cilium's default: 1M).
    pub max_tcp: usize,
    /// Most entries of other protocols (Cilium's default: 256k).
    pub max_other: usize,
    /// Lifetimes.
    pub lifetimes: Lifetimes,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            max_tcp: 1 << 20,
            max_other: 1 << 18,
            lifetimes: Lifetimes::default(),
        }
    }
}

/// One entry: one 64-byte cache line.
///
/// | offset | field | |
/// |---|---|---|
/// | 0 | `live` | expires u32 \| generation u16 \| flags u8 \| state u8: seqlock version and state |
/// | 8 | `k0`, `k1` | the key (written only while the slot is busy) |
/// | 24 | `identity` | originator's security identity |
/// | 28 | `nat_src`, `nat_dst`, `nat_ports` | the NAT record |
/// | 40 | `policy` | generation u16 \| valid, allowed bits \| revision u32 |
/// | 48 | `packets` | generation u16 \| count u48 |
/// | 56 | `bytes` | generation u16 \| count u48 |
///
/// The policy and counter words carry the generation too, so that a stale handle's
/// read-modify-write on them fails instead of landing on the slot's next flow.
///
/// Any bit pattern is a valid `Slot` (it is only atomics), which is what lets the I/O layer
/// view a shared-memory file as slots ([`region::Region`]); a slot that a process left half
/// written is repaired by [`Table::in_region`].
#[repr(C, align(64))]
#[derive(Default)]
pub struct Slot {
    live: AtomicU64,
    k0: AtomicU64,
    k1: AtomicU64,
    identity: AtomicU32,
    nat_src: AtomicU32,
    nat_dst: AtomicU32,
    /// sport << 16 | dport
    nat_ports: AtomicU32,
    policy: AtomicU64,
    packets: AtomicU64,
    bytes: AtomicU64,
}

/// Bytes of table per entry slot (one cache line).
pub const SLOT_BYTES: usize = std::mem::size_of::<Slot>();
const _: () = assert!(SLOT_BYTES == 64 && std::mem::align_of::<Slot>() == 64);

/// A value alone on its 128 bytes (two cache lines: the adjacent-line prefetcher pairs them).
#[repr(align(128))]
struct Padded<T>(T);

impl<T> std::ops::Deref for Padded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

/// Where the slots and tag words live: the process's heap, or a region the caller maps (a
/// shared-memory file the next process adopts).
enum Mem {
    Owned {
        slots: Box<[Slot]>,
        tags: Box<[AtomicU64]>,
    },
    Region(region::Region),
}

/// The table.
pub struct Table {
    mem: Mem,
    locks: Box<[AtomicBool]>,
    buckets: usize,
    /// Entries by class. Every insert and removal writes them, so they sit on a cache line
    /// (pair) of their own: next to the read-mostly fields above, every lookup on another core
    /// would miss after each insert (false sharing between workers).
    counts: Padded<[AtomicUsize; 2]>,
    /// Where the next eviction sweep starts.
    sweep: AtomicUsize,
    /// The first clock second at which an insert at the limit may sweep again.
    next_sweep: AtomicU32,
    /// Sweeps run by inserts at the limit.
    sweeps: AtomicU64,
    /// Entries inserted (new flows, and expired ones started afresh), on a line of its own
    /// as `counts`.
    inserts: Padded<AtomicU64>,
    cfg: Config,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("slots", &self.slots().len())
            .field("tcp", &self.counts[0].load(Ordering::Relaxed))
            .field("other", &self.counts[1].load(Ordering::Relaxed))
            .finish()
    }
}

/// Buckets for `cfg`'s limits: slots for 4/3 of them (load at most 3/4).
fn buckets_for(cfg: &Config) -> usize {
    let want = (cfg.max_tcp + cfg.max_other).max(LANES) * 4 / 3;
    want.div_ceil(LANES).max(2)
}

fn class(proto: u8) -> usize {
    usize::from(proto != TCP)
}

impl Table {
    /// A table for `cfg`'s limits: slots for 4/3 of them (load at most 3/4). Buckets are picked
    /// by multiply-shift, so their number need not be a power of two and memory stays at
    /// 4/3 × 64 bytes per entry of capacity.
    pub fn new(cfg: Config, clock: Arc<dyn Clock>) -> Table {
        let buckets = buckets_for(&cfg);
        let mem = Mem::Owned {
            slots: (0..buckets * LANES).map(|_| Slot::default()).collect(),
            tags: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
        };
        Table::with_mem(cfg, clock, mem, buckets)
    }

    fn with_mem(cfg: Config, clock: Arc<dyn Clock>, mem: Mem, buckets: usize) -> Table {
        Table {
            mem,
            locks: (0..buckets).map(|_| AtomicBool::new(false)).collect(),
            buckets,
            counts: Padded([AtomicUsize::new(0), AtomicUsize::new(0)]),
            sweep: AtomicUsize::new(0),
            next_sweep: AtomicU32::new(0),
            sweeps: AtomicU64::new(0),
            inserts: Padded(AtomicU64::new(0)),
            cfg,
            clock,
        }
    }

    /// The slots (heap or region). One predictable branch; `benches/benches/conntrack.rs`
    /// measures it against the heap-only table of before (conntrack/README.md).
    #[inline(always)]
    fn slots(&self) -> &[Slot] {
        match &self.mem {
            Mem::Owned { slots, .. } => slots,
            Mem::Region(r) => r.slots,
        }
    }

    #[inline(always)]
    fn tags(&self) -> &[AtomicU64] {
        match &self.mem {
            Mem::Owned { tags, .. } => tags,
            Mem::Region(r) => r.tags,
        }
    }

    /// Its configuration.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Seconds now, by the table's clock.
    #[inline]
    pub fn now(&self) -> u32 {
        self.clock.now()
    }

    /// Entries: (TCP, other).
    pub fn counts(&self) -> (usize, usize) {
        (
            self.counts[0].load(Ordering::Relaxed),
            self.counts[1].load(Ordering::Relaxed),
        )
    }

    /// Sweeps for expired entries run by inserts at the limit (at most one per clock second).
    pub fn sweeps(&self) -> u64 {
        self.sweeps.load(Ordering::Relaxed)
    }

    /// Entries inserted since the table was made.
    pub fn inserts(&self) -> u64 {
        self.inserts.load(Ordering::Relaxed)
    }

    /// Bytes the table occupies.
    pub fn memory_bytes(&self) -> usize {
        self.slots().len() * SLOT_BYTES + self.tags().len() * 8 + self.locks.len()
    }

    #[inline]
    fn place(&self, k: &Key) -> (usize, usize, u8) {
        let h = k.hash();
        let range = |x: u64| ((u128::from(x) * self.buckets as u128) >> 64) as usize;
        let b1 = range(h);
        let mut b2 = range(h.rotate_left(32));
        if b2 == b1 {
            b2 = (b1 + 1) % self.buckets;
        }
        let tag = (h as u8).max(1);
        (b1, b2, tag)
    }

    #[inline]
    fn handle(&self, i: usize, w: u64, now: u32) -> Handle<'_> {
        Handle {
            t: self,
            i,
            generation: w_gen(w),
            now,
        }
    }

    /// Reads slot `i`'s key if it is in use and stable: (live word, key).
    #[inline]
    fn read_key(&self, i: usize) -> Option<(u64, Key)> {
        let s = &self.slots()[i];
        // Acquire: pairs with the writer's publishing Release store (or the RMWs continuing
        // its release sequence), so the key stores are visible.
        let w = s.live.load(Ordering::Acquire);
        if !w_used(w) {
            return None;
        }
        let (w0, w1) = (s.k0.load(Ordering::Relaxed), s.k1.load(Ordering::Relaxed));
        // Acquire fence: if a key word came from a later writer, that writer's busy mark
        // (before its Release fence) is visible to the re-load below.
        fence(Ordering::Acquire);
        let again = s.live.load(Ordering::Relaxed);
        (again & VERSION_MASK == w & VERSION_MASK).then(|| (w, Key::from_words(w0, w1)))
    }

    /// The slot holding `k`, expired or not, and its live word.
    #[inline]
    fn find(&self, k: &Key, b1: usize, b2: usize, tag: u8) -> Option<(usize, u64)> {
        for b in [b1, b2] {
            // Relaxed would do (the tag only filters; the key is validated under the live
            // word), Acquire costs nothing on x86 and makes a just-claimed lane's tag and slot
            // be seen together.
            let t = self.tags()[b].load(Ordering::Acquire);
            for lane in 0..LANES {
                if (t >> (lane * 8)) as u8 == tag {
                    let i = b * LANES + lane;
                    if let Some((w, key)) = self.read_key(i) {
                        if key == *k {
                            return Some((i, w));
                        }
                    }
                }
            }
        }
        None
    }

    /// The live entry for `k`, by the table's clock. Lock-free; an expired entry counts as
    /// absent.
    #[inline]
    pub fn lookup(&self, k: &Key) -> Option<Handle<'_>> {
        self.lookup_at(k, self.now())
    }

    /// The live entry for `k` at time `now` (read once per batch by the caller); the handle's
    /// updates measure lifetimes from `now`.
    #[inline]
    pub fn lookup_at(&self, k: &Key, now: u32) -> Option<Handle<'_>> {
        let (b1, b2, tag) = self.place(k);
        let (i, w) = self.find(k, b1, b2, tag)?;
        (!w_expired(w, now)).then(|| self.handle(i, w, now))
    }

    /// Inserts `k` unless it is there already (then the existing entry is returned, so two
    /// workers seeing a flow's first packets at once make one entry). At the limit, an expired
    /// entry in the key's buckets makes room; if there is none, `Full`.
    pub fn insert(&self, k: &Key, e: NewEntry) -> Result<(Handle<'_>, bool), Full> {
        self.insert_at(k, e, self.now())
    }

    /// [`Table::insert`] at time `now`.
    pub fn insert_at(&self, k: &Key, e: NewEntry, now: u32) -> Result<(Handle<'_>, bool), Full> {
        let (b1, b2, tag) = self.place(k);
        let _lock = BucketLock::take(&self.locks[b1]);
        // Under the lock no other insert of `k` runs; the entry may still be refreshed by a
        // packet or freed by the collector meanwhile, so the in-place restart is a CAS on the
        // live word read, retried on a change.
        while let Some((i, w)) = self.find(k, b1, b2, tag) {
            if !w_expired(w, now) {
                return Ok((self.handle(i, w, now), false));
            }
            // Same key, expired: start it afresh in place.
            if let Some(g) = self.claim_used(i, w) {
                self.write(i, g, k, &e, now);
                return Ok((self.handle(i, pack(0, g, 0, 0), now), true));
            }
            std::hint::spin_loop();
        }
        if let Some(h) = self.insert_free(k, &e, b1, b2, tag, now) {
            return Ok((h, true));
        }
        self.evict_into(k, &e, b1, b2, tag, now)
    }

    /// Takes a free slot of `k`'s buckets (the less full first) if its protocol class is below
    /// its limit.
    fn insert_free(
        &self,
        k: &Key,
        e: &NewEntry,
        b1: usize,
        b2: usize,
        tag: u8,
        now: u32,
    ) -> Option<Handle<'_>> {
        let c = class(k.proto);
        if !self.reserve(c) {
            return None;
        }
        let (first, second) = if self.used_lanes(b1) <= self.used_lanes(b2) {
            (b1, b2)
        } else {
            (b2, b1)
        };
        for b in [first, second] {
            if let Some((i, g)) = self.claim_free(b, tag) {
                self.write(i, g, k, e, now);
                return Some(self.handle(i, pack(0, g, 0, 0), now));
            }
        }
        self.counts[c].fetch_sub(1, Ordering::Relaxed);
        None
    }

    /// Counts one more entry of class `c` if it is below its limit. Relaxed: the count is a
    /// limit, it orders nothing.
    fn reserve(&self, c: usize) -> bool {
        if self.counts[c].fetch_add(1, Ordering::Relaxed) >= self.limit(c) {
            self.counts[c].fetch_sub(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    fn limit(&self, c: usize) -> usize {
        if c == 0 {
            self.cfg.max_tcp
        } else {
            self.cfg.max_other
        }
    }

    fn used_lanes(&self, b: usize) -> u32 {
        let t = self.tags()[b].load(Ordering::Relaxed);
        (0..LANES).filter(|l| (t >> (l * 8)) as u8 != 0).count() as u32
    }

    /// Claims an empty lane of bucket `b` for `tag`; the slot is marked busy. Returns the slot
    /// and its new generation.
    fn claim_free(&self, b: usize, tag: u8) -> Option<(usize, u16)> {
        loop {
            let t = self.tags()[b].load(Ordering::Relaxed);
            let lane = (0..LANES).find(|l| (t >> (l * 8)) as u8 == 0)?;
            let nt = t | u64::from(tag) << (lane * 8);
            // Acquire: the lane's previous freeing (its live-word CAS, before the tag was
            // cleared with Release) happens-before our writes to the slot.
            if self.tags()[b]
                .compare_exchange(t, nt, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                let i = b * LANES + lane;
                let s = &self.slots()[i];
                // The lane is ours: its slot is empty and nobody else writes an empty slot
                // (updates, frees and evictions need a used one), so a plain store marks it.
                let w = s.live.load(Ordering::Relaxed);
                debug_assert!(!w_used(w));
                let g = w_gen(w).wrapping_add(1);
                s.live.store(pack(0, g, OCC_BUSY, 0), Ordering::Relaxed);
                // Release fence: the busy mark is ordered before the data stores that follow
                // (a reader that sees any of them sees the mark on its re-load).
                fence(Ordering::Release);
                return Some((i, g));
            }
        }
    }

    /// Takes a used slot (live word `w`, as read) for rewriting: busy, with the next
    /// generation, if the CAS wins; it fails if anything changed since `w` was read (a packet
    /// refreshed the entry, another writer took it). Returns the new generation.
    fn claim_used(&self, i: usize, w: u64) -> Option<u16> {
        if !w_used(w) {
            return None;
        }
        let g = w_gen(w).wrapping_add(1);
        // Acquire on success: the previous generation's stores are ordered before ours.
        self.slots()[i]
            .live
            .compare_exchange(
                w,
                pack(0, g, OCC_BUSY, 0),
                Ordering::Acquire,
                Ordering::Relaxed,
            )
            .ok()?;
        // Release fence: a CAS's Release would order only what precedes it; the data stores
        // that follow must not become visible before the busy mark (the weakly-ordered-CPU
        // bug of a bare CAS then Relaxed stores).
        fence(Ordering::Release);
        Some(g)
    }

    /// At the limit: an expired entry of `k`'s own buckets makes room; failing that, a bounded
    /// sweep of the table (from a rotating cursor, at most once per clock second per table)
    /// reaps expired entries elsewhere and the insert is tried once more. Only then is the new
    /// flow refused. A SYN flood at a full table thus costs one bounded sweep a second, not one
    /// per dropped packet.
    fn evict_into(
        &self,
        k: &Key,
        e: &NewEntry,
        b1: usize,
        b2: usize,
        tag: u8,
        now: u32,
    ) -> Result<(Handle<'_>, bool), Full> {
        if let Some(h) = self.evict_local(k, e, b1, b2, tag, now) {
            return Ok((h, true));
        }
        if !self.take_sweep(now) {
            return Err(Full);
        }
        let at = self.sweep.fetch_add(SWEEP_BUCKETS, Ordering::Relaxed) % self.buckets;
        if self.gc_at(at, SWEEP_BUCKETS, now) == 0 {
            return Err(Full);
        }
        self.insert_free(k, e, b1, b2, tag, now)
            .or_else(|| self.evict_local(k, e, b1, b2, tag, now))
            .map(|h| (h, true))
            .ok_or(Full)
    }

    /// Whether this insert may sweep now: the first to move `next_sweep` past `now` wins.
    fn take_sweep(&self, now: u32) -> bool {
        let next = self.next_sweep.load(Ordering::Relaxed);
        let won = now >= next
            && self
                .next_sweep
                .compare_exchange(
                    next,
                    now.saturating_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok();
        if won {
            self.sweeps.fetch_add(1, Ordering::Relaxed);
        }
        won
    }

    /// Replaces an expired entry of `k`'s buckets with `k`.
    fn evict_local(
        &self,
        k: &Key,
        e: &NewEntry,
        b1: usize,
        b2: usize,
        tag: u8,
        now: u32,
    ) -> Option<Handle<'_>> {
        for b in [b1, b2] {
            for lane in 0..LANES {
                let i = b * LANES + lane;
                let Some((w, old)) = self.read_key(i) else {
                    continue;
                };
                if !w_expired(w, now) {
                    continue;
                }
                let (co, cn) = (class(old.proto), class(k.proto));
                // An entry of the other protocol class makes room only if ours is below its
                // limit (reserved before the claim, so racing evictions cannot overshoot it).
                if co != cn && !self.reserve(cn) {
                    continue;
                }
                let Some(g) = self.claim_used(i, w) else {
                    if co != cn {
                        self.counts[cn].fetch_sub(1, Ordering::Relaxed);
                    }
                    continue;
                };
                if co != cn {
                    self.counts[co].fetch_sub(1, Ordering::Relaxed);
                }
                self.set_tag(b, lane, tag);
                self.write(i, g, k, e, now);
                return Some(self.handle(i, pack(0, g, 0, 0), now));
            }
        }
        None
    }

    fn set_tag(&self, b: usize, lane: usize, tag: u8) {
        let shift = lane * 8;
        // Release: a lane cleared here is claimed by a CAS (Acquire) that then sees our
        // freeing of the slot.
        let _ = self.tags()[b].fetch_update(Ordering::Release, Ordering::Relaxed, |t| {
            Some(t & !(0xffu64 << shift) | u64::from(tag) << shift)
        });
    }

    /// Fills busy slot `i` (generation `g`) and publishes it.
    fn write(&self, i: usize, g: u16, k: &Key, e: &NewEntry, now: u32) {
        self.inserts.fetch_add(1, Ordering::Relaxed);
        let s = &self.slots()[i];
        let (w0, w1) = k.words();
        // Relaxed data stores: ordered after the busy mark by the claim's Release fence, and
        // before the publication by its Release store.
        s.k0.store(w0, Ordering::Relaxed);
        s.k1.store(w1, Ordering::Relaxed);
        s.identity.store(e.identity, Ordering::Relaxed);
        let n = e.nat.unwrap_or(Nat {
            src: 0,
            sport: 0,
            dst: 0,
            dport: 0,
        });
        s.nat_src.store(n.src, Ordering::Relaxed);
        s.nat_dst.store(n.dst, Ordering::Relaxed);
        s.nat_ports.store(
            u32::from(n.sport) << 16 | u32::from(n.dport),
            Ordering::Relaxed,
        );
        // Generation-tagged: a stale handle's RMW on these fails from here on.
        s.policy.store(tagged(g, 0), Ordering::Relaxed);
        s.packets.store(tagged(g, 1), Ordering::Relaxed);
        s.bytes
            .store(tagged(g, u64::from(e.bytes)), Ordering::Relaxed);
        let life = e.state.lifetime(&self.cfg.lifetimes);
        let fl = OCC_USED | if e.nat.is_some() { flags::NAT } else { 0 };
        s.live.store(
            pack(now.saturating_add(life), g, fl, e.state as u8),
            Ordering::Release,
        );
    }

    /// Removes `k`'s entry, expired or not. Returns whether there was one.
    pub fn remove(&self, k: &Key) -> bool {
        let (b1, b2, tag) = self.place(k);
        let _lock = BucketLock::take(&self.locks[b1]);
        while let Some((i, w)) = self.find(k, b1, b2, tag) {
            if self.free(i, w, k) {
                return true;
            }
            std::hint::spin_loop();
        }
        false
    }

    /// Frees slot `i` holding `key` if its live word is still `w` (any change, such as a
    /// packet's refresh, makes the CAS fail). The generation moves on, so handles to the
    /// entry go stale.
    fn free(&self, i: usize, w: u64, key: &Key) -> bool {
        if !w_used(w) {
            return false;
        }
        // Relaxed: freeing publishes no data; the tag's Release below orders it before the
        // lane's next claim.
        if self.slots()[i]
            .live
            .compare_exchange(
                w,
                pack(0, w_gen(w).wrapping_add(1), 0, 0),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_err()
        {
            return false;
        }
        self.set_tag(i / LANES, i % LANES, 0);
        self.counts[class(key.proto)].fetch_sub(1, Ordering::Relaxed);
        true
    }

    /// Number of buckets (the unit the garbage collector walks in).
    pub fn buckets(&self) -> usize {
        self.buckets
    }

    /// Reaps expired entries of buckets `start..start + n` (wrapping). Returns how many.
    pub fn gc(&self, start: usize, n: usize) -> usize {
        self.gc_at(start, n, self.now())
    }

    /// [`Table::gc`] at time `now`.
    pub fn gc_at(&self, start: usize, n: usize, now: u32) -> usize {
        let mut reaped = 0;
        for k in 0..n.min(self.buckets()) {
            let b = (start + k) % self.buckets;
            let t = self.tags()[b].load(Ordering::Relaxed);
            if t == 0 {
                continue;
            }
            for lane in 0..LANES {
                if (t >> (lane * 8)) as u8 == 0 {
                    continue;
                }
                let i = b * LANES + lane;
                if let Some((w, key)) = self.read_key(i) {
                    // The CAS is on the word whose expiry was checked: an entry refreshed
                    // since is not reaped.
                    if w_expired(w, now) && self.free(i, w, &key) {
                        reaped += 1;
                    }
                }
            }
        }
        reaped
    }

    /// Removes every entry (expired or not) for which `pred(key, nat)` holds; returns how many.
    /// For an endpoint or a service that goes away: a new pod given an old pod's address
    /// inherits none of its flows. Lock-free (each entry is freed by CAS on the live word it
    /// was matched with; an entry rewritten meanwhile for another flow is left alone).
    pub fn flush(&self, pred: impl Fn(&Key, Option<Nat>) -> bool) -> usize {
        let mut n = 0;
        for i in 0..self.slots().len() {
            let Some((w, key)) = self.read_key(i) else {
                continue;
            };
            let h = self.handle(i, w, 0);
            let nat = if w_flags(w) & flags::NAT != 0 {
                match h.read_nat() {
                    Some(nat) => Some(nat),
                    None => continue, // rewritten since: another flow
                }
            } else {
                None
            };
            if !pred(&key, nat) {
                continue;
            }
            // Retry while only the entry's live state changes (packets); stop once the slot
            // holds another generation.
            let mut w = w;
            loop {
                if self.free(i, w, &key) {
                    n += 1;
                    break;
                }
                w = self.slots()[i].live.load(Ordering::Relaxed);
                if !w_owned(w, h.generation) {
                    break;
                }
            }
        }
        n
    }

    /// Copies of the live entries (at most `max`).
    pub fn dump(&self, max: usize) -> Vec<Entry> {
        let now = self.now();
        let mut v = Vec::new();
        for i in 0..self.slots().len() {
            if v.len() >= max {
                break;
            }
            if let Some((w, k)) = self.read_key(i) {
                if !w_expired(w, now) {
                    if let Some(e) = self.handle(i, w, now).entry(k, now) {
                        v.push(e);
                    }
                }
            }
        }
        v
    }
}

/// A held bucket lock (writers only); released on drop.
struct BucketLock<'a>(&'a AtomicBool);

impl<'a> BucketLock<'a> {
    fn take(l: &'a AtomicBool) -> Self {
        // Acquire/Release: what one insert wrote under the lock is seen by the next.
        while l
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        BucketLock(l)
    }
}

impl Drop for BucketLock<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}
