//! A table in a region: adoption by a second table (a restarted process), and the fallback to
//! an empty table when the region's header does not match.

use std::sync::Arc;

use crate::table::region::{words, Layout, Region, HEADER_BYTES, LAYOUT_VERSION};
use crate::table::{Nat, TCP, UDP};
use crate::*;

fn cfg() -> Config {
    Config {
        max_tcp: 1000,
        max_other: 200,
        ..Default::default()
    }
}

fn key(i: u32, proto: u8) -> Key {
    Key {
        src: 0x0af4_0000 | i,
        dst: 0x0af4_1000,
        sport: 40000 + i as u16,
        dport: 80,
        proto,
        dir: Dir::Egress,
    }
}

fn entry(state: State, nat: Option<Nat>) -> NewEntry {
    NewEntry {
        state,
        identity: 4242,
        nat,
        bytes: 100,
    }
}

const NAT: Nat = Nat {
    src: 0x0a60_0001,
    sport: 80,
    dst: 0x0af4_2002,
    dport: 8080,
};

/// A table in `r` at monotonic time `mono`, on a manual clock (read from the epoch: the
/// table's time is `mono - epoch + 1`, as an `EpochClock`'s).
fn open(r: &Region, found: usize, mono: u64) -> (Table, Adoption, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    let c = clock.clone();
    let (t, a) = Table::in_region(cfg(), r.reopen(), found, mono, |epoch| {
        c.advance((mono - epoch) as u32);
        c
    });
    (t, a, clock)
}

/// A region holding 50 TCP flows (every 5th with a NAT record, all established) and 10 UDP
/// ones, made at monotonic second 1000 and used until 1010.
fn filled() -> (Region, Layout) {
    let l = Layout::for_config(&cfg());
    let r = Region::leaked(&l);
    let (t, a, clock) = open(&r, 0, 1000);
    assert!(!a.adopted);
    assert_eq!(a.reason.as_deref(), Some("no previous table (new file)"));
    for i in 0..50 {
        let nat = (i % 5 == 0).then_some(NAT);
        let (h, fresh) = t
            .insert(&key(i, TCP), entry(State::Established, nat))
            .unwrap();
        assert!(fresh);
        h.update(State::Established, true, 1400);
        assert!(h.set_policy(7, i % 2 == 0));
    }
    for i in 0..10 {
        t.insert(&key(i, UDP), entry(State::New, None)).unwrap();
    }
    clock.advance(10);
    assert_eq!(t.counts(), (50, 10));
    (r, l)
}

#[test]
fn a_second_table_on_the_region_adopts_every_entry_with_its_nat_record_and_counters() {
    let (r, l) = filled();
    let (t, a, _clock) = open(&r, l.bytes, 1012);
    assert!(a.adopted, "{a:?}");
    assert_eq!((a.tcp, a.other, a.repaired), (50, 10, 0));
    assert_eq!(a.reason, None);
    assert_eq!(a.epoch, 1000, "the first table's epoch");
    assert_eq!(t.counts(), (50, 10));
    // The time goes on from the first table's: 12 s after its epoch (13 on its clock).
    assert_eq!(t.now(), 13);
    for i in 0..50 {
        let h = t.lookup(&key(i, TCP)).expect("adopted flow");
        assert_eq!(h.state(), Some(State::Established));
        assert_eq!(h.identity(), 4242);
        assert_eq!(h.nat(), (i % 5 == 0).then_some(NAT));
        let e = h.snapshot().unwrap();
        assert_eq!((e.packets, e.bytes), (2, 1500), "counters carried over");
    }
    // Verdicts cached at the first process's revision 7 are not this process's revision 7's:
    // kept, but to be taken again.
    for i in 0..50 {
        let h = t.lookup(&key(i, TCP)).unwrap();
        assert!(
            !h.allowed_at(7),
            "flow {i}: an allow of another process's revision"
        );
        assert_eq!(h.policy_at(7), None, "flow {i}");
        let p = h.policy().expect("the verdict is kept");
        assert_eq!((p.allowed, p.revision), (i % 2 == 0, 0));
        assert!(h.set_policy(1, true) && h.allowed_at(1), "cached again");
    }
    assert!(t.lookup(&key(3, UDP)).is_some());
    assert!(t.lookup(&key(77, TCP)).is_none());
    // The adopted table works as any: a new flow, a removal, the limits counted.
    t.insert(&key(60, TCP), entry(State::SynSent, None))
        .unwrap();
    assert!(t.remove(&key(0, TCP)));
    assert_eq!(t.counts(), (50, 10));
}

#[test]
fn adopted_expiries_keep_their_meaning() {
    let (r, l) = filled();
    // UDP entries live 60 s from second 1000 (clock 1): at monotonic 1061 they are gone, the
    // established TCP flows are not.
    let (t, a, _clock) = open(&r, l.bytes, 1061);
    assert!(a.adopted);
    assert!(
        t.lookup(&key(1, UDP)).is_none(),
        "expired by the shared epoch"
    );
    assert!(t.lookup(&key(1, TCP)).is_some());
}

#[test]
fn a_header_of_another_version_gives_an_empty_table_and_says_why() {
    let (r, l) = filled();
    r.poke_header(words::VERSION, LAYOUT_VERSION + 1);
    let (t, a, _clock) = open(&r, l.bytes, 1020);
    assert!(!a.adopted);
    let why = a.reason.unwrap();
    assert!(why.contains("layout version 2"), "{why}");
    assert_eq!(t.counts(), (0, 0));
    assert!(t.lookup(&key(1, TCP)).is_none(), "old slots cleared");
    assert_eq!(t.dump(100).len(), 0);
    // The region now holds a table of this version: the next process adopts it.
    t.insert(&key(9, TCP), entry(State::Established, None))
        .unwrap();
    let (t2, a2, _) = open(&r, l.bytes, 1021);
    assert!(a2.adopted, "{a2:?}");
    assert_eq!(a2.epoch, 1020);
    assert!(t2.lookup(&key(9, TCP)).is_some());
    assert!(t2.lookup(&key(1, TCP)).is_none());
}

#[test]
fn a_bad_magic_a_resized_table_or_a_reboot_is_refused() {
    let (r, l) = filled();
    r.poke_header(words::MAGIC, 0x1234);
    let (_, a, _) = open(&r, l.bytes, 1020);
    assert!(a.reason.unwrap().contains("bad magic"));

    let (r, l) = filled();
    r.poke_header(words::SLOTS, 8);
    let (_, a, _) = open(&r, l.bytes, 1020);
    assert!(a.reason.unwrap().contains("sized for 8 slots"));

    let (r, l) = filled();
    // CLOCK_MONOTONIC restarts at boot: an epoch in its future means the file outlived one.
    let (_, a, _) = open(&r, l.bytes, 500);
    assert!(a.reason.unwrap().contains("rebooted"));
    let _ = words::EPOCH;
}

#[test]
fn a_truncated_file_is_refused() {
    let (r, l) = filled();
    let (t, a, _) = open(&r, l.bytes - 64, 1020);
    assert!(!a.adopted);
    assert!(a.reason.unwrap().starts_with("truncated"));
    assert_eq!(t.counts(), (0, 0));
    let (r, _) = filled();
    let (_, a, _) = open(&r, HEADER_BYTES - 1, 1020);
    assert!(a
        .reason
        .unwrap()
        .contains("shorter than the 4096-byte header"));
}

#[test]
fn a_slot_left_half_written_is_freed_on_adoption() {
    let (r, l) = filled();
    // A process stopped between marking a free slot busy and publishing it: take a used slot
    // of the region and mark it busy the way `claim_free` does.
    let (t, _, _) = open(&r, l.bytes, 1011);
    let h = t.lookup(&key(7, TCP)).unwrap();
    let i = h.slot_index();
    drop(t);
    r.mark_busy_for_test(i);
    let (t, a, _) = open(&r, l.bytes, 1012);
    assert!(a.adopted);
    assert_eq!((a.tcp, a.repaired), (49, 1));
    assert!(t.lookup(&key(7, TCP)).is_none());
    // Its lane is free again and takes a new flow.
    t.insert(&key(7, TCP), entry(State::SynSent, None)).unwrap();
    assert_eq!(t.counts(), (50, 10));
}

#[test]
fn region_parts_must_fit_the_layout() {
    let l = Layout::for_config(&cfg());
    let small = Layout::for_config(&Config {
        max_tcp: 8,
        max_other: 8,
        ..Default::default()
    });
    let r = Region::leaked(&small);
    let e = Region::new(&l, r.header_for_test(), r.tags, r.slots).unwrap_err();
    assert_eq!(e.what, "tags");
    assert!(l.slots_offset.is_multiple_of(64) && l.bytes == l.slots_offset + l.slots * 64);
}
