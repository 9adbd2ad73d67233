use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Duration;

use crate::gc::Gc;
use crate::state::Lifetimes;
use crate::state::{tcp_first, tcp_flags::*, tcp_next};
use crate::table::{TCP, UDP};
use crate::*;

fn key(i: u32, proto: u8) -> Key {
    Key {
        src: 0x0af4_0000 | (i & 0xffff),
        dst: 0x0af4_1000 | (i >> 16),
        sport: 40000 + (i % 1000) as u16,
        dport: 80,
        proto,
        dir: Dir::Egress,
    }
}

fn new(state: State) -> NewEntry {
    NewEntry {
        state,
        identity: 1000,
        nat: None,
        bytes: 60,
    }
}

fn table(max_tcp: usize, max_other: usize) -> (Table, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    let t = Table::new(
        Config {
            max_tcp,
            max_other,
            ..Default::default()
        },
        clock.clone(),
    );
    (t, clock)
}

#[test]
fn slot_is_one_cache_line() {
    assert_eq!(table::SLOT_BYTES, 64);
}

#[test]
fn insert_lookup_update_and_expire() {
    let (t, clock) = table(1000, 1000);
    let k = key(1, TCP);
    assert!(t.lookup(&k).is_none());
    let (h, fresh) = t.insert(&k, new(tcp_first(SYN))).unwrap();
    assert!(fresh);
    assert_eq!(h.state(), Some(State::SynSent));
    // The same key again: the existing entry, no duplicate.
    let (_, fresh) = t.insert(&k, new(State::SynSent)).unwrap();
    assert!(!fresh);
    assert_eq!(t.counts(), (1, 0));
    assert_eq!(t.inserts(), 1, "finding the entry is no insert");
    // The reply, by the reversed key of the same direction.
    let r = k.reversed(Dir::Egress);
    assert!(t.lookup(&r).is_none());
    let h = t.lookup(&k).unwrap();
    h.update(tcp_next(h.state().unwrap(), true, SYN | ACK), true, 60);
    assert_eq!(h.state(), Some(State::SynRecv));
    // SYN lifetime: 60 s.
    clock.advance(59);
    assert!(t.lookup(&k).is_some());
    clock.advance(1);
    assert!(t.lookup(&k).is_none(), "expired after 60 s");
    // Established lives 21600 s.
    let (h, _) = t.insert(&k, new(State::SynSent)).unwrap();
    assert_eq!(
        t.inserts(),
        2,
        "an expired entry started afresh is an insert"
    );
    h.update(State::Established, false, 60);
    clock.advance(21599);
    assert!(t.lookup(&k).is_some());
    clock.advance(1);
    assert!(t.lookup(&k).is_none());
    assert_eq!(t.gc(0, t.buckets()), 1);
    assert_eq!(t.counts(), (0, 0));
}

#[test]
fn limits_evict_expired_first_then_ct_full() {
    let (t, clock) = table(64, 8);
    for i in 0..64 {
        t.insert(&key(i, TCP), new(State::SynSent)).unwrap();
    }
    assert_eq!(t.counts().0, 64);
    assert_eq!(
        t.insert(&key(1000, TCP), new(State::SynSent)).unwrap_err(),
        Full
    );
    // Other protocols have their own limit.
    for i in 0..8 {
        t.insert(&key(i, UDP), new(State::New)).unwrap();
    }
    assert!(t.insert(&key(9, UDP), new(State::New)).is_err());
    // Existing flows still work at the limit.
    let h = t.lookup(&key(5, TCP)).unwrap();
    h.update(State::Established, true, 100);
    // Once entries have expired, new ones take their place.
    clock.advance(61);
    let mut placed = 0;
    for i in 1000..1064 {
        if t.insert(&key(i, TCP), new(State::SynSent)).is_ok() {
            placed += 1;
        }
    }
    assert!(placed > 0, "expired entries must make room");
    assert!(
        t.lookup(&key(5, TCP)).is_some(),
        "the live established flow survived"
    );
    assert!(t.counts().0 <= 64 && t.counts().1 <= 8, "{:?}", t.counts());
}

#[test]
fn nat_records_round_trip() {
    let (t, _) = table(10, 10);
    let nat = Nat {
        src: 0x0a60_0001,
        sport: 80,
        dst: 0x0af4_0105,
        dport: 8080,
    };
    let (h, _) = t
        .insert(
            &key(7, TCP),
            NewEntry {
                nat: Some(nat),
                ..new(State::SynSent)
            },
        )
        .unwrap();
    assert_eq!(h.nat(), Some(nat));
    let (h, _) = t.insert(&key(8, TCP), new(State::SynSent)).unwrap();
    assert_eq!(h.nat(), None);
    let d = t.dump(10);
    assert_eq!(d.len(), 2);
    assert!(d.iter().any(|e| e.nat == Some(nat)));
    // Every direction survives the key's round trip through the table.
    for dir in [Dir::Service, Dir::RevNat, Dir::Affinity, Dir::Neigh] {
        let k = Key { dir, ..key(9, TCP) };
        t.insert(&k, new(State::SynSent)).unwrap();
        assert!(t.lookup(&k).is_some());
        assert!(t.dump(10).iter().any(|e| e.dir == dir));
    }
}

#[test]
fn two_threads_insert_lookup_delete_while_gc_runs() {
    let clock = Arc::new(ManualClock::default());
    let t = Arc::new(Table::new(
        Config {
            max_tcp: 100_000,
            max_other: 1000,
            ..Default::default()
        },
        clock.clone(),
    ));
    // Short-lived entries for the collector to reap while the threads work.
    for i in 0..20_000 {
        t.insert(&key(1_000_000 + i, UDP), new(State::New)).ok();
    }
    clock.advance(61);
    let gc = Gc::start(t.clone(), Duration::from_millis(50), 64).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let barrier = Arc::new(Barrier::new(2));
    let workers: Vec<_> = (0..2u32)
        .map(|w| {
            let (t, b) = (t.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                // Both threads insert the same keys (racing), then each deletes its half.
                for i in 0..40_000 {
                    let k = key(i, TCP);
                    let (h, _) = t.insert(&k, new(State::SynSent)).expect("room");
                    h.update(State::Established, w == 1, 60);
                    assert!(t.lookup(&k).is_some(), "lost right after insert");
                }
                b.wait();
                for i in (0..40_000).filter(|i| i % 2 == w) {
                    if i % 4 < 2 {
                        t.remove(&key(i, TCP));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    // A walk takes 50 ms on an idle machine; allow a loaded one 10 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while gc.passes() == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(gc.passes() >= 1, "no complete walk of the table in 10 s");
    // `max_other` admitted 1000 of the 20 000 UDP entries; all expired before the walk.
    assert_eq!(gc.reaped(), 1000);
    drop(gc);
    // Exactly the keys not deleted remain, each once.
    let live: Vec<Entry> = t.dump(usize::MAX);
    let tcp: Vec<&Entry> = live.iter().filter(|e| e.proto == TCP).collect();
    let set: HashSet<(std::net::Ipv4Addr, std::net::Ipv4Addr, u16)> =
        tcp.iter().map(|e| (e.src, e.dst, e.sport)).collect();
    assert_eq!(set.len(), tcp.len(), "duplicated entries");
    assert_eq!(tcp.len(), 20_000, "lost or extra entries");
    for i in 0..40_000u32 {
        assert_eq!(t.lookup(&key(i, TCP)).is_some(), i % 4 >= 2, "key {i}");
    }
    assert_eq!(t.counts().0, 20_000);
    assert_eq!(
        t.counts().1,
        0,
        "the collector reaped the expired UDP entries"
    );
}

#[test]
fn keys_differing_in_one_port_fill_the_table_to_its_limit() {
    // A SYN flood: one source, one destination, only the source port changes.
    let (t, _) = table(4096, 1024);
    for p in 0..4096u32 {
        let k = Key {
            src: 0x0af4_010b,
            dst: 0x0af4_020a,
            sport: 1024 + p as u16,
            dport: 9,
            proto: TCP,
            dir: Dir::Egress,
        };
        t.insert(&k, new(State::SynSent))
            .unwrap_or_else(|_| panic!("full at {p} of 4096"));
    }
    assert_eq!(t.counts().0, 4096);
}

#[test]
fn at_the_limit_expired_entries_anywhere_make_room() {
    // Expired UDP entries fill the other class; new flows mostly hash to other buckets than
    // theirs, so they must find room through the sweep.
    let (t, clock) = table(64, 64);
    for i in 0..64 {
        t.insert(&key(i, UDP), new(State::New)).unwrap();
    }
    clock.advance(61);
    let mut ok = 0;
    for i in 1000..1064 {
        if t.insert(&key(i, UDP), new(State::New)).is_ok() {
            ok += 1;
        }
    }
    assert_eq!(ok, 64, "every new flow found room among the expired ones");
    assert_eq!(t.counts().1, 64);
}

#[test]
fn refresh_sets_a_lifetime_of_its_own() {
    let (t, clock) = table(10, 10);
    let k = Key {
        dir: Dir::Affinity,
        ..key(1, UDP)
    };
    let (h, _) = t.insert(&k, new(State::New)).unwrap();
    h.refresh(10800);
    clock.advance(10799);
    assert!(t.lookup(&k).is_some());
    clock.advance(1);
    assert!(t.lookup(&k).is_none());
}

fn nat_of(i: u32) -> Nat {
    Nat {
        src: 0x0a60_0000 | i,
        sport: i as u16,
        dst: !i,
        dport: (i as u16).wrapping_mul(3),
    }
}

fn entry_of(i: u32) -> NewEntry {
    NewEntry {
        state: State::SynSent,
        identity: 0x1000_0000 | i,
        nat: Some(nat_of(i)),
        bytes: 60,
    }
}

/// Inserts keys from `from` on until one lands in slot `slot`; returns its number.
fn insert_into_slot(t: &Table, slot: usize, from: u32) -> u32 {
    (from..from + 100_000)
        .find(|&i| {
            let (h, _) = t.insert(&key(i, TCP), entry_of(i)).expect("room");
            h.slot_index() == slot || !t.remove(&key(i, TCP))
        })
        .expect("some key lands in the freed slot")
}

#[test]
fn slot_layout_is_one_line_with_room_for_policy() {
    assert_eq!(table::SLOT_BYTES, 64);
    let (t, _) = table(1000, 1000);
    // 4/3 slots per entry of capacity, one tag byte and one lock byte per 8 slots.
    assert!(t.memory_bytes() <= 2000 * 4 / 3 * 64 + 2000 * 4 / 3 / 8 * 9 + 64 * 9);
}

#[test]
fn a_stale_handle_is_a_no_op_after_its_slot_is_reused() {
    let (t, clock) = table(1000, 1000);
    let (old, _) = t.insert(&key(1, TCP), entry_of(1)).unwrap();
    assert!(old.valid());
    assert!(t.remove(&key(1, TCP)));
    assert!(!old.valid());
    let j = insert_into_slot(&t, old.slot_index(), 2);
    let new = t.lookup(&key(j, TCP)).unwrap();
    assert_eq!(new.slot_index(), old.slot_index());
    let before = new.snapshot().unwrap();
    clock.advance(5);
    // Every operation through the stale handle leaves the new flow alone.
    old.update(State::Established, true, 1500);
    assert!(!old.try_update(State::TimeWait, false, 1));
    old.refresh(1);
    assert!(!old.set_policy(7, true));
    assert_eq!(old.state(), None);
    assert_eq!(old.nat(), None, "never the new flow's NAT record");
    assert_eq!(old.identity(), 0);
    assert_eq!(old.policy(), None);
    assert!(old.snapshot().is_none());
    let after = t.lookup(&key(j, TCP)).unwrap();
    let mut a = after.snapshot().unwrap();
    a.expires_in += 5; // the same expiry, seen 5 s later
    assert_eq!(a, before);
    assert_eq!(a.packets, 1);
    assert_eq!(a.state, Some(State::SynSent));
    assert!(!a.reply_seen);
    assert_eq!(after.nat(), Some(nat_of(j)));
    assert_eq!(after.identity(), 0x1000_0000 | j);
    assert!(after.set_policy(7, true) && after.allowed_at(7));
    assert!(!old.allowed_at(7), "never the new flow's verdict");
}

#[test]
fn a_stale_handle_does_not_touch_an_entry_restarted_in_place() {
    // The same key expired and inserted again reuses its slot in place: a handle to the old
    // flow must not count on the new one.
    let (t, clock) = table(100, 100);
    let k = key(3, TCP);
    let (old, _) = t.insert(&k, new(State::SynSent)).unwrap();
    clock.advance(61);
    let (h, fresh) = t.insert(&k, new(State::SynSent)).unwrap();
    assert!(fresh);
    assert_eq!(h.slot_index(), old.slot_index());
    assert_ne!(h.generation(), old.generation());
    old.update(State::Established, true, 100);
    let e = h.snapshot().unwrap();
    assert_eq!((e.packets, e.bytes, e.state), (1, 60, Some(State::SynSent)));
}

#[test]
fn gc_does_not_reap_an_entry_refreshed_after_its_expiry() {
    let (t, clock) = table(100, 100);
    let k = key(4, UDP);
    t.insert(&k, new(State::New)).unwrap();
    // A worker with a batch time from before the expiry still holds it and refreshes it.
    let h = t.lookup_at(&k, 50).unwrap();
    clock.advance(61);
    h.update(State::Replied, true, 60);
    assert_eq!(t.gc(0, t.buckets()), 0, "refreshed: lives until 50 + 60");
    assert!(t.lookup(&k).is_some());
}

#[test]
fn lookup_at_and_insert_at_use_the_callers_time() {
    let (t, clock) = table(100, 100);
    let k = key(5, TCP);
    clock.advance(99); // the table's clock reads 100
    let (h, _) = t.insert_at(&k, new(State::SynSent), 40).unwrap();
    assert_eq!(h.now(), 40);
    assert!(t.lookup(&k).is_none(), "40 + 60 s: expired at 100");
    assert!(t.lookup_at(&k, 99).is_some());
    let h = t.lookup_at(&k, 99).unwrap();
    clock.advance(1000);
    h.update(State::Established, false, 60);
    // The lifetime counts from the handle's time, not the clock's.
    assert_eq!(h.snapshot().unwrap().expires_in, 21600);
    h.refresh(10);
    assert_eq!(h.snapshot().unwrap().expires_in, 10);
}

#[test]
fn policy_verdicts_are_cached_per_entry() {
    let (t, _) = table(100, 100);
    let (h, _) = t.insert(&key(6, TCP), new(State::SynSent)).unwrap();
    assert_eq!(h.policy(), None);
    assert_eq!(h.policy_at(1), None);
    assert!(h.set_policy(1, true));
    assert_eq!(
        h.policy(),
        Some(PolicyVerdict {
            revision: 1,
            allowed: true
        })
    );
    assert_eq!(h.policy_at(1), Some(true));
    assert!(h.allowed_at(1));
    assert_eq!(h.policy_at(2), None, "another revision: evaluate again");
    assert!(!h.allowed_at(2));
    assert!(h.set_policy(2, false));
    assert_eq!(h.policy_at(2), Some(false));
    assert!(!h.allowed_at(2), "a cached denial is no allow");
    // Another lookup of the same entry sees it; a new entry starts without one.
    assert_eq!(t.lookup(&key(6, TCP)).unwrap().policy_at(2), Some(false));
    let (g, _) = t.insert(&key(7, TCP), new(State::SynSent)).unwrap();
    assert_eq!(g.policy(), None);
    assert_eq!(
        t.dump(10).iter().filter(|e| e.policy.is_some()).count(),
        1,
        "shown by `vireo map get ct`"
    );
}

/// Drives one TCP flow through the table as the pipeline does.
fn pkt(t: &Table, k: &Key, reply: bool, f: u8) -> Option<State> {
    let h = t.lookup(k)?;
    h.update(tcp_next(h.state().unwrap(), reply, f), reply, 60);
    h.state()
}

#[test]
fn a_half_closed_connection_keeps_the_established_lifetime() {
    let (t, clock) = table(100, 100);
    let k = key(8, TCP);
    t.insert(&k, new(tcp_first(SYN))).unwrap();
    pkt(&t, &k, true, SYN | ACK);
    pkt(&t, &k, false, ACK);
    // The client shuts down its sending side; the server answers 12 s later.
    assert_eq!(pkt(&t, &k, false, FIN | ACK), Some(State::FinWait));
    let e = &t.dump(1)[0];
    assert!(e.tx_closing && !e.rx_closing);
    assert_eq!(e.expires_in, 21600);
    clock.advance(12);
    assert_eq!(pkt(&t, &k, true, ACK | 0x08), Some(State::FinWait));
    clock.advance(3600);
    assert!(t.lookup(&k).is_some(), "half-closed lives as established");
    // The server's FIN closes both directions: the close lifetime.
    assert_eq!(pkt(&t, &k, true, FIN | ACK), Some(State::TimeWait));
    let e = &t.dump(1)[0];
    assert!(e.tx_closing && e.rx_closing);
    assert_eq!(e.expires_in, 10);
    clock.advance(10);
    assert!(t.lookup(&k).is_none());
}

#[test]
fn the_responders_fin_alone_half_closes_too() {
    let (t, _) = table(100, 100);
    let k = key(9, TCP);
    t.insert(&k, new(State::Established)).unwrap();
    assert_eq!(pkt(&t, &k, true, FIN | ACK), Some(State::FinWaitReply));
    let e = &t.dump(1)[0];
    assert!(!e.tx_closing && e.rx_closing);
    assert_eq!(e.expires_in, 21600);
    // Its own retransmitted FIN changes nothing; the originator's closes.
    assert_eq!(pkt(&t, &k, true, FIN | ACK), Some(State::FinWaitReply));
    assert_eq!(pkt(&t, &k, false, FIN | ACK), Some(State::TimeWait));
}

#[test]
fn two_workers_fins_at_once_are_both_kept() {
    // Both workers read ESTABLISHED; one sees the client's FIN, the other the server's.
    let (t, _) = table(100, 100);
    let k = key(10, TCP);
    t.insert(&k, new(State::Established)).unwrap();
    let (a, b) = (t.lookup(&k).unwrap(), t.lookup(&k).unwrap());
    let (sa, sb) = (a.state().unwrap(), b.state().unwrap());
    a.update(tcp_next(sa, false, FIN | ACK), false, 60);
    b.update(tcp_next(sb, true, FIN | ACK), true, 60);
    assert_eq!(a.state(), Some(State::TimeWait));
    // A RST stays final against a racing ACK.
    let h = t.lookup(&k).unwrap();
    h.update(State::Closed, false, 60);
    h.update(tcp_next(State::Established, true, ACK), true, 60);
    assert_eq!(h.state(), Some(State::Closed));
}

#[test]
fn a_syn_reopens_a_closing_or_closed_entry() {
    let (t, _) = table(100, 100);
    let k = key(11, TCP);
    for close in [
        &[FIN | ACK][..],
        &[FIN | ACK, FIN | ACK],
        &[RST],
        &[ACK, RST | ACK],
    ] {
        t.remove(&k);
        t.insert(&k, new(State::Established)).unwrap();
        for (n, f) in close.iter().enumerate() {
            pkt(&t, &k, n % 2 == 1, *f);
        }
        assert_ne!(t.lookup(&k).unwrap().state(), Some(State::Established));
        // The client reuses the port: a SYN (no ACK) from the originator opens anew.
        assert_eq!(pkt(&t, &k, false, SYN), Some(State::SynSent), "{close:?}");
        let e = &t.dump(1)[0];
        assert!(!e.tx_closing && !e.rx_closing);
        assert_eq!(e.expires_in, 60);
    }
    // A SYN from the responder does not.
    t.insert(&k, new(State::Established)).ok();
    pkt(&t, &k, false, RST);
    assert_eq!(pkt(&t, &k, true, SYN), Some(State::Closed));
}

#[test]
fn flush_removes_matching_entries_expired_or_not() {
    let (t, clock) = table(1000, 1000);
    let old_pod = 0x0a99_0007;
    for i in 0..100 {
        let mut k = key(i, if i % 2 == 0 { TCP } else { UDP });
        if i % 4 < 2 {
            k.src = old_pod;
        }
        t.insert(&k, entry_of(i)).unwrap();
    }
    clock.advance(61); // the UDP ones (and the SYN_SENT TCP ones) have expired
    let svc = Key {
        dir: Dir::Service,
        ..key(500, TCP)
    };
    t.insert(&svc, entry_of(500)).unwrap();
    // An endpoint goes away: its flows, by address.
    assert_eq!(t.flush(|k, _| k.src == old_pod || k.dst == old_pod), 50);
    assert_eq!(t.counts(), (26, 25));
    assert!(t.dump(1000).iter().all(|e| u32::from(e.src) != old_pod));
    // A backend goes away: the service flows whose NAT record points to it.
    assert_eq!(
        t.flush(|_, nat| nat.is_some_and(|n| n.dst == nat_of(500).dst)),
        1
    );
    assert!(t.lookup(&svc).is_none());
    assert_eq!(t.flush(|_, _| true), 50);
    assert_eq!(t.counts(), (0, 0));
}

#[test]
fn a_full_table_sweeps_at_most_once_per_clock_second() {
    let (t, clock) = table(64, 8);
    for i in 0..64 {
        t.insert(&key(i, TCP), new(State::Established)).unwrap();
    }
    // A SYN flood at the limit with nothing expired: every SYN is refused, one sweep a second.
    for i in 1000..3000 {
        assert_eq!(
            t.insert(&key(i, TCP), new(State::SynSent)).unwrap_err(),
            Full
        );
    }
    assert_eq!(t.sweeps(), 1);
    clock.advance(1);
    for i in 3000..3100 {
        assert!(t.insert(&key(i, TCP), new(State::SynSent)).is_err());
    }
    assert_eq!(t.sweeps(), 2);
    // A worker with an older batch time does not sweep again either.
    assert!(t
        .insert_at(&key(4000, TCP), new(State::SynSent), 1)
        .is_err());
    assert_eq!(t.sweeps(), 2);
    assert_eq!(t.counts().0, 64, "the tracked flows were left alone");
}

#[test]
fn racing_inserts_at_the_limit_keep_each_winner() {
    // A full table of expired entries; two workers insert the same new flows at once: each
    // flow ends up once, and neither worker's insert removes the other's.
    let clock = Arc::new(ManualClock::default());
    let t = Arc::new(Table::new(
        Config {
            max_tcp: 512,
            max_other: 8,
            ..Default::default()
        },
        clock.clone(),
    ));
    for i in 0..512 {
        t.insert(&key(100_000 + i, TCP), new(State::SynSent))
            .unwrap();
    }
    clock.advance(61);
    let barrier = Arc::new(Barrier::new(2));
    let won: Vec<Vec<u32>> = (0..2)
        .map(|_| {
            let (t, b) = (t.clone(), barrier.clone());
            std::thread::spawn(move || {
                b.wait();
                (0..400)
                    .filter(|&i| {
                        let (h, _) = t.insert(&key(i, TCP), entry_of(i)).expect("room");
                        h.update(State::Established, false, 60);
                        assert_eq!(h.nat(), Some(nat_of(i)));
                        t.lookup(&key(i, TCP)).is_some()
                    })
                    .collect()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|w| w.join().unwrap())
        .collect();
    assert!(won.iter().all(|w| w.len() == 400), "an insert was lost");
    let tcp: Vec<Entry> = t
        .dump(usize::MAX)
        .into_iter()
        .filter(|e| e.proto == TCP)
        .collect();
    let set: HashSet<_> = tcp.iter().map(|e| (e.src, e.dst, e.sport)).collect();
    assert_eq!(set.len(), tcp.len(), "a flow inserted twice");
    assert_eq!(tcp.len(), 400);
    for e in &tcp {
        assert_eq!(e.packets, 3, "one insert and two updates, on one entry");
    }
    assert!(t.counts().0 <= 512);
}

/// Two workers, a moving clock, the collector, eviction at a small capacity and slot reuse:
/// no operation may land on another flow's entry. Each flow's identity and NAT record are a
/// function of its key; each worker owns half of the keys (only it inserts and counts them)
/// and keeps stale handles around to update through.
#[test]
fn stress_no_operation_lands_on_another_flows_entry() {
    const KEYS: u32 = 1024;
    let clock = Arc::new(ManualClock::default());
    let t = Arc::new(Table::new(
        Config {
            max_tcp: 128,
            max_other: 8,
            lifetimes: Lifetimes {
                tcp_established: 3,
                tcp_syn: 2,
                tcp_close: 1,
                non_tcp: 2,
            },
        },
        clock.clone(),
    ));
    let gc = Gc::start(t.clone(), Duration::from_millis(2), 4).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let (clock, stop) = (clock.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                clock.advance(1);
                std::thread::sleep(Duration::from_micros(300));
            }
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_millis(2500);
    let workers: Vec<_> = (0..2u32)
        .map(|w| {
            let (t, clock) = (t.clone(), clock.clone());
            std::thread::spawn(move || {
                let mine = |i: u32| i % 2 == w;
                // Per owned key: (generation of its entry, packets counted on it).
                let mut own: Vec<Option<(u16, u64)>> = vec![None; KEYS as usize];
                let mut stale: Vec<(u32, Handle<'_>)> = Vec::new();
                let (mut checked, mut reused) = (0u64, 0u64);
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(w);
                for n in 0..2_000_000u32 {
                    if n % 256 == 0 && std::time::Instant::now() > deadline {
                        break;
                    }
                    let now = clock.now(); // once per "batch" of one, for simplicity
                    x = crate::table::mix64(x);
                    let i = (x % u64::from(KEYS)) as u32;
                    let k = key(i, TCP);
                    match t.lookup_at(&k, now) {
                        Some(h) => {
                            // Whatever thread reads it: the entry matches its key, or the
                            // handle went stale (and then reads nothing).
                            if let Some(nat) = h.nat() {
                                assert_eq!(nat, nat_of(i), "a NAT record of another flow");
                            }
                            let id = h.identity();
                            assert!(id == 0 || id == 0x1000_0000 | i, "identity {id:#x} for {i}");
                            if let Some(e) = h.snapshot() {
                                assert_eq!((e.src, e.sport), {
                                    let kk = key(i, TCP);
                                    (std::net::Ipv4Addr::from(kk.src), kk.sport)
                                });
                                assert_eq!(e.identity, 0x1000_0000 | i);
                                if mine(i) {
                                    let (g, p) = own[i as usize].expect("only I insert it");
                                    if g == h.generation() {
                                        assert_eq!(e.packets, p, "key {i}: packets");
                                        checked += 1;
                                    }
                                }
                            }
                            if mine(i) && h.try_update(State::Established, false, 1) {
                                if let Some((g, p)) = own[i as usize].as_mut() {
                                    assert_eq!(*g, h.generation());
                                    *p += 1;
                                }
                            }
                            if mine(i) && n % 7 == 0 {
                                stale.push((i, h));
                            }
                        }
                        None if mine(i) => {
                            if let Ok((h, fresh)) = t.insert_at(&k, entry_of(i), now) {
                                if fresh {
                                    own[i as usize] = Some((h.generation(), 1));
                                }
                            }
                        }
                        None => {}
                    }
                    // Old handles of our own keys: update, refresh and cache through them.
                    if stale.len() > 64 {
                        for (j, h) in stale.drain(..32) {
                            let ok = h.try_update(State::Established, true, 1);
                            h.refresh(2);
                            h.set_policy(n, true);
                            if let Some(nat) = h.nat() {
                                assert_eq!(nat, nat_of(j));
                            }
                            match own[j as usize].as_mut() {
                                Some((g, p)) if *g == h.generation() => *p += u64::from(ok),
                                _ => {
                                    assert!(!ok, "an update through a stale handle applied");
                                    reused += 1;
                                }
                            }
                        }
                    }
                    if n % 1000 == 0 {
                        t.flush(|k, _| k.sport % 64 == (n / 1000 % 32) as u16 * 2 + w as u16);
                    }
                    if n % 97 == 0 && mine(i) {
                        t.remove(&k);
                    }
                }
                (checked, reused)
            })
        })
        .collect();
    let results: Vec<(u64, u64)> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    stop.store(true, Ordering::Relaxed);
    ticker.join().unwrap();
    drop(gc);
    eprintln!("(packet counts checked, stale handles refused) per worker: {results:?}");
    for (checked, reused) in &results {
        assert!(*checked > 50, "too few checks: {results:?}");
        assert!(*reused > 5, "too little slot reuse: {results:?}");
    }
    assert!(t.counts().0 <= 128);
}
