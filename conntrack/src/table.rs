//! The connection-tracking table: fixed capacity, allocated once, shared by all workers.
//!
//! Layout: buckets of 8 slots; a key may live in one of two buckets (two-choice hashing). Each
//! bucket has an 8-byte *tag word*, one fingerprint byte per slot (0 = empty), so a lookup reads
//! one word per bucket and touches only slots whose tag matches. A slot is one 64-byte cache
//! line: a version word, the key, and the entry's fields as atomics, updated in place.
//!
//! Concurrency:
//! - Lookups take no lock and never wait: they read a slot under its version (seqlock style)
//!   and skip a slot being written.
//! - Inserts of the same key serialise on a one-byte lock of the key's first bucket, so a key is
//!   never inserted twice; a free slot is claimed by compare-and-swap on the tag word.
//! - The garbage collector and eviction take only expired entries, by compare-and-swap on the
//!   version word, so they never race a live flow's updates.
//! - Nothing allocates after construction.

use std::net::Ipv4Addr;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use serde::Serialize;

use crate::clock::Clock;
use crate::state::{Lifetimes, State};

/// IP protocol numbers.
pub const TCP: u8 = 6;
/// UDP.
pub const UDP: u8 = 17;
/// ICMP.
pub const ICMP: u8 = 1;

const LANES: usize = 8;
/// Buckets an insert at the limit may sweep for expired entries (bounded work: 2048 slots).
const SWEEP_BUCKETS: usize = 256;
const EMPTY: u64 = 0;
const BUSY: u64 = 1;
const USED: u64 = 2;
const STATE_MASK: u64 = 3;
const VERSION_STEP: u64 = 4;

/// The version word `steps` versions after `m`, in slot state `state`.
#[inline]
fn bump(m: u64, steps: u64, state: u64) -> u64 {
    ((m & !STATE_MASK) + steps * VERSION_STEP) | state
}

/// Entry flags.
pub mod flags {
    /// The responder has sent.
    pub const REPLY_SEEN: u8 = 1;
    /// The entry carries a NAT record.
    pub const NAT: u8 = 2;
}

/// On which side a flow is tracked (as Cilium's tuple flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum Dir {
    /// Opened by a local pod.
    Egress = 0,
    /// Opened from elsewhere towards a local pod.
    Ingress = 1,
    /// A service flow, keyed by the tuple the client sent (to the service address).
    Service = 2,
    /// The reverse translation of a service flow, keyed by the backend's reply.
    RevNat = 3,
    /// A client's backend under session affinity (key: client, service address, port).
    Affinity = 4,
    /// The Ethernet address an external client was last seen behind (key: its address).
    Neigh = 5,
}

/// A flow key: the 5-tuple (ICMP echo: the identifier as both ports) plus direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    /// Source address (host byte order).
    pub src: u32,
    /// Destination address.
    pub dst: u32,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// IP protocol.
    pub proto: u8,
    /// Direction.
    pub dir: Dir,
}

impl Key {
    fn words(&self) -> (u64, u64) {
        let w0 = u64::from(self.src) << 32 | u64::from(self.dst);
        let w1 = u64::from(self.sport) << 48
            | u64::from(self.dport) << 32
            | u64::from(self.proto) << 8
            | self.dir as u64;
        (w0, w1)
    }

    fn from_words(w0: u64, w1: u64) -> Key {
        Key {
            src: (w0 >> 32) as u32,
            dst: w0 as u32,
            sport: (w1 >> 48) as u16,
            dport: (w1 >> 32) as u16,
            proto: (w1 >> 8) as u8,
            dir: match w1 as u8 {
                0 => Dir::Egress,
                1 => Dir::Ingress,
                2 => Dir::Service,
                3 => Dir::RevNat,
                4 => Dir::Affinity,
                _ => Dir::Neigh,
            },
        }
    }

    /// The key of the other direction of the same flow.
    pub fn reversed(&self, dir: Dir) -> Key {
        Key {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            dir,
        }
    }

    /// splitmix64's finaliser over both words: every key bit reaches every hash bit, so keys
    /// that differ only in a port (a SYN flood) spread over all buckets.
    fn hash(&self) -> u64 {
        let (a, b) = self.words();
        mix64(a ^ mix64(b))
    }
}

/// splitmix64's finaliser: every input bit reaches every output bit.
#[inline]
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A NAT record: the addresses and ports a tracked packet is rewritten to. What it means
/// depends on the key's direction:
/// - [`Dir::Service`] (keyed by the tuple the client sent): the packet leaves as
///   `src:sport → dst:dport` (source-NAT'd or not; `dst` is the chosen backend);
/// - [`Dir::RevNat`] (keyed by the backend's reply tuple): the reply leaves as
///   `src:sport → dst:dport` (the service address back to the client);
/// - [`Dir::Affinity`]: `dst:dport` is the client's backend;
/// - [`Dir::Neigh`]: `src` and `sport` hold an Ethernet address (first 4 bytes, last 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Nat {
    /// Source address to write (host byte order).
    pub src: u32,
    /// Source port to write.
    pub sport: u16,
    /// Destination address to write.
    pub dst: u32,
    /// Destination port to write.
    pub dport: u16,
}

/// What a new entry starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewEntry {
    /// Initial state.
    pub state: State,
    /// Security identity of the originator.
    pub identity: u32,
    /// NAT record, for service flows.
    pub nat: Option<Nat>,
    /// Length of the first packet.
    pub bytes: u32,
}

/// A copy of an entry, for reporting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    /// Source.
    pub src: Ipv4Addr,
    /// Destination.
    pub dst: Ipv4Addr,
    /// Source port.
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// Protocol number.
    pub proto: u8,
    /// Direction.
    pub dir: Dir,
    /// State.
    pub state: Option<State>,
    /// Seconds left to live.
    pub expires_in: i64,
    /// The responder has answered.
    pub reply_seen: bool,
    /// Originator's identity.
    pub identity: u32,
    /// NAT record.
    pub nat: Option<Nat>,
    /// Packets (both directions).
    pub packets: u64,
    /// Bytes (both directions).
    pub bytes: u64,
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

#[repr(C, align(64))]
#[derive(Default)]
struct Slot {
    meta: AtomicU64,
    k0: AtomicU64,
    k1: AtomicU64,
    expires: AtomicU32,
    /// state | flags << 8
    state: AtomicU32,
    identity: AtomicU32,
    nat_src: AtomicU32,
    nat_dst: AtomicU32,
    /// sport << 16 | dport
    nat_ports: AtomicU32,
    packets: AtomicU64,
    bytes: AtomicU64,
}

/// Bytes of table per entry slot (one cache line).
pub const SLOT_BYTES: usize = std::mem::size_of::<Slot>();

/// The table.
pub struct Table {
    slots: Box<[Slot]>,
    tags: Box<[AtomicU64]>,
    locks: Box<[AtomicBool]>,
    buckets: usize,
    counts: [AtomicUsize; 2],
    /// Where the next eviction sweep starts.
    sweep: AtomicUsize,
    cfg: Config,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table")
            .field("slots", &self.slots.len())
            .field("tcp", &self.counts[0].load(Ordering::Relaxed))
            .field("other", &self.counts[1].load(Ordering::Relaxed))
            .finish()
    }
}

/// A found entry, to read and update.
#[derive(Clone, Copy)]
pub struct Handle<'a> {
    t: &'a Table,
    i: usize,
}

impl std::fmt::Debug for Handle<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handle")
            .field("slot", &self.i)
            .field("state", &self.state())
            .finish()
    }
}

fn class(proto: u8) -> usize {
    usize::from(proto != TCP)
}

impl Table {
    /// A table for `cfg`'s limits: slots for 4/3 of them (load at most 3/4). Buckets are picked
    /// by multiply-shift, so their number need not be a power of two and memory stays at
    /// 4/3 × 64 bytes per entry of capacity.
    pub fn new(cfg: Config, clock: Arc<dyn Clock>) -> Table {
        let want = (cfg.max_tcp + cfg.max_other).max(LANES) * 4 / 3;
        let buckets = want.div_ceil(LANES).max(2);
        Table {
            slots: (0..buckets * LANES).map(|_| Slot::default()).collect(),
            tags: (0..buckets).map(|_| AtomicU64::new(0)).collect(),
            locks: (0..buckets).map(|_| AtomicBool::new(false)).collect(),
            buckets,
            counts: [AtomicUsize::new(0), AtomicUsize::new(0)],
            sweep: AtomicUsize::new(0),
            cfg,
            clock,
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

    /// Bytes the table occupies.
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * SLOT_BYTES + self.tags.len() * 8 + self.locks.len()
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

    /// Reads slot `i`'s key if it is in use and stable: (version word, key).
    #[inline]
    fn read_key(&self, i: usize) -> Option<(u64, Key)> {
        let s = &self.slots[i];
        let m1 = s.meta.load(Ordering::Acquire);
        if m1 & STATE_MASK != USED {
            return None;
        }
        let (w0, w1) = (s.k0.load(Ordering::Relaxed), s.k1.load(Ordering::Relaxed));
        fence(Ordering::Acquire);
        (s.meta.load(Ordering::Relaxed) == m1).then(|| (m1, Key::from_words(w0, w1)))
    }

    /// The slot holding `k`, expired or not.
    #[inline]
    fn find(&self, k: &Key, b1: usize, b2: usize, tag: u8) -> Option<usize> {
        for b in [b1, b2] {
            let t = self.tags[b].load(Ordering::Acquire);
            for lane in 0..LANES {
                if (t >> (lane * 8)) as u8 == tag {
                    let i = b * LANES + lane;
                    if self.read_key(i).is_some_and(|(_, key)| key == *k) {
                        return Some(i);
                    }
                }
            }
        }
        None
    }

    fn expired(&self, i: usize, now: u32) -> bool {
        self.slots[i].expires.load(Ordering::Relaxed) <= now
    }

    /// The live entry for `k`. Lock-free; an expired entry counts as absent.
    #[inline]
    pub fn lookup(&self, k: &Key) -> Option<Handle<'_>> {
        let (b1, b2, tag) = self.place(k);
        let i = self.find(k, b1, b2, tag)?;
        (!self.expired(i, self.now())).then_some(Handle { t: self, i })
    }

    /// Inserts `k` unless it is there already (then the existing entry is returned, so two
    /// workers seeing a flow's first packets at once make one entry). At the limit, an expired
    /// entry in the key's buckets makes room; if there is none, `Full`.
    pub fn insert(&self, k: &Key, e: NewEntry) -> Result<(Handle<'_>, bool), Full> {
        let (b1, b2, tag) = self.place(k);
        let now = self.now();
        let _lock = BucketLock::take(&self.locks[b1]);
        if let Some(i) = self.find(k, b1, b2, tag) {
            if !self.expired(i, now) {
                return Ok((Handle { t: self, i }, false));
            }
            // Same key, expired: start it afresh in place.
            let m = self.slots[i].meta.load(Ordering::Acquire);
            if self.claim_used(i, m) {
                self.write(i, m + VERSION_STEP, k, &e, now);
                return Ok((Handle { t: self, i }, true));
            }
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
        if self.counts[c].fetch_add(1, Ordering::AcqRel) >= self.limit(c) {
            self.counts[c].fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        let (first, second) = if self.used_lanes(b1) <= self.used_lanes(b2) {
            (b1, b2)
        } else {
            (b2, b1)
        };
        for b in [first, second] {
            if let Some(i) = self.claim_free(b, tag) {
                let m = self.slots[i].meta.load(Ordering::Acquire);
                self.write(i, m + VERSION_STEP, k, e, now);
                return Some(Handle { t: self, i });
            }
        }
        self.counts[c].fetch_sub(1, Ordering::AcqRel);
        None
    }

    fn limit(&self, c: usize) -> usize {
        if c == 0 {
            self.cfg.max_tcp
        } else {
            self.cfg.max_other
        }
    }

    fn used_lanes(&self, b: usize) -> u32 {
        let t = self.tags[b].load(Ordering::Relaxed);
        (0..LANES).filter(|l| (t >> (l * 8)) as u8 != 0).count() as u32
    }

    /// Claims an empty lane of bucket `b` for `tag`; the slot is marked busy.
    fn claim_free(&self, b: usize, tag: u8) -> Option<usize> {
        loop {
            let t = self.tags[b].load(Ordering::Acquire);
            let lane = (0..LANES).find(|l| (t >> (l * 8)) as u8 == 0)?;
            let nt = t | u64::from(tag) << (lane * 8);
            if self.tags[b]
                .compare_exchange(t, nt, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
            {
                let i = b * LANES + lane;
                let s = &self.slots[i];
                let m = s.meta.load(Ordering::Acquire);
                s.meta.store(bump(m, 1, BUSY), Ordering::Relaxed);
                fence(Ordering::Release);
                return Some(i);
            }
        }
    }

    /// Takes a used slot (version word `m`) for rewriting: busy if the CAS wins.
    fn claim_used(&self, i: usize, m: u64) -> bool {
        m & STATE_MASK == USED
            && self.slots[i]
                .meta
                .compare_exchange(m, bump(m, 1, BUSY), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// At the limit: an expired entry of `k`'s own buckets makes room; failing that, a bounded
    /// sweep of the table (from a rotating cursor) reaps expired entries elsewhere and the
    /// insert is tried once more. Only then is the new flow refused.
    fn evict_into(
        &self,
        k: &Key,
        e: &NewEntry,
        b1: usize,
        b2: usize,
        tag: u8,
        now: u32,
    ) -> Result<(Handle<'_>, bool), Full> {
        if let Ok(r) = self.evict_local(k, e, b1, b2, tag, now) {
            return Ok(r);
        }
        let at = self.sweep.fetch_add(SWEEP_BUCKETS, Ordering::Relaxed) % self.buckets;
        if self.gc(at, SWEEP_BUCKETS) == 0 {
            return Err(Full);
        }
        match self.insert_free(k, e, b1, b2, tag, now) {
            Some(h) => Ok((h, true)),
            None => self.evict_local(k, e, b1, b2, tag, now),
        }
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
    ) -> Result<(Handle<'_>, bool), Full> {
        for b in [b1, b2] {
            for lane in 0..LANES {
                let i = b * LANES + lane;
                let Some((m, old)) = self.read_key(i) else {
                    continue;
                };
                let (co, cn) = (class(old.proto), class(k.proto));
                // An entry of the other protocol class makes room only if ours is below its limit.
                if co != cn && self.counts[cn].load(Ordering::Acquire) >= self.limit(cn) {
                    continue;
                }
                if !self.expired(i, now) || !self.claim_used(i, m) {
                    continue;
                }
                self.counts[co].fetch_sub(1, Ordering::AcqRel);
                self.counts[cn].fetch_add(1, Ordering::AcqRel);
                self.set_tag(b, lane, tag);
                self.write(i, m + VERSION_STEP, k, e, now);
                return Ok((Handle { t: self, i }, true));
            }
        }
        Err(Full)
    }

    fn set_tag(&self, b: usize, lane: usize, tag: u8) {
        let shift = lane * 8;
        let _ = self.tags[b].fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
            Some(t & !(0xffu64 << shift) | u64::from(tag) << shift)
        });
    }

    /// Fills busy slot `i` and publishes it (version word becomes `m`'s successor, used).
    fn write(&self, i: usize, m: u64, k: &Key, e: &NewEntry, now: u32) {
        let s = &self.slots[i];
        let (w0, w1) = k.words();
        s.k0.store(w0, Ordering::Relaxed);
        s.k1.store(w1, Ordering::Relaxed);
        let life = e.state.lifetime(&self.cfg.lifetimes);
        s.expires.store(now.saturating_add(life), Ordering::Relaxed);
        let fl = if e.nat.is_some() { flags::NAT } else { 0 };
        s.state
            .store(e.state as u32 | u32::from(fl) << 8, Ordering::Relaxed);
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
        s.packets.store(1, Ordering::Relaxed);
        s.bytes.store(u64::from(e.bytes), Ordering::Relaxed);
        s.meta.store(bump(m, 1, USED), Ordering::Release);
    }

    /// Removes `k`'s entry, expired or not. Returns whether there was one.
    pub fn remove(&self, k: &Key) -> bool {
        let (b1, b2, tag) = self.place(k);
        let _lock = BucketLock::take(&self.locks[b1]);
        match self.find(k, b1, b2, tag) {
            Some(i) => self.free(i, None),
            None => false,
        }
    }

    /// Frees slot `i` if it is used (and, with `expired_at`, expired then).
    fn free(&self, i: usize, expired_at: Option<u32>) -> bool {
        let Some((m, key)) = self.read_key(i) else {
            return false;
        };
        if expired_at.is_some_and(|now| !self.expired(i, now)) || !self.claim_used(i, m) {
            return false;
        }
        let s = &self.slots[i];
        s.meta.store(bump(m, 2, EMPTY), Ordering::Release);
        self.set_tag(i / LANES, i % LANES, 0);
        self.counts[class(key.proto)].fetch_sub(1, Ordering::AcqRel);
        true
    }

    /// Number of buckets (the unit the garbage collector walks in).
    pub fn buckets(&self) -> usize {
        self.buckets
    }

    /// Reaps expired entries of buckets `start..start + n` (wrapping). Returns how many.
    pub fn gc(&self, start: usize, n: usize) -> usize {
        let now = self.now();
        let mut reaped = 0;
        for k in 0..n.min(self.buckets()) {
            let b = (start + k) % self.buckets;
            let t = self.tags[b].load(Ordering::Acquire);
            if t == 0 {
                continue;
            }
            for lane in 0..LANES {
                if (t >> (lane * 8)) as u8 != 0 && self.free(b * LANES + lane, Some(now)) {
                    reaped += 1;
                }
            }
        }
        reaped
    }

    /// Copies of the live entries (at most `max`).
    pub fn dump(&self, max: usize) -> Vec<Entry> {
        let now = self.now();
        let mut v = Vec::new();
        for i in 0..self.slots.len() {
            if v.len() >= max {
                break;
            }
            if let Some((_, k)) = self.read_key(i) {
                if !self.expired(i, now) {
                    v.push(Handle { t: self, i }.entry(k, now));
                }
            }
        }
        v
    }
}

impl<'a> Handle<'a> {
    fn slot(&self) -> &'a Slot {
        &self.t.slots[self.i]
    }

    /// The flow's state.
    #[inline]
    pub fn state(&self) -> Option<State> {
        State::from_u8(self.slot().state.load(Ordering::Relaxed) as u8)
    }

    /// The originator's identity.
    #[inline]
    pub fn identity(&self) -> u32 {
        self.slot().identity.load(Ordering::Relaxed)
    }

    /// The NAT record, if any.
    pub fn nat(&self) -> Option<Nat> {
        let s = self.slot();
        if (s.state.load(Ordering::Relaxed) >> 8) as u8 & flags::NAT == 0 {
            return None;
        }
        let ports = s.nat_ports.load(Ordering::Relaxed);
        Some(Nat {
            src: s.nat_src.load(Ordering::Relaxed),
            sport: (ports >> 16) as u16,
            dst: s.nat_dst.load(Ordering::Relaxed),
            dport: ports as u16,
        })
    }

    /// Records a packet: counters, the new state (if it changed), the lifetime it gives.
    #[inline]
    pub fn update(&self, next: State, reply: bool, bytes: u32) {
        let s = self.slot();
        s.packets.fetch_add(1, Ordering::Relaxed);
        s.bytes.fetch_add(u64::from(bytes), Ordering::Relaxed);
        let old = s.state.load(Ordering::Relaxed);
        let fl = (old >> 8) as u8 | if reply { flags::REPLY_SEEN } else { 0 };
        let new = next as u32 | u32::from(fl) << 8;
        if new != old {
            // A concurrent update of the same flow may win; either result is a valid state.
            let _ = s
                .state
                .compare_exchange(old, new, Ordering::Relaxed, Ordering::Relaxed);
        }
        let exp = self
            .t
            .now()
            .saturating_add(next.lifetime(&self.t.cfg.lifetimes));
        if s.expires.load(Ordering::Relaxed) != exp {
            s.expires.store(exp, Ordering::Relaxed);
        }
    }

    /// Keeps the entry for `secs` from now, whatever its state's lifetime (session affinity
    /// and learnt neighbours have lifetimes of their own).
    #[inline]
    pub fn refresh(&self, secs: u32) {
        let exp = self.t.now().saturating_add(secs);
        let s = self.slot();
        if s.expires.load(Ordering::Relaxed) != exp {
            s.expires.store(exp, Ordering::Relaxed);
        }
    }

    fn entry(&self, k: Key, now: u32) -> Entry {
        let s = self.slot();
        let st = s.state.load(Ordering::Relaxed);
        Entry {
            src: Ipv4Addr::from(k.src),
            dst: Ipv4Addr::from(k.dst),
            sport: k.sport,
            dport: k.dport,
            proto: k.proto,
            dir: k.dir,
            state: State::from_u8(st as u8),
            expires_in: i64::from(s.expires.load(Ordering::Relaxed)) - i64::from(now),
            reply_seen: (st >> 8) as u8 & flags::REPLY_SEEN != 0,
            identity: s.identity.load(Ordering::Relaxed),
            nat: self.nat(),
            packets: s.packets.load(Ordering::Relaxed),
            bytes: s.bytes.load(Ordering::Relaxed),
        }
    }
}

/// A held bucket lock (writers only); released on drop.
struct BucketLock<'a>(&'a AtomicBool);

impl<'a> BucketLock<'a> {
    fn take(l: &'a AtomicBool) -> Self {
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
