//! A table whose slots and tag words live in a region the caller provides: a shared-memory
//! file (`<state_dir>/conntrack`, mapped by the dataplane's I/O layer) that the next agent
//! process adopts, so a restart or an upgrade keeps every flow, its NAT record, and the
//! affinity and masquerade entries that live in the same table.
//!
//! The region starts with a header page; then the tag words (one per bucket), then the slots:
//!
//! | word | field |
//! |---|---|
//! | 0 | magic (`VIREOCT\0`), written last when a table is made |
//! | 1 | layout version ([`LAYOUT_VERSION`]) |
//! | 2 | slots |
//! | 3 | bytes per slot ([`SLOT_BYTES`]) |
//! | 4 | buckets |
//! | 5 | clock epoch: `CLOCK_MONOTONIC` seconds at which the table's clock reads 1 |
//!
//! [`Table::in_region`] adopts what it finds when the header matches this build (magic,
//! version, slot size and count, a complete file, an epoch not in the future); otherwise it
//! starts an empty table in the region and says why ([`Adoption::reason`]). An adopted table
//! is checked slot by slot: a slot a process left half written (busy) is freed, tag words are
//! rebuilt from the keys, the entry counts are recounted, and cached policy verdicts lose the
//! revision they were taken at (the previous process's numbering: [`forget_revision`]).
//!
//! The layout version must change with anything that changes what a slot's words mean or
//! where a key lives: the slot's fields, the live word's bits, the key's hash, the bucket
//! count formula.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::Serialize;

use super::{
    buckets_for, class, w_gen, w_used, Config, Key, Mem, Slot, Table, LANES, OCC_BUSY, SLOT_BYTES,
};
use crate::clock::{monotonic_secs, Clock, EpochClock};

/// The header's magic word.
pub const MAGIC: u64 = u64::from_le_bytes(*b"VIREOCT\0");
/// The layout this build reads and writes.
pub const LAYOUT_VERSION: u64 = 1;
/// Bytes of the header (one page; the tag words start after it).
pub const HEADER_BYTES: usize = 4096;
const HEADER_WORDS: usize = HEADER_BYTES / 8;

const H_MAGIC: usize = 0;
const H_VERSION: usize = 1;
const H_SLOTS: usize = 2;
const H_SLOT_BYTES: usize = 3;
const H_BUCKETS: usize = 4;
const H_EPOCH: usize = 5;

/// Where the parts of a region are, for a configuration's limits (byte offsets from the
/// region's start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Layout {
    /// Buckets (tag words).
    pub buckets: usize,
    /// Slots.
    pub slots: usize,
    /// Offset of the tag words.
    pub tags_offset: usize,
    /// Offset of the slots (a multiple of 64).
    pub slots_offset: usize,
    /// Bytes of the whole region.
    pub bytes: usize,
}

impl Layout {
    /// The layout for `cfg`'s limits.
    pub fn for_config(cfg: &Config) -> Layout {
        let buckets = buckets_for(cfg);
        let slots = buckets * LANES;
        let tags_offset = HEADER_BYTES;
        let slots_offset = (tags_offset + buckets * 8).next_multiple_of(SLOT_BYTES);
        Layout {
            buckets,
            slots,
            tags_offset,
            slots_offset,
            bytes: slots_offset + slots * SLOT_BYTES,
        }
    }
}

/// A region's parts, as the caller mapped them. They live as long as the process (a mapping
/// is never unmapped while a table may use it).
pub struct Region {
    header: &'static [AtomicU64],
    pub(crate) tags: &'static [AtomicU64],
    pub(crate) slots: &'static [Slot],
}

impl std::fmt::Debug for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Region")
            .field("tags", &self.tags.len())
            .field("slots", &self.slots.len())
            .finish()
    }
}

/// A region's parts do not fit its layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("conntrack region: {what} has {got} elements, the layout needs {want}")]
pub struct RegionError {
    /// Which part.
    pub what: &'static str,
    /// Its length.
    pub got: usize,
    /// The layout's.
    pub want: usize,
}

impl Region {
    /// The parts of a region laid out as `layout`: [`HEADER_BYTES`] / 8 header words, one tag
    /// word per bucket, the slots.
    pub fn new(
        layout: &Layout,
        header: &'static [AtomicU64],
        tags: &'static [AtomicU64],
        slots: &'static [Slot],
    ) -> Result<Region, RegionError> {
        for (what, got, want) in [
            ("header", header.len(), HEADER_WORDS),
            ("tags", tags.len(), layout.buckets),
            ("slots", slots.len(), layout.slots),
        ] {
            if got != want {
                return Err(RegionError { what, got, want });
            }
        }
        Ok(Region {
            header,
            tags,
            slots,
        })
    }

    /// A region on the heap that is never freed: for tests and benchmarks (a second table
    /// made on it adopts the first's entries as a restarted process would).
    pub fn leaked(layout: &Layout) -> Region {
        let words = |n: usize| -> &'static [AtomicU64] {
            Box::leak((0..n).map(|_| AtomicU64::new(0)).collect::<Box<[_]>>())
        };
        let slots: &'static [Slot] = Box::leak(
            (0..layout.slots)
                .map(|_| Slot::default())
                .collect::<Box<[_]>>(),
        );
        Region {
            header: words(HEADER_WORDS),
            tags: words(layout.buckets),
            slots,
        }
    }

    /// The same memory again (what a restarted process maps).
    pub fn reopen(&self) -> Region {
        Region {
            header: self.header,
            tags: self.tags,
            slots: self.slots,
        }
    }

    fn word(&self, i: usize) -> u64 {
        self.header[i].load(Ordering::Acquire)
    }

    /// Test hook: overwrites a header word (a file of another version, a corrupt magic).
    #[doc(hidden)]
    pub fn poke_header(&self, word: usize, value: u64) {
        self.header[word].store(value, Ordering::Release);
    }
}

/// What [`Table::in_region`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Adoption {
    /// The previous process's entries were taken over.
    pub adopted: bool,
    /// Entries taken over (TCP, other), expired ones not yet reaped included.
    pub tcp: usize,
    /// Other protocols.
    pub other: usize,
    /// Half-written slots (a process stopped in the middle of a write) freed.
    pub repaired: usize,
    /// Why the table started empty (None when adopted).
    pub reason: Option<String>,
    /// The clock epoch (`CLOCK_MONOTONIC` seconds).
    pub epoch: u64,
}

impl Table {
    /// A table in `region` on the system's monotonic clock ([`EpochClock`]), adopting the
    /// entries a previous process left there if the header matches this build. `found_bytes`
    /// is how long the file was before the caller sized it (0: a new file).
    pub fn in_region_monotonic(
        cfg: Config,
        region: Region,
        found_bytes: usize,
    ) -> (Table, Adoption) {
        Table::in_region(cfg, region, found_bytes, monotonic_secs(), |epoch| {
            Arc::new(EpochClock::with_epoch(epoch)) as Arc<dyn Clock>
        })
    }

    /// [`Table::in_region_monotonic`] with the monotonic time `mono_now` and a clock made
    /// from the epoch (adopted, or `mono_now` for a new table), for tests.
    pub fn in_region(
        cfg: Config,
        region: Region,
        found_bytes: usize,
        mono_now: u64,
        clock: impl FnOnce(u64) -> Arc<dyn Clock>,
    ) -> (Table, Adoption) {
        let layout = Layout::for_config(&cfg);
        let refused = refusal(&region, &layout, found_bytes, mono_now);
        let epoch = match &refused {
            None => region.word(H_EPOCH),
            Some(_) => {
                initialise(&region, &layout, found_bytes > 0, mono_now);
                mono_now
            }
        };
        let t = Table::with_mem(cfg, clock(epoch), Mem::Region(region), layout.buckets);
        let mut a = Adoption {
            adopted: refused.is_none(),
            tcp: 0,
            other: 0,
            repaired: 0,
            reason: refused,
            epoch,
        };
        if a.adopted {
            (a.tcp, a.other, a.repaired) = t.repair();
            t.counts[0].store(a.tcp, Ordering::Relaxed);
            t.counts[1].store(a.other, Ordering::Relaxed);
        }
        (t, a)
    }

    /// After adoption: frees half-written slots, rebuilds the tag words from the keys, and
    /// counts the entries by class: (TCP, other, repaired).
    fn repair(&self) -> (usize, usize, usize) {
        let (mut counts, mut repaired) = ([0usize; 2], 0);
        for b in 0..self.buckets {
            let mut tag_word = 0u64;
            for lane in 0..LANES {
                let s = &self.slots()[b * LANES + lane];
                let w = s.live.load(Ordering::Acquire);
                if w_used(w) {
                    let k =
                        Key::from_words(s.k0.load(Ordering::Relaxed), s.k1.load(Ordering::Relaxed));
                    let (b1, b2, tag) = self.place(&k);
                    if b == b1 || b == b2 {
                        forget_revision(&s.policy);
                        tag_word |= u64::from(tag) << (lane * 8);
                        counts[class(k.proto)] += 1;
                        continue;
                    }
                    // A key in neither of its buckets: not this build's hash. Free it.
                } else if (w >> 8) as u8 & OCC_BUSY == 0 {
                    continue;
                }
                s.live.store(
                    super::pack(0, w_gen(w).wrapping_add(1), 0, 0),
                    Ordering::Release,
                );
                repaired += 1;
            }
            self.tags()[b].store(tag_word, Ordering::Release);
        }
        (counts[0], counts[1], repaired)
    }
}

/// A verdict the previous process cached in an entry was taken at one of *its* policy
/// revisions, which mean nothing to this process (its snapshots are numbered from 1 again): at
/// the same number, a policy since changed would be trusted, an allow since revoked too. The
/// verdict is kept (a later fragment asks whether its flow was allowed, [`super::Handle::policy`])
/// but at revision 0, which no published snapshot has: each adopted flow is judged again, under
/// this process's policy, at its next packet.
fn forget_revision(policy: &AtomicU64) {
    let p = policy.load(Ordering::Relaxed);
    policy.store(p & !u64::from(u32::MAX), Ordering::Relaxed);
}

/// Why the region's content cannot be adopted (None: it can).
fn refusal(r: &Region, l: &Layout, found: usize, mono_now: u64) -> Option<String> {
    if found == 0 {
        return Some("no previous table (new file)".into());
    }
    if found < HEADER_BYTES {
        return Some(format!(
            "truncated: {found} bytes, shorter than the {HEADER_BYTES}-byte header"
        ));
    }
    let magic = r.word(H_MAGIC);
    if magic != MAGIC {
        return Some(format!(
            "bad magic {magic:#018x} (not a Vireo conntrack table, or never completed)"
        ));
    }
    let version = r.word(H_VERSION);
    if version != LAYOUT_VERSION {
        return Some(format!(
            "layout version {version}, this build reads version {LAYOUT_VERSION}"
        ));
    }
    let slot_bytes = r.word(H_SLOT_BYTES);
    if slot_bytes != SLOT_BYTES as u64 {
        return Some(format!(
            "entry size {slot_bytes} bytes, this build's is {SLOT_BYTES}"
        ));
    }
    let (slots, buckets) = (r.word(H_SLOTS), r.word(H_BUCKETS));
    if slots != l.slots as u64 || buckets != l.buckets as u64 {
        return Some(format!(
            "sized for {slots} slots in {buckets} buckets, the configured limits need {} in {}",
            l.slots, l.buckets
        ));
    }
    if found < l.bytes {
        return Some(format!("truncated: {found} bytes of {}", l.bytes));
    }
    let epoch = r.word(H_EPOCH);
    if epoch > mono_now {
        return Some(format!(
            "clock epoch {epoch} s is ahead of CLOCK_MONOTONIC {mono_now} s (the machine rebooted)"
        ));
    }
    None
}

/// Starts an empty table in the region: the magic is cleared first and written last, so a
/// process that stops half way leaves a region the next one refuses.
fn initialise(r: &Region, l: &Layout, dirty: bool, epoch: u64) {
    r.header[H_MAGIC].store(0, Ordering::Release);
    if dirty {
        for w in r.header.iter().chain(r.tags) {
            w.store(0, Ordering::Relaxed);
        }
        for s in r.slots {
            s.clear();
        }
    }
    for (i, v) in [
        (H_VERSION, LAYOUT_VERSION),
        (H_SLOTS, l.slots as u64),
        (H_SLOT_BYTES, SLOT_BYTES as u64),
        (H_BUCKETS, l.buckets as u64),
        (H_EPOCH, epoch),
    ] {
        r.header[i].store(v, Ordering::Relaxed);
    }
    r.header[H_MAGIC].store(MAGIC, Ordering::Release);
}

impl Slot {
    fn clear(&self) {
        for w in [
            &self.live,
            &self.k0,
            &self.k1,
            &self.policy,
            &self.packets,
            &self.bytes,
        ] {
            w.store(0, Ordering::Relaxed);
        }
        for w in [
            &self.identity,
            &self.nat_src,
            &self.nat_dst,
            &self.nat_ports,
        ] {
            w.store(0, Ordering::Relaxed);
        }
    }
}

/// The header word indexes, for tests that corrupt a header.
#[doc(hidden)]
pub mod words {
    /// The magic.
    pub const MAGIC: usize = super::H_MAGIC;
    /// The layout version.
    pub const VERSION: usize = super::H_VERSION;
    /// The slot count.
    pub const SLOTS: usize = super::H_SLOTS;
    /// The clock epoch.
    pub const EPOCH: usize = super::H_EPOCH;
}

#[cfg(test)]
impl Region {
    pub(crate) fn mark_busy_for_test(&self, i: usize) {
        let w = self.slots[i].live.load(Ordering::Relaxed);
        self.slots[i].live.store(
            super::pack(0, w_gen(w).wrapping_add(1), OCC_BUSY, 0),
            Ordering::Relaxed,
        );
    }

    pub(crate) fn header_for_test(&self) -> &'static [AtomicU64] {
        self.header
    }
}
